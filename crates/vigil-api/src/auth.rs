//! Who may ask for decisions: HMAC-signed requests, or bearer JWTs.
//!
//! **Signed requests.** A client sends
//! `Vigil-Signature: client=ID,t=UNIX_MILLISECONDS,v1=HEX`, where `HEX` is the
//! HMAC-SHA256, under one of the client's secrets, of
//! `"{t}.{METHOD}.{path}.{body}"` (the path with its query, the body as sent).
//! A request is refused when the timestamp is further than the tolerance from
//! the server's clock (stale), when no secret of the client gives the same MAC
//! (compared in constant time), or when the very same signature was already
//! accepted (a replay). A client retrying signs again: its new timestamp makes a
//! new signature, and the retry gets the first decision back (idempotency).
//! Milliseconds, not seconds, so that a quick retry is never taken for a replay.
//! Two secrets may be active per client, so secrets rotate without downtime.
//!
//! **Bearer JWTs.** `Authorization: Bearer TOKEN`, HS256 or RS256 with the
//! configured key; `exp` is required, `iss` and `aud` checked when configured.
//! The client is the token's `sub`. Bearer tokens can be replayed until they
//! expire, as with any bearer credential: keep them short-lived.
//!
//! Every refusal answers the same 401; the reason goes to the logs and metrics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use hmac::Mac;
use vigil_core::pipeline::{ApiConfig, JwtAlgorithm, SecretSource};
use vigil_engine::metrics::{MetricsToken, TokenRefusal};

/// The signature header.
pub const SIGNATURE_HEADER: &str = vigil_core::signature::HEADER;

/// Why a request was refused (logged and counted, never told to the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No signature header and no bearer token.
    Missing,
    /// A header that does not parse.
    Malformed,
    UnknownClient,
    /// Timestamp outside the tolerance window.
    Stale,
    BadSignature,
    /// A signature already accepted once.
    Replayed,
    /// A bearer token that does not verify (bad signature, expired, wrong issuer...).
    BadToken,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::UnknownClient => "unknown_client",
            Refusal::Stale => "stale",
            Refusal::BadSignature => "bad_signature",
            Refusal::Replayed => "replayed",
            Refusal::BadToken => "bad_token",
        }
    }
}

/// A configuration that cannot serve: a secret that is not set, a key that
/// does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

fn resolve(source: &SecretSource, place: &str) -> Result<Option<Vec<u8>>, SetupError> {
    match source {
        SecretSource::Inline(s) => Ok(Some(s.as_bytes().to_vec())),
        SecretSource::Env(var) => match std::env::var(var) {
            Ok(v) if v.len() >= 16 => Ok(Some(v.into_bytes())),
            Ok(_) => Err(SetupError(format!("{place}: ${var} is shorter than 16 bytes"))),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(SetupError(format!("{place}: ${var}: {e}"))),
        },
    }
}

/// Signatures accepted within the tolerance window, each kept until its
/// timestamp leaves the window: memory is about 24 bytes per request of the
/// last `tolerance` (10,000 requests/s and 5 minutes: about 70 MB; the
/// default tolerance is 2 minutes).
#[derive(Debug, Default)]
struct ReplayGuard {
    seen: HashSet<u64>,
    by_expiry: BTreeMap<i64, Vec<u64>>,
}

impl ReplayGuard {
    /// Records `id` until `expires`; false when it was there already.
    fn first_time(&mut self, id: u64, expires: i64, now: i64) -> bool {
        while let Some(entry) = self.by_expiry.first_entry() {
            if *entry.key() >= now {
                break;
            }
            for old in entry.remove() {
                self.seen.remove(&old);
            }
        }
        if !self.seen.insert(id) {
            return false;
        }
        self.by_expiry.entry(expires).or_default().push(id);
        true
    }
}

struct Jwt {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

/// Checks requests against the configured clients and JWT key.
pub struct Verifier {
    clients: HashMap<String, Vec<Vec<u8>>>,
    tolerance_ms: i64,
    replays: Mutex<ReplayGuard>,
    jwt: Option<Jwt>,
    /// The `/metrics` bearer token, when one is configured.
    metrics_token: Option<MetricsToken>,
}

impl Verifier {
    /// Resolves every secret now, so that a missing one stops the start with
    /// its name rather than refusing requests later.
    pub fn new(api: &ApiConfig) -> Result<Verifier, SetupError> {
        let mut clients = HashMap::new();
        for (i, c) in api.clients.iter().enumerate() {
            let place = format!("api.clients[{i}] ({})", c.id);
            let mut secrets = Vec::new();
            let mut unset = Vec::new();
            for s in &c.secrets {
                match resolve(s, &place)? {
                    Some(secret) => secrets.push(secret),
                    None => unset.extend(match s {
                        SecretSource::Env(v) => Some(format!("${v}")),
                        SecretSource::Inline(_) => None,
                    }),
                }
            }
            if !secrets.is_empty() && !unset.is_empty() {
                // While rotating, one of the two may not be there yet (or any more).
                tracing::warn!(client = %c.id, unset = %unset.join(", "), "a client secret's variable is not set; the other secret verifies");
            }
            if secrets.is_empty() {
                let names: Vec<String> = c
                    .secrets
                    .iter()
                    .filter_map(|s| match s {
                        SecretSource::Env(v) => Some(format!("${v}")),
                        SecretSource::Inline(_) => None,
                    })
                    .collect();
                let first = names.first().map_or("VARIABLE", |n| n.trim_start_matches('$'));
                return Err(SetupError(format!(
                    "{place}: none of {} is set; set one to the client's secret (16 bytes or more), such as \
                     `export {first}=$(openssl rand -hex 32)`",
                    names.join(", ")
                )));
            }
            clients.insert(c.id.clone(), secrets);
        }
        let jwt = match &api.jwt {
            None => None,
            Some(j) => {
                let place = "api.jwt";
                let (key, algorithm) = match j.algorithm {
                    JwtAlgorithm::Hs256 => {
                        let secret = resolve(&j.key, place)?
                            .ok_or_else(|| SetupError(format!("{place}: the secret's variable is not set")))?;
                        (jsonwebtoken::DecodingKey::from_secret(&secret), jsonwebtoken::Algorithm::HS256)
                    }
                    JwtAlgorithm::Rs256 => {
                        let pem = match &j.public_key_file {
                            Some(path) => std::fs::read(path)
                                .map_err(|e| SetupError(format!("{place}: {}: {e}", path.display())))?,
                            None => resolve(&j.key, place)?
                                .ok_or_else(|| SetupError(format!("{place}: the public key's variable is not set")))?,
                        };
                        let key = jsonwebtoken::DecodingKey::from_rsa_pem(&pem)
                            .map_err(|e| SetupError(format!("{place}: public key: {e}")))?;
                        (key, jsonwebtoken::Algorithm::RS256)
                    }
                };
                let mut validation = jsonwebtoken::Validation::new(algorithm);
                validation.set_required_spec_claims(&["exp", "sub"]);
                validation.leeway = 5;
                match &j.audience {
                    Some(a) => validation.set_audience(&[a]),
                    None => validation.validate_aud = false,
                }
                if let Some(iss) = &j.issuer {
                    validation.set_issuer(&[iss]);
                }
                Some(Jwt { key, validation })
            }
        };
        let metrics_token = match &api.metrics_token {
            None => None,
            Some(source) => {
                let token = resolve(source, "api.metrics_token")?.ok_or_else(|| {
                    let name = match source {
                        SecretSource::Env(v) => v.as_str(),
                        SecretSource::Inline(_) => "metrics_token",
                    };
                    SetupError(format!("api.metrics_token_env: ${name} is not set"))
                })?;
                Some(MetricsToken::new(&token))
            }
        };
        Ok(Verifier {
            clients,
            tolerance_ms: api.signature_tolerance_s as i64 * 1000,
            replays: Mutex::new(ReplayGuard::default()),
            jwt,
            metrics_token,
        })
    }

    /// Whether a `/metrics` request may read: always when no token is
    /// configured, else only with `Authorization: Bearer TOKEN`.
    pub fn metrics_allowed(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let Some(expected) = &self.metrics_token else { return Ok(()) };
        expected.check(authorization).map_err(|r| match r {
            TokenRefusal::Missing => Refusal::Missing,
            TokenRefusal::Wrong => Refusal::BadToken,
        })
    }

    /// The client a request comes from, or why it is refused. `now_ms` is the
    /// server's clock in Unix milliseconds.
    pub fn verify(
        &self,
        signature: Option<&str>,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Result<String, Refusal> {
        if let Some(sig) = signature {
            return self.verify_signature(sig, method, path, body, now_ms);
        }
        match (authorization.and_then(|a| a.strip_prefix("Bearer ")), &self.jwt) {
            (Some(token), Some(jwt)) => jsonwebtoken::decode::<Claims>(token.trim(), &jwt.key, &jwt.validation)
                .map(|t| t.claims.sub)
                .map_err(|_| Refusal::BadToken),
            (Some(_), None) => Err(Refusal::BadToken),
            (None, _) => Err(Refusal::Missing),
        }
    }

    fn verify_signature(
        &self,
        header: &str,
        method: &str,
        path: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Result<String, Refusal> {
        let (mut client, mut t, mut v1) = (None, None, None);
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("client", v)) => client = Some(v),
                Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| Refusal::Malformed)?),
                Some(("v1", v)) => v1 = Some(hex::decode(v).map_err(|_| Refusal::Malformed)?),
                _ => return Err(Refusal::Malformed),
            }
        }
        let (Some(client), Some(t), Some(v1)) = (client, t, v1) else { return Err(Refusal::Malformed) };
        let secrets = self.clients.get(client).ok_or(Refusal::UnknownClient)?;
        if (now_ms - t).abs() > self.tolerance_ms {
            return Err(Refusal::Stale);
        }
        let matched = secrets.iter().any(|secret| mac(secret, t, method, path, body).verify_slice(&v1).is_ok());
        if !matched {
            return Err(Refusal::BadSignature);
        }
        let id = u64::from_le_bytes(v1[..8].try_into().map_err(|_| Refusal::Malformed)?);
        let mut replays = self.replays.lock().unwrap_or_else(|p| p.into_inner());
        if !replays.first_time(id, t + self.tolerance_ms, now_ms) {
            return Err(Refusal::Replayed);
        }
        Ok(client.to_owned())
    }
}

use vigil_core::signature::mac;
pub use vigil_core::signature::sign;

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::pipeline::ApiClient;

    const SECRET: &str = "0123456789abcdef-old";
    const NEXT: &str = "0123456789abcdef-new";

    fn api() -> ApiConfig {
        ApiConfig {
            listen: "127.0.0.1:0".into(),
            max_body_bytes: 1024,
            max_batch: 10,
            max_concurrency: 10,
            deadline_ms: 50,
            signature_tolerance_s: 60,
            audit_buffer: 10,
            clients: vec![ApiClient {
                id: "shop".into(),
                secrets: vec![SecretSource::Inline(SECRET.into()), SecretSource::Inline(NEXT.into())],
            }],
            jwt: Some(vigil_core::pipeline::JwtConfig {
                algorithm: JwtAlgorithm::Hs256,
                key: SecretSource::Inline("jwt-secret-0123456789".into()),
                public_key_file: None,
                issuer: Some("issuer".into()),
                audience: None,
            }),
            metrics_token: Some(SecretSource::Inline("metrics-token-0123456789".into())),
            tls: None,
        }
    }

    #[test]
    fn signatures_verify_once_within_the_window_under_either_secret() {
        let v = Verifier::new(&api()).unwrap();
        let body = br#"{"a":1}"#;
        let now = 1_700_000_000_000;
        let good = sign("shop", SECRET.as_bytes(), now, "POST", "/v1/decisions", body);
        assert_eq!(v.verify(Some(&good), None, "POST", "/v1/decisions", body, now + 5_000), Ok("shop".into()));
        assert_eq!(v.verify(Some(&good), None, "POST", "/v1/decisions", body, now + 6_000), Err(Refusal::Replayed));
        // A retry a millisecond later is a new request.
        let retry = sign("shop", SECRET.as_bytes(), now + 1, "POST", "/v1/decisions", body);
        assert_eq!(v.verify(Some(&retry), None, "POST", "/v1/decisions", body, now + 6_000), Ok("shop".into()));
        let rotated = sign("shop", NEXT.as_bytes(), now, "POST", "/v1/decisions", body);
        assert_eq!(v.verify(Some(&rotated), None, "POST", "/v1/decisions", body, now), Ok("shop".into()));

        let fresh = |t: i64| sign("shop", SECRET.as_bytes(), t, "POST", "/v1/decisions", body);
        let check = |h: &str, body: &[u8], path: &str| v.verify(Some(h), None, "POST", path, body, now);
        assert_eq!(check(&fresh(now - 60_001), body, "/v1/decisions"), Err(Refusal::Stale));
        assert_eq!(check(&fresh(now + 60_001), body, "/v1/decisions"), Err(Refusal::Stale));
        assert_eq!(check(&fresh(now + 1), br#"{"a":2}"#, "/v1/decisions"), Err(Refusal::BadSignature));
        assert_eq!(check(&fresh(now + 2), body, "/v1/labels"), Err(Refusal::BadSignature));
        let stranger = sign("shop", b"not-the-secret-at-all", now, "POST", "/v1/decisions", body);
        assert_eq!(check(&stranger, body, "/v1/decisions"), Err(Refusal::BadSignature));
        let other = sign("other", SECRET.as_bytes(), now, "POST", "/v1/decisions", body);
        assert_eq!(check(&other, body, "/v1/decisions"), Err(Refusal::UnknownClient));
        assert_eq!(check("t=1,v1=zz", body, "/v1/decisions"), Err(Refusal::Malformed));
        assert_eq!(v.verify(None, None, "POST", "/v1/decisions", body, now), Err(Refusal::Missing));
    }

    #[test]
    fn replay_guard_forgets_only_after_the_window() {
        let mut g = ReplayGuard::default();
        assert!(g.first_time(1, 100, 0));
        assert!(!g.first_time(1, 100, 99));
        assert!(!g.first_time(1, 100, 100));
        assert!(g.first_time(2, 200, 101));
        assert!(g.first_time(1, 201, 101), "expired entries are dropped");
        assert_eq!(g.seen.len(), 2);
    }

    #[test]
    fn bearer_tokens_need_the_key_the_issuer_and_time() {
        let v = Verifier::new(&api()).unwrap();
        let key = jsonwebtoken::EncodingKey::from_secret(b"jwt-secret-0123456789");
        let token = |iss: &str, exp: i64, key: &jsonwebtoken::EncodingKey| {
            let claims = serde_json::json!({"sub": "ledger", "iss": iss, "exp": exp});
            format!("Bearer {}", jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, key).unwrap())
        };
        let now = chrono_now();
        let ok = token("issuer", now + 60, &key);
        assert_eq!(v.verify(None, Some(&ok), "POST", "/v1/decisions", b"", now * 1000), Ok("ledger".into()));
        let expired = token("issuer", now - 60, &key);
        assert_eq!(v.verify(None, Some(&expired), "POST", "/", b"", now * 1000), Err(Refusal::BadToken));
        let foreign = token("someone", now + 60, &key);
        assert_eq!(v.verify(None, Some(&foreign), "POST", "/", b"", now * 1000), Err(Refusal::BadToken));
        let forged = token("issuer", now + 60, &jsonwebtoken::EncodingKey::from_secret(b"guess-0123456789"));
        assert_eq!(v.verify(None, Some(&forged), "POST", "/", b"", now * 1000), Err(Refusal::BadToken));
    }

    fn chrono_now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    }

    #[test]
    fn a_missing_secret_names_its_variable() {
        let mut a = api();
        a.clients[0].secrets = vec![SecretSource::Env("VIGIL_TEST_SURELY_UNSET_SECRET".into())];
        let e = Verifier::new(&a).err().unwrap().to_string();
        assert!(e.contains("$VIGIL_TEST_SURELY_UNSET_SECRET") && e.contains("api.clients[0] (shop)"), "{e}");
    }

    #[test]
    fn metrics_need_the_configured_token_when_there_is_one() {
        let v = Verifier::new(&api()).unwrap();
        assert_eq!(v.metrics_allowed(Some("Bearer metrics-token-0123456789")), Ok(()));
        assert_eq!(v.metrics_allowed(Some("Bearer metrics-token-012345678")), Err(Refusal::BadToken));
        assert_eq!(v.metrics_allowed(Some("Bearer ")), Err(Refusal::BadToken));
        assert_eq!(v.metrics_allowed(Some("Basic abc")), Err(Refusal::Missing));
        assert_eq!(v.metrics_allowed(None), Err(Refusal::Missing));
        let open = Verifier::new(&ApiConfig { metrics_token: None, ..api() }).unwrap();
        assert_eq!(open.metrics_allowed(None), Ok(()));
        let unset =
            ApiConfig { metrics_token: Some(SecretSource::Env("VIGIL_TEST_SURELY_UNSET_METRICS".into())), ..api() };
        let err = Verifier::new(&unset).err().unwrap().to_string();
        assert!(err.contains("VIGIL_TEST_SURELY_UNSET_METRICS"), "{err}");
    }
}

#[cfg(test)]
mod secret_tests {
    use vigil_core::pipeline::{ApiClient, ApiConfig, SecretSource};

    use super::Verifier;

    fn with(secrets: Vec<SecretSource>) -> ApiConfig {
        ApiConfig {
            listen: "127.0.0.1:0".into(),
            max_body_bytes: 1024,
            max_batch: 10,
            max_concurrency: 10,
            deadline_ms: 50,
            signature_tolerance_s: 60,
            audit_buffer: 10,
            clients: vec![ApiClient { id: "shop".into(), secrets }],
            jwt: None,
            metrics_token: None,
            tls: None,
        }
    }

    /// The rule docs/api.md states: none of a client's variables set stops
    /// the start, naming them; one of two set is enough (while rotating).
    #[test]
    fn a_client_starts_with_one_of_its_two_secrets_and_not_with_none() {
        // Names of this test alone: the environment is the process's.
        let (set, unset) = ("VIGIL_TEST_SECRET_SET_7f3a", "VIGIL_TEST_SECRET_UNSET_7f3a");
        std::env::set_var(set, "0123456789abcdef-rotated");
        let both = with(vec![SecretSource::Env(unset.into()), SecretSource::Env(set.into())]);
        assert!(Verifier::new(&both).is_ok());
        let none = with(vec![SecretSource::Env(unset.into())]);
        let err = Verifier::new(&none).err().unwrap().to_string();
        assert!(err.starts_with(&format!("api.clients[0] (shop): none of ${unset} is set; set one")), "{err}");
    }
}
