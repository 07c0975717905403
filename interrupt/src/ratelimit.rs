//! Rate limiting for log messages a guest can trigger at will.
//!
//! A hostile guest can make a device or the IOMMU report the same error millions of times a
//! second (a fault-event interrupt per bad MSI, a halt per bad descriptor). Each such message
//! goes through a [`RateLimiter`]: the first `burst` messages are logged, then one per `per`
//! interval, and the next message that is logged says how many were dropped in between, so
//! nothing is silently lost from the count.
//!
//! ```
//! use interrupt::ratelimit::RateLimiter;
//! use std::time::Duration;
//!
//! static FAULTS: std::sync::LazyLock<RateLimiter> =
//!     std::sync::LazyLock::new(|| RateLimiter::new(10, Duration::from_secs(1)));
//!
//! fn report(reason: u8) {
//!     interrupt::warn_ratelimited!(FAULTS, "fault reason {reason:#x}");
//! }
//! # report(0x21);
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket for log messages: `burst` messages at once, refilled one per `per`.
///
/// `Sync`, so one limiter can be shared by every vCPU and worker thread that reports the same
/// kind of event. Never blocks beyond a short uncontended lock and never panics (a poisoned
/// lock is recovered: the state is plain counters).
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    per: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Messages that may be logged right now.
    tokens: u32,
    /// When the last token was credited (only advanced in whole `per` steps, so partial
    /// intervals are not lost).
    refilled: Instant,
    /// Messages dropped since the last one that was allowed.
    suppressed: u64,
}

impl RateLimiter {
    /// A limiter that lets `burst` messages through at once and then one per `per`.
    ///
    /// `burst` 0 is treated as 1 (a limiter that never logs would hide the event entirely);
    /// `per` zero disables limiting.
    pub fn new(burst: u32, per: Duration) -> Self {
        Self::new_at(burst, per, Instant::now())
    }

    fn new_at(burst: u32, per: Duration, now: Instant) -> Self {
        let burst = burst.max(1);
        RateLimiter {
            burst,
            per,
            state: Mutex::new(State {
                tokens: burst,
                refilled: now,
                suppressed: 0,
            }),
        }
    }

    /// Ask whether a message may be logged now.
    ///
    /// Returns `Some(k)` when it may, where `k` is the number of messages dropped since the
    /// previous allowed one (mention it in the message when non-zero), or `None` when the
    /// message must be dropped (it is counted).
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`check`](Self::check) with an explicit clock (tests use it to stay time-independent).
    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.per.is_zero() {
            return Some(std::mem::take(&mut s.suppressed));
        }
        if s.tokens < self.burst {
            let elapsed = now.saturating_duration_since(s.refilled);
            let steps = elapsed.as_nanos() / self.per.as_nanos();
            if steps > 0 {
                let credit = u32::try_from(steps).unwrap_or(u32::MAX);
                s.tokens = s.tokens.saturating_add(credit).min(self.burst);
                s.refilled = if s.tokens == self.burst {
                    now
                } else {
                    // steps < burst here, so the multiplication cannot overflow.
                    s.refilled + self.per * credit
                };
            }
        } else {
            s.refilled = now;
        }
        if s.tokens > 0 {
            s.tokens -= 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed = s.suppressed.saturating_add(1);
            None
        }
    }

    /// Messages dropped since the last allowed one (for statistics and dumps).
    pub fn suppressed(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .suppressed
    }
}

/// `log::log!` through a [`RateLimiter`]: the message is logged at `$level` only when the
/// limiter allows it, with " (K similar messages suppressed)" appended when some were
/// dropped before it.
///
/// `$limiter` is an expression of type `RateLimiter` (auto-referenced).
#[macro_export]
macro_rules! log_ratelimited {
    ($level:expr, $limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.check() {
            if suppressed == 0 {
                $crate::__log::log!($level, $($arg)+);
            } else {
                $crate::__log::log!(
                    $level,
                    "{} ({} similar messages suppressed)",
                    format_args!($($arg)+),
                    suppressed
                );
            }
        }
    };
}

/// [`log_ratelimited!`] at warn level.
#[macro_export]
macro_rules! warn_ratelimited {
    ($limiter:expr, $($arg:tt)+) => {
        $crate::log_ratelimited!($crate::__log::Level::Warn, $limiter, $($arg)+)
    };
}

/// [`log_ratelimited!`] at error level.
#[macro_export]
macro_rules! error_ratelimited {
    ($limiter:expr, $($arg:tt)+) => {
        $crate::log_ratelimited!($crate::__log::Level::Error, $limiter, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn burst_passes_then_drops() {
        let t0 = Instant::now();
        let l = RateLimiter::new_at(3, SEC, t0);
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), None);
        assert_eq!(l.check_at(t0 + SEC / 2), None);
        assert_eq!(l.suppressed(), 2);
    }

    #[test]
    fn one_per_interval_after_burst_reports_suppressed_count() {
        let t0 = Instant::now();
        let l = RateLimiter::new_at(1, SEC, t0);
        assert_eq!(l.check_at(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(l.check_at(t0 + SEC / 4), None);
        }
        assert_eq!(l.check_at(t0 + SEC), Some(5));
        assert_eq!(l.check_at(t0 + SEC), None);
        assert_eq!(l.check_at(t0 + 2 * SEC), Some(1));
        assert_eq!(l.suppressed(), 0);
    }

    #[test]
    fn partial_intervals_accumulate() {
        let t0 = Instant::now();
        let l = RateLimiter::new_at(2, SEC, t0);
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0 + SEC * 6 / 10), None);
        // 1.2 s after the start one token was earned, even though the last check was 0.6 s ago.
        assert_eq!(l.check_at(t0 + SEC * 12 / 10), Some(1));
        assert_eq!(l.check_at(t0 + SEC * 15 / 10), None);
        assert_eq!(l.check_at(t0 + SEC * 2), Some(1));
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let t0 = Instant::now();
        let l = RateLimiter::new_at(2, SEC, t0);
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), Some(0));
        let later = t0 + 1000 * SEC;
        assert_eq!(l.check_at(later), Some(0));
        assert_eq!(l.check_at(later), Some(0));
        assert_eq!(l.check_at(later), None);
    }

    #[test]
    fn idle_full_bucket_does_not_bank_credit() {
        let t0 = Instant::now();
        let l = RateLimiter::new_at(1, SEC, t0);
        // Full for a long time, then one message: the next token comes one interval after it.
        let t1 = t0 + 100 * SEC;
        assert_eq!(l.check_at(t1), Some(0));
        assert_eq!(l.check_at(t1 + SEC / 2), None);
        assert_eq!(l.check_at(t1 + SEC), Some(1));
    }

    #[test]
    fn zero_burst_behaves_as_one() {
        let t0 = Instant::now();
        let l = RateLimiter::new_at(0, SEC, t0);
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), None);
    }

    #[test]
    fn zero_interval_disables_limiting() {
        let t0 = Instant::now();
        let l = RateLimiter::new_at(1, Duration::ZERO, t0);
        for _ in 0..100 {
            assert_eq!(l.check_at(t0), Some(0));
        }
    }

    #[test]
    fn clock_going_backwards_does_not_panic_or_credit() {
        let t0 = Instant::now() + 10 * SEC;
        let l = RateLimiter::new_at(1, SEC, t0);
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0 - 5 * SEC), None);
    }

    #[test]
    fn shared_between_threads_counts_every_message() {
        let l = std::sync::Arc::new(RateLimiter::new(4, Duration::from_secs(3600)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..100).filter(|_| l.check().is_some()).count())
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(allowed, 4);
        assert_eq!(l.suppressed(), 396);
    }

    #[test]
    fn macro_logs_only_allowed_messages() {
        let t0 = Instant::now();
        let l = RateLimiter::new_at(1, Duration::from_secs(3600), t0);
        for _ in 0..10 {
            crate::warn_ratelimited!(l, "message {}", 1);
        }
        // One went through, nine were counted; the next allowed one reports them.
        assert_eq!(l.suppressed(), 9);
    }
}
