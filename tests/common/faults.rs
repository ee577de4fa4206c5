//! The fault harness (issue 21; design in docs/design/scale-out-and-faults.md).
//!
//! Real `vigil run` processes share one consumer group on the harness's own
//! broker and Redis, while a seeded feed of events, malformed records and
//! fraud labels runs and faults are made on purpose: SIGKILLs of instances,
//! Redis stopped and started again, the broker restarted, the link to Redis
//! held or dropped. A checker then reads only the outside, the decisions and
//! dead-letter topics parsed as plain JSON, and compares them with a clean
//! single pass (one `vigil run`, no fault) over the same feed:
//! - every valid transaction has a decision, and the records of one
//!   transaction agree; a record after the first says `"replayed": true`;
//! - the dead-letter topic holds exactly the planted malformed records, each
//!   with its reason;
//! - the card features of each decision equal the clean pass's (one card's
//!   events share a partition, so they are seen in order);
//! - one probe event per shared entity (terminal, merchant, IP, customer),
//!   sent after everything, reads the entity's final totals, label counts
//!   included: they equal the clean pass's probes.
//!
//! The short form runs in the test suite (`tests/faults.rs`); the long form is
//! `cargo bench --bench faults` (`benches/faults.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use super::proxy::Proxy;
use super::{repo, TestPipeline};

/// A small seeded generator (SplitMix64), so a run is repeated by its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[low, high)`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low).max(1)
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

fn wait_listening(port: u16, what: &str, limit: Duration) {
    let start = Instant::now();
    while !listening(port) {
        assert!(start.elapsed() < limit, "{what} did not listen on {port} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap()
}

/// A server of the harness's own (Redis, the broker): a port and a folder of
/// its own, stopped with SIGKILL and started again with the same command.
pub struct Server {
    pub port: u16,
    name: &'static str,
    dir: PathBuf,
    command: fn(u16) -> Command,
    child: Option<Child>,
}

impl Server {
    fn start(name: &'static str, dir: &Path, command: fn(u16) -> Command) -> Server {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Server { port: super::free_port(), name, dir, command, child: None };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let log = self.dir.join(format!("{}.log", self.name));
        let child = (self.command)(self.port)
            .current_dir(&self.dir)
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("{} (scripts/services.sh installs it): {e}", self.name));
        self.child = Some(child);
        wait_listening(self.port, self.name, Duration::from_secs(60));
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Redis whose append-only file is written with `fsync` on every write, so a
/// SIGKILL loses nothing it acknowledged, as in a production setup that keeps
/// its features across a restart.
fn redis_server(port: u16) -> Command {
    let mut c = Command::new("redis-server");
    c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--dir", "."]).args([
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]);
    c
}

/// tansu with its sqlite engine: records and committed offsets survive a restart.
fn tansu(port: u16) -> Command {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut c = Command::new("tansu");
    c.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "sqlite://tansu.db"]);
    c
}

/// The harness's own Redis Cluster: three primaries, each with a replica,
/// append-only files written with `fsync` on every write.
pub struct OwnCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
}

/// A port whose cluster bus port (`port + 10000`) is free too.
fn free_cluster_port(taken: &[u16]) -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mut rng = Rng::new(u64::from(std::process::id()) << 32 | u64::from(nanos));
    loop {
        let port = rng.between(20_000, 30_000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !taken.contains(&port) && free(port) && free(port + 10_000) {
            return port;
        }
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl OwnCluster {
    pub fn start(dir: &Path) -> OwnCluster {
        let mut ports = Vec::new();
        for _ in 0..6 {
            ports.push(free_cluster_port(&ports));
        }
        let mut children = Vec::new();
        for port in &ports {
            let dir = dir.join(format!("cluster-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "15000", "--appendonly", "yes", "--appendfsync", "always"])
                .arg("--dir")
                .arg(&dir)
                .stdout(log_file(&dir.join("redis.log")))
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            children.push(child);
        }
        for port in &ports {
            wait_listening(*port, "a cluster node", Duration::from_secs(30));
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
        let cluster = OwnCluster { ports, children };
        cluster.wait_healthy(Duration::from_secs(60));
        cluster
    }

    /// Waits until the cluster says `ok` and every replica's link to its primary is up.
    fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let ok = self.ports.iter().all(|p| redis_cli(*p, &["cluster", "info"]).contains("cluster_state:ok"));
            let replicas = self.replicas();
            let linked = replicas.len() == 3
                && replicas.iter().all(|p| redis_cli(*p, &["info", "replication"]).contains("master_link_status:up"));
            if ok && linked {
                return;
            }
            assert!(start.elapsed() < limit, "the cluster did not become healthy within {limit:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The nodes that are replicas now.
    fn replicas(&self) -> Vec<u16> {
        self.ports.iter().copied().filter(|p| redis_cli(*p, &["role"]).starts_with("slave")).collect()
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// A replica takes over from its primary (`CLUSTER FAILOVER`: the primary
    /// stops taking writes, the replica catches up, then is promoted), as in
    /// planned maintenance; waits until the cluster is healthy again.
    pub fn failover(&self, rng: &mut Rng) {
        let replicas = self.replicas();
        let port = replicas[rng.between(0, replicas.len() as u64) as usize];
        let said = redis_cli(port, &["cluster", "failover"]);
        assert!(said.trim() == "OK", "CLUSTER FAILOVER on {port}: {said}");
        let start = Instant::now();
        while !redis_cli(port, &["role"]).starts_with("master") {
            assert!(start.elapsed() < Duration::from_secs(30), "{port} was not promoted");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_healthy(Duration::from_secs(60));
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            kill9(c);
        }
    }
}

/// One `vigil run` process, started again after each kill.
pub struct Instance {
    file: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Instance {
    fn start(file: &Path, log: PathBuf) -> Instance {
        let mut i = Instance { file: file.to_path_buf(), log, child: None };
        i.spawn();
        i
    }

    fn spawn(&mut self) {
        let mut log = log_file(&self.log);
        let _ = writeln!(log, "--- started by the fault harness");
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["run", "--pipeline"])
            .arg(&self.file)
            // An instance restarted during a Redis outage waits for the store,
            // as one deployed with `--store-wait` does (docs/operations.md).
            .args(["--store-wait", "300"])
            .current_dir(repo())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, then started again.
    fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
        self.spawn();
    }

    /// SIGINT, and waits for a graceful stop; whether it exited with success.
    fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return true };
        let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if start.elapsed() > Duration::from_secs(60) {
                kill9(&mut c);
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
    }
}

/// A fault, made while the feed runs.
#[derive(Clone, Debug)]
pub enum Fault {
    /// `count` SIGKILLs of a random instance, each started again at once,
    /// `gap` apart (a random time in the range).
    Kills { count: usize, gap: (Duration, Duration) },
    /// Redis stopped with SIGKILL and started again after this long.
    RedisOutage(Duration),
    /// The broker stopped with SIGKILL and started again after this long.
    BrokerRestart(Duration),
    /// The link from the instances to Redis held (nothing forwarded, sockets open) this long.
    LinkHold(Duration),
    /// Every connection from the instances to Redis closed at once.
    LinkDrop,
    /// A Redis Cluster replica promoted in its primary's place (the plan must
    /// use the cluster).
    ClusterFailover,
}

impl Fault {
    pub fn name(&self) -> String {
        match self {
            Fault::Kills { count, .. } => format!("{count} kill -9"),
            Fault::RedisOutage(d) => format!("Redis stopped {} s", d.as_secs()),
            Fault::BrokerRestart(d) => format!("broker restart ({} s down)", d.as_secs()),
            Fault::LinkHold(d) => format!("Redis link held {} s", d.as_secs()),
            Fault::LinkDrop => "Redis connections dropped".into(),
            Fault::ClusterFailover => "Redis Cluster failover".into(),
        }
    }
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    pub seed: u64,
    /// Valid events in the feed.
    pub events: usize,
    pub cards: usize,
    pub instances: usize,
    pub partitions: i32,
    /// Feed rate, events per second.
    pub rate: u64,
    /// The store's degraded policy: `fail`, `decide` or `review`.
    pub degraded: &'static str,
    /// The faulted group's store is a Redis Cluster with replicas (no proxy
    /// then: cluster nodes name their own addresses to clients).
    pub cluster: bool,
    /// The faulted group's feature state is owned (`[store] mode = "owned"`,
    /// snapshotting every 500 events): one instance, restarted after a kill.
    pub owned: bool,
    /// Faults, each started at its share of the feed's duration (0.0 to 1.0).
    pub faults: Vec<(f64, Fault)>,
    /// How long to wait for every decision after the feed and the faults.
    pub drain_limit: Duration,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub name: String,
    pub degraded: &'static str,
    pub events: usize,
    pub malformed: usize,
    pub labels: usize,
    pub instances: usize,
    pub kills: usize,
    /// Valid events without a decision.
    pub lost: usize,
    /// Decisions beyond the first without `"replayed": true`.
    pub unmarked_duplicates: usize,
    /// Records of one transaction that differ in decision or features.
    pub disagreeing: usize,
    /// Decision records that say `replayed`.
    pub replayed: usize,
    /// Events first decided without the store (`"degraded": true`).
    pub degraded_decisions: usize,
    /// Degraded records of events decided more than once (expected under
    /// `decide` and `review`: a degraded decision sets no marker).
    pub degraded_repeats: usize,
    /// Events whose card features differ from the clean pass's.
    pub card_mismatches: usize,
    /// Count and sum features (of events' cards, or of probes) above the clean pass's.
    pub double_counted: usize,
    /// Probe features (shared entities' totals, label counts) that differ from the clean pass's.
    pub probe_mismatches: usize,
    pub probes: usize,
    /// Planted malformed records missing from the dead-letter topic.
    pub dead_missing: usize,
    /// Dead letters that are not planted malformed records, or carry no reason.
    pub dead_unexpected: usize,
    /// Planted malformed records dead-lettered more than once (redeliveries).
    pub dead_repeats: usize,
    /// From the end of the feed and of the last fault to the last decision.
    pub drain: Duration,
    pub elapsed: Duration,
    /// Instances that did not stop cleanly on SIGINT at the end.
    pub unclean_stops: usize,
    /// Batch retries after a feature-store failure, from the instances'
    /// logs: that the fault reached them.
    pub store_retries: usize,
    /// Example problems, for the failure message.
    pub examples: Vec<String>,
    pub logs: PathBuf,
}

impl Report {
    /// Every check a run must pass. With the `fail` policy the features must
    /// equal the clean pass's exactly; with `decide` and `review` decisions
    /// made without the store leave their events uncounted, so features may
    /// fall short, but never exceed the clean pass's.
    pub fn assert_clean(&self) {
        let mut problems = Vec::new();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                problems.push(what.to_owned());
            }
        };
        check(self.lost == 0, "events lost");
        check(self.unmarked_duplicates == 0, "decisions repeated without `replayed`");
        check(self.disagreeing == 0, "records of one transaction disagree");
        check(self.double_counted == 0, "features double-counted");
        check(self.dead_missing == 0, "malformed records not dead-lettered");
        check(self.dead_unexpected == 0, "unexpected dead letters");
        check(self.unclean_stops == 0, "an instance did not stop cleanly");
        if self.degraded == "fail" {
            check(self.card_mismatches == 0, "card features differ from the clean pass");
            check(self.probe_mismatches == 0, "entity totals differ from the clean pass");
            check(self.degraded_decisions == 0, "degraded decisions under `fail`");
        }
        assert!(
            problems.is_empty(),
            "{}: {}\n{self:#?}\nlogs: {}",
            self.name,
            problems.join("; "),
            self.logs.display()
        );
    }

    /// A row for benches/RESULTS.md.
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {:.1} s | {:.0} s |",
            self.name,
            self.degraded,
            self.events,
            self.kills,
            self.store_retries,
            self.lost,
            self.double_counted,
            self.unmarked_duplicates,
            self.card_mismatches + self.probe_mismatches,
            self.replayed,
            self.degraded_decisions,
            self.degraded_repeats,
            self.dead_missing + self.dead_unexpected,
            self.drain.as_secs_f64(),
            self.elapsed.as_secs_f64(),
        )
    }

    pub const HEADER: &'static str = "| run | degraded | events | kills | store retries | lost | double-counted | unmarked duplicates | features off the clean pass | replayed records | degraded decisions (repeats) | dead-letter errors | drain | run time |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";
}

/// The feed: events, malformed records and labels, in the order they are sent.
pub struct Feed {
    /// `(topic kind, key, payload)`.
    items: Vec<(Kind, Option<String>, Vec<u8>)>,
    /// Valid events' transaction ids and cards.
    pub cards: HashMap<String, String>,
    /// Records that must be dead-lettered: malformed events, and labels
    /// without the fields the label features count by.
    pub malformed: Vec<Vec<u8>>,
    pub labels: usize,
    /// A valid event to shape the probes on, and the time after every event.
    template: Value,
    end: chrono::DateTime<chrono::Utc>,
    /// Shared entities seen: `(field, values)`.
    shared: Vec<(&'static str, Vec<String>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Event,
    Label,
}

impl Feed {
    pub fn new(seed: u64, events: usize, cards: usize) -> Feed {
        let config = vigil_gen::GenConfig {
            seed,
            events,
            cards,
            merchants: (cards / 8).max(10),
            days: 7,
            hard: true,
            ..vigil_gen::GenConfig::default()
        };
        let generated = vigil_gen::generate(&config);
        let end = generated.iter().map(|l| l.event.timestamp).max().unwrap();
        // Labels confirmed within the history, sent when they are confirmed.
        let labels: Vec<vigil_core::Label> =
            vigil_gen::labels(&generated).into_iter().filter(|l| l.reported_at <= end).collect();
        let mut rng = Rng::new(seed);
        let mut items = Vec::new();
        let mut ids = HashMap::new();
        let mut malformed = Vec::new();
        let mut next_label = 0;
        let shared_fields = ["terminal_id", "merchant_id", "ip", "customer_id"];
        let mut shared: Vec<(&'static str, Vec<String>)> = shared_fields.iter().map(|f| (*f, Vec::new())).collect();
        let mut seen: HashSet<(usize, String)> = HashSet::new();
        for (n, l) in generated.iter().enumerate() {
            while next_label < labels.len() && labels[next_label].reported_at <= l.event.timestamp {
                let label = &labels[next_label];
                let key = label.fields.get(&vigil_core::EventField::CardId).cloned();
                let json = label.to_json();
                // A fraud label without the terminal the label features count
                // by (an online payment) is refused: a dead letter by design.
                if !label.fields.contains_key(&vigil_core::EventField::TerminalId) {
                    malformed.push(json.clone());
                }
                items.push((Kind::Label, key, json));
                next_label += 1;
            }
            let json = l.event.to_json();
            let value: Value = serde_json::from_slice(&json).unwrap();
            let card = value["card_id"].as_str().unwrap().to_owned();
            for (i, (field, values)) in shared.iter_mut().enumerate() {
                if let Some(v) = value[*field].as_str() {
                    if seen.insert((i, v.to_owned())) {
                        values.push(v.to_owned());
                    }
                }
            }
            ids.insert(value["transaction_id"].as_str().unwrap().to_owned(), card.clone());
            items.push((Kind::Event, Some(card), json));
            // About one record in 200 is malformed, of several kinds.
            if rng.between(0, 200) == 0 {
                let bad = match rng.between(0, 3) {
                    0 => format!("not an event {n}").into_bytes(),
                    1 => format!(r#"{{"transaction_id":"bad-{n}","amount":"12.00"}}"#).into_bytes(),
                    _ => {
                        let mut v = value.clone();
                        v["transaction_id"] = Value::from(format!("bad-{n}"));
                        v["amount"] = Value::from("-5.00");
                        serde_json::to_vec(&v).unwrap()
                    }
                };
                malformed.push(bad.clone());
                items.push((Kind::Event, None, bad));
            }
        }
        let template: Value = serde_json::from_slice(&generated[0].event.to_json()).unwrap();
        Feed { items, cards: ids, malformed, labels: next_label, template, end, shared }
    }

    /// One probe per shared entity value, each naming at most one value of
    /// each field (a value appears in one probe only, so the probes' order
    /// across partitions changes nothing), with a card of its own, one second
    /// after the last event.
    pub fn probes(&self) -> Vec<(String, Vec<u8>)> {
        let n = self.shared.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        let at = (self.end + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        (0..n)
            .map(|i| {
                let mut v = self.template.clone();
                let object = v.as_object_mut().unwrap();
                let card = format!("probe-card-{i}");
                object.insert("transaction_id".into(), Value::from(format!("probe-{i}")));
                object.insert("timestamp".into(), Value::from(at.clone()));
                object.insert("card_id".into(), Value::from(card.clone()));
                for (field, values) in &self.shared {
                    match values.get(i) {
                        Some(value) => object.insert((*field).into(), Value::from(value.clone())),
                        None => object.remove(*field),
                    };
                }
                (card, serde_json::to_vec(&v).unwrap())
            })
            .collect()
    }
}

/// The topics, group and key prefix of one pass.
struct Pass {
    file: PathBuf,
    input: String,
    labels: String,
    decisions: String,
    dead: String,
}

/// Where a pass keeps its features.
enum Store {
    Redis(String),
    Cluster(Vec<String>),
}

impl Pass {
    fn new(tag: &str, brokers: &str, store: &Store, degraded: &str, owned: bool) -> Pass {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let tag = format!("{tag}-{}", &id[..8]);
        let pipeline = TestPipeline::shipped("local.toml").named(&tag);
        let pipeline = match store {
            Store::Redis(url) => pipeline.set("store.redis_url", url.as_str()),
            Store::Cluster(nodes) => pipeline
                .without("store.redis_url")
                .set("store.backend", "redis-cluster")
                .add("store.redis_nodes", toml::Value::Array(nodes.iter().map(|n| n.as_str().into()).collect())),
        };
        let pipeline = pipeline
            .set("kafka.brokers", brokers)
            .set("store.degraded", degraded)
            .set("kafka.batch_size", 250)
            // A killed member's partitions wait for its session to expire.
            .kafka_property("session.timeout.ms", "6000")
            .kafka_property("heartbeat.interval.ms", "1000");
        let pipeline = match owned {
            true => pipeline.add("store.mode", "owned").add("store.snapshot_events", 500),
            false => pipeline,
        };
        let file = repo().join(format!("pipelines/.test-faults-{tag}.toml"));
        std::fs::write(&file, pipeline.text()).unwrap();
        Pass {
            input: format!("in-{tag}"),
            labels: format!("labels-{tag}"),
            decisions: format!("out-{tag}"),
            dead: format!("dlq-{tag}"),
            file,
        }
    }

    async fn create_topics(&self, partitions: i32) {
        let config = vigil_core::PipelineConfig::load(&self.file).unwrap();
        vigil_kafka::create_topics(config.kafka.as_ref().unwrap(), partitions).await.unwrap();
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        std::fs::remove_file(&self.file).ok();
    }
}

/// What the checker read from a pass's output topics, as it arrived.
#[derive(Default, Clone)]
pub struct Outside {
    /// Decision records by transaction id, as JSON.
    pub decisions: HashMap<String, Vec<Value>>,
    /// Dead letters: payload, reason.
    pub dead: Vec<(Vec<u8>, Option<String>)>,
    pub last: Option<Instant>,
}

/// Reads a pass's decisions and dead letters in the background, with a
/// consumer of its own (plain rdkafka, no Vigil code).
struct Reader {
    seen: Arc<Mutex<Outside>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(brokers: &str, pass: &Pass) -> Reader {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("checker-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[pass.decisions.as_str(), pass.dead.as_str()]).unwrap();
        let seen = Arc::new(Mutex::new(Outside::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let dead_topic = pass.dead.clone();
        let task = {
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let m = match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
                        Ok(Ok(m)) => m,
                        Ok(Err(_)) | Err(_) => continue,
                    };
                    let payload = m.payload().unwrap_or_default().to_vec();
                    let mut seen = seen.lock().unwrap();
                    seen.last = Some(Instant::now());
                    if m.topic() == dead_topic {
                        let reason = m.headers().and_then(|h| {
                            h.iter()
                                .find(|h| h.key == "vigil.error")
                                .and_then(|h| h.value)
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                        });
                        seen.dead.push((payload, reason));
                    } else if let Ok(v) = serde_json::from_slice::<Value>(&payload) {
                        let id = v["transaction_id"].as_str().unwrap_or_default().to_owned();
                        seen.decisions.entry(id).or_default().push(v);
                    }
                }
            })
        };
        Reader { seen, stop, task }
    }

    /// Waits until every id of `ids` has a decision and `dead` dead letters
    /// arrived; when the last of them arrived, or `None` after `limit`.
    async fn until_complete(&self, ids: &[&str], dead: usize, limit: Duration) -> Option<Instant> {
        let start = Instant::now();
        loop {
            {
                let seen = self.seen.lock().unwrap();
                let missing = ids.iter().filter(|id| !seen.decisions.contains_key(**id)).count();
                if missing == 0 && seen.dead.len() >= dead {
                    return seen.last;
                }
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn finish(self) -> Outside {
        // What may still arrive (late redeliveries) has a moment to.
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        Arc::try_unwrap(self.seen).ok().expect("the reader stopped").into_inner().unwrap()
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        // Records wait through a broker restart.
        .set("message.timeout.ms", "300000")
        .create()
        .unwrap()
}

/// Sends the feed's items at `rate` events per second (0: as fast as it can).
async fn send(producer: &FutureProducer, pass: &Pass, feed: &Feed, rate: u64) {
    let started = Instant::now();
    let mut pending = Vec::new();
    for (n, (kind, key, payload)) in feed.items.iter().enumerate() {
        let topic = if *kind == Kind::Label { &pass.labels } else { &pass.input };
        let mut record = FutureRecord::to(topic).payload(payload.as_slice());
        if let Some(k) = key {
            record = record.key(k.as_str());
        }
        pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("queue the feed"));
        if rate > 0 && n % 50 == 0 {
            let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        if pending.len() >= 5_000 {
            for f in pending.drain(..) {
                f.await.expect("delivery").expect("feed delivered");
            }
        }
    }
    for f in pending {
        f.await.expect("delivery").expect("feed delivered");
    }
}

async fn send_probes(producer: &FutureProducer, pass: &Pass, probes: &[(String, Vec<u8>)]) {
    for (key, payload) in probes {
        let record = FutureRecord::to(&pass.input).key(key.as_str()).payload(payload.as_slice());
        producer.send(record, Duration::from_secs(60)).await.map_err(|(e, _)| e).expect("probe delivered");
    }
}

/// A feature value as a number, for count and sum comparisons.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn is_total(name: &str) -> bool {
    name.contains("_count_") || name.contains("_sum_") || name.contains("_frauds_")
}

/// The features of a decision record whose name passes `keep`.
fn features(d: &Value, keep: impl Fn(&str) -> bool) -> BTreeMap<String, Value> {
    d["features"]
        .as_object()
        .map(|o| o.iter().filter(|(k, _)| keep(k)).map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Compares `got` with `want`: how many differ, and how many totals exceed.
fn compare(got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>) -> (usize, usize, Option<String>) {
    let mut differ = 0;
    let mut above = 0;
    let mut example = None;
    for (name, w) in want {
        let g = got.get(name).unwrap_or(&Value::Null);
        if g != w {
            differ += 1;
            if is_total(name) && number(g).unwrap_or(0.0) > number(w).unwrap_or(0.0) {
                above += 1;
            }
            example.get_or_insert_with(|| format!("{name}: {g} against {w}"));
        }
    }
    (differ, above, example)
}

/// The services a run can break.
pub struct Services {
    pub broker: Server,
    pub redis: Server,
}

/// The harness's own services, in a scratch folder (logs included).
pub struct Harness {
    pub dir: PathBuf,
    pub services: Arc<Mutex<Services>>,
    brokers: String,
    redis_port: u16,
}

impl Harness {
    pub fn start(name: &str) -> Harness {
        let dir = std::env::temp_dir().join(format!("vigil-faults-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let broker = Server::start("tansu", &dir, tansu);
        let redis = Server::start("redis", &dir, redis_server);
        let (brokers, redis_port) = (format!("127.0.0.1:{}", broker.port), redis.port);
        Harness { dir, services: Arc::new(Mutex::new(Services { broker, redis })), brokers, redis_port }
    }

    /// Runs `plan`: the faulted group, then the clean pass, then the checks.
    pub async fn run(&self, plan: &Plan) -> Report {
        let started = Instant::now();
        let feed = Feed::new(plan.seed, plan.events, plan.cards);
        let probes = feed.probes();
        let ids: Vec<&str> = feed.cards.keys().map(String::as_str).collect();
        let probe_ids: Vec<String> = (0..probes.len()).map(|i| format!("probe-{i}")).collect();
        let probe_refs: Vec<&str> = probe_ids.iter().map(String::as_str).collect();
        let brokers = self.brokers.clone();
        let logs = self.dir.join(plan.name.replace([' ', '/'], "-"));
        std::fs::create_dir_all(&logs).unwrap();
        let mut report = Report {
            name: plan.name.clone(),
            degraded: plan.degraded,
            events: feed.cards.len(),
            malformed: feed.malformed.len(),
            labels: feed.labels,
            instances: plan.instances,
            probes: probes.len(),
            logs: logs.clone(),
            ..Report::default()
        };

        // The faulted group, reaching Redis through the proxy, or on a cluster of its own.
        let proxy = Arc::new(Proxy::start(format!("127.0.0.1:{}", self.redis_port)).await);
        let cluster = plan.cluster.then(|| Arc::new(OwnCluster::start(&logs)));
        let store = match &cluster {
            Some(c) => Store::Cluster(c.urls()),
            None => Store::Redis(proxy.url()),
        };
        let faulted = Pass::new("faulted", &brokers, &store, plan.degraded, plan.owned);
        faulted.create_topics(plan.partitions).await;
        let reader = Reader::start(&brokers, &faulted);
        let instances: Vec<Instance> = (0..plan.instances)
            .map(|i| Instance::start(&faulted.file, logs.join(format!("instance-{i}.log"))))
            .collect();
        let instances = Arc::new(Mutex::new(instances));
        let feeding = Duration::from_secs_f64(feed.items.len() as f64 / plan.rate.max(1) as f64);
        let producer = producer(&brokers);

        // The faults run beside the feed, on their own schedule.
        let kills = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let services = self.services.clone();
        let schedule = {
            let (faults, instances, services, proxy, kills, cluster) = (
                plan.faults.clone(),
                instances.clone(),
                services.clone(),
                proxy.clone(),
                kills.clone(),
                cluster.clone(),
            );
            let mut rng = Rng::new(plan.seed.wrapping_mul(31).wrapping_add(7));
            let n = plan.instances as u64;
            tokio::spawn(async move {
                let t0 = Instant::now();
                let mut tasks = Vec::new();
                for (share, fault) in faults {
                    let at = t0 + feeding.mul_f64(share);
                    let (instances, services, proxy, kills, cluster) =
                        (instances.clone(), services.clone(), proxy.clone(), kills.clone(), cluster.clone());
                    let mut rng = Rng::new(rng.next_u64());
                    tasks.push(tokio::spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        match fault {
                            Fault::Kills { count, gap } => {
                                for _ in 0..count {
                                    let slot = rng.between(0, n) as usize;
                                    instances.lock().unwrap()[slot].kill_and_restart();
                                    kills.fetch_add(1, Ordering::Relaxed);
                                    let ms = rng.between(gap.0.as_millis() as u64, gap.1.as_millis() as u64 + 1);
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                }
                            }
                            Fault::RedisOutage(d) => {
                                services.lock().unwrap().redis.stop();
                                tokio::time::sleep(d).await;
                                let s = services.clone();
                                tokio::task::spawn_blocking(move || s.lock().unwrap().redis.spawn()).await.unwrap();
                            }
                            Fault::BrokerRestart(d) => {
                                services.lock().unwrap().broker.stop();
                                tokio::time::sleep(d).await;
                                let s = services.clone();
                                tokio::task::spawn_blocking(move || s.lock().unwrap().broker.spawn()).await.unwrap();
                            }
                            Fault::LinkHold(d) => {
                                proxy.hold();
                                tokio::time::sleep(d).await;
                                proxy.pass();
                            }
                            Fault::LinkDrop => proxy.drop_connections(),
                            Fault::ClusterFailover => {
                                let cluster = cluster.expect("a failover needs `cluster: true`");
                                tokio::task::spawn_blocking(move || cluster.failover(&mut rng)).await.unwrap();
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            })
        };
        send(&producer, &faulted, &feed, plan.rate).await;
        schedule.await.unwrap();
        let calm = Instant::now();
        let done = reader.until_complete(&ids, feed.malformed.len(), plan.drain_limit).await;
        report.drain = done.map_or(plan.drain_limit, |at| at.saturating_duration_since(calm));
        send_probes(&producer, &faulted, &probes).await;
        reader.until_complete(&probe_refs, 0, plan.drain_limit).await;
        for i in instances.lock().unwrap().iter_mut() {
            if !i.stop() {
                report.unclean_stops += 1;
            }
        }
        let faulted_out = reader.finish().await;
        report.kills = kills.load(Ordering::Relaxed);
        drop(proxy);

        // The clean pass: one instance, straight to Redis, no fault.
        drop(cluster);
        let clean = Pass::new(
            "clean",
            &brokers,
            &Store::Redis(format!("redis://127.0.0.1:{}", self.redis_port)),
            "fail",
            false,
        );
        clean.create_topics(plan.partitions).await;
        let reader = Reader::start(&brokers, &clean);
        let mut one = Instance::start(&clean.file, logs.join("clean.log"));
        send(&producer, &clean, &feed, 0).await;
        let complete = reader.until_complete(&ids, feed.malformed.len(), plan.drain_limit).await;
        assert!(complete.is_some(), "the clean pass did not finish; see {}", logs.display());
        send_probes(&producer, &clean, &probes).await;
        reader.until_complete(&probe_refs, 0, plan.drain_limit).await;
        one.stop();
        let clean_out = reader.finish().await;

        check(&mut report, &feed, &ids, &probe_refs, &faulted_out, &clean_out);
        report.store_retries = (0..plan.instances)
            .filter_map(|i| std::fs::read_to_string(logs.join(format!("instance-{i}.log"))).ok())
            .map(|log| log.matches("retrying the batch").count())
            .sum();
        report.elapsed = started.elapsed();
        report
    }
}

/// Compares what a faulted group wrote (`got`) with the clean pass's, into `report`.
pub fn check(report: &mut Report, feed: &Feed, ids: &[&str], probes: &[&str], got: &Outside, clean: &Outside) {
    let card = |k: &str| k.starts_with("card_");
    for id in ids {
        let Some(records) = got.decisions.get(*id) else {
            report.lost += 1;
            if report.examples.len() < 10 {
                report.examples.push(format!("{id}: no decision"));
            }
            continue;
        };
        // A degraded decision counted nothing and set no marker (under
        // `decide` and `review`), so a redelivery is decided afresh: such
        // repeats are expected, and counted apart from the others.
        let degraded = |d: &Value| d["degraded"] == Value::Bool(true);
        let counted: Vec<&Value> = records.iter().filter(|d| !degraded(d)).collect();
        let unmarked = counted.iter().filter(|d| d["replayed"] != Value::Bool(true)).count();
        report.unmarked_duplicates += unmarked.saturating_sub(1);
        report.replayed += records.iter().filter(|d| d["replayed"] == Value::Bool(true)).count();
        if records.len() > 1 {
            report.degraded_repeats += records.len() - counted.len();
        }
        if let Some((base, rest)) = counted.split_first() {
            for d in rest {
                if d["decision"] != base["decision"] || d["features"] != base["features"] {
                    report.disagreeing += 1;
                }
            }
        }
        let first = counted.first().copied().unwrap_or(&records[0]);
        if degraded(&records[0]) {
            report.degraded_decisions += 1;
        }
        let Some(want) = clean.decisions.get(*id).map(|r| &r[0]) else { continue };
        let (differ, above, example) = compare(&features(first, card), &features(want, card));
        if differ > 0 {
            report.card_mismatches += 1;
            report.double_counted += above;
            if report.examples.len() < 10 {
                report.examples.push(format!("{id}: {}", example.unwrap_or_default()));
            }
        }
    }
    for id in probes {
        let (Some(g), Some(w)) = (got.decisions.get(*id), clean.decisions.get(*id)) else {
            report.probe_mismatches += 1;
            continue;
        };
        let shared = |k: &str| !k.starts_with("card_");
        let (differ, above, example) = compare(&features(&g[0], shared), &features(&w[0], shared));
        report.probe_mismatches += differ;
        report.double_counted += above;
        if let Some(e) = example {
            if report.examples.len() < 10 {
                report.examples.push(format!("{id}: {e}"));
            }
        }
    }
    let planted: HashSet<&[u8]> = feed.malformed.iter().map(Vec::as_slice).collect();
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    for (payload, reason) in &got.dead {
        if !planted.contains(payload.as_slice()) || reason.as_deref().is_none_or(str::is_empty) {
            report.dead_unexpected += 1;
            if report.examples.len() < 10 {
                let text = String::from_utf8_lossy(&payload[..payload.len().min(160)]).into_owned();
                report.examples.push(format!("dead letter {reason:?}: {text}"));
            }
        } else {
            *seen.entry(payload.as_slice()).or_default() += 1;
        }
    }
    report.dead_missing = planted.iter().filter(|p| !seen.contains_key(*p)).count();
    report.dead_repeats = seen.values().map(|n| n - 1).sum();
}
