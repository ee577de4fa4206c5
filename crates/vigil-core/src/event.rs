//! The transaction event contract (see `docs/events.md`).
//!
//! Events arrive as JSON objects. [`Event::from_json`] parses and validates one in a
//! single pass and returns an [`EventError`] that names the field and the reason, so
//! a malformed event can be dead-lettered with something a person can act on.

use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::currency::is_iso4217;

/// Longest accepted identifier (transaction and entity ids), in bytes.
pub const MAX_ID_LEN: usize = 256;

/// A validated transaction event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per payment; the idempotency key of every side effect.
    pub transaction_id: String,
    pub timestamp: DateTime<Utc>,
    /// Exact amount in `currency` units; never negative.
    pub amount: Decimal,
    /// ISO 4217 alphabetic code.
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// ISO 18245 merchant category code, four digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcc: Option<String>,
    /// ISO 3166-1 alpha-2 country of the transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
}

/// Why an event was refused, and which field is at fault when one is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", match .field { Some(f) => format!("field `{f}`: {}", .message), None => .message.clone() })]
pub struct EventError {
    pub field: Option<String>,
    pub message: String,
}

impl EventError {
    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Self { field: Some(field.to_owned()), message: message.into() }
    }

    /// Why, in one of a few words fit for a metric label: `malformed_json`
    /// (not JSON at all), `invalid_field` (one field is wrong or unknown) or
    /// `invalid` (the rest: a missing field, a wrong shape).
    pub fn kind(&self) -> &'static str {
        if self.message.starts_with(MALFORMED_JSON) {
            "malformed_json"
        } else if self.field.is_some() {
            "invalid_field"
        } else {
            "invalid"
        }
    }

    /// The field at fault when it is one an event or a label defines: a field
    /// name a sender made up is not returned, so that a metric labelled by it
    /// stays bounded.
    pub fn known_field(&self) -> Option<&'static str> {
        let f = self.field.as_deref()?;
        EventField::parse(f)
            .map(EventField::name)
            .or_else(|| ["attributes", "label", "reported_at", "source"].into_iter().find(|k| *k == f))
    }
}

/// How the message of an event or label that is not JSON begins.
pub(crate) const MALFORMED_JSON: &str = "malformed JSON";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent<'a> {
    transaction_id: String,
    timestamp: String,
    #[serde(borrow)]
    amount: &'a RawValue,
    currency: String,
    card_id: Option<String>,
    account_id: Option<String>,
    customer_id: Option<String>,
    merchant_id: Option<String>,
    terminal_id: Option<String>,
    device_id: Option<String>,
    mcc: Option<String>,
    country: Option<String>,
    ip: Option<String>,
    channel: Option<String>,
    #[serde(default)]
    attributes: Option<Map<String, Value>>,
}

impl Event {
    /// Parses and validates one JSON-encoded event.
    pub fn from_json(bytes: &[u8]) -> Result<Event, EventError> {
        let raw: RawEvent<'_> = serde_json::from_slice(bytes).map_err(|e| {
            let message = match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    format!("{MALFORMED_JSON}: {e}")
                }
                _ => format!("invalid event: {e}"),
            };
            EventError { field: None, message }
        })?;
        raw.validate()
    }

    /// Serialises the event back to its canonical JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A hash of the event's content, the same in every process, version and
    /// platform: how a retry (same id, same content) is told from a reused
    /// transaction id (same id, other content). Amounts compare by value (`12.5`
    /// is `12.50`), attributes by their JSON text, key by key.
    pub fn fingerprint(&self) -> u64 {
        let mut h = crate::StableHasher::default();
        h.part(self.transaction_id.as_bytes());
        h.part(&self.timestamp.timestamp().to_le_bytes());
        h.part(&self.timestamp.timestamp_subsec_nanos().to_le_bytes());
        h.part(&self.amount.normalize().serialize());
        h.part(self.currency.as_bytes());
        for field in [
            &self.card_id,
            &self.account_id,
            &self.customer_id,
            &self.merchant_id,
            &self.terminal_id,
            &self.device_id,
            &self.mcc,
            &self.country,
            &self.ip,
            &self.channel,
        ] {
            match field {
                Some(v) => h.part(v.as_bytes()),
                None => h.write(&u64::MAX.to_le_bytes()),
            }
        }
        let mut keys: Vec<&String> = self.attributes.keys().collect();
        keys.sort();
        for k in keys {
            h.part(k.as_bytes());
            h.part(self.attributes[k].to_string().as_bytes());
        }
        h.finish()
    }

    /// The event time in whole seconds since the Unix epoch.
    pub fn unix_s(&self) -> i64 {
        self.timestamp.timestamp()
    }

    /// The text of a string-valued field, if present.
    pub fn text(&self, field: EventField) -> Option<&str> {
        match field {
            EventField::TransactionId => Some(&self.transaction_id),
            EventField::Currency => Some(&self.currency),
            EventField::CardId => self.card_id.as_deref(),
            EventField::AccountId => self.account_id.as_deref(),
            EventField::CustomerId => self.customer_id.as_deref(),
            EventField::MerchantId => self.merchant_id.as_deref(),
            EventField::TerminalId => self.terminal_id.as_deref(),
            EventField::DeviceId => self.device_id.as_deref(),
            EventField::Mcc => self.mcc.as_deref(),
            EventField::Country => self.country.as_deref(),
            EventField::Ip => self.ip.as_deref(),
            EventField::Channel => self.channel.as_deref(),
            EventField::Timestamp | EventField::Amount => None,
        }
    }
}

pub(crate) fn check_id(field: &str, value: &str) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(EventError::field(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(EventError::field(field, format!("longer than {MAX_ID_LEN} bytes")));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(EventError::field(field, "contains control characters"));
    }
    Ok(())
}

fn check_opt_id(field: &str, value: &Option<String>) -> Result<(), EventError> {
    match value {
        Some(v) => check_id(field, v),
        None => Ok(()),
    }
}

/// Parses an amount given as a JSON number or a decimal string, exactly.
pub fn parse_amount(raw: &str) -> Result<Decimal, String> {
    let text = raw.trim();
    let text = if text.starts_with('"') {
        serde_json::from_str::<String>(text).map_err(|e| e.to_string())?
    } else {
        text.to_owned()
    };
    if text.is_empty() {
        return Err("must be a decimal number".into());
    }
    let parsed =
        if text.contains(['e', 'E']) { Decimal::from_scientific(&text) } else { Decimal::from_str_exact(&text) };
    parsed.map_err(|_| format!("`{text}` is not a decimal number (at most 28 significant digits)"))
}

impl RawEvent<'_> {
    fn validate(self) -> Result<Event, EventError> {
        check_id("transaction_id", &self.transaction_id)?;
        let timestamp = DateTime::parse_from_rfc3339(&self.timestamp)
            .map_err(|e| EventError::field("timestamp", format!("`{}` is not RFC 3339 ({e})", self.timestamp)))?
            .with_timezone(&Utc);
        let amount = parse_amount(self.amount.get()).map_err(|m| EventError::field("amount", m))?;
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(EventError::field("amount", "must not be negative"));
        }
        if !is_iso4217(&self.currency) {
            let c = &self.currency;
            let message = if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
                format!("`{c}` is not a currency of ISO 4217 (such as EUR, USD or GBP)")
            } else {
                format!("`{c}` is not an ISO 4217 code (three upper-case letters, such as EUR)")
            };
            return Err(EventError::field("currency", message));
        }
        check_opt_id("card_id", &self.card_id)?;
        check_opt_id("account_id", &self.account_id)?;
        check_opt_id("customer_id", &self.customer_id)?;
        check_opt_id("merchant_id", &self.merchant_id)?;
        check_opt_id("terminal_id", &self.terminal_id)?;
        check_opt_id("device_id", &self.device_id)?;
        check_opt_id("channel", &self.channel)?;
        if let Some(mcc) = &self.mcc {
            if mcc.len() != 4 || !mcc.bytes().all(|b| b.is_ascii_digit()) {
                return Err(EventError::field("mcc", format!("`{mcc}` is not a four-digit merchant category code")));
            }
        }
        if let Some(country) = &self.country {
            if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(EventError::field(
                    "country",
                    format!("`{country}` is not an ISO 3166-1 alpha-2 code (two upper-case letters)"),
                ));
            }
        }
        let ip = match self.ip {
            Some(ip) => Some(
                IpAddr::from_str(&ip)
                    .map_err(|_| EventError::field("ip", format!("`{ip}` is not an IP address")))?
                    .to_string(),
            ),
            None => None,
        };
        Ok(Event {
            transaction_id: self.transaction_id,
            timestamp,
            amount,
            currency: self.currency,
            card_id: self.card_id,
            account_id: self.account_id,
            customer_id: self.customer_id,
            merchant_id: self.merchant_id,
            terminal_id: self.terminal_id,
            device_id: self.device_id,
            mcc: self.mcc,
            country: self.country,
            ip,
            channel: self.channel,
            attributes: self.attributes.unwrap_or_default(),
        })
    }
}

/// Anything that carries entity fields: events, and labels of earlier events.
pub trait Fields {
    fn text(&self, field: EventField) -> Option<&str>;
}

impl Fields for Event {
    fn text(&self, field: EventField) -> Option<&str> {
        Event::text(self, field)
    }
}

/// The named fields of an event, as rules and feature keys refer to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventField {
    TransactionId,
    Timestamp,
    Amount,
    Currency,
    CardId,
    AccountId,
    CustomerId,
    MerchantId,
    TerminalId,
    DeviceId,
    Mcc,
    Country,
    Ip,
    Channel,
}

impl EventField {
    pub const ALL: [EventField; 14] = [
        EventField::TransactionId,
        EventField::Timestamp,
        EventField::Amount,
        EventField::Currency,
        EventField::CardId,
        EventField::AccountId,
        EventField::CustomerId,
        EventField::MerchantId,
        EventField::TerminalId,
        EventField::DeviceId,
        EventField::Mcc,
        EventField::Country,
        EventField::Ip,
        EventField::Channel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventField::TransactionId => "transaction_id",
            EventField::Timestamp => "timestamp",
            EventField::Amount => "amount",
            EventField::Currency => "currency",
            EventField::CardId => "card_id",
            EventField::AccountId => "account_id",
            EventField::CustomerId => "customer_id",
            EventField::MerchantId => "merchant_id",
            EventField::TerminalId => "terminal_id",
            EventField::DeviceId => "device_id",
            EventField::Mcc => "mcc",
            EventField::Country => "country",
            EventField::Ip => "ip",
            EventField::Channel => "channel",
        }
    }

    pub fn parse(name: &str) -> Option<EventField> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Fields that identify an entity and so may key a feature.
    pub fn is_entity(self) -> bool {
        !matches!(self, EventField::TransactionId | EventField::Timestamp | EventField::Amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> Event {
        Event::from_json(json.as_bytes()).unwrap()
    }

    fn err(json: &str) -> EventError {
        Event::from_json(json.as_bytes()).unwrap_err()
    }

    const BASE: &str = r#""transaction_id":"t1","timestamp":"2026-01-02T03:04:05+01:00","currency":"EUR""#;

    #[test]
    fn a_refusal_has_a_bounded_kind_and_names_only_known_fields() {
        let not_json = err("{not json");
        assert_eq!((not_json.kind(), not_json.known_field()), ("malformed_json", None));
        let missing = err(&format!("{{{BASE}}}"));
        assert_eq!((missing.kind(), missing.known_field()), ("invalid", None), "{missing}");
        let bad = err(&format!(r#"{{{BASE},"amount":"twelve"}}"#));
        assert_eq!((bad.kind(), bad.known_field()), ("invalid_field", Some("amount")), "{bad}");
        let label =
            crate::Label::from_json(br#"{"transaction_id":"t","label":"fraud","reported_at":"x"}"#).unwrap_err();
        assert_eq!((label.kind(), label.known_field()), ("invalid_field", Some("reported_at")), "{label}");
        let made_up = crate::Label::from_json(br#"{"transaction_id":"t","label":"fraud","colour":"red"}"#).unwrap_err();
        assert_eq!((made_up.kind(), made_up.known_field()), ("invalid_field", None), "{made_up}");
        let label_json = crate::Label::from_json(b"[").unwrap_err();
        assert_eq!(label_json.kind(), "malformed_json");
    }

    #[test]
    fn fingerprint_follows_content_not_formatting() {
        let a = ok(&format!(r#"{{{BASE},"amount":"12.5","card_id":"c1","attributes":{{"x":1,"y":"z"}}}}"#));
        let same =
            ok(&format!(r#"{{ "attributes": {{"y":"z", "x":1}}, "card_id": "c1", "amount": "12.50", {BASE} }}"#));
        assert_eq!(a.fingerprint(), same.fingerprint());
        for other in [
            format!(r#"{{{BASE},"amount":"12.51","card_id":"c1","attributes":{{"x":1,"y":"z"}}}}"#),
            format!(r#"{{{BASE},"amount":"12.5","card_id":"c2","attributes":{{"x":1,"y":"z"}}}}"#),
            format!(r#"{{{BASE},"amount":"12.5","customer_id":"c1","attributes":{{"x":1,"y":"z"}}}}"#),
            format!(r#"{{{BASE},"amount":"12.5","card_id":"c1","attributes":{{"x":2,"y":"z"}}}}"#),
            format!(r#"{{{BASE},"amount":"12.5","card_id":"c1"}}"#),
        ] {
            assert_ne!(a.fingerprint(), ok(&other).fingerprint(), "{other}");
        }
    }

    #[test]
    fn amount_is_exact_from_number_or_string() {
        let e = ok(&format!(r#"{{{BASE},"amount":0.1}}"#));
        assert_eq!(e.amount, Decimal::new(1, 1));
        let e = ok(&format!(r#"{{{BASE},"amount":"12345678901234567890.12"}}"#));
        assert_eq!(e.amount.to_string(), "12345678901234567890.12");
        let e = ok(&format!(r#"{{{BASE},"amount":1.5e2}}"#));
        assert_eq!(e.amount, Decimal::new(150, 0));
        assert_eq!(e.timestamp.to_rfc3339(), "2026-01-02T02:04:05+00:00");
    }

    #[test]
    fn every_invalid_field_is_named() {
        let cases = [
            (format!(r#"{{{BASE},"amount":-1}}"#), Some("amount")),
            (format!(r#"{{{BASE},"amount":"abc"}}"#), Some("amount")),
            (format!(r#"{{{BASE},"amount":true}}"#), Some("amount")),
            (format!(r#"{{{BASE},"amount":1,"mcc":"54"}}"#), Some("mcc")),
            (format!(r#"{{{BASE},"amount":1,"country":"fra"}}"#), Some("country")),
            (format!(r#"{{{BASE},"amount":1,"ip":"300.1.1.1"}}"#), Some("ip")),
            (format!(r#"{{{BASE},"amount":1,"card_id":""}}"#), Some("card_id")),
            (
                r#"{"transaction_id":"t","timestamp":"yesterday","amount":1,"currency":"EUR"}"#.to_owned(),
                Some("timestamp"),
            ),
            (
                r#"{"transaction_id":"t","timestamp":"2026-01-01T00:00:00Z","amount":1,"currency":"EURO"}"#.to_owned(),
                Some("currency"),
            ),
        ];
        for (json, field) in cases {
            assert_eq!(err(&json).field.as_deref(), field, "{json}");
        }
    }

    #[test]
    fn a_currency_is_refused_for_what_is_wrong_with_it() {
        let with = |c: &str| {
            format!(r#"{{"transaction_id":"t","timestamp":"2026-01-01T00:00:00Z","amount":1,"currency":"{c}"}}"#)
        };
        assert_eq!(err(&with("XYZ")).message, "`XYZ` is not a currency of ISO 4217 (such as EUR, USD or GBP)");
        assert_eq!(err(&with("eur")).message, "`eur` is not an ISO 4217 code (three upper-case letters, such as EUR)");
    }

    #[test]
    fn structural_errors_say_why() {
        assert!(err("{not json").message.starts_with("malformed JSON"));
        let e = err(r#"{"timestamp":"2026-01-01T00:00:00Z","amount":1,"currency":"EUR"}"#);
        assert!(e.message.contains("missing field `transaction_id`"), "{e}");
        let e = err(&format!(r#"{{{BASE},"amount":1,"ammount":2}}"#));
        assert!(e.message.contains("unknown field `ammount`"), "{e}");
    }

    #[test]
    fn round_trips_through_json() {
        let e = ok(&format!(
            r#"{{{BASE},"amount":"10.50","card_id":"c1","ip":"::1","attributes":{{"email_domain":"x.org"}}}}"#
        ));
        let back = Event::from_json(&e.to_json()).unwrap();
        assert_eq!(e, back);
        assert_eq!(back.text(EventField::CardId), Some("c1"));
    }
}
