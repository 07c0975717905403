//! The thread-start hook of device worker threads (defined in the interrupt crate, whose
//! relay thread runs it too); re-exported for the device models.

pub use interrupt::worker::{set_thread_start_hook, thread_started, ThreadStartHook};
