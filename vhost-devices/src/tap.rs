//! A Linux tap device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) as vhost-net's
//! socket back-end.
//!
//! `Tap::open` attaches to the interface of that name, creating it when there is none. A tap
//! the VMM created is not persistent: the kernel removes it when the last descriptor closes
//! (the VMM's and vhost-net's), so it disappears when the VMM exits however it exits, while a
//! tap that existed before (e.g. `ip tuntap add NAME mode tap`) is left as it was.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

/// The tun/tap control device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// Size of the virtio-net header the tap prepends to each frame (`virtio_net_hdr_v1`, the
/// header of virtio 1.x devices and of `VIRTIO_NET_F_MRG_RXBUF`).
pub const VNET_HDR_LEN: i32 = 12;

/// Errors opening or configuring a tap.
#[derive(Debug, Error)]
pub enum TapError {
    /// The interface name cannot be a Linux interface name.
    #[error("invalid tap name '{0}': 1 to 15 characters, no '/', ':' or white space")]
    Name(String),
    /// `/dev/net/tun` cannot be opened (no tun driver, no permission).
    #[error("cannot open {TUN_PATH}: {0}")]
    OpenTun(#[source] std::io::Error),
    /// `TUNSETIFF` failed.
    #[error("tap {name}: {reason}")]
    Attach {
        /// The interface name.
        name: String,
        /// What went wrong, in words.
        reason: String,
    },
    /// A tap ioctl after `TUNSETIFF` failed.
    #[error("tap {name}: {what} failed: {source}")]
    Ioctl {
        /// The interface name.
        name: String,
        /// Which ioctl.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `name` can be a Linux network interface name (`dev_valid_name`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// `struct ifreq` with the part `TUNSETIFF` uses.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

impl Tap {
    /// Attaches to tap `name`, creating it (not persistent) when no interface has that name.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        let existed = interface_exists(name);
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its layout and size.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            let reason = match e.raw_os_error() {
                Some(libc::EPERM) if existed => {
                    format!("exists and this user may not attach to it ({e})")
                }
                Some(libc::EPERM) => format!("cannot create it: {e} (CAP_NET_ADMIN needed)"),
                Some(libc::EINVAL) if existed => {
                    format!("exists and is not a single-queue tap device ({e})")
                }
                Some(libc::EBUSY) => format!("is in use by another process ({e})"),
                _ => format!("TUNSETIFF failed: {e}"),
            };
            return Err(TapError::Attach {
                name: name.to_string(),
                reason,
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
            created: !existed,
        };
        tap.set_vnet_hdr_len(VNET_HDR_LEN)?;
        // No offloads until the guest acknowledges them.
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this `open` created the interface (it then goes away with the VMM).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The tap's descriptor (vhost-net's back-end socket).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn ioctl_int(
        &self,
        what: &'static str,
        req: libc::Ioctl,
        v: libc::c_int,
    ) -> Result<(), TapError> {
        // SAFETY: the tap ioctls used here read one `int` through the pointer.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), req, &v) };
        if rc < 0 {
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// `TUNSETVNETHDRSZ`: the virtio-net header length in front of each frame.
    pub fn set_vnet_hdr_len(&self, len: i32) -> Result<(), TapError> {
        self.ioctl_int("TUNSETVNETHDRSZ", libc::TUNSETVNETHDRSZ, len)
    }

    /// `TUNSETOFFLOAD` with `TUN_F_*` flags: the offloads the guest's receive path accepts.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // TUNSETOFFLOAD takes the flags as the argument value itself, not a pointer.
        // SAFETY: plain integer argument, no memory is passed.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        };
        if rc < 0 {
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                what: "TUNSETOFFLOAD",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// Whether a network interface `name` exists in this network namespace.
pub fn interface_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_linux_rules() {
        for ok in ["tap0", "vmm-tap", "a", "x23456789012345"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:1",
            "a b",
            "x234567890123456",
            "t\n",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(matches!(Tap::open("a/b"), Err(TapError::Name(_))));
    }

    #[test]
    fn loopback_exists_and_is_not_a_tap() {
        assert!(interface_exists("lo"));
        assert!(!interface_exists("vmm-no-such-if"));
        // Where /dev/net/tun opens, attaching to `lo` is refused as "not a tap device".
        match Tap::open("lo") {
            Err(TapError::OpenTun(_)) => {}
            Err(TapError::Attach { reason, .. }) => {
                assert!(
                    reason.contains("not a single-queue tap") || reason.contains("may not"),
                    "{reason}"
                )
            }
            other => panic!("lo: {other:?}"),
        }
    }
}
