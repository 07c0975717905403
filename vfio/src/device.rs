//! The pass-through PCI function on our root bus.

use std::sync::Arc;

use interrupt::{DeviceDomain, DomainKind, InterruptHierarchy, RequesterId};
use log::{debug, info, warn};
use pci::config::{reg, ConfigSpace, CONFIG_SPACE_SIZE};
use pci::{Bar, BarKind, MsiCapability, MsixCapability, MsixLayout, PciDevice};

use crate::bars::{guest_bar, mmap_areas, msix_ranges, RegionInfo};
use crate::chip::{HostIrqs, IrqMode, VfioChip, INTX_INDEX, MSIX_INDEX, MSI_INDEX};
use crate::config::{
    host_msi_info, host_msix_layout, route_read, route_write, CapPolicy, ConfigIo, ConfigLayout,
};
use crate::host::{Bdf, HostAccess, HostError};
use crate::intx::{Intx, IntxLine};

/// Guest memory slots for BAR areas that go straight to the device (KVM memory slots).
pub trait MmioSlots: Send + Sync {
    /// Maps `size` bytes at host address `host` at guest physical `gpa`; returns the slot.
    ///
    /// # Safety
    /// `host..host + size` must stay mapped until [`unmap`](Self::unmap) of the slot.
    unsafe fn map(&self, gpa: u64, size: u64, host: *mut u8) -> std::io::Result<u32>;
    /// Removes slot `slot`.
    fn unmap(&self, slot: u32);
}

/// How `--device vfio` asked for MSI-X vectors to be added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MsixPolicy {
    /// Dynamic when the host allows it (no NORESIZE), else re-enable.
    #[default]
    Auto,
    /// Always the re-enable fallback (for measuring its cost).
    Reenable,
    /// Dynamic; refused at start when the host sets NORESIZE.
    Dynamic,
}

/// One mmapped part of a BAR.
struct Area {
    offset: u64,
    size: u64,
    host: *mut u8,
    slot: Option<u32>,
}

// SAFETY: `host` is a shared device mapping owned by this struct; it is only handed to KVM
// (by address) and unmapped in Drop, from whichever thread owns the device.
unsafe impl Send for Area {}

struct BarState {
    bar: Bar,
    areas: Vec<Area>,
    mapped_at: Option<u64>,
}

/// A host PCI function passed through to the guest.
pub struct VfioPciDevice {
    name: String,
    host: Arc<dyn HostAccess>,
    shadow: ConfigSpace,
    layout: ConfigLayout,
    msi: Option<MsiCapability>,
    msix: Option<MsixCapability>,
    bars: Vec<Option<BarState>>,
    slots: Arc<dyn MmioSlots>,
    windows: Vec<(u64, u64)>,
    irqs: Arc<HostIrqs>,
    intx: Option<Arc<Intx>>,
    // The domains live as long as the device.
    _domains: Vec<Arc<DeviceDomain>>,
}

/// Errors creating a pass-through device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Host-side failure.
    #[error(transparent)]
    Host(#[from] HostError),
    /// `msix=dynamic` on a host without dynamic MSI-X.
    #[error("vfio {0}: msix=dynamic, but the host's MSI-X is NORESIZE (vectors cannot be added while enabled); use msix=reenable or leave msix= out")]
    NoDynamic(Bdf),
    /// INTx eventfds or their relay watch could not be set up.
    #[error("vfio {0}: INTx: {1}")]
    Intx(Bdf, std::io::Error),
    /// The capabilities cannot be emulated.
    #[error("vfio {0}: {1}")]
    Pci(Bdf, pci::Error),
}

impl VfioPciDevice {
    /// Builds the guest's view of `host` at `requester`, with MSI and MSI-X domains in
    /// `hierarchy`. BAR areas are mapped through `slots` when the guest places them inside
    /// one of `windows` (`(start, size)`) with decoding on.
    pub fn new(
        host: Arc<dyn HostAccess>,
        hierarchy: &Arc<InterruptHierarchy>,
        requester: RequesterId,
        policy: MsixPolicy,
        slots: Arc<dyn MmioSlots>,
        windows: Vec<(u64, u64)>,
    ) -> Result<Self, DeviceError> {
        let bdf = host.bdf();
        let name = format!("vfio {bdf} {requester}");
        let raw = host.read_config_space()?;
        let layout = ConfigLayout::new(&raw);
        let u16_at = |o: usize| u16::from_le_bytes([raw[o], raw[o + 1]]);
        let mut shadow = ConfigSpace::new(
            u16_at(reg::VENDOR_ID),
            u16_at(reg::DEVICE_ID),
            raw[reg::CLASS],
            raw[reg::SUBCLASS],
            raw[reg::PROG_IF],
            raw[reg::REVISION],
        );
        // Single-function, subsystem IDs as the host's; no expansion ROM, no INTx pin
        // (until `attach_intx`).
        shadow.set_bytes(reg::HEADER_TYPE, &[raw[reg::HEADER_TYPE] & 0x7f]);
        shadow.set_bytes(reg::SUBSYSTEM_VENDOR_ID, &raw[0x2c..0x30]);
        shadow.set_bytes(reg::INTERRUPT_PIN, &[0]);

        // MSI-X layout first: BAR areas avoid its pages.
        let msix_cap = layout.find(CapPolicy::EmulatedMsix).copied();
        let msix_layout = msix_cap.and_then(|c| host_msix_layout(&raw, c.offset));

        // BARs.
        let page = page_size();
        let mut bars: Vec<Option<BarState>> = (0..6).map(|_| None).collect();
        let mut i = 0;
        while i < 6 {
            let lo =
                u32::from_le_bytes(raw[0x10 + 4 * i..0x14 + 4 * i].try_into().unwrap_or([0; 4]));
            let region: RegionInfo = host.region(i as u32);
            let Some(bar) = guest_bar(lo, region.size) else {
                i += 1;
                continue;
            };
            if bar.kind == BarKind::Memory64 && i == 5 {
                break;
            }
            shadow
                .set_bar(i, bar)
                .map_err(|e| DeviceError::Pci(bdf, e))?;
            let mut areas = Vec::new();
            if bar.kind != BarKind::Io {
                let trapped = msix_ranges(i, msix_layout.as_ref());
                for (offset, size) in mmap_areas(&region, &trapped, page) {
                    let host_addr = host.mmap(i as u32, offset, size)?;
                    areas.push(Area {
                        offset,
                        size,
                        host: host_addr,
                        slot: None,
                    });
                }
            }
            debug!(
                "{name}: BAR{i} {:?} size {:#x}, direct areas {:x?}",
                bar.kind,
                bar.size,
                areas.iter().map(|a| (a.offset, a.size)).collect::<Vec<_>>()
            );
            bars[i] = Some(BarState {
                bar,
                areas,
                mapped_at: None,
            });
            i += if bar.kind == BarKind::Memory64 { 2 } else { 1 };
        }

        // Interrupts: one domain per type, each with the VFIO chip.
        let (msi_count, _) = host.irq_info(MSI_INDEX);
        let (msix_count, dynamic) = host.irq_info(MSIX_INDEX);
        let mode = match policy {
            MsixPolicy::Reenable => IrqMode::Reenable,
            MsixPolicy::Dynamic if !dynamic && msix_count > 0 => {
                return Err(DeviceError::NoDynamic(bdf))
            }
            MsixPolicy::Dynamic => IrqMode::Dynamic,
            MsixPolicy::Auto if dynamic => IrqMode::Dynamic,
            MsixPolicy::Auto => IrqMode::Reenable,
        };
        info!(
            "{name}: {}; MSI-X vectors added {}",
            crate::host::irq_summary(&*host),
            match mode {
                IrqMode::Dynamic => "one at a time (dynamic)",
                IrqMode::Reenable => "by disable and re-enable",
            }
        );
        let irqs = HostIrqs::new(&name, host.clone(), mode, msi_count, msix_count);
        let mut domains = Vec::new();
        let mut msi = None;
        if let (Some(c), true) = (layout.find(CapPolicy::EmulatedMsi).copied(), msi_count > 0) {
            if let Some((vectors, addr64, pvm)) = host_msi_info(&raw, c.offset) {
                let vectors = vectors.min(msi_count.next_power_of_two() as usize).max(1);
                let d = create_domain(
                    hierarchy,
                    &name,
                    DomainKind::Msi,
                    requester,
                    vectors,
                    &irqs,
                    MSI_INDEX,
                );
                msi = Some(
                    MsiCapability::new_at(&mut shadow, c.offset, vectors, addr64, pvm, d.clone())
                        .map_err(|e| DeviceError::Pci(bdf, e))?,
                );
                domains.push(d);
            }
        }
        let mut msix = None;
        if let (Some(c), Some(l)) = (msix_cap, msix_layout) {
            let l = MsixLayout {
                vectors: l.vectors.min(msix_count.max(1) as usize),
                ..l
            };
            let d = create_domain(
                hierarchy,
                &name,
                DomainKind::MsiX,
                requester,
                l.vectors,
                &irqs,
                MSIX_INDEX,
            );
            msix = Some(
                MsixCapability::new_at(&mut shadow, c.offset, l, d.clone())
                    .map_err(|e| DeviceError::Pci(bdf, e))?,
            );
            domains.push(d);
        }
        layout.link(&mut shadow);
        Ok(Self {
            name,
            host,
            shadow,
            layout,
            msi,
            msix,
            bars,
            slots,
            windows,
            irqs,
            intx: None,
            _domains: domains,
        })
    }

    /// Gives the function INTx (interrupt pin INTA, interrupt line `irq_line`) driving
    /// `line`, with its trigger watched by `hierarchy`'s relay thread. Returns `None` (the
    /// guest keeps seeing pin 0) when the host function has no INTx. Host INTx is enabled
    /// when the guest unmasks the line's pin while INTx is wanted ([`Intx::pin_mask_changed`]).
    pub fn attach_intx(
        &mut self,
        hierarchy: &Arc<InterruptHierarchy>,
        line: Arc<dyn IntxLine>,
        irq_line: u8,
    ) -> Result<Option<Arc<Intx>>, DeviceError> {
        let bdf = self.host.bdf();
        let raw = self.host.read_config_space()?;
        let (count, _) = self.host.irq_info(INTX_INDEX);
        if count == 0 || raw[reg::INTERRUPT_PIN] == 0 {
            return Ok(None);
        }
        let io = |e| DeviceError::Intx(bdf, e);
        let intx = Intx::new(self.irqs.clone(), line).map_err(io)?;
        let listener: Arc<dyn interrupt::SignalListener> = intx.clone();
        hierarchy
            .watch_signal(intx.trigger(), Arc::downgrade(&listener))
            .map_err(io)?;
        self.shadow.set_bytes(reg::INTERRUPT_PIN, &[1]);
        self.shadow.set_bytes(reg::INTERRUPT_LINE, &[irq_line]);
        self.intx = Some(intx);
        self.sync_intx();
        info!("{}: INTx on INTA, line {irq_line}", self.name);
        Ok(self.intx.clone())
    }

    /// The function's INTx, if it has one.
    pub fn intx(&self) -> Option<&Arc<Intx>> {
        self.intx.as_ref()
    }

    /// INTx is wanted while the guest has neither MSI nor MSI-X enabled and has not set
    /// INTx disable.
    fn intx_wanted(&self) -> bool {
        !self.msi.as_ref().is_some_and(|m| m.enabled())
            && !self.msix.as_ref().is_some_and(|m| m.enabled())
            && self.shadow.u16_at(reg::COMMAND) & pci::config::command::INTX_DISABLE == 0
    }

    fn sync_intx(&self) {
        if let Some(intx) = &self.intx {
            intx.set_wanted(self.intx_wanted());
        }
    }

    /// The device's host interrupt state (counters for the hierarchy view and tests).
    pub fn host_irqs(&self) -> &Arc<HostIrqs> {
        &self.irqs
    }

    /// Maps or moves the direct BAR areas to where the guest placed each BAR (call after the
    /// VMM placed the BARs; guest config writes call it themselves).
    pub fn sync_bars(&mut self) {
        for i in 0..self.bars.len() {
            let want = self.shadow.bar_address(i).filter(|&a| {
                let size = self.bars[i].as_ref().map_or(0, |b| b.bar.size);
                self.windows
                    .iter()
                    .any(|&(s, l)| a >= s && a.checked_add(size).is_some_and(|e| e <= s + l))
            });
            let Some(b) = self.bars[i].as_mut() else {
                continue;
            };
            if b.areas.is_empty() || b.mapped_at == want {
                continue;
            }
            for a in &mut b.areas {
                if let Some(slot) = a.slot.take() {
                    self.slots.unmap(slot);
                }
            }
            b.mapped_at = None;
            let Some(base) = want else { continue };
            for a in &mut b.areas {
                // SAFETY: the area stays mapped until Drop, which unmaps the slot first.
                match unsafe { self.slots.map(base + a.offset, a.size, a.host) } {
                    Ok(slot) => {
                        debug!(
                            "{}: BAR{i} area {:#x}+{:#x} direct at {:#x} (slot {slot})",
                            self.name,
                            a.offset,
                            a.size,
                            base + a.offset
                        );
                        a.slot = Some(slot)
                    }
                    Err(e) => warn!(
                        "{}: BAR{i} area at {:#x}: {e}; accesses are trapped instead",
                        self.name,
                        base + a.offset
                    ),
                }
            }
            b.mapped_at = Some(base);
        }
    }

    /// Turns host interrupts off and resets the device (VMM exit).
    pub fn shutdown(&mut self) {
        self.irqs.disable_all();
        self.host.reset();
    }

    fn in_cap(&self, offset: usize) -> (bool, bool) {
        (
            self.msi.as_ref().is_some_and(|m| m.contains(offset)),
            self.msix.as_ref().is_some_and(|m| m.contains(offset)),
        )
    }
}

fn create_domain(
    hierarchy: &Arc<InterruptHierarchy>,
    name: &str,
    kind: DomainKind,
    requester: RequesterId,
    size: usize,
    irqs: &Arc<HostIrqs>,
    index: u32,
) -> Arc<DeviceDomain> {
    let chip = Arc::new(VfioChip::new(irqs.clone(), index));
    crate::chip_glue::create_domain(hierarchy, name, kind, requester, size, chip)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Config-space access through the host device (the trait object the routing uses).
struct HostConfig<'a>(&'a dyn HostAccess);

impl ConfigIo for HostConfig<'_> {
    fn read(&self, offset: usize, data: &mut [u8]) -> bool {
        ConfigIo::read(self.0, offset, data)
    }
    fn write(&self, offset: usize, data: &[u8]) -> bool {
        ConfigIo::write(self.0, offset, data)
    }
}

impl PciDevice for VfioPciDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &ConfigSpace {
        &self.shadow
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.shadow
    }

    fn read_config(&mut self, offset: usize) -> u32 {
        let base = offset & !3;
        if base >= CONFIG_SPACE_SIZE {
            return 0;
        }
        let dword = match &self.msi {
            Some(m) if m.contains(base) => m.read_dword(&self.shadow, base),
            _ => self.shadow.read_dword(base),
        };
        route_read(&self.layout, &HostConfig(&*self.host), base, dword)
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let (in_msi, in_msix) = self.in_cap(offset);
        if in_msi || in_msix {
            if !self.shadow.guest_write(offset, data) {
                return;
            }
            // A guest enable turns the host's interrupt type on at once (no vector bound).
            let mut enabled = None;
            if let (true, Some(m)) = (in_msi, self.msi.as_mut()) {
                m.update(&self.shadow);
                enabled = m.enabled().then_some(MSI_INDEX);
            }
            if let (true, Some(m)) = (in_msix, self.msix.as_mut()) {
                m.update(&self.shadow);
                enabled = m.enabled().then_some(MSIX_INDEX);
            }
            self.sync_intx();
            if let Some(index) = enabled {
                if let Err(e) = self.irqs.guest_enabled(index) {
                    warn!("{}: {e}", self.name);
                }
            }
            return;
        }
        let host = self.host.clone();
        if !route_write(
            &self.layout,
            &mut self.shadow,
            &HostConfig(&*host),
            offset,
            data,
        ) {
            return;
        }
        let end = offset + data.len();
        let touches = |s: usize, e: usize| offset < e && end > s;
        if touches(reg::COMMAND, reg::COMMAND + 2) || touches(reg::BAR0, reg::BAR0 + 24) {
            self.sync_bars();
        }
        if touches(reg::COMMAND, reg::COMMAND + 2) {
            self.sync_intx();
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if let Some(m) = &self.msix {
            if m.bar_read(bar, offset, data) {
                return;
            }
        }
        if !self.host.region_read(bar as u32, offset, data) {
            data.fill(0xff);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Some(m) = &mut self.msix {
            if m.bar_write(bar, offset, data) {
                return;
            }
        }
        self.host.region_write(bar as u32, offset, data);
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        for b in self.bars.iter_mut().flatten() {
            for a in &mut b.areas {
                if let Some(slot) = a.slot.take() {
                    self.slots.unmap(slot);
                }
                // SAFETY: our own mapping of `size` bytes, no longer used by KVM.
                unsafe { libc::munmap(a.host.cast(), a.size as usize) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bars::RegionInfo;
    use crate::config::tests::host_raw;
    use crate::fake::FakeHost;
    use interrupt::{KvmVectorLayer, NoRemap, RecordingBackend};
    use pci::config::command;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Slots {
        live: Mutex<Vec<(u32, u64, u64)>>,
        next: Mutex<u32>,
    }

    impl MmioSlots for Slots {
        unsafe fn map(&self, gpa: u64, size: u64, _host: *mut u8) -> std::io::Result<u32> {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            self.live.lock().unwrap().push((*n, gpa, size));
            Ok(*n)
        }
        fn unmap(&self, slot: u32) {
            self.live.lock().unwrap().retain(|&(s, _, _)| s != slot);
        }
    }

    struct T {
        d: VfioPciDevice,
        host: Arc<FakeHost>,
        slots: Arc<Slots>,
        _h: Arc<InterruptHierarchy>,
    }

    const BASE: u64 = 0x1_0000_0000;

    fn setup(policy: MsixPolicy, dynamic: bool) -> T {
        let regions = vec![RegionInfo {
            size: 0x4000,
            mmap: true,
            ..Default::default()
        }];
        let host = Arc::new(FakeHost::new(host_raw(), regions, 1, 65, dynamic));
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(
                Arc::new(RecordingBackend::default()),
                24,
                4096,
            )),
            Arc::new(NoRemap),
        );
        let slots = Arc::new(Slots::default());
        let d = VfioPciDevice::new(
            host.clone(),
            &h,
            RequesterId::pci(0, 3, 0),
            policy,
            slots.clone(),
            vec![(0xc000_0000, 0x2000_0000), (BASE, 1 << 36)],
        )
        .unwrap();
        T {
            d,
            host,
            slots,
            _h: h,
        }
    }

    impl T {
        fn cfg(&mut self, off: usize) -> u32 {
            self.d.read_config(off)
        }
        fn place(&mut self, addr: u64) {
            self.d.write_config(0x10, &(addr as u32 | 4).to_le_bytes());
            self.d
                .write_config(0x14, &((addr >> 32) as u32).to_le_bytes());
        }
        fn live(&self) -> Vec<(u64, u64)> {
            self.slots
                .live
                .lock()
                .unwrap()
                .iter()
                .map(|&(_, g, s)| (g, s))
                .collect()
        }
    }

    #[test]
    fn guest_sees_host_identity_single_function_no_pin_and_our_bars() {
        let mut t = setup(MsixPolicy::Auto, true);
        assert_eq!(t.cfg(0), 0x0010_1b36);
        assert_eq!(t.cfg(0x0c) >> 16 & 0xff, 0, "multifunction bit hidden");
        assert_eq!(t.cfg(0x3c) >> 8 & 0xff, 0, "no INTx pin");
        t.d.write_config(0x10, &[0xff; 4]);
        t.d.write_config(0x14, &[0xff; 4]);
        assert_eq!(t.cfg(0x10), 0xffff_c004);
        assert_eq!(t.cfg(0x14), 0xffff_ffff);
        assert!(t.host.region_writes.lock().unwrap().is_empty());
        assert_eq!(
            t.host.config.lock().unwrap()[0x10],
            0x04,
            "host BAR untouched"
        );
    }

    #[test]
    fn direct_areas_follow_bar_placement_and_decode() {
        let mut t = setup(MsixPolicy::Auto, true);
        t.place(BASE);
        assert!(t.live().is_empty(), "decode off");
        t.d.write_config(4, &command::MEMORY.to_le_bytes());
        assert_eq!(t.live(), vec![(BASE, 0x2000)], "MSI-X pages trapped");
        assert_eq!(t.host.config.lock().unwrap()[4], command::MEMORY as u8);
        t.place(BASE + 0x10000);
        assert_eq!(t.live(), vec![(BASE + 0x10000, 0x2000)]);
        t.place(0xffff_c000); // outside the windows (sizing): nothing mapped
        assert!(t.live().is_empty());
        t.place(BASE);
        t.d.write_config(4, &0u16.to_le_bytes());
        assert!(t.live().is_empty());
    }

    fn enable_msix_and_unmask(t: &mut T, entry: u64) {
        t.d.write_config(0x52, &pci::msix::control::ENABLE.to_le_bytes());
        let e = 0x2000 + entry * 16;
        t.d.bar_write(0, e, &0xfee0_0000u32.to_le_bytes());
        t.d.bar_write(0, e + 8, &0x41u32.to_le_bytes());
        t.d.bar_write(0, e + 12, &0u32.to_le_bytes());
    }

    #[test]
    fn unmasking_an_entry_enables_that_host_vector_alone() {
        let mut t = setup(MsixPolicy::Auto, true);
        enable_msix_and_unmask(&mut t, 0);
        enable_msix_and_unmask(&mut t, 7);
        // The guest's enable turns host MSI-X on first, with no vector bound.
        assert_eq!(
            *t.host.calls.lock().unwrap(),
            vec!["set 2 0 1", "set 2 0 1", "set 2 7 1"]
        );
        let irqs = t.d.host_irqs();
        assert_eq!(irqs.stats().msix_disables, 0);
        assert!(irqs.enabled(MSIX_INDEX, 7));
        // The MSI-X capability is ours: the host's control register is untouched.
        assert_eq!(t.host.config.lock().unwrap()[0x53], 0);
        assert_eq!(t.cfg(0x50) >> 16, 0x8040);
    }

    #[test]
    fn noresize_host_falls_back_to_reenable_and_counts() {
        let mut t = setup(MsixPolicy::Auto, false);
        enable_msix_and_unmask(&mut t, 0);
        enable_msix_and_unmask(&mut t, 1);
        assert_eq!(
            *t.host.calls.lock().unwrap(),
            vec!["set 2 0 1", "set 2 0 1", "disable 2", "set 2 0 2"]
        );
        assert_eq!(t.d.host_irqs().stats().msix_disables, 1);
        assert_eq!(t.d.host_irqs().mode(), IrqMode::Reenable);
    }

    #[test]
    fn msix_dynamic_is_refused_on_a_noresize_host() {
        let regions = vec![RegionInfo {
            size: 0x4000,
            ..Default::default()
        }];
        let host = Arc::new(FakeHost::new(host_raw(), regions, 1, 65, false));
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(
                Arc::new(RecordingBackend::default()),
                24,
                4096,
            )),
            Arc::new(NoRemap),
        );
        let r = VfioPciDevice::new(
            host,
            &h,
            RequesterId(8),
            MsixPolicy::Dynamic,
            Arc::new(Slots::default()),
            vec![],
        );
        assert!(matches!(r, Err(DeviceError::NoDynamic(_))));
    }

    #[derive(Default)]
    struct Line(Mutex<Vec<bool>>);

    impl IntxLine for Line {
        fn set_level(&self, asserted: bool) {
            self.0.lock().unwrap().push(asserted);
        }
    }

    #[test]
    fn intx_gets_pin_inta_and_follows_msix_and_intx_disable() {
        let mut t = setup(MsixPolicy::Auto, true);
        let line = Arc::new(Line::default());
        let intx =
            t.d.attach_intx(&t._h, line.clone(), 17)
                .unwrap()
                .expect("host has INTx");
        assert_eq!(t.cfg(0x3c) & 0xffff, 0x0111, "pin INTA, line 17");
        assert!(t.host.calls.lock().unwrap().is_empty(), "pin masked");
        intx.pin_mask_changed(false);
        assert_eq!(
            t.host.calls.lock().unwrap()[..],
            ["set 0 0 1", "unmask 0"],
            "host INTx on at the pin's unmask"
        );
        // The host signals: the relay thread asserts the line.
        intx.trigger().write(1).unwrap();
        let mut waited = 0;
        while line.0.lock().unwrap().is_empty() && waited < 500 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 1;
        }
        assert_eq!(*line.0.lock().unwrap(), vec![true]);
        intx.end_of_interrupt();
        assert_eq!(t.d.host_irqs().stats().intx_unmasks, 1);
        // INTx disable (command bit 10), then cleared again.
        t.d.write_config(4, &command::INTX_DISABLE.to_le_bytes());
        assert!(!t.d.host_irqs().intx_enabled());
        t.d.write_config(4, &0u16.to_le_bytes());
        assert!(t.d.host_irqs().intx_enabled());
        // MSI-X enabled by the guest: INTx off, MSI-X on.
        enable_msix_and_unmask(&mut t, 0);
        assert!(!t.d.host_irqs().intx_enabled());
        let calls = t.host.calls.lock().unwrap().clone();
        assert_eq!(
            calls[2..],
            [
                "disable 0",
                "set 0 0 1",
                "unmask 0",
                "disable 0",
                "set 2 0 1",
                "set 2 0 1"
            ]
        );
        // MSI-X disabled: back to INTx, host MSI-X off first.
        t.d.write_config(0x52, &0u16.to_le_bytes());
        assert!(t.d.host_irqs().intx_enabled());
        assert!(t.d.host_irqs().describe().contains("INTx on"));
    }

    #[test]
    fn a_host_without_intx_keeps_pin_zero() {
        let regions = vec![RegionInfo {
            size: 0x4000,
            ..Default::default()
        }];
        let mut fake = FakeHost::new(host_raw(), regions, 1, 65, true);
        fake.intx = 0;
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(
                Arc::new(RecordingBackend::default()),
                24,
                4096,
            )),
            Arc::new(NoRemap),
        );
        let mut d = VfioPciDevice::new(
            Arc::new(fake),
            &h,
            RequesterId(8),
            MsixPolicy::Auto,
            Arc::new(Slots::default()),
            vec![],
        )
        .unwrap();
        let r = d.attach_intx(&h, Arc::new(Line::default()), 16).unwrap();
        assert!(r.is_none());
        assert_eq!(d.read_config(0x3c) >> 8 & 0xff, 0);
    }

    #[test]
    fn trapped_non_table_bytes_go_through_the_region() {
        let mut t = setup(MsixPolicy::Auto, true);
        t.d.bar_write(0, 0x2800, &[1, 2, 3, 4]);
        assert_eq!(
            *t.host.region_writes.lock().unwrap(),
            vec![(0, 0x2800, vec![1, 2, 3, 4])]
        );
        let mut b = [0u8; 4];
        t.d.bar_read(0, 0x2800, &mut b);
        assert_eq!(b, [0x5a; 4]);
        t.d.bar_read(0, 0x4000, &mut b);
        assert_eq!(b, [0xff; 4], "outside the BAR");
        t.d.bar_read(0, 0x3000, &mut b);
        assert_eq!(b, [0; 4], "PBA is emulated");
    }
}
