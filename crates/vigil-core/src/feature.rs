//! Feature definitions and values shared by the feature store, rules and model.

use std::fmt;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::event::{EventField, Fields};

/// The entity a feature aggregates over: one event field or a combination such as
/// `card_id+merchant_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey {
    fields: Vec<EventField>,
}

impl EntityKey {
    /// Parses `card_id` or `card_id+merchant_id`.
    pub fn parse(text: &str) -> Result<EntityKey, String> {
        let mut fields = Vec::new();
        for part in text.split('+') {
            let part = part.trim();
            let field = EventField::parse(part).ok_or_else(|| {
                let known = EventField::ALL.iter().filter(|f| f.is_entity()).map(|f| f.name());
                format!("unknown entity field `{part}`{}", crate::suggest::hint(part, known))
            })?;
            if !field.is_entity() {
                return Err(format!("`{part}` cannot key a feature"));
            }
            if fields.contains(&field) {
                return Err(format!("`{part}` appears twice"));
            }
            fields.push(field);
        }
        Ok(EntityKey { fields })
    }

    /// The key of no field: event-time features' (they touch no record).
    pub fn none() -> EntityKey {
        EntityKey { fields: Vec::new() }
    }

    /// The key of one field alone.
    pub fn of(field: EventField) -> EntityKey {
        EntityKey { fields: vec![field] }
    }

    pub fn fields(&self) -> &[EventField] {
        &self.fields
    }

    /// The entity's identity for `event`, or `None` when a key field is absent.
    pub fn value_of(&self, event: &impl Fields) -> Option<String> {
        let mut out = String::new();
        EntityKey::push_values(&self.fields, event, &mut out)?;
        Some(out)
    }

    /// Appends the values of `fields` in `item` to `out`, joined as an
    /// entity's identity joins them (a unit separator between values);
    /// `None`, with `out` partly written, when one is absent.
    pub fn push_values(fields: &[EventField], item: &impl Fields, out: &mut String) -> Option<()> {
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push('\u{1f}');
            }
            out.push_str(item.text(*f)?);
        }
        Some(())
    }
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            f.write_str(field.name())?;
        }
        Ok(())
    }
}

/// How a feature aggregates the entity's earlier events (those before the event
/// being decided, within the window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// Number of earlier events.
    Count,
    /// Sum of earlier amounts (money).
    SumAmount,
    /// Mean of earlier amounts (money); missing when there are none.
    MeanAmount,
    /// Smallest earlier amount; missing when there are none.
    MinAmount,
    /// Largest earlier amount; missing when there are none.
    MaxAmount,
    /// Population standard deviation of earlier amounts; missing when there are none.
    StdAmount,
    /// This event's amount over the mean of earlier amounts (a plain number);
    /// missing when there are none or their mean is zero.
    AmountOverMean,
    /// Seconds since the entity's previous event, if it is within the window.
    TimeSinceLast,
    /// Amount of the entity's previous event, if it is within the window.
    PreviousAmount,
    /// The value of another field (`of`) in the entity's previous event, as
    /// text, if that event is within the window and had the field.
    Previous,
    /// Number of distinct values of another field (`of`) among earlier events.
    Distinct,
    /// 1 when another field (`of`) differs from its value in the entity's
    /// previous event, 0 when it is the same; missing without a previous event
    /// in the window, or when either event lacks the field.
    Changed,
    /// Confirmed frauds among the entity's transactions whose labels were
    /// reported within the window before the event (label features).
    FraudCount,
    /// `fraud_count` over the entity's number of events in the same window (a
    /// plain number); missing when there were none.
    FraudRate,
    /// The event's hour of day, 0 to 23, in the feature's time zone (event
    /// time features read the event alone: no entity, no window).
    HourOfDay,
    /// The event's day of the week, 1 (Monday) to 7 (Sunday), in the
    /// feature's time zone.
    DayOfWeek,
    /// 1 on a Saturday or a Sunday in the feature's time zone, else 0.
    Weekend,
    /// 1 from midnight to 6 a.m. (hours 0 to 5) in the feature's time zone, else 0.
    Night,
}

/// The kind of value an aggregate gives, as rules and models see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Count,
    Money,
    Number,
    Seconds,
    /// A field's value: rules compare it with text; models do not take it.
    Text,
}

impl Aggregate {
    pub const ALL: [Aggregate; 18] = [
        Aggregate::Count,
        Aggregate::SumAmount,
        Aggregate::MeanAmount,
        Aggregate::MinAmount,
        Aggregate::MaxAmount,
        Aggregate::StdAmount,
        Aggregate::AmountOverMean,
        Aggregate::TimeSinceLast,
        Aggregate::PreviousAmount,
        Aggregate::Previous,
        Aggregate::Distinct,
        Aggregate::Changed,
        Aggregate::FraudCount,
        Aggregate::FraudRate,
        Aggregate::HourOfDay,
        Aggregate::DayOfWeek,
        Aggregate::Weekend,
        Aggregate::Night,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::SumAmount => "sum_amount",
            Aggregate::MeanAmount => "mean_amount",
            Aggregate::MinAmount => "min_amount",
            Aggregate::MaxAmount => "max_amount",
            Aggregate::StdAmount => "std_amount",
            Aggregate::AmountOverMean => "amount_over_mean",
            Aggregate::TimeSinceLast => "time_since_last",
            Aggregate::PreviousAmount => "previous_amount",
            Aggregate::Previous => "previous",
            Aggregate::Distinct => "distinct",
            Aggregate::Changed => "changed",
            Aggregate::FraudCount => "fraud_count",
            Aggregate::FraudRate => "fraud_rate",
            Aggregate::HourOfDay => "hour_of_day",
            Aggregate::DayOfWeek => "day_of_week",
            Aggregate::Weekend => "weekend",
            Aggregate::Night => "night",
        }
    }

    pub fn parse(s: &str) -> Option<Aggregate> {
        Self::ALL.into_iter().find(|a| a.name() == s)
    }

    pub fn kind(self) -> ValueKind {
        match self {
            Aggregate::Count
            | Aggregate::Distinct
            | Aggregate::Changed
            | Aggregate::FraudCount
            | Aggregate::HourOfDay
            | Aggregate::DayOfWeek
            | Aggregate::Weekend
            | Aggregate::Night => ValueKind::Count,
            Aggregate::SumAmount
            | Aggregate::MeanAmount
            | Aggregate::MinAmount
            | Aggregate::MaxAmount
            | Aggregate::StdAmount
            | Aggregate::PreviousAmount => ValueKind::Money,
            Aggregate::AmountOverMean | Aggregate::FraudRate => ValueKind::Number,
            Aggregate::TimeSinceLast => ValueKind::Seconds,
            Aggregate::Previous => ValueKind::Text,
        }
    }

    /// Whether the aggregate needs per-bucket amount statistics (sum of squares,
    /// minimum, maximum) beyond count and sum.
    pub fn needs_amount_stats(self) -> bool {
        matches!(self, Aggregate::MinAmount | Aggregate::MaxAmount | Aggregate::StdAmount)
    }

    /// Whether the aggregate reads another field, named by `of`.
    pub fn takes_field(self) -> bool {
        matches!(self, Aggregate::Distinct | Aggregate::Changed | Aggregate::Previous)
    }

    /// Whether the aggregate counts labels (confirmed outcomes) rather than events.
    pub fn is_label(self) -> bool {
        matches!(self, Aggregate::FraudCount | Aggregate::FraudRate)
    }

    /// Whether the aggregate reads the event's own time alone (no entity, no
    /// window, nothing stored).
    pub fn is_event_time(self) -> bool {
        matches!(self, Aggregate::HourOfDay | Aggregate::DayOfWeek | Aggregate::Weekend | Aggregate::Night)
    }

    /// Whether a `delay` (a matured window) applies: the aggregates read from
    /// window rings, events' and frauds'.
    pub fn takes_delay(self) -> bool {
        matches!(
            self,
            Aggregate::Count
                | Aggregate::SumAmount
                | Aggregate::MeanAmount
                | Aggregate::MinAmount
                | Aggregate::MaxAmount
                | Aggregate::StdAmount
                | Aggregate::AmountOverMean
                | Aggregate::FraudCount
                | Aggregate::FraudRate
        )
    }
}

/// A declared feature: `aggregate` of the `entity`'s events over the last
/// `window_s`, or, with a `delay_s`, over `(t - delay - window, t - delay]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureDef {
    pub name: String,
    /// No fields for event-time features ([`Aggregate::is_event_time`]).
    pub entity: EntityKey,
    pub aggregate: Aggregate,
    /// 0 for event-time features.
    pub window_s: u64,
    /// The field whose distinct values `distinct` counts, whose change
    /// `changed` tells, or whose earlier value `previous` gives.
    pub of: Option<EventField>,
    /// How far back the window ends (a matured window), 0 for none. Label
    /// features with a delay count frauds by the time of the transaction,
    /// among the transactions the window covers, as reported by the event's time.
    pub delay_s: u64,
    /// The zone event-time features read the event's time in.
    pub time_zone: chrono_tz::Tz,
}

impl FeatureDef {
    /// A feature with no delay, read in UTC.
    pub fn new(name: &str, entity: EntityKey, aggregate: Aggregate, window_s: u64) -> FeatureDef {
        FeatureDef {
            name: name.to_owned(),
            entity,
            aggregate,
            window_s,
            of: None,
            delay_s: 0,
            time_zone: chrono_tz::Tz::UTC,
        }
    }
}

/// A feature's value. Counts are integers, money is an exact decimal, plain
/// numbers (ratios) are decimals, times are whole seconds, and `previous`
/// gives a field's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FeatureValue {
    Count(i64),
    Money(Decimal),
    Number(Decimal),
    Seconds(i64),
    /// In JSON a string, as money is: read back, a text that spells a
    /// decimal number comes back as money.
    Text(String),
    /// No value: the entity key was absent from the event, or the aggregate has
    /// nothing to aggregate (no earlier event in the window).
    Missing,
}

impl FeatureValue {
    /// The value as a model input (floats appear only as model features);
    /// text is not one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FeatureValue::Count(c) | FeatureValue::Seconds(c) => Some(*c as f64),
            FeatureValue::Money(m) | FeatureValue::Number(m) => m.to_f64(),
            FeatureValue::Text(_) | FeatureValue::Missing => None,
        }
    }
}

/// Feature values for one event, in the order of the pipeline's feature definitions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FeatureVector {
    pub values: Vec<FeatureValue>,
    /// True when the event had been processed before and these are the stored values.
    #[serde(default)]
    pub replayed: bool,
    /// [`Event::fingerprint`](crate::Event::fingerprint) of the event these
    /// features were first computed for (0 when not known): a replayed vector
    /// whose fingerprint is not the event's tells of a reused transaction id.
    #[serde(default)]
    pub fingerprint: u64,
}

/// Parses a duration such as `90s`, `10m`, `24h`, `30d` or `2w` into seconds.
pub fn parse_duration_s(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a duration (such as 90s, 10m, 24h, 30d)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("`{text}` has unknown unit `{unit}` (use s, m, h, d or w)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_s("10m"), Ok(600));
        assert_eq!(parse_duration_s("24h"), Ok(86_400));
        assert_eq!(parse_duration_s("30d"), Ok(2_592_000));
        assert!(parse_duration_s("10").is_err());
        assert!(parse_duration_s("m").is_err());
        assert!(parse_duration_s("5y").is_err());
    }

    #[test]
    fn entity_keys() {
        let k = EntityKey::parse("card_id+merchant_id").unwrap();
        assert_eq!(k.to_string(), "card_id+merchant_id");
        assert!(EntityKey::parse("amount").is_err());
        let e = EntityKey::parse("card").unwrap_err();
        assert!(e.contains("did you mean `card_id`"), "{e}");
    }

    #[test]
    fn values_serialise_exactly() {
        let v = vec![FeatureValue::Count(3), FeatureValue::Money(Decimal::new(1050, 2)), FeatureValue::Missing];
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"[3,"10.50",null]"#);
        let back: Vec<FeatureValue> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
    }
}
