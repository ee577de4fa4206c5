//! `vigil backtest`: a rule set replayed over labelled history, against a baseline.

use std::path::{Path, PathBuf};

use vigil_engine::Engine;

use super::{load_pipeline, progress_bar, read_history, ReportFormat};

#[derive(clap::Args)]
pub struct Args {
    /// Rule file or folder to test.
    #[arg(long)]
    rules: PathBuf,
    /// History: JSON lines (.jsonl), CSV (.csv) or Parquet (.parquet), in time order.
    #[arg(long)]
    history: PathBuf,
    /// Rule file or folder to compare with.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Pipeline whose features, thresholds and model the replay uses.
    #[arg(long, default_value = "pipelines/demo.toml")]
    pipeline: PathBuf,
    /// Column holding the fraud label.
    #[arg(long, default_value = "is_fraud")]
    label: String,
    #[arg(long, value_enum, default_value = "table")]
    format: ReportFormat,
    /// Only the events for which this SQL predicate holds are reported on
    /// (run by DataFusion over the history's fields, attributes and label, as
    /// in `channel = 'ecom' AND amount > 100`; text in single quotes); every
    /// event still counts in the features of later ones.
    #[arg(long = "where", value_name = "PREDICATE")]
    filter: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let config = load_pipeline(&a.pipeline)?;
    let engine_for = |path: &Path| -> anyhow::Result<Engine> {
        let mut c = config.clone();
        c.rules_path = path.to_path_buf();
        Ok(Engine::in_memory(&c)?)
    };
    let candidate = engine_for(&a.rules)?;
    let base = a.baseline.as_deref().map(engine_for).transpose()?;
    let started = std::time::Instant::now();
    let h = read_history(&a.history, &a.label, a.filter.as_deref()).await?;
    let (bar, progress) = progress_bar();
    let total = h.events.len() as u64;
    let report =
        vigil_offline::backtest::run(&candidate, base.as_ref(), &h, |n| progress.report("backtest", n, total)).await;
    bar.finish_and_clear();
    let mut report = report?;
    report.pipeline = Some(a.pipeline.display().to_string());
    if let Some(why) = &report.unlabelled {
        eprintln!("warning: {why}");
    }
    match a.format {
        ReportFormat::Table => {
            print!("{}", report.to_table());
            eprintln!("({:.1} s)", started.elapsed().as_secs_f64());
        }
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}
