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

/// Logins through an OpenID Connect provider (`[review.oidc]`), beside or
/// instead of local passwords: the authorisation code flow with PKCE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The provider's issuer URL (its discovery document is read at start).
    pub issuer: String,
    pub client_id: String,
    /// The environment variable holding the client secret.
    pub client_secret_env: String,
    /// This server's callback as the provider knows it, ending in
    /// `/review/oidc/callback`.
    pub redirect_url: String,
    /// The claim (in the ID token or from the userinfo endpoint) whose value,
    /// or list of values, gives the analyst's role.
    pub role_claim: String,
    /// Which claim values give each role, highest role first (admin, lead,
    /// analyst); when empty, the values `admin`, `lead` and `analyst`.
    pub roles: Vec<(String, Vec<String>)>,
    /// The claim that names the account (`preferred_username` by default,
    /// else `email`).
    pub name_claim: String,
}

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
    pub oidc: Option<OidcConfig>,
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
            oidc: None,
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
    oidc: Option<RawOidc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: Spanned<String>,
    client_id: Spanned<String>,
    client_secret_env: Spanned<String>,
    redirect_url: Spanned<String>,
    role_claim: Option<Spanned<String>>,
    name_claim: Option<Spanned<String>>,
    roles: Option<Spanned<std::collections::BTreeMap<String, Vec<String>>>>,
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
    c.oidc = r.oidc.as_ref().map(|o| oidc(o, p));
    c
}

/// The host of an `http://` or `https://` address, or why it has none.
fn host_of(url: &str) -> Result<&str, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("`{url}` is not an http:// or https:// address"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("`{url}` names no host"));
    }
    Ok(host)
}

/// `[review.oidc]`, every problem said with its place.
fn oidc(o: &RawOidc, p: &mut Diagnostics<'_>) -> OidcConfig {
    let key = |field: &str| format!("review.oidc.{field}");
    for (value, field) in [(&o.issuer, "issuer"), (&o.redirect_url, "redirect_url")] {
        if let Err(m) = host_of(value.get_ref().trim()) {
            p.on(value, key(field), m);
        }
    }
    if !o.redirect_url.get_ref().trim_end_matches('/').ends_with("/review/oidc/callback") {
        p.on(
            &o.redirect_url,
            key("redirect_url"),
            "must end in /review/oidc/callback, where this server takes the answer",
        );
    }
    if o.client_id.get_ref().trim().is_empty() {
        p.on(&o.client_id, key("client_id"), "must not be empty");
    }
    let secret = o.client_secret_env.get_ref();
    if secret.trim().is_empty() || secret.contains(['=', '\0']) {
        p.on(&o.client_secret_env, key("client_secret_env"), "must name an environment variable");
    }
    let claim = |v: &Option<Spanned<String>>, field: &str, default: &str, p: &mut Diagnostics<'_>| match v {
        Some(c) if c.get_ref().trim().is_empty() => {
            p.on(c, key(field), "must not be empty");
            default.to_owned()
        }
        Some(c) => c.get_ref().clone(),
        None => default.to_owned(),
    };
    let role_claim = claim(&o.role_claim, "role_claim", "vigil_role", p);
    let name_claim = claim(&o.name_claim, "name_claim", "preferred_username", p);
    let mut roles = Vec::new();
    if let Some(map) = &o.roles {
        for (role, values) in map.get_ref() {
            if !["admin", "lead", "analyst"].contains(&role.as_str()) {
                p.on(map, key("roles"), format!("`{role}` is not a role (admin, lead, analyst)"));
            } else if values.is_empty() || values.iter().any(|v| v.trim().is_empty()) {
                p.on(map, key("roles"), format!("`{role}` needs one or more claim values, none empty"));
            }
        }
        for role in ["admin", "lead", "analyst"] {
            if let Some(values) = map.get_ref().get(role) {
                roles.push((role.to_owned(), values.clone()));
            }
        }
    }
    OidcConfig {
        issuer: o.issuer.get_ref().trim().trim_end_matches('/').to_owned(),
        client_id: o.client_id.get_ref().clone(),
        client_secret_env: secret.clone(),
        redirect_url: o.redirect_url.get_ref().trim().to_owned(),
        role_claim,
        roles,
        name_claim,
    }
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
    if let Err(m) = host_of(url) {
        p.on(&w.url, key("url"), m);
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
