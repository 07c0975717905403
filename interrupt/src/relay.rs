//! The relay: the one VMM thread that watches the triggers of host-signalled vectors while
//! KVM does not.
//!
//! A host-signalled vector's trigger (an eventfd that a host device through VFIO, a vhost
//! worker or a device thread signals) is KVM's irqfd while the vector is active, unmasked and
//! routed: the interrupt then reaches the guest with no VMM thread involved. In every other
//! state (masked, never activated, blocked by remapping, no GSI left) the trigger is detached
//! from KVM and registered here; a signal is then handed to its domain, which applies the
//! usual rules (pending while masked, slow-path delivery without a GSI) and counts it as
//! relayed. A vector is watched here or attached in KVM, never both, so the hot path never
//! wakes this thread.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use log::error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::domain::DeviceDomain;

/// Where a watched trigger belongs.
struct Target {
    domain: Weak<DeviceDomain>,
    index: usize,
}

/// The relay of one hierarchy (its thread starts with the first watched trigger).
pub(crate) struct Relay {
    epoll: Epoll,
    targets: Mutex<HashMap<RawFd, Target>>,
    thread: OnceLock<()>,
}

impl Relay {
    pub(crate) fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            epoll: Epoll::new()?,
            targets: Mutex::new(HashMap::new()),
            thread: OnceLock::new(),
        }))
    }

    fn targets(&self) -> std::sync::MutexGuard<'_, HashMap<RawFd, Target>> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches `trigger` for vector `index` of `domain` (no-op if already watched).
    pub(crate) fn watch(
        self: &Arc<Self>,
        trigger: &EventFd,
        domain: Weak<DeviceDomain>,
        index: usize,
    ) -> std::io::Result<()> {
        let fd = trigger.as_raw_fd();
        let mut t = self.targets();
        if t.contains_key(&fd) {
            return Ok(());
        }
        t.insert(fd, Target { domain, index });
        let event = EpollEvent::new(EventSet::IN, fd as u64);
        if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, event) {
            t.remove(&fd);
            return Err(e);
        }
        drop(t);
        self.start();
        Ok(())
    }

    /// Stops watching `trigger` (no-op if not watched).
    pub(crate) fn unwatch(&self, trigger: &EventFd) -> std::io::Result<()> {
        let fd = trigger.as_raw_fd();
        let mut t = self.targets();
        if t.remove(&fd).is_none() {
            return Ok(());
        }
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Number of triggers watched now.
    pub(crate) fn watched(&self) -> usize {
        self.targets().len()
    }

    /// Starts the relay thread if it is not running (done when a host-signalled domain is
    /// created, so the thread never starts from a confined vCPU thread).
    pub(crate) fn start(self: &Arc<Self>) {
        self.thread.get_or_init(|| {
            let me = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("irq-relay".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    crate::worker::thread_started("irq-relay");
                    Self::run(me)
                });
            if let Err(e) = spawned {
                error!("cannot start the interrupt relay thread: {e}");
            }
        });
    }

    fn run(me: Weak<Self>) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let Some(relay) = me.upgrade() else { return };
            let n = match relay.epoll.wait(1000, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("interrupt relay: epoll_wait failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let fd = ev.data() as RawFd;
                let target = relay
                    .targets()
                    .get(&fd)
                    .map(|t| (t.domain.clone(), t.index));
                match target.map(|(d, i)| (d.upgrade(), i)) {
                    Some((Some(domain), index)) => domain.relay_signal(index),
                    // The domain is gone: stop watching its descriptor.
                    Some((None, _)) => {
                        relay.targets().remove(&fd);
                        let _ =
                            relay
                                .epoll
                                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                    }
                    // Unwatched since epoll_wait returned.
                    None => {}
                }
            }
        }
    }
}
