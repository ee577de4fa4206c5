//! The queue counts that the queue page and `GET /queues` show, kept fresh
//! by one task instead of counted for every request.
//!
//! Counting a queue is a few thousand index entries per queue (bounded by
//! `COUNT_LIMIT`), about 6 ms at 1,000,000 cases, with a tail near 70 ms in
//! about 1% of counts; every analyst's every page paid it. Counts are an
//! overview: a second old is as good to an analyst as now, while the list of
//! cases under them, claim-next and every action read the live tables. So
//! [`QueueCounts::refresh_every`] counts once per `max_age` while the server
//! runs, and a request reads the latest counts; one that comes too early (before
//! the first count), or that finds them older than three periods (the task
//! is stuck), counts for itself. With a `max_age` of zero every request
//! counts, as tests that check counts right after a change want.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use vigil_review::{QueueCount, ReviewError, ReviewStore};

/// The latest counts and when they were taken.
pub struct QueueCounts {
    max_age: Duration,
    latest: RwLock<Option<(Instant, Arc<Vec<QueueCount>>)>>,
}

impl QueueCounts {
    /// Counts at most `max_age` old (zero: always counted for the request).
    pub fn new(max_age: Duration) -> QueueCounts {
        QueueCounts { max_age, latest: RwLock::new(None) }
    }

    /// The counts: the latest when fresh enough, else counted now.
    pub async fn get(&self, store: &ReviewStore) -> Result<Arc<Vec<QueueCount>>, ReviewError> {
        if !self.max_age.is_zero() {
            let latest = self.latest.read().unwrap_or_else(|p| p.into_inner());
            if let Some((_, counts)) = latest.as_ref().filter(|(at, _)| at.elapsed() <= self.max_age * 3) {
                return Ok(counts.clone());
            }
        }
        self.count(store).await
    }

    async fn count(&self, store: &ReviewStore) -> Result<Arc<Vec<QueueCount>>, ReviewError> {
        let counts = Arc::new(store.queue_counts().await?);
        *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), counts.clone()));
        Ok(counts)
    }

    /// Counts once per `max_age`, for as long as the returned future runs
    /// (the server spawns it beside itself); nothing when `max_age` is zero.
    pub async fn refresh_every(self: Arc<Self>, store: ReviewStore) {
        if self.max_age.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(self.max_age);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.count(&store).await {
                tracing::warn!(error = %e, "counting the queues failed; requests count for themselves meanwhile");
            }
        }
    }
}
