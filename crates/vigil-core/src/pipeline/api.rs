//! `[api]`: `vigil serve`'s address, limits, clients, JWTs, metrics token and TLS.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::Diagnostics;
use crate::feature::parse_duration_s;

/// Where a client's signing secret comes from. Secrets never sit in the
/// repository's pipelines: they name environment variables, and inline secrets
/// are for configs kept elsewhere (a mounted secret file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    Inline(String),
}

/// One client of the HTTP API that signs its requests with HMAC-SHA256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClient {
    pub id: String,
    /// One or two secrets (two while rotating), tried in order.
    pub secrets: Vec<SecretSource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
}

/// Bearer JWTs, for services that already have them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// HS256: the shared secret. RS256: the public key, PEM (as text from the
    /// environment or inline, or a file path in `public_key_file`).
    pub key: SecretSource,
    pub public_key_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// `vigil serve`: the synchronous scoring API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub listen: String,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Most events in one batch request.
    pub max_batch: usize,
    /// Requests being decided at once; beyond it, 503 with `Retry-After`.
    pub max_concurrency: usize,
    /// Longest a decision may take; a client may ask for less.
    pub deadline_ms: u64,
    /// How far a signature's timestamp may be from the server's clock.
    pub signature_tolerance_s: u64,
    /// Decisions awaiting the decisions topic; beyond it they are dropped and counted.
    pub audit_buffer: usize,
    pub clients: Vec<ApiClient>,
    pub jwt: Option<JwtConfig>,
    /// When set, `/metrics` needs `Authorization: Bearer TOKEN`.
    pub metrics_token: Option<SecretSource>,
    /// When set, the API speaks HTTPS only.
    pub tls: Option<TlsFiles>,
}

/// The server's certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    listen: Option<Spanned<String>>,
    max_body_bytes: Option<Spanned<i64>>,
    max_batch: Option<Spanned<i64>>,
    max_concurrency: Option<Spanned<i64>>,
    deadline_ms: Option<Spanned<i64>>,
    signature_tolerance: Option<Spanned<String>>,
    audit_buffer: Option<Spanned<i64>>,
    #[serde(default)]
    clients: Vec<Spanned<RawClient>>,
    jwt: Option<Spanned<RawJwt>>,
    metrics_token_env: Option<Spanned<String>>,
    metrics_token: Option<Spanned<String>>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Spanned<String>,
    key_file: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: Spanned<String>,
    #[serde(default)]
    secrets_env: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    algorithm: Spanned<String>,
    secret_env: Option<String>,
    secret: Option<String>,
    public_key_env: Option<String>,
    public_key_file: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
}

pub(super) fn validate(raw: &Spanned<RawApi>, p: &mut Diagnostics<'_>, resolve: &dyn Fn(&str) -> PathBuf) -> ApiConfig {
    let a = raw.get_ref();
    let mut bounded = |v: &Option<Spanned<i64>>, key: &str, default: i64, max: i64| -> i64 {
        match v {
            Some(s) if !(1..=max).contains(s.get_ref()) => {
                p.on(s, key, format!("must be between 1 and {max}"));
                default
            }
            Some(s) => *s.get_ref(),
            None => default,
        }
    };
    let max_body_bytes = bounded(&a.max_body_bytes, "api.max_body_bytes", 256 * 1024, 64 << 20) as usize;
    let max_batch = bounded(&a.max_batch, "api.max_batch", 100, 10_000) as usize;
    let max_concurrency = bounded(&a.max_concurrency, "api.max_concurrency", 512, 1 << 20) as usize;
    let deadline_ms = bounded(&a.deadline_ms, "api.deadline_ms", 50, 60_000) as u64;
    let audit_buffer = bounded(&a.audit_buffer, "api.audit_buffer", 100_000, 10_000_000) as usize;
    let listen = match &a.listen {
        Some(l) if l.get_ref().parse::<std::net::SocketAddr>().is_err() => {
            p.on(l, "api.listen", "must be an address and port, such as 127.0.0.1:8080");
            String::new()
        }
        Some(l) => l.get_ref().clone(),
        None => "127.0.0.1:8080".into(),
    };
    let signature_tolerance_s = match &a.signature_tolerance {
        None => 120,
        Some(t) => match parse_duration_s(t.get_ref()) {
            Ok(s) if (1..=3600).contains(&s) => s,
            Ok(_) => {
                p.on(t, "api.signature_tolerance", "must be between 1s and 1h");
                120
            }
            Err(m) => {
                p.on(t, "api.signature_tolerance", m);
                120
            }
        },
    };
    let clients = clients(&a.clients, p);
    let jwt = a.jwt.as_ref().and_then(|j| jwt(j, p, resolve));
    if clients.is_empty() && jwt.is_none() && a.jwt.is_none() {
        p.on(raw, "api", "declares no way in: add [[api.clients]] (signed requests) or [api.jwt]");
    }
    let metrics_token = metrics_token(a, p);
    let tls = a.tls.as_ref().map(|t| {
        let file = |f: &Spanned<String>, key: &str, p: &mut Diagnostics<'_>| {
            let path = resolve(f.get_ref());
            if !path.is_file() {
                p.on(f, key, format!("no such file: {}", path.display()));
            }
            path
        };
        TlsFiles {
            cert_file: file(&t.cert_file, "api.tls.cert_file", p),
            key_file: file(&t.key_file, "api.tls.key_file", p),
        }
    });
    ApiConfig {
        listen,
        max_body_bytes,
        max_batch,
        max_concurrency,
        deadline_ms,
        signature_tolerance_s,
        audit_buffer,
        clients,
        jwt,
        metrics_token,
        tls,
    }
}

/// `[[api.clients]]`: ids unique and plain, one or two secrets each.
fn clients(raw: &[Spanned<RawClient>], p: &mut Diagnostics<'_>) -> Vec<ApiClient> {
    let mut clients = Vec::new();
    let mut ids = HashSet::new();
    for (i, c) in raw.iter().enumerate() {
        let key = |field: &str| format!("api.clients[{i}].{field}");
        let raw_client = c.get_ref();
        let id = raw_client.id.get_ref();
        if id.is_empty() || !id.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) {
            p.on(&raw_client.id, key("id"), "must be letters, digits, `-`, `_` or `.`");
        } else if !ids.insert(id.clone()) {
            p.on(&raw_client.id, key("id"), format!("client `{id}` is declared twice"));
        }
        let secrets: Vec<SecretSource> = raw_client
            .secrets_env
            .iter()
            .map(|v| SecretSource::Env(v.clone()))
            .chain(raw_client.secrets.iter().map(|s| SecretSource::Inline(s.clone())))
            .collect();
        if secrets.is_empty() || secrets.len() > 2 {
            p.on(c, key("secrets_env"), "needs one or two secrets (two while rotating), in secrets_env or secrets");
        }
        for s in &raw_client.secrets {
            if s.len() < 16 {
                p.on(c, key("secrets"), "a secret must be at least 16 bytes");
            }
        }
        clients.push(ApiClient { id: id.clone(), secrets });
    }
    clients
}

/// `[api.jwt]`: an algorithm and exactly the key it takes.
fn jwt(j: &Spanned<RawJwt>, p: &mut Diagnostics<'_>, resolve: &dyn Fn(&str) -> PathBuf) -> Option<JwtConfig> {
    let r = j.get_ref();
    let algorithm = match r.algorithm.get_ref().as_str() {
        "HS256" => JwtAlgorithm::Hs256,
        "RS256" => JwtAlgorithm::Rs256,
        other => {
            p.on(&r.algorithm, "api.jwt.algorithm", format!("unknown algorithm `{other}` (known: HS256, RS256)"));
            return None;
        }
    };
    let key = match (algorithm, &r.secret_env, &r.secret, &r.public_key_env, &r.public_key_file) {
        (JwtAlgorithm::Hs256, Some(env), None, None, None) => SecretSource::Env(env.clone()),
        (JwtAlgorithm::Hs256, None, Some(s), None, None) => SecretSource::Inline(s.clone()),
        (JwtAlgorithm::Rs256, None, None, Some(env), None) => SecretSource::Env(env.clone()),
        (JwtAlgorithm::Rs256, None, None, None, Some(_)) => SecretSource::Inline(String::new()),
        (JwtAlgorithm::Hs256, ..) => {
            p.on(j, "api.jwt", "HS256 takes exactly one of secret_env or secret");
            return None;
        }
        (JwtAlgorithm::Rs256, ..) => {
            p.on(j, "api.jwt", "RS256 takes exactly one of public_key_env or public_key_file");
            return None;
        }
    };
    Some(JwtConfig {
        algorithm,
        key,
        public_key_file: r.public_key_file.as_deref().map(resolve),
        issuer: r.issuer.clone(),
        audience: r.audience.clone(),
    })
}

/// `metrics_token_env` or `metrics_token`, not both.
fn metrics_token(a: &RawApi, p: &mut Diagnostics<'_>) -> Option<SecretSource> {
    match (&a.metrics_token_env, &a.metrics_token) {
        (Some(env), Some(_)) => {
            p.on(env, "api.metrics_token_env", "give metrics_token_env or metrics_token, not both");
            None
        }
        (Some(env), None) => Some(SecretSource::Env(env.get_ref().clone())),
        (None, Some(t)) if t.get_ref().len() < 16 => {
            p.on(t, "api.metrics_token", "a token must be at least 16 bytes");
            None
        }
        (None, Some(t)) => Some(SecretSource::Inline(t.get_ref().clone())),
        (None, None) => None,
    }
}
