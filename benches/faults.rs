//! The fault harness's long form (issue 21): 100,000 events through 3
//! `vigil run` instances, each fault alone and then all of them mixed, every
//! run judged from outside against a clean pass (`tests/common/faults.rs`).
//!
//! `cargo bench --bench faults`; `VIGIL_FAULT_SEED` (default 1),
//! `VIGIL_FAULT_EVENTS` (default 100000), `VIGIL_FAULT_RATE` (events/s,
//! default 2000) and `VIGIL_FAULT_ONLY` (run only the runs whose name contains
//! it) change it. Prints a table for benches/RESULTS.md and fails if any run
//! lost, double-counted or repeated without `replayed`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::faults::{Fault, Harness, Plan, Report};

/// A run's name, degraded policy and faults (each at its share of the feed).
type Run = (&'static str, &'static str, Vec<(f64, Fault)>);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let seed = env("VIGIL_FAULT_SEED", 1);
    let events = env("VIGIL_FAULT_EVENTS", 100_000) as usize;
    let rate = env("VIGIL_FAULT_RATE", 2_000);
    let only = std::env::var("VIGIL_FAULT_ONLY").unwrap_or_default();
    let secs = Duration::from_secs;
    let kills = |count| Fault::Kills { count, gap: (secs(1), secs(3)) };
    let runs: Vec<Run> = vec![
        ("20 kill -9", "fail", vec![(0.05, kills(20))]),
        ("Redis stopped 30 s", "fail", vec![(0.3, Fault::RedisOutage(secs(30)))]),
        ("Redis stopped 30 s", "decide", vec![(0.3, Fault::RedisOutage(secs(30)))]),
        ("Redis stopped 30 s", "review", vec![(0.3, Fault::RedisOutage(secs(30)))]),
        ("broker restart", "fail", vec![(0.4, Fault::BrokerRestart(secs(5)))]),
        ("Redis link held 10 s", "fail", vec![(0.4, Fault::LinkHold(secs(10)))]),
        ("Redis connections dropped", "fail", vec![(0.3, Fault::LinkDrop), (0.6, Fault::LinkDrop)]),
        ("Redis Cluster failover", "fail", vec![(0.3, Fault::ClusterFailover), (0.6, Fault::ClusterFailover)]),
        // The same group on the same cluster with no fault: the failover's
        // drain is read beside this one's.
        ("Redis Cluster, no fault", "fail", vec![]),
        (
            "mixed",
            "fail",
            vec![
                (0.05, kills(20)),
                (0.2, Fault::RedisOutage(secs(30))),
                (0.5, Fault::BrokerRestart(secs(5))),
                (0.7, Fault::LinkHold(secs(10))),
                (0.9, Fault::LinkDrop),
            ],
        ),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut reports: Vec<Report> = Vec::new();
    for (name, degraded, faults) in runs {
        if !only.is_empty() && !name.contains(&only) {
            continue;
        }
        let cluster = name.contains("Cluster");
        let plan = Plan {
            name: name.into(),
            seed,
            events,
            cards: (events / 10).max(100),
            instances: 3,
            partitions: 6,
            rate,
            degraded,
            cluster,
            owned: false,
            faults,
            drain_limit: Duration::from_secs(600),
        };
        eprintln!("faults: {name} ({degraded})");
        let harness = Harness::start("bench");
        let report = runtime.block_on(harness.run(&plan));
        eprintln!("{}\n{}", Report::HEADER, report.row());
        if !report.examples.is_empty() {
            eprintln!("examples: {:?}", report.examples);
        }
        reports.push(report);
    }
    println!("seed {seed}, {events} events at {rate}/s, 3 instances, 6 partitions\n\n{}", Report::HEADER);
    for r in &reports {
        println!("{}", r.row());
    }
    for r in &reports {
        r.assert_clean();
    }
}
