//! Drain on revoke: a partition leaves this consumer only once what was
//! decided from it is delivered and its offsets are committed, so its next
//! owner starts exactly after the last decision made here.
//!
//! librdkafka runs the rebalance callback on the thread that polls the
//! consumer and waits for it, so the revoke is acknowledged to the group only
//! after the callback returns. The stream's reading loop is that thread; its
//! committer (a thread of its own, so that it progresses while the reading
//! loop waits here) reports each batch whose offsets it has stored. The
//! callback waits until no batch is pending, bounded by a timeout, then commits
//! synchronously. Records the reading loop holds but has not decided yet are
//! let go for the revoked partitions ([`Draining::revoked_after`]): their new
//! owner reads them from the committed offset.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a revoke waits for in-flight batches before it lets the partitions
/// go anyway (their uncommitted events are then decided again by the next
/// owner, marked `replayed`). Well under librdkafka's `max.poll.interval.ms`.
pub const REVOKE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How many revoked partitions are remembered for the reading loop.
const REMEMBERED: usize = 4096;

/// Batches in flight between the reading loop and the committer, and the
/// partitions revoked so far.
#[derive(Debug, Default)]
pub struct Draining {
    state: Mutex<State>,
    settled: Condvar,
    drained: AtomicU64,
    timed_out: AtomicU64,
    /// Revocations so far (also in `State`, read here without the lock by
    /// the reading loop after every `recv`).
    revocations: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Batches handed to the committer whose offsets are not stored yet.
    pending: usize,
    /// The committer stopped: nothing more will be stored.
    closed: bool,
    /// Revocations so far.
    revocations: u64,
    /// `(revocation, topic, partition)` of the latest revocations.
    revoked: VecDeque<(u64, String, i32)>,
}

impl Draining {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch was handed to the committer.
    pub fn handed_over(&self) {
        self.lock().pending += 1;
    }

    /// The committer stored a batch's offsets.
    pub fn stored(&self) {
        let mut s = self.lock();
        s.pending = s.pending.saturating_sub(1);
        if s.pending == 0 {
            self.settled.notify_all();
        }
    }

    /// The committer stopped; a revoke no longer waits for it.
    pub fn close(&self) {
        self.lock().closed = true;
        self.settled.notify_all();
    }

    /// Revocations so far; pass it to [`Draining::revoked_after`] later.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// Partitions revoked after revocation number `since`.
    pub fn revoked_after(&self, since: u64) -> Vec<(String, i32)> {
        self.lock().revoked.iter().filter(|(n, _, _)| *n > since).map(|(_, t, p)| (t.clone(), *p)).collect()
    }

    /// Revokes that found every batch delivered, and those that gave up waiting.
    pub fn outcomes(&self) -> (u64, u64) {
        (self.drained.load(Ordering::Relaxed), self.timed_out.load(Ordering::Relaxed))
    }

    /// Records a revocation of `partitions`, then waits until no batch is in
    /// flight (or the committer stopped), at most `timeout`; whether it drained.
    pub fn revoke(&self, partitions: impl IntoIterator<Item = (String, i32)>, timeout: Duration) -> bool {
        let mut s = self.lock();
        s.revocations += 1;
        let n = s.revocations;
        for (topic, partition) in partitions {
            s.revoked.push_back((n, topic, partition));
        }
        // Published after the partitions, so a reader that sees `n` finds them.
        self.revocations.store(n, Ordering::Release);
        while s.revoked.len() > REMEMBERED {
            s.revoked.pop_front();
        }
        let deadline = Instant::now() + timeout;
        while s.pending > 0 && !s.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.timed_out.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            s = self.settled.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        self.drained.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_revoke_waits_for_the_batches_in_flight() {
        let d = Arc::new(Draining::default());
        d.handed_over();
        d.handed_over();
        let committer = {
            let d = d.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                d.stored();
                std::thread::sleep(Duration::from_millis(50));
                d.stored();
            })
        };
        let started = Instant::now();
        assert!(d.revoke([("events".to_owned(), 1)], Duration::from_secs(10)));
        assert!(started.elapsed() >= Duration::from_millis(100), "returned before both batches were stored");
        committer.join().unwrap();
        assert_eq!(d.outcomes(), (1, 0));
    }

    #[test]
    fn a_revoke_gives_up_after_its_timeout_or_when_the_committer_stops() {
        let d = Draining::default();
        d.handed_over();
        assert!(!d.revoke([("events".to_owned(), 0)], Duration::from_millis(20)));
        d.close();
        assert!(d.revoke([("events".to_owned(), 1)], Duration::from_secs(10)));
        assert_eq!(d.outcomes(), (1, 1));
    }

    #[test]
    fn the_reading_loop_learns_which_partitions_went() {
        let d = Draining::default();
        let seen = d.revocations();
        d.revoke([("events".to_owned(), 0), ("labels".to_owned(), 0)], Duration::ZERO);
        let later = d.revocations();
        d.revoke([("events".to_owned(), 3)], Duration::ZERO);
        assert_eq!(d.revoked_after(seen).len(), 3);
        assert_eq!(d.revoked_after(later), vec![("events".to_owned(), 3)]);
        assert!(d.revoked_after(d.revocations()).is_empty());
    }
}
