//! The audit log: every analyst action (and every deadline resolution) as one
//! row, written in the transaction of the action itself, so an action and its
//! record commit together or not at all.
//!
//! Each row holds `sha256(previous hash || canonical JSON of the row)`, the
//! rows are numbered without gaps, and the one-row `audit_head` holds where
//! the chain ends. A trigger refuses `UPDATE`, `DELETE` and `TRUNCATE`;
//! someone who gets around it (a superuser) still cannot change, remove or
//! cut off a row without [`ReviewStore::verify_audit`] naming the first row
//! that no longer fits.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::ReviewError;
use crate::store::ReviewStore;

/// The hash before the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One action to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit<'a> {
    pub actor: &'a str,
    /// `claim`, `verdict`, `propose`, `confirm`, `reject`, `release`, `note`,
    /// `tag`, `untag`, `snooze`, `escalate`, `deadline`.
    pub action: &'a str,
    pub case: Option<i64>,
    pub transaction_id: Option<&'a str>,
    /// What the action was, in strings and whole numbers.
    pub detail: Value,
}

/// A row of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub case: Option<i64>,
    pub transaction_id: Option<String>,
    pub detail: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// What a check of the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheck {
    /// Rows that fit the chain, from the first.
    pub good: i64,
    /// The first row that does not, and why; `None` when the whole chain holds.
    pub broken: Option<(i64, String)>,
}

/// `value` with every object's keys in order: the same JSON, byte for byte,
/// however it was stored and read back.
fn canonical(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let ordered: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                let mut out = serde_json::Map::new();
                for (k, v) in ordered {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sorted(value)).unwrap_or_default()
}

/// The hash of a row: its fields (hashes aside) as canonical JSON, after the
/// previous row's hash.
fn hash_of(prev_hash: &str, id: i64, at: DateTime<Utc>, e: &Audit<'_>) -> String {
    let body = json!({
        "id": id,
        "at": at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "actor": e.actor,
        "action": e.action,
        "case": e.case,
        "transaction_id": e.transaction_id,
        "detail": e.detail,
    });
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical(&body).as_bytes());
    hex::encode(h.finalize())
}

/// Appends `entries` to the chain inside `tx`, the action's transaction: the
/// head's row lock makes concurrent actions take turns here.
pub(crate) async fn append(tx: &deadpool_postgres::Transaction<'_>, entries: &[Audit<'_>]) -> Result<(), ReviewError> {
    if entries.is_empty() {
        return Ok(());
    }
    let head = tx.query_one("SELECT last_id, last_hash FROM audit_head FOR UPDATE", &[]).await?;
    let (mut id, mut prev): (i64, String) = (head.get(0), head.get(1));
    // Stored to the microsecond, so hashed to the microsecond.
    let now = Utc::now();
    let at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let mut ids = Vec::with_capacity(entries.len());
    let mut actors = Vec::with_capacity(entries.len());
    let mut actions = Vec::with_capacity(entries.len());
    let mut cases = Vec::with_capacity(entries.len());
    let mut txs = Vec::with_capacity(entries.len());
    let mut details = Vec::with_capacity(entries.len());
    let mut prevs = Vec::with_capacity(entries.len());
    let mut hashes = Vec::with_capacity(entries.len());
    for e in entries {
        id += 1;
        let hash = hash_of(&prev, id, at, e);
        ids.push(id);
        actors.push(e.actor);
        actions.push(e.action);
        cases.push(e.case);
        txs.push(e.transaction_id);
        details.push(canonical(&e.detail));
        prevs.push(std::mem::replace(&mut prev, hash.clone()));
        hashes.push(hash);
    }
    tx.execute(
        "INSERT INTO audit_log (id, at, actor, action, case_id, transaction_id, detail, prev_hash, hash)
         SELECT i, $2, a, ac, c, t, d::jsonb, p, h
         FROM unnest($1::int8[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], $8::text[], $9::text[])
           AS u(i, a, ac, c, t, d, p, h)",
        &[&ids, &at, &actors, &actions, &cases, &txs, &details, &prevs, &hashes],
    )
    .await?;
    tx.execute("UPDATE audit_head SET last_id = $1, last_hash = $2", &[&id, &prev]).await?;
    Ok(())
}

impl ReviewStore {
    /// The audit rows of `case`, oldest first.
    pub async fn audit_of(&self, case: i64) -> Result<Vec<AuditEntry>, ReviewError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, at, actor, action, case_id, transaction_id, detail::text, prev_hash, hash
                 FROM audit_log WHERE case_id = $1 ORDER BY id",
                &[&case],
            )
            .await?;
        rows.iter().map(entry_of).collect()
    }

    /// Recomputes the whole chain, `batch` rows at a time, and names the
    /// first row that does not fit: a changed row (its hash), a removed one
    /// (a gap in the numbers), a reordered one (its previous hash), or a cut
    /// tail (the head points past the last row).
    pub async fn verify_audit(&self, batch: i64) -> Result<AuditCheck, ReviewError> {
        let client = self.pool.get().await?;
        let (mut expected_id, mut prev) = (1_i64, GENESIS.to_owned());
        loop {
            let rows = client
                .query(
                    "SELECT id, at, actor, action, case_id, transaction_id, detail::text, prev_hash, hash
                     FROM audit_log WHERE id >= $1 ORDER BY id LIMIT $2",
                    &[&expected_id, &batch],
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let e = entry_of(r)?;
                let good = expected_id - 1;
                let broken = |why: String| Ok(AuditCheck { good, broken: Some((e.id, why)) });
                if e.id != expected_id {
                    return broken(format!("rows {expected_id} to {} are missing", e.id - 1));
                }
                if e.prev_hash != prev {
                    return broken("its previous hash is not the hash of the row before it".into());
                }
                let audit = Audit {
                    actor: &e.actor,
                    action: &e.action,
                    case: e.case,
                    transaction_id: e.transaction_id.as_deref(),
                    detail: e.detail.clone(),
                };
                let hash = hash_of(&prev, e.id, e.at, &audit);
                if hash != e.hash {
                    return broken("its content is not what was hashed (the row was changed)".into());
                }
                prev = e.hash;
                expected_id += 1;
            }
        }
        let head = client.query_one("SELECT last_id, last_hash FROM audit_head", &[]).await?;
        let (last_id, last_hash): (i64, String) = (head.get(0), head.get(1));
        let good = expected_id - 1;
        if last_id != good || last_hash != prev {
            return Ok(AuditCheck {
                good,
                broken: Some((good + 1, format!("the chain ends at row {good}, but its head says row {last_id}"))),
            });
        }
        Ok(AuditCheck { good, broken: None })
    }
}

fn entry_of(r: &tokio_postgres::Row) -> Result<AuditEntry, ReviewError> {
    let id: i64 = r.get(0);
    let detail: String = r.get(6);
    let detail = serde_json::from_str(&detail)
        .map_err(|e| ReviewError::Invalid(format!("audit row {id}: detail does not read: {e}")))?;
    Ok(AuditEntry {
        id,
        at: r.get(1),
        actor: r.get(2),
        action: r.get(3),
        case: r.get(4),
        transaction_id: r.get(5),
        detail,
        prev_hash: r.get(7),
        hash: r.get(8),
    })
}
