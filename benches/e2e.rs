//! End-to-end harness: Vigil's stream against the same broker's raw pass-through.
//!
//! In one run, on fresh topics of 4 partitions:
//! 1. produces N generated events to two input topics (a backlog);
//! 2. **pass-through ceiling**: a consumer group reads one backlog and re-produces
//!    every record unchanged, storing offsets after delivery, with the same batch
//!    size, linger and in-flight bound as Vigil; no parsing, no work;
//! 3. **Vigil**: `vigil_stream::run` with the shipped local pipeline (Redis
//!    features, shipped rules) drains the other backlog, once per store mode
//!    (`VIGIL_BENCH_MODES`, default `shared,owned`: today's shared records,
//!    then the owned state of issue 23, each on topics of its own), with
//!    Redis's own CPU per event (`INFO cpu`) over the drain;
//!    for both, where the CPU went over the drain (the machine's busy share,
//!    this process by thread, the broker process, Redis), to show which
//!    limit a ratio meets on a machine of few cores;
//! 4. **latency**: both are fed fresh events at a fixed rate, and a reader times
//!    each event from its send to the arrival of its output record;
//! 5. **the pass-through at a decision's size**: the pass-through again, on a
//!    backlog of its own, each record it writes padded to the mean size of
//!    the decisions read in step 4 (the larger mode's): what the broker and
//!    machine allow a Vigil whose own work cost nothing (`VIGIL_BENCH_SIZED=0`
//!    leaves it out).
//!
//! Needs the broker and Redis of `scripts/services.sh`. Run:
//! `cargo bench --bench e2e` (env: VIGIL_BENCH_EVENTS, VIGIL_BENCH_RATE, VIGIL_BENCH_SECONDS,
//! VIGIL_BENCH_IN_FLIGHT, VIGIL_BENCH_MODES (a mode ending in `-flagged`,
//! such as `owned-flagged`, runs that store mode with `[decision] features =
//! "flagged"`), VIGIL_BENCH_SIZED, VIGIL_BENCH_PASS_PAD: bytes the
//! first pass-through pads each record it writes to (spaces after the JSON), to
//! give the broker records of a chosen size; and VIGIL_BENCH_PROPS: librdkafka
//! properties `key=value,key=value` for every client of the run, the
//! pass-through's and Vigil's alike).
//!
//! `VIGIL_BENCH_ROUNDS=N` repeats steps 1-5 N times on fresh topics and keys
//! and ends with each ratio's median over the rounds: two identical
//! pass-throughs of one run differ by up to ±20% on the test broker, so a
//! single round's ratio carries that swing.
//!
//! Each drain is reported whole and by halves (the time to the first half
//! of the events, then to the rest): on a broker whose fetch work grows with
//! the backlog (the test broker's), the first half tells the broker's start
//! from the second half's steady state.

#[path = "../tests/common/mod.rs"]
mod common;

/// The allocator the `vigil` binary ships with (src/main.rs): what runs in
/// this process is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{mpsc, Mutex};

use common::{stat_ticks, JIFFY};
use vigil_core::{Event, PipelineConfig};
use vigil_engine::Engine;
use vigil_gen::GenConfig;
use vigil_stream::Stats;

const BATCH: usize = 500;
/// Batches awaiting delivery, for both the pass-through and Vigil
/// (`VIGIL_BENCH_IN_FLIGHT`; the shipped pipelines' `max_in_flight_batches`).
fn in_flight() -> usize {
    env_usize("VIGIL_BENCH_IN_FLIGHT", 4)
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `VIGIL_BENCH_PROPS`: librdkafka properties for every client of the run.
fn props() -> Vec<(String, String)> {
    std::env::var("VIGIL_BENCH_PROPS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A client configuration for the test broker with `VIGIL_BENCH_PROPS`.
fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", "127.0.0.1:9092");
    for (k, v) in props() {
        c.set(k, v);
    }
    c
}

fn pipeline(tag: &str) -> PipelineConfig {
    let mut config = common::TestPipeline::shipped("local.toml")
        .set("kafka.group_id", format!("bench-{tag}"))
        .set("kafka.input_topic", format!("bench-in-{tag}"))
        .set("kafka.decisions_topic", format!("bench-out-{tag}"))
        .set("kafka.dead_letter_topic", format!("bench-dlq-{tag}"))
        .set("store.key_prefix", format!("bench-{tag}"))
        .set("kafka.max_in_flight_batches", in_flight() as i64)
        .config();
    if let Some(k) = config.kafka.as_mut() {
        k.properties.extend(props());
    }
    config
}

fn producer() -> FutureProducer {
    client().set("linger.ms", "2").create().unwrap()
}

fn consumer(group: &str, topic: &str) -> StreamConsumer {
    consumer_from(group, topic, "earliest")
}

fn consumer_from(group: &str, topic: &str, reset: &str) -> StreamConsumer {
    let c: StreamConsumer = client()
        .set("group.id", group)
        .set("auto.offset.reset", reset)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// The ceiling: read, re-produce unchanged, store offsets after delivery.
/// Each record written is padded with spaces to `pad` bytes when shorter.
async fn pass_through(
    input: String,
    output: String,
    group: String,
    pad: usize,
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicU64>,
) {
    let c = Arc::new(consumer(&group, &input));
    let p = producer();
    let (tx, mut rx) = mpsc::channel::<(Vec<rdkafka::producer::DeliveryFuture>, BTreeMap<i32, i64>)>(in_flight());
    let committer = {
        let c = c.clone();
        let input = input.clone();
        tokio::spawn(async move {
            while let Some((fs, offsets)) = rx.recv().await {
                for f in fs {
                    f.await.unwrap().unwrap();
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                for (part, off) in offsets {
                    let _ = c.store_offset(&input, part, off);
                }
            }
        })
    };
    let mut padded = Vec::with_capacity(pad);
    while stop.load(Ordering::Relaxed) == 0 {
        let first = match tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
            Ok(Ok(m)) => m.detach(),
            _ => continue,
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(5);
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, c.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                _ => break,
            }
        }
        let mut offsets = BTreeMap::new();
        let mut fs = Vec::with_capacity(batch.len());
        for m in &batch {
            offsets.insert(m.partition(), m.offset());
            let mut payload = m.payload().unwrap_or_default();
            if pad > payload.len() {
                // One buffer for the run: the producer copies the payload.
                padded.clear();
                padded.extend_from_slice(payload);
                padded.resize(pad, b' ');
                payload = &padded;
            }
            let mut r = FutureRecord::to(&output).payload(payload);
            if let Some(k) = m.key() {
                r = r.key(k);
            }
            fs.push(vigil_kafka::enqueue(&p, r).await.unwrap());
        }
        tx.send((fs, offsets)).await.unwrap();
    }
    drop(tx);
    committer.await.unwrap();
}

async fn produce(topic: &str, events: &[Event]) {
    let p = producer();
    let mut fs = Vec::new();
    for e in events {
        let payload = e.to_json();
        let key = e.card_id.clone().unwrap_or_default();
        let r = FutureRecord::to(topic).payload(payload.as_slice()).key(key.as_bytes());
        fs.push(vigil_kafka::enqueue(&p, r).await.unwrap());
    }
    for f in fs {
        f.await.unwrap().unwrap();
    }
}

/// A drain, whole and by halves.
struct Drain {
    /// From the first output to the last.
    time: Duration,
    cpu: CpuUse,
    /// From the first output to half the events, and from there to the last.
    halves: [(Duration, CpuUse); 2],
}

impl Drain {
    /// One line: each half's events/s and the machine's busy share in it.
    fn halves(&self, n: u64, ceiling: Option<&Drain>) -> String {
        let half = |i: usize| {
            let (t, cpu) = &self.halves[i];
            let events = if i == 0 { n / 2 } else { n - n / 2 };
            let rate = events as f64 / t.as_secs_f64().max(1e-9);
            let ratio = ceiling.map_or(String::new(), |c| {
                let (ct, _) = &c.halves[i];
                format!(" ({:.0}% of the pass-through's)", 100.0 * rate * ct.as_secs_f64() / events as f64)
            });
            format!("{rate:.0} events/s{ratio}, machine {:.0}% busy", 100.0 * cpu.machine_busy)
        };
        format!("  by halves: first {}; second {}", half(0), half(1))
    }
}

/// Waits until `counter` reaches `n`, timing it from the first output, with
/// the CPU used over the whole and over each half.
async fn drain_time(counter: &AtomicU64, n: u64, limit: Duration) -> Drain {
    let start = Instant::now();
    let mut first: Option<(Instant, CpuSample)> = None;
    let mut half: Option<(Instant, CpuSample)> = None;
    loop {
        let v = counter.load(Ordering::Relaxed);
        if v > 0 && first.is_none() {
            first = Some((Instant::now(), CpuSample::take().await));
        }
        if v >= n / 2 && half.is_none() {
            half = Some((Instant::now(), CpuSample::take().await));
        }
        if v >= n {
            let end = (Instant::now(), CpuSample::take().await);
            let (Some(first), Some(half)) = (first, half) else { panic!("nothing drained: {n} events asked") };
            return Drain {
                time: end.0 - first.0,
                cpu: end.1.since(&first.1),
                halves: [(half.0 - first.0, half.1.since(&first.1)), (end.0 - half.0, end.1.since(&half.1))],
            };
        }
        assert!(start.elapsed() < limit, "only {v} of {n} after {limit:?}");
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Where the CPU time of a drain went: the machine's busy share, this
/// process by thread name, the broker process and Redis (all from `/proc`,
/// Redis from `INFO cpu`).
struct CpuSample {
    /// Busy and total jiffies of all cores (`/proc/stat`).
    machine: (u64, u64),
    /// Jiffies the cores sat idle with I/O outstanding (counted as idle above).
    iowait: u64,
    /// This process's threads: thread id -> (name, jiffies).
    threads: HashMap<u32, (String, u64)>,
    /// The broker process (`tansu`, found by name), jiffies.
    broker: u64,
    redis_us: f64,
}

struct CpuUse {
    seconds: f64,
    /// Share of all cores busy over the window, 0-1.
    machine_busy: f64,
    /// Share of all cores idle waiting on I/O over the window, 0-1.
    machine_iowait: f64,
    cores: usize,
    /// This process's CPU seconds by thread name (numbers stripped), largest first.
    threads: Vec<(String, f64)>,
    broker_s: f64,
    redis_s: f64,
}

impl CpuSample {
    async fn take() -> CpuSample {
        let (busy, total, iowait) = common::machine_jiffies();
        let mut threads = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for t in dir.flatten() {
                let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() else { continue };
                if let Some(v) = std::fs::read_to_string(t.path().join("stat")).ok().as_deref().and_then(stat_ticks) {
                    threads.insert(tid, v);
                }
            }
        }
        let mut broker = 0;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for p in dir.flatten() {
                if !p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Some((name, ticks)) =
                    std::fs::read_to_string(p.path().join("stat")).ok().as_deref().and_then(stat_ticks)
                {
                    if name == "tansu" {
                        broker += ticks;
                    }
                }
            }
        }
        CpuSample { machine: (busy, total), iowait, threads, broker, redis_us: common::redis_cpu_us().await }
    }

    fn since(&self, from: &CpuSample) -> CpuUse {
        let total = self.machine.1.saturating_sub(from.machine.1).max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
        for (tid, (name, ticks)) in &self.threads {
            let before = from.threads.get(tid).map_or(0, |(_, t)| *t);
            let name: String = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#').into();
            *by_name.entry(name).or_default() += ticks.saturating_sub(before) as f64 * JIFFY;
        }
        let mut threads: Vec<(String, f64)> = by_name.into_iter().filter(|(_, s)| *s > 0.0).collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        CpuUse {
            seconds: total as f64 * JIFFY / cores as f64,
            machine_busy: self.machine.0.saturating_sub(from.machine.0) as f64 / total as f64,
            machine_iowait: self.iowait.saturating_sub(from.iowait) as f64 / total as f64,
            cores,
            threads,
            broker_s: self.broker.saturating_sub(from.broker) as f64 * JIFFY,
            redis_s: (self.redis_us - from.redis_us) / 1e6,
        }
    }
}

impl CpuUse {
    /// One line: the machine's busy share and each party's CPU µs per event.
    fn report(&self, n: u64) -> String {
        let per = |s: f64| s * 1e6 / n as f64;
        let own: f64 = self.threads.iter().map(|(_, s)| s).sum();
        let threads: Vec<String> = self
            .threads
            .iter()
            .take(6)
            .map(|(name, s)| format!("{name} {:.1} ({:.0}% of a core)", per(*s), 100.0 * s / self.seconds.max(1e-9)))
            .collect();
        format!(
            "  CPU over the drain ({:.2} s, {} cores {:.0}% busy, {:.0}% waiting on I/O), µs per event: \
             this process {:.1} [{}], broker {:.1}, Redis {:.1}, machine {:.1}",
            self.seconds,
            self.cores,
            100.0 * self.machine_busy,
            100.0 * self.machine_iowait,
            per(own),
            threads.join(", "),
            per(self.broker_s),
            per(self.redis_s),
            per(self.machine_busy * self.seconds * self.cores as f64),
        )
    }
}

/// Sends `events` at `rate`/s to `input` and times each one's output on
/// `output`; also gives the mean size in bytes of the output records timed.
async fn latency(input: &str, output: &str, events: &[Event], rate: usize) -> (Histogram<u64>, usize) {
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let reader = {
        let sent = sent.clone();
        // From the end: the backlog already on the topic is not read or timed.
        let c = consumer_from(&format!("lat-{}", uuid::Uuid::new_v4()), output, "latest");
        let n = events.len();
        let is_decision = !output.contains("raw");
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut bytes = 0;
            while (h.len() as usize) < n {
                let m: OwnedMessage = match tokio::time::timeout(Duration::from_secs(30), c.recv()).await {
                    Ok(Ok(m)) => m.detach(),
                    _ => break,
                };
                let now = Instant::now();
                let payload = m.payload().unwrap_or_default();
                let id = if is_decision {
                    serde_json::from_slice::<serde_json::Value>(payload)
                        .ok()
                        .and_then(|v| v["transaction_id"].as_str().map(str::to_owned))
                } else {
                    Event::from_json(payload).ok().map(|e| e.transaction_id)
                };
                if let Some(t) = id.and_then(|id| sent.try_lock().ok().and_then(|s| s.get(&id).copied())) {
                    h.record(now.duration_since(t).as_micros().max(1) as u64).unwrap();
                    bytes += payload.len();
                }
            }
            let mean = bytes / (h.len() as usize).max(1);
            (h, mean)
        })
    };
    // Let the reader join its group and reach the end of the backlog.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let p = producer();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    for (i, e) in events.iter().enumerate() {
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let payload = e.to_json();
        let key = e.card_id.clone().unwrap_or_default();
        sent.lock().await.insert(e.transaction_id.clone(), Instant::now());
        let _ = p.send_result(FutureRecord::to(input).payload(&payload).key(&key));
    }
    reader.await.unwrap()
}

fn report(name: &str, h: &Histogram<u64>) -> String {
    format!(
        "{name}: {} timed, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing else.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_usize("VIGIL_BENCH_EVENTS", 50_000);
    let rate = env_usize("VIGIL_BENCH_RATE", 2_000);
    let seconds = env_usize("VIGIL_BENCH_SECONDS", 10);
    let gen = GenConfig {
        seed: 1,
        events: n + rate * seconds * 2,
        cards: 20_000,
        merchants: 1_000,
        days: 30,
        ..GenConfig::default()
    };
    let all: Vec<Event> = vigil_gen::generate(&gen).into_iter().map(|l| l.event).collect();
    let (backlog, fresh) = all.split_at(n);
    let (fresh_raw, fresh_vigil) = fresh.split_at(rate * seconds);
    let rounds = env_usize("VIGIL_BENCH_ROUNDS", 1).max(1);
    let mut results = Vec::with_capacity(rounds);
    for r in 0..rounds {
        if rounds > 1 {
            println!("== round {} of {rounds}", r + 1);
        }
        results.push(round(n, rate, backlog, fresh_raw, fresh_vigil).await);
    }
    if rounds > 1 {
        summary(&results);
    }
}

/// One round's rates, events/s.
struct Round {
    raw: f64,
    /// By store mode.
    vigil: Vec<(String, f64)>,
    /// The pass-through at a decision's size.
    sized: Option<f64>,
}

/// Each ratio by round and its median: one round's ratio carries the test
/// broker's own swing between two identical pass-throughs (±20% measured).
fn summary(rounds: &[Round]) {
    let line = |name: &str, ratios: Vec<f64>| {
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = if sorted.len() % 2 == 1 {
            sorted[sorted.len() / 2]
        } else {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        };
        let each: Vec<String> = ratios.iter().map(|r| format!("{:.0}%", 100.0 * r)).collect();
        println!("{name}: median {:.0}% over {} rounds ({})", 100.0 * median, ratios.len(), each.join(", "));
    };
    println!("== summary");
    for (i, (mode, _)) in rounds[0].vigil.iter().enumerate() {
        line(&format!("vigil run ({mode}) of the pass-through"), rounds.iter().map(|r| r.vigil[i].1 / r.raw).collect());
        let of_sized: Vec<f64> = rounds.iter().filter_map(|r| r.sized.map(|s| r.vigil[i].1 / s)).collect();
        if !of_sized.is_empty() {
            line(&format!("vigil run ({mode}) of the pass-through at a decision's size"), of_sized);
        }
    }
    // Settings compared in the same rounds (`owned,owned-flagged`): each mode
    // against the first, round by round, which the broker's swing between
    // rounds does not move.
    if let Some((first, _)) = rounds[0].vigil.first() {
        for (i, (mode, _)) in rounds[0].vigil.iter().enumerate().skip(1) {
            line(
                &format!("vigil run ({mode}) of vigil run ({first}), same round"),
                rounds.iter().map(|r| r.vigil[i].1 / r.vigil[0].1).collect(),
            );
        }
    }
    let sized: Vec<f64> = rounds.iter().filter_map(|r| r.sized.map(|s| s / r.raw)).collect();
    if !sized.is_empty() {
        line("the pass-through at a decision's size of the plain one", sized);
    }
}

/// Fresh topics and keys, the backlog produced to each input, then the
/// pass-through, Vigil in each store mode and the sized pass-through.
async fn round(n: usize, rate: usize, backlog: &[Event], fresh_raw: &[Event], fresh_vigil: &[Event]) -> Round {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let config = pipeline(&tag);
    let kafka = config.kafka.clone().unwrap();
    vigil_kafka::create_topics(&kafka, 4).await.unwrap();
    let (raw_in, raw_out) = raw_topics(&kafka, "raw", &tag).await;

    println!("producing {n} events to each backlog...");
    produce(&raw_in, backlog).await;
    produce(&kafka.input_topic, backlog).await;

    // Pass-through ceiling.
    let pad = env_usize("VIGIL_BENCH_PASS_PAD", 0);
    let (raw, stop, pt) = drain_through(&raw_in, &raw_out, &format!("bench-raw-{tag}"), pad, n).await;
    let raw_rate = n as f64 / raw.time.as_secs_f64();
    println!("pass-through: {n} events in {:.2} s = {raw_rate:.0} events/s", raw.time.as_secs_f64());
    println!("{}", raw.cpu.report(n as u64));
    println!("{}", raw.halves(n as u64, None));
    let (raw_latency, _) = latency(&raw_in, &raw_out, fresh_raw, rate).await;
    println!("{}", report(&format!("pass-through latency at {rate}/s"), &raw_latency));
    stop.store(1, Ordering::Relaxed);
    pt.await.unwrap();

    // Vigil, in each store mode (VIGIL_BENCH_MODES, default "shared,owned"),
    // each on topics and keys of its own with the same backlog.
    let modes = std::env::var("VIGIL_BENCH_MODES").unwrap_or_else(|_| "shared,owned".into());
    let mut decision_size = 0;
    let mut vigil_rates = Vec::new();
    for (m, mode) in modes.split(',').map(str::trim).filter(|m| !m.is_empty()).enumerate() {
        let mut config = if m == 0 { config.clone() } else { pipeline(&format!("{tag}-{mode}")) };
        let store_mode = match mode.strip_suffix("-flagged") {
            Some(store_mode) => {
                config.decision_features = vigil_core::pipeline::DecisionFeatures::Flagged;
                store_mode
            }
            None => mode,
        };
        if store_mode == "owned" {
            config.store.mode =
                vigil_core::pipeline::StoreMode::Owned { snapshot_events: 100_000, snapshot_interval_s: 60 };
        }
        let kafka = config.kafka.clone().unwrap();
        if m > 0 {
            vigil_kafka::create_topics(&kafka, 4).await.unwrap();
            produce(&kafka.input_topic, backlog).await;
        }
        let engine = Arc::new(Engine::connect(&config).await.unwrap());
        let stats = Arc::new(Stats::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = {
            let (kafka, stats) = (kafka.clone(), stats.clone());
            tokio::spawn(async move {
                vigil_stream::run(&kafka, engine, stats, async {
                    let _ = stop_rx.await;
                })
                .await
            })
        };
        let drain = drain_time(&stats.delivered, n as u64, Duration::from_secs(600)).await;
        let redis_cpu = drain.cpu.redis_s * 1e6 / n as f64;
        let vigil_rate = n as f64 / drain.time.as_secs_f64();
        println!(
            "vigil run ({mode}): {n} events in {:.2} s = {vigil_rate:.0} events/s ({:.0}% of pass-through); \
             Redis CPU {redis_cpu:.1} µs per event",
            drain.time.as_secs_f64(),
            100.0 * vigil_rate / raw_rate
        );
        println!("{}", drain.cpu.report(n as u64));
        println!("{}", drain.halves(n as u64, Some(&raw)));
        vigil_rates.push((mode.to_owned(), vigil_rate));
        let fresh = if m % 2 == 0 { fresh_vigil } else { fresh_raw };
        let (vigil_latency, size) = latency(&kafka.input_topic, &kafka.decisions_topic, fresh, rate).await;
        decision_size = decision_size.max(size);
        println!("vigil ({mode}) decisions: {size} B on the mean");
        println!("{}", report(&format!("vigil ({mode}) event-to-decision latency at {rate}/s"), &vigil_latency));
        let _ = stop_tx.send(());
        run.await.unwrap().unwrap();
        println!("vigil ({mode}) stats: {:?}", stats.snapshot());
        // Markers live for the de-duplication TTL: leave Redis as it was.
        common::clean_redis(&config.store.key_prefix).await;
    }

    // The pass-through again, writing records as large as the decisions
    // Vigil wrote (their mean size in a latency phase, the larger of the
    // store modes' when there are two): the ceiling of a
    // Vigil whose own work cost nothing, on this broker and machine.
    let mut sized_rate = None;
    if decision_size > 0 && env_usize("VIGIL_BENCH_SIZED", 1) == 1 {
        let (sized_in, sized_out) = raw_topics(&kafka, "sized", &tag).await;
        produce(&sized_in, backlog).await;
        let (sized, stop, pt) =
            drain_through(&sized_in, &sized_out, &format!("bench-sized-{tag}"), decision_size, n).await;
        stop.store(1, Ordering::Relaxed);
        pt.await.unwrap();
        let rate = n as f64 / sized.time.as_secs_f64();
        sized_rate = Some(rate);
        let of: Vec<String> = vigil_rates.iter().map(|(mode, r)| format!("{mode} {:.0}%", 100.0 * r / rate)).collect();
        println!(
            "pass-through writing records of a decision's size ({decision_size} B): {n} events in {:.2} s = \
             {rate:.0} events/s ({:.0}% of the plain pass-through); vigil run of it: {}",
            sized.time.as_secs_f64(),
            100.0 * rate / raw_rate,
            of.join(", ")
        );
        println!("{}", sized.cpu.report(n as u64));
        println!("{}", sized.halves(n as u64, Some(&raw)));
    }
    Round { raw: raw_rate, vigil: vigil_rates, sized: sized_rate }
}

/// Topics of 4 partitions `bench-{name}-in-{tag}` and `bench-{name}-out-{tag}`.
async fn raw_topics(kafka: &vigil_core::pipeline::KafkaConfig, name: &str, tag: &str) -> (String, String) {
    let mut raw = kafka.clone();
    raw.input_topic = format!("bench-{name}-in-{tag}");
    raw.decisions_topic = format!("bench-{name}-out-{tag}");
    raw.dead_letter_topic = format!("bench-{name}-dlq-{tag}");
    vigil_kafka::create_topics(&raw, 4).await.unwrap();
    (raw.input_topic, raw.decisions_topic)
}

/// Starts a pass-through group on `input` and times its drain of `n`
/// records; the group runs on (for a latency phase) until the flag is set.
async fn drain_through(
    input: &str,
    output: &str,
    group: &str,
    pad: usize,
    n: usize,
) -> (Drain, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicU64::new(0));
    let task =
        tokio::spawn(pass_through(input.into(), output.into(), group.into(), pad, delivered.clone(), stop.clone()));
    let drain = drain_time(&delivered, n as u64, Duration::from_secs(600)).await;
    (drain, stop, task)
}
