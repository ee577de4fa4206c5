//! `vigil demo`: the whole decision path with no server, on generated traffic.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use vigil_core::{Action, Decision, Event, PipelineConfig};
use vigil_engine::{Engine, Options};
use vigil_gen::{GenConfig, Labelled, Scenario};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "pipelines/demo.toml")]
    pipeline: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write the decisions (JSON lines).
    #[arg(long, default_value = "vigil-demo-decisions.jsonl")]
    out: PathBuf,
    #[command(flatten)]
    scenarios: super::ScenarioArgs,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let config = super::load_pipeline(&a.pipeline)?;
    let gen = GenConfig { seed: a.seed, events: a.events, hard: a.scenarios.hard(), ..GenConfig::default() };
    let summary = decide_generated(&config, &gen, &a.out, 500).await?;
    summary.print(&mut std::io::stdout().lock(), &a.out)?;
    Ok(())
}

/// What the demo measured, for the summary and for tests.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: usize,
    pub by_action: BTreeMap<Action, usize>,
    pub frauds: usize,
    /// Frauds sent to review or declined.
    pub frauds_caught: usize,
    pub by_scenario: BTreeMap<&'static str, (usize, usize)>,
    /// Genuine payments sent to review or declined.
    pub genuine_flagged: usize,
    pub seconds: f64,
}

impl Summary {
    pub fn print(&self, out: &mut impl Write, decisions_path: &Path) -> std::io::Result<()> {
        let pct = |a: usize, b: usize| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
        writeln!(
            out,
            "Vigil demo: {} generated payments decided in {:.2} s ({:.0} events/s)",
            self.events,
            self.seconds,
            self.events as f64 / self.seconds.max(1e-9)
        )?;
        writeln!(out)?;
        writeln!(out, "decisions")?;
        for a in Action::ALL {
            let n = self.by_action.get(&a).copied().unwrap_or(0);
            writeln!(out, "  {:<8} {:>9}  {:>6.2}%", a.as_str(), n, pct(n, self.events))?;
        }
        writeln!(out)?;
        writeln!(out, "labelled fraud caught (review or decline)")?;
        for (name, (n, caught)) in &self.by_scenario {
            writeln!(out, "  {:<22} {:>6} of {:>6}  {:>6.2}%", name, caught, n, pct(*caught, *n))?;
        }
        writeln!(
            out,
            "  {:<22} {:>6} of {:>6}  {:>6.2}%",
            "all fraud",
            self.frauds_caught,
            self.frauds,
            pct(self.frauds_caught, self.frauds)
        )?;
        let genuine = self.events - self.frauds;
        writeln!(
            out,
            "  genuine payments flagged: {} of {} ({:.2}%)",
            self.genuine_flagged,
            genuine,
            pct(self.genuine_flagged, genuine)
        )?;
        writeln!(out)?;
        writeln!(out, "decisions written to {}", decisions_path.display())
    }
}

/// Generates traffic and decides it with the pipeline's engine, in batches.
pub async fn decide_generated(
    config: &PipelineConfig,
    gen: &GenConfig,
    out: &Path,
    batch: usize,
) -> anyhow::Result<Summary> {
    let engine = Engine::connect(config).await.context("cannot build the engine")?;
    let items = vigil_gen::generate(gen);
    let file = std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let mut summary = Summary { events: items.len(), ..Summary::default() };
    for s in Scenario::ALL.iter().filter(|s| gen.hard || !s.hard()) {
        summary.by_scenario.insert(s.name(), (0, 0));
    }
    // Frauds are confirmed some time after they happen (an analyst within a
    // day, a chargeback within weeks); the label features learn of them then.
    let labels = vigil_gen::labels(&items);
    let label_refs: Vec<&vigil_core::Label> = labels.iter().collect();
    let events: Vec<&Event> = items.iter().map(|l| &l.event).collect();
    let started = Instant::now();
    for step in vigil_features::interleave(&events, &label_refs, batch) {
        match step {
            vigil_features::Step::Labels(r) => {
                engine.record_labels(&label_refs[r]).await?;
            }
            vigil_features::Step::Events(r) => {
                let decisions = engine.decide(&events[r.clone()], Options::online()).await?;
                for (l, d) in items[r].iter().zip(&decisions) {
                    tally(&mut summary, l, d);
                    writer.write_all(&d.to_json())?;
                    writer.write_all(b"\n")?;
                }
            }
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    writer.flush()?;
    Ok(summary)
}

fn tally(s: &mut Summary, l: &Labelled, d: &Decision) {
    *s.by_action.entry(d.decision).or_default() += 1;
    let flagged = d.decision != Action::Approve;
    match l.fraud {
        Some(scenario) => {
            s.frauds += 1;
            let e = s.by_scenario.entry(scenario.name()).or_default();
            e.0 += 1;
            if flagged {
                e.1 += 1;
                s.frauds_caught += 1;
            }
        }
        None if flagged => s.genuine_flagged += 1,
        None => {}
    }
}
