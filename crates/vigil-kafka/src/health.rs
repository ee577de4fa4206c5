//! What a client meets at the brokers. librdkafka reports a broker that is
//! down several times a second, for as long as it is down; logged as it
//! comes, that buries every other line. Here each error is counted (for
//! `/metrics`), the newest kept (for `/readyz`), and the log gets the first
//! one, then at most one a minute with how many it left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

use crate::drain::{Draining, REVOKE_DRAIN_TIMEOUT};

/// How often broker errors reach the log at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Broker errors met by the clients that share it; for a consumer, also its
/// assignment, rebalances and lag.
#[derive(Debug, Default)]
pub struct BrokerHealth {
    errors: AtomicU64,
    newest: Mutex<Option<(Instant, String)>>,
    /// When an error was last logged, and how many were left out since.
    logged: Mutex<(Option<Instant>, u64)>,
    /// Partitions assigned to the consumer after its latest rebalance.
    assigned: AtomicU64,
    assigns: AtomicU64,
    revokes: AtomicU64,
    rebalance_errors: AtomicU64,
    /// Consumer lag per assigned partition (`topic`, partition, records
    /// behind the partition's end), from librdkafka's latest statistics.
    lag: Mutex<Vec<(String, i32, i64)>>,
}

impl BrokerHealth {
    pub fn new() -> Arc<BrokerHealth> {
        Arc::new(BrokerHealth::default())
    }

    /// Errors met so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The newest error, if it came within `within`.
    pub fn recent_error(&self, within: Duration) -> Option<String> {
        let newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        newest.as_ref().filter(|(at, _)| at.elapsed() <= within).map(|(_, what)| what.clone())
    }

    /// Partitions the consumer holds now.
    pub fn assigned(&self) -> u64 {
        self.assigned.load(Ordering::Relaxed)
    }

    /// Rebalances the consumer went through (assignments, revocations and
    /// failed rebalances).
    pub fn rebalances(&self) -> u64 {
        let (assigns, revokes, errors) = self.rebalances_by_kind();
        assigns + revokes + errors
    }

    /// Rebalances by kind: assignments, revocations, failures.
    pub fn rebalances_by_kind(&self) -> (u64, u64, u64) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (g(&self.assigns), g(&self.revokes), g(&self.rebalance_errors))
    }

    /// Records behind the end of each assigned partition, as of librdkafka's
    /// latest statistics (every `statistics.interval.ms`, 1 s by default for
    /// the stream's consumer); a partition whose lag is not known yet is left out.
    pub fn lag(&self) -> Vec<(String, i32, i64)> {
        self.lag.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn note(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let due = logged.0.is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
        if due {
            tracing::warn!(error = %what, left_out = logged.1, "kafka: {what} (the same and other broker errors are logged at most once a minute; all are counted in /metrics)");
            *logged = (Some(now), 0);
        } else {
            logged.1 += 1;
        }
        *self.newest.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, what));
    }
}

/// A client context that reports to a [`BrokerHealth`]; for the stream's
/// consumer, it also drains in-flight batches before a revoke ([`Draining`]).
pub struct Watched {
    health: Arc<BrokerHealth>,
    drain: Option<Arc<Draining>>,
}

impl Watched {
    pub fn new(health: &Arc<BrokerHealth>) -> Watched {
        Watched { health: health.clone(), drain: None }
    }

    /// A consumer's context that drains `drain` before each revoke, then
    /// commits the stored offsets.
    pub fn draining(health: &Arc<BrokerHealth>, drain: &Arc<Draining>) -> Watched {
        Watched { health: health.clone(), drain: Some(drain.clone()) }
    }
}

impl ClientContext for Watched {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            // A configuration warning (a consumer-only property in
            // `[kafka.properties]` seen by the producer, a deprecated one) is
            // said once, when the client is made: not a broker error.
            RDKafkaLogLevel::Warning if fac == "CONFWARN" => {
                tracing::warn!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => self.health.note(format!("{fac} {message}")),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.health.note(format!("{error}: {reason}"));
    }

    fn stats(&self, statistics: Statistics) {
        let mut lag: Vec<(String, i32, i64)> = statistics
            .topics
            .iter()
            .flat_map(|(name, topic)| {
                // Partition -1 is librdkafka's "unassigned" queue; -1 lag is "unknown".
                topic
                    .partitions
                    .iter()
                    .filter(|(p, s)| **p >= 0 && s.consumer_lag >= 0)
                    .map(|(p, s)| (name.clone(), *p, s.consumer_lag))
            })
            .collect();
        lag.sort();
        *self.health.lag.lock().unwrap_or_else(|e| e.into_inner()) = lag;
    }
}

impl ConsumerContext for Watched {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (Rebalance::Revoke(tpl), Some(drain)) = (rebalance, &self.drain) else {
            return;
        };
        let partitions: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        let started = Instant::now();
        let drained = drain.revoke(partitions.iter().cloned(), REVOKE_DRAIN_TIMEOUT);
        let committed = match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(e),
        };
        let waited_ms = started.elapsed().as_millis() as u64;
        match (drained, committed) {
            (true, Ok(())) => tracing::info!(?partitions, waited_ms, "revoked: in-flight batches delivered and committed"),
            (false, _) => tracing::warn!(
                ?partitions,
                waited_ms,
                "revoked before every in-flight batch was delivered; their events will be decided again (replayed) by the next owner"
            ),
            (true, Err(e)) => tracing::warn!(
                ?partitions,
                error = %e,
                "revoked, but the commit failed; events after the last commit will be decided again (replayed) by the next owner"
            ),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let kind = match rebalance {
            Rebalance::Assign(_) => &self.health.assigns,
            Rebalance::Revoke(_) => &self.health.revokes,
            Rebalance::Error(_) => &self.health.rebalance_errors,
        };
        kind.fetch_add(1, Ordering::Relaxed);
        let held = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.health.assigned.store(held as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_all_counted_and_the_newest_kept() {
        let health = BrokerHealth::new();
        let context = Watched::new(&health);
        for i in 0..5 {
            context.error(KafkaError::Canceled, &format!("broker down {i}"));
        }
        assert_eq!(health.errors(), 5);
        assert!(health.recent_error(Duration::from_secs(5)).unwrap().ends_with("broker down 4"));
        assert_eq!(health.logged.lock().unwrap().1, 4, "one logged, four left out");
        context.log(
            RDKafkaLogLevel::Warning,
            "CONFWARN",
            "[thrd:app]: Configuration property x is a consumer property",
        );
        assert_eq!(health.errors(), 5, "a configuration warning is not a broker error");
    }
}
