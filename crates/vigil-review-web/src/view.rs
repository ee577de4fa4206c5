//! The review store's records as the API writes them. Amounts are decimal
//! strings (never floats), times RFC 3339 in UTC; the payment's frozen
//! decision is the record exactly as the pipeline published it.

use serde_json::{json, Value};
use vigil_review::{
    AuditEntry, BulkOutcome, CaseRow, CaseSummary, CaseView, Claim, Note, PaymentView, Proposal, QueueCount,
    Resolution, Verdicted,
};

use crate::error::Failure;

pub fn claim(c: &Claim) -> Value {
    json!({
        "case": c.case,
        "entity": {"kind": c.entity_kind, "id": c.entity_id},
        "queue": c.queue,
        "payments": c.payments,
        "lease_until": c.lease_until,
    })
}

pub fn queue(q: &QueueCount) -> Value {
    json!({
        "name": q.name,
        "priority": q.priority,
        "open": q.open,
        "claimable": q.claimable,
        "escalated": q.escalated,
        "next_deadline": q.next_deadline,
    })
}

pub fn case_row(c: &CaseRow) -> Value {
    json!({
        "id": c.id,
        "entity": {"kind": c.entity_kind, "id": c.entity_id},
        "status": c.status,
        "queue": c.queue,
        "priority": c.priority,
        "payments": c.payments,
        "top_score": c.top_score,
        "lease_holder": c.lease_holder,
        "lease_until": c.lease_until,
        "snoozed_until": c.snoozed_until,
        "escalated": c.escalated,
        "opened_at": c.opened_at,
        "closed_at": c.closed_at,
        "next_deadline": c.next_deadline,
    })
}

pub fn payment(p: &PaymentView) -> Result<Value, Failure> {
    Ok(p.to_json())
}

pub fn case(c: &CaseView, notes: &[Note], tags: &[String]) -> Result<Value, Failure> {
    let mut v = c.to_json();
    v["notes"] = notes.iter().map(note).collect::<Vec<_>>().into();
    v["tags"] = tags.into();
    Ok(v)
}

pub fn note(n: &Note) -> Value {
    json!({"id": n.id, "author": n.author, "body": n.body, "at": n.at})
}

pub fn summary(s: &CaseSummary) -> Value {
    json!({
        "id": s.id,
        "status": s.status,
        "queue": s.queue,
        "payments": s.payments,
        "top_score": s.top_score,
        "opened_at": s.opened_at,
        "closed_at": s.closed_at,
        "fraud": s.fraud,
        "genuine": s.genuine,
        "stopped": s.stopped,
        "amounts": s.amounts.iter().map(|(currency, total)| json!({"currency": currency, "total": total})).collect::<Vec<_>>(),
    })
}

pub fn resolution(r: &Resolution) -> Value {
    json!({
        "seq": r.seq,
        "transaction_id": r.transaction_id,
        "case": r.case,
        "action": r.action.as_str(),
        "resolved_by": r.resolved_by,
        "confirmed_by": r.confirmed_by,
        "verdict": r.verdict.map(|v| v.name()),
        "resolved_at": r.resolved_at,
        "case_closed": r.case_closed,
    })
}

pub fn verdicted(v: &Verdicted) -> Value {
    match v {
        Verdicted::Resolved(r) => json!({"outcome": "resolved", "resolution": resolution(r)}),
        Verdicted::Proposed { transaction_id, verdict, by } => json!({
            "outcome": "proposed",
            "proposal": {"transaction_id": transaction_id, "verdict": verdict.name(), "by": by},
        }),
    }
}

pub fn proposal(p: &Proposal) -> Value {
    json!({
        "case": p.case,
        "transaction_id": p.transaction_id,
        "verdict": p.verdict.name(),
        "by": p.by,
        "at": p.at,
        "amount": p.amount,
        "currency": p.currency,
        "hold_until": p.hold_until,
    })
}

pub fn audit(a: &AuditEntry) -> Value {
    json!({
        "id": a.id,
        "at": a.at,
        "actor": a.actor,
        "action": a.action,
        "case": a.case,
        "transaction_id": a.transaction_id,
        "detail": a.detail,
        "hash": a.hash,
    })
}

pub fn bulk(o: &BulkOutcome) -> Value {
    json!({
        "case": o.case,
        "resolved": o.resolved,
        "proposed": o.proposed,
        "error": o.error.as_ref().map(|e| json!({"code": crate::error::kind(e).1, "message": e.to_string()})),
    })
}
