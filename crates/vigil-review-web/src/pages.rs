//! The analysts' pages, rendered on the server (maud, escaped by default:
//! event fields come from payers and merchants, never trusted as markup) and
//! compiled into the binary with their script and style. Every action on a
//! page is a call to the REST API by `assets/review.js`, with the session's
//! CSRF token from the page's `<meta>`; the pages only read.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use vigil_core::{Decision, FeatureValue};
use vigil_review::{CaseFilter, CaseRow, Cursor, Role, Search, SessionUser, COUNT_LIMIT};

use crate::error::Failure;
use crate::routes::{Path, Query};
use crate::session;
use crate::Web;

/// Where the pages live.
pub const PAGES: &str = "/review";

const SCRIPT: &str = include_str!("../assets/review.js");
const STYLE: &str = include_str!("../assets/review.css");

/// Scripts and styles only from this server, no framing, no referrer.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                      connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) fn page(status: StatusCode, body: Markup) -> Response {
    let mut r = (status, body.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(kind: &'static str, text: &'static str) -> Response {
    let mut r = text.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The page's user, or the login page to go to.
async fn viewer(web: &Web, headers: &HeaderMap) -> Result<SessionUser, Response> {
    let found = match session::token(headers) {
        Some(token) => web.store.session(token).await.map_err(|e| failure_page(Failure::from(e)))?,
        None => None,
    };
    found.ok_or_else(|| Redirect::to(&format!("{PAGES}/login")).into_response())
}

pub(crate) fn failure_page(f: Failure) -> Response {
    let status = f.status;
    page(
        status,
        layout(
            "Vigil review",
            None,
            html! { p.flash.error { (f.message) } p { a href=(PAGES) { "Back to the queues" } } },
        ),
    )
}

fn layout(title: &str, user: Option<&SessionUser>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(u) = user { meta name="csrf-token" content=(u.csrf); }
                title { (title) }
                link rel="stylesheet" href={ (PAGES) "/assets/review.css" };
                script src={ (PAGES) "/assets/review.js" } defer {}
            }
            body {
                header.top {
                    a.brand href=(PAGES) { "Vigil review" }
                    @if let Some(u) = user {
                        form.search action={ (PAGES) "/search" } method="get" {
                            select name="by" aria-label="Search by" {
                                option value="card" { "card" }
                                option value="terminal" { "terminal" }
                                option value="transaction" { "transaction" }
                            }
                            input #search type="search" name="q" placeholder="Search (/)" aria-label="Search";
                        }
                        span.who { (u.user) " · " (u.role.as_str()) }
                        button data-method="DELETE" data-url="/api/v1/review/session" data-go=(format!("{PAGES}/login")) { "Log out" }
                    }
                }
                p #flash.flash role="status" {}
                main { (body) }
                footer { "Keys: " kbd { "n" } " next case · " kbd { "j" } "/" kbd { "k" } " payment · " kbd { "f" } " fraud · " kbd { "g" } " genuine · " kbd { "r" } " give back · " kbd { "/" } " search" }
            }
        }
    }
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "—".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn until(t: DateTime<Utc>) -> String {
    let left = t - Utc::now();
    if left.num_seconds() <= 0 {
        "ran out".to_owned()
    } else if left.num_minutes() < 120 {
        format!("in {} min", left.num_minutes().max(1))
    } else {
        format!("in {} h", left.num_hours())
    }
}

pub async fn login_page(State(web): State<Arc<Web>>) -> Response {
    login_form(StatusCode::OK, None, web.oidc.is_some())
}

/// The login page with why the last try did not log in (single sign-on
/// answers land here).
pub(crate) fn login_page_saying(status: StatusCode, why: &str) -> Response {
    login_form(status, Some(why), true)
}

fn login_form(status: StatusCode, said: Option<&str>, sso: bool) -> Response {
    page(
        status,
        layout(
            "Log in · Vigil review",
            None,
            html! {
                @if let Some(why) = said { p.flash.error.sso { (why) } }
                form #login.card data-go=(PAGES) {
                    h1 { "Log in" }
                    label { "Name" input name="name" autocomplete="username" required autofocus; }
                    label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                    button type="submit" { "Log in" }
                    @if sso { a #sso href={ (PAGES) "/oidc/login" } { "Log in with single sign-on" } }
                }
            },
        ),
    )
}

#[derive(Deserialize)]
pub struct QueuePage {
    queue: Option<String>,
    after: Option<String>,
}

/// Who holds a lease that has not run out.
fn holder(who: &Option<String>, until: Option<DateTime<Utc>>) -> Option<&str> {
    who.as_deref().filter(|_| until.is_some_and(|t| t > Utc::now()))
}

const AGREE: &str = r#"{"agree":true}"#;
const DISAGREE: &str = r#"{"agree":false}"#;

/// The cases as a table; with `selectable`, a box per case for the bulk
/// form ([`bulk_form`]) and one to select the whole page.
fn case_rows(cases: &[CaseRow], me: &str, selectable: bool) -> Markup {
    html! {
        table.cases {
            thead { tr {
                @if selectable { th { input #select-all type="checkbox" title="Select every case on this page (a)"; } }
                th { "Case" } th { "Entity" } th { "Queue" } th { "Payments" } th { "Top score" } th { "Held by" } th { "Next deadline" } th { "Opened" }
            } }
            tbody {
                @for c in cases {
                    tr {
                        @if selectable { td { input type="checkbox" name="case" value=(c.id) form="bulk" title={ "Select case #" (c.id) }; } }
                        td { a href={ (PAGES) "/cases/" (c.id) } { "#" (c.id) } }
                        td { (c.entity_kind) " " code { (c.entity_id) } }
                        td { (c.queue) @if c.escalated { " " span.badge { "escalated" } } @if c.snoozed_until.is_some_and(|s| s > Utc::now()) { " " span.badge { "snoozed" } } }
                        td.num { (c.payments) }
                        td.num { (format!("{:.0}", c.top_score)) }
                        td { @match holder(&c.lease_holder, c.lease_until) { Some(h) => { @if h == me { strong { "you" } } @else { (h) } }, None => { "—" } } }
                        td { (c.next_deadline.map_or_else(|| "—".to_owned(), until)) }
                        td { (when(Some(c.opened_at))) }
                    }
                }
            }
        }
    }
}

/// One action on every selected case: a verdict on each of its open
/// payments (four-eyes holds what it must), a tag, or a snooze. The script
/// sends it to `POST /api/v1/review/bulk` and says per case what happened.
fn bulk_form() -> Markup {
    html! {
        form #bulk.inline.bulk {
            label { "Selected cases: " }
            select name="action" {
                option value="genuine" { "all genuine (release)" }
                option value="fraud" { "all fraud (stop)" }
                option value="tag" { "tag…" }
                option value="snooze" { "snooze…" }
            }
            input name="tag" placeholder="tag (for tag…)" maxlength="64" pattern="[A-Za-z0-9_.:\\-]+" size="14";
            (snooze_choices())
            button type="submit" { "Apply to selected" }
        }
    }
}

/// How long a snooze lasts, in minutes.
fn snooze_choices() -> Markup {
    html! {
        select name="minutes" title="Snooze for" {
            option value="15" { "15 min" }
            option value="60" selected { "1 h" }
            option value="240" { "4 h" }
            option value="1440" { "1 day" }
        }
    }
}

/// A queue count as read: the limit where counting stopped shows as "N+".
fn count(n: i64) -> String {
    if n >= COUNT_LIMIT {
        format!("{COUNT_LIMIT}+")
    } else {
        n.to_string()
    }
}

fn next_page(queue: Option<&str>, next: &Cursor) -> String {
    match queue {
        Some(name) => format!("{PAGES}?queue={}&after={}", encode(name), next.as_str()),
        None => format!("{PAGES}?after={}", next.as_str()),
    }
}

/// `text` for a URL's query, every byte but letters, digits and `-_.~` as `%XX`.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub async fn queue_page(State(web): State<Arc<Web>>, headers: HeaderMap, Query(q): Query<QueuePage>) -> Response {
    let u = match viewer(&web, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let after = match q.after.as_deref().map(Cursor::parse).transpose() {
        Ok(a) => a,
        Err(e) => return failure_page(Failure::bad_request(e.to_string())),
    };
    let filter = CaseFilter { queue: q.queue.clone(), closed: false, escalated: None };
    let (queues, page_of, proposals) = match tokio::try_join!(
        web.counts.get(&web.store),
        web.store.cases(&filter, after.as_ref(), 50),
        web.store.proposals(20)
    ) {
        Ok(found) => found,
        Err(e) => return failure_page(e.into()),
    };
    let title = q.queue.as_deref().unwrap_or("every queue");
    let body = html! {
        section.actions {
            button #claim-next data-method="POST" data-url="/api/v1/review/claims"
                data-body=(serde_json::json!({"queues": q.queue.iter().collect::<Vec<_>>()}).to_string()) data-go="case" { "Claim next case (n)" }
            @if u.role >= Role::Lead {
                button data-method="POST" data-url="/api/v1/review/claims" data-body=(r#"{"escalated":true}"#) data-go="case" { "Claim next escalated" }
            }
        }
        h2 { "Queues" }
        table.queues {
            thead { tr { th { "Queue" } th { "Priority" } th { "Open" } th { "Claimable" } th { "Escalated" } th { "Next deadline" } } }
            tbody {
                tr { td { a href=(PAGES) { "every queue" } } td {} td {} td {} td {} td {} }
                @for x in queues.iter() {
                    tr.selected[q.queue.as_deref() == Some(x.name.as_str())] {
                        td { a href={ (PAGES) "?queue=" (encode(&x.name)) } { (x.name) } }
                        td.num { (x.priority) } td.num { (count(x.open)) } td.num { (count(x.claimable)) } td.num { (count(x.escalated)) }
                        td { (x.next_deadline.map_or_else(|| "—".to_owned(), until)) }
                    }
                }
            }
        }
        h2 { "Open cases: " (title) }
        @if page_of.cases.is_empty() { p { "Nothing waits here." } } @else { (bulk_form()) (case_rows(&page_of.cases, &u.user, true)) }
        @if let Some(next) = &page_of.next {
            p { a href=(next_page(q.queue.as_deref(), next)) { "Next page" } }
        }
        @if !proposals.is_empty() {
            h2 { "Waiting for a second analyst" }
            table.proposals {
                thead { tr { th { "Case" } th { "Payment" } th { "Amount" } th { "Proposed" } th { "By" } th { "Hold" } th {} } }
                tbody {
                    @for p in &proposals {
                        tr {
                            td { a href={ (PAGES) "/cases/" (p.case) } { "#" (p.case) } }
                            td { code { (p.transaction_id) } }
                            td.num { (p.amount) " " (p.currency) }
                            td { (p.verdict.name()) }
                            td { (p.by) }
                            td { (until(p.hold_until)) }
                            td {
                                @if p.by != u.user {
                                    button data-method="POST" data-url={ "/api/v1/review/proposals/" (p.transaction_id) } data-body=(AGREE) { "Confirm" }
                                    " "
                                    button data-method="POST" data-url={ "/api/v1/review/proposals/" (p.transaction_id) } data-body=(DISAGREE) { "Refuse" }
                                } @else { "yours" }
                            }
                        }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, layout("Queues · Vigil review", Some(&u), body))
}

fn feature_value(v: &FeatureValue) -> String {
    match v {
        FeatureValue::Count(c) => c.to_string(),
        FeatureValue::Money(m) | FeatureValue::Number(m) => m.normalize().to_string(),
        FeatureValue::Seconds(s) if *s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        FeatureValue::Seconds(s) if *s >= 60 => format!("{} min {} s", s / 60, s % 60),
        FeatureValue::Seconds(s) => format!("{s} s"),
        FeatureValue::Text(t) => t.clone(),
        FeatureValue::Missing => "—".to_owned(),
    }
}

/// Why the payment was flagged, in words: the rules that fired, the model's
/// score and what moved it most.
fn why(d: &Decision) -> Markup {
    html! {
        h4 { "Why it was flagged" }
        ul.reasons {
            @for r in &d.reasons {
                li {
                    "Rule " strong { (r.rule) } " (" code { (r.code) } ") asked for " strong { (r.action.as_str()) }
                    ", adding " (format!("{:.0}", r.score)) " points"
                    @if r.shadow { " " span.badge { "shadow: not counted" } }
                }
            }
            @if let (Some(score), Some(version)) = (d.model_score, &d.model_version) {
                li {
                    "Model " code { (version) } " scored it " strong { (format!("{:.2}", score)) }
                    @if let Some(base) = d.model_baseline { " (a typical payment scores " (format!("{base:.2}")) ")" }
                }
            }
        }
        @if !d.model_factors.is_empty() {
            p.factors {
                "What moved the model most: "
                @for (i, f) in d.model_factors.iter().enumerate() {
                    @if i > 0 { ", " }
                    code { (f.input) } " "
                    span class=(if f.contribution >= 0.0 { "up" } else { "down" }) {
                        (if f.contribution >= 0.0 { "raised it" } else { "lowered it" }) " by " (format!("{:.2}", f.contribution.abs()))
                    }
                }
            }
        }
        p { "Total risk " strong { (format!("{:.0}", d.score)) } " → " (d.decision.as_str()) " · rules " code { (d.rules_version) } }
    }
}

pub async fn case_page(State(web): State<Arc<Web>>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let u = match viewer(&web, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let c = match web.store.case(id).await {
        Ok(c) => c,
        Err(e) => return failure_page(e.into()),
    };
    let (notes, tags, history) = match tokio::try_join!(
        web.store.notes(id),
        web.store.tags(id),
        web.store.history(&c.entity_kind, &c.entity_id, 20)
    ) {
        Ok(found) => found,
        Err(e) => return failure_page(e.into()),
    };
    let held = holder(&c.lease_holder, c.lease_until) == Some(u.user.as_str());
    let api = format!("/api/v1/review/cases/{id}");
    let body = html! {
        section.case data-case=(id) {
            h1 { "Case #" (id) " · " (c.entity_kind) " " code { (c.entity_id) } }
            p.meta {
                span.badge { (c.status) } " queue " strong { (c.queue) }
                @if c.escalated { " " span.badge { "escalated" } }
                " · opened " (when(Some(c.opened_at)))
                @match holder(&c.lease_holder, c.lease_until) {
                    Some(h) => { " · held by " strong { @if held { "you" } @else { (h) } } " until " (when(c.lease_until)) },
                    None => { " · nobody holds it" },
                }
            }
            @if c.status == "open" {
                section.actions {
                    @if held {
                        button data-method="POST" data-url={ (api) "/claim/renew" } { "Keep it longer" }
                        button #release data-method="DELETE" data-url={ (api) "/claim" } data-go=(PAGES) { "Give back (r)" }
                        form.inline data-snooze-url={ (api) "/snooze" } {
                            (snooze_choices())
                            button type="submit" { "Snooze" }
                        }
                        form.inline data-escalate-url={ (api) "/escalation" } {
                            input name="reason" required maxlength="1000" placeholder="why a lead should see it";
                            button type="submit" { "Escalate" }
                        }
                    } @else {
                        button #claim data-method="POST" data-url={ (api) "/claim" } { "Claim this case" }
                    }
                }
            }
        }
        @for (i, p) in c.payments.iter().enumerate() {
            @let open = p.resolution.is_none();
            article.payment.open[open] data-index=(i) data-transaction=(p.transaction_id) {
                h3 {
                    (p.amount) " " (p.currency) " · " code { (p.transaction_id) }
                    @if let Some(r) = p.resolution { " " span.badge.resolved { (r.as_str()) } }
                }
                @if let Some(e) = &p.decision.event {
                    p.event {
                        (when(Some(e.timestamp)))
                        @if let Some(m) = &e.merchant_id { " · merchant " code { (m) } }
                        @if let Some(mcc) = &e.mcc { " (MCC " (mcc) ")" }
                        @if let Some(t) = &e.terminal_id { " · terminal " code { (t) } }
                        @if let Some(country) = &e.country { " · " (country) }
                        @if let Some(ch) = &e.channel { " · " (ch) }
                    }
                }
                p {
                    @if open { "Money held; the hold runs out " (until(p.hold_until)) " (" (when(Some(p.hold_until))) ")." }
                    @if let Some(v) = &p.verdict { " Verdict " strong { (v) } @if let Some(by) = &p.verdict_by { " by " (by) } @if let Some(by) = &p.confirmed_by { ", confirmed by " (by) } "." }
                }
                (why(&p.decision))
                @if open {
                    div.verdicts {
                        @match p.proposed.as_ref().filter(|(_, by)| by != &u.user) {
                            Some((verdict, by)) => {
                                p { strong { (by) } " proposes " strong { (verdict) } "; a second analyst decides." }
                                button data-method="POST" data-url={ "/api/v1/review/proposals/" (p.transaction_id) } data-body=(AGREE) { "Confirm" }
                                button data-method="POST" data-url={ "/api/v1/review/proposals/" (p.transaction_id) } data-body=(DISAGREE) { "Refuse" }
                            }
                            None => {
                                @if let Some((verdict, _)) = &p.proposed { p { "You proposed " strong { (verdict) } "; it waits for a second analyst." } }
                                @if held {
                                    button.fraud data-verdict="fraud" data-method="POST" data-url={ (api) "/verdicts" }
                                        data-body=(serde_json::json!({"transaction_id": p.transaction_id, "verdict": "fraud"}).to_string()) { "Fraud: stop it (f)" }
                                    button.genuine data-verdict="genuine" data-method="POST" data-url={ (api) "/verdicts" }
                                        data-body=(serde_json::json!({"transaction_id": p.transaction_id, "verdict": "genuine"}).to_string()) { "Genuine: release it (g)" }
                                }
                            }
                        }
                    }
                }
                details {
                    summary { "Every feature at decision time" }
                    table.features { tbody { @for (name, v) in &p.decision.features { tr { th { code { (name) } } td.num { (feature_value(v)) } } } } }
                }
            }
        }
        section.side {
            h2 { "Tags" }
            p { @for t in &tags { span.tag { (t) " " button.small data-method="DELETE" data-url={ (api) "/tags/" (t) } aria-label={ "Remove " (t) } { "×" } } " " } }
            form.inline data-tag-url={ (api) "/tags/" } { input name="tag" placeholder="new tag" aria-label="New tag"; button type="submit" { "Tag" } }
            h2 { "Notes" }
            @for n in &notes { blockquote.note { p { (n.body) } footer { (n.author) ", " (when(Some(n.at))) } } }
            form.inline data-note-url={ (api) "/notes" } { textarea name="body" rows="2" placeholder="Add a note" aria-label="Note" {} button type="submit" { "Add note" } }
            h2 { "History of " (c.entity_kind) " " code { (c.entity_id) } }
            table.history {
                thead { tr { th { "Case" } th { "Status" } th { "Payments" } th { "Fraud" } th { "Genuine" } th { "Amounts" } th { "Opened" } } }
                tbody {
                    @for h in &history {
                        tr.current[h.id == id] {
                            td { a href={ (PAGES) "/cases/" (h.id) } { "#" (h.id) } }
                            td { (h.status) } td.num { (h.payments) } td.num { (h.fraud) } td.num { (h.genuine) }
                            td { @for (i, (cur, total)) in h.amounts.iter().enumerate() { @if i > 0 { ", " } (total) " " (cur) } }
                            td { (when(Some(h.opened_at))) }
                        }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, layout(&format!("Case #{id} · Vigil review"), Some(&u), body))
}

#[derive(Deserialize)]
pub struct SearchPage {
    by: Option<String>,
    q: Option<String>,
}

pub async fn search_page(State(web): State<Arc<Web>>, headers: HeaderMap, Query(s): Query<SearchPage>) -> Response {
    let u = match viewer(&web, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let q = s.q.unwrap_or_default().trim().to_owned();
    let by = match s.by.as_deref().unwrap_or("card") {
        "card" => Search::Card(q.clone()),
        "terminal" => Search::Terminal(q.clone()),
        "transaction" => Search::Transaction(q.clone()),
        other => {
            return failure_page(Failure::bad_request(format!(
                "search by `{other}`: give card, terminal or transaction"
            )))
        }
    };
    let found = if q.is_empty() {
        Vec::new()
    } else {
        match web.store.search(&by, 200).await {
            Ok(f) => f,
            Err(e) => return failure_page(e.into()),
        }
    };
    let body = html! {
        h1 { "Cases with " (s.by.as_deref().unwrap_or("card")) " " code { (q) } }
        @if found.is_empty() { p { "No case has it." } } @else { (case_rows(&found, &u.user, false)) }
    };
    page(StatusCode::OK, layout("Search · Vigil review", Some(&u), body))
}
