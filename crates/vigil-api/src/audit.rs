//! The audit trail: decisions made over HTTP go to the decisions topic too, so
//! that both entry points leave one record, without adding to response times.
//!
//! A decision is handed to a bounded buffer (`api.audit_buffer`) and the request
//! goes on; a background task moves it into the producer, whose own queue holds
//! records while the brokers are away (until `message.timeout.ms`). When the
//! buffer is full the decision is dropped and counted; a record the brokers never
//! take is counted too. Nothing is lost silently: both counts are metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureRecord, Producer};
use tokio::sync::mpsc;
use vigil_core::pipeline::KafkaConfig;

#[derive(Debug, Default)]
pub struct AuditStats {
    pub published: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

/// The request side of the audit trail.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<(String, Vec<u8>)>,
    stats: Arc<AuditStats>,
}

impl Audit {
    /// Starts the publisher; the returned task ends once every [`Audit`] is
    /// dropped and what was buffered has been handed over and flushed.
    pub fn start(
        kafka: &KafkaConfig,
        buffer: usize,
        stats: Arc<AuditStats>,
        broker: &Arc<vigil_kafka::BrokerHealth>,
    ) -> Result<(Audit, tokio::task::JoinHandle<()>), vigil_kafka::Error> {
        let producer = vigil_kafka::producer(kafka, broker)?;
        let topic = kafka.decisions_topic.clone();
        let (tx, mut rx) = mpsc::channel::<(String, Vec<u8>)>(buffer);
        let task_stats = stats.clone();
        let task = tokio::spawn(async move {
            while let Some((key, payload)) = rx.recv().await {
                let record = FutureRecord::to(&topic).key(key.as_bytes()).payload(payload.as_slice());
                match vigil_kafka::enqueue(&producer, record).await {
                    Ok(delivery) => {
                        let stats = task_stats.clone();
                        tokio::spawn(async move {
                            match delivery.await {
                                Ok(Ok(_)) => stats.published.fetch_add(1, Ordering::Relaxed),
                                _ => stats.failed.fetch_add(1, Ordering::Relaxed),
                            };
                        });
                    }
                    Err(e) => {
                        task_stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "decision not published to the audit topic");
                    }
                }
            }
            let _ = producer.flush(Duration::from_secs(5));
        });
        Ok((Audit { tx, stats }, task))
    }

    /// Queues a decision for the decisions topic, or counts it dropped.
    pub fn record(&self, key: &str, payload: Vec<u8>) {
        if self.tx.try_send((key.to_owned(), payload)).is_err() {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "audit buffer full: decisions dropped from the decisions topic");
            }
        }
    }
}
