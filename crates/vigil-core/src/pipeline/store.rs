//! `[store]`: the feature store's backend, key prefix, de-duplication,
//! timeout, degraded policy and circuit breaker.

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::Diagnostics;
use crate::feature::parse_duration_s;

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
    /// Who may write the feature state (`mode`).
    pub mode: StoreMode,
}

/// Who may write a Redis feature store's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreMode {
    /// Any number of processes (stream instances, HTTP APIs) read and write
    /// every record, each write checked against concurrent writers.
    #[default]
    Shared,
    /// One process (`vigil run`) owns the whole state, keeps it in memory and
    /// journals it to Redis; a second owner fences the first.
    Owned {
        /// Snapshot after this many counted events...
        snapshot_events: u64,
        /// ...or after this long.
        snapshot_interval_s: u64,
    },
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    backend: Spanned<String>,
    redis_url: Option<Spanned<String>>,
    redis_nodes: Option<Spanned<Vec<Spanned<String>>>>,
    key_prefix: Option<Spanned<String>>,
    dedup_ttl: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<i64>>,
    degraded: Option<Spanned<String>>,
    breaker_failures: Option<Spanned<i64>>,
    breaker_cool_down: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    snapshot_events: Option<Spanned<i64>>,
    snapshot_interval: Option<Spanned<String>>,
}

pub(super) fn validate(raw: Option<&RawStore>, p: &mut Diagnostics<'_>) -> StoreConfig {
    let mut store = StoreConfig {
        backend: StoreBackend::Memory,
        key_prefix: "vigil".into(),
        dedup_ttl_s: 7 * 86_400,
        timeout_ms: 1000,
        degraded: DegradedPolicy::Fail,
        breaker_failures: 5,
        breaker_cool_down_ms: 2000,
        mode: StoreMode::Shared,
    };
    let Some(raw) = raw else { return store };
    if let Some(backend) = backend(raw, p) {
        store.backend = backend;
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
    store.mode = mode(raw, &store.backend, p);
    store
}

/// `mode` and the owned mode's snapshot settings.
fn mode(raw: &RawStore, backend: &StoreBackend, p: &mut Diagnostics<'_>) -> StoreMode {
    let owned = match &raw.mode {
        None => false,
        Some(m) => match m.get_ref().as_str() {
            "shared" => false,
            "owned" if *backend == StoreBackend::Memory => {
                p.on(
                    m,
                    "store.mode",
                    "the memory backend is already owned by its process: owned needs redis or redis-cluster",
                );
                false
            }
            "owned" => true,
            other => {
                let hint = crate::suggest::hint(other, ["shared", "owned"]);
                p.on(m, "store.mode", format!("unknown mode `{other}` (known: shared, owned){hint}"));
                false
            }
        },
    };
    let (mut snapshot_events, mut snapshot_interval_s) = (100_000, 60);
    if let Some(n) = &raw.snapshot_events {
        if !owned {
            p.on(n, "store.snapshot_events", "only mode = \"owned\" takes snapshot_events");
        } else if !(100..=10_000_000).contains(n.get_ref()) {
            p.on(n, "store.snapshot_events", "must be between 100 and 10000000");
        } else {
            snapshot_events = *n.get_ref() as u64;
        }
    }
    if let Some(d) = &raw.snapshot_interval {
        match parse_duration_s(d.get_ref()) {
            _ if !owned => p.on(d, "store.snapshot_interval", "only mode = \"owned\" takes snapshot_interval"),
            Ok(s) if (1..=3600).contains(&s) => snapshot_interval_s = s,
            Ok(_) => p.on(d, "store.snapshot_interval", "must be between 1s and 1h"),
            Err(m) => p.on(d, "store.snapshot_interval", m),
        }
    }
    if owned {
        StoreMode::Owned { snapshot_events, snapshot_interval_s }
    } else {
        StoreMode::Shared
    }
}

/// The backend and where it is; `None` (and its problems noted) when it does
/// not validate.
fn backend(raw: &RawStore, p: &mut Diagnostics<'_>) -> Option<StoreBackend> {
    let redis_scheme = |url: &Spanned<String>, p: &mut Diagnostics<'_>, field: &str| {
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
        "memory" => Some(StoreBackend::Memory),
        "redis" => match &raw.redis_url {
            Some(url) => {
                redis_scheme(url, p, "store.redis_url").then(|| StoreBackend::Redis { url: url.get_ref().clone() })
            }
            None => {
                p.on(&raw.backend, "store.redis_url", "the redis backend needs a redis_url");
                None
            }
        },
        "redis-cluster" => match &raw.redis_nodes {
            Some(nodes) if nodes.get_ref().is_empty() => {
                p.on(nodes, "store.redis_nodes", "needs at least one node, such as \"redis://10.0.0.1:6379\"");
                None
            }
            Some(nodes) => {
                let good = nodes.get_ref().iter().filter(|n| redis_scheme(n, p, "store.redis_nodes")).count();
                (good == nodes.get_ref().len()).then(|| StoreBackend::RedisCluster {
                    nodes: nodes.get_ref().iter().map(|n| n.get_ref().clone()).collect(),
                })
            }
            None => {
                p.on(&raw.backend, "store.redis_nodes", "the redis-cluster backend needs redis_nodes (seed node URLs)");
                None
            }
        },
        other => {
            let known = ["memory", "redis", "redis-cluster"];
            let hint = crate::suggest::hint(other, known);
            p.on(
                &raw.backend,
                "store.backend",
                format!("unknown backend `{other}` (known: {}){hint}", known.join(", ")),
            );
            None
        }
    }
}
