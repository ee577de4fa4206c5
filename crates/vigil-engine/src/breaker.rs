//! A circuit breaker in front of the feature store, and the counters of what it
//! and the degraded policy did.
//!
//! After `store.breaker_failures` (default [`OPEN_AFTER`]) consecutive retryable
//! failures (unreachable, timed out, contended) the breaker opens: for
//! `store.breaker_cool_down` (default [`COOL_DOWN`]) calls fail at once without
//! touching the store, so a dead Redis costs no timeouts. Then one call is let
//! through (half-open): success closes the breaker, failure opens it again. The
//! store's own client reconnects underneath.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker, unless configured.
pub const OPEN_AFTER: u64 = 5;
/// How long an open breaker refuses calls before trying one, unless configured.
pub const COOL_DOWN: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Breaker {
    open_after: u64,
    cool_down: Duration,
    consecutive: AtomicU64,
    open_until: Mutex<Option<Instant>>,
    trial_in_flight: AtomicBool,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new(OPEN_AFTER, COOL_DOWN)
    }
}

impl Breaker {
    pub fn new(open_after: u64, cool_down: Duration) -> Breaker {
        Breaker {
            open_after: open_after.max(1),
            cool_down,
            consecutive: AtomicU64::new(0),
            open_until: Mutex::new(None),
            trial_in_flight: AtomicBool::new(false),
        }
    }

    /// Whether a call may go to the store now.
    pub fn admit(&self) -> bool {
        let mut open = self.open_until.lock().unwrap_or_else(|p| p.into_inner());
        match *open {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                // Half-open: let exactly one trial through.
                if self.trial_in_flight.swap(true, Ordering::SeqCst) {
                    false
                } else {
                    *open = None;
                    true
                }
            }
        }
    }

    pub fn success(&self) {
        self.consecutive.store(0, Ordering::SeqCst);
        self.trial_in_flight.store(false, Ordering::SeqCst);
    }

    /// Records a failure; returns true when it opened the breaker.
    pub fn failure(&self) -> bool {
        let n = self.consecutive.fetch_add(1, Ordering::SeqCst) + 1;
        let trial = self.trial_in_flight.swap(false, Ordering::SeqCst);
        if n >= self.open_after || trial {
            let mut open = self.open_until.lock().unwrap_or_else(|p| p.into_inner());
            let was_closed = open.is_none();
            *open = Some(Instant::now() + self.cool_down);
            return was_closed;
        }
        false
    }

    pub fn is_open(&self) -> bool {
        self.open_until.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// What the engine met at the feature store, for logs and metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Calls that failed: unreachable, refused or contended.
    pub errors: AtomicU64,
    /// Calls that timed out.
    pub timeouts: AtomicU64,
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
    /// Calls refused by an open breaker without touching the store.
    pub short_circuited: AtomicU64,
    /// Decisions made by the degraded policy without features.
    pub degraded_decisions: AtomicU64,
    /// Calls abandoned at a request's deadline (the HTTP API's budgets); they
    /// do not count towards opening the breaker, since the budget is the
    /// caller's, not a fault of the store.
    pub deadline_cut: AtomicU64,
}

impl StoreStats {
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "store errors {}, timeouts {}, deadline cuts {}, breaker opened {}, short-circuited calls {}, \
             degraded decisions {}",
            g(&self.errors),
            g(&self.timeouts),
            g(&self.deadline_cut),
            g(&self.breaker_opened),
            g(&self.short_circuited),
            g(&self.degraded_decisions)
        )
    }
}
