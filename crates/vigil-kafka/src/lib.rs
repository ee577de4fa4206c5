//! Kafka for every entry point that reads or publishes (the stream, the HTTP
//! API's audit trail and labels, `vigil label`, `vigil produce`, `vigil topics`):
//! client settings from the pipeline's `[kafka]`, the consumer and producer
//! setups, the pipeline's topics, backpressured publishing and the key
//! decisions are published with. It knows Kafka and the pipeline config, not
//! the engine, so no entry point depends on another for it.
//!
//! Nothing here depends on a particular broker: any Apache Kafka or Redpanda
//! cluster works, with librdkafka properties passed through from
//! `[kafka.properties]`.

mod drain;
mod health;
pub mod read;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

pub use drain::{Draining, REVOKE_DRAIN_TIMEOUT};
pub use health::{BrokerHealth, Watched};

/// A producer whose broker errors are counted and logged at a bounded rate.
pub type Producer = FutureProducer<Watched>;
use vigil_core::pipeline::KafkaConfig;
use vigil_core::{Event, EventField, PipelineConfig};

/// How long to wait for brokers at start before giving up with an error.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach Kafka at {brokers}: {source}")]
    Unreachable { brokers: String, source: KafkaError },
    #[error("topic `{topic}` does not exist on {brokers}; create it first")]
    MissingTopic { topic: String, brokers: String },
    #[error("kafka client error: {0}")]
    Client(#[from] KafkaError),
    #[error("could not deliver to `{topic}`: {source}; offsets after the last delivered batch were not committed")]
    Delivery { topic: String, source: KafkaError },
    #[error("the pipeline has no [kafka] section")]
    NoKafka,
    #[error("reading `{topic}`: partitions {partitions:?} gave no records up to their end within {timeout_s} s")]
    Stalled { topic: String, partitions: Vec<i32>, timeout_s: u64 },
}

/// The pipeline's `[kafka]`, or a clear error when it has none.
pub fn settings(pipeline: &PipelineConfig) -> Result<&KafkaConfig, Error> {
    pipeline.kafka.as_ref().ok_or(Error::NoKafka)
}

/// The brokers and the pipeline's librdkafka properties.
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
}

/// A setting Vigil chooses unless the pipeline's properties chose it.
pub trait SetIfAbsent {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self;
}

impl SetIfAbsent for ClientConfig {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self {
        if self.get(key).is_none() {
            self.set(key, value);
        }
        self
    }
}

/// The stream's consumer in the pipeline's group: offsets stored by hand
/// (only once what a batch produced is delivered) and committed every second,
/// and before each revoke once `drain` has no batch in flight.
pub fn consumer(
    k: &KafkaConfig,
    health: &Arc<BrokerHealth>,
    drain: &Arc<Draining>,
) -> Result<StreamConsumer<Watched>, Error> {
    Ok(client_config(k)
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set_if_absent("auto.commit.interval.ms", "1000")
        // A decision is due before the ledger commits: do not let the broker hold
        // a fetch for librdkafka's default 500 ms when little is arriving.
        .set_if_absent("fetch.wait.max.ms", "10")
        // Consumer lag per partition, for `vigil run`'s /metrics.
        .set_if_absent("statistics.interval.ms", "1000")
        // A rebalance revokes only the partitions that move; the others keep
        // flowing (every member of a group must use the same strategy).
        .set_if_absent("partition.assignment.strategy", "cooperative-sticky")
        .create_with_context(Watched::draining(health, drain))?)
}

/// A producer for the pipeline's brokers and properties. It does not wait for
/// the brokers: records queue in librdkafka until they are delivered or time out.
pub fn producer(k: &KafkaConfig, health: &Arc<BrokerHealth>) -> Result<Producer, Error> {
    let mut c = client_config(k);
    c.set_if_absent("linger.ms", "2").set_if_absent("message.timeout.ms", "60000");
    Ok(c.create_with_context(Watched::new(health))?)
}

/// Checks that every topic of the pipeline exists, failing with a clear error
/// within seconds when the brokers cannot be reached.
pub fn check_topics<C: rdkafka::consumer::ConsumerContext + 'static>(
    k: &KafkaConfig,
    consumer: &StreamConsumer<C>,
) -> Result<(), Error> {
    all_topics(k).into_iter().try_for_each(|topic| check_topic(k, consumer, topic))
}

/// Checks that `topic` exists on the pipeline's brokers, as [`check_topics`].
pub fn check_topic<C: rdkafka::consumer::ConsumerContext + 'static>(
    k: &KafkaConfig,
    consumer: &StreamConsumer<C>,
    topic: &str,
) -> Result<(), Error> {
    let metadata = consumer
        .fetch_metadata(Some(topic), STARTUP_TIMEOUT)
        .map_err(|source| Error::Unreachable { brokers: k.brokers.clone(), source })?;
    let exists =
        metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if !exists {
        return Err(Error::MissingTopic { topic: topic.to_owned(), brokers: k.brokers.clone() });
    }
    Ok(())
}

/// Every topic the pipeline reads or writes.
pub fn all_topics(k: &KafkaConfig) -> Vec<&String> {
    [&k.input_topic, &k.decisions_topic, &k.dead_letter_topic].into_iter().chain(k.labels_topic.as_ref()).collect()
}

/// The topics the stream reads: events, and labels when configured.
pub fn input_topics(k: &KafkaConfig) -> Vec<&str> {
    std::iter::once(k.input_topic.as_str()).chain(k.labels_topic.as_deref()).collect()
}

/// Creates the pipeline's topics where they are missing; returns those created.
pub async fn create_topics(kafka: &KafkaConfig, partitions: i32) -> Result<Vec<String>, Error> {
    let topics: Vec<String> = all_topics(kafka).into_iter().cloned().collect();
    create_named_topics(kafka, &topics, partitions).await
}

/// As [`create_topics`], for the topics named (the pipeline's and those of
/// another part, such as the review server's resolutions topic).
pub async fn create_named_topics(
    kafka: &KafkaConfig,
    topics: &[String],
    partitions: i32,
) -> Result<Vec<String>, Error> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, STARTUP_TIMEOUT)
        .map_err(|source| Error::Unreachable { brokers: kafka.brokers.clone(), source })?;
    let existing: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    let wanted: Vec<&String> = topics.iter().filter(|t| !existing.contains(&t.as_str())).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let new: Vec<NewTopic<'_>> =
        wanted.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(STARTUP_TIMEOUT));
    let mut created = Vec::new();
    for r in admin.create_topics(&new, &opts).await? {
        match r {
            Ok(t) => created.push(t),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::debug!(topic = %t, "already exists"),
            Err((t, code)) => {
                return Err(Error::Client(KafkaError::AdminOp(code)))
                    .inspect_err(|_| tracing::error!(topic = %t, "cannot create"))
            }
        }
    }
    Ok(created)
}

/// The key a decision is published with, so that order per entity holds: the
/// first present `decision_key` field, else the transaction id.
pub fn decision_key<'a>(event: &'a Event, fields: &[EventField]) -> &'a str {
    fields.iter().find_map(|f| event.text(*f)).unwrap_or(&event.transaction_id)
}

/// Enqueues a record, waiting while the producer queue is full (backpressure).
pub async fn enqueue<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Waits until every record of `pending` is delivered to `topic`; how many.
pub async fn delivered(pending: Vec<DeliveryFuture>, topic: &str) -> Result<u64, Error> {
    let mut n = 0;
    for f in pending {
        match f.await {
            Ok(Ok(_)) => n += 1,
            Ok(Err((source, _))) => return Err(Error::Delivery { topic: topic.to_owned(), source }),
            Err(_) => return Err(Error::Delivery { topic: topic.to_owned(), source: KafkaError::Canceled }),
        }
    }
    Ok(n)
}

/// Publishes `(key, payload)` records to `topic`: all enqueued, then their
/// deliveries awaited, so a list costs about one broker round trip.
pub async fn publish<'a, C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    topic: &str,
    records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<u64, Error> {
    let mut pending = Vec::new();
    for (key, payload) in records {
        pending.push(enqueue(producer, FutureRecord::to(topic).key(key).payload(payload)).await?);
    }
    delivered(pending, topic).await
}

/// Produces each line of `lines` as one record to `topic`, keyed by the event's
/// card (or transaction id) when the line parses; returns how many were delivered.
pub async fn produce_lines(
    kafka: &KafkaConfig,
    topic: &str,
    lines: impl Iterator<Item = Vec<u8>>,
) -> Result<u64, Error> {
    let producer: FutureProducer = client_config(kafka).set_if_absent("linger.ms", "5").create()?;
    let mut pending = Vec::new();
    let mut sent = 0u64;
    for line in lines {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let key = Event::from_json(&line).ok().map(|e| decision_key(&e, &kafka.decision_key).to_owned());
        let mut record = FutureRecord::to(topic).payload(line.as_slice());
        if let Some(k) = &key {
            record = record.key(k.as_bytes());
        }
        pending.push(enqueue(&producer, record).await?);
        if pending.len() >= 10_000 {
            sent += delivered(std::mem::take(&mut pending), topic).await?;
        }
    }
    sent += delivered(pending, topic).await?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_keyed_by_the_first_present_entity() {
        let e = Event::from_json(
            br#"{"transaction_id":"t","timestamp":"2026-01-01T00:00:00Z","amount":1,"currency":"EUR","customer_id":"u1"}"#,
        )
        .unwrap();
        assert_eq!(decision_key(&e, &[EventField::CardId, EventField::CustomerId]), "u1");
        assert_eq!(decision_key(&e, &[EventField::CardId]), "t");
    }
}
