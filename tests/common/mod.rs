//! Helpers for integration tests against the real broker and Redis. Every test
//! uses its own topics, consumer group and Redis key prefix, so tests never collide.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use vigil_core::PipelineConfig;

pub mod faults;
pub mod proxy;

pub fn brokers() -> String {
    std::env::var("VIGIL_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A local port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn redis_url() -> String {
    std::env::var("VIGIL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped local pipeline with this test's own topics, group and key prefix.
pub fn pipeline(test: &str) -> PipelineConfig {
    TestPipeline::local(test).config()
}

/// The text of [`pipeline`], for tests that hand a pipeline file to the binary:
/// write it beside the shipped ones (`pipelines/`), so its paths resolve alike.
pub fn pipeline_text(test: &str) -> String {
    TestPipeline::local(test).text()
}

/// A pipeline for a test, made from a shipped one read as TOML (not by
/// replacing its text, so a reformatted file makes no difference): every key
/// a test sets must be there already, or the test stops and says which.
#[derive(Clone)]
pub struct TestPipeline {
    table: toml::Table,
}

impl TestPipeline {
    /// A shipped pipeline, `pipelines/NAME`.
    pub fn shipped(name: &str) -> TestPipeline {
        let text = std::fs::read_to_string(repo().join("pipelines").join(name)).unwrap();
        TestPipeline { table: text.parse().unwrap() }
    }

    /// `pipelines/local.toml` with this test's own consumer group, topics and
    /// Redis key prefix (unique per call), the test brokers and Redis, and
    /// batches of 250.
    pub fn local(test: &str) -> TestPipeline {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let tag = format!("{test}-{}", &id[..8]);
        TestPipeline::shipped("local.toml")
            .set("kafka.brokers", brokers())
            .set("store.redis_url", redis_url())
            .named(&tag)
            .set("kafka.batch_size", 250)
    }

    /// The consumer group, topics and key prefix named after `tag`:
    /// `g-TAG`, `in-TAG`, `out-TAG`, `dlq-TAG`, `labels-TAG`, `t-TAG`, and
    /// `resolutions-TAG` where the pipeline has a resolutions topic.
    pub fn named(self, tag: &str) -> TestPipeline {
        self.set("kafka.group_id", format!("g-{tag}"))
            .set("kafka.input_topic", format!("in-{tag}"))
            .set("kafka.decisions_topic", format!("out-{tag}"))
            .set("kafka.dead_letter_topic", format!("dlq-{tag}"))
            .set("kafka.labels_topic", format!("labels-{tag}"))
            .set("store.key_prefix", format!("t-{tag}"))
            .set_if_present("review.resolutions_topic", format!("resolutions-{tag}"))
    }

    /// As [`TestPipeline::set`], when the key is there; nothing otherwise.
    pub fn set_if_present(mut self, path: &str, value: impl Into<toml::Value>) -> TestPipeline {
        let mut table = &mut self.table;
        let mut parts: Vec<&str> = path.split('.').collect();
        let key = parts.pop().expect("a key");
        for part in parts {
            match table.get_mut(part).and_then(toml::Value::as_table_mut) {
                Some(t) => table = t,
                None => return self,
            }
        }
        if let Some(v) = table.get_mut(key) {
            *v = value.into();
        }
        self
    }

    /// Sets the key at `path` (`kafka.batch_size`, `features[0].window`), which must exist.
    pub fn set(mut self, path: &str, value: impl Into<toml::Value>) -> TestPipeline {
        let (table, key) = self.parent(path);
        assert!(table.contains_key(key), "the pipeline has no `{path}` to set");
        table.insert(key.to_owned(), value.into());
        self
    }

    /// Adds the key at `path`, whose table must exist and lack it.
    pub fn add(mut self, path: &str, value: impl Into<toml::Value>) -> TestPipeline {
        let (table, key) = self.parent(path);
        assert!(table.insert(key.to_owned(), value.into()).is_none(), "the pipeline has `{path}` already");
        self
    }

    /// Removes the key (or table) at `path`, which must exist.
    pub fn without(mut self, path: &str) -> TestPipeline {
        let (table, key) = self.parent(path);
        assert!(table.remove(key).is_some(), "the pipeline has no `{path}` to remove");
        self
    }

    /// Sets a librdkafka property under `[kafka.properties]`.
    pub fn kafka_property(mut self, key: &str, value: &str) -> TestPipeline {
        let kafka = self.table.get_mut("kafka").and_then(toml::Value::as_table_mut).expect("a [kafka] table");
        let properties = kafka.entry("properties").or_insert_with(|| toml::Value::Table(toml::Table::new()));
        properties.as_table_mut().expect("[kafka.properties] is a table").insert(key.to_owned(), value.into());
        self
    }

    /// Calls `edit` on every `[[features]]` table.
    pub fn each_feature(mut self, mut edit: impl FnMut(&mut toml::Table)) -> TestPipeline {
        let features = self.table.get_mut("features").and_then(toml::Value::as_array_mut).expect("features");
        for f in features {
            edit(f.as_table_mut().expect("a feature is a table"));
        }
        self
    }

    pub fn text(&self) -> String {
        toml::to_string(&self.table).unwrap()
    }

    /// The validated pipeline, its paths resolved as if it were a file in `pipelines/`.
    pub fn config(&self) -> PipelineConfig {
        PipelineConfig::parse(&repo().join("pipelines/test.toml"), &self.text()).unwrap()
    }

    /// The table holding the last key of a dotted path, and that key.
    fn parent<'a>(&mut self, path: &'a str) -> (&mut toml::Table, &'a str) {
        let mut parts: Vec<&str> = path.split('.').collect();
        let key = parts.pop().unwrap();
        let mut table = &mut self.table;
        for part in parts {
            let (name, index) = match part.split_once('[') {
                Some((name, rest)) => (name, Some(rest.trim_end_matches(']').parse::<usize>().unwrap())),
                None => (part, None),
            };
            let value = table.get_mut(name).unwrap_or_else(|| panic!("the pipeline has no `{name}` in `{path}`"));
            let value = match index {
                Some(i) => value.as_array_mut().and_then(|a| a.get_mut(i)),
                None => Some(value),
            };
            table = value
                .and_then(toml::Value::as_table_mut)
                .unwrap_or_else(|| panic!("`{part}` of `{path}` is not a table"));
        }
        (table, key)
    }
}

/// A TOML table of text values, for [`TestPipeline::add`].
pub fn table(entries: &[(&str, &str)]) -> toml::Table {
    entries.iter().map(|(k, v)| ((*k).to_owned(), toml::Value::from(*v))).collect()
}

/// Reads `topic` from the start until `expected` records arrived or `idle` passed
/// with nothing new; never longer than `limit`.
pub async fn read_all(topic: &str, expected: usize, idle: Duration, limit: Duration) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < limit {
        let wait = if out.len() >= expected { idle.min(Duration::from_secs(2)) } else { idle };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

pub fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    m.headers()?.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Waits until `done` holds, polling; panics after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn total(stats: &vigil_stream::Stats) -> u64 {
    stats.decided.load(Ordering::SeqCst) + stats.dead_lettered()
}

/// The Redis keys matching `pattern` (a SCAN pattern), up to about `limit`.
pub async fn redis_keys(pattern: &str, limit: usize) -> Vec<String> {
    keys_on(&redis_url(), pattern, limit).await
}

/// The seed nodes of the test Redis Cluster (`VIGIL_TEST_REDIS_CLUSTER`,
/// comma-separated; by default the three `scripts/services.sh` starts).
pub fn cluster_nodes() -> Vec<String> {
    std::env::var("VIGIL_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// `config` with its feature store moved to the test Redis Cluster.
pub fn on_cluster(mut config: PipelineConfig) -> PipelineConfig {
    config.store.backend = vigil_core::pipeline::StoreBackend::RedisCluster { nodes: cluster_nodes() };
    config
}

/// Removes a test's keys from every node of the test Redis Cluster.
pub async fn clean_cluster(prefix: &str) {
    for node in cluster_nodes() {
        let keys = keys_on(&node, &format!("{prefix}:*"), usize::MAX).await;
        let client = redis::Client::open(node).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // Keys of one node may sit in several slots: one DEL each, pipelined.
        for chunk in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("DEL").arg(key).ignore();
            }
            let _: () = pipe.query_async(&mut conn).await.unwrap();
        }
    }
}

/// Keys matching `pattern` on one server, at most about `limit`.
async fn keys_on(url: &str, pattern: &str, limit: usize) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 || keys.len() >= limit {
            return keys;
        }
        cursor = next;
    }
}

/// Deletes every Redis key under `prefix` (test state would otherwise live for
/// the longest feature window).
pub async fn clean_redis(prefix: &str) {
    let keys = redis_keys(&format!("{prefix}:*"), usize::MAX).await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for chunk in keys.chunks(1000) {
        let _: i64 = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await.unwrap();
    }
}

/// Decisions read back from a decisions topic.
pub fn decisions(messages: &[OwnedMessage]) -> Vec<vigil_core::Decision> {
    messages.iter().map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap()).collect()
}

/// A `vigil_stream::run` going on in the background.
pub struct Running {
    pub stats: Arc<vigil_stream::Stats>,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub handle: tokio::task::JoinHandle<Result<(), vigil_stream::StreamError>>,
}

impl Running {
    /// Stops the stream gracefully and returns how it ended.
    pub async fn finish(self) -> Result<(), vigil_stream::StreamError> {
        let _ = self.stop.send(());
        self.handle.await.expect("the stream task panicked")
    }
}

/// Starts the stream of `config` over `engine`.
pub fn start(config: &PipelineConfig, engine: Arc<vigil_engine::Engine>) -> Running {
    let kafka = config.kafka.clone().expect("the test pipeline has a [kafka] section");
    let stats = Arc::new(vigil_stream::Stats::default());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let s = stats.clone();
    let handle = tokio::spawn(async move {
        vigil_stream::run(&kafka, engine, s, async {
            let _ = rx.await;
        })
        .await
    });
    Running { stats, stop, handle }
}

/// Features of `events` computed one history pass with the live code: what the
/// stream must reproduce for features whose entity keeps its order (card-keyed).
pub fn reference_features(config: &PipelineConfig, events: &[vigil_core::Event]) -> Vec<vigil_core::FeatureVector> {
    let refs: Vec<&vigil_core::Event> = events.iter().collect();
    vigil_offline::features_over_history(&config.features, &refs, &[]).unwrap()
}

/// A feature value as a decision's JSON carries it. Decisions are read back with
/// serde, which cannot tell a count from seconds or money from a plain number
/// (all are JSON numbers or decimal strings), so values are compared as JSON.
pub fn as_json(v: &vigil_core::FeatureValue) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

/// The PostgreSQL of the tests: `VIGIL_TEST_POSTGRES`, else the machine's `test` database.
pub fn database() -> String {
    std::env::var("VIGIL_TEST_POSTGRES").unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into())
}

/// A schema of the test's own on the test database, and a client on it.
/// A new, empty schema `name` (dropped first if left behind), a client
/// whose search path is it, and connection settings that put others there.
pub async fn schema(name: &str) -> (tokio_postgres::Client, String) {
    let (client, conn) = tokio_postgres::connect(&database(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh starts it)");
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}")).await.unwrap();
    client.batch_execute(&format!("SET search_path = {name}")).await.unwrap();
    (client, format!("{} options='-c search_path={name}'", database()))
}

/// The Redis server's own CPU time so far (`INFO cpu`: user + system), in µs
/// (the server of [`redis_url`]).
pub async fn redis_cpu_us() -> f64 {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut con).await.unwrap();
    let field = |key: &str| {
        info.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0)
    };
    (field("used_cpu_user:") + field("used_cpu_sys:")) * 1e6
}

/// The Redis server's process id (`INFO server`), to read its scheduling
/// figures from `/proc`: `None` unless the server of [`redis_url`] runs on
/// this machine (a remote one's id would name some local process).
pub async fn redis_pid() -> Option<u32> {
    let url = redis_url();
    let authority = url.split("://").nth(1)?.rsplit('@').next()?;
    let host = authority.split([':', '/']).next()?;
    if !(matches!(host, "127.0.0.1" | "localhost") || authority.starts_with("[::1]")) {
        return None;
    }
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut con).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("process_id:").and_then(|v| v.trim().parse().ok()))
}

/// The time a process's threads have waited runnable for a core, in µs: the
/// sum of `/proc/PID/task/*/schedstat`'s second field (run-queue delay, ns).
/// Threads that ended are not counted.
pub fn run_queue_wait_us(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e3
}

/// All cores' busy and total jiffies so far, and the jiffies they sat idle
/// with I/O outstanding (idle, not busy), from `/proc/stat`'s first line.
pub fn machine_jiffies() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = cpu.iter().take(8).sum();
    let (idle, iowait) = (cpu.get(3).copied().unwrap_or(0), cpu.get(4).copied().unwrap_or(0));
    (total - idle - iowait, total, iowait)
}

/// Seconds per tick of `/proc` CPU times (USER_HZ is 100 on Linux).
pub const JIFFY: f64 = 0.01;

/// The name and utime + stime (ticks) from a `/proc/.../stat` line (fields
/// 14 and 15, after the name).
pub fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
    Some((name, rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?))
}
