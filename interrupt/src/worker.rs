//! A hook run by every worker thread (device workers, the interrupt relay) when it starts,
//! before it touches guest work:
//! the VMM uses it to confine workers with their seccomp filter.

use std::sync::OnceLock;

/// Called with the worker thread's name, on that thread.
pub type ThreadStartHook = Box<dyn Fn(&str) + Send + Sync>;

static HOOK: OnceLock<ThreadStartHook> = OnceLock::new();

/// Sets the process-wide hook; returns false if one was already set (it is kept).
pub fn set_thread_start_hook(hook: ThreadStartHook) -> bool {
    HOOK.set(hook).is_ok()
}

/// Runs the hook (if any) on the calling worker thread.
pub fn thread_started(name: &str) {
    if let Some(hook) = HOOK.get() {
        hook(name);
    }
}
