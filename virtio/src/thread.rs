//! The hook every virtio queue worker runs when it starts, before it touches guest memory:
//! the VMM uses it to confine the thread with the block workers' seccomp filter.

use interrupt::worker::StartHook;
pub use interrupt::worker::ThreadStartHook;

static BLOCK_WORKERS: StartHook = StartHook::new();

/// Sets the process-wide hook; returns false if one was already set (it is kept).
pub fn set_thread_start_hook(hook: ThreadStartHook) -> bool {
    BLOCK_WORKERS.set(hook)
}

/// Runs the hook (if any) on the calling worker thread.
pub fn thread_started(name: &str) {
    BLOCK_WORKERS.run(name)
}
