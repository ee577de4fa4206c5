//! `vigil evaluate`: a model file's ranking figures and decision mix on labelled history.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use vigil_engine::Engine;

use super::{load_pipeline, progress_bar, read_history, ReportFormat};

#[derive(clap::Args)]
pub struct Args {
    /// The model file to evaluate (as `vigil train` writes it).
    #[arg(long)]
    model: PathBuf,
    /// History: JSON lines, CSV or Parquet, in time order, with a label column.
    #[arg(long)]
    history: PathBuf,
    #[arg(long, default_value = "is_fraud")]
    label: String,
    /// Pipeline whose features, rules and thresholds decide with the model.
    #[arg(long, default_value = "pipelines/demo.toml")]
    pipeline: PathBuf,
    #[arg(long, value_enum, default_value = "table")]
    format: ReportFormat,
    /// Also write every scored event's score and label to this CSV file (in
    /// history mode with its transaction, time and card), for outside tools.
    #[arg(long)]
    scores: Option<PathBuf>,
    /// Also write the pictures into this folder: ROC and precision-recall
    /// curves and score histograms (SVG), with an `index.html` showing them.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The history is a CSV table whose columns are the model's inputs (as
    /// `vigil features` writes): score its rows as they are, without
    /// computing features. Implied when the model takes inputs the
    /// pipeline does not declare.
    #[arg(long)]
    table: bool,
    /// Only the events for which this SQL predicate holds are scored (run by
    /// DataFusion over the history's fields, attributes and label, as in
    /// `channel = 'ecom' AND amount > 100`; text in single quotes); every
    /// event still counts in the features of later ones.
    #[arg(long = "where", value_name = "PREDICATE")]
    filter: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let mut config = load_pipeline(&a.pipeline)?;
    // A model over columns the pipeline does not declare was trained on
    // a table (`train --features`): score that table's rows directly.
    let any = vigil_model::load_any(&a.model)?;
    let declared = vigil_engine::model_inputs(&config.features);
    if a.table || any.body().inputs.iter().any(|i| !declared.contains(&i.as_str())) {
        if a.filter.is_some() {
            bail!("--where chooses events of a history, not rows of a feature table");
        }
        let table = vigil_offline::tabular::read_csv(&a.history, &any.body().inputs, &a.label)?;
        let evaluation = vigil_offline::evaluate::run_table(&any, &table)?;
        return print(&evaluation, a.format, a.report.as_deref(), a.scores.as_deref());
    }
    let weight = config.model.as_ref().map_or(100.0, |m| m.weight);
    config.model = Some(vigil_core::pipeline::ModelConfig { path: a.model, weight, challenger: None });
    let engine = Engine::in_memory(&config)?;
    let h = read_history(&a.history, &a.label, a.filter.as_deref()).await?;
    let (bar, progress) = progress_bar();
    let evaluation = vigil_offline::evaluate::run(&engine, &h, &progress).await;
    bar.finish_and_clear();
    print(&evaluation?, a.format, a.report.as_deref(), a.scores.as_deref())
}

fn print(
    eval: &vigil_offline::evaluate::Evaluation,
    format: ReportFormat,
    report: Option<&Path>,
    scores: Option<&Path>,
) -> anyhow::Result<()> {
    match format {
        ReportFormat::Table => print!("{}", eval.to_table()),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(eval)?),
    }
    if let Some(path) = scores {
        let file = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        eval.write_scores(std::io::BufWriter::new(file))?;
        eprintln!("scores: {}", path.display());
    }
    if let Some(dir) = report {
        let written = vigil_offline::report::write(eval, dir)?;
        eprintln!("report: {}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    Ok(())
}
