//! Reading cases in lists: the queues with their counts, a queue's cases in
//! the order claim-next takes them (keyset pages, never `OFFSET`), and the
//! cases a card, terminal or transaction appears in.

use chrono::{DateTime, TimeZone, Utc};
use tokio_postgres::Row;

use vigil_core::pipeline::DEFAULT_QUEUE;

use crate::error::ReviewError;
use crate::store::ReviewStore;

/// Most rows one page gives.
pub const MAX_PAGE: i64 = 200;

/// Where a queue's counts stop: a count of this many means this many or more.
pub const COUNT_LIMIT: i64 = 1_000;

/// One queue as an analyst sees it: what waits there.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueCount {
    pub name: String,
    pub priority: i32,
    /// Open cases in the queue, those nobody holds and that are not snoozed
    /// (what claim-next can give), and the escalated ones (a lead's); each
    /// at most [`COUNT_LIMIT`].
    pub open: i64,
    pub claimable: i64,
    pub escalated: i64,
    /// When the hold of the case claim-next would give first (the queue's
    /// most urgent, oldest case) runs out.
    pub next_deadline: Option<DateTime<Utc>>,
}

/// A case in a list.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseRow {
    pub id: i64,
    pub entity_kind: String,
    pub entity_id: String,
    pub status: String,
    pub queue: String,
    pub priority: i32,
    pub payments: i32,
    pub top_score: f64,
    pub lease_holder: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub snoozed_until: Option<DateTime<Utc>>,
    pub escalated: bool,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// The earliest hold deadline among its payments not resolved yet.
    pub next_deadline: Option<DateTime<Utc>>,
}

/// Which cases a list shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaseFilter {
    /// One queue, or every queue.
    pub queue: Option<String>,
    /// Closed cases (newest first) instead of open ones (in claim order).
    pub closed: bool,
    /// Only escalated cases (or only the others), or both.
    pub escalated: Option<bool>,
}

/// Where a page of cases starts: after this case, in the list's order.
/// Written as text (`priority.opened_us.id` for open cases, `closed_us.id`
/// for closed ones) so that a page link carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor(String);

impl Cursor {
    pub fn parse(text: &str) -> Result<Cursor, ReviewError> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text.split('.').all(|p| {
                let digits = p.strip_prefix('-').unwrap_or(p);
                !digits.is_empty() && digits.len() <= 19 && digits.bytes().all(|b| b.is_ascii_digit())
            });
        if ok {
            Ok(Cursor(text.to_owned()))
        } else {
            Err(ReviewError::Invalid(format!("cursor `{text}`: not one this server gave")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parts(&self) -> Vec<i64> {
        self.0.split('.').filter_map(|p| p.parse().ok()).collect()
    }
}

/// A page of cases and where the next one starts (none: this was the last).
#[derive(Debug, Clone, PartialEq)]
pub struct CasePage {
    pub cases: Vec<CaseRow>,
    pub next: Option<Cursor>,
}

/// What to look cases up by.
#[derive(Debug, Clone, PartialEq)]
pub enum Search {
    Card(String),
    Terminal(String),
    Transaction(String),
}

const COLUMNS: &str = "c.id, c.entity_kind, c.entity_id, c.status, c.queue, c.priority, c.payments, c.top_score,
     c.lease_holder, c.lease_until, c.snoozed_until, c.escalated, c.opened_at, c.closed_at,
     (SELECT min(p.hold_until) FROM payments p WHERE p.case_id = c.id AND p.resolution IS NULL)";

fn case_row(r: &Row) -> CaseRow {
    CaseRow {
        id: r.get(0),
        entity_kind: r.get(1),
        entity_id: r.get(2),
        status: r.get(3),
        queue: r.get(4),
        priority: r.get(5),
        payments: r.get(6),
        top_score: r.get(7),
        lease_holder: r.get(8),
        lease_until: r.get(9),
        snoozed_until: r.get(10),
        escalated: r.get(11),
        opened_at: r.get(12),
        closed_at: r.get(13),
        next_deadline: r.get(14),
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> Result<DateTime<Utc>, ReviewError> {
    Utc.timestamp_micros(us).single().ok_or_else(|| ReviewError::Invalid(format!("cursor time {us}: out of range")))
}

impl ReviewStore {
    /// Every queue of the settings, the default one, and any other a case
    /// still sits in (a queue since removed from the pipeline), most urgent
    /// first, with what waits in each. Counts stop at [`COUNT_LIMIT`], so
    /// that the queue page costs the same with a million open cases as with
    /// ten: each count walks the claim-order index, at most that far.
    pub async fn queue_counts(&self) -> Result<Vec<QueueCount>, ReviewError> {
        let client = self.pool.get().await?;
        // The distinct queues of open cases, one index probe each (a loose
        // index scan), rather than a pass over every open case.
        let present: Vec<String> = client
            .query(
                "WITH RECURSIVE q AS (
                     (SELECT queue FROM cases WHERE status = 'open' ORDER BY queue LIMIT 1)
                     UNION ALL
                     SELECT (SELECT c.queue FROM cases c WHERE c.status = 'open' AND c.queue > q.queue
                             ORDER BY c.queue LIMIT 1)
                     FROM q WHERE q.queue IS NOT NULL)
                 SELECT queue FROM q WHERE queue IS NOT NULL",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut names: Vec<(String, i32)> = self
            .settings
            .queues
            .iter()
            .map(|q| (q.name.clone(), q.priority))
            .chain([(DEFAULT_QUEUE.to_owned(), 0)])
            .collect();
        for p in present {
            if !names.iter().any(|(n, _)| *n == p) {
                names.push((p, 0));
            }
        }
        let statement = client
            .prepare(
                "SELECT
                   (SELECT count(*) FROM (SELECT 1 FROM cases WHERE status = 'open' AND queue = $1 LIMIT $2) a),
                   (SELECT count(*) FROM (SELECT 1 FROM cases WHERE status = 'open' AND queue = $1 AND NOT escalated
                        AND (lease_until IS NULL OR lease_until <= now())
                        AND (snoozed_until IS NULL OR snoozed_until <= now()) LIMIT $2) b),
                   (SELECT count(*) FROM (SELECT 1 FROM cases WHERE status = 'open' AND queue = $1 AND escalated
                        LIMIT $2) e),
                   (SELECT max(priority) FROM (SELECT priority FROM cases WHERE status = 'open' AND queue = $1
                        ORDER BY priority DESC LIMIT 1) p),
                   (SELECT min(p.hold_until) FROM payments p WHERE p.resolution IS NULL AND p.case_id = (
                        SELECT id FROM cases WHERE status = 'open' AND queue = $1
                        ORDER BY priority DESC, opened_at, id LIMIT 1))",
            )
            .await?;
        let mut out = Vec::with_capacity(names.len());
        for (name, declared) in names {
            let r = client.query_one(&statement, &[&name, &COUNT_LIMIT]).await?;
            let priority: Option<i32> = r.get(3);
            out.push(QueueCount {
                priority: if declared != 0 { declared } else { priority.unwrap_or(0) },
                name,
                open: r.get(0),
                claimable: r.get(1),
                escalated: r.get(2),
                next_deadline: r.get(4),
            });
        }
        out.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }

    /// A page of at most `limit` cases (1 to [`MAX_PAGE`]) after `after`:
    /// open cases in the order claim-next takes them (priority, then age),
    /// closed ones newest first.
    pub async fn cases(
        &self,
        filter: &CaseFilter,
        after: Option<&Cursor>,
        limit: i64,
    ) -> Result<CasePage, ReviewError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let client = self.pool.get().await?;
        let queue = filter.queue.as_deref();
        let rows = if filter.closed {
            let (closed_before, id) = match after.map(Cursor::parts).as_deref() {
                None => (None, None),
                Some([t, id]) => (Some(from_micros(*t)?), Some(*id)),
                Some(_) => return Err(bad_cursor(after)),
            };
            client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM cases c
                         WHERE c.status = 'closed' AND ($1::text IS NULL OR c.queue = $1)
                           AND ($2::boolean IS NULL OR c.escalated = $2)
                           AND ($3::timestamptz IS NULL OR (c.closed_at, c.id) < ($3, $4))
                         ORDER BY c.closed_at DESC, c.id DESC LIMIT $5"
                    ),
                    &[&queue, &filter.escalated, &closed_before, &id, &limit],
                )
                .await?
        } else {
            let (priority, opened_after, id) = match after.map(Cursor::parts).as_deref() {
                None => (None, None, None),
                Some([p, t, id]) => {
                    (Some(i32::try_from(*p).map_err(|_| bad_cursor(after))?), Some(from_micros(*t)?), Some(*id))
                }
                Some(_) => return Err(bad_cursor(after)),
            };
            // Claim order is priority descending, then age: no one row
            // comparison follows both directions, and an `OR` of the two
            // makes PostgreSQL walk the index from its start to the cursor
            // (a page deep in a queue of 100,000 cases cost 17 ms). So a
            // later page is two index seeks: the rest of the cursor's
            // priority, then the lower priorities.
            let open = "c.status = 'open' AND ($1::text IS NULL OR c.queue = $1) AND ($2::boolean IS NULL OR c.escalated = $2)";
            match priority {
                None => {
                    client
                        .query(
                            &format!(
                                "SELECT {COLUMNS} FROM cases c WHERE {open}
                                 ORDER BY c.priority DESC, c.opened_at, c.id LIMIT $3"
                            ),
                            &[&queue, &filter.escalated, &limit],
                        )
                        .await?
                }
                Some(priority) => {
                    client
                        .query(
                            &format!(
                                "SELECT * FROM (
                                     (SELECT {COLUMNS} FROM cases c WHERE {open}
                                        AND c.priority = $3 AND (c.opened_at, c.id) > ($4, $5)
                                      ORDER BY c.opened_at, c.id LIMIT $6)
                                     UNION ALL
                                     (SELECT {COLUMNS} FROM cases c WHERE {open} AND c.priority < $3
                                      ORDER BY c.priority DESC, c.opened_at, c.id LIMIT $6)) page
                                 ORDER BY 6 DESC, 13, 1 LIMIT $6"
                            ),
                            &[&queue, &filter.escalated, &priority, &opened_after, &id, &limit],
                        )
                        .await?
                }
            }
        };
        let cases: Vec<CaseRow> = rows.iter().map(case_row).collect();
        let next = match cases.last() {
            Some(last) if cases.len() as i64 == limit => Some(Cursor(if filter.closed {
                format!("{}.{}", last.closed_at.map_or(0, micros), last.id)
            } else {
                format!("{}.{}.{}", last.priority, micros(last.opened_at), last.id)
            })),
            _ => None,
        };
        Ok(CasePage { cases, next })
    }

    /// One case as a list shows it, without its payments' snapshots: what
    /// a check of its state or its entity needs.
    pub async fn case_row(&self, id: i64) -> Result<CaseRow, ReviewError> {
        let client = self.pool.get().await?;
        let row = client.query_opt(&format!("SELECT {COLUMNS} FROM cases c WHERE c.id = $1"), &[&id]).await?;
        row.as_ref().map(case_row).ok_or(ReviewError::NoSuchCase(id))
    }

    /// The cases (open first, then newest) whose payments have this card,
    /// terminal or transaction id; at most `most`.
    pub async fn search(&self, by: &Search, most: i64) -> Result<Vec<CaseRow>, ReviewError> {
        let most = most.clamp(1, MAX_PAGE);
        let (condition, value) = match by {
            Search::Card(id) => ("p.decision -> 'event' ->> 'card_id' = $1", id),
            Search::Terminal(id) => ("p.decision -> 'event' ->> 'terminal_id' = $1", id),
            Search::Transaction(id) => ("p.transaction_id = $1", id),
        };
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM cases c
                     WHERE c.id IN (SELECT p.case_id FROM payments p WHERE {condition})
                     ORDER BY c.status = 'open' DESC, c.opened_at DESC, c.id DESC LIMIT $2"
                ),
                &[value, &most],
            )
            .await?;
        Ok(rows.iter().map(case_row).collect())
    }
}

fn bad_cursor(after: Option<&Cursor>) -> ReviewError {
    ReviewError::Invalid(format!("cursor `{}`: not one this server gave", after.map_or("", Cursor::as_str)))
}
