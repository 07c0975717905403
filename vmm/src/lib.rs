//! A KVM virtual machine monitor whose interrupt delivery mirrors Linux's MSI domain
//! hierarchy (see the `interrupt` crate).
//!
//! The library holds the pieces of the `vmm` binary: configuration, guest memory layout,
//! Linux boot, vCPU setup, ACPI tables and the VM run loop.

pub mod acpi;
pub mod boot;
pub mod config;
pub mod cpu;
pub mod layout;
pub mod lifecycle;
pub mod movdir64b;
pub mod seccomp;
pub mod terminal;
pub mod vm;
