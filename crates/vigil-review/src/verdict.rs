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
use deadpool_postgres::Transaction;
use rust_decimal::Decimal;
use vigil_core::pipeline::{HoldAction, WebhookDef, WebhookEvent};
use vigil_core::Verdict;

use serde_json::json;

use crate::audit::{self, Audit};
use crate::error::ReviewError;
use crate::store::ReviewStore;
use crate::webhook;

/// A payment's resolution, as written to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// The outbox's order: resolutions are published in `seq` order.
    pub seq: i64,
    pub transaction_id: String,
    pub case: i64,
    pub action: HoldAction,
    /// The analyst, or `deadline`.
    pub resolved_by: String,
    /// The second analyst, under four-eyes.
    pub confirmed_by: Option<String>,
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

/// Puts each of the open cases `$1` (ids) in the queue of highest priority
/// among its payments not resolved yet.
const REQUEUE: &str = "UPDATE cases c SET (queue, priority) = (
         SELECT p.queue, p.queue_priority FROM payments p WHERE p.case_id = c.id AND p.resolution IS NULL
         ORDER BY p.queue_priority DESC, p.received_at LIMIT 1)
     WHERE c.id = ANY($1) AND c.status = 'open'
       AND EXISTS (SELECT 1 FROM payments p WHERE p.case_id = c.id AND p.resolution IS NULL)";

/// What a verdict did.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdicted {
    /// The payment is resolved by it.
    Resolved(Resolution),
    /// The four-eyes policy holds it for a second analyst's
    /// [`ReviewStore::confirm`]; the money waits (until its deadline).
    Proposed { transaction_id: String, verdict: Verdict, by: String },
}

impl Verdicted {
    /// The resolution, when the verdict made one.
    pub fn resolution(&self) -> Option<&Resolution> {
        match self {
            Verdicted::Resolved(r) => Some(r),
            Verdicted::Proposed { .. } => None,
        }
    }
}

/// A verdict waiting for a second analyst.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub case: i64,
    pub transaction_id: String,
    pub verdict: Verdict,
    pub by: String,
    pub at: DateTime<Utc>,
    pub amount: Decimal,
    pub currency: String,
    pub hold_until: DateTime<Utc>,
}

/// Why `transaction_id` cannot be resolved now: resolved already, or not in `case`.
async fn not_open(tx: &Transaction<'_>, case: i64, transaction_id: &str) -> Result<ReviewError, ReviewError> {
    let row = tx
        .query_opt(
            "SELECT coalesce(r.resolved_by, ''), coalesce(r.action, '') FROM payments p
             LEFT JOIN resolutions r USING (transaction_id) WHERE p.transaction_id = $1 AND p.case_id = $2",
            &[&transaction_id, &case],
        )
        .await?;
    Ok(match row {
        None => ReviewError::NoSuchPayment { case, transaction_id: transaction_id.to_owned() },
        Some(r) => {
            ReviewError::AlreadyResolved { transaction_id: transaction_id.to_owned(), by: r.get(0), action: r.get(1) }
        }
    })
}

/// Resolves one open payment of `case` (whose row lock the caller holds) by
/// `by`'s verdict, confirmed by `confirmed_by` under four-eyes; requeues or
/// closes the case.
async fn resolve(
    tx: &Transaction<'_>,
    webhooks: &[WebhookDef],
    case: i64,
    transaction_id: &str,
    verdict: Verdict,
    by: &str,
    confirmed_by: Option<&str>,
) -> Result<Resolution, ReviewError> {
    let action = HoldAction::of(verdict);
    let updated = tx
        .query_opt(
            "UPDATE payments SET verdict = $3, verdict_by = $4, verdict_at = now(), resolution = $5, confirmed_by = $6
             WHERE transaction_id = $1 AND case_id = $2 AND resolution IS NULL
             RETURNING transaction_id",
            &[&transaction_id, &case, &verdict.name(), &by, &action.as_str(), &confirmed_by],
        )
        .await?;
    if updated.is_none() {
        return Err(not_open(tx, case, transaction_id).await?);
    }
    let row = tx
        .query_one(
            "INSERT INTO resolutions (transaction_id, case_id, action, resolved_by, verdict, confirmed_by)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq, resolved_at",
            &[&transaction_id, &case, &action.as_str(), &by, &verdict.name(), &confirmed_by],
        )
        .await?;
    tx.execute(REQUEUE, &[&vec![case]]).await?;
    let closed = tx.query(CLOSE_RESOLVED, &[&vec![case]]).await?;
    if !closed.is_empty() {
        webhook::enqueue(tx, webhooks, WebhookEvent::CaseResolved, &[case]).await?;
    }
    Ok(Resolution {
        seq: row.get(0),
        transaction_id: transaction_id.to_owned(),
        case,
        action,
        resolved_by: by.to_owned(),
        confirmed_by: confirmed_by.map(str::to_owned),
        verdict: Some(verdict),
        resolved_at: row.get(1),
        case_closed: !closed.is_empty(),
    })
}

impl ReviewStore {
    /// Records `analyst`'s verdict on one payment of `case`, which the analyst
    /// must hold. The verdict resolves the payment, unless the four-eyes
    /// policy wants a second analyst: then it is proposed, and
    /// [`ReviewStore::confirm`] resolves it. Fails with
    /// [`ReviewError::LeaseLost`] when the lease ran out,
    /// [`ReviewError::AlreadyResolved`] when the payment is resolved already
    /// (by a colleague's verdict or its deadline), and
    /// [`ReviewError::AwaitingSecond`] when a colleague's proposal waits for
    /// confirmation: nothing is changed then. The proposer may change their
    /// own proposal.
    pub async fn verdict(
        &self,
        case: i64,
        analyst: &str,
        transaction_id: &str,
        verdict: Verdict,
    ) -> Result<Verdicted, ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The case's row lock: no payment joins it and no one else acts on it
        // until this commits.
        self.lock_held(&tx, case, analyst).await?;
        let payment = tx
            .query_opt(
                "SELECT amount, wanted_decline, proposed, proposed_by FROM payments
                 WHERE transaction_id = $1 AND case_id = $2 AND resolution IS NULL",
                &[&transaction_id, &case],
            )
            .await?;
        let Some(payment) = payment else {
            return Err(not_open(&tx, case, transaction_id).await?);
        };
        let (proposed, proposed_by): (Option<String>, Option<String>) = (payment.get(2), payment.get(3));
        if let (Some(p), Some(by)) = (proposed, proposed_by) {
            if by != analyst {
                return Err(ReviewError::AwaitingSecond { transaction_id: transaction_id.to_owned(), verdict: p, by });
            }
        }
        if self.settings.four_eyes.needed(payment.get(0), payment.get(1), verdict) {
            tx.execute(
                "UPDATE payments SET proposed = $2, proposed_by = $3, proposed_at = now() WHERE transaction_id = $1",
                &[&transaction_id, &verdict.name(), &analyst],
            )
            .await?;
            let detail = json!({"verdict": verdict.name()});
            let entry = Audit {
                actor: analyst,
                action: "propose",
                case: Some(case),
                transaction_id: Some(transaction_id),
                detail,
            };
            audit::append(&tx, &[entry]).await?;
            tx.commit().await?;
            return Ok(Verdicted::Proposed {
                transaction_id: transaction_id.to_owned(),
                verdict,
                by: analyst.to_owned(),
            });
        }
        let resolution = resolve(&tx, &self.settings.webhooks, case, transaction_id, verdict, analyst, None).await?;
        let detail =
            json!({"verdict": verdict.name(), "resolution": resolution.action.as_str(), "seq": resolution.seq});
        let entry =
            Audit { actor: analyst, action: "verdict", case: Some(case), transaction_id: Some(transaction_id), detail };
        audit::append(&tx, &[entry]).await?;
        tx.commit().await?;
        Ok(Verdicted::Resolved(resolution))
    }

    /// A second analyst's answer to a proposed verdict: `agree` resolves the
    /// payment by it (recorded as the proposer's verdict, confirmed by
    /// `analyst`); otherwise the proposal is withdrawn, with a note on the
    /// case, and the payment waits for a verdict again. The second analyst
    /// need not hold the case, but must not be the proposer
    /// ([`ReviewError::SameAnalyst`]).
    pub async fn confirm(
        &self,
        analyst: &str,
        transaction_id: &str,
        agree: bool,
    ) -> Result<Option<Resolution>, ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let case: i64 = tx
            .query_opt("SELECT case_id FROM payments WHERE transaction_id = $1", &[&transaction_id])
            .await?
            .ok_or_else(|| ReviewError::NoSuchTransaction(transaction_id.to_owned()))?
            .get(0);
        // The case's lock first, as a verdict takes it: no deadlock between them.
        tx.execute("SELECT id FROM cases WHERE id = $1 FOR UPDATE", &[&case]).await?;
        let row = tx
            .query_opt(
                "SELECT proposed, proposed_by FROM payments
                 WHERE transaction_id = $1 AND resolution IS NULL AND proposed IS NOT NULL",
                &[&transaction_id],
            )
            .await?;
        let Some(row) = row else {
            let resolved = tx
                .query_opt(
                    "SELECT 1 FROM payments WHERE transaction_id = $1 AND resolution IS NOT NULL",
                    &[&transaction_id],
                )
                .await?
                .is_some();
            return Err(if resolved {
                not_open(&tx, case, transaction_id).await?
            } else {
                ReviewError::NothingToConfirm(transaction_id.to_owned())
            });
        };
        let (proposed, by): (String, String) = (row.get(0), row.get(1));
        if by == analyst {
            return Err(ReviewError::SameAnalyst { transaction_id: transaction_id.to_owned(), analyst: by });
        }
        if !agree {
            tx.execute(
                "UPDATE payments SET proposed = NULL, proposed_by = NULL, proposed_at = NULL WHERE transaction_id = $1",
                &[&transaction_id],
            )
            .await?;
            let body = format!("{analyst} did not confirm {by}'s verdict `{proposed}` on {transaction_id}");
            tx.execute("INSERT INTO notes (case_id, author, body) VALUES ($1, $2, $3)", &[&case, &analyst, &body])
                .await?;
            let detail = json!({"verdict": proposed, "proposed_by": by});
            let entry = Audit {
                actor: analyst,
                action: "reject",
                case: Some(case),
                transaction_id: Some(transaction_id),
                detail,
            };
            audit::append(&tx, &[entry]).await?;
            tx.commit().await?;
            return Ok(None);
        }
        let verdict = Verdict::parse(&proposed).ok_or_else(|| ReviewError::Snapshot {
            transaction_id: transaction_id.to_owned(),
            message: format!("proposed verdict `{proposed}`"),
        })?;
        let resolution =
            resolve(&tx, &self.settings.webhooks, case, transaction_id, verdict, &by, Some(analyst)).await?;
        let detail = json!({
            "verdict": verdict.name(), "proposed_by": by, "resolution": resolution.action.as_str(), "seq": resolution.seq
        });
        let entry =
            Audit { actor: analyst, action: "confirm", case: Some(case), transaction_id: Some(transaction_id), detail };
        audit::append(&tx, &[entry]).await?;
        tx.commit().await?;
        Ok(Some(resolution))
    }

    /// Verdicts waiting for a second analyst, oldest first; at most `most`.
    pub async fn proposals(&self, most: i64) -> Result<Vec<Proposal>, ReviewError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT case_id, transaction_id, proposed, proposed_by, proposed_at, amount, currency, hold_until
                 FROM payments WHERE proposed IS NOT NULL AND resolution IS NULL
                 ORDER BY proposed_at, transaction_id LIMIT $1",
                &[&most],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Proposal {
                    case: r.get(0),
                    transaction_id: r.get(1),
                    verdict: Verdict::parse(r.get(2))?,
                    by: r.get(3),
                    at: r.get(4),
                    amount: r.get(5),
                    currency: r.get(6),
                    hold_until: r.get(7),
                })
            })
            .collect())
    }

    /// Resolves by `action` up to `most` payments whose hold has run out
    /// without a verdict, oldest deadline first, and closes the cases they
    /// complete; returns what it resolved. It never waits for a lock: a
    /// payment whose case an analyst is acting on right now is left to the
    /// next call (so it cannot deadlock with [`ReviewStore::verdict`], which
    /// locks the case first), and several review servers may run it at once.
    pub async fn resolve_due(&self, action: HoldAction, most: i64) -> Result<Vec<Resolution>, ReviewError> {
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
                confirmed_by: None,
                verdict: None,
                resolved_at: r.get(3),
                case_closed: false,
            })
            .collect();
        let mut cases: Vec<i64> = resolved.iter().map(|r| r.case).collect();
        cases.sort_unstable();
        cases.dedup();
        tx.execute(REQUEUE, &[&cases]).await?;
        let entries: Vec<Audit<'_>> = resolved
            .iter()
            .map(|r| Audit {
                actor: DEADLINE,
                action: "deadline",
                case: Some(r.case),
                transaction_id: Some(r.transaction_id.as_str()),
                detail: json!({"resolution": action.as_str(), "seq": r.seq}),
            })
            .collect();
        audit::append(&tx, &entries).await?;
        let closed: Vec<i64> = tx.query(CLOSE_RESOLVED, &[&cases]).await?.iter().map(|r| r.get(0)).collect();
        webhook::enqueue(&tx, &self.settings.webhooks, WebhookEvent::CaseResolved, &closed).await?;
        tx.commit().await?;
        for r in &mut resolved {
            r.case_closed = closed.contains(&r.case);
        }
        resolved.sort_by_key(|r| r.seq);
        Ok(resolved)
    }
}
