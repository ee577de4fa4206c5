//! The feature store as the engine reaches it: through the circuit breaker
//! ([`crate::breaker`]), within a call's deadline, counting what it meets.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vigil_core::{Event, FeatureVector};
use vigil_features::{FeatureError, FeatureStore};

use crate::breaker::{Breaker, StoreStats};

pub(crate) struct Gate {
    pub(crate) store: Arc<dyn FeatureStore>,
    pub(crate) breaker: Breaker,
    pub(crate) stats: StoreStats,
}

impl Gate {
    /// The events' features, read and counted by the store; abandoned at
    /// `deadline` (an abandoned call may still have counted the events: a
    /// retry then finds them counted and gets their first features back).
    pub(crate) async fn features(
        &self,
        events: &[&Event],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vec<FeatureVector>, FeatureError> {
        let Some(deadline) = deadline else { return self.through_breaker(events).await };
        let asked = tokio::time::Instant::now();
        match tokio::time::timeout_at(deadline, self.through_breaker(events)).await {
            Ok(r) => r,
            Err(_) => {
                self.stats.deadline_cut.fetch_add(1, Ordering::Relaxed);
                Err(FeatureError::Timeout(asked.elapsed().as_millis() as u64))
            }
        }
    }

    async fn through_breaker(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        if !self.breaker.admit() {
            self.stats.short_circuited.fetch_add(1, Ordering::Relaxed);
            return Err(FeatureError::Unavailable("circuit breaker open after repeated failures".into()));
        }
        match self.store.process(events).await {
            Ok(f) => {
                self.breaker.success();
                Ok(f)
            }
            Err(e) => {
                if e.is_retryable() {
                    let counter = match e {
                        FeatureError::Timeout(_) => &self.stats.timeouts,
                        _ => &self.stats.errors,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if self.breaker.failure() {
                        self.stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "feature store circuit breaker opened");
                    }
                }
                Err(e)
            }
        }
    }
}
