//! KVM integration tier for the VMM's answer to an instruction it does not emulate: the
//! vCPU gets #UD (`vmm::vm::inject_ud`, `KVM_SET_VCPU_EVENTS` with an injected exception 6),
//! and the guest's own #UD handler runs, as on hardware.
//!
//! `VMM_SKIP_KVM_TESTS=1` reports every test as ignored.

mod common;

use common::{KvmGuest, VcpuHooks};

const UD_VECTOR: u8 = 6;

fn injected_ud_reaches_the_guest_handler() {
    let mut g = KvmGuest::new();
    vmm::vm::inject_ud(g.vcpu().expect("vCPU not started yet")).expect("KVM_SET_VCPU_EVENTS");
    g.start_no_wait(VcpuHooks::default());
    g.wait_until("the guest's #UD handler ran", |o| !o.faults.is_empty());
    let o = g.observed();
    assert_eq!(
        o.faults,
        vec![UD_VECTOR],
        "exception vectors the guest took"
    );
    assert!(
        !o.ready,
        "the guest ran its entry code before taking the injected #UD"
    );
}

tests::test_main!(injected_ud_reaches_the_guest_handler);
