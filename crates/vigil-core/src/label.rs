//! The label contract: a confirmed outcome of an earlier transaction (a
//! chargeback, an analyst's verdict), as it arrives on the labels topic, through
//! `vigil label` or the HTTP API (see `docs/events.md`).
//!
//! A label names its transaction and carries the entity fields of that
//! transaction that label features count by (`terminal_id`, `card_id`...), so it
//! can be applied without looking the transaction up; [`Label::missing_for`]
//! tells which of them a pipeline needs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::event::{check_id, EventError, EventField, Fields};

/// What was confirmed about a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fraud,
    Genuine,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Fraud => "fraud",
            Verdict::Genuine => "genuine",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        [Verdict::Fraud, Verdict::Genuine].into_iter().find(|v| v.name() == s)
    }
}

/// A validated label.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub transaction_id: String,
    pub verdict: Verdict,
    /// When the outcome became known: label features count it from then on.
    pub reported_at: DateTime<Utc>,
    /// When the labelled transaction happened (its `timestamp`): label
    /// features with a delay count the fraud at that time.
    pub occurred_at: Option<DateTime<Utc>>,
    /// Where it came from (`chargeback`, `analyst`...), free text.
    pub source: Option<String>,
    /// Entity fields of the labelled transaction.
    pub fields: BTreeMap<EventField, String>,
}

impl Fields for Label {
    fn text(&self, field: EventField) -> Option<&str> {
        match field {
            EventField::TransactionId => Some(&self.transaction_id),
            f => self.fields.get(&f).map(String::as_str),
        }
    }
}

impl Label {
    /// Parses and validates one JSON-encoded label.
    pub fn from_json(bytes: &[u8]) -> Result<Label, EventError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| EventError { field: None, message: format!("{}: {e}", crate::event::MALFORMED_JSON) })?;
        let Value::Object(map) = value else {
            return Err(EventError { field: None, message: "a label must be a JSON object".into() });
        };
        Label::from_map(map)
    }

    fn from_map(map: Map<String, Value>) -> Result<Label, EventError> {
        let text = |key: &str, v: &Value| -> Result<String, EventError> {
            v.as_str().map(str::to_owned).ok_or_else(|| EventError::field(key, "must be a string"))
        };
        let (mut id, mut verdict, mut reported_at, mut source) = (None, None, None, None);
        let mut occurred_at = None;
        let time = |key: &str, v: &Value| -> Result<DateTime<Utc>, EventError> {
            let raw = text(key, v)?;
            let t = DateTime::parse_from_rfc3339(&raw)
                .map_err(|e| EventError::field(key, format!("`{raw}` is not RFC 3339 ({e})")))?;
            Ok(t.with_timezone(&Utc))
        };
        let mut fields = BTreeMap::new();
        for (key, v) in &map {
            match key.as_str() {
                "transaction_id" => id = Some(text(key, v)?),
                "label" => {
                    let given = text(key, v)?;
                    verdict =
                        Some(Verdict::parse(&given).ok_or_else(|| {
                            EventError::field(key, format!("`{given}` is neither `fraud` nor `genuine`"))
                        })?)
                }
                "reported_at" => reported_at = Some(time(key, v)?),
                "timestamp" => occurred_at = Some(time(key, v)?),
                "source" => source = Some(text(key, v)?),
                other => match EventField::parse(other).filter(|f| f.is_entity()) {
                    Some(f) => {
                        let value = text(key, v)?;
                        check_id(key, &value)?;
                        fields.insert(f, value);
                    }
                    None => {
                        let known = ["transaction_id", "label", "reported_at", "timestamp", "source"]
                            .into_iter()
                            .chain(EventField::ALL.iter().filter(|f| f.is_entity()).map(|f| f.name()));
                        return Err(EventError::field(
                            other,
                            format!("unknown label field{}", crate::suggest::hint(other, known)),
                        ));
                    }
                },
            }
        }
        let transaction_id = id.ok_or_else(|| EventError::field("transaction_id", "is required"))?;
        check_id("transaction_id", &transaction_id)?;
        Ok(Label {
            transaction_id,
            verdict: verdict.ok_or_else(|| EventError::field("label", "is required (`fraud` or `genuine`)"))?,
            reported_at: reported_at.ok_or_else(|| EventError::field("reported_at", "is required"))?,
            occurred_at,
            source,
            fields,
        })
    }

    /// Serialises the label to its JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        let mut map = Map::new();
        map.insert("transaction_id".into(), self.transaction_id.clone().into());
        map.insert("label".into(), self.verdict.name().into());
        map.insert("reported_at".into(), self.reported_at.to_rfc3339().into());
        if let Some(t) = &self.occurred_at {
            map.insert("timestamp".into(), t.to_rfc3339().into());
        }
        if let Some(s) = &self.source {
            map.insert("source".into(), s.clone().into());
        }
        for (f, v) in &self.fields {
            map.insert(f.name().into(), v.clone().into());
        }
        serde_json::to_vec(&Value::Object(map)).unwrap_or_default()
    }

    /// The label of `event`, carrying all of its entity fields.
    pub fn for_event(
        event: &crate::Event,
        verdict: Verdict,
        reported_at: DateTime<Utc>,
        source: Option<&str>,
    ) -> Label {
        let fields = EventField::ALL
            .into_iter()
            .filter(|f| f.is_entity())
            .filter_map(|f| event.text(f).map(|v| (f, v.to_owned())))
            .collect();
        Label {
            transaction_id: event.transaction_id.clone(),
            verdict,
            reported_at,
            occurred_at: Some(event.timestamp),
            source: source.map(str::to_owned),
            fields,
        }
    }

    /// Seconds since the epoch at which the outcome became known.
    pub fn unix_s(&self) -> i64 {
        self.reported_at.timestamp()
    }

    /// Checks that a fraud label carries every entity field the pipeline's
    /// label features (`features`) count by; the first one missing is the error.
    pub fn missing_for(&self, features: &[crate::FeatureDef]) -> Result<(), EventError> {
        if self.verdict == Verdict::Genuine {
            return Ok(());
        }
        for d in features.iter().filter(|d| d.aggregate.is_label()) {
            if let Some(f) = d.entity.fields().iter().find(|f| !self.fields.contains_key(f)) {
                let message = format!("is required: label feature `{}` counts frauds by it", d.name);
                return Err(EventError::field(f.name(), message));
            }
            if d.delay_s > 0 && self.occurred_at.is_none() {
                let message = format!(
                    "is required (the labelled transaction's time): label feature `{}` has a delay, so it counts frauds by when they happened",
                    d.name
                );
                return Err(EventError::field("timestamp", message));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_with_their_entity_fields() {
        let l = Label::from_json(
            br#"{"transaction_id":"t1","label":"fraud","reported_at":"2026-01-09T00:00:00Z","terminal_id":"T7","source":"chargeback"}"#,
        )
        .unwrap();
        assert_eq!(l.verdict, Verdict::Fraud);
        assert_eq!(l.text(EventField::TerminalId), Some("T7"));
        assert_eq!(Label::from_json(&l.to_json()).unwrap(), l);
        let card = crate::EntityKey::parse("card_id").unwrap();
        let needed = [crate::FeatureDef::new("card_frauds_30d", card, crate::Aggregate::FraudCount, 30 * 86_400)];
        let e = l.missing_for(&needed).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("card_id"));
        assert!(e.message.contains("card_frauds_30d"), "{e}");
        let terminal = crate::EntityKey::parse("terminal_id").unwrap();
        let matured = crate::FeatureDef {
            delay_s: 7 * 86_400,
            ..crate::FeatureDef::new("terminal_frauds_7d", terminal, crate::Aggregate::FraudRate, 7 * 86_400)
        };
        let e = l.missing_for(std::slice::from_ref(&matured)).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("timestamp"), "{e}");
        let dated = Label::from_json(
            br#"{"transaction_id":"t1","label":"fraud","reported_at":"2026-01-09T00:00:00Z","timestamp":"2026-01-02T10:00:00Z","terminal_id":"T7"}"#,
        )
        .unwrap();
        assert!(dated.missing_for(&[matured]).is_ok());
        assert_eq!(Label::from_json(&dated.to_json()).unwrap(), dated);
    }

    #[test]
    fn bad_labels_name_the_field() {
        let cases = [
            (r#"{"label":"fraud","reported_at":"2026-01-09T00:00:00Z"}"#, "transaction_id"),
            (r#"{"transaction_id":"t","label":"maybe","reported_at":"2026-01-09T00:00:00Z"}"#, "label"),
            (r#"{"transaction_id":"t","label":"fraud","reported_at":"yesterday"}"#, "reported_at"),
            (
                r#"{"transaction_id":"t","label":"fraud","reported_at":"2026-01-09T00:00:00Z","termnal_id":"x"}"#,
                "termnal_id",
            ),
            (r#"{"transaction_id":"t","label":"fraud","reported_at":"2026-01-09T00:00:00Z","card_id":7}"#, "card_id"),
        ];
        for (json, field) in cases {
            let e = Label::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{json}: {e}");
        }
        let e = Label::from_json(
            br#"{"transaction_id":"t","label":"fraud","reported_at":"2026-01-09T00:00:00Z","termnal_id":"x"}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("terminal_id"), "a hint: {e}");
    }
}
