//! Claim-next and leases: an analyst takes the most urgent open case nobody
//! holds and holds it for a while, renewable; a lease that runs out returns
//! the case to its queue without any sweeper.
//!
//! The claim is one statement: the candidate row is locked with
//! `FOR UPDATE SKIP LOCKED` (concurrent claimers pass each other instead of
//! queueing) and its lease is checked again on the row's newest version before
//! it is taken, so two analysts never hold one case.

use std::time::Duration;

use chrono::{DateTime, Utc};

use serde_json::json;

use crate::audit::{self, Audit};
use crate::error::ReviewError;
use crate::store::ReviewStore;

/// A case an analyst now holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub case: i64,
    pub entity_kind: String,
    pub entity_id: String,
    pub queue: String,
    pub payments: i32,
    /// The lease ends then, unless renewed.
    pub lease_until: DateTime<Utc>,
}

impl ReviewStore {
    /// Takes the most urgent open case of `queues` (every queue when empty)
    /// that nobody holds, that is not snoozed and not escalated, for `lease`;
    /// `None` when there is none.
    pub async fn claim_next(
        &self,
        analyst: &str,
        queues: &[&str],
        lease: Duration,
    ) -> Result<Option<Claim>, ReviewError> {
        self.claim_where(analyst, queues, lease, false).await
    }

    /// As [`ReviewStore::claim_next`], among the escalated cases: a lead's queue.
    pub async fn claim_next_escalated(
        &self,
        lead: &str,
        queues: &[&str],
        lease: Duration,
    ) -> Result<Option<Claim>, ReviewError> {
        self.claim_where(lead, queues, lease, true).await
    }

    async fn claim_where(
        &self,
        analyst: &str,
        queues: &[&str],
        lease: Duration,
        escalated: bool,
    ) -> Result<Option<Claim>, ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "UPDATE cases SET lease_holder = $1, lease_until = now() + make_interval(secs => $3), updated_at = now()
                 WHERE id = (
                     SELECT id FROM cases
                     WHERE status = 'open' AND (cardinality($2::text[]) = 0 OR queue = ANY($2))
                       AND escalated = $4
                       AND (lease_until IS NULL OR lease_until <= now())
                       AND (snoozed_until IS NULL OR snoozed_until <= now())
                     ORDER BY priority DESC, opened_at, id
                     LIMIT 1
                     FOR UPDATE SKIP LOCKED)
                   AND (lease_until IS NULL OR lease_until <= now())
                 RETURNING id, entity_kind, entity_id, queue, payments, lease_until",
                &[&analyst, &queues, &lease.as_secs_f64(), &escalated],
            )
            .await?;
        let claim = row.map(claim_of);
        if let Some(c) = &claim {
            audit::append(&tx, &[claimed(analyst, c, lease)]).await?;
        }
        tx.commit().await?;
        Ok(claim)
    }

    /// Takes one chosen case (from a search, a link, a bulk action) for
    /// `lease`: free, or already the analyst's (the lease is extended).
    /// Fails with [`ReviewError::HeldByOther`] when a colleague holds it.
    pub async fn claim(&self, case: i64, analyst: &str, lease: Duration) -> Result<Claim, ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "UPDATE cases SET lease_holder = $2, lease_until = now() + make_interval(secs => $3), updated_at = now()
                 WHERE id = $1 AND status = 'open'
                   AND (lease_until IS NULL OR lease_until <= now() OR lease_holder = $2)
                 RETURNING id, entity_kind, entity_id, queue, payments, lease_until",
                &[&case, &analyst, &lease.as_secs_f64()],
            )
            .await?;
        if let Some(row) = row {
            let claim = claim_of(row);
            audit::append(&tx, &[claimed(analyst, &claim, lease)]).await?;
            tx.commit().await?;
            return Ok(claim);
        }
        let row = tx.query_opt("SELECT status, lease_holder FROM cases WHERE id = $1", &[&case]).await?;
        Err(match row {
            None => ReviewError::NoSuchCase(case),
            Some(r) if r.get::<_, String>(0) == "closed" => ReviewError::CaseClosed(case),
            Some(r) => ReviewError::HeldByOther { case, holder: r.get::<_, Option<String>>(1).unwrap_or_default() },
        })
    }

    /// Extends the analyst's lease on `case` to `lease` from now. Fails with
    /// [`ReviewError::LeaseLost`] when the lease already ran out or is
    /// someone else's.
    pub async fn renew(&self, case: i64, analyst: &str, lease: Duration) -> Result<DateTime<Utc>, ReviewError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "UPDATE cases SET lease_until = now() + make_interval(secs => $3), updated_at = now()
                 WHERE id = $1 AND status = 'open' AND lease_holder = $2 AND lease_until > now()
                 RETURNING lease_until",
                &[&case, &analyst, &lease.as_secs_f64()],
            )
            .await?;
        row.map(|r| r.get(0)).ok_or_else(|| ReviewError::LeaseLost { case, analyst: analyst.to_owned() })
    }

    /// Gives `case` back to its queue before the lease ends.
    pub async fn release(&self, case: i64, analyst: &str) -> Result<(), ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "UPDATE cases SET lease_holder = NULL, lease_until = NULL, updated_at = now()
                 WHERE id = $1 AND lease_holder = $2 AND lease_until > now()",
                &[&case, &analyst],
            )
            .await?;
        if n == 0 {
            return Err(ReviewError::LeaseLost { case, analyst: analyst.to_owned() });
        }
        let entry =
            Audit { actor: analyst, action: "release", case: Some(case), transaction_id: None, detail: json!({}) };
        audit::append(&tx, &[entry]).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The audit row of a claim.
fn claimed<'a>(analyst: &'a str, c: &Claim, lease: Duration) -> Audit<'a> {
    Audit {
        actor: analyst,
        action: "claim",
        case: Some(c.case),
        transaction_id: None,
        detail: json!({"queue": c.queue, "lease_s": lease.as_secs()}),
    }
}

fn claim_of(r: tokio_postgres::Row) -> Claim {
    Claim {
        case: r.get(0),
        entity_kind: r.get(1),
        entity_id: r.get(2),
        queue: r.get(3),
        payments: r.get(4),
        lease_until: r.get(5),
    }
}
