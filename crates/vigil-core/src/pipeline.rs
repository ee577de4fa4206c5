//! Pipeline configuration (`pipelines/*.toml`): parse, then validate, with no IO
//! beyond reading the file. Every problem is reported at once, each with its place.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::event::EventField;
use crate::feature::{parse_duration_s, Aggregate, EntityKey, FeatureDef};

/// Shortest and longest accepted feature windows.
pub const MIN_WINDOW_S: u64 = 60;
pub const MAX_WINDOW_S: u64 = 90 * 86_400;

/// Names that rules reserve and features may not take.
pub const RESERVED_NAMES: [&str; 1] = ["model_score"];

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, such as `features[2].window`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// A config that could not be read or does not validate.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

/// Kafka settings for `vigil run`.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub decisions_topic: String,
    pub dead_letter_topic: String,
    /// Where confirmed outcomes (chargebacks, verdicts) arrive for label features.
    pub labels_topic: Option<String>,
    /// Most events decided together (one feature-store round trip).
    pub batch_size: usize,
    /// Most batches whose outputs may await delivery at once.
    pub max_in_flight_batches: usize,
    /// Event fields tried in order to key a decision, so order per entity holds.
    pub decision_key: Vec<EventField>,
    /// Extra librdkafka properties, passed through to consumer and producer.
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    /// In-process, lost on exit: the embedded default.
    Memory,
    Redis {
        url: String,
    },
    /// A Redis Cluster, found through any of these seed nodes.
    RedisCluster {
        nodes: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub key_prefix: String,
    /// How long a processed transaction id is remembered for de-duplication.
    pub dedup_ttl_s: u64,
    /// Per-call timeout.
    pub timeout_ms: u64,
    /// What to do when the feature store is unavailable or too slow.
    pub degraded: DegradedPolicy,
    /// Consecutive failed calls that open the circuit breaker.
    pub breaker_failures: u64,
    /// How long an open breaker refuses calls before it lets one through.
    pub breaker_cool_down_ms: u64,
}

/// What the engine does when the feature store is unavailable, too slow, or
/// behind an open circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DegradedPolicy {
    /// The call fails: the stream waits and retries the batch until the store is
    /// back (nothing is decided without features, nothing is lost).
    #[default]
    Fail,
    /// Decide with the features missing and mark the decision degraded.
    Decide,
    /// As `Decide`, but never approve: an approval becomes a review.
    Review,
}

impl DegradedPolicy {
    pub const NAMES: [&'static str; 3] = ["fail", "decide", "review"];

    pub fn parse(s: &str) -> Option<DegradedPolicy> {
        match s {
            "fail" => Some(DegradedPolicy::Fail),
            "decide" => Some(DegradedPolicy::Decide),
            "review" => Some(DegradedPolicy::Review),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub path: PathBuf,
    /// Risk-score points a model score of 1.0 adds.
    pub weight: f64,
    /// A challenger model scored beside the champion on every decision and
    /// reported with it, never deciding.
    pub challenger: Option<PathBuf>,
}

/// Risk-score thresholds of the decision policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub review_score: f64,
    pub decline_score: f64,
}

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

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub file: PathBuf,
    pub name: String,
    pub kafka: Option<KafkaConfig>,
    pub store: StoreConfig,
    /// Rule file or folder, resolved against the config file's folder.
    pub rules_path: PathBuf,
    pub model: Option<ModelConfig>,
    pub thresholds: Thresholds,
    pub features: Vec<FeatureDef>,
    /// The HTTP API, when the pipeline serves one.
    pub api: Option<ApiConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<Spanned<String>>,
    kafka: Option<RawKafka>,
    store: Option<RawStore>,
    rules: Spanned<RawRules>,
    model: Option<RawModel>,
    decision: Option<RawDecision>,
    #[serde(default)]
    features: Vec<Spanned<RawFeature>>,
    api: Option<Spanned<RawApi>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: Spanned<String>,
    group_id: Spanned<String>,
    input_topic: Spanned<String>,
    decisions_topic: Spanned<String>,
    dead_letter_topic: Spanned<String>,
    labels_topic: Option<Spanned<String>>,
    batch_size: Option<Spanned<i64>>,
    max_in_flight_batches: Option<Spanned<i64>>,
    decision_key: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Spanned<String>,
    redis_url: Option<Spanned<String>>,
    redis_nodes: Option<Spanned<Vec<Spanned<String>>>>,
    key_prefix: Option<Spanned<String>>,
    dedup_ttl: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<i64>>,
    degraded: Option<Spanned<String>>,
    breaker_failures: Option<Spanned<i64>>,
    breaker_cool_down: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    path: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    path: Spanned<String>,
    weight: Option<Spanned<f64>>,
    challenger: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecision {
    review_score: Spanned<f64>,
    decline_score: Spanned<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: Spanned<String>,
    entity: Spanned<String>,
    aggregate: Spanned<String>,
    window: Spanned<String>,
    /// For `distinct`: the field whose distinct values are counted.
    of: Option<Spanned<String>>,
}

/// Collects problems with line and column computed from byte offsets.
struct Problems<'a> {
    file: &'a Path,
    text: &'a str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn at(&mut self, offset: usize, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, offset);
        self.list.push(Problem {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    fn on<T>(&mut self, spanned: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        self.at(spanned.span().start, key, message)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PipelineConfig {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    /// Validates pipeline text as if read from `path` (relative paths inside it are
    /// resolved against `path`'s folder).
    pub fn parse(path: &Path, text: &str) -> Result<PipelineConfig, ConfigError> {
        let mut p = Problems { file: path, text, list: Vec::new() };
        let raw: RawPipeline = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                p.at(offset, "", e.message().trim().to_owned());
                return Err(ConfigError::Invalid { problems: p.list });
            }
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |s: &str| {
            let candidate = PathBuf::from(s);
            if candidate.is_absolute() {
                candidate
            } else {
                base.join(candidate)
            }
        };

        let name = match &raw.name {
            Some(n) if n.get_ref().trim().is_empty() => {
                p.on(n, "name", "must not be empty");
                String::new()
            }
            Some(n) => n.get_ref().clone(),
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        };

        let kafka = raw.kafka.as_ref().map(|k| validate_kafka(k, &mut p));
        let store = validate_store(raw.store.as_ref(), &mut p);

        let rules_path = raw.rules.get_ref().path.get_ref();
        if rules_path.trim().is_empty() {
            p.on(&raw.rules.get_ref().path, "rules.path", "must not be empty");
        }
        let rules_path = resolve(rules_path);

        let model = raw.model.as_ref().map(|m| {
            let weight = m.weight.as_ref().map_or(100.0, |w| *w.get_ref());
            if let Some(w) = &m.weight {
                if !w.get_ref().is_finite() || *w.get_ref() < 0.0 {
                    p.on(w, "model.weight", "must be a finite number, zero or more");
                }
            }
            if let Some(c) = &m.challenger {
                if c.get_ref().trim().is_empty() {
                    p.on(c, "model.challenger", "must not be empty (leave the key out for no challenger)");
                }
            }
            ModelConfig {
                path: resolve(m.path.get_ref()),
                weight,
                challenger: m.challenger.as_ref().map(|c| resolve(c.get_ref())),
            }
        });

        let thresholds = match &raw.decision {
            Some(d) => {
                let (r, dc) = (*d.review_score.get_ref(), *d.decline_score.get_ref());
                if !r.is_finite() {
                    p.on(&d.review_score, "decision.review_score", "must be a finite number");
                }
                if !dc.is_finite() {
                    p.on(&d.decline_score, "decision.decline_score", "must be a finite number");
                } else if r.is_finite() && dc < r {
                    p.on(
                        &d.decline_score,
                        "decision.decline_score",
                        format!("{dc} is below review_score {r}; declining must need at least as much risk as review"),
                    );
                }
                Thresholds { review_score: r, decline_score: dc }
            }
            None => Thresholds { review_score: 50.0, decline_score: 100.0 },
        };

        let mut features = Vec::new();
        let mut seen = HashSet::new();
        for (i, f) in raw.features.iter().enumerate() {
            let key = |field: &str| format!("features[{i}].{field}");
            let f = f.get_ref();
            let name = f.name.get_ref();
            if !is_identifier(name) {
                p.on(
                    &f.name,
                    key("name"),
                    format!("`{name}` is not a name (lower-case letters, digits and _, not starting with a digit)"),
                );
            } else if EventField::parse(name).is_some() || RESERVED_NAMES.contains(&name.as_str()) {
                p.on(&f.name, key("name"), format!("`{name}` is taken by an event field or a reserved name"));
            } else if !seen.insert(name.clone()) {
                p.on(&f.name, key("name"), format!("`{name}` is declared twice"));
            }
            let entity = EntityKey::parse(f.entity.get_ref());
            if let Err(m) = &entity {
                p.on(&f.entity, key("entity"), m.clone());
            }
            let aggregate = Aggregate::parse(f.aggregate.get_ref());
            if aggregate.is_none() {
                let known = Aggregate::ALL.iter().map(|a| a.name());
                let hint = crate::suggest::hint(f.aggregate.get_ref(), known.clone());
                let list = known.collect::<Vec<_>>().join(", ");
                p.on(
                    &f.aggregate,
                    key("aggregate"),
                    format!("unknown aggregate `{}` (known: {list}){hint}", f.aggregate.get_ref()),
                );
            }
            let window = parse_duration_s(f.window.get_ref());
            match &window {
                Err(m) => p.on(&f.window, key("window"), m.clone()),
                Ok(w) if !(MIN_WINDOW_S..=MAX_WINDOW_S).contains(w) => {
                    p.on(&f.window, key("window"), "must be between 1m and 90d")
                }
                Ok(_) => {}
            }
            let of = match (&f.of, aggregate) {
                (None, Some(a)) if a.takes_field() => {
                    p.on(&f.aggregate, key("of"), format!("`{}` needs `of`, the text field it reads", a.name()));
                    Err(())
                }
                (None, _) => Ok(None),
                (Some(of), Some(a)) if a.takes_field() => match EventField::parse(of.get_ref()) {
                    Some(field) if !matches!(field, EventField::Timestamp | EventField::Amount) => Ok(Some(field)),
                    Some(field) => {
                        let hint = match (a, field) {
                            (Aggregate::Previous, EventField::Amount) => "; the previous amount is `previous_amount`",
                            _ => "",
                        };
                        p.on(of, key("of"), format!("`{}` reads text fields, not amount or timestamp{hint}", a.name()));
                        Err(())
                    }
                    None => {
                        let known = EventField::ALL.iter().map(|f| f.name());
                        let hint = crate::suggest::hint(of.get_ref(), known);
                        p.on(of, key("of"), format!("unknown field `{}`{hint}", of.get_ref()));
                        Err(())
                    }
                },
                (Some(of), _) => {
                    p.on(of, key("of"), "only `distinct`, `changed` and `previous` take `of`");
                    Err(())
                }
            };
            if let (Ok(entity), Some(aggregate), Ok(window_s), Ok(of)) = (entity, aggregate, window, of) {
                features.push(FeatureDef { name: name.clone(), entity, aggregate, window_s, of });
            }
        }

        let api = raw.api.as_ref().map(|a| validate_api(a, &mut p, &resolve));

        if !p.list.is_empty() {
            return Err(ConfigError::Invalid { problems: p.list });
        }
        Ok(PipelineConfig {
            file: path.to_path_buf(),
            name,
            kafka,
            store,
            rules_path,
            model,
            thresholds,
            features,
            api,
        })
    }
}

fn validate_kafka(k: &RawKafka, p: &mut Problems<'_>) -> KafkaConfig {
    for (value, key) in [
        (&k.brokers, "kafka.brokers"),
        (&k.group_id, "kafka.group_id"),
        (&k.input_topic, "kafka.input_topic"),
        (&k.decisions_topic, "kafka.decisions_topic"),
        (&k.dead_letter_topic, "kafka.dead_letter_topic"),
    ] {
        if value.get_ref().trim().is_empty() {
            p.on(value, key, "must not be empty");
        }
    }
    if let Some(t) = &k.labels_topic {
        if t.get_ref().trim().is_empty() {
            p.on(t, "kafka.labels_topic", "must not be empty");
        }
    }
    let topics: Vec<&Spanned<String>> =
        [&k.input_topic, &k.decisions_topic, &k.dead_letter_topic].into_iter().chain(k.labels_topic.as_ref()).collect();
    for (i, a) in topics.iter().enumerate() {
        for b in &topics[i + 1..] {
            if a.get_ref() == b.get_ref() {
                p.on(*b, "kafka", format!("topic `{}` is used for two roles", b.get_ref()));
            }
        }
    }
    let mut bounded = |v: &Option<Spanned<i64>>, key: &str, default: i64, max: i64| -> usize {
        match v {
            Some(s) if !(1..=max).contains(s.get_ref()) => {
                p.on(s, key, format!("must be between 1 and {max}"));
                default as usize
            }
            Some(s) => *s.get_ref() as usize,
            None => default as usize,
        }
    };
    let batch_size = bounded(&k.batch_size, "kafka.batch_size", 500, 10_000);
    let max_in_flight_batches = bounded(&k.max_in_flight_batches, "kafka.max_in_flight_batches", 4, 64);
    let decision_key = match &k.decision_key {
        Some(keys) => {
            let mut out = Vec::new();
            for name in keys.get_ref() {
                match EventField::parse(name) {
                    Some(f) if f.is_entity() || f == EventField::TransactionId => out.push(f),
                    _ => {
                        let known = EventField::ALL.iter().map(|f| f.name());
                        p.on(
                            keys,
                            "kafka.decision_key",
                            format!("`{name}` is not an entity field{}", crate::suggest::hint(name, known)),
                        );
                    }
                }
            }
            out
        }
        None => vec![EventField::CardId, EventField::AccountId, EventField::CustomerId],
    };
    KafkaConfig {
        brokers: k.brokers.get_ref().clone(),
        group_id: k.group_id.get_ref().clone(),
        input_topic: k.input_topic.get_ref().clone(),
        decisions_topic: k.decisions_topic.get_ref().clone(),
        dead_letter_topic: k.dead_letter_topic.get_ref().clone(),
        labels_topic: k.labels_topic.as_ref().map(|t| t.get_ref().clone()),
        batch_size,
        max_in_flight_batches,
        decision_key,
        properties: k.properties.clone(),
    }
}

fn validate_api(raw: &Spanned<RawApi>, p: &mut Problems<'_>, resolve: &dyn Fn(&str) -> PathBuf) -> ApiConfig {
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
    let mut clients = Vec::new();
    let mut ids = HashSet::new();
    for (i, c) in a.clients.iter().enumerate() {
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
    let jwt = a.jwt.as_ref().and_then(|j| {
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
    });
    if clients.is_empty() && jwt.is_none() && a.jwt.is_none() {
        p.on(raw, "api", "declares no way in: add [[api.clients]] (signed requests) or [api.jwt]");
    }
    let metrics_token = match (&a.metrics_token_env, &a.metrics_token) {
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
    };
    let tls = a.tls.as_ref().map(|t| {
        let file = |f: &Spanned<String>, key: &str, p: &mut Problems<'_>| {
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

fn validate_store(raw: Option<&RawStore>, p: &mut Problems<'_>) -> StoreConfig {
    let mut store = StoreConfig {
        backend: StoreBackend::Memory,
        key_prefix: "vigil".into(),
        dedup_ttl_s: 7 * 86_400,
        timeout_ms: 1000,
        degraded: DegradedPolicy::Fail,
        breaker_failures: 5,
        breaker_cool_down_ms: 2000,
    };
    let Some(raw) = raw else { return store };
    let redis_scheme = |url: &Spanned<String>, p: &mut Problems<'_>, field: &str| {
        let ok = url.get_ref().starts_with("redis://") || url.get_ref().starts_with("rediss://");
        if !ok {
            p.on(url, field, "must start with redis:// or rediss://");
        }
        ok
    };
    let backend = raw.backend.get_ref().as_str();
    if backend != "redis" {
        if let Some(url) = &raw.redis_url {
            p.on(url, "store.redis_url", "only the redis backend takes a redis_url");
        }
    }
    if backend != "redis-cluster" {
        if let Some(nodes) = &raw.redis_nodes {
            p.on(nodes, "store.redis_nodes", "only the redis-cluster backend takes redis_nodes");
        }
    }
    match backend {
        "memory" => {}
        "redis" => match &raw.redis_url {
            Some(url) => {
                if redis_scheme(url, p, "store.redis_url") {
                    store.backend = StoreBackend::Redis { url: url.get_ref().clone() }
                }
            }
            None => p.on(&raw.backend, "store.redis_url", "the redis backend needs a redis_url"),
        },
        "redis-cluster" => match &raw.redis_nodes {
            Some(nodes) if nodes.get_ref().is_empty() => {
                p.on(nodes, "store.redis_nodes", "needs at least one node, such as \"redis://10.0.0.1:6379\"")
            }
            Some(nodes) => {
                let good = nodes.get_ref().iter().filter(|n| redis_scheme(n, p, "store.redis_nodes")).count();
                if good == nodes.get_ref().len() {
                    let nodes = nodes.get_ref().iter().map(|n| n.get_ref().clone()).collect();
                    store.backend = StoreBackend::RedisCluster { nodes }
                }
            }
            None => {
                p.on(&raw.backend, "store.redis_nodes", "the redis-cluster backend needs redis_nodes (seed node URLs)")
            }
        },
        other => {
            let known = ["memory", "redis", "redis-cluster"];
            let hint = crate::suggest::hint(other, known);
            p.on(
                &raw.backend,
                "store.backend",
                format!("unknown backend `{other}` (known: {}){hint}", known.join(", ")),
            )
        }
    }
    if let Some(prefix) = &raw.key_prefix {
        if prefix.get_ref().is_empty() || prefix.get_ref().contains(['{', '}', ' ']) {
            p.on(prefix, "store.key_prefix", "must be non-empty, without spaces or braces");
        }
        store.key_prefix = prefix.get_ref().clone();
    }
    if let Some(ttl) = &raw.dedup_ttl {
        match parse_duration_s(ttl.get_ref()) {
            Ok(s) if s >= 60 => store.dedup_ttl_s = s,
            Ok(_) => p.on(ttl, "store.dedup_ttl", "must be at least 1m"),
            Err(m) => p.on(ttl, "store.dedup_ttl", m),
        }
    }
    if let Some(d) = &raw.degraded {
        match DegradedPolicy::parse(d.get_ref()) {
            Some(policy) => store.degraded = policy,
            None => {
                let hint = crate::suggest::hint(d.get_ref(), DegradedPolicy::NAMES);
                let known = DegradedPolicy::NAMES.join(", ");
                p.on(d, "store.degraded", format!("unknown policy `{}` (known: {known}){hint}", d.get_ref()));
            }
        }
    }
    if let Some(t) = &raw.timeout_ms {
        if !(1..=60_000).contains(t.get_ref()) {
            p.on(t, "store.timeout_ms", "must be between 1 and 60000");
        } else {
            store.timeout_ms = *t.get_ref() as u64;
        }
    }
    if let Some(n) = &raw.breaker_failures {
        if !(1..=1000).contains(n.get_ref()) {
            p.on(n, "store.breaker_failures", "must be between 1 and 1000");
        } else {
            store.breaker_failures = *n.get_ref() as u64;
        }
    }
    if let Some(d) = &raw.breaker_cool_down {
        match parse_duration_s(d.get_ref()) {
            Ok(s) if (1..=600).contains(&s) => store.breaker_cool_down_ms = s * 1000,
            Ok(_) => p.on(d, "store.breaker_cool_down", "must be between 1s and 10m"),
            Err(m) => p.on(d, "store.breaker_cool_down", m),
        }
    }
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "test"
[kafka]
brokers = "127.0.0.1:9092"
group_id = "g"
input_topic = "in"
decisions_topic = "out"
dead_letter_topic = "dlq"
[store]
backend = "redis"
redis_url = "redis://127.0.0.1:6379"
[rules]
path = "../rules"
[decision]
review_score = 40
decline_score = 80
[[features]]
name = "card_count_10m"
entity = "card_id"
aggregate = "count"
window = "10m"
"#;

    #[test]
    fn good_config_validates() {
        let c = PipelineConfig::parse(Path::new("pipelines/x.toml"), GOOD).unwrap();
        assert_eq!(c.rules_path, PathBuf::from("pipelines/../rules"));
        assert_eq!(c.features[0].window_s, 600);
        assert_eq!(c.kafka.unwrap().batch_size, 500);
        assert_eq!(c.store.backend, StoreBackend::Redis { url: "redis://127.0.0.1:6379".into() });
    }

    #[test]
    fn a_redis_cluster_is_named_by_its_seed_nodes() {
        let cluster = GOOD.replace(
            "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"",
            "backend = \"redis-cluster\"\nredis_nodes = [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"]",
        );
        let c = PipelineConfig::parse(Path::new("p.toml"), &cluster).unwrap();
        let nodes = vec!["redis://10.0.0.1:6379".to_string(), "redis://10.0.0.2:6379".to_string()];
        assert_eq!(c.store.backend, StoreBackend::RedisCluster { nodes });
        let problems = |text: &str| match PipelineConfig::parse(Path::new("p.toml"), text) {
            Err(ConfigError::Invalid { problems }) => problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let bad = problems(&cluster.replace("redis://10.0.0.2", "10.0.0.2"));
        assert!(bad.iter().any(|p| p.contains("store.redis_nodes") && p.contains("redis://")), "{bad:?}");
        let empty = problems(
            &cluster
                .replace("redis_nodes = [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"]", "redis_nodes = []"),
        );
        assert!(empty.iter().any(|p| p.contains("at least one node")), "{empty:?}");
        let mixed = problems(&GOOD.replace("redis_url =", "redis_nodes = [\"redis://a:1\"]\nredis_url ="));
        assert!(mixed.iter().any(|p| p.contains("only the redis-cluster backend")), "{mixed:?}");
        let typo = problems(&GOOD.replace("backend = \"redis\"", "backend = \"redis-clutser\""));
        assert!(typo.iter().any(|p| p.contains("did you mean `redis-cluster`")), "{typo:?}");
    }

    #[test]
    fn degraded_policy_is_checked() {
        let c = PipelineConfig::parse(Path::new("x.toml"), &GOOD.replace("[rules]", "degraded = \"review\"\n[rules]"))
            .unwrap();
        assert_eq!(c.store.degraded, DegradedPolicy::Review);
        let text =
            PipelineConfig::parse(Path::new("x.toml"), &GOOD.replace("[rules]", "degraded = \"reveiw\"\n[rules]"))
                .unwrap_err()
                .to_string();
        assert!(
            text.contains("store.degraded: unknown policy `reveiw`") && text.contains("did you mean `review`?"),
            "{text}"
        );
    }

    #[test]
    fn breaker_settings_are_read_and_checked() {
        let c = PipelineConfig::parse(Path::new("x.toml"), GOOD).unwrap();
        assert_eq!((c.store.breaker_failures, c.store.breaker_cool_down_ms), (5, 2000));
        let with = |extra: &str| GOOD.replace("[rules]", &format!("{extra}\n[rules]"));
        let c = PipelineConfig::parse(Path::new("x.toml"), &with("breaker_failures = 3\nbreaker_cool_down = \"30s\""))
            .unwrap();
        assert_eq!((c.store.breaker_failures, c.store.breaker_cool_down_ms), (3, 30_000));
        let text =
            PipelineConfig::parse(Path::new("x.toml"), &with("breaker_failures = 0\nbreaker_cool_down = \"1h\""))
                .unwrap_err()
                .to_string();
        assert!(text.contains("store.breaker_failures: must be between 1 and 1000"), "{text}");
        assert!(text.contains("store.breaker_cool_down: must be between 1s and 10m"), "{text}");
    }

    #[test]
    fn distinct_features_name_the_field_they_count() {
        let with = |extra: &str| format!("{GOOD}{extra}");
        let good = with("[[features]]\nname = \"card_merchants_24h\"\nentity = \"card_id\"\naggregate = \"distinct\"\nof = \"merchant_id\"\nwindow = \"24h\"\n");
        let c = PipelineConfig::parse(Path::new("x.toml"), &good).unwrap();
        assert_eq!((c.features[1].aggregate, c.features[1].of), (Aggregate::Distinct, Some(EventField::MerchantId)));
        let bad = with(
            "[[features]]\nname = \"a\"\nentity = \"card_id\"\naggregate = \"distinct\"\nwindow = \"24h\"\n\
             [[features]]\nname = \"b\"\nentity = \"card_id\"\naggregate = \"count\"\nof = \"ip\"\nwindow = \"24h\"\n\
             [[features]]\nname = \"c\"\nentity = \"card_id\"\naggregate = \"distinct\"\nof = \"merchnt_id\"\nwindow = \"24h\"\n\
             [[features]]\nname = \"d\"\nentity = \"card_id\"\naggregate = \"changed\"\nwindow = \"24h\"\n\
             [[features]]\nname = \"e\"\nentity = \"card_id\"\naggregate = \"changed\"\nof = \"amount\"\nwindow = \"24h\"\n",
        );
        let text = PipelineConfig::parse(Path::new("x.toml"), &bad).unwrap_err().to_string();
        assert!(text.contains("features[1].of: `distinct` needs `of`"), "{text}");
        assert!(text.contains("features[4].of: `changed` needs `of`"), "{text}");
        assert!(text.contains("features[5].of: `changed` reads text fields, not amount or timestamp"), "{text}");
        let changed = with("[[features]]\nname = \"country_changed\"\nentity = \"card_id\"\naggregate = \"changed\"\nof = \"country\"\nwindow = \"30d\"\n");
        let c = PipelineConfig::parse(Path::new("x.toml"), &changed).unwrap();
        assert_eq!((c.features[1].aggregate, c.features[1].of), (Aggregate::Changed, Some(EventField::Country)));
        let previous = with("[[features]]\nname = \"previous_country\"\nentity = \"card_id\"\naggregate = \"previous\"\nof = \"country\"\nwindow = \"30d\"\n");
        let c = PipelineConfig::parse(Path::new("x.toml"), &previous).unwrap();
        assert_eq!((c.features[1].aggregate, c.features[1].of), (Aggregate::Previous, Some(EventField::Country)));
        let amount = with("[[features]]\nname = \"p\"\nentity = \"card_id\"\naggregate = \"previous\"\nof = \"amount\"\nwindow = \"30d\"\n");
        let err = PipelineConfig::parse(Path::new("x.toml"), &amount).unwrap_err().to_string();
        assert!(err.contains("features[1].of: `previous` reads text fields, not amount or timestamp; the previous amount is `previous_amount`"), "{err}");
        assert!(text.contains("features[2].of: only `distinct`, `changed` and `previous` take `of`"), "{text}");
        assert!(text.contains("features[3].of: unknown field `merchnt_id`; did you mean `merchant_id`?"), "{text}");
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let bad = GOOD
            .replace("window = \"10m\"", "window = \"10x\"")
            .replace("aggregate = \"count\"", "aggregate = \"cuont\"")
            .replace("decline_score = 80", "decline_score = 20")
            .replace("redis://127", "http://127");
        let Err(ConfigError::Invalid { problems }) = PipelineConfig::parse(Path::new("p.toml"), &bad) else {
            panic!("accepted a bad config")
        };
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 4, "{text:#?}");
        assert!(text.iter().any(|t| t.starts_with("p.toml:11:13: store.redis_url")), "{text:#?}");
        assert!(text.iter().any(|t| t.contains("features[0].aggregate") && t.contains("did you mean `count`")));
        assert!(text.iter().any(|t| t.contains("features[0].window") && t.contains("unknown unit")));
        assert!(text.iter().any(|t| t.contains("decision.decline_score")));
    }

    #[test]
    fn api_sections_are_checked() {
        let with = |api: &str| format!("{GOOD}\n{api}");
        let good = with(
            "[api]\nlisten = \"0.0.0.0:9000\"\ndeadline_ms = 5\n[[api.clients]]\nid = \"shop\"\n\
             secrets_env = [\"A\", \"B\"]\n[api.jwt]\nalgorithm = \"RS256\"\npublic_key_file = \"keys/pub.pem\"\n",
        );
        let api = PipelineConfig::parse(Path::new("pipelines/x.toml"), &good).unwrap().api.unwrap();
        assert_eq!((api.listen.as_str(), api.deadline_ms, api.signature_tolerance_s), ("0.0.0.0:9000", 5, 120));
        assert_eq!(api.clients[0].secrets, [SecretSource::Env("A".into()), SecretSource::Env("B".into())]);
        assert_eq!(api.jwt.unwrap().public_key_file, Some(PathBuf::from("pipelines/keys/pub.pem")));
        assert_eq!((api.metrics_token, api.tls), (None, None));
        let token =
            PipelineConfig::parse(Path::new("p.toml"), &good.replace("deadline_ms = 5", "metrics_token_env = \"M\""));
        assert_eq!(token.unwrap().api.unwrap().metrics_token, Some(SecretSource::Env("M".into())));

        let bad = with(
            "[api]\nlisten = \"localhost\"\nmax_concurrency = 0\nsignature_tolerance = \"2d\"\n\
             metrics_token = \"short\"\n\
             [[api.clients]]\nid = \"a b\"\nsecrets = [\"short\"]\n\
             [[api.clients]]\nid = \"x\"\nsecrets_env = [\"A\", \"B\", \"C\"]\n\
             [api.jwt]\nalgorithm = \"HS512\"\n\
             [api.tls]\ncert_file = \"no/such/cert.pem\"\nkey_file = \"no/such/key.pem\"\n",
        );
        let text = PipelineConfig::parse(Path::new("p.toml"), &bad).unwrap_err().to_string();
        for expected in [
            "api.listen: must be an address and port",
            "api.max_concurrency: must be between 1 and",
            "api.signature_tolerance: must be between 1s and 1h",
            "api.clients[0].id: must be letters",
            "api.clients[0].secrets: a secret must be at least 16 bytes",
            "api.clients[1].secrets_env: needs one or two secrets",
            "api.jwt.algorithm: unknown algorithm `HS512`",
            "api.metrics_token: a token must be at least 16 bytes",
            "api.tls.cert_file: no such file: no/such/cert.pem",
            "api.tls.key_file: no such file: no/such/key.pem",
        ] {
            assert!(text.contains(expected), "no `{expected}` in\n{text}");
        }
        let none = PipelineConfig::parse(Path::new("p.toml"), &with("[api]\n")).unwrap_err().to_string();
        assert!(none.contains("api: declares no way in"), "{none}");
    }

    #[test]
    fn a_challenger_model_resolves_beside_the_champion() {
        let with = |model: &str| format!("{GOOD}\n[model]\npath = \"../models/a.json\"\n{model}");
        let c =
            PipelineConfig::parse(Path::new("pipelines/x.toml"), &with("challenger = \"../models/b.json\"\n")).unwrap();
        let m = c.model.unwrap();
        assert_eq!((m.weight, m.challenger), (100.0, Some(PathBuf::from("pipelines/../models/b.json"))));
        let none = PipelineConfig::parse(Path::new("p.toml"), &with("")).unwrap();
        assert_eq!(none.model.unwrap().challenger, None);
        let err = PipelineConfig::parse(Path::new("p.toml"), &with("challenger = \" \"\n")).unwrap_err().to_string();
        assert!(err.contains("model.challenger: must not be empty"), "{err}");
    }

    #[test]
    fn syntax_and_unknown_keys_are_located() {
        let bad = GOOD.replace("group_id", "group");
        let err = PipelineConfig::parse(Path::new("p.toml"), &bad).unwrap_err().to_string();
        assert!(err.starts_with("p.toml:5:1:") && err.contains("unknown field `group`"), "{err}");
    }
}
