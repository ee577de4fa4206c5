//! Reading what a topic holds now, without a consumer group: every record
//! (or the last few of each partition) up to the end each partition had when
//! the read began. The review server's publisher reads its topic's tail back
//! after a crash with it, and `vigil topics read` shows a topic to a person.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use vigil_core::pipeline::KafkaConfig;

use crate::{client_config, Error, STARTUP_TIMEOUT};

/// One record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }
}

/// The partitions of `topic`, or an error naming the topic and the brokers.
pub fn partitions(consumer: &BaseConsumer, kafka: &KafkaConfig, topic: &str) -> Result<Vec<i32>, Error> {
    let metadata = consumer
        .fetch_metadata(Some(topic), STARTUP_TIMEOUT)
        .map_err(|source| Error::Unreachable { brokers: kafka.brokers.clone(), source })?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::MissingTopic { topic: topic.to_owned(), brokers: kafka.brokers.clone() });
    }
    Ok(partitions)
}

/// A consumer that only reads where it is told (no group offsets are
/// committed).
pub fn reader(kafka: &KafkaConfig) -> Result<BaseConsumer, Error> {
    Ok(client_config(kafka).set("group.id", "vigil-reader").set("enable.auto.commit", "false").create()?)
}

/// The records of `topic` up to each partition's end as the call begins:
/// all of them, or the last `last` of each partition. Ordered by partition,
/// then offset. Blocking: call it from a blocking task. Fails when a
/// partition does not answer within `timeout`.
pub fn read(kafka: &KafkaConfig, topic: &str, last: Option<i64>, timeout: Duration) -> Result<Vec<Record>, Error> {
    let consumer = reader(kafka)?;
    let mut list = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in partitions(&consumer, kafka, topic)? {
        let (low, high) = consumer.fetch_watermarks(topic, p, STARTUP_TIMEOUT)?;
        if high > low {
            let from = last.map_or(low, |n| (high - n.max(0)).max(low));
            if from < high {
                list.add_partition_offset(topic, p, Offset::Offset(from))?;
                ends.insert(p, high);
            }
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer.assign(&list)?;
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() {
        if Instant::now() >= deadline {
            let mut waiting: Vec<i32> = ends.into_keys().collect();
            waiting.sort_unstable();
            return Err(Error::Stalled { topic: topic.to_owned(), partitions: waiting, timeout_s: timeout.as_secs() });
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m?;
        let Some(end) = ends.get(&m.partition()).copied() else { continue };
        if m.offset() < end {
            records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
                    .unwrap_or_default(),
            });
        }
        if m.offset() + 1 >= end {
            ends.remove(&m.partition());
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}
