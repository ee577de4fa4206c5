//! Aggregate semantics: one feature's value for an event, from its entity's
//! state as of before the event.

use chrono::{Datelike, Timelike};
use rust_decimal::{Decimal, MathematicalOps};
use vigil_core::feature::Aggregate;
use vigil_core::{Event, FeatureValue};

use crate::plan::Output;
use crate::state::{field_hash, EntityState, Window};

/// One feature's value for an event at `t`, from its entity's state before it.
/// `read` keeps this event's read of the feature's ring, for the other features
/// on the same ring.
pub(crate) fn value(o: &Output, state: &EntityState, ev: &Event, t: i64, read: &mut Option<Window>) -> FeatureValue {
    let money = |d: Option<Decimal>| d.map_or(FeatureValue::Missing, FeatureValue::Money);
    match o.aggregate {
        Aggregate::TimeSinceLast | Aggregate::PreviousAmount | Aggregate::Changed | Aggregate::Previous => {
            let Some(i) = state.previous(t) else { return FeatureValue::Missing };
            let previous = &state.recent[i];
            let pt = previous.t;
            if t - pt > o.window_s as i64 {
                return FeatureValue::Missing;
            }
            match o.aggregate {
                Aggregate::TimeSinceLast => FeatureValue::Seconds(t - pt),
                Aggregate::PreviousAmount => FeatureValue::Money(Decimal::deserialize(previous.amount)),
                Aggregate::Previous => match previous.texts.get(o.slot) {
                    Some(Some(text)) => FeatureValue::Text(text.clone()),
                    _ => FeatureValue::Missing,
                },
                _ => {
                    let before = previous.fields.get(o.slot).copied().unwrap_or(0);
                    let now = o.of.map_or(0, |f| field_hash(ev, f));
                    match (before, now) {
                        (0, _) | (_, 0) => FeatureValue::Missing,
                        (b, n) => FeatureValue::Count(i64::from(b != n)),
                    }
                }
            }
        }
        Aggregate::Distinct => FeatureValue::Count(state.distinct[o.slot].count(t)),
        Aggregate::FraudCount => FeatureValue::Count(state.frauds[o.frauds].read(t, o.delay_s).count),
        Aggregate::FraudRate => {
            let frauds = state.frauds[o.frauds].read(t, o.delay_s).count;
            let w = *read.get_or_insert_with(|| state.rings[o.slot].read(t, o.delay_s));
            match w.count {
                0 => FeatureValue::Missing,
                n => Decimal::from(frauds)
                    .checked_div(Decimal::from(n))
                    .map_or(FeatureValue::Missing, FeatureValue::Number),
            }
        }
        Aggregate::HourOfDay | Aggregate::DayOfWeek | Aggregate::Weekend | Aggregate::Night => event_time(o, ev),
        _ => {
            let w = *read.get_or_insert_with(|| state.rings[o.slot].read(t, o.delay_s));
            let mean = (w.count > 0).then(|| w.sum.checked_div(Decimal::from(w.count))).flatten();
            match o.aggregate {
                Aggregate::Count => FeatureValue::Count(w.count),
                Aggregate::SumAmount => FeatureValue::Money(w.sum),
                Aggregate::MeanAmount => money(mean),
                Aggregate::MinAmount => money(w.stats.filter(|_| w.count > 0).map(|(_, min, _)| min)),
                Aggregate::MaxAmount => money(w.stats.filter(|_| w.count > 0).map(|(_, _, max)| max)),
                Aggregate::StdAmount => money(std_dev(w.count, mean, w.stats.map(|(sq, _, _)| sq))),
                _ => match mean {
                    Some(m) if !m.is_zero() => {
                        ev.amount.checked_div(m).map_or(FeatureValue::Missing, FeatureValue::Number)
                    }
                    _ => FeatureValue::Missing,
                },
            }
        }
    }
}

/// An event-time feature's value: the event's time in the feature's zone.
pub(crate) fn event_time(o: &Output, ev: &Event) -> FeatureValue {
    let local = ev.timestamp.with_timezone(&o.time_zone);
    let (hour, day) = (i64::from(local.hour()), i64::from(local.weekday().number_from_monday()));
    FeatureValue::Count(match o.aggregate {
        Aggregate::HourOfDay => hour,
        Aggregate::DayOfWeek => day,
        Aggregate::Weekend => i64::from(day >= 6),
        _ => i64::from(hour < 6),
    })
}

/// Population standard deviation from a count, mean and sum of squares.
pub(crate) fn std_dev(count: i64, mean: Option<Decimal>, sum_sq: Option<Decimal>) -> Option<Decimal> {
    let (mean, sum_sq) = (mean?, sum_sq?);
    let variance = sum_sq.checked_div(Decimal::from(count))?.checked_sub(mean.checked_mul(mean)?)?;
    // Rounding can leave a tiny negative variance for equal amounts.
    variance.max(Decimal::ZERO).sqrt()
}
