//! The batch computation every backend shares: each event's features as of
//! before it, then the event applied to its records; labels counted in the
//! fraud rings of their entities.

use vigil_core::{Event, FeatureValue, FeatureVector, Fields, Label, Verdict};

use crate::aggregate::value;
use crate::plan::{BatchKeys, Plan};
use crate::state::{member_id, within, within_mut, EntityState, Window};

/// What a batch computation changed: entity states to store and new markers.
#[derive(Debug, Default)]
pub struct Changes {
    /// Indices into the batch's key list of states that changed.
    pub dirty: Vec<usize>,
    /// Indices into the batch of events seen for the first time: their features
    /// (in the computation's output) are what the de-duplication markers store.
    pub first_seen: Vec<usize>,
}

impl Plan {
    /// Conforms entity `e`'s state in `record` to its plan: the record
    /// itself, or for a composite key the member `item` names (made when
    /// new), whose position it gives.
    fn locate<T: Fields>(&self, e: usize, record: &mut EntityState, item: &T) -> Option<(usize, usize)> {
        let plan = &self.entities[e];
        let Some(name) = &plan.nest else {
            record.conform(plan);
            return None;
        };
        // The keys list a composite entity only when all its fields are there.
        let id = member_id(&plan.key, item).unwrap_or_default();
        let (n, m) = record.member(name, &id);
        record.nests[n].members[m].state.conform(plan);
        Some((n, m))
    }

    /// Computes every event's features as of before it and applies it to the
    /// states, in batch order. `seen[i]` holds the stored features of event `i`
    /// when it was processed before: it then changes nothing.
    pub fn compute(
        &self,
        events: &[&Event],
        keys: &BatchKeys,
        states: &mut [EntityState],
        seen: &[Option<FeatureVector>],
    ) -> (Vec<FeatureVector>, Changes) {
        debug_assert_eq!(states.len(), keys.records.len());
        let mut changes = Changes::default();
        let mut dirty = vec![false; states.len()];
        let mut first_in_batch: foldhash::HashMap<&str, usize> = foldhash::HashMap::default();
        let mut out: Vec<FeatureVector> = Vec::with_capacity(events.len());
        // One spare slot: outputs that read no ring may point one past the last.
        let mut reads: Vec<Option<Window>> = vec![None; self.rings + 1];
        let mut located: Vec<Option<(usize, usize)>> = Vec::with_capacity(self.entities.len());
        let keep_s = self.state_ttl_s();
        for (i, ev) in events.iter().enumerate() {
            if let Some(stored) = &seen[i] {
                out.push(FeatureVector { replayed: true, ..stored.clone() });
                continue;
            }
            if let Some(&j) = first_in_batch.get(ev.transaction_id.as_str()) {
                out.push(FeatureVector { replayed: true, ..out[j].clone() });
                continue;
            }
            first_in_batch.insert(&ev.transaction_id, i);
            let row = &keys.per_event[i];
            located.clear();
            for (e, slot) in row.iter().enumerate() {
                located.push(slot.and_then(|s| self.locate(e, &mut states[s], *ev)));
            }
            let t = ev.unix_s();
            reads.fill(None);
            let values = self
                .outputs
                .iter()
                .map(|o| match row.get(o.entity).copied().flatten() {
                    _ if o.aggregate.is_event_time() => crate::aggregate::event_time(o, ev),
                    None => FeatureValue::Missing,
                    Some(s) => value(o, within(&states[s], located[o.entity]), ev, t, &mut reads[o.ring]),
                })
                .collect();
            for (e, slot) in row.iter().enumerate() {
                if let Some(s) = slot {
                    let record = &mut states[*s];
                    if located[e].is_some() {
                        // A member's event is also its record's newest.
                        record.max_t = record.max_t.max(t);
                    }
                    within_mut(record, located[e]).add(&self.entities[e], ev, t);
                    dirty[*s] = true;
                }
            }
            // After the adds (forgetting members moves the positions in
            // `located`), once per record the event touched.
            for (e, slot) in row.iter().enumerate() {
                if let Some(s) = *slot {
                    if !states[s].nests.is_empty() && !row[..e].contains(&Some(s)) {
                        states[s].prune_nests(keep_s);
                    }
                }
            }
            changes.first_seen.push(i);
            out.push(FeatureVector { values, replayed: false, fingerprint: ev.fingerprint() });
        }
        changes.dirty = dirty.iter().enumerate().filter_map(|(i, d)| d.then_some(i)).collect();
        (out, changes)
    }

    /// Counts the fraud labels of a batch in their entities' fraud rings.
    /// `seen[i]` is true when label `i`'s transaction was counted before: it then
    /// changes nothing. `first_seen` in the result lists the labels to mark.
    pub fn apply_labels(
        &self,
        labels: &[&Label],
        keys: &BatchKeys,
        states: &mut [EntityState],
        seen: &[bool],
    ) -> (Vec<LabelOutcome>, Changes) {
        let mut changes = Changes::default();
        let mut dirty = vec![false; states.len()];
        let mut counted: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(labels.len());
        let counts_labels = self.has_label_features();
        for (i, label) in labels.iter().enumerate() {
            if label.verdict == Verdict::Genuine || !counts_labels {
                out.push(LabelOutcome::Recorded);
                continue;
            }
            if seen[i] || !counted.insert(&label.transaction_id) {
                out.push(LabelOutcome::AlreadyCounted);
                continue;
            }
            let (t, occurred) = (label.unix_s(), label.occurred_at.map(|at| at.timestamp()));
            for (e, slot) in keys.per_event[i].iter().enumerate() {
                if let Some(s) = slot {
                    let at = self.locate(e, &mut states[*s], *label);
                    within_mut(&mut states[*s], at).add_fraud(&self.entities[e], t, occurred);
                    dirty[*s] = true;
                }
            }
            changes.first_seen.push(i);
            out.push(LabelOutcome::Counted);
        }
        changes.dirty = dirty.iter().enumerate().filter_map(|(i, d)| d.then_some(i)).collect();
        (out, changes)
    }
}

/// What applying a label did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelOutcome {
    /// A fraud, now counted by every label feature of its entities.
    Counted,
    /// A fraud whose transaction was counted before (a redelivery): nothing changed.
    AlreadyCounted,
    /// Accepted without changing features: a genuine verdict, or a pipeline
    /// without label features.
    Recorded,
}
