//! Hooks run by worker threads when they start, before they touch guest work: the VMM uses
//! them to confine each class of worker with its seccomp filter.

use std::sync::OnceLock;

/// Called with the worker thread's name, on that thread.
pub type ThreadStartHook = Box<dyn Fn(&str) + Send + Sync>;

/// One class of worker threads' start hook (set once for the process).
pub struct StartHook(OnceLock<ThreadStartHook>);

impl StartHook {
    /// A hook not set yet.
    pub const fn new() -> Self {
        Self(OnceLock::new())
    }

    /// Sets the hook; returns false if one was already set (it is kept).
    pub fn set(&self, hook: ThreadStartHook) -> bool {
        self.0.set(hook).is_ok()
    }

    /// Runs the hook (if any) on the calling worker thread.
    pub fn run(&self, name: &str) {
        if let Some(hook) = self.0.get() {
            hook(name);
        }
    }
}

impl Default for StartHook {
    fn default() -> Self {
        Self::new()
    }
}

/// Device workers (DSA descriptor processing, the serial writer) and the interrupt relay.
static WORKERS: StartHook = StartHook::new();

/// Sets the device workers' hook; returns false if one was already set (it is kept).
pub fn set_thread_start_hook(hook: ThreadStartHook) -> bool {
    WORKERS.set(hook)
}

/// Runs the device workers' hook (if any) on the calling worker thread.
pub fn thread_started(name: &str) {
    WORKERS.run(name)
}
