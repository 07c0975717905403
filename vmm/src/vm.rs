//! Building and running a VM: KVM setup, devices, vCPU threads and the main event loop.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex};
use std::thread;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_EXIT_ON_EMULATION_FAILURE,
    KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_MAX_CPUID_ENTRIES,
    KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK, KVM_X2APIC_API_USE_32BIT_IDS,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use log::{debug, error, info, warn};
use thiserror::Error;
use vm_allocator::AddressAllocator;
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use devices::dsa::Dsa;
use devices::ioapic::{
    Ioapic, IOAPIC_BASE, IOAPIC_REQUESTER_ID, IOAPIC_SIZE, IOAPIC_VERSION_11, IOAPIC_VERSION_20,
};
use devices::irqtest::IrqTest;
use devices::power::{GuestEvent, I8042Port, PowerManagement, ResetControlPort, SleepControlPort};
use devices::serial::{
    IoapicPin, SerialOutput, SerialOutputHandle, SerialPort, COM1_PIN, COM1_PORT,
    OUTPUT_BUFFER_BYTES,
};
use interrupt::{
    InterruptHierarchy, KvmVectorLayer, NoRemap, RequesterId, VectorLayer, VtdConfig, VtdUnit,
};
use pci::{PciConfigIo, PciDevice, PciEcam, PciMmioWindow, PciRoot};

use crate::acpi::{self, AcpiConfig};
use crate::boot::{self, BootError};
use crate::config::{DeviceConfig, IommuKind, SerialMode, VmConfig};
use crate::cpu::{self, CpuError};
use crate::layout::*;
use crate::lifecycle::{test_panic, SignalFd};
use crate::movdir64b;
use crate::seccomp::{Sandbox, SeccompError, ThreadKind};
use crate::terminal::{EscapeAction, InputQueue, RawTerminal};

/// Number of IOAPIC pins reserved in KVM's split irqchip (GSIs 0..24).
const IOAPIC_PINS: u32 = devices::ioapic::NUM_PINS as u32;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off.
    PowerOff,
    /// The guest rebooted (reset request or triple fault).
    Reboot,
    /// The VMM received a terminating signal.
    Signal(i32),
    /// The user typed the console escape sequence (Ctrl-A x).
    Quit,
    /// A vCPU failed.
    Error(String),
}

/// Errors while creating the VM (host-facing; each is one readable line).
#[derive(Debug, Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A required KVM capability is missing.
    #[error("KVM lacks {0}, which this VMM requires")]
    MissingCap(&'static str),
    /// A KVM VM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// More memory was requested than the host has.
    #[error("--memory of {requested} MiB exceeds the host's {available} MiB")]
    MemoryBeyondHost {
        /// Requested MiB.
        requested: u64,
        /// Host MiB.
        available: u64,
    },
    /// More vCPUs than KVM supports.
    #[error("--cpus boot={requested} exceeds KVM's limit of {max} vCPUs")]
    TooManyVcpus {
        /// Requested.
        requested: u32,
        /// KVM's maximum.
        max: usize,
    },
    /// Loading the guest failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Configuring a vCPU failed.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// ACPI tables could not be built.
    #[error("ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    /// Device setup failed.
    #[error("device setup: {0}")]
    Device(String),
    /// A `--disk` image cannot be used.
    #[error("{0}")]
    Disk(String),
    /// A pass-through device cannot be used (one line naming it and the reason).
    #[error("{0}")]
    Vfio(String),
    /// The seccomp sandbox could not be set up.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Setting up the host side (files, event loop, threads) failed.
    #[error("{what}: {source}")]
    Host {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn host_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Host { what, source }
}

/// KVM ioeventfds for virtio queue notifications (any access width, no data match).
struct KvmIoEvents(Arc<VmFd>);

impl virtio::IoEventRegistry for KvmIoEvents {
    fn register_mmio(&self, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        self.0
            .register_ioevent(
                fd,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
    fn unregister_mmio(&self, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        self.0
            .unregister_ioevent(
                fd,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// First exit reason reported wins; the main loop is woken through an eventfd.
struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitSignal {
    fn raise(&self, r: ExitReason) {
        let mut g = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(r);
            let _ = self.evt.write(1);
        }
    }

    fn get(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// A created VM, ready to run.
pub struct Vm {
    config: VmConfig,
    vcpus: Vec<VcpuFd>,
    io: Arc<IoManager>,
    ioapic: Arc<Ioapic>,
    serial: Option<Arc<SerialPort>>,
    serial_out: Option<SerialOutputHandle>,
    serial_input_ready: EventFd,
    hierarchy: Arc<InterruptHierarchy>,
    exit: Arc<ExitSignal>,
    sandbox: Arc<Sandbox>,
    /// Pass-through devices, reset when the VM stops.
    vfio_devices: Vec<Arc<Mutex<vfio::VfioPciDevice>>>,
    /// The VFIO container (guest RAM mapped for device DMA until the VM is dropped).
    _vfio_container: Option<vfio::Container>,
    // Kept alive for the VM's lifetime.
    _vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
}

impl Vm {
    /// Creates the VM described by `config`: memory, devices, ACPI, kernel and vCPUs.
    pub fn create(config: VmConfig) -> Result<Self, VmError> {
        // Disk images first: a bad one is reported before anything else is set up.
        let disks = config
            .disks
            .iter()
            .map(|d| virtio::blk::DiskImage::open(&d.path, d.readonly))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VmError::Disk(e.to_string()))?;
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        for (cap, name) in [
            (Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP"),
            (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
            (Cap::X2ApicApi, "KVM_CAP_X2APIC_API"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        if let Some(host) = host_memory_mib() {
            if config.memory >> 20 > host {
                return Err(VmError::MemoryBeyondHost {
                    requested: config.memory >> 20,
                    available: host,
                });
            }
        }
        let max_vcpus = kvm.get_max_vcpus();
        if config.vcpus as usize > max_vcpus {
            return Err(VmError::TooManyVcpus {
                requested: config.vcpus,
                max: max_vcpus,
            });
        }

        // Pass-through devices are checked and opened before the VM exists: a device that
        // cannot be used stops the VMM with nothing else set up.
        let (vfio_container, vfio_hosts) = open_vfio_devices(&config)?;

        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        // Only meaningful on Intel hosts; harmless to fail elsewhere.
        if let Err(e) = vm.set_tss_address(KVM_TSS_ADDR as usize) {
            debug!("KVM_SET_TSS_ADDR: {e}");
        }
        let split = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            args: [u64::from(IOAPIC_PINS), 0, 0, 0],
            ..Default::default()
        };
        vm.enable_cap(&split)
            .map_err(kvm_err("enabling KVM_CAP_SPLIT_IRQCHIP"))?;
        let x2apic = kvm_enable_cap {
            cap: KVM_CAP_X2APIC_API,
            args: [
                u64::from(KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK),
                0,
                0,
                0,
            ],
            ..Default::default()
        };
        vm.enable_cap(&x2apic)
            .map_err(kvm_err("enabling KVM_CAP_X2APIC_API"))?;

        // Filters are compiled before any thread exists; device workers apply theirs when
        // they start (hook), vCPU threads and the main thread in `run`.
        let sandbox = Arc::new(Sandbox::new(config.seccomp)?);
        sandbox.install_worker_hook();
        sandbox.install_virtio_hook();

        let movdir64b_requests: Vec<Option<bool>> = config
            .devices
            .iter()
            .filter_map(|d| match d {
                DeviceConfig::Dsa { movdir64b, .. } => Some(*movdir64b),
                _ => None,
            })
            .collect();
        let has_dsa = !movdir64b_requests.is_empty();
        let mut movdir64b_emulated = false;
        if has_dsa
            && host_has_movdir64b()
            && kvm.check_extension_raw(KVM_CAP_EXIT_ON_EMULATION_FAILURE.into()) > 0
        {
            // Guest MOVDIR64B to a DSA portal then exits with the instruction bytes.
            let cap = kvm_enable_cap {
                cap: KVM_CAP_EXIT_ON_EMULATION_FAILURE,
                args: [1, 0, 0, 0],
                ..Default::default()
            };
            match vm.enable_cap(&cap) {
                Ok(()) => {
                    info!("MOVDIR64B to emulated MMIO is emulated");
                    movdir64b_emulated = true;
                }
                Err(e) => warn!("KVM_CAP_EXIT_ON_EMULATION_FAILURE: {e}"),
            }
        }
        let movdir64b = cpu::Movdir64bDecision::decide(&movdir64b_requests, movdir64b_emulated);
        if let Some(w) = movdir64b.warning() {
            warn!("{w}");
        }

        let mem = boot::create_memory(config.memory)?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the Vm keeps for as
            // long as the VM exists.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }

        if let Some(c) = &vfio_container {
            c.map_guest_memory(&mem)
                .map_err(|e| VmError::Vfio(e.to_string()))?;
        }
        let mmio_slots: Arc<dyn vfio::MmioSlots> =
            Arc::new(KvmMmioSlots::new(vm.clone(), mem.num_regions() as u32));

        // Interrupt hierarchy: KVM vector layer, then the remap layer (VT-d or none).
        let max_routes = kvm
            .check_extension_int(Cap::IrqRouting)
            .max(IOAPIC_PINS as i32 + 1) as u32;
        let vectors: Arc<dyn VectorLayer> =
            Arc::new(KvmVectorLayer::new(vm.clone(), IOAPIC_PINS, max_routes));
        let (hierarchy, vtd) = match config.iommu {
            None => (InterruptHierarchy::new(vectors, Arc::new(NoRemap)), None),
            Some(IommuKind::Intel) => {
                let vtd = VtdUnit::new(
                    mem.clone(),
                    vectors.clone(),
                    VtdConfig {
                        register_base: VTD_BASE,
                        ioapic_source_id: IOAPIC_REQUESTER_ID,
                        ..Default::default()
                    },
                );
                let h = InterruptHierarchy::new(vectors, vtd.clone());
                vtd.set_hierarchy(Arc::downgrade(&h));
                (h, Some(vtd))
            }
        };

        let exit = Arc::new(ExitSignal {
            evt: EventFd::new(EFD_NONBLOCK).map_err(host_err("eventfd"))?,
            reason: Mutex::new(None),
        });

        // Devices.
        let mut io = IoManager::new();
        // With remapping, Linux programs remappable RTEs and EOIs level pins through the
        // EOI register of a version 0x20 IOAPIC.
        let ioapic_version = if vtd.is_some() {
            IOAPIC_VERSION_20
        } else {
            IOAPIC_VERSION_11
        };
        let ioapic = Arc::new(Ioapic::with_version(0, &hierarchy, ioapic_version));
        let range = |base: u64, size: u64| {
            MmioRange::new(MmioAddress(base), size).map_err(|e| VmError::Device(format!("{e:?}")))
        };
        let prange = |base: u16, size: u16| {
            PioRange::new(PioAddress(base), size).map_err(|e| VmError::Device(format!("{e:?}")))
        };
        let reg_err = |e: vm_device::bus::Error| VmError::Device(format!("{e:?}"));
        io.register_mmio(range(IOAPIC_BASE, IOAPIC_SIZE)?, ioapic.clone())
            .map_err(reg_err)?;

        let serial_input_ready = EventFd::new(EFD_NONBLOCK).map_err(host_err("eventfd"))?;
        let mut serial_out = None;
        let serial = match &config.serial {
            SerialMode::Off => None,
            mode => {
                let out: Box<dyn Write + Send> = match mode {
                    SerialMode::File(p) => Box::new(
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(p)
                            .map_err(host_err(format!(
                                "cannot open serial file {}",
                                p.display()
                            )))?,
                    ),
                    _ => {
                        // SAFETY: dup of stdout gives a descriptor this File owns exclusively.
                        let fd = unsafe { libc::dup(1) };
                        if fd < 0 {
                            return Err(host_err("dup(stdout)")(std::io::Error::last_os_error()));
                        }
                        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
                        Box::new(unsafe { File::from_raw_fd(fd) })
                    }
                };
                // Guest output never waits for the host: a bounded buffer and a writer
                // thread sit between the UART and stdout or the file.
                let (out, handle) = SerialOutput::spawn(out, OUTPUT_BUFFER_BYTES)
                    .map_err(host_err("spawning the serial output thread"))?;
                serial_out = Some(handle);
                let port = Arc::new(SerialPort::new(
                    IoapicPin::new(ioapic.clone(), COM1_PIN),
                    serial_input_ready
                        .try_clone()
                        .map_err(host_err("eventfd"))?,
                    Box::new(out),
                ));
                io.register_pio(prange(COM1_PORT, 8)?, port.clone())
                    .map_err(reg_err)?;
                Some(port)
            }
        };

        let exit_pm = exit.clone();
        let pm = Arc::new(PowerManagement::new(
            acpi::ACPI_S5_SLP_TYP,
            acpi::ACPI_RESET_VALUE,
            Box::new(move |ev| {
                exit_pm.raise(match ev {
                    GuestEvent::PowerOff => ExitReason::PowerOff,
                    GuestEvent::Reboot => ExitReason::Reboot,
                })
            }),
        ));
        io.register_pio(
            prange(ACPI_PM_PORT, 1)?,
            Arc::new(SleepControlPort(pm.clone())),
        )
        .map_err(reg_err)?;
        io.register_pio(prange(0x64, 1)?, Arc::new(I8042Port(pm.clone())))
            .map_err(reg_err)?;

        // PCI.
        let mmio64_start = pci_mmio64_start(config.memory);
        let windows = vec![
            (PCI_MMIO32_START, PCI_MMIO32_SIZE),
            (mmio64_start, PCI_MMIO64_SIZE),
        ];
        let mut vfio_hosts = vfio_hosts.into_iter();
        let mut vfio_devices = Vec::new();
        let mut pci_intx = Vec::new();
        let mut root = PciRoot::new();
        for dev in &config.devices {
            let slot = root
                .next_free_slot()
                .ok_or_else(|| VmError::Device("no free PCI slot".into()))?;
            let requester = RequesterId::pci(0, slot, 0);
            let device: Arc<Mutex<dyn PciDevice>> = match dev {
                DeviceConfig::IrqTest {
                    vectors,
                    ims,
                    doorbell,
                } => {
                    let mut d = IrqTest::with_ims(&hierarchy, requester, *vectors, *ims)
                        .map_err(|e| VmError::Device(e.to_string()))?;
                    if *doorbell {
                        d.enable_doorbells(Arc::new(KvmIoEvents(vm.clone())))
                            .map_err(|e| VmError::Device(e.to_string()))?;
                    }
                    Arc::new(Mutex::new(d))
                }
                DeviceConfig::Vfio { msix, .. } => {
                    let host = vfio_hosts
                        .next()
                        .ok_or_else(|| VmError::Device("vfio device not opened".into()))?;
                    let mut v = vfio::VfioPciDevice::new(
                        host,
                        &hierarchy,
                        requester,
                        *msix,
                        mmio_slots.clone(),
                        windows.clone(),
                    )
                    .map_err(|e| VmError::Vfio(e.to_string()))?;
                    attach_intx(&mut v, &hierarchy, &ioapic, slot, &mut pci_intx)?;
                    let d = Arc::new(Mutex::new(v));
                    vfio_devices.push(d.clone());
                    d
                }
                DeviceConfig::Dsa { .. } => {
                    let cfg = dev.dsa_config().unwrap_or_default();
                    Arc::new(Mutex::new(
                        Dsa::new(&hierarchy, requester, mem.clone(), cfg)
                            .map_err(|e| VmError::Device(e.to_string()))?,
                    ))
                }
            };
            root.add_device(device)
                .map_err(|e| VmError::Device(e.to_string()))?;
        }
        // virtio devices: disks (one request queue per vCPU), then the devices on vhost
        // kernel back-ends (a tap created here goes away with its descriptor, so an error
        // below leaves nothing behind).
        let mut virtio_devs: Vec<Box<dyn virtio::VirtioDevice>> = Vec::new();
        for (i, disk) in disks.into_iter().enumerate() {
            virtio_devs.push(Box::new(
                virtio::blk::Block::new(disk, config.vcpus as usize, &format!("blk{i}"))
                    .map_err(|e| VmError::Device(e.to_string()))?,
            ));
        }
        for n in &config.nets {
            virtio_devs.push(Box::new(
                vhost_devices::VhostNetDevice::new(&n.tap, n.mac, mem.clone())
                    .map_err(|e| VmError::Device(format!("--net tap={}: {e}", n.tap)))?,
            ));
        }
        if let Some(v) = &config.vsock {
            virtio_devs.push(Box::new(
                vhost_devices::VhostVsockDevice::new(v.cid, mem.clone())
                    .map_err(|e| VmError::Device(format!("--vsock: {e}")))?,
            ));
        }
        let ioevents: Arc<dyn virtio::IoEventRegistry> = Arc::new(KvmIoEvents(vm.clone()));
        for dev in virtio_devs {
            let slot = root
                .next_free_slot()
                .ok_or_else(|| VmError::Device("no free PCI slot".into()))?;
            let requester = RequesterId::pci(0, slot, 0);
            let pci = virtio::VirtioPciDevice::new(
                dev,
                &hierarchy,
                requester,
                mem.clone(),
                ioevents.clone(),
            )
            .map_err(|e| VmError::Device(e.to_string()))?;
            root.add_device(Arc::new(Mutex::new(pci)))
                .map_err(|e| VmError::Device(e.to_string()))?;
        }
        let mut mmio32 = AddressAllocator::new(PCI_MMIO32_START, PCI_MMIO32_SIZE)
            .map_err(|e| VmError::Device(e.to_string()))?;
        let mut mmio64 = AddressAllocator::new(mmio64_start, PCI_MMIO64_SIZE)
            .map_err(|e| VmError::Device(e.to_string()))?;
        root.allocate_bars(&mut mmio32, &mut mmio64)
            .map_err(|e| VmError::Device(e.to_string()))?;
        // Pass-through BARs: the device's own pages at the addresses just chosen.
        for d in &vfio_devices {
            d.lock().unwrap_or_else(|e| e.into_inner()).sync_bars();
        }
        let root = Arc::new(root);
        // 0xCF8..0xCFF, with the byte-wide reset control register at 0xCF9 inside it.
        let cfg_io = ConfigIoWithReset {
            config: PciConfigIo::new(root.clone()),
            reset: ResetControlPort(pm),
        };
        io.register_pio(prange(0xcf8, 8)?, Arc::new(cfg_io))
            .map_err(reg_err)?;
        io.register_mmio(
            range(PCI_ECAM_START, PCI_ECAM_SIZE)?,
            Arc::new(PciEcam::new(root.clone())),
        )
        .map_err(reg_err)?;
        io.register_mmio(
            range(PCI_MMIO32_START, PCI_MMIO32_SIZE)?,
            Arc::new(PciMmioWindow::new(root.clone())),
        )
        .map_err(reg_err)?;
        io.register_mmio(
            range(mmio64_start, PCI_MMIO64_SIZE)?,
            Arc::new(PciMmioWindow::new(root)),
        )
        .map_err(reg_err)?;

        let mut extra_tables = Vec::new();
        if let Some(vtd) = &vtd {
            io.register_mmio(range(VTD_BASE, VTD_SIZE)?, Arc::new(VtdMmio(vtd.clone())))
                .map_err(reg_err)?;
            extra_tables.push(vtd.dmar_table(0, *b"RUSTVM", *b"RUSTVMM "));
        }

        // ACPI, then the kernel (the zero page points at the RSDP).
        let acpi_cfg = AcpiConfig {
            num_cpus: config.vcpus,
            ioapic_id: 0,
            ioapic_addr: IOAPIC_BASE as u32,
            ioapic_gsi_base: 0,
            lapic_addr: LAPIC_START as u32,
            ecam_base: PCI_ECAM_START,
            ecam_end_bus: PCI_ECAM_END_BUS,
            pci_mmio32: (PCI_MMIO32_START, PCI_MMIO32_SIZE),
            pci_mmio64: (mmio64_start, PCI_MMIO64_SIZE),
            pm_port: ACPI_PM_PORT,
            serial_com1: serial.is_some(),
            pci_intx,
            extra_tables,
        };
        let rsdp = acpi::create_acpi_tables(
            &mem,
            GuestAddress(RSDP_ADDR),
            GuestAddress(ACPI_TABLES_ADDR),
            GuestAddress(ACPI_TABLES_END),
            &acpi_cfg,
        )?;
        let boot_info = boot::load_linux(
            &mem,
            config.memory,
            &config.kernel,
            config.initramfs.as_deref(),
            &config.cmdline,
            Some(rsdp.raw_value()),
        )?;

        // vCPUs.
        let base_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let extra = cpu::ExtraFeatures {
            movdir64b: movdir64b.advertised(),
        };
        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            cpu::configure_vcpu(&kvm, &vcpu, &base_cpuid, id, config.vcpus, extra)?;
            if id == 0 {
                cpu::setup_boot_vcpu(&vcpu, &boot_info)?;
            }
            vcpus.push(vcpu);
        }

        Ok(Self {
            config,
            vcpus,
            io: Arc::new(io),
            ioapic,
            serial,
            serial_out,
            serial_input_ready,
            hierarchy,
            exit,
            sandbox,
            vfio_devices,
            _vfio_container: vfio_container,
            _vm: vm,
            mem,
        })
    }

    /// The VM's interrupt hierarchy.
    pub fn hierarchy(&self) -> &Arc<InterruptHierarchy> {
        &self.hierarchy
    }

    /// Runs the VM until the guest powers off or reboots, a vCPU fails, a terminating
    /// signal arrives or the user types the console escape (Ctrl-A x).
    pub fn run(mut self) -> Result<ExitReason, VmError> {
        // The signals are blocked since the start of main (lifecycle::block_handled_signals).
        let signals = SignalFd::new().map_err(host_err("signalfd"))?;
        for (id, vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let io = self.io.clone();
            let ioapic = self.ioapic.clone();
            let exit = self.exit.clone();
            // Each vCPU thread keeps guest memory mapped for as long as it can run.
            let mem = self.mem.clone();
            let sandbox = self.sandbox.clone();
            thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    // Whatever way this thread ends, the VM does not keep running without it.
                    let _guard = VcpuExitGuard { id, exit: &exit };
                    if let Err(e) = sandbox.apply(ThreadKind::Vcpu, &format!("vcpu{id}")) {
                        exit.raise(ExitReason::Error(e.to_string()));
                        return;
                    }
                    if id == 0 {
                        test_panic("vcpu");
                    }
                    run_vcpu(id, vcpu, &io, &ioapic, &exit, &mem)
                })
                .map_err(host_err("spawning vCPU thread"))?;
        }

        let tty = matches!(self.config.serial, SerialMode::Tty);
        let raw = if tty { RawTerminal::enter(0) } else { None };
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .map_err(|e| VmError::Device(format!("event manager: {e:?}")))?;
        if let (true, Some(serial)) = (tty, &self.serial) {
            em.add_subscriber(Arc::new(Mutex::new(Console {
                serial: serial.clone(),
                ready: self
                    .serial_input_ready
                    .try_clone()
                    .map_err(host_err("eventfd"))?,
                // The escape sequence only on an interactive terminal; piped input is
                // passed through unchanged.
                input: InputQueue::new(CONSOLE_PENDING_MAX, raw.is_some()),
                exit: self.exit.clone(),
                stdin_paused: false,
            })));
        }
        em.add_subscriber(Arc::new(Mutex::new(Control {
            signals,
            exit: self.exit.clone(),
            hierarchy: self.hierarchy.clone(),
            serial_out: self.serial_out.clone(),
        })));
        // Every thread exists now: confine the control loop.
        self.sandbox.apply(ThreadKind::Main, "main")?;
        test_panic("main");
        let reason = loop {
            if let Err(e) = em.run() {
                warn!("event loop: {e:?}");
            }
            if let Some(r) = self.exit.get() {
                break r;
            }
        };
        if let Some(out) = &self.serial_out {
            // A stalled stdout must not hold up the exit: what is left counts as dropped.
            let drained = out.drain(SERIAL_DRAIN_TIMEOUT);
            let lost = out.dropped() + if drained { 0 } else { out.buffered() as u64 };
            if lost > 0 {
                warn!("serial: {lost} bytes of guest output dropped (output stalled)");
            }
        }
        drop(raw);
        // Host interrupts off and the pass-through devices reset before the VMM exits.
        for d in &self.vfio_devices {
            d.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
        }
        if self.config.print_interrupts {
            eprint!("{}", self.hierarchy.render());
        }
        Ok(reason)
    }
}

/// How long the exit waits for buffered guest output to reach a slow stdout or file.
const SERIAL_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Ends the VM when a vCPU thread ends for any reason (returns after raising its own exit
/// reason, or unwinds): first exit reason wins, so this only matters when none was raised.
struct VcpuExitGuard<'a> {
    id: usize,
    exit: &'a ExitSignal,
}

impl Drop for VcpuExitGuard<'_> {
    fn drop(&mut self) {
        self.exit.raise(ExitReason::Error(format!(
            "vcpu{} stopped unexpectedly",
            self.id
        )));
    }
}

/// The VT-d register page on the MMIO bus.
struct VtdMmio(Arc<VtdUnit>);

impl vm_device::DeviceMmio for VtdMmio {
    fn mmio_read(&self, _base: MmioAddress, offset: u64, data: &mut [u8]) {
        self.0.mmio_read(offset, data)
    }
    fn mmio_write(&self, _base: MmioAddress, offset: u64, data: &[u8]) {
        self.0.mmio_write(offset, data)
    }
}

/// Configuration mechanism #1 ports plus the reset control register (a byte at 0xCF9).
struct ConfigIoWithReset {
    config: PciConfigIo,
    reset: ResetControlPort,
}

impl vm_device::DevicePio for ConfigIoWithReset {
    fn pio_read(&self, base: PioAddress, offset: u16, data: &mut [u8]) {
        if offset == 1 && data.len() == 1 {
            self.reset.pio_read(base, 0, data)
        } else {
            self.config.pio_read(base, offset, data)
        }
    }
    fn pio_write(&self, base: PioAddress, offset: u16, data: &[u8]) {
        if offset == 1 && data.len() == 1 {
            self.reset.pio_write(base, 0, data)
        } else {
            self.config.pio_write(base, offset, data)
        }
    }
}

/// Whether the host CPU implements MOVDIR64B (CPUID.7.0:ECX[28]).
fn host_has_movdir64b() -> bool {
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    leaf7.ecx & (1 << 28) != 0
}

/// Performs a guest MOVDIR64B that KVM could not emulate: 64 bytes from the source to a
/// portal (emulated MMIO), then advances RIP. `Err` when it is not such an instruction or
/// the access is not allowed (see [`movdir64b::check_access`]): the caller injects #UD.
fn emulate_movdir64b(
    vcpu: &VcpuFd,
    io: &IoManager,
    mem: &GuestMemoryMmap,
    insn: &[u8],
) -> Result<(), String> {
    let mut regs = vcpu.get_regs().map_err(|e| e.to_string())?;
    let sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;
    let op = movdir64b::decode(insn, &regs, |s| match s {
        movdir64b::Segment::Fs => sregs.fs.base,
        movdir64b::Segment::Gs => sregs.gs.base,
    })
    .map_err(|e| e.to_string())?;
    // KVM reports the CPL as SS.DPL on both VMX and SVM.
    let cpl = sregs.ss.dpl;
    let translate = |gva: u64| -> Result<(u64, movdir64b::PageAccess), String> {
        let t = vcpu.translate_gva(gva).map_err(|e| e.to_string())?;
        Ok((
            t.physical_address,
            movdir64b::PageAccess {
                valid: t.valid != 0,
                writeable: t.writeable != 0,
                user: t.usermode != 0,
            },
        ))
    };
    // The source may cross a page boundary: translate each part.
    let mut src = Vec::with_capacity(2);
    let mut done = 0;
    while done < movdir64b::MOVDIR64B_SIZE {
        let va = op.src.wrapping_add(done as u64);
        let chunk = (0x1000 - (va & 0xfff) as usize).min(movdir64b::MOVDIR64B_SIZE - done);
        let (gpa, access) = translate(va)?;
        src.push((va, gpa, chunk, access));
        done += chunk;
    }
    let (dst, dst_access) = translate(op.dst)?;
    let dst_is_portal = !mem.address_in_range(GuestAddress(dst));
    let checks: Vec<_> = src.iter().map(|&(va, _, _, a)| (va, a)).collect();
    movdir64b::check_access(&op, cpl, &checks, dst_access, dst_is_portal)
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; movdir64b::MOVDIR64B_SIZE];
    let mut done = 0;
    for &(_, gpa, chunk, _) in &src {
        mem.read_slice(&mut buf[done..done + chunk], GuestAddress(gpa))
            .map_err(|e| format!("MOVDIR64B source: {e}"))?;
        done += chunk;
    }
    io.mmio_write(MmioAddress(dst), &buf)
        .map_err(|_| format!("MOVDIR64B destination {dst:#x}: no device"))?;
    regs.rip = regs.rip.wrapping_add(op.len as u64);
    vcpu.set_regs(&regs).map_err(|e| e.to_string())
}

/// Injects #UD (vector 6, no error code) at the current instruction, as KVM does for an
/// instruction it cannot emulate.
pub fn inject_ud(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    const UD_VECTOR: u8 = 6;
    let mut events = vcpu.get_vcpu_events()?;
    events.exception.injected = 1;
    events.exception.nr = UD_VECTOR;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    vcpu.set_vcpu_events(&events)
}

fn run_vcpu(
    id: usize,
    mut vcpu: VcpuFd,
    io: &IoManager,
    ioapic: &Ioapic,
    exit: &ExitSignal,
    mem: &GuestMemoryMmap,
) {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if io.pio_read(PioAddress(port), data).is_err() {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if io.pio_write(PioAddress(port), data).is_err() {
                    debug!("vcpu{id}: unhandled out {port:#x} {data:x?}");
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if io.mmio_read(MmioAddress(addr), data).is_err() {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if io.mmio_write(MmioAddress(addr), data).is_err() {
                    debug!("vcpu{id}: unhandled mmio write {addr:#x}");
                }
            }
            Ok(VcpuExit::IoapicEoi(vector)) => ioapic.end_of_interrupt(vector),
            Ok(VcpuExit::Shutdown) => {
                // Linux's last-resort reboot path, but also what a crashing guest looks like:
                // say where it happened.
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                warn!("vcpu{id}: triple fault (rip {rip:#x}): treating as a guest reset");
                exit.raise(ExitReason::Reboot);
                return;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                exit.raise(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reboot,
                    k => ExitReason::Error(format!("vcpu{id}: system event {k}")),
                });
                return;
            }
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => {}
            Ok(VcpuExit::InternalError) => {
                // SAFETY: after KVM_EXIT_INTERNAL_ERROR, `internal` and `emulation_failure`
                // (same leading suberror field) are the union members KVM filled in.
                let run = vcpu.get_kvm_run();
                let sub = unsafe { run.__bindgen_anon_1.internal.suberror };
                if sub == KVM_INTERNAL_ERROR_EMULATION {
                    // SAFETY: see above; flags tell whether the instruction bytes are valid.
                    let ef = unsafe { run.__bindgen_anon_1.emulation_failure };
                    let result = if ef.flags
                        & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
                        != 0
                    {
                        // SAFETY: the bytes member is valid when the flag is set.
                        let insn = unsafe { ef.__bindgen_anon_1.__bindgen_anon_1 };
                        let n = usize::from(insn.insn_size).min(insn.insn_bytes.len());
                        emulate_movdir64b(&vcpu, io, mem, &insn.insn_bytes[..n])
                    } else {
                        Err("no instruction bytes".to_string())
                    };
                    let Err(why) = result else { continue };
                    // Not a MOVDIR64B the VMM performs. As KVM does without
                    // KVM_CAP_EXIT_ON_EMULATION_FAILURE: guest user mode gets #UD; a failure
                    // in the guest kernel ends the VM (below) instead of feeding it a #UD.
                    let cpl = vcpu.get_sregs().map(|s| s.ss.dpl).unwrap_or(0);
                    if cpl != 3 {
                        let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                        exit.raise(ExitReason::Error(format!(
                            "vcpu{id}: KVM could not emulate the guest kernel's instruction at \
                             rip {rip:#x} ({why})"
                        )));
                        return;
                    }
                    static UD_LOG: std::sync::OnceLock<interrupt::RateLimiter> =
                        std::sync::OnceLock::new();
                    let limiter = UD_LOG.get_or_init(|| {
                        interrupt::RateLimiter::new(10, std::time::Duration::from_secs(1))
                    });
                    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    interrupt::warn_ratelimited!(
                        limiter,
                        "vcpu{id}: instruction at rip {rip:#x} not emulated ({why}): injecting #UD"
                    );
                    match inject_ud(&vcpu) {
                        Ok(()) => continue,
                        Err(e) => warn!("vcpu{id}: cannot inject #UD: {e}"),
                    }
                }
                let regs = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                exit.raise(ExitReason::Error(format!(
                    "vcpu{id}: KVM internal error, suberror {sub} at rip {regs:#x}"
                )));
                return;
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                exit.raise(ExitReason::Error(format!(
                    "vcpu{id}: VM entry failed (reason {reason:#x}, cpu {cpu})"
                )));
                return;
            }
            Ok(other) => {
                exit.raise(ExitReason::Error(format!(
                    "vcpu{id}: unexpected exit {other:?}"
                )));
                return;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                error!("vcpu{id}: KVM_RUN: {e}");
                exit.raise(ExitReason::Error(format!("vcpu{id}: KVM_RUN failed: {e}")));
                return;
            }
        }
    }
}

/// First I/O APIC input for PCI INTx; pass-through functions get 16, 17, ... 23 in order.
const INTX_FIRST_PIN: usize = 16;

/// Gives pass-through function `v` at `slot` INTx on the next free I/O APIC input (pins
/// 16..24, one per function, none shared), recording the routing for the ACPI `_PRT`.
fn attach_intx(
    v: &mut vfio::VfioPciDevice,
    hierarchy: &Arc<InterruptHierarchy>,
    ioapic: &Arc<Ioapic>,
    slot: u8,
    pci_intx: &mut Vec<(u8, u32)>,
) -> Result<(), VmError> {
    let pin = INTX_FIRST_PIN + pci_intx.len();
    if pin >= devices::ioapic::NUM_PINS {
        warn!("{}: no I/O APIC input left for INTx", v.name());
        return Ok(());
    }
    let line = Arc::new(IoapicLine {
        ioapic: ioapic.clone(),
        pin,
    });
    let intx = v
        .attach_intx(hierarchy, line, pin as u8)
        .map_err(|e| VmError::Vfio(e.to_string()))?;
    if let Some(intx) = intx {
        ioapic.set_eoi_listener(pin, Arc::new(IntxEoi(intx)));
        pci_intx.push((slot, pin as u32));
    }
    Ok(())
}

/// A pass-through function's INTx line: an I/O APIC input.
struct IoapicLine {
    ioapic: Arc<Ioapic>,
    pin: usize,
}

impl vfio::IntxLine for IoapicLine {
    fn set_level(&self, asserted: bool) {
        self.ioapic.set_irq(self.pin, asserted);
    }
}

/// The guest's EOI of an INTx line deasserts it and unmasks the host's INTx; the pin's
/// unmask turns host INTx on.
struct IntxEoi(Arc<vfio::Intx>);

impl devices::ioapic::EoiListener for IntxEoi {
    fn end_of_interrupt(&self, _pin: usize) {
        self.0.end_of_interrupt();
    }
    fn mask_changed(&self, _pin: usize, masked: bool) {
        self.0.pin_mask_changed(masked);
    }
}

/// Checks and opens the `--device vfio` functions (in command-line order) in one container.
fn open_vfio_devices(
    config: &VmConfig,
) -> Result<(Option<vfio::Container>, Vec<Arc<vfio::HostDevice>>), VmError> {
    let bdfs: Vec<vfio::Bdf> = config
        .devices
        .iter()
        .filter_map(|d| match d {
            DeviceConfig::Vfio { host, .. } => Some(*host),
            _ => None,
        })
        .collect();
    if bdfs.is_empty() {
        return Ok((None, Vec::new()));
    }
    let err = |e: vfio::HostError| VmError::Vfio(e.to_string());
    let sys = std::path::Path::new("/sys");
    vfio::preflight(&bdfs, sys, std::path::Path::new("/dev")).map_err(err)?;
    let container = vfio::Container::new().map_err(err)?;
    let hosts = bdfs
        .iter()
        .map(|&b| vfio::HostDevice::open(b, &container, sys).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    Ok((Some(container), hosts))
}

/// KVM memory slots for pass-through BAR areas, numbered after guest RAM's.
struct KvmMmioSlots {
    vm: Arc<VmFd>,
    /// Next never-used slot, and slots given back.
    slots: Mutex<(u32, Vec<u32>)>,
}

impl KvmMmioSlots {
    fn new(vm: Arc<VmFd>, first: u32) -> Self {
        Self {
            vm,
            slots: Mutex::new((first, Vec::new())),
        }
    }

    fn set(&self, slot: u32, gpa: u64, size: u64, host: u64) -> Result<(), kvm_ioctls::Error> {
        let r = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: `host..host + size` is a device mapping the caller keeps until it removes
        // the slot (size 0), see `MmioSlots::map`.
        unsafe { self.vm.set_user_memory_region(r) }
    }
}

impl vfio::MmioSlots for KvmMmioSlots {
    unsafe fn map(&self, gpa: u64, size: u64, host: *mut u8) -> std::io::Result<u32> {
        let mut g = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match g.1.pop() {
            Some(s) => s,
            None => {
                g.0 += 1;
                g.0 - 1
            }
        };
        if let Err(e) = self.set(slot, gpa, size, host as u64) {
            g.1.push(slot);
            return Err(std::io::Error::from_raw_os_error(e.errno()));
        }
        Ok(slot)
    }

    fn unmap(&self, slot: u32) {
        if let Err(e) = self.set(slot, 0, 0, 0) {
            warn!("removing memory slot {slot}: {e}");
            return;
        }
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .push(slot);
    }
}

/// Most host input held back for the guest; beyond this stdin is not read until the guest
/// drains its receive FIFO (back-pressure instead of unbounded buffering).
const CONSOLE_PENDING_MAX: usize = 4096;

/// Moves host input to the serial port, holding back what does not fit in its FIFO, and
/// watches an interactive terminal for the escape sequence.
struct Console {
    serial: Arc<SerialPort>,
    ready: EventFd,
    input: InputQueue,
    exit: Arc<ExitSignal>,
    /// stdin is not polled while `input` is full.
    stdin_paused: bool,
}

impl Console {
    fn push(&mut self) {
        while !self.input.is_empty() {
            let n = self.serial.enqueue_input(self.input.front());
            if n == 0 {
                break;
            }
            self.input.consume(n);
        }
    }

    /// Reads what fits in the input queue from stdin; false on EOF or error.
    fn read_stdin(&mut self) -> bool {
        let mut buf = [0u8; 256];
        let want = self.input.room().min(buf.len());
        if want == 0 {
            return true;
        }
        // SAFETY: reads into a stack buffer of at least `want` bytes.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), want) };
        if n <= 0 {
            return false;
        }
        if self.input.accept(&buf[..n as usize]) == EscapeAction::Quit {
            self.exit.raise(ExitReason::Quit);
        }
        true
    }

    /// Polls stdin only while there is room for its input.
    fn update_stdin_interest(&mut self, ops: &mut EventOps) {
        let full = self.input.room() == 0;
        if full != self.stdin_paused {
            let set = if full {
                EventSet::empty()
            } else {
                EventSet::IN
            };
            if ops.modify(Events::new_raw(0, set)).is_ok() {
                self.stdin_paused = full;
            }
        }
    }
}

impl MutEventSubscriber for Console {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == 0 {
            if !self.read_stdin() {
                // EOF or error: stop watching stdin; the guest keeps running.
                let _ = ops.remove(Events::empty_raw(0));
                return;
            }
        } else {
            let _ = self.ready.read();
        }
        self.push();
        self.update_stdin_interest(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        // stdin may be a file or /dev/null, which epoll cannot watch: then there is no input.
        if let Err(e) = ops.add(Events::new_raw(0, EventSet::IN)) {
            debug!("stdin is not pollable, no console input: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.ready, EventSet::IN)) {
            warn!("cannot watch serial readiness: {e:?}");
        }
    }
}

/// Handles signals and the exit eventfd.
struct Control {
    signals: SignalFd,
    exit: Arc<ExitSignal>,
    hierarchy: Arc<InterruptHierarchy>,
    serial_out: Option<SerialOutputHandle>,
}

impl MutEventSubscriber for Control {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.exit.evt.as_raw_fd() {
            let _ = self.exit.evt.read();
            return;
        }
        while let Some(sig) = self.signals.read() {
            match sig {
                libc::SIGUSR1 => {
                    let mut dump = self.hierarchy.render();
                    if let Some(out) = &self.serial_out {
                        dump.push_str(&format!(
                            "serial output: {} bytes dropped, {} buffered\n",
                            out.dropped(),
                            out.buffered()
                        ));
                    }
                    eprint!("{dump}");
                }
                s => self.exit.raise(ExitReason::Signal(s)),
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.exit.evt.as_raw_fd(), self.signals.fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                warn!("cannot watch control fd: {e:?}");
            }
        }
    }
}
