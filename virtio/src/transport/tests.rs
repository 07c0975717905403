use std::sync::Mutex;

use interrupt::{KvmVectorLayer, NoRemap, RecordingBackend};
use pci::config::command;
use pci::RecordingIoEvents;
use vm_memory::GuestAddress;

use super::*;
use crate::device::ActivateError;
use crate::spec::common_cfg as cc;

/// Features and (queue index, vector) of one activation.
type ActivationRecord = (u64, Vec<(usize, Option<u16>)>);

#[derive(Default)]
struct Log {
    activations: Vec<ActivationRecord>,
    resets: usize,
}

struct Mock(Arc<Mutex<Log>>);

impl VirtioDevice for Mock {
    fn device_type(&self) -> u32 {
        2
    }
    fn name(&self) -> &str {
        "mock"
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![64, 64]
    }
    fn features(&self) -> u64 {
        1 << 9
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let q = a
            .queues
            .iter()
            .map(|q| (q.index, q.interrupt.vector()))
            .collect();
        self.0.lock().unwrap().activations.push((a.features, q));
        Ok(())
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
    }
}

struct T {
    d: VirtioPciDevice,
    log: Arc<Mutex<Log>>,
    io: Arc<RecordingIoEvents>,
}

fn setup() -> T {
    let h = InterruptHierarchy::new(
        Arc::new(KvmVectorLayer::new(
            Arc::new(RecordingBackend::default()),
            24,
            4096,
        )),
        Arc::new(NoRemap),
    );
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let io = Arc::new(RecordingIoEvents::default());
    let d = VirtioPciDevice::new(
        Box::new(Mock(log.clone())),
        &h,
        RequesterId::pci(0, 3, 0),
        mem,
        io.clone(),
    )
    .unwrap();
    T { d, log, io }
}

impl T {
    fn w(&mut self, off: u64, data: &[u8]) {
        self.d.bar_write(0, off, data);
    }
    fn r8(&mut self, off: u64) -> u8 {
        let mut b = [0u8; 1];
        self.d.bar_read(0, off, &mut b);
        b[0]
    }
    fn setup_queue(&mut self, q: u16, base: u64, vector: u16) {
        self.w(cc::QUEUE_SELECT, &q.to_le_bytes());
        self.w(cc::QUEUE_SIZE, &64u16.to_le_bytes());
        self.w(cc::QUEUE_DESC, &base.to_le_bytes());
        self.w(cc::QUEUE_DRIVER, &(base + 0x1000).to_le_bytes());
        self.w(cc::QUEUE_DEVICE, &(base + 0x2000).to_le_bytes());
        self.w(cc::QUEUE_MSIX_VECTOR, &vector.to_le_bytes());
        self.w(cc::QUEUE_ENABLE, &1u16.to_le_bytes());
    }
    fn start(&mut self, features: u64) {
        self.w(cc::DEVICE_STATUS, &[status::ACKNOWLEDGE | status::DRIVER]);
        self.w(cc::DRIVER_FEATURE_SELECT, &0u32.to_le_bytes());
        self.w(cc::DRIVER_FEATURE, &(features as u32).to_le_bytes());
        self.w(cc::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
        self.w(cc::DRIVER_FEATURE, &((features >> 32) as u32).to_le_bytes());
        self.w(
            cc::DEVICE_STATUS,
            &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK],
        );
    }
    fn driver_ok(&mut self) {
        self.w(
            cc::DEVICE_STATUS,
            &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK],
        );
    }
}

/// Walks the capability list: (cfg_type, bar, offset, length) of each virtio capability.
fn virtio_caps(c: &ConfigSpace) -> Vec<(u8, u8, u32, u32)> {
    let mut out = Vec::new();
    let mut p = c.read_dword(reg::CAPABILITIES) as usize & 0xff;
    while p != 0 {
        let id = c.read_dword(p) as u8;
        if id == spec::PCI_CAP_ID_VNDR {
            let w = c.read_dword(p);
            out.push((
                (w >> 24) as u8,
                c.read_dword(p + 4) as u8,
                c.read_dword(p + 8),
                c.read_dword(p + 12),
            ));
        }
        p = (c.read_dword(p) >> 8) as usize & 0xff;
    }
    out
}

#[test]
fn identity_is_a_modern_virtio_device() {
    let t = setup();
    let c = t.d.config();
    assert_eq!(c.u16_at(reg::VENDOR_ID), 0x1af4);
    assert_eq!(c.u16_at(reg::DEVICE_ID), 0x1042);
    assert_eq!(c.u16_at(reg::SUBSYSTEM_ID), 0x40);
    assert_eq!(c.read_dword(reg::REVISION) & 0xff, 1);
}

#[test]
fn capabilities_describe_the_bar_layout() {
    let t = setup();
    let caps = virtio_caps(t.d.config());
    assert_eq!(
        caps,
        vec![
            (cap_type::COMMON, 0, 0, spec::common_cfg::SIZE as u32),
            (cap_type::ISR, 0, 0x1000, 1),
            (cap_type::DEVICE, 0, 0x2000, 0x1000),
            (cap_type::NOTIFY, 0, 0x3000, 8),
        ]
    );
}

#[test]
fn bar_layout_fits_table_and_pba() {
    for q in [1, 2, 16, 1024] {
        let l = BarLayout::new(q);
        assert!(l.table >= NOTIFY_OFFSET + q as u64 * 4);
        assert!(l.pba >= l.table + (q as u64 + 1) * 16);
        assert!(l.size.is_power_of_two() && l.size >= l.pba + 8);
    }
}

#[test]
fn ioeventfds_follow_bar_placement() {
    let mut t = setup();
    t.d.config_mut().set_bar_address(0, 0x1_0000_0000);
    // Decode is off: nothing registered yet.
    t.d.write_config(reg::COMMAND, &command::MEMORY.to_le_bytes());
    let base = 0x1_0000_0000 + NOTIFY_OFFSET;
    assert_eq!(t.io.take(), vec![(true, base), (true, base + 4)]);
    // Linux's BAR sizing: decode off, all ones, restore.
    t.d.write_config(reg::COMMAND, &0u16.to_le_bytes());
    t.d.write_config(reg::BAR0 + 4, &2u32.to_le_bytes());
    t.d.write_config(reg::COMMAND, &command::MEMORY.to_le_bytes());
    let moved = 0x2_0000_0000 + NOTIFY_OFFSET;
    assert_eq!(
        t.io.take(),
        vec![
            (false, base),
            (false, base + 4),
            (true, moved),
            (true, moved + 4)
        ]
    );
}

#[test]
fn notification_through_mmio_exit_signals_the_queue_eventfd() {
    let mut t = setup();
    t.w(NOTIFY_OFFSET + 4, &1u16.to_le_bytes());
    assert_eq!(t.d.notify_eventfd(1).unwrap().read().unwrap(), 1);
    assert!(t.d.notify_eventfd(0).unwrap().read().is_err());
    t.w(NOTIFY_OFFSET + 4 * 9, &1u16.to_le_bytes());
}

#[test]
fn driver_ok_activates_enabled_queues_with_their_vectors() {
    let mut t = setup();
    t.start(spec::features::VERSION_1 | 1 << 9);
    t.setup_queue(1, 0x10000, 2);
    t.driver_ok();
    assert!(t.d.is_active());
    let log = t.log.lock().unwrap();
    assert_eq!(
        log.activations,
        vec![(spec::features::VERSION_1 | 1 << 9, vec![(1, Some(2))])]
    );
}

#[test]
fn queue_outside_guest_memory_sets_needs_reset() {
    let mut t = setup();
    t.start(spec::features::VERSION_1);
    t.setup_queue(0, 0xff000, 0);
    t.driver_ok();
    assert!(!t.d.is_active());
    assert_ne!(t.r8(cc::DEVICE_STATUS) & status::NEEDS_RESET, 0);
    assert!(t.log.lock().unwrap().activations.is_empty());
}

#[test]
fn vector_beyond_the_table_means_no_vector() {
    let mut t = setup();
    t.start(spec::features::VERSION_1);
    t.setup_queue(0, 0x10000, 3);
    t.driver_ok();
    assert_eq!(t.log.lock().unwrap().activations[0].1, vec![(0, None)]);
}

#[test]
fn reset_stops_the_device_and_clears_state() {
    let mut t = setup();
    t.start(spec::features::VERSION_1);
    t.setup_queue(0, 0x10000, 0);
    t.driver_ok();
    t.w(cc::DEVICE_STATUS, &[0]);
    assert_eq!(t.log.lock().unwrap().resets, 1);
    assert!(!t.d.is_active());
    assert_eq!(t.r8(cc::DEVICE_STATUS), 0);
    assert!(!t.d.common().queues()[0].enabled);
    // Activation works again after reset.
    t.start(spec::features::VERSION_1);
    t.setup_queue(0, 0x10000, 0);
    t.driver_ok();
    assert_eq!(t.log.lock().unwrap().activations.len(), 2);
}

#[test]
fn isr_read_clears() {
    let mut t = setup();
    t.start(spec::features::VERSION_1);
    t.setup_queue(0, 0x10000, 0);
    t.driver_ok();
    t.d.isr.fetch_or(isr::QUEUE, Ordering::AcqRel);
    assert_eq!(t.r8(ISR_OFFSET), 1);
    assert_eq!(t.r8(ISR_OFFSET), 0);
}

#[test]
fn device_config_window_reaches_the_device() {
    let mut t = setup();
    let mut b = [0u8; 4];
    t.d.bar_read(0, DEVICE_OFFSET + 8, &mut b);
    assert_eq!(b, [8, 9, 10, 11]);
}

#[test]
fn garbage_accesses_are_harmless() {
    let mut t = setup();
    for off in [
        0u64,
        3,
        0x13,
        0x3b,
        0xfff,
        0x1001,
        0x2fff,
        0x3fff,
        0x7fff,
        u64::MAX,
    ] {
        for len in [1usize, 2, 3, 4, 8] {
            let mut b = vec![0xffu8; len];
            t.d.bar_read(0, off, &mut b);
            t.d.bar_write(0, off, &b);
            t.d.bar_read(1, off, &mut b);
        }
    }
}
