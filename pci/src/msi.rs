//! The MSI capability (PCI Local Bus 3.0 §6.8.1): 32- or 64-bit address, 1..32 messages,
//! optional per-vector masking with pending bits.
//!
//! The capability registers live in the function's [`ConfigSpace`] (with write masks for
//! every RW field); after each guest write the vectors of the device's PCI/MSI
//! [`DeviceDomain`] are brought in line: vector `i < 2^MME` carries the message
//! `(address, data | i)` and is masked while MSI is disabled or its mask bit is set.

use std::sync::Arc;

use interrupt::{DeviceDomain, MsiMessage};
use log::warn;

use crate::config::ConfigSpace;
use crate::Error;

/// Capability ID of MSI.
pub const MSI_CAP_ID: u8 = 0x05;

/// Message control bits.
pub mod control {
    /// MSI enable.
    pub const ENABLE: u16 = 1 << 0;
    /// Multiple Message Capable (3:1).
    pub const MMC_SHIFT: u16 = 1;
    /// Multiple Message Enable (6:4).
    pub const MME_SHIFT: u16 = 4;
    /// 64-bit address capable.
    pub const ADDR64: u16 = 1 << 7;
    /// Per-vector masking capable.
    pub const PER_VECTOR_MASK: u16 = 1 << 8;
}

/// The MSI capability of one function.
pub struct MsiCapability {
    offset: usize,
    vectors: usize,
    addr64: bool,
    per_vector_mask: bool,
    domain: Arc<DeviceDomain>,
    enabled: bool,
}

impl MsiCapability {
    /// Adds an MSI capability for `vectors` messages (a power of two, 1..=32) to `config`,
    /// delivering through `domain` (which must have at least `vectors` vectors).
    pub fn new(
        config: &mut ConfigSpace,
        vectors: usize,
        addr64: bool,
        per_vector_mask: bool,
        domain: Arc<DeviceDomain>,
    ) -> Result<Self, Error> {
        Self::build(config, None, vectors, addr64, per_vector_mask, domain)
    }

    /// Like [`new`](Self::new), with the capability written at `offset` and left out of
    /// the list's linking (a pass-through function keeps its host's capability offsets).
    pub fn new_at(
        config: &mut ConfigSpace,
        offset: u8,
        vectors: usize,
        addr64: bool,
        per_vector_mask: bool,
        domain: Arc<DeviceDomain>,
    ) -> Result<Self, Error> {
        Self::build(
            config,
            Some(offset),
            vectors,
            addr64,
            per_vector_mask,
            domain,
        )
    }

    fn build(
        config: &mut ConfigSpace,
        at: Option<u8>,
        vectors: usize,
        addr64: bool,
        per_vector_mask: bool,
        domain: Arc<DeviceDomain>,
    ) -> Result<Self, Error> {
        if !vectors.is_power_of_two() || vectors > 32 || domain.size() < vectors {
            return Err(Error::InvalidCapability(
                "MSI vector count must be 1, 2, 4, 8, 16 or 32",
            ));
        }
        let mmc = vectors.trailing_zeros() as u16;
        let ctrl = (mmc << control::MMC_SHIFT)
            | if addr64 { control::ADDR64 } else { 0 }
            | if per_vector_mask {
                control::PER_VECTOR_MASK
            } else {
                0
            };
        // Body after ID/next: control(2) addr(4) [addr_hi(4)] data(2) pad(2) [mask(4) pending(4)]
        let mut body = Vec::new();
        let mut wmask = Vec::new();
        body.extend_from_slice(&ctrl.to_le_bytes());
        wmask.extend_from_slice(&(control::ENABLE | (7 << control::MME_SHIFT)).to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        wmask.extend_from_slice(&0xffff_fffcu32.to_le_bytes());
        if addr64 {
            body.extend_from_slice(&[0; 4]);
            wmask.extend_from_slice(&[0xff; 4]);
        }
        body.extend_from_slice(&[0; 4]);
        wmask.extend_from_slice(&[0xff, 0xff, 0, 0]);
        if per_vector_mask {
            let m = if vectors == 32 {
                u32::MAX
            } else {
                (1u32 << vectors) - 1
            };
            body.extend_from_slice(&[0; 8]);
            wmask.extend_from_slice(&m.to_le_bytes());
            wmask.extend_from_slice(&[0; 4]);
        }
        let offset = usize::from(match at {
            None => config.add_capability(MSI_CAP_ID, &body, &wmask)?,
            Some(off) => {
                config.place_capability(off, MSI_CAP_ID, &body, &wmask)?;
                off
            }
        });
        Ok(Self {
            offset,
            vectors,
            addr64,
            per_vector_mask,
            domain,
            enabled: false,
        })
    }

    /// Offset of the capability in config space.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Length of the capability in bytes.
    pub fn len(&self) -> usize {
        4 + 4 + if self.addr64 { 4 } else { 0 } + 4 + if self.per_vector_mask { 8 } else { 0 }
    }

    /// Always false: a capability has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn data_offset(&self) -> usize {
        self.offset + if self.addr64 { 0xc } else { 0x8 }
    }

    fn mask_offset(&self) -> usize {
        self.data_offset() + 4
    }

    /// Whether `offset` (a config-space byte) falls inside this capability.
    pub fn contains(&self, offset: usize) -> bool {
        (self.offset..self.offset + self.len()).contains(&offset)
    }

    /// Whether MSI is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Number of vectors the guest enabled (2^MME, clamped to the capability).
    pub fn enabled_vectors(&self, config: &ConfigSpace) -> usize {
        let ctrl = config.u16_at(self.offset + 2);
        let mme = ((ctrl >> control::MME_SHIFT) & 7) as usize;
        (1usize << mme.min(5)).min(self.vectors)
    }

    /// Reads a dword of the capability, splicing in the live pending bits.
    pub fn read_dword(&self, config: &ConfigSpace, offset: usize) -> u32 {
        let v = config.read_dword(offset);
        if self.per_vector_mask && offset & !3 == self.mask_offset() + 4 {
            return (0..self.vectors)
                .filter(|&i| self.domain.is_pending(i))
                .fold(0, |acc, i| acc | (1 << i));
        }
        v
    }

    /// Applies the capability state to the domain after a guest write to `config`.
    pub fn update(&mut self, config: &ConfigSpace) {
        let ctrl = config.u16_at(self.offset + 2);
        let enable = ctrl & control::ENABLE != 0;
        if !enable {
            if self.enabled {
                self.enabled = false;
                if let Err(e) = self.domain.release_all() {
                    warn!("MSI disable: {e}");
                }
            }
            return;
        }
        self.enabled = true;
        let lo = config.u32_at(self.offset + 4);
        let hi = if self.addr64 {
            config.u32_at(self.offset + 8)
        } else {
            0
        };
        let data = u32::from(config.u16_at(self.data_offset()));
        let mask = if self.per_vector_mask {
            config.u32_at(self.mask_offset())
        } else {
            0
        };
        let n = self.enabled_vectors(config);
        for i in 0..self.vectors {
            let result = if i < n {
                let msg = MsiMessage::new(lo, hi, (data & !(n as u32 - 1)) | i as u32);
                self.domain
                    .set_message(i, Some(msg))
                    .and_then(|_| self.domain.set_masked(i, mask & (1 << i) != 0))
            } else {
                self.domain.release(i)
            };
            if let Err(e) = result {
                warn!("MSI vector {i}: {e}");
            }
        }
    }

    /// Signals vector `index` (ignored unless MSI is enabled and the vector is enabled).
    pub fn fire(&self, config: &ConfigSpace, index: usize) -> bool {
        if !self.enabled || index >= self.enabled_vectors(config) {
            return false;
        }
        self.domain.fire(index).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{domain, routes};
    use interrupt::DomainKind;

    fn setup(
        vectors: usize,
        addr64: bool,
        pvm: bool,
    ) -> (
        ConfigSpace,
        MsiCapability,
        Arc<interrupt::RecordingBackend>,
        Arc<interrupt::InterruptHierarchy>,
    ) {
        let (b, h, d) = domain(DomainKind::Msi, 32);
        let mut c = ConfigSpace::new(1, 2, 0xff, 0, 0, 0);
        let m = MsiCapability::new(&mut c, vectors, addr64, pvm, d).unwrap();
        (c, m, b, h)
    }

    fn write(c: &mut ConfigSpace, m: &mut MsiCapability, off: usize, v: &[u8]) {
        c.guest_write(m.offset() + off, v);
        m.update(c);
    }

    #[test]
    fn control_reports_capabilities_read_only() {
        let (mut c, mut m, _, _) = setup(8, true, true);
        let ctrl = c.u16_at(m.offset() + 2);
        assert_eq!(ctrl, (3 << 1) | control::ADDR64 | control::PER_VECTOR_MASK);
        write(&mut c, &mut m, 2, &0xffffu16.to_le_bytes());
        assert_eq!(c.u16_at(m.offset() + 2), ctrl | 0x71);
    }

    #[test]
    fn layout_of_32bit_capability_has_no_upper_address() {
        let (c, m, _, _) = setup(1, false, false);
        assert_eq!(m.len(), 12);
        assert_eq!(c.u16_at(m.offset() + 2) & control::ADDR64, 0);
    }

    #[test]
    fn multiple_messages_get_consecutive_data() {
        let (mut c, mut m, b, h) = setup(4, true, false);
        write(&mut c, &mut m, 4, &0xfee0_1000u32.to_le_bytes());
        write(&mut c, &mut m, 0xc, &0x4041u16.to_le_bytes()); // low bits ignored for 4 vectors
        write(&mut c, &mut m, 2, &((2u16 << 4) | 1).to_le_bytes());
        assert_eq!(m.enabled_vectors(&c), 4);
        for i in 0..4 {
            assert!(m.fire(&c, i));
        }
        assert!(!m.fire(&c, 4));
        let r = routes(&b, &h);
        let datas: Vec<u32> = r.iter().map(|(_, msg)| msg.data).collect();
        assert_eq!(datas, vec![0x4040, 0x4041, 0x4042, 0x4043]);
        assert!(r.iter().all(|(_, msg)| msg.address == 0xfee0_1000));
    }

    #[test]
    fn mme_beyond_mmc_is_clamped() {
        let (mut c, mut m, _, _) = setup(2, true, false);
        write(&mut c, &mut m, 2, &((5u16 << 4) | 1).to_le_bytes());
        assert_eq!(m.enabled_vectors(&c), 2);
    }

    #[test]
    fn address_low_bits_are_read_only() {
        let (mut c, mut m, _, _) = setup(1, true, false);
        write(&mut c, &mut m, 4, &0xfee0_0003u32.to_le_bytes());
        assert_eq!(c.u32_at(m.offset() + 4), 0xfee0_0000);
    }

    #[test]
    fn masked_vector_sets_pending_and_unmask_delivers_once() {
        let (mut c, mut m, _, h) = setup(2, true, true);
        write(&mut c, &mut m, 4, &0xfee0_0000u32.to_le_bytes());
        write(&mut c, &mut m, 0xc, &0x30u16.to_le_bytes());
        write(&mut c, &mut m, 0x10, &1u32.to_le_bytes()); // mask vector 0
        write(&mut c, &mut m, 2, &((1u16 << 4) | 1).to_le_bytes());
        m.fire(&c, 0);
        m.fire(&c, 0);
        assert_eq!(m.read_dword(&c, m.offset() + 0x14), 1);
        write(&mut c, &mut m, 0x10, &0u32.to_le_bytes());
        assert_eq!(m.read_dword(&c, m.offset() + 0x14), 0);
        let d = &h.domains()[0];
        assert_eq!(d.snapshot()[0].deliveries, 1);
    }

    #[test]
    fn pending_bits_are_read_only() {
        let (mut c, mut m, _, _) = setup(2, true, true);
        write(&mut c, &mut m, 0x14, &3u32.to_le_bytes());
        assert_eq!(m.read_dword(&c, m.offset() + 0x14), 0);
    }

    #[test]
    fn disable_releases_vectors_and_stops_delivery() {
        let (mut c, mut m, b, h) = setup(1, false, false);
        write(&mut c, &mut m, 4, &0xfee0_0000u32.to_le_bytes());
        write(&mut c, &mut m, 8, &0x31u16.to_le_bytes());
        write(&mut c, &mut m, 2, &1u16.to_le_bytes());
        assert!(m.fire(&c, 0));
        assert_eq!(routes(&b, &h).len(), 1);
        write(&mut c, &mut m, 2, &0u16.to_le_bytes());
        assert!(!m.fire(&c, 0));
        assert!(routes(&b, &h).is_empty());
        assert_eq!(h.vector_layer().stats().allocated, 0);
    }

    #[test]
    fn message_change_while_enabled_reroutes_in_place() {
        let (mut c, mut m, b, h) = setup(1, false, false);
        write(&mut c, &mut m, 4, &0xfee0_0000u32.to_le_bytes());
        write(&mut c, &mut m, 8, &0x31u16.to_le_bytes());
        write(&mut c, &mut m, 2, &1u16.to_le_bytes());
        let gsi = routes(&b, &h)[0].0;
        write(&mut c, &mut m, 8, &0x32u16.to_le_bytes());
        let r = routes(&b, &h);
        assert_eq!((r[0].0, r[0].1.data), (gsi, 0x32));
    }

    #[test]
    fn invalid_vector_counts_are_rejected() {
        let (_, _, d) = domain(DomainKind::Msi, 32);
        let mut c = ConfigSpace::new(1, 2, 0xff, 0, 0, 0);
        assert!(MsiCapability::new(&mut c, 3, true, false, d.clone()).is_err());
        assert!(MsiCapability::new(&mut c, 64, true, false, d).is_err());
    }
}
