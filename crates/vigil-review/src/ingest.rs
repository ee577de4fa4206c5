//! Review decisions into cases: one open case per entity, one payment row per
//! transaction, whatever is delivered twice.
//!
//! A batch is one transaction of four statements, whatever its size: the
//! transactions already known are set aside, the entities' open cases are
//! found or opened (`ON CONFLICT` on the partial unique index), the payments
//! are inserted (`ON CONFLICT DO NOTHING` on the transaction id), and the
//! cases' counters follow what was inserted. Rows are written in sorted order
//! so that concurrent ingesters lock in the same order; a deadlock or a
//! serialisation failure runs the batch again.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use vigil_core::{Action, Decision};

use crate::error::ReviewError;
use crate::settings::wanted_decline;
use crate::store::ReviewStore;
use crate::webhook;
use vigil_core::pipeline::WebhookEvent;

/// Times a batch is run again after a deadlock or serialisation failure.
const RETRIES: usize = 5;

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Payments added to a case.
    pub added: usize,
    /// Cases opened for them (the others joined an open case).
    pub opened: usize,
    /// Review decisions already in a case (redeliveries): nothing changed.
    pub repeated: usize,
    /// Decisions that were not `review`: not the review store's.
    pub not_review: usize,
    /// Review decisions without their event (written by a Vigil older than
    /// the review store): no snapshot to keep, so no case. Logged.
    pub without_event: usize,
}

impl std::ops::AddAssign for Ingested {
    fn add_assign(&mut self, o: Ingested) {
        self.added += o.added;
        self.opened += o.opened;
        self.repeated += o.repeated;
        self.not_review += o.not_review;
        self.without_event += o.without_event;
    }
}

/// One payment to add, as sent to PostgreSQL.
struct Row<'a> {
    transaction_id: &'a str,
    entity_kind: &'static str,
    entity_id: &'a str,
    json: String,
    amount: Decimal,
    currency: &'a str,
    score: f64,
    event_at: DateTime<Utc>,
    queue: &'a str,
    priority: i32,
    wanted_decline: bool,
}

impl ReviewStore {
    /// Adds the `review` decisions of `decisions` to their entities' cases,
    /// each exactly once however often it is delivered. Commit the batch's
    /// offsets only after this returns `Ok`.
    pub async fn ingest(&self, decisions: &[Decision]) -> Result<Ingested, ReviewError> {
        let mut counts = Ingested::default();
        let mut rows: BTreeMap<&str, Row<'_>> = BTreeMap::new();
        for d in decisions {
            if d.decision != Action::Review {
                counts.not_review += 1;
                continue;
            }
            let Some(event) = &d.event else {
                tracing::warn!(transaction_id = %d.transaction_id, "review decision without its event: no case opened");
                counts.without_event += 1;
                continue;
            };
            if rows.contains_key(d.transaction_id.as_str()) {
                counts.repeated += 1;
                continue;
            }
            let (queue, priority) = self.settings.queue_of(d, event);
            let (entity_kind, entity_id) = match self.settings.entity.of(event) {
                Some(id) => (self.settings.entity.as_str(), id),
                None => ("transaction", d.transaction_id.as_str()),
            };
            rows.insert(
                &d.transaction_id,
                Row {
                    transaction_id: &d.transaction_id,
                    entity_kind,
                    entity_id,
                    json: String::from_utf8(d.to_json()).unwrap_or_default(),
                    amount: event.amount,
                    currency: &event.currency,
                    score: d.score,
                    event_at: event.timestamp,
                    queue,
                    priority,
                    wanted_decline: wanted_decline(d),
                },
            );
        }
        if rows.is_empty() {
            return Ok(counts);
        }
        let rows: Vec<Row<'_>> = rows.into_values().collect();
        let mut attempt = 0;
        loop {
            match self.ingest_once(&rows).await {
                Ok((added, opened)) => {
                    counts.added += added;
                    counts.opened += opened;
                    counts.repeated += rows.len() - added;
                    return Ok(counts);
                }
                Err(e) if e.is_retryable() && attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "review batch run again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One try of a batch (sorted by transaction id): payments added, cases opened.
    async fn ingest_once(&self, rows: &[Row<'_>]) -> Result<(usize, usize), ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let ids: Vec<&str> = rows.iter().map(|r| r.transaction_id).collect();
        let known: HashSet<String> = tx
            .query("SELECT transaction_id FROM payments WHERE transaction_id = ANY($1)", &[&ids])
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let fresh: Vec<&Row<'_>> = rows.iter().filter(|r| !known.contains(r.transaction_id)).collect();
        if fresh.is_empty() {
            tx.commit().await?;
            return Ok((0, 0));
        }
        // The entities' open cases, found or opened, in sorted order, each in
        // the queue of highest priority among its new payments (or kept in a
        // higher one it is in already).
        let mut entities: BTreeMap<(&str, &str), (&str, i32)> = BTreeMap::new();
        for r in &fresh {
            let e = entities.entry((r.entity_kind, r.entity_id)).or_insert((r.queue, r.priority));
            if r.priority > e.1 {
                *e = (r.queue, r.priority);
            }
        }
        let (mut kinds, mut entity_ids, mut queues, mut priorities) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((kind, id), (queue, priority)) in entities {
            kinds.push(kind);
            entity_ids.push(id);
            queues.push(queue);
            priorities.push(priority);
        }
        let cases = tx
            .query(
                "INSERT INTO cases (entity_kind, entity_id, queue, priority)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[])
                 ON CONFLICT (entity_kind, entity_id) WHERE status = 'open' DO UPDATE SET updated_at = now(),
                     queue = CASE WHEN excluded.priority > cases.priority THEN excluded.queue ELSE cases.queue END,
                     priority = greatest(cases.priority, excluded.priority)
                 RETURNING id, entity_kind, entity_id, (xmax = 0) AS opened",
                &[&kinds, &entity_ids, &queues, &priorities],
            )
            .await?;
        let mut case_of: HashMap<(String, String), i64> = HashMap::with_capacity(cases.len());
        let mut opened: Vec<i64> = Vec::new();
        for c in &cases {
            let id: i64 = c.get(0);
            if c.get::<_, bool>(3) {
                opened.push(id);
            }
            case_of.insert((c.get(1), c.get(2)), id);
        }
        let mut case_ids = Vec::with_capacity(fresh.len());
        for r in &fresh {
            let key = (r.entity_kind.to_owned(), r.entity_id.to_owned());
            // Every entity was upserted just above, so its case is there.
            case_ids.push(case_of.get(&key).copied().unwrap_or_default());
        }
        let tx_ids: Vec<&str> = fresh.iter().map(|r| r.transaction_id).collect();
        let json: Vec<&str> = fresh.iter().map(|r| r.json.as_str()).collect();
        let amounts: Vec<Decimal> = fresh.iter().map(|r| r.amount).collect();
        let currencies: Vec<&str> = fresh.iter().map(|r| r.currency).collect();
        let scores: Vec<f64> = fresh.iter().map(|r| r.score).collect();
        let event_at: Vec<DateTime<Utc>> = fresh.iter().map(|r| r.event_at).collect();
        let queues: Vec<&str> = fresh.iter().map(|r| r.queue).collect();
        let priorities: Vec<i32> = fresh.iter().map(|r| r.priority).collect();
        let declines: Vec<bool> = fresh.iter().map(|r| r.wanted_decline).collect();
        let hold_s = self.settings.hold.as_secs_f64();
        let added = tx
            .query(
                "INSERT INTO payments (transaction_id, case_id, decision, amount, currency, score, event_at, hold_until,
                                       queue, queue_priority, wanted_decline)
                 SELECT t, c, d::jsonb, a, cu, s, e, now() + make_interval(secs => $8), q, qp, wd
                 FROM unnest($1::text[], $2::int8[], $3::text[], $4::numeric[], $5::text[], $6::float8[],
                             $7::timestamptz[], $9::text[], $10::int4[], $11::bool[])
                   AS u(t, c, d, a, cu, s, e, q, qp, wd)
                 ON CONFLICT (transaction_id) DO NOTHING
                 RETURNING case_id, score",
                &[&tx_ids, &case_ids, &json, &amounts, &currencies, &scores, &event_at, &hold_s, &queues, &priorities, &declines],
            )
            .await?;
        let mut per_case: BTreeMap<i64, (i32, f64)> = BTreeMap::new();
        for a in &added {
            let e = per_case.entry(a.get(0)).or_insert((0, f64::MIN));
            e.0 += 1;
            e.1 = e.1.max(a.get(1));
        }
        let ids: Vec<i64> = per_case.keys().copied().collect();
        let counts: Vec<i32> = per_case.values().map(|v| v.0).collect();
        let tops: Vec<f64> = per_case.values().map(|v| v.1).collect();
        tx.execute(
            "UPDATE cases c SET payments = c.payments + u.n, top_score = greatest(c.top_score, u.s), updated_at = now()
             FROM unnest($1::int8[], $2::int4[], $3::float8[]) AS u(id, n, s) WHERE c.id = u.id",
            &[&ids, &counts, &tops],
        )
        .await?;
        // A case opened here for payments another ingester added first holds
        // nothing: it goes, so that no empty case reaches a queue.
        let emptied: HashSet<i64> = tx
            .query("DELETE FROM cases WHERE id = ANY($1) AND payments = 0 RETURNING id", &[&opened])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        opened.retain(|id| !emptied.contains(id));
        webhook::enqueue(&tx, &self.settings.webhooks, WebhookEvent::CaseOpened, &opened).await?;
        tx.commit().await?;
        Ok((added.len(), opened.len()))
    }
}
