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
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use vigil_core::{Action, Decision, Event};

use crate::error::ReviewError;
use crate::store::ReviewStore;

/// Times a batch is run again after a deadlock or serialisation failure.
const RETRIES: usize = 5;

/// Which of the event's entities owns a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Card,
    Account,
    Customer,
    Merchant,
    Terminal,
    Device,
}

impl Entity {
    pub const ALL: [Entity; 6] =
        [Entity::Card, Entity::Account, Entity::Customer, Entity::Merchant, Entity::Terminal, Entity::Device];

    /// The name stored as the case's `entity_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Card => "card",
            Entity::Account => "account",
            Entity::Customer => "customer",
            Entity::Merchant => "merchant",
            Entity::Terminal => "terminal",
            Entity::Device => "device",
        }
    }

    pub fn parse(s: &str) -> Option<Entity> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    fn of(self, e: &Event) -> Option<&str> {
        match self {
            Entity::Card => e.card_id.as_deref(),
            Entity::Account => e.account_id.as_deref(),
            Entity::Customer => e.customer_id.as_deref(),
            Entity::Merchant => e.merchant_id.as_deref(),
            Entity::Terminal => e.terminal_id.as_deref(),
            Entity::Device => e.device_id.as_deref(),
        }
    }
}

/// How review decisions become cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewSettings {
    /// The entity that owns a case. A payment without it gets a case of its
    /// own (`entity_kind` `transaction`).
    pub entity: Entity,
    /// How long a payment's money is held for review, from when the review
    /// store first receives it.
    pub hold: Duration,
}

impl Default for ReviewSettings {
    fn default() -> ReviewSettings {
        ReviewSettings { entity: Entity::Card, hold: Duration::from_secs(30 * 60) }
    }
}

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
        // The entities' open cases, found or opened, in sorted order.
        let mut entities: Vec<(&str, &str)> = fresh.iter().map(|r| (r.entity_kind, r.entity_id)).collect();
        entities.sort_unstable();
        entities.dedup();
        let (kinds, entity_ids): (Vec<&str>, Vec<&str>) = entities.into_iter().unzip();
        let cases = tx
            .query(
                "INSERT INTO cases (entity_kind, entity_id)
                 SELECT * FROM unnest($1::text[], $2::text[])
                 ON CONFLICT (entity_kind, entity_id) WHERE status = 'open' DO UPDATE SET updated_at = now()
                 RETURNING id, entity_kind, entity_id, (xmax = 0) AS opened",
                &[&kinds, &entity_ids],
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
        let hold_s = self.settings.hold.as_secs_f64();
        let added = tx
            .query(
                "INSERT INTO payments (transaction_id, case_id, decision, amount, currency, score, event_at, hold_until)
                 SELECT t, c, d::jsonb, a, cu, s, e, now() + make_interval(secs => $8)
                 FROM unnest($1::text[], $2::int8[], $3::text[], $4::numeric[], $5::text[], $6::float8[], $7::timestamptz[])
                   AS u(t, c, d, a, cu, s, e)
                 ON CONFLICT (transaction_id) DO NOTHING
                 RETURNING case_id, score",
                &[&tx_ids, &case_ids, &json, &amounts, &currencies, &scores, &event_at, &hold_s],
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
        let emptied = tx.execute("DELETE FROM cases WHERE id = ANY($1) AND payments = 0", &[&opened]).await?;
        tx.commit().await?;
        Ok((added.len(), opened.len() - emptied as usize))
    }
}
