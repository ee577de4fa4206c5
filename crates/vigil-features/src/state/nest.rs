//! Composite entities (`card_id+device_id`) kept inside the record of their
//! first field (the card's), as members of a nested map keyed by the other
//! fields' values, so that an event touches one stored record per first field
//! rather than one per declared key. A member is dropped when its record has
//! seen no event of it for [`crate::Plan::state_ttl_s`] (as a key of its own would
//! expire), and a record keeps at most [`NEST_LIMIT`] members per composite
//! key: beyond it, the least recently seen member is forgotten and its
//! features start afresh if it comes back.

use serde::{Deserialize, Serialize};
use vigil_core::feature::EntityKey;
use vigil_core::Fields;

use super::{EntityState, NEST_LIMIT};

/// The members of one composite key (`card_id+device_id`) in the record of
/// its first field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Nest {
    /// The composite key's name.
    pub(crate) key: String,
    /// Ascending by id: the values of the key's other fields.
    pub(crate) members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) state: EntityState,
}

impl EntityState {
    /// The member `id` of the composite key `key`, made (empty) when new:
    /// its (nest, member) position. A full nest forgets its least recently
    /// seen member first.
    pub(crate) fn member(&mut self, key: &str, id: &str) -> (usize, usize) {
        let n = match self.nests.iter().position(|n| n.key == key) {
            Some(n) => n,
            None => {
                self.nests.push(Nest { key: key.to_owned(), members: Vec::new() });
                self.nests.len() - 1
            }
        };
        let members = &mut self.nests[n].members;
        let m = match members.binary_search_by(|m| m.id.as_str().cmp(id)) {
            Ok(m) => m,
            Err(_) => {
                if members.len() >= NEST_LIMIT {
                    let oldest = members.iter().enumerate().min_by_key(|(_, m)| m.state.max_t).map(|(i, _)| i);
                    if let Some(i) = oldest {
                        members.remove(i);
                    }
                }
                let at = members.partition_point(|m| m.id.as_str() < id);
                members.insert(at, Member { id: id.to_owned(), state: EntityState::default() });
                at
            }
        };
        (n, m)
    }

    /// Forgets members not seen for `keep_s` before the record's newest
    /// event, and composite keys left without members.
    pub(crate) fn prune_nests(&mut self, keep_s: u64) {
        let horizon = self.max_t.saturating_sub(keep_s as i64);
        for nest in &mut self.nests {
            nest.members.retain(|m| m.state.last_seen() >= horizon);
        }
        self.nests.retain(|n| !n.members.is_empty());
    }
}

/// The key of the record an entity key's state is kept in: its first field's
/// (itself, for a key of one field).
pub(crate) fn record_of(key: &EntityKey) -> EntityKey {
    EntityKey::of(key.fields()[0])
}

/// A composite key's member id in its record: the values of its other fields.
pub(crate) fn member_id<T: Fields>(key: &EntityKey, item: &T) -> Option<String> {
    let mut out = String::new();
    EntityKey::push_values(&key.fields()[1..], item, &mut out)?;
    Some(out)
}

/// An entity's state in its record: the record itself, or the member at
/// (nest, member).
pub(crate) fn within(record: &EntityState, at: Option<(usize, usize)>) -> &EntityState {
    match at {
        None => record,
        Some((n, m)) => &record.nests[n].members[m].state,
    }
}

pub(crate) fn within_mut(record: &mut EntityState, at: Option<(usize, usize)>) -> &mut EntityState {
    match at {
        None => record,
        Some((n, m)) => &mut record.nests[n].members[m].state,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use vigil_core::feature::{Aggregate, EntityKey, FeatureDef};
    use vigil_core::{Event, FeatureValue, Label};

    use super::*;
    use crate::{LabelOutcome, Plan};

    fn def(name: &str, entity: &str, aggregate: Aggregate) -> FeatureDef {
        FeatureDef::new(name, EntityKey::parse(entity).unwrap(), aggregate, 3600)
    }

    fn event(id: &str, secs: i64, card: &str, device: &str) -> Event {
        let t = chrono::DateTime::from_timestamp(1_767_225_600 + secs, 0).unwrap().to_rfc3339();
        let json = format!(
            r#"{{"transaction_id":"{id}","timestamp":"{t}","amount":"5","currency":"EUR","card_id":"{card}","device_id":"{device}","country":"FR"}}"#
        );
        Event::from_json(json.as_bytes()).unwrap()
    }

    /// Runs events one at a time over `records`, as a store would.
    fn run(plan: &Plan, records: &mut HashMap<String, EntityState>, events: &[Event]) -> Vec<Vec<FeatureValue>> {
        let mut out = Vec::new();
        for ev in events {
            let keys = plan.keys(&[ev]);
            let mut states: Vec<EntityState> =
                keys.records.iter().map(|k| records.get(k).cloned().unwrap_or_default()).collect();
            let (fv, changes) = plan.compute(&[ev], &keys, &mut states, &[None]);
            for i in changes.dirty {
                records.insert(keys.records[i].clone(), states[i].clone());
            }
            out.push(fv[0].values.clone());
        }
        out
    }

    fn plan() -> Plan {
        Plan::new(vec![
            def("card", "card_id", Aggregate::Count),
            def("card_device", "card_id+device_id", Aggregate::Count),
            def("card_country", "card_id+country", Aggregate::Count),
        ])
    }

    #[test]
    fn composite_keys_live_in_their_first_fields_record() {
        let plan = plan();
        let events = [event("a", 0, "c1", "d1"), event("b", 10, "c1", "d2"), event("c", 20, "c1", "d1")];
        let refs: Vec<&Event> = events.iter().collect();
        assert_eq!(plan.keys(&refs).records, ["card_id=c1"], "one record for the card and its pairs");
        let mut records = HashMap::new();
        let c = FeatureValue::Count;
        assert_eq!(
            run(&plan, &mut records, &events),
            [vec![c(0), c(0), c(0)], vec![c(1), c(0), c(1)], vec![c(2), c(1), c(2)]]
        );
        let card = &records["card_id=c1"];
        assert_eq!(card.nests.len(), 2);
        assert_eq!(card.nests[0].members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["d1", "d2"]);
        // Alone, a composite key still keeps its first field's record, and an
        // event without its second field touches nothing.
        let alone = Plan::new(vec![def("card_device", "card_id+device_id", Aggregate::Count)]);
        let mut no_device = event("d", 30, "c1", "d1");
        no_device.device_id = None;
        assert_eq!(alone.keys(&[&events[0]]).records, ["card_id=c1"]);
        assert!(alone.keys(&[&no_device]).records.is_empty());
        assert_eq!(alone.by_record().len(), 1);
        assert_eq!(plan.by_record().len(), 1, "one part per record");
    }

    #[test]
    fn a_fraud_reported_late_keeps_its_member() {
        let frauds =
            FeatureDef { window_s: 7 * 86_400, ..def("pair_frauds", "card_id+terminal_id", Aggregate::FraudCount) };
        let plan = Plan::new(vec![def("card", "card_id", Aggregate::Count), frauds]);
        let at = |id: &str, secs: i64, terminal: &str| {
            let mut e = event(id, secs, "c1", "d1");
            e.terminal_id = Some(terminal.into());
            e
        };
        let mut records = HashMap::new();
        run(&plan, &mut records, &[at("a", 0, "t1")]);
        // Reported long after the pair's last event, past the state's lifetime.
        let late = plan.state_ttl_s() as i64 + 1_000;
        let t = chrono::DateTime::from_timestamp(1_767_225_600 + late, 0).unwrap().to_rfc3339();
        let json = format!(
            r#"{{"transaction_id":"a","label":"fraud","reported_at":"{t}","card_id":"c1","terminal_id":"t1"}}"#
        );
        let label = Label::from_json(json.as_bytes()).unwrap();
        let keys = plan.label_keys(&[&label]);
        let mut states: Vec<EntityState> =
            keys.records.iter().map(|k| records.get(k).cloned().unwrap_or_default()).collect();
        let (outcome, changes) = plan.apply_labels(&[&label], &keys, &mut states, &[false]);
        assert_eq!(outcome, [LabelOutcome::Counted]);
        for i in changes.dirty {
            records.insert(keys.records[i].clone(), states[i].clone());
        }
        // Another terminal's event prunes the record; the reported pair stays.
        let out = run(&plan, &mut records, &[at("b", late + 10, "t2"), at("c", late + 20, "t1")]);
        assert_eq!(out[1][1], FeatureValue::Count(1), "the fraud still counts for the pair");
    }

    #[test]
    fn members_expire_and_stay_bounded() {
        let plan = plan();
        let mut records = HashMap::new();
        let c = FeatureValue::Count;
        // NEST_LIMIT + 1 devices: the first one seen is forgotten.
        let events: Vec<Event> =
            (0..=NEST_LIMIT).map(|i| event(&format!("e{i}"), i as i64, "c1", &format!("d{i}"))).collect();
        run(&plan, &mut records, &events);
        assert_eq!(records["card_id=c1"].nests[0].members.len(), NEST_LIMIT);
        let again = [event("x", 100, "c1", "d0"), event("y", 101, "c1", &format!("d{NEST_LIMIT}"))];
        let out = run(&plan, &mut records, &again);
        assert_eq!(out[0][1], c(0), "the least recently seen device was forgotten");
        assert_eq!(out[1][1], c(1), "a recent device still counts");
        // A member unseen for the state's lifetime goes, as its own key would expire.
        let later = plan.state_ttl_s() as i64 + 200;
        run(&plan, &mut records, &[event("z", later, "c1", "fresh")]);
        let card = &records["card_id=c1"];
        assert_eq!(card.nests[0].members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["fresh"]);
        assert_eq!(card.nests[1].members.len(), 1, "the country pair was seen at this event");
    }
}
