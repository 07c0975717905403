//! The device's Interrupt Message Store: a table of 16-byte entries in BAR0 backing an IMS
//! [`DeviceDomain`], plus the device-backed interrupt handles.
//!
//! An entry is either guest-managed (the guest writes address, data and mask; descriptors
//! submitted through an IMS portal name it by index) or device-backed: Request Interrupt
//! Handle (command 13) for an MSI-X vector takes a free entry from the top of the table,
//! whose message and mask then follow that MSI-X entry (the device keeps them in sync); the
//! entry index is the handle. Guest writes to device-backed entries are ignored.
//!
//! The domain implements the lazy routing and the mask/pending rules: a fire while the
//! entry is masked leaves it pending, and it is delivered once on unmask.

use std::sync::{Arc, Mutex, MutexGuard};

use interrupt::{warn_ratelimited, DeviceDomain, MsiMessage, RateLimiter};

use super::spec::ims as layout;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
    /// MSI-X vector this entry follows when it backs an interrupt handle.
    handle_for: Option<usize>,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: layout::CTRL_MASK,
            handle_for: None,
        }
    }
}

/// The IMS table and its domain.
pub(crate) struct Ims {
    entries: Mutex<Vec<Entry>>,
    domain: Option<Arc<DeviceDomain>>,
    /// Domain errors follow guest programming: their warnings are rate-limited.
    log_limit: RateLimiter,
}

impl Ims {
    /// A table of `domain.size()` entries, or an empty one without a domain.
    pub(crate) fn new(domain: Option<Arc<DeviceDomain>>) -> Self {
        let n = domain.as_ref().map_or(0, |d| d.size());
        Self {
            entries: Mutex::new(vec![Entry::default(); n]),
            domain,
            log_limit: RateLimiter::new(super::shared::LOG_BURST, super::shared::LOG_INTERVAL),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The IMS domain, if the device has IMS.
    pub(crate) fn domain(&self) -> Option<&Arc<DeviceDomain>> {
        self.domain.as_ref()
    }

    /// Pushes entry `i`'s message and mask into the domain.
    fn sync(&self, i: usize, e: &Entry) {
        let Some(d) = &self.domain else { return };
        // The device has no PASID capability: an entry restricted to a PASID never matches.
        let message = (e.ctrl & layout::CTRL_PASID_EN == 0)
            .then(|| MsiMessage::new(e.addr_lo & !0x3, e.addr_hi, e.data));
        let masked = e.ctrl & layout::CTRL_MASK != 0;
        if let Err(err) = d
            .set_message(i, message)
            .and_then(|_| d.set_masked(i, masked))
        {
            warn_ratelimited!(self.log_limit, "IMS entry {i}: {err}");
        }
    }

    /// Reads `data` (4 or 8 bytes, naturally aligned) at `offset` inside the table; other
    /// accesses read zero.
    pub(crate) fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(data.len() as u64) {
            return;
        }
        let entries = self.lock();
        let i = (offset / layout::ENTRY_SIZE) as usize;
        let Some(e) = entries.get(i) else { return };
        let pending = self.domain.as_ref().is_some_and(|d| d.is_pending(i));
        let ctrl = e.ctrl | if pending { layout::CTRL_PENDING } else { 0 };
        let words = [e.addr_lo, e.addr_hi, e.data, ctrl];
        let w = ((offset % layout::ENTRY_SIZE) / 4) as usize;
        for (k, chunk) in data.chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&words[w + k].to_le_bytes());
        }
    }

    /// A guest write of `data` (4 or 8 bytes, naturally aligned) at `offset` inside the
    /// table. Writes to device-backed entries and malformed accesses are ignored.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) {
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(data.len() as u64) {
            return;
        }
        let mut entries = self.lock();
        let i = (offset / layout::ENTRY_SIZE) as usize;
        let Some(e) = entries.get_mut(i) else { return };
        if e.handle_for.is_some() {
            return;
        }
        let first = ((offset % layout::ENTRY_SIZE) / 4) as usize;
        for (w, chunk) in (first..).zip(data.chunks_exact(4)) {
            let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            match w {
                0 => e.addr_lo = v & !0x3,
                1 => e.addr_hi = v,
                2 => e.data = v,
                _ => e.ctrl = v & layout::CTRL_WMASK,
            }
        }
        let e = *e;
        self.sync(i, &e);
    }

    /// Fires entry `index` (delivered, or pending while masked). False if out of range.
    pub(crate) fn fire(&self, index: usize) -> bool {
        match &self.domain {
            Some(d) if index < self.len() => d.fire(index).is_ok(),
            _ => false,
        }
    }

    /// Whether `handle` names a device-backed entry.
    pub(crate) fn is_handle(&self, handle: usize) -> bool {
        self.lock()
            .get(handle)
            .is_some_and(|e| e.handle_for.is_some())
    }

    /// Takes the highest free entry as a handle following MSI-X vector `vector`, whose
    /// current message and effective mask are given. `None` when every entry is taken.
    pub(crate) fn request_handle(
        &self,
        vector: usize,
        message: MsiMessage,
        masked: bool,
    ) -> Option<u16> {
        let mut entries = self.lock();
        let i = entries.iter().rposition(|e| e.handle_for.is_none())?;
        let e = &mut entries[i];
        *e = mirror(vector, message, masked);
        let e = *e;
        self.sync(i, &e);
        Some(i as u16)
    }

    /// Releases handle `handle`; false if it is not a device-backed entry.
    pub(crate) fn release_handle(&self, handle: usize) -> bool {
        let mut entries = self.lock();
        match entries.get_mut(handle) {
            Some(e) if e.handle_for.is_some() => {
                *e = Entry::default();
                if let Some(d) = &self.domain {
                    if let Err(err) = d.release(handle) {
                        warn_ratelimited!(self.log_limit, "IMS entry {handle}: {err}");
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// MSI-X vectors that currently back at least one handle.
    pub(crate) fn handle_sources(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.lock().iter().filter_map(|e| e.handle_for).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// MSI-X vector `vector` changed: every handle following it takes the new message and
    /// mask.
    pub(crate) fn follow_vector(&self, vector: usize, message: MsiMessage, masked: bool) {
        let mut entries = self.lock();
        for i in 0..entries.len() {
            if entries[i].handle_for == Some(vector) {
                entries[i] = mirror(vector, message, masked);
                let e = entries[i];
                self.sync(i, &e);
            }
        }
    }

    /// Device reset: every entry masked and cleared, every handle released.
    pub(crate) fn reset(&self) {
        let mut entries = self.lock();
        entries.fill(Entry::default());
        if let Some(d) = &self.domain {
            if let Err(err) = d.release_all() {
                warn_ratelimited!(self.log_limit, "IMS reset: {err}");
            }
        }
    }
}

fn mirror(vector: usize, m: MsiMessage, masked: bool) -> Entry {
    Entry {
        addr_lo: m.address_lo(),
        addr_hi: m.address_hi(),
        data: m.data,
        ctrl: if masked { layout::CTRL_MASK } else { 0 },
        handle_for: Some(vector),
    }
}
