//! The VFIO chip of a pass-through device's MSI and MSI-X domains: how a vector's activation
//! reaches the host device.
//!
//! When the guest first unmasks a vector with a message, its domain starts it up here: the
//! host vector `i` is bound to the vector's trigger eventfd (the one KVM's irqfd listens to)
//! with `VFIO_DEVICE_SET_IRQS` (start = i, count = 1, `DATA_EVENTFD`). A host interrupt then
//! reaches the guest through KVM with no VMM thread involved.
//!
//! Growing the set of host MSI-X vectors:
//!
//! - [`IrqMode::Dynamic`] (hosts whose MSI-X info lacks `VFIO_IRQ_INFO_NORESIZE`, Linux ≥ 6.5
//!   vfio-pci with a dynamic MSI domain): every vector is added alone; MSI-X is never disabled
//!   on the host and no other vector is touched.
//! - [`IrqMode::Reenable`] (NORESIZE hosts, or forced with `msix=reenable`): a vector beyond
//!   the count the host was enabled with needs MSI-X disabled and re-enabled with the larger
//!   count (and every active trigger passed again). Interrupts a device raises while its MSI-X
//!   is disabled are lost on real hardware, so after re-enabling, the trigger of every vector
//!   that was active before is signalled once: the guest may see a spurious interrupt (its
//!   drivers check their queues and ignore it) but never misses one. Each such disable is
//!   counted ("host MSI-X disables") and the first is logged.
//!
//! A vector's release (`shutdown`) passes fd -1 for that vector alone. MSI (not MSI-X) cannot
//! grow on the host either, so its first activation enables every host MSI vector at once.
//! VFIO allows one interrupt type at a time: activating MSI while the host has MSI-X enabled
//! (or the reverse) disables the other type first (counted as a type switch).
//!
//! Triggers are kept as raw descriptors: the domain guarantees a vector's trigger exists from
//! domain creation and stays the same for the domain's life, and the domain owns this chip.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, warn};

/// VFIO interrupt index of INTx.
pub const INTX_INDEX: u32 = vfio_bindings::bindings::vfio::VFIO_PCI_INTX_IRQ_INDEX;
/// VFIO interrupt index of MSI.
pub const MSI_INDEX: u32 = vfio_bindings::bindings::vfio::VFIO_PCI_MSI_IRQ_INDEX;
/// VFIO interrupt index of MSI-X.
pub const MSIX_INDEX: u32 = vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX;

/// How host MSI-X vectors are added after MSI-X is enabled (`msix=` of `--device vfio`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqMode {
    /// One SET_IRQS per vector, no host disable.
    Dynamic,
    /// Disable and re-enable with the larger count (the pre-6.5 dance).
    Reenable,
}

impl IrqMode {
    /// `dynamic` or `reenable`.
    pub fn as_str(self) -> &'static str {
        match self {
            IrqMode::Dynamic => "dynamic",
            IrqMode::Reenable => "reenable",
        }
    }
}

/// The host side of VFIO interrupts (the device fd; a fake in tests).
pub trait IrqHost: Send + Sync {
    /// `VFIO_DEVICE_SET_IRQS` with `ACTION_TRIGGER | DATA_EVENTFD` for vectors
    /// `start..start + fds.len()` of `index` (fd -1 releases a vector).
    fn set_triggers(&self, index: u32, start: u32, fds: &[RawFd]) -> std::io::Result<()>;
    /// `VFIO_DEVICE_SET_IRQS` with `ACTION_UNMASK | DATA_EVENTFD` for vector 0 of `index`:
    /// a write to `fd` unmasks the host interrupt (INTx, which the host masks on each one).
    fn set_unmask(&self, index: u32, fd: RawFd) -> std::io::Result<()>;
    /// `VFIO_DEVICE_SET_IRQS` with `ACTION_TRIGGER | DATA_NONE`, count 0: disables `index`.
    fn disable(&self, index: u32) -> std::io::Result<()>;
    /// Signals a trigger eventfd once (an interrupt the guest must not lose).
    fn signal(&self, fd: RawFd);
}

/// Errors of host interrupt setup.
#[derive(Debug, thiserror::Error)]
pub enum ChipError {
    /// The index is beyond what the host reports.
    #[error("vector {index} beyond the host's {count} {kind} vectors")]
    Range {
        /// Kind ("MSI" / "MSI-X").
        kind: &'static str,
        /// Vector.
        index: usize,
        /// Host count.
        count: u32,
    },
    /// VFIO refused.
    #[error("VFIO_DEVICE_SET_IRQS ({kind} vector {index}): {source}")]
    SetIrqs {
        /// Kind.
        kind: &'static str,
        /// Vector.
        index: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Counters of one device's host interrupt setup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostIrqStats {
    /// `VFIO_DEVICE_SET_IRQS` calls of any kind.
    pub set_irqs: u64,
    /// Host MSI-X disables done to grow the vector count (the re-enable fallback).
    pub msix_disables: u64,
    /// Disables of one interrupt type to enable the other (MSI <-> MSI-X).
    pub type_switches: u64,
    /// Of `set_irqs`: vectors bound to a trigger (one per activation; a vector the guest
    /// frees and allocates again counts twice).
    pub binds: u64,
    /// Of `set_irqs`: vectors released (fd -1).
    pub releases: u64,
    /// Of `set_irqs`: the guest enabled MSI/MSI-X and the host's was turned on, no vector
    /// bound.
    pub enables: u64,
    /// Host INTx enables (trigger and unmask eventfds bound: 2 SET_IRQS calls each, not in
    /// `set_irqs`, which counts MSI and MSI-X calls).
    pub intx_enables: u64,
    /// Host INTx disables (1 SET_IRQS call each, not in `set_irqs`).
    pub intx_disables: u64,
    /// INTx interrupts the VMM relayed onto the guest's IOAPIC line.
    pub intx_relayed: u64,
    /// Host INTx unmasks after the guest's EOI of the line.
    pub intx_unmasks: u64,
}

#[derive(Default)]
struct IndexState {
    /// Host vector count the index is enabled with (0: disabled).
    host_count: u32,
    /// Active triggers per vector.
    triggers: Vec<Option<RawFd>>,
}

struct HostIrqState {
    msi: IndexState,
    msix: IndexState,
    /// INTx trigger and unmask eventfds (a device with an interrupt pin).
    intx_fds: Option<(RawFd, RawFd)>,
    /// Host INTx is enabled (bound to `intx_fds`).
    intx_on: bool,
    stats: HostIrqStats,
}

/// The host interrupt state of one device, shared by its MSI and MSI-X chips.
pub struct HostIrqs {
    host: Arc<dyn IrqHost>,
    mode: IrqMode,
    msi_count: u32,
    msix_count: u32,
    state: Mutex<HostIrqState>,
    fallback_logged: AtomicBool,
    name: String,
}

impl HostIrqs {
    /// State for a device with `msi_count` / `msix_count` host vectors.
    pub fn new(
        name: &str,
        host: Arc<dyn IrqHost>,
        mode: IrqMode,
        msi_count: u32,
        msix_count: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            host,
            mode,
            msi_count,
            msix_count,
            state: Mutex::new(HostIrqState {
                msi: IndexState {
                    triggers: vec![None; msi_count as usize],
                    ..Default::default()
                },
                msix: IndexState {
                    triggers: vec![None; msix_count as usize],
                    ..Default::default()
                },
                intx_fds: None,
                intx_on: false,
                stats: HostIrqStats::default(),
            }),
            fallback_logged: AtomicBool::new(false),
            name: name.to_string(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HostIrqState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How MSI-X vectors are added.
    pub fn mode(&self) -> IrqMode {
        self.mode
    }

    /// The counters.
    pub fn stats(&self) -> HostIrqStats {
        self.lock().stats
    }

    /// Whether host vector `vector` of `index` is bound to a trigger.
    pub fn enabled(&self, index: u32, vector: usize) -> bool {
        let s = self.lock();
        let st = if index == MSIX_INDEX { &s.msix } else { &s.msi };
        st.triggers.get(vector).is_some_and(Option::is_some)
    }

    /// Host vectors of `index` bound to a trigger.
    pub fn enabled_count(&self, index: u32) -> usize {
        let s = self.lock();
        let st = if index == MSIX_INDEX { &s.msix } else { &s.msi };
        st.triggers.iter().flatten().count()
    }

    /// Binds host vector `vector` of `index` to `trigger`.
    pub fn startup(&self, index: u32, vector: usize, trigger: RawFd) -> Result<(), ChipError> {
        let (kind, count) = self.kind(index);
        if vector >= count as usize {
            return Err(ChipError::Range {
                kind,
                index: vector,
                count,
            });
        }
        let err = |source| ChipError::SetIrqs {
            kind,
            index: vector,
            source,
        };
        let mut guard = self.lock();
        let s = &mut *guard;
        self.only_type_on_host(s, index).map_err(err)?;
        let mine = if index == MSIX_INDEX {
            &mut s.msix
        } else {
            &mut s.msi
        };
        let v = vector as u32;
        // Dynamic MSI-X, or a vector the host already has: this vector alone.
        let grow_needed = v >= mine.host_count;
        if !grow_needed || (index == MSIX_INDEX && self.mode == IrqMode::Dynamic) {
            s.stats.set_irqs += 1;
            s.stats.binds += 1;
            self.host.set_triggers(index, v, &[trigger]).map_err(err)?;
            mine.triggers[vector] = Some(trigger);
            mine.host_count = mine.host_count.max(v + 1);
            debug!("{}: host {kind} vector {vector} enabled alone", self.name);
            return Ok(());
        }
        // The host must be (re-)enabled with a larger count: MSI gets all its vectors at
        // once (it cannot grow), MSI-X as many as this vector needs.
        let new_count = if index == MSI_INDEX { count } else { v + 1 };
        let was_enabled = mine.host_count > 0;
        if was_enabled {
            s.stats.set_irqs += 1;
            self.host.disable(index).map_err(err)?;
            if index == MSIX_INDEX {
                s.stats.msix_disables += 1;
                if !self.fallback_logged.swap(true, Ordering::Relaxed) {
                    warn!(
                        "{}: adding MSI-X vector {vector} needs host MSI-X disabled and \
                         re-enabled (msix=reenable); interrupts meanwhile are re-signalled",
                        self.name
                    );
                }
            }
            mine.host_count = 0;
        }
        mine.triggers[vector] = Some(trigger);
        let fds: Vec<RawFd> = mine.triggers[..new_count as usize]
            .iter()
            .map(|t| t.unwrap_or(-1))
            .collect();
        s.stats.set_irqs += 1;
        s.stats.binds += 1;
        if let Err(e) = self.host.set_triggers(index, 0, &fds) {
            mine.triggers.iter_mut().for_each(|t| *t = None);
            return Err(err(e));
        }
        mine.host_count = new_count;
        if was_enabled {
            // Whatever the device raised while disabled: signal every other active vector.
            for (i, t) in mine.triggers.iter().enumerate() {
                if let (Some(fd), true) = (t, i != vector) {
                    self.host.signal(*fd);
                }
            }
        }
        debug!(
            "{}: host {kind} enabled with {new_count} vectors",
            self.name
        );
        Ok(())
    }

    /// The guest enabled `index` (MSI or MSI-X): enable it on the host too, with no vector
    /// bound (fd -1), unless the host already has it on. As QEMU does: some devices (QEMU's
    /// NVMe among them) only signal vectors that were in use when their queue was set up,
    /// and Linux unmasks its first vector only after that. Returns whether a call was made.
    pub fn guest_enabled(&self, index: u32) -> Result<bool, ChipError> {
        let (kind, count) = self.kind(index);
        if count == 0 {
            return Ok(false);
        }
        let err = |source| ChipError::SetIrqs {
            kind,
            index: 0,
            source,
        };
        let mut guard = self.lock();
        let s = &mut *guard;
        self.only_type_on_host(s, index).map_err(err)?;
        let mine = if index == MSIX_INDEX {
            &mut s.msix
        } else {
            &mut s.msi
        };
        if mine.host_count > 0 {
            return Ok(false);
        }
        let n = if index == MSI_INDEX { count } else { 1 };
        s.stats.set_irqs += 1;
        s.stats.enables += 1;
        self.host
            .set_triggers(index, 0, &vec![-1; n as usize])
            .map_err(err)?;
        mine.host_count = n;
        debug!("{}: host {kind} enabled with no vector bound", self.name);
        Ok(true)
    }

    /// Releases host vector `vector` of `index` (fd -1 for it alone).
    pub fn shutdown(&self, index: u32, vector: usize) -> Result<(), ChipError> {
        let (kind, _) = self.kind(index);
        let mut guard = self.lock();
        let s = &mut *guard;
        let st = if index == MSIX_INDEX {
            &mut s.msix
        } else {
            &mut s.msi
        };
        let Some(slot) = st.triggers.get_mut(vector) else {
            return Ok(());
        };
        if slot.take().is_none() || vector as u32 >= st.host_count {
            return Ok(());
        }
        s.stats.set_irqs += 1;
        s.stats.releases += 1;
        self.host
            .set_triggers(index, vector as u32, &[-1])
            .map_err(|source| ChipError::SetIrqs {
                kind,
                index: vector,
                source,
            })
    }

    /// One interrupt type at a time on the host: before `index` (MSI or MSI-X) goes on, host
    /// INTx and the other message type go off (the latter counted as a type switch).
    fn only_type_on_host(&self, s: &mut HostIrqState, index: u32) -> std::io::Result<()> {
        self.intx_off(s)?;
        let (other, other_index) = if index == MSIX_INDEX {
            (&mut s.msi, MSI_INDEX)
        } else {
            (&mut s.msix, MSIX_INDEX)
        };
        if other.host_count > 0 {
            s.stats.set_irqs += 1;
            self.host.disable(other_index)?;
            other.host_count = 0;
            other.triggers.iter_mut().for_each(|t| *t = None);
            s.stats.type_switches += 1;
        }
        Ok(())
    }

    /// Host INTx off (if on), before MSI or MSI-X goes on.
    fn intx_off(&self, s: &mut HostIrqState) -> std::io::Result<()> {
        if s.intx_on {
            s.stats.intx_disables += 1;
            s.intx_on = false;
            self.host.disable(INTX_INDEX)?;
            debug!("{}: host INTx disabled", self.name);
        }
        Ok(())
    }

    /// The device's INTx `trigger` (the host signals it per interrupt, then masks INTx) and
    /// `unmask` (a write unmasks host INTx) eventfds; they must stay open while host INTx
    /// can be on.
    pub fn set_intx_fds(&self, trigger: RawFd, unmask: RawFd) {
        self.lock().intx_fds = Some((trigger, unmask));
    }

    /// Whether host INTx is on.
    pub fn intx_enabled(&self) -> bool {
        self.lock().intx_on
    }

    /// Turns host INTx on (MSI and MSI-X off first): binds the trigger and unmask eventfds.
    /// Returns whether a change was made (false: already on, or no INTx).
    pub fn intx_enable(&self) -> Result<bool, ChipError> {
        let err = |source| ChipError::SetIrqs {
            kind: "INTx",
            index: 0,
            source,
        };
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some((trigger, unmask)) = s.intx_fds else {
            return Ok(false);
        };
        if s.intx_on {
            return Ok(false);
        }
        for (index, st) in [(MSI_INDEX, &mut s.msi), (MSIX_INDEX, &mut s.msix)] {
            if st.host_count > 0 {
                s.stats.set_irqs += 1;
                self.host.disable(index).map_err(err)?;
                st.host_count = 0;
                st.triggers.iter_mut().for_each(|t| *t = None);
                s.stats.type_switches += 1;
            }
        }
        self.host
            .set_triggers(INTX_INDEX, 0, &[trigger])
            .and_then(|()| self.host.set_unmask(INTX_INDEX, unmask))
            .map_err(err)?;
        s.intx_on = true;
        s.stats.intx_enables += 1;
        debug!("{}: host INTx enabled", self.name);
        Ok(true)
    }

    /// Turns host INTx off (the guest enabled MSI/MSI-X or set INTx disable).
    pub fn intx_disable(&self) -> Result<(), ChipError> {
        let mut s = self.lock();
        self.intx_off(&mut s).map_err(|source| ChipError::SetIrqs {
            kind: "INTx",
            index: 0,
            source,
        })
    }

    /// Counts an INTx interrupt relayed onto the guest's line.
    pub fn count_intx_relayed(&self) {
        self.lock().stats.intx_relayed += 1;
    }

    /// Counts a host INTx unmask.
    pub fn count_intx_unmask(&self) {
        self.lock().stats.intx_unmasks += 1;
    }

    /// Disables every interrupt type on the host (device reset and exit); no counter moves.
    pub fn disable_all(&self) {
        let mut guard = self.lock();
        let s = &mut *guard;
        if s.intx_on {
            if let Err(e) = self.host.disable(INTX_INDEX) {
                warn!("{}: disabling host INTx: {e}", self.name);
            }
            s.intx_on = false;
        }
        for (index, st) in [(MSI_INDEX, &mut s.msi), (MSIX_INDEX, &mut s.msix)] {
            if st.host_count > 0 {
                if let Err(e) = self.host.disable(index) {
                    warn!("{}: disabling host interrupts: {e}", self.name);
                }
                st.host_count = 0;
                st.triggers.iter_mut().for_each(|t| *t = None);
            }
        }
    }

    fn kind(&self, index: u32) -> (&'static str, u32) {
        if index == MSIX_INDEX {
            ("MSI-X", self.msix_count)
        } else {
            ("MSI", self.msi_count)
        }
    }

    /// The per-device line of the hierarchy view.
    pub fn describe(&self) -> String {
        let s = self.stats();
        format!(
            "vfio msix={}: host SET_IRQS calls {} (enable {}, bind {}, release {}), \
             host MSI-X disables {}, host type switches {}",
            self.mode.as_str(),
            s.set_irqs,
            s.enables,
            s.binds,
            s.releases,
            s.msix_disables,
            s.type_switches
        ) + &self.describe_intx()
    }

    fn describe_intx(&self) -> String {
        let s = self.lock();
        if s.intx_fds.is_none() {
            return String::new();
        }
        format!(
            "; INTx {}: relayed {}, unmasks {}, enables {}, disables {}",
            if s.intx_on { "on" } else { "off" },
            s.stats.intx_relayed,
            s.stats.intx_unmasks,
            s.stats.intx_enables,
            s.stats.intx_disables
        )
    }

    /// The per-vector text of the hierarchy view.
    pub fn describe_vector(&self, index: u32, vector: usize) -> String {
        if self.enabled(index, vector) {
            "host vector enabled".to_string()
        } else {
            "host vector disabled".to_string()
        }
    }
}

/// One interrupt type (MSI or MSI-X) of a pass-through device: the chip of its domain.
pub struct VfioChip {
    irqs: Arc<HostIrqs>,
    index: u32,
}

impl VfioChip {
    /// The chip of interrupt type `index` ([`MSI_INDEX`] or [`MSIX_INDEX`]).
    pub fn new(irqs: Arc<HostIrqs>, index: u32) -> Self {
        Self { irqs, index }
    }

    /// Chip name in the hierarchy view.
    pub fn name(&self) -> &str {
        if self.index == MSIX_INDEX {
            "vfio-msix"
        } else {
            "vfio-msi"
        }
    }

    /// The device's shared host interrupt state.
    pub fn host_irqs(&self) -> &Arc<HostIrqs> {
        &self.irqs
    }

    /// Vector `vector` becomes active: bind its host vector to `trigger`.
    pub fn startup(&self, vector: usize, trigger: RawFd) -> Result<(), ChipError> {
        self.irqs.startup(self.index, vector, trigger)
    }

    /// Vector `vector` is released.
    pub fn shutdown(&self, vector: usize) -> Result<(), ChipError> {
        self.irqs.shutdown(self.index, vector)
    }

    /// Per-vector text.
    pub fn describe_vector(&self, vector: usize) -> String {
        self.irqs.describe_vector(self.index, vector)
    }

    /// Per-domain text.
    pub fn describe(&self) -> String {
        self.irqs.describe()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records every host call.
    #[derive(Default)]
    pub(crate) struct FakeHost {
        pub calls: Mutex<Vec<String>>,
        pub signalled: Mutex<Vec<RawFd>>,
        pub fail: AtomicBool,
    }

    impl IrqHost for FakeHost {
        fn set_triggers(&self, index: u32, start: u32, fds: &[RawFd]) -> std::io::Result<()> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.calls
                .lock()
                .unwrap()
                .push(format!("set {index} {start} {fds:?}"));
            Ok(())
        }
        fn set_unmask(&self, index: u32, fd: RawFd) -> std::io::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("unmask {index} {fd}"));
            Ok(())
        }
        fn disable(&self, index: u32) -> std::io::Result<()> {
            self.calls.lock().unwrap().push(format!("disable {index}"));
            Ok(())
        }
        fn signal(&self, fd: RawFd) {
            self.signalled.lock().unwrap().push(fd);
        }
    }

    fn setup(mode: IrqMode) -> (Arc<FakeHost>, Arc<HostIrqs>) {
        let h = Arc::new(FakeHost::default());
        let irqs = HostIrqs::new("dev", h.clone(), mode, 4, 65);
        (h, irqs)
    }

    fn calls(h: &FakeHost) -> Vec<String> {
        h.calls.lock().unwrap().clone()
    }

    #[test]
    fn dynamic_mode_adds_one_vector_per_call_and_never_disables() {
        let (h, irqs) = setup(IrqMode::Dynamic);
        let chip = VfioChip::new(irqs.clone(), MSIX_INDEX);
        chip.startup(0, 100).unwrap();
        chip.startup(5, 105).unwrap();
        chip.startup(2, 102).unwrap();
        assert_eq!(
            calls(&h),
            vec!["set 2 0 [100]", "set 2 5 [105]", "set 2 2 [102]"]
        );
        let s = irqs.stats();
        assert_eq!((s.set_irqs, s.msix_disables), (3, 0));
        assert!(irqs.enabled(MSIX_INDEX, 5));
        assert!(!irqs.enabled(MSIX_INDEX, 1));
        assert!(h.signalled.lock().unwrap().is_empty());
    }

    #[test]
    fn reenable_mode_grows_by_disable_and_resignals_active_vectors() {
        let (h, irqs) = setup(IrqMode::Reenable);
        let chip = VfioChip::new(irqs.clone(), MSIX_INDEX);
        chip.startup(0, 100).unwrap();
        chip.startup(2, 102).unwrap();
        chip.startup(1, 101).unwrap(); // within the count: no dance
        assert_eq!(
            calls(&h),
            vec![
                "set 2 0 [100]",
                "disable 2",
                "set 2 0 [100, -1, 102]",
                "set 2 1 [101]"
            ]
        );
        assert_eq!(*h.signalled.lock().unwrap(), vec![100]);
        let s = irqs.stats();
        assert_eq!((s.set_irqs, s.msix_disables), (4, 1));
        chip.startup(3, 103).unwrap();
        assert_eq!(*h.signalled.lock().unwrap(), vec![100, 100, 101, 102]);
        assert_eq!(irqs.stats().msix_disables, 2);
    }

    #[test]
    fn shutdown_releases_one_vector_and_restart_needs_no_disable() {
        for mode in [IrqMode::Dynamic, IrqMode::Reenable] {
            let (h, irqs) = setup(mode);
            let chip = VfioChip::new(irqs.clone(), MSIX_INDEX);
            chip.startup(0, 100).unwrap();
            chip.shutdown(0).unwrap();
            chip.shutdown(0).unwrap(); // already released: no call
            chip.startup(0, 100).unwrap();
            assert_eq!(
                calls(&h),
                vec!["set 2 0 [100]", "set 2 0 [-1]", "set 2 0 [100]"]
            );
            assert_eq!(irqs.stats().msix_disables, 0);
        }
    }

    #[test]
    fn guest_enable_turns_host_msix_on_with_no_vector_then_vectors_come_alone() {
        for mode in [IrqMode::Dynamic, IrqMode::Reenable] {
            let (h, irqs) = setup(mode);
            assert!(irqs.guest_enabled(MSIX_INDEX).unwrap());
            assert!(!irqs.guest_enabled(MSIX_INDEX).unwrap(), "already on");
            let chip = VfioChip::new(irqs.clone(), MSIX_INDEX);
            chip.startup(0, 100).unwrap();
            assert_eq!(calls(&h), vec!["set 2 0 [-1]", "set 2 0 [100]"]);
            let s = irqs.stats();
            assert_eq!(
                (s.enables, s.binds, s.releases, s.msix_disables),
                (1, 1, 0, 0)
            );
            assert_eq!(irqs.enabled_count(MSIX_INDEX), 1);
            chip.shutdown(0).unwrap();
            assert_eq!(irqs.stats().releases, 1);
            assert_eq!(irqs.enabled_count(MSIX_INDEX), 0);
        }
    }

    #[test]
    fn msi_enables_every_host_vector_at_once() {
        let (h, irqs) = setup(IrqMode::Dynamic);
        let chip = VfioChip::new(irqs.clone(), MSI_INDEX);
        chip.startup(1, 51).unwrap();
        chip.startup(0, 50).unwrap();
        assert_eq!(calls(&h), vec!["set 1 0 [-1, 51, -1, -1]", "set 1 0 [50]"]);
        assert_eq!(irqs.stats().msix_disables, 0);
    }

    #[test]
    fn switching_types_disables_the_other_first() {
        let (h, irqs) = setup(IrqMode::Dynamic);
        VfioChip::new(irqs.clone(), MSI_INDEX)
            .startup(0, 50)
            .unwrap();
        VfioChip::new(irqs.clone(), MSIX_INDEX)
            .startup(0, 100)
            .unwrap();
        assert_eq!(
            calls(&h),
            vec!["set 1 0 [50, -1, -1, -1]", "disable 1", "set 2 0 [100]"]
        );
        assert!(!irqs.enabled(MSI_INDEX, 0));
        assert_eq!(irqs.stats().type_switches, 1);
    }

    #[test]
    fn out_of_range_and_failures_are_errors_not_panics() {
        let (h, irqs) = setup(IrqMode::Dynamic);
        let chip = VfioChip::new(irqs.clone(), MSIX_INDEX);
        assert!(matches!(chip.startup(65, 1), Err(ChipError::Range { .. })));
        h.fail.store(true, Ordering::Relaxed);
        assert!(chip.startup(0, 1).is_err());
        assert!(!irqs.enabled(MSIX_INDEX, 0));
        assert!(chip.shutdown(99).is_ok());
    }

    #[test]
    fn disable_all_turns_the_host_off_without_counting() {
        let (h, irqs) = setup(IrqMode::Reenable);
        let chip = VfioChip::new(irqs.clone(), MSIX_INDEX);
        chip.startup(0, 100).unwrap();
        irqs.disable_all();
        assert_eq!(calls(&h).last().unwrap(), "disable 2");
        assert_eq!(irqs.stats().msix_disables, 0);
        assert_eq!(irqs.enabled_count(MSIX_INDEX), 0);
        assert!(
            irqs.describe().contains(
                "host SET_IRQS calls 1 (enable 0, bind 1, release 0), host MSI-X disables 0"
            ),
            "{}",
            irqs.describe()
        );
        assert_eq!(chip.describe_vector(0), "host vector disabled");
    }
}
