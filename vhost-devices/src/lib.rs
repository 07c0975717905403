//! virtio-net and virtio-vsock devices on the Linux vhost kernel back-ends.
//!
//! - [`tap`]: the tap interface vhost-net sends and receives on (created if absent).
//! - [`mac`]: MAC addresses from the command line.
//! - [`net`]: virtio-net on vhost-net, [`vsock`]: virtio-vsock on vhost-vsock.
//! - [`backend`]: what both share (memory table, ring setup, configuration reads).
//!
//! The queues' kick eventfds are KVM ioeventfds and their call eventfds are the trigger
//! eventfds of the queues' MSI-X vectors: the kernel's vhost worker serves the guest with
//! no VMM thread on the data path.

pub mod backend;
pub mod mac;
pub mod net;
pub mod tap;
pub mod vsock;

pub use backend::{VhostError, VringSetup};
pub use mac::{MacAddress, MacError};
pub use net::{NetError, VhostNetDevice};
pub use tap::{Tap, TapError};
pub use vsock::{VhostVsockDevice, VsockError};
