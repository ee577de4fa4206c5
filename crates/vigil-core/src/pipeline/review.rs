//! `[review]`: the review server's settings (`docs/design/review.md`): the
//! database, the entity that owns a case, how long money is held and what
//! happens when the hold runs out, the claim lease, the four-eyes policy and
//! the queues.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{line_col, Diagnostics};
use crate::event::Event;
use crate::feature::parse_duration_s;
use crate::label::Verdict;

/// The entity that owns a case: one open case per entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseEntity {
    Card,
    Account,
    Customer,
    Merchant,
    Terminal,
    Device,
}

impl CaseEntity {
    pub const ALL: [CaseEntity; 6] = [
        CaseEntity::Card,
        CaseEntity::Account,
        CaseEntity::Customer,
        CaseEntity::Merchant,
        CaseEntity::Terminal,
        CaseEntity::Device,
    ];

    /// The name stored as a case's `entity_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            CaseEntity::Card => "card",
            CaseEntity::Account => "account",
            CaseEntity::Customer => "customer",
            CaseEntity::Merchant => "merchant",
            CaseEntity::Terminal => "terminal",
            CaseEntity::Device => "device",
        }
    }

    pub fn parse(s: &str) -> Option<CaseEntity> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The entity's id in `e`, when the event names it.
    pub fn of(self, e: &Event) -> Option<&str> {
        match self {
            CaseEntity::Card => e.card_id.as_deref(),
            CaseEntity::Account => e.account_id.as_deref(),
            CaseEntity::Customer => e.customer_id.as_deref(),
            CaseEntity::Merchant => e.merchant_id.as_deref(),
            CaseEntity::Terminal => e.terminal_id.as_deref(),
            CaseEntity::Device => e.device_id.as_deref(),
        }
    }
}

/// What happens to money held for review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldAction {
    /// Capture: the payment goes through.
    Release,
    /// Void or refund: the payment does not go through.
    Stop,
}

impl HoldAction {
    pub const ALL: [HoldAction; 2] = [HoldAction::Release, HoldAction::Stop];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldAction::Release => "release",
            HoldAction::Stop => "stop",
        }
    }

    pub fn parse(s: &str) -> Option<HoldAction> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// What an analyst's verdict does to the money.
    pub fn of(verdict: Verdict) -> HoldAction {
        match verdict {
            Verdict::Fraud => HoldAction::Stop,
            Verdict::Genuine => HoldAction::Release,
        }
    }
}

/// A queue's `when`, as written, with the place of its first character in
/// the pipeline file so that the rule checker's errors point into the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueWhen {
    pub text: String,
    pub line: usize,
    pub column: usize,
}

/// A review queue. A payment is in a queue when every criterion given holds
/// (`when`, one of `reasons`, `min_score`); a case is in the queue of highest
/// priority that one of its payments is in, else in `default`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    pub name: String,
    /// 1 (lowest) to 1000; `default` is 0.
    pub priority: i32,
    /// A condition in the rule language, checked by the review server
    /// against the pipeline's features.
    pub when: Option<QueueWhen>,
    /// Reason codes: one of them must have fired (shadow rules count too).
    pub reasons: Vec<String>,
    pub min_score: Option<f64>,
}

/// The queue of payments that match no declared queue.
pub const DEFAULT_QUEUE: &str = "default";

/// What a webhook is told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookEvent {
    /// A case was opened (its first payment under review arrived).
    CaseOpened,
    /// A case closed: every payment in it is resolved.
    CaseResolved,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 2] = [WebhookEvent::CaseOpened, WebhookEvent::CaseResolved];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::CaseOpened => "case.opened",
            WebhookEvent::CaseResolved => "case.resolved",
        }
    }

    pub fn parse(s: &str) -> Option<WebhookEvent> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// A receiver of case events (`[[review.webhooks]]`): each event is POSTed
/// to `url` as JSON carrying the case, signed like the scoring API's
/// requests with the secret in the variable `secret_env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDef {
    /// Names the receiver in the outbox and as the signature's `client`.
    pub name: String,
    /// `http://` or `https://`.
    pub url: String,
    /// The environment variable holding the signing secret.
    pub secret_env: String,
    pub events: Vec<WebhookEvent>,
}

/// The review server's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewConfig {
    /// PostgreSQL connection settings; `--database` or
    /// `VIGIL_REVIEW_DATABASE` take precedence.
    pub database: Option<String>,
    pub entity: CaseEntity,
    /// How long a payment under review is held.
    pub hold_s: u64,
    /// How long the card network lets an authorisation wait for capture;
    /// the hold must end before it.
    pub authorisation_window_s: u64,
    pub on_deadline: HoldAction,
    /// Where each resolution is published once, when set.
    pub resolutions_topic: Option<String>,
    /// How long a claim holds a case unless renewed.
    pub lease_s: u64,
    /// A verdict on a payment above this amount needs a second analyst.
    pub four_eyes_above: Option<Decimal>,
    /// A `genuine` verdict on a payment that a rule wanted declined needs a
    /// second analyst.
    pub four_eyes_release_of_decline: bool,
    /// Highest priority first.
    pub queues: Vec<QueueDef>,
    pub webhooks: Vec<WebhookDef>,
}

impl Default for ReviewConfig {
    fn default() -> ReviewConfig {
        ReviewConfig {
            database: None,
            entity: CaseEntity::Card,
            hold_s: 30 * 60,
            authorisation_window_s: 7 * 86_400,
            on_deadline: HoldAction::Release,
            resolutions_topic: None,
            lease_s: 5 * 60,
            four_eyes_above: None,
            four_eyes_release_of_decline: false,
            queues: Vec::new(),
            webhooks: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReview {
    database: Option<Spanned<String>>,
    entity: Option<Spanned<String>>,
    hold: Option<Spanned<String>>,
    authorisation_window: Option<Spanned<String>>,
    on_deadline: Option<Spanned<String>>,
    resolutions_topic: Option<Spanned<String>>,
    lease: Option<Spanned<String>>,
    four_eyes_above: Option<Spanned<String>>,
    four_eyes_release_of_decline: Option<bool>,
    #[serde(default)]
    queues: Vec<RawQueue>,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: Spanned<String>,
    url: Spanned<String>,
    secret_env: Spanned<String>,
    events: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    name: Spanned<String>,
    priority: Spanned<i64>,
    when: Option<Spanned<String>>,
    #[serde(default)]
    reasons: Vec<Spanned<String>>,
    min_score: Option<Spanned<f64>>,
}

/// Where the content of a TOML string starting at byte `start` begins:
/// after its quotes, and after the newline that follows `'''` or `"""`
/// (TOML drops it).
fn content_start(text: &str, start: usize) -> usize {
    let rest = &text[start.min(text.len())..];
    let quote = if rest.starts_with("'''") || rest.starts_with("\"\"\"") { 3 } else { 1 };
    let after = &rest[quote.min(rest.len())..];
    let newline = if after.starts_with("\r\n") {
        2
    } else if after.starts_with('\n') {
        1
    } else {
        0
    };
    start + quote + if quote == 3 { newline } else { 0 }
}

pub(super) fn validate(r: &RawReview, p: &mut Diagnostics<'_>) -> ReviewConfig {
    let mut c = ReviewConfig::default();
    if let Some(d) = &r.database {
        if d.get_ref().trim().is_empty() {
            p.on(d, "review.database", "must not be empty");
        }
        c.database = Some(d.get_ref().clone());
    }
    if let Some(e) = &r.entity {
        match CaseEntity::parse(e.get_ref()) {
            Some(entity) => c.entity = entity,
            None => {
                let known = CaseEntity::ALL.map(CaseEntity::as_str);
                let hint = crate::suggest::hint(e.get_ref(), known);
                p.on(
                    e,
                    "review.entity",
                    format!("unknown entity `{}` (known: {}){hint}", e.get_ref(), known.join(", ")),
                );
            }
        }
    }
    let duration = |v: &Option<Spanned<String>>, key: &str, min: u64, max: u64, p: &mut Diagnostics<'_>| {
        let v = v.as_ref()?;
        match parse_duration_s(v.get_ref()) {
            Ok(s) if (min..=max).contains(&s) => Some(s),
            Ok(_) => {
                p.on(v, key, format!("must be between {min}s and {max}s"));
                None
            }
            Err(m) => {
                p.on(v, key, m);
                None
            }
        }
    };
    c.hold_s = duration(&r.hold, "review.hold", 1, 30 * 86_400, p).unwrap_or(c.hold_s);
    c.authorisation_window_s = duration(&r.authorisation_window, "review.authorisation_window", 60, 31 * 86_400, p)
        .unwrap_or(c.authorisation_window_s);
    c.lease_s = duration(&r.lease, "review.lease", 10, 86_400, p).unwrap_or(c.lease_s);
    if c.hold_s >= c.authorisation_window_s {
        let at = r.hold.as_ref().or(r.authorisation_window.as_ref());
        let message = format!(
            "the hold ({} s) must end before the authorisation window ({} s) does, or the money is gone before the verdict",
            c.hold_s, c.authorisation_window_s
        );
        match at {
            Some(v) => p.on(v, "review.hold", message),
            None => p.at(0, "review.hold", message),
        }
    }
    if let Some(a) = &r.on_deadline {
        match HoldAction::parse(a.get_ref()) {
            Some(action) => c.on_deadline = action,
            None => p.on(a, "review.on_deadline", format!("`{}` is neither release nor stop", a.get_ref())),
        }
    }
    if let Some(t) = &r.resolutions_topic {
        if t.get_ref().trim().is_empty() {
            p.on(t, "review.resolutions_topic", "must not be empty");
        }
        c.resolutions_topic = Some(t.get_ref().clone());
    }
    if let Some(a) = &r.four_eyes_above {
        match Decimal::from_str(a.get_ref().trim()) {
            Ok(d) if d >= Decimal::ZERO => c.four_eyes_above = Some(d),
            Ok(_) => p.on(a, "review.four_eyes_above", "must not be negative"),
            Err(_) => {
                p.on(a, "review.four_eyes_above", format!("`{}` is not an amount (such as \"5000.00\")", a.get_ref()))
            }
        }
    }
    c.four_eyes_release_of_decline = r.four_eyes_release_of_decline.unwrap_or(false);
    for (i, q) in r.queues.iter().enumerate() {
        let key = |field: &str| format!("review.queues[{i}].{field}");
        let name = q.name.get_ref();
        if !super::is_identifier(name) {
            p.on(&q.name, key("name"), "must be lower-case letters, digits and _, starting with a letter");
        } else if name == DEFAULT_QUEUE {
            p.on(&q.name, key("name"), "`default` is the queue of payments that match no other; choose another name");
        } else if c.queues.iter().any(|d: &QueueDef| &d.name == name) {
            p.on(&q.name, key("name"), format!("queue `{name}` is declared twice"));
        }
        let priority = *q.priority.get_ref();
        if !(1..=1000).contains(&priority) {
            p.on(&q.priority, key("priority"), "must be between 1 and 1000 (`default` is 0)");
        }
        let when = q.when.as_ref().and_then(|w| {
            if w.get_ref().trim().is_empty() {
                p.on(w, key("when"), "must not be empty; leave it out to match every payment");
                return None;
            }
            let (line, column) = line_col(p.text, content_start(p.text, w.span().start));
            Some(QueueWhen { text: w.get_ref().clone(), line, column })
        });
        for code in &q.reasons {
            if code.get_ref().trim().is_empty() {
                p.on(code, key("reasons"), "a reason code must not be empty");
            }
        }
        let min_score = q.min_score.as_ref().and_then(|s| {
            if s.get_ref().is_finite() {
                Some(*s.get_ref())
            } else {
                p.on(s, key("min_score"), "must be a finite number");
                None
            }
        });
        c.queues.push(QueueDef {
            name: name.clone(),
            priority: priority.clamp(1, 1000) as i32,
            when,
            reasons: q.reasons.iter().map(|r| r.get_ref().clone()).collect(),
            min_score,
        });
    }
    // Highest priority first; declaration order among equals.
    c.queues.sort_by_key(|q| std::cmp::Reverse(q.priority));
    for (i, w) in r.webhooks.iter().enumerate() {
        c.webhooks.push(webhook(i, w, &c.webhooks, p));
    }
    c
}

/// One `[[review.webhooks]]`, every problem said with its place.
fn webhook(i: usize, w: &RawWebhook, before: &[WebhookDef], p: &mut Diagnostics<'_>) -> WebhookDef {
    let key = |field: &str| format!("review.webhooks[{i}].{field}");
    let name = w.name.get_ref();
    if !super::is_identifier(name) {
        p.on(&w.name, key("name"), "must be lower-case letters, digits and _, starting with a letter");
    } else if before.iter().any(|d| &d.name == name) {
        p.on(&w.name, key("name"), format!("webhook `{name}` is declared twice"));
    }
    let url = w.url.get_ref().trim();
    let host = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).map(|rest| {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        authority.rsplit('@').next().unwrap_or_default().to_owned()
    });
    match host {
        None => p.on(&w.url, key("url"), format!("`{url}` is not an http:// or https:// address")),
        Some(h) if h.is_empty() || h.contains(char::is_whitespace) => {
            p.on(&w.url, key("url"), format!("`{url}` names no host"))
        }
        Some(_) => {}
    }
    let secret_env = w.secret_env.get_ref();
    if secret_env.trim().is_empty() || secret_env.contains(['=', '\0']) {
        p.on(&w.secret_env, key("secret_env"), "must name an environment variable");
    }
    let mut events = Vec::new();
    match &w.events {
        None => events.extend(WebhookEvent::ALL),
        Some(list) => {
            for e in list.get_ref() {
                match WebhookEvent::parse(e) {
                    Some(event) if !events.contains(&event) => events.push(event),
                    Some(_) => {}
                    None => {
                        let known = WebhookEvent::ALL.map(WebhookEvent::as_str);
                        p.on(list, key("events"), format!("unknown event `{e}` (known: {})", known.join(", ")));
                    }
                }
            }
            if list.get_ref().is_empty() {
                p.on(list, key("events"), "must name at least one event; leave it out for all of them");
            }
        }
    }
    WebhookDef { name: name.clone(), url: url.to_owned(), secret_env: secret_env.clone(), events }
}
