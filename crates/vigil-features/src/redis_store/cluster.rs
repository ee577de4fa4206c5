//! **Redis Cluster** ([`RedisStore::connect_cluster`]) cannot run one script over
//! keys in several slots, and an event's records (card, terminal, merchant...)
//! hash to different slots. There every record of a call is its own unit: its
//! state and its own markers (`{entity}` hash tag) go through the same chunked
//! compare-and-set, so each entity counts an event exactly once on its own. A
//! transaction marker, written only after every entity has counted the event,
//! then records the event's whole features: a redelivery finds it and touches no
//! entity, and a call cut short between the two is finished by the redelivery,
//! whose entities replay the features they stored. The units of a call run
//! concurrently, so a call costs about three round trips whatever its size.

use std::collections::HashMap;

use futures::future::try_join_all;
use vigil_core::{Event, FeatureValue, FeatureVector, Label};

use super::{Parts, RedisStore};
use crate::marker;
use crate::plan::{BatchKeys, Plan};
use crate::{FeatureError, LabelOutcome};

impl RedisStore {
    /// Runs `unit` for every record the `items` touch under each part of the
    /// plan (a part is one record key, [`Plan::by_record`]), concurrently:
    /// each record's keys share one slot. A unit gets its part's plan, the
    /// items that touch the record and their keys over it alone
    /// ([`BatchKeys::of_record`]; the record is their one key). Returns, per
    /// part and record, the items it covered and what its unit gave for them.
    async fn per_record<'a, 'p, I, T, F, Fut>(
        &self,
        parts: &'p Parts,
        items: &[&'a I],
        keys: impl Fn(&Plan, &[&'a I]) -> BatchKeys,
        unit: F,
    ) -> Result<Vec<(usize, Vec<usize>, Vec<T>)>, FeatureError>
    where
        F: Fn(&'p Plan, BatchKeys, Vec<&'a I>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, FeatureError>>,
    {
        let mut units = Vec::new();
        for (p, (plan, _)) in parts.iter().enumerate() {
            let keys = keys(plan, items);
            for (k, members) in keys.items_by_record().into_iter().enumerate() {
                let run = unit(plan, keys.of_record(k, &members), members.iter().map(|&i| items[i]).collect());
                units.push(async move { run.await.map(|out| (p, members, out)) });
            }
        }
        try_join_all(units).await
    }

    /// `process` on a cluster (module docs).
    pub(super) async fn process_in_cluster(
        &self,
        parts: &Parts,
        events: &[&Event],
    ) -> Result<Vec<FeatureVector>, FeatureError> {
        // A repeated id within the call is its first occurrence's replay.
        let mut first: HashMap<&str, usize> = HashMap::new();
        let origin: Vec<usize> =
            events.iter().enumerate().map(|(i, e)| *first.entry(&e.transaction_id).or_insert(i)).collect();
        let fresh: Vec<usize> = (0..events.len()).filter(|&i| origin[i] == i).collect();
        let committed =
            try_join_all(fresh.iter().map(|&i| self.get(self.keys.marker(&events[i].transaction_id)))).await?;
        let mut out: Vec<Option<FeatureVector>> = vec![None; events.len()];
        let mut pending = Vec::new();
        for (&i, stored) in fresh.iter().zip(committed) {
            match stored {
                Some(bytes) => out[i] = Some(marker::decode(&bytes)?),
                None => pending.push(i),
            }
        }
        let todo: Vec<&Event> = pending.iter().map(|&i| events[i]).collect();
        let width = self.plan.defs().len();
        let mut merged: Vec<FeatureVector> = todo
            .iter()
            .map(|e| {
                let mut values = vec![FeatureValue::Missing; width];
                // No part holds them: they read the event alone.
                self.plan.event_time(e, &mut values);
                FeatureVector { values, replayed: false, fingerprint: e.fingerprint() }
            })
            .collect();
        // Whether every entity of the event had counted it before (a call cut short).
        let mut replayed: Vec<Option<bool>> = vec![None; todo.len()];
        let units = self
            .per_record(
                parts,
                &todo,
                |plan, items| plan.keys(items),
                |plan, keys, evs| async move {
                    let record = &keys.records[0];
                    let chunk = |at, c: &[&Event]| keys.slice(at, c.len());
                    self.process_events(plan, &evs, chunk, |e| self.keys.record_marker(record, &e.transaction_id)).await
                },
            )
            .await?;
        for (p, members, outs) in units {
            for (j, fv) in members.into_iter().zip(outs) {
                for (&at, v) in parts[p].1.iter().zip(fv.values) {
                    merged[j].values[at] = v;
                }
                if fv.replayed {
                    // The stored fingerprint tells a reused id from a retry.
                    merged[j].fingerprint = fv.fingerprint;
                }
                replayed[j] = Some(replayed[j].unwrap_or(true) && fv.replayed);
            }
        }
        // Every entity has counted the events: record their whole features.
        try_join_all(pending.iter().zip(&merged).map(|(&i, fv)| {
            self.set_once(self.keys.marker(&events[i].transaction_id), marker::encode(fv), self.dedup_ttl_s)
        }))
        .await?;
        for ((&i, mut fv), again) in pending.iter().zip(merged).zip(replayed) {
            fv.replayed = again.unwrap_or(false);
            out[i] = Some(fv);
        }
        for (i, &o) in origin.iter().enumerate() {
            if o != i {
                out[i] = out[o].clone().map(|fv| FeatureVector { replayed: true, ..fv });
            }
        }
        Ok(out.into_iter().map(|fv| fv.expect("every event is decided")).collect())
    }

    /// `apply_labels` on a cluster (module docs): the plan tells fresh frauds
    /// from genuine verdicts and repeats, then each fresh fraud is counted by
    /// each of its entities, then marked as counted.
    pub(super) async fn labels_in_cluster(
        &self,
        parts: &Parts,
        labels: &[&Label],
    ) -> Result<Vec<LabelOutcome>, FeatureError> {
        // Only frauds count, so only theirs are looked up.
        let seen = try_join_all(labels.iter().map(|l| async move {
            match l.verdict {
                vigil_core::Verdict::Fraud => {
                    self.get(self.keys.label_marker(&l.transaction_id)).await.map(|m| m.is_some())
                }
                vigil_core::Verdict::Genuine => Ok(false),
            }
        }))
        .await?;
        let (mut out, changes) = self.plan.apply_labels(labels, &BatchKeys::none(labels.len()), &mut [], &seen);
        let todo: Vec<&Label> = changes.first_seen.iter().map(|&i| labels[i]).collect();
        let mut again: Vec<Option<bool>> = vec![None; todo.len()];
        let units = self
            .per_record(
                parts,
                &todo,
                |plan, items| plan.label_keys(items),
                |plan, keys, ls| async move {
                    let record = &keys.records[0];
                    let chunk = |at, c: &[&Label]| keys.slice(at, c.len());
                    self.process_labels(plan, &ls, chunk, |l| self.keys.record_label_marker(record, &l.transaction_id))
                        .await
                },
            )
            .await?;
        for (_, members, outs) in units {
            for (j, outcome) in members.into_iter().zip(outs) {
                again[j] = Some(again[j].unwrap_or(true) && outcome == LabelOutcome::AlreadyCounted);
            }
        }
        let ttl = self.plan.state_ttl_s();
        try_join_all(todo.iter().map(|l| self.set_once(self.keys.label_marker(&l.transaction_id), b"1".to_vec(), ttl)))
            .await?;
        for (&i, again) in changes.first_seen.iter().zip(again) {
            if again == Some(true) {
                out[i] = LabelOutcome::AlreadyCounted;
            }
        }
        Ok(out)
    }
}
