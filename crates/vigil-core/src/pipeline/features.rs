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
    entity: Spanned<String>,
    aggregate: Spanned<String>,
    window: Spanned<String>,
    /// For `distinct`, `changed` and `previous`: the field they read.
    of: Option<Spanned<String>>,
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
    let entity = EntityKey::parse(f.entity.get_ref());
    if let Err(m) = &entity {
        p.on(&f.entity, key("entity"), m.clone());
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
    let window = parse_duration_s(f.window.get_ref());
    match &window {
        Err(m) => p.on(&f.window, key("window"), m.clone()),
        Ok(w) if !(MIN_WINDOW_S..=MAX_WINDOW_S).contains(w) => {
            p.on(&f.window, key("window"), "must be between 1m and 90d")
        }
        Ok(_) => {}
    }
    let of = of(f, aggregate, &key("of"), p);
    match (entity, aggregate, window, of) {
        (Ok(entity), Some(aggregate), Ok(window_s), Ok(of)) => {
            Some(FeatureDef { name: name.clone(), entity, aggregate, window_s, of })
        }
        _ => None,
    }
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
