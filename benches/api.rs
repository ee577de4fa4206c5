//! Load harness for `vigil serve`: latency at fixed request rates and throughput
//! at saturation, beside the same server answering a trivial route (`/healthz`)
//! as the HTTP ceiling, in one run.
//!
//! The server is the release binary, a separate process, with the shipped local
//! pipeline: 22 Redis features, the shipped rules and model, decisions also
//! published to Kafka. The load generator runs here, on the same machine:
//! - **fixed rates** are open loop: request `i` is due at `start + i / rate`,
//!   and its latency counts from when it was due whenever the sender was still
//!   busy then, so a server that falls behind shows it (no coordinated
//!   omission); a sender that was idle counts from when its timer woke it
//!   (tokio's millisecond ticks wake it up to 1 ms late);
//! - **saturation** is closed loop: `VIGIL_BENCH_CONNECTIONS` connections send
//!   as fast as answers come.
//!
//! Every request is signed; every event is a new generated payment.
//! Needs `cargo build --release`, and the broker and Redis of
//! `scripts/services.sh`. Run: `cargo bench --bench api` (env:
//! VIGIL_BENCH_BINARY=path to serve with another build than target/release/vigil,
//! VIGIL_BENCH_RATES=2000,10000,20000, VIGIL_BENCH_HEALTHZ_RATES=the same (the trivial
//! route at fixed rates, for the latency the machine and HTTP give alone; empty for none),
//! VIGIL_BENCH_SECONDS=5, VIGIL_BENCH_CONNECTIONS=64,
//! VIGIL_BENCH_AUDIT=0 to leave out the Kafka audit trail,
//! VIGIL_BENCH_MODES=shared,owned for the feature store's modes, a server
//! each, one after the other; a mode ending in `-flagged`, such as
//! `owned-flagged`, also sets `[decision] features = "flagged"`). At saturation it also says the server's and
//! Redis's CPU per decision. Under each fixed rate's row a line tells where
//! the time went: the server's own p50 and p99 (its `/metrics` histogram,
//! bucket bounds), and per request the CPU of the server, the load generator
//! and Redis and the time each waited runnable for one of the machine's cores.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use vigil_core::PipelineConfig;
use vigil_gen::GenConfig;

const SECRET: &str = "bench-secret-0123456789abcdef0123";

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Server(Child);

/// A process's CPU time so far (from `/proc/PID/stat`), in µs.
fn process_cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    common::stat_ticks(&stat).map_or(0.0, |(_, ticks)| ticks as f64 * common::JIFFY * 1e6)
}

/// What a fixed-rate phase cost and where its requests waited, for the line
/// under its row: the server's own latency histogram (`/metrics`, from the
/// request's arrival in the router to its answer), and for the server, this
/// load generator and Redis their CPU and the time their threads waited
/// runnable for a core (`/proc/PID/task/*/schedstat`), and the machine's busy
/// share. It tells a tail made inside the server's handler from one made by
/// processes queueing for the machine's cores.
struct Phase {
    /// Cumulative counts of `/v1/decisions` answered 200, by upper bound (s).
    buckets: Vec<(f64, u64)>,
    /// Server, load generator, Redis: (CPU µs, run-queue wait µs); `None`
    /// for a process not on this machine (a remote Redis).
    procs: [Option<(f64, f64)>; 3],
    machine: (u64, u64),
}

impl Phase {
    async fn take(client: &reqwest::Client, base: &str, pids: [Option<u32>; 3]) -> Phase {
        // Without the histogram the line leaves out the server's own
        // latency; say why rather than print nothing.
        let text = match client.get(format!("{base}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => {
                eprintln!("the server's /metrics could not be read: {e}");
                String::new()
            }
        };
        let mut buckets: Vec<(f64, u64)> = text
            .lines()
            .filter(|l| {
                l.starts_with("vigil_http_request_duration_seconds_bucket{")
                    && l.contains("route=\"/v1/decisions\"")
                    && l.contains("status=\"200\"")
            })
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (busy, total, _) = common::machine_jiffies();
        Phase {
            buckets,
            procs: pids.map(|p| p.map(|p| (process_cpu_us(p), common::run_queue_wait_us(p)))),
            machine: (busy, total),
        }
    }

    /// Decisions answered 200 between `from` and `self`.
    fn decided_since(&self, from: &Phase) -> u64 {
        let all = |p: &Phase| p.buckets.last().map_or(0, |b| b.1);
        all(self).saturating_sub(all(from))
    }

    /// The upper bound, in ms, of the histogram bucket that holds quantile
    /// `q` of the decisions answered between `from` and `self`.
    fn quantile_ms(&self, from: &Phase, q: f64) -> String {
        let counts: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|&(le, n)| (le, n.saturating_sub(from.buckets.iter().find(|b| b.0 == le).map_or(0, |b| b.1))))
            .collect();
        let Some(&(_, all)) = counts.last() else { return "?".into() };
        match counts.iter().find(|(_, n)| *n as f64 >= q * all as f64) {
            Some((le, _)) if le.is_finite() => format!("≤ {:.2}", le * 1e3),
            _ => format!("> {:.2}", counts.iter().rev().nth(1).map_or(0.0, |b| b.0 * 1e3)),
        }
    }

    /// One line: the server's own p50/p99, and per request each process's
    /// CPU and wait for a core, and the machine's busy share.
    fn since(&self, from: &Phase, requests: u64) -> String {
        let n = requests.max(1) as f64;
        let per = |i: usize| match (self.procs[i], from.procs[i]) {
            (Some((cpu, wait)), Some((cpu0, wait0))) => {
                format!("{:.1} / {:.1} µs", (cpu - cpu0) / n, (wait - wait0) / n)
            }
            _ => "n/a (not on this machine)".to_owned(),
        };
        let [server, own, redis] = [per(0), per(1), per(2)];
        let total = self.machine.1.saturating_sub(from.machine.1).max(1) as f64;
        let handler = if self.decided_since(from) > 0 {
            format!(
                "the server's own p50 {} ms, p99 {} ms; ",
                self.quantile_ms(from, 0.5),
                self.quantile_ms(from, 0.99)
            )
        } else {
            String::new()
        };
        format!(
            "{handler}per request, CPU / wait for a core: server {server}, load generator {own}, Redis {redis}; machine {:.0}% busy",
            100.0 * self.machine.0.saturating_sub(from.machine.0) as f64 / total
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

struct Load {
    /// Pre-serialised event bodies, used in order.
    bodies: Arc<Vec<String>>,
    next: AtomicUsize,
    base: String,
}

#[derive(Default)]
struct Outcome {
    latency: Option<Histogram<u64>>,
    ok: u64,
    errors: u64,
}

async fn one(client: &reqwest::Client, load: &Load, path: &str, signed: bool) -> bool {
    let req = if signed {
        let i = load.next.fetch_add(1, Ordering::Relaxed) % load.bodies.len();
        let body = load.bodies[i].clone();
        let sig = vigil_api::auth::sign("checkout", SECRET.as_bytes(), now_ms(), "POST", path, body.as_bytes());
        client.post(format!("{}{path}", load.base)).header("vigil-signature", sig).body(body)
    } else {
        client.get(format!("{}{path}", load.base))
    };
    match req.send().await {
        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
        _ => false,
    }
}

/// Open loop at `rate` requests per second for `seconds`.
async fn fixed_rate(
    client: &reqwest::Client,
    load: Arc<Load>,
    path: &'static str,
    signed: bool,
    rate: f64,
    seconds: f64,
    workers: usize,
) -> Outcome {
    let total = (rate * seconds) as usize;
    let slot = Arc::new(AtomicUsize::new(0));
    let out = Arc::new(Mutex::new(Outcome { latency: Some(Histogram::new(3).unwrap()), ..Outcome::default() }));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, load, slot, out) = (client.clone(), load.clone(), slot.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            let (mut ok, mut errors) = (0, 0);
            loop {
                let i = slot.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                // A worker still busy with earlier requests when this one fell
                // due counts from `due`: the server's backlog shows (no
                // coordinated omission). A worker that waited counts from when
                // its timer woke it: tokio's timer wakes on millisecond ticks,
                // up to a millisecond after `due`, and that lag is the load
                // generator's, not the server's.
                let behind = tokio::time::Instant::now() >= due;
                tokio::time::sleep_until(due).await;
                let from = if behind { due } else { tokio::time::Instant::now() };
                if one(&client, &load, path, signed).await {
                    ok += 1;
                } else {
                    errors += 1;
                }
                hist.record(from.elapsed().as_micros() as u64).unwrap();
            }
            let mut o = out.lock().await;
            o.latency.as_mut().unwrap().add(&hist).unwrap();
            o.ok += ok;
            o.errors += errors;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(out).ok().unwrap().into_inner()
}

/// Closed loop: `connections` senders for `seconds`; returns (answered requests/s, errors, latency, requests sent).
async fn saturate(
    client: &reqwest::Client,
    load: Arc<Load>,
    path: &'static str,
    signed: bool,
    seconds: f64,
    connections: usize,
) -> (f64, u64, Histogram<u64>, u64) {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..connections {
        let (client, load) = (client.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < end {
                let t = Instant::now();
                if one(&client, &load, path, signed).await {
                    ok += 1;
                } else {
                    errors += 1;
                }
                hist.record(t.elapsed().as_micros() as u64).unwrap();
            }
            (ok, errors, hist)
        }));
    }
    let (mut ok, mut errors, mut hist) = (0, 0, Histogram::<u64>::new(3).unwrap());
    for t in tasks {
        let (o, e, h) = t.await.unwrap();
        ok += o;
        errors += e;
        hist.add(&h).unwrap();
    }
    (ok as f64 / started.elapsed().as_secs_f64(), errors, hist, ok + errors)
}

fn q(h: &Histogram<u64>, p: f64) -> String {
    format!("{:.2}", h.value_at_quantile(p) as f64 / 1000.0)
}

fn row(load: &str, rate: f64, errors: u64, h: &Histogram<u64>) {
    println!(
        "{:<34} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8}",
        load,
        rate,
        errors,
        q(h, 0.5),
        q(h, 0.99),
        q(h, 0.999),
        q(h, 1.0)
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` lists or smoke-runs benches: nothing to do here.
    }
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let binary = std::env::var_os("VIGIL_BENCH_BINARY")
        .map_or_else(|| root.join("target/release/vigil"), std::path::PathBuf::from);
    assert!(binary.exists(), "build the server first: cargo build --release (or name one in VIGIL_BENCH_BINARY)");
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let audit = std::env::var("VIGIL_BENCH_AUDIT").map_or(true, |v| v != "0");
    let modes: Vec<String> = std::env::var("VIGIL_BENCH_MODES")
        .unwrap_or_else(|_| "shared,owned".into())
        .split(',')
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    let rates: Vec<f64> = std::env::var("VIGIL_BENCH_RATES")
        .unwrap_or_else(|_| "2000,10000,20000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    // The trivial route at fixed rates as well (default: the same rates; empty for none).
    let healthz_rates: Vec<f64> = std::env::var("VIGIL_BENCH_HEALTHZ_RATES")
        .map_or_else(|_| rates.clone(), |v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect());
    let seconds: f64 = env_or("VIGIL_BENCH_SECONDS", 5.0);
    let connections: usize = env_or("VIGIL_BENCH_CONNECTIONS", 64);
    let needed = ((rates.iter().sum::<f64>() + 60_000.0) * seconds * 1.2) as usize * modes.len();
    let gen = GenConfig { seed: 11, events: needed.min(4_000_000), ..GenConfig::default() };
    let bodies: Arc<Vec<String>> = vigil_gen::generate(&gen)
        .into_iter()
        .map(|l| {
            let mut e = l.event;
            e.transaction_id = format!("{tag}-{}", e.transaction_id);
            String::from_utf8(e.to_json()).unwrap()
        })
        .collect::<Vec<_>>()
        .into();
    let mut load: Option<Arc<Load>> = None;
    for mode in &modes {
        // A client of its own: no pooled connection to the last server.
        let client = reqwest::Client::builder().pool_max_idle_per_host(4096).build().unwrap();
        let mut pipeline = common::TestPipeline::shipped("local.toml")
            .set("kafka.decisions_topic", format!("bench-api-out-{tag}"))
            .set("store.key_prefix", format!("bench-api-{tag}-{mode}"))
            .set("api.max_concurrency", 4096)
            .set("api.listen", format!("127.0.0.1:{port}"));
        // `owned-flagged`: that store mode with `[decision] features = "flagged"`.
        let store_mode = match mode.strip_suffix("-flagged") {
            Some(store_mode) => {
                pipeline = pipeline.set("decision.features", "flagged");
                store_mode
            }
            None => mode.as_str(),
        };
        if store_mode != "shared" {
            pipeline = pipeline.add("store.mode", store_mode);
        }
        if !audit {
            // No [kafka]: decisions are not published (measures the API without the broker's CPU).
            pipeline = pipeline.without("kafka");
        }
        let text = pipeline.text();
        let file = root.join(format!("pipelines/.bench-api-{tag}.toml"));
        std::fs::write(&file, &text).unwrap();
        let config = PipelineConfig::parse(&file, &text).unwrap();
        if let Some(kafka) = &config.kafka {
            vigil_kafka::create_topics(kafka, 4).await.unwrap();
        }
        let server = Server(
            Command::new(&binary)
                .args(["serve", "--pipeline"])
                .arg(&file)
                .env("VIGIL_CHECKOUT_SECRET", SECRET)
                .env("VIGIL_LOG", std::env::var("VIGIL_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let base = format!("http://127.0.0.1:{port}");
        let ready = Instant::now();
        while client.get(format!("{base}/readyz")).send().await.map(|r| r.status().is_success()).ok() != Some(true) {
            assert!(ready.elapsed() < Duration::from_secs(20), "the server did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = std::fs::remove_file(&file);
        // Each server gets new payments: the bodies carry on from the last mode's.
        let next = load.as_ref().map_or(0, |l| l.next.load(Ordering::Relaxed));
        let l = Arc::new(Load { bodies: bodies.clone(), next: AtomicUsize::new(next), base });
        load = Some(l.clone());
        run_one(&client, l, mode, audit, &rates, &healthz_rates, seconds, connections, server.0.id()).await;
        drop(server);
        common::clean_redis(&config.store.key_prefix).await;
    }
}

/// The fixed rates and saturation against one server.
#[allow(clippy::too_many_arguments)]
async fn run_one(
    client: &reqwest::Client,
    load: Arc<Load>,
    mode: &str,
    audit: bool,
    rates: &[f64],
    healthz_rates: &[f64],
    seconds: f64,
    connections: usize,
    pid: u32,
) {
    // Warm up connections and the server.
    let _ = fixed_rate(client, load.clone(), "/v1/decisions", true, 1000.0, 1.0, 16).await;

    println!(
        "vigil serve, pipeline local (22 Redis features, store mode {mode}, shipped rules and model, {})",
        if audit { "Kafka audit" } else { "no Kafka audit" }
    );
    println!("{:<34} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}", "load", "req/s", "errors", "p50 ms", "p99", "p99.9", "max");
    let me = std::process::id();
    let redis = common::redis_pid().await;
    // Decisions at fixed rates, then the trivial route at fixed rates too: the
    // latency this machine, the load generator and the HTTP stack give with
    // next to no work behind them.
    let phases = rates
        .iter()
        .map(|&r| ("decisions", "/v1/decisions", true, r))
        .chain(healthz_rates.iter().map(|&r| ("/healthz", "/healthz", false, r)));
    for (label, path, signed, rate) in phases {
        let pids = [Some(pid), Some(me), redis];
        let before = Phase::take(client, &load.base, pids).await;
        let t = Instant::now();
        let o = fixed_rate(client, load.clone(), path, signed, rate, seconds, connections).await;
        let h = o.latency.unwrap();
        row(&format!("{label} at {rate} req/s"), o.ok as f64 / t.elapsed().as_secs_f64(), o.errors, &h);
        let after = Phase::take(client, &load.base, pids).await;
        println!("  {}", after.since(&before, o.ok + o.errors));
    }
    let (server_cpu, redis_cpu, own_cpu) = (process_cpu_us(pid), common::redis_cpu_us().await, process_cpu_us(me));
    let (rps, errors, h, sent) = saturate(client, load.clone(), "/v1/decisions", true, seconds, connections).await;
    // Per request sent, answered or not, as for `/healthz` below.
    let decided = sent.max(1) as f64;
    let (server_cpu, redis_cpu, own_cpu) = (
        (process_cpu_us(pid) - server_cpu) / decided,
        (common::redis_cpu_us().await - redis_cpu) / decided,
        (process_cpu_us(me) - own_cpu) / decided,
    );
    row(&format!("decisions, saturation ({connections} conn)"), rps, errors, &h);
    let (healthz_server, healthz_own) = (process_cpu_us(pid), process_cpu_us(me));
    let (ceiling, errors, h, sent) = saturate(client, load.clone(), "/healthz", false, seconds, connections).await;
    let answered = sent.max(1) as f64;
    let (healthz_server, healthz_own) =
        ((process_cpu_us(pid) - healthz_server) / answered, (process_cpu_us(me) - healthz_own) / answered);
    row(&format!("/healthz, saturation ({connections} conn)"), ceiling, errors, &h);
    println!(
        "store mode {mode}: decisions at saturation / trivial route: {:.0}%; CPU per decision at saturation: server {server_cpu:.1} µs, Redis {redis_cpu:.1} µs, load generator {own_cpu:.1} µs; per /healthz: server {healthz_server:.1} µs, load generator {healthz_own:.1} µs",
        100.0 * rps / ceiling
    );
}
