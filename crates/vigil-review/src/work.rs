//! Working a case beyond its verdicts: notes, tags, snoozing it until later,
//! escalating it to a lead, an entity's history, and actions on a selection
//! of cases at once.
//!
//! A note or a tag may be added by anyone who can see the case; snoozing
//! and escalating change who works it next, so they take the lease, as a
//! verdict does, and give it up.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use vigil_core::Verdict;

use serde_json::json;

use crate::audit::{self, Audit};
use crate::error::ReviewError;
use crate::store::ReviewStore;
use crate::verdict::Verdicted;

/// Longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 10_000;
/// Longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 40;

/// A note on a case.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub id: i64,
    pub author: String,
    pub body: String,
    pub at: DateTime<Utc>,
}

/// One case of an entity's history.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseSummary {
    pub id: i64,
    pub status: String,
    pub queue: String,
    pub payments: i32,
    pub top_score: f64,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// Payments of the case with each verdict, and those stopped.
    pub fraud: i64,
    pub genuine: i64,
    pub stopped: i64,
    /// What the case's payments add up to, per currency.
    pub amounts: Vec<(String, Decimal)>,
}

/// An action on a selection of cases.
#[derive(Debug, Clone, PartialEq)]
pub enum Bulk {
    /// The same verdict on every open payment of each case (each case taken
    /// for the moment of it, when nobody else holds it).
    Verdict(Verdict),
    Tag(String),
    Snooze(DateTime<Utc>),
}

/// What a bulk action did to one case.
#[derive(Debug)]
pub struct BulkOutcome {
    pub case: i64,
    /// Verdicts that resolved a payment, and those held for a second analyst.
    pub resolved: usize,
    pub proposed: usize,
    /// Why the case (or one of its payments) was left as it was.
    pub error: Option<ReviewError>,
}

fn check_tag(tag: &str) -> Result<(), ReviewError> {
    let ok = !tag.is_empty()
        && tag.chars().count() <= MAX_TAG_CHARS
        && tag.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ReviewError::Invalid(format!("tag `{tag}`: 1 to {MAX_TAG_CHARS} letters, digits, `_`, `-`, `:` or `.`")))
    }
}

impl ReviewStore {
    /// Adds a note to `case`.
    pub async fn note(&self, case: i64, author: &str, body: &str) -> Result<Note, ReviewError> {
        let body = body.trim();
        let chars = body.chars().count();
        if chars == 0 || chars > MAX_NOTE_CHARS {
            return Err(ReviewError::Invalid(format!("a note holds 1 to {MAX_NOTE_CHARS} characters, not {chars}")));
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "INSERT INTO notes (case_id, author, body) SELECT id, $2, $3 FROM cases WHERE id = $1
                 RETURNING id, created_at",
                &[&case, &author, &body],
            )
            .await?
            .ok_or(ReviewError::NoSuchCase(case))?;
        let detail = json!({"note": row.get::<_, i64>(0)});
        audit::append(&tx, &[Audit { actor: author, action: "note", case: Some(case), transaction_id: None, detail }])
            .await?;
        tx.commit().await?;
        Ok(Note { id: row.get(0), author: author.to_owned(), body: body.to_owned(), at: row.get(1) })
    }

    /// The notes of `case`, oldest first.
    pub async fn notes(&self, case: i64) -> Result<Vec<Note>, ReviewError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, author, body, created_at FROM notes WHERE case_id = $1 ORDER BY created_at, id",
                &[&case],
            )
            .await?;
        Ok(rows.iter().map(|r| Note { id: r.get(0), author: r.get(1), body: r.get(2), at: r.get(3) }).collect())
    }

    /// Tags `case`; `false` when it had the tag already.
    pub async fn tag(&self, case: i64, analyst: &str, tag: &str) -> Result<bool, ReviewError> {
        check_tag(tag)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if tx.query_opt("SELECT 1 FROM cases WHERE id = $1", &[&case]).await?.is_none() {
            return Err(ReviewError::NoSuchCase(case));
        }
        let n = tx
            .execute(
                "INSERT INTO case_tags (case_id, tag, added_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&case, &tag, &analyst],
            )
            .await?;
        if n == 1 {
            let detail = json!({"tag": tag});
            audit::append(
                &tx,
                &[Audit { actor: analyst, action: "tag", case: Some(case), transaction_id: None, detail }],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Removes a tag; `false` when the case did not have it.
    pub async fn untag(&self, case: i64, analyst: &str, tag: &str) -> Result<bool, ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let n = tx.execute("DELETE FROM case_tags WHERE case_id = $1 AND tag = $2", &[&case, &tag]).await?;
        if n == 1 {
            let detail = json!({"tag": tag});
            audit::append(
                &tx,
                &[Audit { actor: analyst, action: "untag", case: Some(case), transaction_id: None, detail }],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// The tags of `case`, in name order.
    pub async fn tags(&self, case: i64) -> Result<Vec<String>, ReviewError> {
        let client = self.pool.get().await?;
        let rows = client.query("SELECT tag FROM case_tags WHERE case_id = $1 ORDER BY tag", &[&case]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Puts `case`, which `analyst` holds, aside until `until` and gives up
    /// the lease: nobody's claim-next returns it before then. Refused when
    /// `until` is past, or after the hold of one of its payments runs out
    /// (the deadline would decide while the case sleeps).
    pub async fn snooze(&self, case: i64, analyst: &str, until: DateTime<Utc>) -> Result<(), ReviewError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        self.lock_held(&tx, case, analyst).await?;
        let first_hold: Option<DateTime<Utc>> = tx
            .query_one("SELECT min(hold_until) FROM payments WHERE case_id = $1 AND resolution IS NULL", &[&case])
            .await?
            .get(0);
        if until <= Utc::now() {
            return Err(ReviewError::Invalid(format!("snooze until {until}: that is not in the future")));
        }
        if let Some(hold) = first_hold.filter(|h| until >= *h) {
            return Err(ReviewError::Invalid(format!(
                "snooze until {until}: a payment's hold runs out at {hold}, before the case would wake"
            )));
        }
        tx.execute(
            "UPDATE cases SET snoozed_until = $2, lease_holder = NULL, lease_until = NULL, updated_at = now()
             WHERE id = $1",
            &[&case, &until],
        )
        .await?;
        let detail = json!({"until": until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)});
        audit::append(
            &tx,
            &[Audit { actor: analyst, action: "snooze", case: Some(case), transaction_id: None, detail }],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Hands `case`, which `analyst` holds, to the leads with `reason` (kept
    /// as a note), and gives up the lease: it leaves the analysts' claim-next
    /// for [`ReviewStore::claim_next_escalated`].
    pub async fn escalate(&self, case: i64, analyst: &str, reason: &str) -> Result<(), ReviewError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(ReviewError::Invalid("escalating needs a reason for the lead".into()));
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        self.lock_held(&tx, case, analyst).await?;
        tx.execute(
            "UPDATE cases SET escalated = true, escalated_by = $2, escalated_at = now(),
                 lease_holder = NULL, lease_until = NULL, updated_at = now()
             WHERE id = $1",
            &[&case, &analyst],
        )
        .await?;
        let body = format!("escalated: {reason}");
        tx.execute("INSERT INTO notes (case_id, author, body) VALUES ($1, $2, $3)", &[&case, &analyst, &body]).await?;
        let detail = json!({"reason": reason});
        audit::append(
            &tx,
            &[Audit { actor: analyst, action: "escalate", case: Some(case), transaction_id: None, detail }],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Locks `case` for the transaction when `analyst` holds its lease.
    pub(crate) async fn lock_held(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        case: i64,
        analyst: &str,
    ) -> Result<(), ReviewError> {
        let held = tx
            .query_opt(
                "SELECT id FROM cases WHERE id = $1 AND status = 'open' AND lease_holder = $2 AND lease_until > now()
                 FOR UPDATE",
                &[&case, &analyst],
            )
            .await?;
        if held.is_some() {
            return Ok(());
        }
        let status = tx.query_opt("SELECT status FROM cases WHERE id = $1", &[&case]).await?;
        Err(match status.map(|r| r.get::<_, String>(0)) {
            None => ReviewError::NoSuchCase(case),
            Some(s) if s == "closed" => ReviewError::CaseClosed(case),
            Some(_) => ReviewError::LeaseLost { case, analyst: analyst.to_owned() },
        })
    }

    /// The cases of an entity (`card` and its id, by default), newest first,
    /// at most `most`: what an analyst weighs a payment against.
    pub async fn history(
        &self,
        entity_kind: &str,
        entity_id: &str,
        most: i64,
    ) -> Result<Vec<CaseSummary>, ReviewError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT c.id, c.status, c.queue, c.payments, c.top_score, c.opened_at, c.closed_at,
                        count(*) FILTER (WHERE p.verdict = 'fraud'),
                        count(*) FILTER (WHERE p.verdict = 'genuine'),
                        count(*) FILTER (WHERE p.resolution = 'stop'),
                        coalesce((SELECT array_agg(currency ORDER BY currency) FROM (
                            SELECT currency FROM payments WHERE case_id = c.id GROUP BY currency) s), '{}'),
                        coalesce((SELECT array_agg(total ORDER BY currency) FROM (
                            SELECT currency, sum(amount) AS total FROM payments WHERE case_id = c.id GROUP BY currency) s), '{}')
                 FROM cases c LEFT JOIN payments p ON p.case_id = c.id
                 WHERE c.entity_kind = $1 AND c.entity_id = $2
                 GROUP BY c.id ORDER BY c.opened_at DESC, c.id DESC LIMIT $3",
                &[&entity_kind, &entity_id, &most],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let currencies: Vec<String> = r.get(10);
                let totals: Vec<Decimal> = r.get(11);
                CaseSummary {
                    id: r.get(0),
                    status: r.get(1),
                    queue: r.get(2),
                    payments: r.get(3),
                    top_score: r.get(4),
                    opened_at: r.get(5),
                    closed_at: r.get(6),
                    fraud: r.get(7),
                    genuine: r.get(8),
                    stopped: r.get(9),
                    amounts: currencies.into_iter().zip(totals).collect(),
                }
            })
            .collect())
    }

    /// Applies `action` to each of `cases`, one at a time, and says what
    /// happened to each: a case a colleague holds, or closed meanwhile, is
    /// left with the reason, and the others go on. A verdict or a snooze
    /// takes the case (free, or the analyst's already) for the moment.
    pub async fn bulk(&self, analyst: &str, cases: &[i64], action: &Bulk) -> Vec<BulkOutcome> {
        let mut out = Vec::with_capacity(cases.len());
        for &case in cases {
            let mut o = BulkOutcome { case, resolved: 0, proposed: 0, error: None };
            if let Err(e) = self.bulk_one(analyst, case, action, &mut o).await {
                o.error = Some(e);
            }
            out.push(o);
        }
        out
    }

    async fn bulk_one(&self, analyst: &str, case: i64, action: &Bulk, o: &mut BulkOutcome) -> Result<(), ReviewError> {
        match action {
            Bulk::Tag(tag) => self.tag(case, analyst, tag).await.map(|_| ()),
            Bulk::Snooze(until) => {
                self.claim(case, analyst, self.settings.lease).await?;
                let snoozed = self.snooze(case, analyst, *until).await;
                if snoozed.is_err() {
                    self.let_go(case, analyst).await?;
                }
                snoozed
            }
            Bulk::Verdict(verdict) => {
                self.claim(case, analyst, self.settings.lease).await?;
                let given = self.verdicts_on_open_payments(case, analyst, *verdict, o).await;
                // The case goes back to its queue whatever happened (proposals
                // wait, or a payment was refused), never held by a bulk action.
                self.let_go(case, analyst).await?;
                given
            }
        }
    }

    async fn verdicts_on_open_payments(
        &self,
        case: i64,
        analyst: &str,
        verdict: Verdict,
        o: &mut BulkOutcome,
    ) -> Result<(), ReviewError> {
        let view = self.case(case).await?;
        for p in view.payments.iter().filter(|p| p.resolution.is_none()) {
            match self.verdict(case, analyst, &p.transaction_id, verdict).await? {
                Verdicted::Resolved(_) => o.resolved += 1,
                Verdicted::Proposed { .. } => o.proposed += 1,
            }
        }
        Ok(())
    }

    /// Gives the case back if `analyst` still holds it (a closed case has no
    /// lease left to give).
    async fn let_go(&self, case: i64, analyst: &str) -> Result<(), ReviewError> {
        match self.release(case, analyst).await {
            Ok(()) | Err(ReviewError::LeaseLost { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
