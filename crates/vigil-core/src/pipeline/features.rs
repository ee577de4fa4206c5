//! `[[features]]`: each feature's name, entity, aggregate, window and field.

use std::collections::HashSet;

use serde::Deserialize;
use toml::Spanned;

use super::is_identifier;
use crate::diagnostic::Diagnostics;
use crate::event::EventField;
use crate::feature::{parse_duration_s, Aggregate, EntityKey, FeatureDef};

/// Shortest and longest accepted feature windows.
pub const MIN_WINDOW_S: u64 = 60;
pub const MAX_WINDOW_S: u64 = 90 * 86_400;

/// Names that rules reserve and features may not take.
pub const RESERVED_NAMES: [&str; 1] = ["model_score"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeature {
    name: Spanned<String>,
    /// Every aggregate but the event-time ones.
    entity: Option<Spanned<String>>,
    aggregate: Spanned<String>,
    /// Every aggregate but the event-time ones.
    window: Option<Spanned<String>>,
    /// For `distinct`, `changed` and `previous`: the field they read.
    of: Option<Spanned<String>>,
    /// A matured window: it ends this long before the event.
    delay: Option<Spanned<String>>,
    /// For event-time features: an IANA zone such as `Europe/Paris` (UTC when left out).
    time_zone: Option<Spanned<String>>,
}

/// The declared features, in order; those with problems are left out (and
/// their problems noted).
pub(super) fn validate(raw: &[Spanned<RawFeature>], p: &mut Diagnostics<'_>) -> Vec<FeatureDef> {
    let mut features = Vec::new();
    let mut seen = HashSet::new();
    for (i, f) in raw.iter().enumerate() {
        if let Some(def) = feature(i, f.get_ref(), &mut seen, p) {
            features.push(def);
        }
    }
    features
}

/// Feature `i`, its name not among the `seen` ones.
fn feature(i: usize, f: &RawFeature, seen: &mut HashSet<String>, p: &mut Diagnostics<'_>) -> Option<FeatureDef> {
    let key = |field: &str| format!("features[{i}].{field}");
    let name = f.name.get_ref();
    if !is_identifier(name) {
        p.on(
            &f.name,
            key("name"),
            format!("`{name}` is not a name (lower-case letters, digits and _, not starting with a digit)"),
        );
    } else if EventField::parse(name).is_some() || RESERVED_NAMES.contains(&name.as_str()) {
        p.on(&f.name, key("name"), format!("`{name}` is taken by an event field or a reserved name"));
    } else if !seen.insert(name.clone()) {
        p.on(&f.name, key("name"), format!("`{name}` is declared twice"));
    }
    let aggregate = Aggregate::parse(f.aggregate.get_ref());
    if aggregate.is_none() {
        let known = Aggregate::ALL.iter().map(|a| a.name());
        let hint = crate::suggest::hint(f.aggregate.get_ref(), known.clone());
        let list = known.collect::<Vec<_>>().join(", ");
        p.on(
            &f.aggregate,
            key("aggregate"),
            format!("unknown aggregate `{}` (known: {list}){hint}", f.aggregate.get_ref()),
        );
    }
    if aggregate.is_some_and(Aggregate::is_event_time) {
        return event_time(f, aggregate?, &key, p);
    }
    let entity = match &f.entity {
        Some(e) => EntityKey::parse(e.get_ref()).inspect_err(|m| p.on(e, key("entity"), m.clone())),
        None => {
            p.on(&f.name, key("entity"), "is required: the field (or fields, joined by +) it aggregates by");
            Err(String::new())
        }
    };
    let window = match &f.window {
        Some(w) => window(w, &key("window"), p),
        None => {
            p.on(&f.name, key("window"), "is required: how far back it looks, such as 10m, 24h or 30d");
            Err(())
        }
    };
    let of = of(f, aggregate, &key("of"), p);
    let delay = delay(f, aggregate, window.unwrap_or(0), &key("delay"), p);
    if let Some(z) = &f.time_zone {
        p.on(
            z,
            key("time_zone"),
            "only event-time features (hour_of_day, day_of_week, weekend, night) take a time zone",
        );
    }
    match (entity, aggregate, window, of, delay) {
        (Ok(entity), Some(aggregate), Ok(window_s), Ok(of), Ok(delay_s)) => {
            Some(FeatureDef { of, delay_s, ..FeatureDef::new(name, entity, aggregate, window_s) })
        }
        _ => None,
    }
}

/// A window's length, within the accepted range.
fn window(w: &Spanned<String>, key: &str, p: &mut Diagnostics<'_>) -> Result<u64, ()> {
    match parse_duration_s(w.get_ref()) {
        Err(m) => p.on(w, key, m),
        Ok(s) if !(MIN_WINDOW_S..=MAX_WINDOW_S).contains(&s) => p.on(w, key, "must be between 1m and 90d"),
        Ok(s) => return Ok(s),
    }
    Err(())
}

/// A matured window's delay (0 when left out): at least a minute, with the
/// window reaching at most [`MAX_WINDOW_S`] back.
fn delay(
    f: &RawFeature,
    aggregate: Option<Aggregate>,
    window_s: u64,
    key: &str,
    p: &mut Diagnostics<'_>,
) -> Result<u64, ()> {
    let Some(d) = &f.delay else { return Ok(0) };
    if let Some(a) = aggregate.filter(|a| !a.takes_delay()) {
        let takers = Aggregate::ALL.iter().filter(|a| a.takes_delay()).map(|a| a.name()).collect::<Vec<_>>();
        p.on(d, key, format!("`{}` takes no delay (those that do: {})", a.name(), takers.join(", ")));
        return Err(());
    }
    match parse_duration_s(d.get_ref()) {
        Err(m) => p.on(d, key, m),
        Ok(s) if s < MIN_WINDOW_S => {
            p.on(d, key, "must be at least 1m (leave it out for a window that ends at the event)")
        }
        Ok(s) if s + window_s > MAX_WINDOW_S => p.on(d, key, "window and delay together must reach at most 90d back"),
        Ok(s) => return Ok(s),
    }
    Err(())
}

/// An event-time feature: no entity, window or delay; an optional time zone.
fn event_time(
    f: &RawFeature,
    aggregate: Aggregate,
    key: &dyn Fn(&str) -> String,
    p: &mut Diagnostics<'_>,
) -> Option<FeatureDef> {
    let mut ok = true;
    let reads = "reads the event's own time";
    for (field, given) in [
        ("entity", f.entity.as_ref()),
        ("window", f.window.as_ref()),
        ("delay", f.delay.as_ref()),
        ("of", f.of.as_ref()),
    ] {
        if let Some(v) = given {
            p.on(v, key(field), format!("`{}` {reads}: leave `{field}` out", aggregate.name()));
            ok = false;
        }
    }
    let time_zone = match &f.time_zone {
        None => chrono_tz::Tz::UTC,
        Some(z) => match z.get_ref().parse::<chrono_tz::Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                let hint = crate::suggest::hint(z.get_ref(), chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()));
                p.on(
                    z,
                    key("time_zone"),
                    format!("unknown time zone `{}` (an IANA name such as `Europe/Paris` or `UTC`){hint}", z.get_ref()),
                );
                return None;
            }
        },
    };
    ok.then(|| FeatureDef { time_zone, ..FeatureDef::new(f.name.get_ref(), EntityKey::none(), aggregate, 0) })
}

/// The field an aggregate reads (`of`), where it takes one.
fn of(
    f: &RawFeature,
    aggregate: Option<Aggregate>,
    key: &str,
    p: &mut Diagnostics<'_>,
) -> Result<Option<EventField>, ()> {
    match (&f.of, aggregate) {
        (None, Some(a)) if a.takes_field() => {
            p.on(&f.aggregate, key, format!("`{}` needs `of`, the text field it reads", a.name()));
            Err(())
        }
        (None, _) => Ok(None),
        (Some(of), Some(a)) if a.takes_field() => match EventField::parse(of.get_ref()) {
            Some(field) if !matches!(field, EventField::Timestamp | EventField::Amount) => Ok(Some(field)),
            Some(field) => {
                let hint = match (a, field) {
                    (Aggregate::Previous, EventField::Amount) => "; the previous amount is `previous_amount`",
                    _ => "",
                };
                p.on(of, key, format!("`{}` reads text fields, not amount or timestamp{hint}", a.name()));
                Err(())
            }
            None => {
                let known = EventField::ALL.iter().map(|f| f.name());
                let hint = crate::suggest::hint(of.get_ref(), known);
                p.on(of, key, format!("unknown field `{}`{hint}", of.get_ref()));
                Err(())
            }
        },
        (Some(of), _) => {
            p.on(of, key, "only `distinct`, `changed` and `previous` take `of`");
            Err(())
        }
    }
}
