//! `[kafka]`: brokers, group, topics, batching and the decision key.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::Diagnostics;
use crate::event::EventField;

/// Kafka settings for `vigil run`.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub decisions_topic: String,
    pub dead_letter_topic: String,
    /// Where confirmed outcomes (chargebacks, verdicts) arrive for label features.
    pub labels_topic: Option<String>,
    /// Most events decided together (one feature-store round trip).
    pub batch_size: usize,
    /// Most batches whose outputs may await delivery at once.
    pub max_in_flight_batches: usize,
    /// Event fields tried in order to key a decision, so order per entity holds.
    pub decision_key: Vec<EventField>,
    /// Extra librdkafka properties, passed through to consumer and producer.
    pub properties: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafka {
    brokers: Spanned<String>,
    group_id: Spanned<String>,
    input_topic: Spanned<String>,
    decisions_topic: Spanned<String>,
    dead_letter_topic: Spanned<String>,
    labels_topic: Option<Spanned<String>>,
    batch_size: Option<Spanned<i64>>,
    max_in_flight_batches: Option<Spanned<i64>>,
    decision_key: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

pub(super) fn validate(k: &RawKafka, p: &mut Diagnostics<'_>) -> KafkaConfig {
    for (value, key) in [
        (&k.brokers, "kafka.brokers"),
        (&k.group_id, "kafka.group_id"),
        (&k.input_topic, "kafka.input_topic"),
        (&k.decisions_topic, "kafka.decisions_topic"),
        (&k.dead_letter_topic, "kafka.dead_letter_topic"),
    ] {
        if value.get_ref().trim().is_empty() {
            p.on(value, key, "must not be empty");
        }
    }
    if let Some(t) = &k.labels_topic {
        if t.get_ref().trim().is_empty() {
            p.on(t, "kafka.labels_topic", "must not be empty");
        }
    }
    let topics: Vec<&Spanned<String>> =
        [&k.input_topic, &k.decisions_topic, &k.dead_letter_topic].into_iter().chain(k.labels_topic.as_ref()).collect();
    for (i, a) in topics.iter().enumerate() {
        for b in &topics[i + 1..] {
            if a.get_ref() == b.get_ref() {
                p.on(*b, "kafka", format!("topic `{}` is used for two roles", b.get_ref()));
            }
        }
    }
    let mut bounded = |v: &Option<Spanned<i64>>, key: &str, default: i64, max: i64| -> usize {
        match v {
            Some(s) if !(1..=max).contains(s.get_ref()) => {
                p.on(s, key, format!("must be between 1 and {max}"));
                default as usize
            }
            Some(s) => *s.get_ref() as usize,
            None => default as usize,
        }
    };
    let batch_size = bounded(&k.batch_size, "kafka.batch_size", 500, 10_000);
    let max_in_flight_batches = bounded(&k.max_in_flight_batches, "kafka.max_in_flight_batches", 4, 64);
    let decision_key = match &k.decision_key {
        Some(keys) => {
            let mut out = Vec::new();
            for name in keys.get_ref() {
                match EventField::parse(name) {
                    Some(f) if f.is_entity() || f == EventField::TransactionId => out.push(f),
                    _ => {
                        let known = EventField::ALL.iter().map(|f| f.name());
                        p.on(
                            keys,
                            "kafka.decision_key",
                            format!("`{name}` is not an entity field{}", crate::suggest::hint(name, known)),
                        );
                    }
                }
            }
            out
        }
        None => vec![EventField::CardId, EventField::AccountId, EventField::CustomerId],
    };
    KafkaConfig {
        brokers: k.brokers.get_ref().clone(),
        group_id: k.group_id.get_ref().clone(),
        input_topic: k.input_topic.get_ref().clone(),
        decisions_topic: k.decisions_topic.get_ref().clone(),
        dead_letter_topic: k.dead_letter_topic.get_ref().clone(),
        labels_topic: k.labels_topic.as_ref().map(|t| t.get_ref().clone()),
        batch_size,
        max_in_flight_batches,
        decision_key,
        properties: k.properties.clone(),
    }
}
