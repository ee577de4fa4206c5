//! Verdicts and deadlines: each payment under review ends in exactly one
//! resolution, `release` (capture the money) or `stop` (void or refund it),
//! written in the same transaction as what caused it, into the `resolutions`
//! outbox that the publisher sends on.
//!
//! A payment is resolved once: by the analyst holding its case (`fraud` stops
//! it, `genuine` releases it), or, when its hold runs out first, by the
//! pipeline's deadline policy. The `resolution IS NULL` guard on the payment's
//! row makes the two exclusive. A case closes when its last payment is
//! resolved; the check compares the case's own payment counter, so a payment
//! that joins the case meanwhile keeps it open.

use chrono::{DateTime, Utc};
use vigil_core::Verdict;

use crate::error::ReviewError;
use crate::store::ReviewStore;

/// What happens to the held money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Capture: the payment goes through.
    Release,
    /// Void or refund: the payment does not go through.
    Stop,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Release => "release",
            Action::Stop => "stop",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        [Action::Release, Action::Stop].into_iter().find(|a| a.as_str() == s)
    }

    /// What an analyst's verdict does to the money.
    pub fn of(verdict: Verdict) -> Action {
        match verdict {
            Verdict::Fraud => Action::Stop,
            Verdict::Genuine => Action::Release,
        }
    }
}

/// A payment's resolution, as written to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// The outbox's order: resolutions are published in `seq` order.
    pub seq: i64,
    pub transaction_id: String,
    pub case: i64,
    pub action: Action,
    /// The analyst, or `deadline`.
    pub resolved_by: String,
    pub verdict: Option<Verdict>,
    pub resolved_at: DateTime<Utc>,
    /// Whether the payment's case closed with it (its last open payment).
    pub case_closed: bool,
}

/// Who resolves a payment whose hold ran out.
pub const DEADLINE: &str = "deadline";

/// Closes the cases of `$1` (ids) whose every payment is resolved. The count
/// is held against the case's own payment counter, read from the row's newest
/// version: a payment that joined the case after this statement's snapshot
/// keeps it open.
const CLOSE_RESOLVED: &str = "UPDATE cases c SET status = 'closed', closed_at = now(), updated_at = now(),
        lease_holder = NULL, lease_until = NULL
     WHERE c.id = ANY($1) AND c.status = 'open'
       AND c.payments = (SELECT count(*) FROM payments p WHERE p.case_id = c.id AND p.resolution IS NOT NULL)
     RETURNING c.id";

impl ReviewStore {
    /// Records `analyst`'s verdict on one payment of `case`, which the analyst
    /// must hold, and resolves the payment by it. Fails with
    /// [`ReviewError::LeaseLost`] when the lease ran out, and
    /// [`ReviewError::AlreadyResolved`] when the payment is resolved already
    /// (by a colleague's verdict or its deadline): nothing is changed then.
    pub async fn verdict(
        &self,
        case: i64,
        analyst: &str,
        transaction_id: &str,
        verdict: Verdict,
    ) -> Result<Resolution, ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The case's row lock: no payment joins it and no one else acts on it
        // until this commits.
        let held = tx
            .query_opt(
                "SELECT id FROM cases WHERE id = $1 AND status = 'open' AND lease_holder = $2 AND lease_until > now()
                 FOR UPDATE",
                &[&case, &analyst],
            )
            .await?;
        if held.is_none() {
            let status = tx.query_opt("SELECT status FROM cases WHERE id = $1", &[&case]).await?;
            return Err(match status.map(|r| r.get::<_, String>(0)) {
                None => ReviewError::NoSuchCase(case),
                Some(s) if s == "closed" => ReviewError::CaseClosed(case),
                Some(_) => ReviewError::LeaseLost { case, analyst: analyst.to_owned() },
            });
        }
        let action = Action::of(verdict);
        let updated = tx
            .query_opt(
                "UPDATE payments SET verdict = $3, verdict_by = $4, verdict_at = now(), resolution = $5
                 WHERE transaction_id = $1 AND case_id = $2 AND resolution IS NULL
                 RETURNING transaction_id",
                &[&transaction_id, &case, &verdict.name(), &analyst, &action.as_str()],
            )
            .await?;
        if updated.is_none() {
            let row = tx
                .query_opt(
                    "SELECT coalesce(r.resolved_by, ''), coalesce(r.action, '') FROM payments p
                     LEFT JOIN resolutions r USING (transaction_id) WHERE p.transaction_id = $1 AND p.case_id = $2",
                    &[&transaction_id, &case],
                )
                .await?;
            return Err(match row {
                None => ReviewError::NoSuchPayment { case, transaction_id: transaction_id.to_owned() },
                Some(r) => ReviewError::AlreadyResolved {
                    transaction_id: transaction_id.to_owned(),
                    by: r.get(0),
                    action: r.get(1),
                },
            });
        }
        let row = tx
            .query_one(
                "INSERT INTO resolutions (transaction_id, case_id, action, resolved_by, verdict)
                 VALUES ($1, $2, $3, $4, $5) RETURNING seq, resolved_at",
                &[&transaction_id, &case, &action.as_str(), &analyst, &verdict.name()],
            )
            .await?;
        let closed = tx.query(CLOSE_RESOLVED, &[&vec![case]]).await?;
        tx.commit().await?;
        Ok(Resolution {
            seq: row.get(0),
            transaction_id: transaction_id.to_owned(),
            case,
            action,
            resolved_by: analyst.to_owned(),
            verdict: Some(verdict),
            resolved_at: row.get(1),
            case_closed: !closed.is_empty(),
        })
    }

    /// Resolves by `action` up to `most` payments whose hold has run out
    /// without a verdict, oldest deadline first, and closes the cases they
    /// complete; returns what it resolved. It never waits for a lock: a
    /// payment whose case an analyst is acting on right now is left to the
    /// next call (so it cannot deadlock with [`ReviewStore::verdict`], which
    /// locks the case first), and several review servers may run it at once.
    pub async fn resolve_due(&self, action: Action, most: i64) -> Result<Vec<Resolution>, ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "WITH due AS (
                     SELECT p.transaction_id FROM payments p JOIN cases c ON c.id = p.case_id
                     WHERE p.resolution IS NULL AND p.hold_until <= now()
                     ORDER BY p.hold_until LIMIT $2 FOR UPDATE OF p, c SKIP LOCKED),
                 done AS (
                     UPDATE payments p SET resolution = $1 FROM due
                     WHERE p.transaction_id = due.transaction_id
                     RETURNING p.transaction_id, p.case_id, p.hold_until)
                 INSERT INTO resolutions (transaction_id, case_id, action, resolved_by)
                 SELECT transaction_id, case_id, $1, $3 FROM done ORDER BY hold_until, transaction_id
                 RETURNING seq, transaction_id, case_id, resolved_at",
                &[&action.as_str(), &most, &DEADLINE],
            )
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut resolved: Vec<Resolution> = rows
            .iter()
            .map(|r| Resolution {
                seq: r.get(0),
                transaction_id: r.get(1),
                case: r.get(2),
                action,
                resolved_by: DEADLINE.to_owned(),
                verdict: None,
                resolved_at: r.get(3),
                case_closed: false,
            })
            .collect();
        let mut cases: Vec<i64> = resolved.iter().map(|r| r.case).collect();
        cases.sort_unstable();
        cases.dedup();
        let closed: Vec<i64> = tx.query(CLOSE_RESOLVED, &[&cases]).await?.iter().map(|r| r.get(0)).collect();
        tx.commit().await?;
        for r in &mut resolved {
            r.case_closed = closed.contains(&r.case);
        }
        resolved.sort_by_key(|r| r.seq);
        Ok(resolved)
    }
}
