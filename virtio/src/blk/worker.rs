//! A request queue's worker thread.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use interrupt::{warn_ratelimited, RateLimiter};
use log::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::disk::DiskImage;
use crate::device::ActiveQueue;
use crate::GuestMemory;

/// A broken queue (bad ring indices) is a guest's doing.
static QUEUE_ERRORS: std::sync::LazyLock<RateLimiter> =
    std::sync::LazyLock::new(|| RateLimiter::new(10, Duration::from_secs(1)));

const CONTROL: u64 = 0;
const KICK: u64 = 1;

enum Command {
    None,
    Start(Box<(ActiveQueue, GuestMemory)>),
    Stop,
    Exit,
}

struct Shared {
    command: Mutex<(Command, u64)>,
    done: Condvar,
    control: EventFd,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, (Command, u64)> {
        self.command.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle of one worker thread.
pub(super) struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub(super) fn spawn(name: String, disk: Arc<DiskImage>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            command: Mutex::new((Command::None, 0)),
            done: Condvar::new(),
            control: EventFd::new(EFD_NONBLOCK)?,
        });
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            shared.control.as_raw_fd(),
            EpollEvent::new(EventSet::IN, CONTROL),
        )?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                crate::thread::thread_started(&name);
                run(&name, &s, &epoll, &disk)
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Sends `cmd` and waits until the worker took it.
    fn send(&self, cmd: Command) {
        let mut g = self.shared.lock();
        g.0 = cmd;
        g.1 = g.1.wrapping_add(1);
        let _ = self.shared.control.write(1);
        while !matches!(g.0, Command::None) {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                return;
            }
            g = self
                .shared
                .done
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(super) fn start(&self, q: ActiveQueue, mem: GuestMemory) {
        self.send(Command::Start(Box::new((q, mem))));
    }

    /// Returns once the worker dropped its queue (no more guest memory access or interrupt).
    pub(super) fn stop(&self) {
        self.send(Command::Stop);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.send(Command::Exit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Running {
    q: ActiveQueue,
    mem: GuestMemory,
    broken: bool,
}

fn run(name: &str, shared: &Shared, epoll: &Epoll, disk: &DiskImage) {
    let mut running: Option<Running> = None;
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("{name}: epoll: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                CONTROL => {
                    let _ = shared.control.read();
                    let mut g = shared.lock();
                    let cmd = std::mem::replace(&mut g.0, Command::None);
                    if matches!(cmd, Command::None) {
                        continue;
                    }
                    if let Some(r) = running.take() {
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            r.q.kick.as_raw_fd(),
                            EpollEvent::default(),
                        );
                    }
                    match cmd {
                        Command::Start(b) => {
                            let (q, mem) = *b;
                            if let Err(e) = epoll.ctl(
                                ControlOperation::Add,
                                q.kick.as_raw_fd(),
                                EpollEvent::new(EventSet::IN, KICK),
                            ) {
                                warn!("{name}: cannot watch the queue: {e}");
                            }
                            running = Some(Running {
                                q,
                                mem,
                                broken: false,
                            });
                        }
                        Command::Exit => {
                            shared.done.notify_all();
                            return;
                        }
                        Command::Stop | Command::None => {}
                    }
                    drop(g);
                    shared.done.notify_all();
                    // Requests may have been queued before the worker watched the kick.
                    if let Some(r) = running.as_mut() {
                        serve(name, r, disk);
                    }
                }
                KICK => {
                    if let Some(r) = running.as_mut() {
                        let _ = r.q.kick.read();
                        serve(name, r, disk);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Drains the queue, then signals the driver if it asked to be notified.
fn serve(name: &str, r: &mut Running, disk: &DiskImage) {
    if r.broken {
        return;
    }
    match super::process_queue(disk, &r.mem, &mut r.q.queue, super::WORKER_BUDGET) {
        Ok(served) => {
            if served.notify {
                r.q.interrupt.trigger();
            }
            if served.more {
                // Come back through epoll, so a reset or exit is seen in between.
                let _ = r.q.kick.write(1);
            }
        }
        Err(e) => {
            warn_ratelimited!(
                QUEUE_ERRORS,
                "{name}: queue {} is broken ({e}): stopped until reset",
                r.q.index
            );
            r.broken = true;
        }
    }
}
