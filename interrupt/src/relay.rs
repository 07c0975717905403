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
//!
//! The same thread watches other host-signalled eventfds for whoever registers a
//! [`SignalListener`] (a pass-through device's INTx trigger, which becomes an IOAPIC level
//! line): such a listener reads its eventfd itself.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;

use log::error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::domain::DeviceDomain;

/// Something the relay thread calls when its watched eventfd is signalled (it must read the
/// eventfd, or it is called again at once).
pub trait SignalListener: Send + Sync {
    /// The watched eventfd is readable.
    fn signalled(&self);
}

/// Where a watched trigger belongs.
enum Target {
    /// Vector `index` of a host-signalled domain.
    Vector {
        domain: Weak<DeviceDomain>,
        index: usize,
    },
    /// A listener of its own.
    Listener(Weak<dyn SignalListener>),
}

/// What a signal turns into, taken out of the table before the call.
enum Action {
    Vector(Arc<DeviceDomain>, usize),
    Listener(Arc<dyn SignalListener>),
    Gone,
}

/// Epoll data of the stop eventfd (watched triggers use their descriptor).
const STOP: u64 = u64::MAX;

/// What the relay thread owns: the epoll set and the eventfd that stops it.
struct Waiter {
    epoll: Epoll,
    stop: EventFd,
}

/// The relay of one hierarchy (its thread starts with the first watched trigger and is
/// stopped and joined when the relay goes away).
pub(crate) struct Relay {
    waiter: Arc<Waiter>,
    targets: Mutex<HashMap<RawFd, Target>>,
    started: OnceLock<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Relay {
    pub(crate) fn new() -> std::io::Result<Arc<Self>> {
        let waiter = Waiter {
            epoll: Epoll::new()?,
            stop: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?,
        };
        waiter.epoll.ctl(
            ControlOperation::Add,
            waiter.stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        Ok(Arc::new(Self {
            waiter: Arc::new(waiter),
            targets: Mutex::new(HashMap::new()),
            started: OnceLock::new(),
            thread: Mutex::new(None),
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
        self.add(trigger, Target::Vector { domain, index })
    }

    /// Watches `fd` for `listener` (no-op if already watched).
    pub(crate) fn watch_listener(
        self: &Arc<Self>,
        fd: &EventFd,
        listener: Weak<dyn SignalListener>,
    ) -> std::io::Result<()> {
        self.add(fd, Target::Listener(listener))
    }

    fn add(self: &Arc<Self>, trigger: &EventFd, target: Target) -> std::io::Result<()> {
        let fd = trigger.as_raw_fd();
        let mut t = self.targets();
        if t.contains_key(&fd) {
            return Ok(());
        }
        t.insert(fd, target);
        let event = EpollEvent::new(EventSet::IN, fd as u64);
        if let Err(e) = self.waiter.epoll.ctl(ControlOperation::Add, fd, event) {
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
        self.waiter
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Number of triggers watched now.
    pub(crate) fn watched(&self) -> usize {
        self.targets().len()
    }

    /// Starts the relay thread if it is not running (done when a host-signalled domain is
    /// created, so the thread never starts from a confined vCPU thread).
    pub(crate) fn start(self: &Arc<Self>) {
        self.started.get_or_init(|| {
            let me = Arc::downgrade(self);
            let waiter = self.waiter.clone();
            let spawned = std::thread::Builder::new()
                .name("irq-relay".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    crate::worker::thread_started("irq-relay");
                    Self::run(&waiter, me)
                });
            match spawned {
                Ok(h) => *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(h),
                Err(e) => error!("cannot start the interrupt relay thread: {e}"),
            }
        });
    }

    /// The thread: holds the relay only while it hands out signals, and ends when the stop
    /// eventfd is signalled or the relay is gone.
    fn run(waiter: &Waiter, me: Weak<Self>) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match waiter.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("interrupt relay: epoll_wait failed: {e}");
                    return;
                }
            };
            if events[..n].iter().any(|ev| ev.data() == STOP) {
                return;
            }
            let Some(relay) = me.upgrade() else { return };
            for ev in &events[..n] {
                let fd = ev.data() as RawFd;
                let action = relay.targets().get(&fd).map(|t| match t {
                    Target::Vector { domain, index } => domain
                        .upgrade()
                        .map_or(Action::Gone, |d| Action::Vector(d, *index)),
                    Target::Listener(l) => l.upgrade().map_or(Action::Gone, Action::Listener),
                });
                match action {
                    Some(Action::Vector(domain, index)) => domain.relay_signal(index),
                    Some(Action::Listener(l)) => l.signalled(),
                    // The owner is gone: stop watching its descriptor.
                    Some(Action::Gone) => {
                        relay.targets().remove(&fd);
                        let _ = relay.waiter.epoll.ctl(
                            ControlOperation::Delete,
                            fd,
                            EpollEvent::default(),
                        );
                    }
                    // Unwatched since epoll_wait returned.
                    None => {}
                }
            }
        }
    }
}

impl Drop for Relay {
    /// Stops the thread and waits for it, unless this runs on the thread itself (it held
    /// the last reference while handing out a signal): then it ends right after.
    fn drop(&mut self) {
        let _ = self.waiter.stop.write(1);
        let handle = self
            .thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    struct Nop;

    impl SignalListener for Nop {
        fn signalled(&self) {}
    }

    #[test]
    fn dropping_the_relay_stops_and_joins_its_thread() {
        let relay = Relay::new().unwrap();
        let fd = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let l: Arc<dyn SignalListener> = Arc::new(Nop);
        relay.watch_listener(&fd, Arc::downgrade(&l)).unwrap();
        assert!(relay.thread.lock().unwrap().is_some(), "the thread started");
        assert_eq!(
            Arc::strong_count(&relay),
            1,
            "a waiting thread holds no reference"
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(relay);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("dropping the relay stopped and joined its thread");
    }
}
