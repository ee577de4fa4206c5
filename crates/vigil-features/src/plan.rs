//! A pipeline's feature definitions compiled into a [`Plan`]: the records an
//! event touches, what each entity keeps, and where each feature reads from.

use vigil_core::feature::{Aggregate, EntityKey, FeatureDef};
use vigil_core::{Event, EventField, FeatureValue, Fields, Label};

use crate::state::{record_of, LATENESS_S};

/// The distinct entities features are kept for, and what each needs.
#[derive(Debug, Clone)]
pub(crate) struct EntityPlan {
    pub(crate) key: EntityKey,
    /// The key of the record this entity's state is kept in ([`record_of`]).
    pub(crate) record: EntityKey,
    /// For a composite key: its name among the record's nests.
    pub(crate) nest: Option<String>,
    /// What its records' ids begin with: `record=`.
    pub(crate) id_prefix: String,
    /// The window rings, ascending by window and delay.
    pub(crate) windows: Vec<Span>,
    /// Whether the newest events are kept (`time_since_last`,
    /// `previous_amount`, `changed`).
    pub(crate) recent: bool,
    /// The fields `changed` features compare, kept with the newest events.
    pub(crate) changed: Vec<EventField>,
    /// The fields `previous` features give, kept with the newest events.
    pub(crate) previous: Vec<EventField>,
    /// (field, window) of each `distinct` feature.
    pub(crate) distinct: Vec<(EventField, u64)>,
    /// (window, delay) of label features' rings, ascending.
    pub(crate) frauds: Vec<(u64, u64)>,
}

/// One window ring an entity keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Span {
    pub(crate) window_s: u64,
    /// How long before the event the window ends (0: at the event).
    pub(crate) delay_s: u64,
    /// Whether the ring keeps amount statistics (min, max, standard deviation).
    pub(crate) stats: bool,
}

/// Where each declared feature reads from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    pub(crate) entity: usize,
    /// Index into the entity's rings, or its distinct sets for `distinct`.
    pub(crate) slot: usize,
    /// For windowed aggregates: the ring's index among all entities' rings, where
    /// an event's read of it is kept so that features sharing a ring read it once.
    pub(crate) ring: usize,
    /// For `fraud_count` and `fraud_rate`: the index of the entity's fraud ring.
    pub(crate) frauds: usize,
    pub(crate) aggregate: Aggregate,
    pub(crate) window_s: u64,
    pub(crate) delay_s: u64,
    /// For `changed`: the field it compares.
    pub(crate) of: Option<EventField>,
    /// For event-time features: the zone they read the time in.
    pub(crate) time_zone: chrono_tz::Tz,
}

/// The compiled feature definitions of a pipeline.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) defs: Vec<FeatureDef>,
    pub(crate) entities: Vec<EntityPlan>,
    pub(crate) outputs: Vec<Output>,
    /// Rings over all entities: the size of an event's window-read cache.
    pub(crate) rings: usize,
    pub(crate) max_window_s: u64,
}

/// The records a batch touches.
#[derive(Debug, Default, PartialEq)]
pub struct BatchKeys {
    /// Distinct record ids (`key=value`, such as `card_id=c1`), in first-seen order.
    pub records: Vec<String>,
    /// Per event, per entity plan: an index into `records`, or `None` when absent.
    pub(crate) per_event: Vec<Vec<Option<usize>>>,
}

impl BatchKeys {
    /// Keys for `n` items that touch no record.
    pub fn none(n: usize) -> BatchKeys {
        BatchKeys { records: Vec::new(), per_event: vec![Vec::new(); n] }
    }

    /// The keys of the items at `members`, as a batch of their own over
    /// record `k` alone (a cluster unit's: a part of [`Plan::by_record`]
    /// keeps one record per item, so this is what the part's keys of those
    /// items would be).
    pub fn of_record(&self, k: usize, members: &[usize]) -> BatchKeys {
        BatchKeys {
            records: vec![self.records[k].clone()],
            per_event: members
                .iter()
                .map(|&i| self.per_event[i].iter().map(|s| (*s == Some(k)).then_some(0)).collect())
                .collect(),
        }
    }

    /// The keys of items `at..at + n` (a chunk's); every record is kept.
    pub fn slice(&self, at: usize, n: usize) -> BatchKeys {
        BatchKeys { records: self.records.clone(), per_event: self.per_event[at..at + n].to_vec() }
    }

    /// For each record (in `records` order), the items that touch it, in order.
    /// A record id names its key (`card_id=...`), so a row never holds the
    /// same record twice.
    pub fn items_by_record(&self) -> Vec<Vec<usize>> {
        let mut by = vec![Vec::new(); self.records.len()];
        for (i, row) in self.per_event.iter().enumerate() {
            for &k in row.iter().flatten() {
                by[k].push(i);
            }
        }
        by
    }
}

impl Plan {
    pub fn new(defs: Vec<FeatureDef>) -> Plan {
        let entities = entity_plans(&defs);
        let ring_base: Vec<usize> = entities
            .iter()
            .scan(0, |next, e| {
                let base = *next;
                *next += e.windows.len();
                Some(base)
            })
            .collect();
        let rings = entities.iter().map(|e| e.windows.len()).sum();
        let outputs = defs.iter().map(|d| output(d, &entities, &ring_base, rings)).collect();
        let max_window_s = defs.iter().map(|d| d.window_s + d.delay_s).max().unwrap_or(0);
        Plan { defs, entities, outputs, rings, max_window_s }
    }

    /// The plan split by stored record: one plan per record key (an entity
    /// key, with the composite keys kept in its record), each with the
    /// positions of its features in this plan's feature vector. Every feature
    /// but the event-time ones reads one record only, so the parts together
    /// compute what the whole plan does with [`Plan::event_time`].
    pub fn by_record(&self) -> Vec<(Plan, Vec<usize>)> {
        let mut records: Vec<EntityKey> = Vec::new();
        for e in &self.entities {
            if !records.contains(&e.record) {
                records.push(e.record.clone());
            }
        }
        records
            .iter()
            .map(|r| {
                let positions: Vec<usize> = (0..self.defs.len())
                    .filter(|&i| !self.defs[i].aggregate.is_event_time() && record_of(&self.defs[i].entity) == *r)
                    .collect();
                let defs = positions.iter().map(|&i| self.defs[i].clone()).collect();
                (Plan::new(defs), positions)
            })
            .collect()
    }

    pub fn defs(&self) -> &[FeatureDef] {
        &self.defs
    }

    /// Sets the event-time features' values for `event` in `values` (a
    /// vector of this plan's features): they read the event alone.
    pub fn event_time(&self, event: &Event, values: &mut [FeatureValue]) {
        for (o, v) in self.outputs.iter().zip(values) {
            if o.aggregate.is_event_time() {
                *v = crate::aggregate::event_time(o, event);
            }
        }
    }

    /// How long an idle entity's state must be kept.
    pub fn state_ttl_s(&self) -> u64 {
        self.max_window_s + LATENESS_S as u64
    }

    /// The record ids a batch touches, de-duplicated.
    pub fn keys(&self, events: &[&Event]) -> BatchKeys {
        self.keys_of(events, false)
    }

    /// The record ids a batch of labels touches: those of label features.
    pub fn label_keys(&self, labels: &[&Label]) -> BatchKeys {
        self.keys_of(labels, true)
    }

    /// Whether any declared feature counts labels.
    pub fn has_label_features(&self) -> bool {
        self.entities.iter().any(|e| !e.frauds.is_empty())
    }

    fn keys_of<T: Fields>(&self, items: &[&T], labels_only: bool) -> BatchKeys {
        let mut keys = BatchKeys::default();
        let mut index: foldhash::HashMap<String, usize> = foldhash::HashMap::default();
        for ev in items {
            let mut row = Vec::with_capacity(self.entities.len());
            for e in &self.entities {
                if labels_only && e.frauds.is_empty() {
                    row.push(None);
                    continue;
                }
                let id = match &e.nest {
                    None => record_id(&e.id_prefix, &e.key, *ev),
                    // Kept in the first field's record, when every field is there.
                    Some(_) if e.key.fields()[1..].iter().all(|f| ev.text(*f).is_some()) => {
                        record_id(&e.id_prefix, &e.record, *ev)
                    }
                    Some(_) => None,
                };
                row.push(id.map(|id| match index.get(&id) {
                    Some(&i) => i,
                    None => {
                        let i = keys.records.len();
                        keys.records.push(id.clone());
                        index.insert(id, i);
                        i
                    }
                }));
            }
            keys.per_event.push(row);
        }
        keys
    }
}

/// The id of the record `key` names for an item (`key=value`), `prefix`
/// being `key=`; `None` when a field is absent.
fn record_id<T: Fields>(prefix: &str, key: &EntityKey, item: &T) -> Option<String> {
    let mut id = String::with_capacity(prefix.len() + 24 * key.fields().len());
    id.push_str(prefix);
    EntityKey::push_values(key.fields(), item, &mut id)?;
    Some(id)
}

/// One plan per distinct entity key of `defs`, in first-declared order, with
/// what its features need kept.
fn entity_plans(defs: &[FeatureDef]) -> Vec<EntityPlan> {
    let mut entities: Vec<EntityPlan> = Vec::new();
    for d in defs.iter().filter(|d| !d.aggregate.is_event_time()) {
        let e = match entities.iter().position(|e| e.key == d.entity) {
            Some(i) => i,
            None => {
                entities.push(EntityPlan {
                    key: d.entity.clone(),
                    record: record_of(&d.entity),
                    nest: (d.entity.fields().len() > 1).then(|| d.entity.to_string()),
                    id_prefix: format!("{}=", record_of(&d.entity)),
                    windows: Vec::new(),
                    recent: false,
                    changed: Vec::new(),
                    previous: Vec::new(),
                    distinct: Vec::new(),
                    frauds: Vec::new(),
                });
                entities.len() - 1
            }
        };
        let plan = &mut entities[e];
        if d.aggregate.is_label() && !plan.frauds.contains(&(d.window_s, d.delay_s)) {
            plan.frauds.push((d.window_s, d.delay_s));
        }
        match (d.aggregate, d.of) {
            (Aggregate::TimeSinceLast | Aggregate::PreviousAmount, _) => plan.recent = true,
            (Aggregate::Changed, Some(field)) => {
                plan.recent = true;
                if !plan.changed.contains(&field) {
                    plan.changed.push(field);
                }
            }
            (Aggregate::Previous, Some(field)) => {
                plan.recent = true;
                if !plan.previous.contains(&field) {
                    plan.previous.push(field);
                }
            }
            (Aggregate::FraudCount, _) => {}
            (Aggregate::Distinct, Some(field)) => {
                if !plan.distinct.contains(&(field, d.window_s)) {
                    plan.distinct.push((field, d.window_s));
                }
            }
            _ => {
                let stats = d.aggregate.needs_amount_stats();
                match plan.windows.iter_mut().find(|w| (w.window_s, w.delay_s) == (d.window_s, d.delay_s)) {
                    Some(w) => w.stats |= stats,
                    None => plan.windows.push(Span { window_s: d.window_s, delay_s: d.delay_s, stats }),
                }
            }
        }
    }
    for e in &mut entities {
        e.windows.sort_unstable();
        e.frauds.sort_unstable();
    }
    entities
}

/// Where feature `d` reads from: its entity, its slot there, and the
/// read-cache entry of the window it reads (`ring_base[e]` is entity `e`'s
/// first entry among the `rings` of all entities).
fn output(d: &FeatureDef, entities: &[EntityPlan], ring_base: &[usize], rings: usize) -> Output {
    let at = Output {
        entity: 0,
        slot: 0,
        ring: rings,
        frauds: 0,
        aggregate: d.aggregate,
        window_s: d.window_s,
        delay_s: d.delay_s,
        of: d.of,
        time_zone: d.time_zone,
    };
    // Event-time features read no record (and there may be none).
    let Some(entity) = entities.iter().position(|e| e.key == d.entity).filter(|_| !d.aggregate.is_event_time()) else {
        return at;
    };
    let plan = &entities[entity];
    // Aggregates that read no window share the spare entry past the last.
    let (slot, ring) = match (d.aggregate, d.of) {
        (Aggregate::Distinct, Some(f)) => (plan.distinct.iter().position(|x| *x == (f, d.window_s)), None),
        (Aggregate::Changed, Some(f)) => (plan.changed.iter().position(|x| *x == f), None),
        (Aggregate::Previous, Some(f)) => (plan.previous.iter().position(|x| *x == f), None),
        (Aggregate::TimeSinceLast | Aggregate::PreviousAmount | Aggregate::FraudCount, _) => (None, None),
        _ => {
            let w = plan.windows.iter().position(|w| (w.window_s, w.delay_s) == (d.window_s, d.delay_s));
            (w, w.map(|w| ring_base[entity] + w))
        }
    };
    let (slot, ring) = (slot.unwrap_or(0), ring.unwrap_or(rings));
    let frauds = plan.frauds.iter().position(|w| *w == (d.window_s, d.delay_s)).unwrap_or(0);
    Output { entity, slot, ring, frauds, ..at }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::feature::{Aggregate, EntityKey};

    /// A batch lists each record once, under the id its key and value make,
    /// and every event points at its own.
    #[test]
    fn a_batch_lists_each_record_once() {
        let plan =
            Plan::new(vec![FeatureDef::new("card", EntityKey::parse("card_id").unwrap(), Aggregate::Count, 3600)]);
        let events: Vec<Event> = (0..90)
            .map(|i| {
                let json = format!(
                    r#"{{"transaction_id":"t{i}","timestamp":"2026-01-01T00:00:00Z","amount":"1","currency":"EUR","card_id":"c{}"}}"#,
                    i % 30
                );
                Event::from_json(json.as_bytes()).unwrap()
            })
            .collect();
        let refs: Vec<&Event> = events.iter().collect();
        let keys = plan.keys(&refs);
        assert_eq!(keys.records.len(), 30);
        for (i, row) in keys.per_event.iter().enumerate() {
            assert_eq!(keys.records[row[0].unwrap()], format!("card_id=c{}", i % 30));
        }
    }

    /// What a cluster unit assumes: the items of one record, under its part
    /// of the plan, have exactly the keys `BatchKeys::of_record` gives, and
    /// composite keys share their first field's record.
    #[test]
    fn a_part_sees_one_record_per_unit() {
        let f = |name: &str, entity: &str, aggregate| {
            FeatureDef::new(name, EntityKey::parse(entity).unwrap(), aggregate, 3600)
        };
        let plan = Plan::new(vec![
            f("card", "card_id", Aggregate::Count),
            f("card_terminal", "card_id+terminal_id", Aggregate::Count),
            f("terminal_frauds", "terminal_id", Aggregate::FraudCount),
        ]);
        let event = |id: &str, card: Option<&str>, terminal: &str| {
            let card = card.map_or(String::new(), |c| format!(r#","card_id":"{c}""#));
            let json = format!(
                r#"{{"transaction_id":"{id}","timestamp":"2026-01-01T00:00:00Z","amount":"1","currency":"EUR"{card},"terminal_id":"{terminal}"}}"#
            );
            Event::from_json(json.as_bytes()).unwrap()
        };
        let events = [
            event("a", Some("c1"), "t1"),
            event("b", None, "t1"),
            event("c", Some("c2"), "t2"),
            event("d", Some("c1"), "t2"),
        ];
        let refs: Vec<&Event> = events.iter().collect();
        let label = |id: &str, terminal: &str| {
            let json = format!(
                r#"{{"transaction_id":"{id}","label":"fraud","reported_at":"2026-01-02T00:00:00Z","terminal_id":"{terminal}"}}"#
            );
            Label::from_json(json.as_bytes()).unwrap()
        };
        let labels = [label("a", "t1"), label("c", "t2"), label("b", "t1")];
        let label_refs: Vec<&Label> = labels.iter().collect();
        let mut units = 0;
        for (part, _) in plan.by_record() {
            let keys = part.keys(&refs);
            for (k, members) in keys.items_by_record().into_iter().enumerate() {
                let mine: Vec<&Event> = members.iter().map(|&i| refs[i]).collect();
                assert_eq!(part.keys(&mine), keys.of_record(k, &members), "{}", keys.records[k]);
                units += 1;
            }
            let keys = part.label_keys(&label_refs);
            for (k, members) in keys.items_by_record().into_iter().enumerate() {
                let mine: Vec<&Label> = members.iter().map(|&i| label_refs[i]).collect();
                assert_eq!(part.label_keys(&mine), keys.of_record(k, &members), "{}", keys.records[k]);
                units += 1;
            }
        }
        // Cards c1, c2 (each with its card+terminal pairs); terminals t1, t2 for
        // events, and again for labels.
        assert_eq!(units, 2 + 2 + 2);
    }
}
