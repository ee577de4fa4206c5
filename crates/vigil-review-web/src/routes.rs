//! The handlers of `/api/v1/review/`: each is one store call (or two), the
//! session's user as the actor, the role checked where the action needs more
//! than an analyst.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use vigil_core::Verdict;
use vigil_review::{Bulk, CaseFilter, Cursor, Role, Search, SessionUser, COUNT_LIMIT, MAX_PAGE};

use crate::error::Failure;
use crate::session::{self, require};
use crate::{view, Web};

/// A JSON body, refused in the API's error shape when it does not read.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Failure))]
pub struct Body<T>(pub T);

/// Path parameters, refused in the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Failure))]
pub struct Path<T>(pub T);

/// Query parameters, refused in the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Failure))]
pub struct Query<T>(pub T);

type Answer = Result<Response, Failure>;

fn ok(body: Value) -> Answer {
    Ok(Json(body).into_response())
}

fn no_content() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn verdict_of(name: &str) -> Result<Verdict, Failure> {
    Verdict::parse(name).ok_or_else(|| {
        Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("verdict `{name}`: give fraud or genuine"))
    })
}

fn session_body(user: &str, role: Role, csrf: &str, expires_at: DateTime<Utc>) -> Value {
    json!({"user": user, "role": role.as_str(), "csrf_token": csrf, "expires_at": expires_at})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    name: String,
    password: String,
}

pub async fn login(State(web): State<Arc<Web>>, Body(login): Body<Login>) -> Answer {
    let s = web.store.login(&login.name, &login.password, web.session_ttl).await?;
    let max_age = (s.expires_at - Utc::now()).num_seconds().max(0);
    let mut r = Json(session_body(&s.user, s.role, &s.csrf, s.expires_at)).into_response();
    r.headers_mut().insert(header::SET_COOKIE, session::set_cookie(&web, &s.token, max_age));
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(r)
}

pub async fn me(Extension(u): Extension<SessionUser>) -> Answer {
    let mut r = Json(session_body(&u.user, u.role, &u.csrf, u.expires_at)).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(r)
}

pub async fn logout(State(web): State<Arc<Web>>, headers: HeaderMap) -> Answer {
    if let Some(token) = session::token(&headers) {
        web.store.logout(token).await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(header::SET_COOKIE, session::clear_cookie(&web));
    Ok(r)
}

pub async fn queues(State(web): State<Arc<Web>>) -> Answer {
    let queues = web.counts.get(&web.store).await?;
    ok(json!({"queues": queues.iter().map(view::queue).collect::<Vec<_>>(), "count_limit": COUNT_LIMIT}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    queue: Option<String>,
    status: Option<String>,
    escalated: Option<bool>,
    after: Option<String>,
    limit: Option<i64>,
}

pub async fn cases(State(web): State<Arc<Web>>, Query(q): Query<ListQuery>) -> Answer {
    let closed = match q.status.as_deref() {
        None | Some("open") => false,
        Some("closed") => true,
        Some(other) => return Err(Failure::bad_request(format!("status `{other}`: give open or closed"))),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Failure::bad_request(format!("limit {limit}: give 1 to {MAX_PAGE}")));
    }
    let after = q.after.as_deref().map(Cursor::parse).transpose().map_err(|e| Failure::bad_request(e.to_string()))?;
    let filter = CaseFilter { queue: q.queue, closed, escalated: q.escalated };
    let page = web.store.cases(&filter, after.as_ref(), limit).await?;
    ok(json!({
        "cases": page.cases.iter().map(view::case_row).collect::<Vec<_>>(),
        "next": page.next.as_ref().map(Cursor::as_str),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    card: Option<String>,
    terminal: Option<String>,
    transaction: Option<String>,
}

pub async fn search(State(web): State<Arc<Web>>, Query(q): Query<SearchQuery>) -> Answer {
    let by = match (q.card, q.terminal, q.transaction) {
        (Some(c), None, None) => Search::Card(c),
        (None, Some(t), None) => Search::Terminal(t),
        (None, None, Some(t)) => Search::Transaction(t),
        _ => return Err(Failure::bad_request("give exactly one of card, terminal or transaction")),
    };
    let found = web.store.search(&by, MAX_PAGE).await?;
    ok(json!({"cases": found.iter().map(view::case_row).collect::<Vec<_>>()}))
}

pub async fn case(State(web): State<Arc<Web>>, Path(id): Path<i64>) -> Answer {
    let c = web.store.case(id).await?;
    let notes = web.store.notes(id).await?;
    let tags = web.store.tags(id).await?;
    ok(view::case(&c, &notes, &tags)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Most {
    most: Option<i64>,
}

fn most(m: Option<i64>) -> Result<i64, Failure> {
    let m = m.unwrap_or(50);
    if (1..=MAX_PAGE).contains(&m) {
        Ok(m)
    } else {
        Err(Failure::bad_request(format!("most {m}: give 1 to {MAX_PAGE}")))
    }
}

pub async fn history(State(web): State<Arc<Web>>, Path(id): Path<i64>, Query(q): Query<Most>) -> Answer {
    let most = most(q.most)?;
    let c = web.store.case_row(id).await?;
    let cases = web.store.history(&c.entity_kind, &c.entity_id, most).await?;
    ok(json!({
        "entity": {"kind": c.entity_kind, "id": c.entity_id},
        "cases": cases.iter().map(view::summary).collect::<Vec<_>>(),
    }))
}

pub async fn case_audit(State(web): State<Arc<Web>>, Path(id): Path<i64>) -> Answer {
    web.store.case_row(id).await?;
    let entries = web.store.audit_of(id).await?;
    ok(json!({"entries": entries.iter().map(view::audit).collect::<Vec<_>>()}))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClaimNext {
    #[serde(default)]
    queues: Vec<String>,
    #[serde(default)]
    escalated: bool,
}

pub async fn claim_next(
    State(web): State<Arc<Web>>,
    Extension(u): Extension<SessionUser>,
    Body(q): Body<ClaimNext>,
) -> Answer {
    let queues: Vec<&str> = q.queues.iter().map(String::as_str).collect();
    let lease = web.store.settings().lease;
    let claim = if q.escalated {
        require(&u, Role::Lead, "taking escalated cases")?;
        web.store.claim_next_escalated(&u.user, &queues, lease).await?
    } else {
        web.store.claim_next(&u.user, &queues, lease).await?
    };
    match claim {
        Some(c) => ok(json!({"claim": view::claim(&c)})),
        None => no_content(),
    }
}

pub async fn claim(State(web): State<Arc<Web>>, Extension(u): Extension<SessionUser>, Path(id): Path<i64>) -> Answer {
    let c = web.store.case_row(id).await?;
    if c.escalated {
        require(&u, Role::Lead, "an escalated case")?;
    }
    let claim = web.store.claim(id, &u.user, web.store.settings().lease).await?;
    ok(json!({"claim": view::claim(&claim)}))
}

pub async fn renew(State(web): State<Arc<Web>>, Extension(u): Extension<SessionUser>, Path(id): Path<i64>) -> Answer {
    let until = web.store.renew(id, &u.user, web.store.settings().lease).await?;
    ok(json!({"case": id, "lease_until": until}))
}

pub async fn release(State(web): State<Arc<Web>>, Extension(u): Extension<SessionUser>, Path(id): Path<i64>) -> Answer {
    web.store.release(id, &u.user).await?;
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictBody {
    transaction_id: String,
    verdict: String,
}

pub async fn verdict(
    State(web): State<Arc<Web>>,
    Extension(u): Extension<SessionUser>,
    Path(id): Path<i64>,
    Body(v): Body<VerdictBody>,
) -> Answer {
    let verdict = verdict_of(&v.verdict)?;
    let done = web.store.verdict(id, &u.user, &v.transaction_id, verdict).await?;
    ok(view::verdicted(&done))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    agree: bool,
}

pub async fn confirm(
    State(web): State<Arc<Web>>,
    Extension(u): Extension<SessionUser>,
    Path(tx): Path<String>,
    Body(c): Body<Confirmation>,
) -> Answer {
    let done = web.store.confirm(&u.user, &tx, c.agree).await?;
    ok(json!({
        "transaction_id": tx,
        "confirmed": c.agree,
        "resolution": done.as_ref().map(view::resolution),
    }))
}

pub async fn proposals(State(web): State<Arc<Web>>, Query(q): Query<Most>) -> Answer {
    let found = web.store.proposals(most(q.most)?).await?;
    ok(json!({"proposals": found.iter().map(view::proposal).collect::<Vec<_>>()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    body: String,
}

pub async fn note(
    State(web): State<Arc<Web>>,
    Extension(u): Extension<SessionUser>,
    Path(id): Path<i64>,
    Body(n): Body<NoteBody>,
) -> Answer {
    let note = web.store.note(id, &u.user, &n.body).await?;
    Ok((StatusCode::CREATED, Json(json!({"note": view::note(&note)}))).into_response())
}

pub async fn tag(
    State(web): State<Arc<Web>>,
    Extension(u): Extension<SessionUser>,
    Path((id, tag)): Path<(i64, String)>,
) -> Answer {
    let added = web.store.tag(id, &u.user, &tag).await?;
    ok(json!({"case": id, "tag": tag, "added": added}))
}

pub async fn untag(
    State(web): State<Arc<Web>>,
    Extension(u): Extension<SessionUser>,
    Path((id, tag)): Path<(i64, String)>,
) -> Answer {
    let removed = web.store.untag(id, &u.user, &tag).await?;
    ok(json!({"case": id, "tag": tag, "removed": removed}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnoozeBody {
    until: DateTime<Utc>,
}

pub async fn snooze(
    State(web): State<Arc<Web>>,
    Extension(u): Extension<SessionUser>,
    Path(id): Path<i64>,
    Body(s): Body<SnoozeBody>,
) -> Answer {
    web.store.snooze(id, &u.user, s.until).await?;
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalateBody {
    reason: String,
}

pub async fn escalate(
    State(web): State<Arc<Web>>,
    Extension(u): Extension<SessionUser>,
    Path(id): Path<i64>,
    Body(e): Body<EscalateBody>,
) -> Answer {
    web.store.escalate(id, &u.user, &e.reason).await?;
    no_content()
}

/// Most cases one bulk action may name.
pub const MAX_BULK: usize = 200;

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BulkAction {
    Verdict(String),
    Tag(String),
    Snooze(DateTime<Utc>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    cases: Vec<i64>,
    action: BulkAction,
}

pub async fn bulk(
    State(web): State<Arc<Web>>,
    Extension(u): Extension<SessionUser>,
    Body(b): Body<BulkBody>,
) -> Answer {
    if b.cases.is_empty() || b.cases.len() > MAX_BULK {
        return Err(Failure::bad_request(format!("cases: give 1 to {MAX_BULK}, not {}", b.cases.len())));
    }
    let action = match b.action {
        BulkAction::Verdict(v) => Bulk::Verdict(verdict_of(&v)?),
        BulkAction::Tag(t) => Bulk::Tag(t),
        BulkAction::Snooze(until) => Bulk::Snooze(until),
    };
    let outcomes = web.store.bulk(&u.user, &b.cases, &action).await;
    ok(json!({"outcomes": outcomes.iter().map(view::bulk).collect::<Vec<_>>()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    role: String,
    password: String,
}

pub async fn add_user(
    State(web): State<Arc<Web>>,
    Extension(u): Extension<SessionUser>,
    Body(n): Body<NewUser>,
) -> Answer {
    require(&u, Role::Admin, "managing accounts")?;
    let role = Role::parse(&n.role).ok_or_else(|| {
        Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("role `{}`: give analyst, lead or admin", n.role),
        )
    })?;
    web.store.add_user(&u.user, &n.name, role, &n.password).await?;
    Ok((StatusCode::CREATED, Json(json!({"name": n.name, "role": role.as_str()}))).into_response())
}

pub async fn disable_user(
    State(web): State<Arc<Web>>,
    Extension(u): Extension<SessionUser>,
    Path(name): Path<String>,
) -> Answer {
    require(&u, Role::Admin, "managing accounts")?;
    web.store.disable_user(&u.user, &name).await?;
    no_content()
}

pub async fn verify_audit(State(web): State<Arc<Web>>, Extension(u): Extension<SessionUser>) -> Answer {
    require(&u, Role::Admin, "checking the audit chain")?;
    let check = web.store.verify_audit(10_000).await?;
    ok(json!({
        "good": check.good,
        "broken": check.broken.map(|(row, why)| json!({"row": row, "why": why})),
    }))
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(web): State<Arc<Web>>) -> Answer {
    match web.store.ping().await {
        Ok(()) => ok(json!({"database": "ok"})),
        Err(e) => {
            let mut f = Failure::from(e);
            f.code = "not_ready";
            Err(f)
        }
    }
}
