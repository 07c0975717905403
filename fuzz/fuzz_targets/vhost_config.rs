//! Fuzzes the configuration spaces of the vhost devices as a guest driver reads them through
//! the virtio-pci device capability: any offset and length against virtio-net's
//! (`mac`, `status`) and virtio-vsock's (`guest_cid`) structures, plus command-line MAC and
//! CID parsing feeding them.
//!
//! Checks: reads never panic; bytes inside the structure equal the structure's bytes, bytes
//! past its end (or at offsets beyond `usize`) read as zero; a MAC that parses prints back
//! to the same octets and is a unicast station address; a CID is accepted iff 3..=2^32-2.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use vhost_devices::backend::read_config;
use vhost_devices::net::net_config;
use vhost_devices::vsock::check_cid;
use vhost_devices::MacAddress;

#[derive(Arbitrary, Debug)]
struct Input {
    mac: String,
    cid: u64,
    reads: Vec<(bool, u64, u8)>,
}

fuzz_target!(|input: Input| {
    let mac = input.mac.parse::<MacAddress>().ok();
    if let Some(m) = mac {
        let again: MacAddress = m.to_string().parse().expect("printed MAC parses");
        assert_eq!(again, m);
        assert_eq!(m.octets()[0] & 1, 0, "multicast accepted");
        assert_ne!(m.octets(), [0; 6]);
    }
    assert_eq!(
        check_cid(input.cid).is_ok(),
        (3..=u64::from(u32::MAX) - 1).contains(&input.cid)
    );
    let net = net_config(mac);
    let vsock = input.cid.to_le_bytes();
    for (is_net, offset, len) in input.reads.into_iter().take(64) {
        let cfg: &[u8] = if is_net { &net } else { &vsock };
        let mut data = vec![0xa5u8; usize::from(len)];
        read_config(cfg, offset, &mut data);
        for (i, b) in data.iter().enumerate() {
            let want = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| cfg.get(at))
                .copied()
                .unwrap_or(0);
            assert_eq!(*b, want, "offset {offset} + {i}");
        }
    }
});
