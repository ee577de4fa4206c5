//! `vigil train`: a model fitted on history (generated, a labelled history
//! file, or a numeric table), tested on the later part.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::ValueEnum;
use vigil_gen::GenConfig;
use vigil_model::logistic::LogisticParams;
use vigil_model::{GbdtParams, IsolationForestParams, TrainParams};
use vigil_offline::{TrainConfig, TrainReport};

use super::{load_pipeline, progress_bar, read_history, ReportFormat};

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline whose features train (not read for a table, `--features`).
    #[arg(long, default_value = "pipelines/demo.toml")]
    pipeline: PathBuf,
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Seed of the generated events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    scenarios: super::ScenarioArgs,
    /// Seed of the algorithm's own draws (the isolation forest's subsamples
    /// and splits, boosting's row and input samples), apart from the data's.
    #[arg(long, default_value_t = 42)]
    train_seed: u64,
    /// Share of the history's time span to train on; the later rest
    /// evaluates. 1 trains on every row (evaluate on a later file with
    /// `vigil evaluate`).
    #[arg(long, default_value_t = 0.7)]
    train_share: f64,
    /// `logistic` (supervised fraud probability), `gbdt` (gradient-boosted
    /// trees, supervised) or `isolation-forest` (unsupervised anomaly score;
    /// labels only evaluate it).
    #[arg(long, value_enum, default_value = "logistic")]
    algorithm: AlgorithmArg,
    /// Train on this labelled history (JSON lines, CSV or Parquet, in time
    /// order) instead of generated events.
    #[arg(long)]
    history: Option<PathBuf>,
    /// The history's fraud label column (true/false or 1/0).
    #[arg(long, default_value = "is_fraud")]
    label: String,
    /// Train on these numeric columns of a CSV history (any table with a
    /// 0/1 label, rows in time order) instead of the pipeline's features.
    #[arg(long, value_delimiter = ',', requires = "history")]
    features: Vec<String>,
    /// Train on the events (or rows) before this time and evaluate on the
    /// rest, instead of `--train-share` (RFC 3339, or a date: 2026-03-01).
    #[arg(long)]
    before: Option<String>,
    /// With `--features` and `--before`: the table's time column (RFC 3339,
    /// a date, or seconds since 1970).
    #[arg(long, default_value = "timestamp")]
    time_column: String,
    /// With `--history`: only the events for which this SQL predicate holds
    /// train and test (run by DataFusion over the history's fields,
    /// attributes and label, as in `channel = 'ecom' AND amount > 100`; text in
    /// single quotes); every event still counts in the features of later ones.
    #[arg(long = "where", value_name = "PREDICATE")]
    filter: Option<String>,
    /// Logistic regression: only standardise the inputs (format 1 model
    /// files), instead of also compressing the never-negative ones with a
    /// logarithm and flagging missing ones with indicator columns.
    #[arg(long)]
    plain_inputs: bool,
    /// Logistic regression: most solver (L-BFGS) iterations.
    #[arg(long, default_value_t = 200)]
    max_iterations: u64,
    /// Logistic regression: the solver stops once the gradient's norm is below this.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// Logistic regression: frauds are repeated in the training rows up to
    /// about this share of them (0 keeps the history's own share). Repeating
    /// a row k times is weighting it by k: linfa-logistic 0.8 takes no sample
    /// weights.
    #[arg(long, default_value_t = 0.2)]
    fraud_share: f64,
    /// Isolation forest and gradient-boosted trees: number of trees (100 for
    /// a forest, 300 for boosting).
    #[arg(long)]
    trees: Option<usize>,
    /// Isolation forest: rows drawn to grow each tree.
    #[arg(long, default_value_t = 256)]
    sample_size: usize,
    #[command(flatten)]
    gbdt: GbdtArgs,
    /// Where to write the model; `models/card-fraud.json` for a logistic
    /// regression, `models/card-fraud-gbdt.json` for boosted trees,
    /// `models/card-anomaly.json` for an isolation forest, unless that file
    /// exists (name it here to replace it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The summary as a line of text or as JSON.
    #[arg(long, value_enum, default_value = "table")]
    format: ReportFormat,
}

/// Gradient-boosted trees' hyperparameters (`vigil_gbdt::GbdtParams`); each
/// defaults to the library's.
#[derive(clap::Args)]
struct GbdtArgs {
    /// Gradient-boosted trees: the learning rate (shrinkage), 0.05 by default.
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Gradient-boosted trees: most leaves per tree, 31 by default.
    #[arg(long)]
    leaves: Option<usize>,
    /// Gradient-boosted trees: most levels per tree (0: no limit, the default).
    #[arg(long)]
    max_depth: Option<usize>,
    /// Gradient-boosted trees: fewest rows in a leaf, 20 by default.
    #[arg(long)]
    min_data_in_leaf: Option<usize>,
    /// Gradient-boosted trees: least hessian (weight) in a leaf, 0.001 by default.
    #[arg(long)]
    min_child_weight: Option<f64>,
    /// Gradient-boosted trees: L2 regularisation of leaf values, 10 by default.
    #[arg(long)]
    l2: Option<f64>,
    /// Gradient-boosted trees: share of rows drawn for each tree, 1 by default.
    #[arg(long)]
    row_subsample: Option<f64>,
    /// Gradient-boosted trees: share of inputs drawn for each tree, 1 by default.
    #[arg(long)]
    col_subsample: Option<f64>,
    /// Gradient-boosted trees: bins per input (4 to 255), 255 by default.
    #[arg(long)]
    max_bins: Option<usize>,
    /// Gradient-boosted trees: weight of a fraud against a genuine row, 1 by default.
    #[arg(long)]
    scale_pos_weight: Option<f64>,
    /// Gradient-boosted trees: share of the newest training rows kept apart to
    /// stop boosting early, 0.1 by default.
    #[arg(long)]
    validation_share: Option<f64>,
    /// Gradient-boosted trees: stop after this many rounds without a better
    /// validation loss (0: never stop early), 50 by default.
    #[arg(long)]
    early_stopping: Option<usize>,
}

impl GbdtArgs {
    fn params(&self, trees: Option<usize>, seed: u64) -> GbdtParams {
        let mut p = GbdtParams::new().seed(seed);
        macro_rules! set {
            ($($flag:expr => $setter:ident),*) => { $(if let Some(v) = $flag { p = p.$setter(v); })* };
        }
        set!(trees => n_trees, self.learning_rate => learning_rate, self.leaves => max_leaves,
            self.max_depth => max_depth, self.min_data_in_leaf => min_data_in_leaf,
            self.min_child_weight => min_child_weight, self.l2 => lambda, self.row_subsample => row_subsample,
            self.col_subsample => col_subsample, self.max_bins => max_bins,
            self.scale_pos_weight => scale_pos_weight, self.validation_share => validation_share,
            self.early_stopping => early_stopping_rounds);
        p
    }
}

/// The algorithms `vigil train` fits (`vigil_model`'s registry).
#[derive(Clone, Copy, ValueEnum)]
enum AlgorithmArg {
    Logistic,
    Gbdt,
    IsolationForest,
}

impl AlgorithmArg {
    /// The algorithm's parameters from the flags, the model's name and its
    /// default file.
    fn params(self, a: &Args) -> (TrainParams, &'static str, &'static str) {
        match self {
            AlgorithmArg::Logistic => (
                TrainParams::Logistic(LogisticParams {
                    max_iterations: a.max_iterations,
                    gradient_tolerance: a.tolerance,
                    plain_inputs: a.plain_inputs,
                    fraud_share_target: a.fraud_share,
                    ..LogisticParams::default()
                }),
                "card-fraud-logistic",
                "models/card-fraud.json",
            ),
            AlgorithmArg::Gbdt => (
                TrainParams::GradientBoostedTrees(a.gbdt.params(a.trees, a.train_seed)),
                "card-fraud-gbdt",
                "models/card-fraud-gbdt.json",
            ),
            AlgorithmArg::IsolationForest => (
                TrainParams::IsolationForest(
                    IsolationForestParams::new()
                        .n_trees(a.trees.unwrap_or(100))
                        .sample_size(a.sample_size)
                        .seed(a.train_seed),
                ),
                "card-anomaly-iforest",
                "models/card-anomaly.json",
            ),
        }
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if !(0.05..=1.0).contains(&a.train_share) {
        bail!("--train-share must be between 0.05 and 1 (1: train on every row, then `vigil evaluate` a later file)");
    }
    if !(0.0..=0.5).contains(&a.fraud_share) {
        bail!("--fraud-share must be between 0 (the history's own share) and 0.5");
    }
    if !(a.tolerance.is_finite() && a.tolerance > 0.0) {
        bail!("--tolerance must be a positive number");
    }
    let split_before = a.before.as_deref().map(parse_date).transpose()?;
    let (bar, progress) = progress_bar();
    let (params, name, default_out) = a.algorithm.params(&a);
    let out = match &a.out {
        Some(out) => out.clone(),
        // The default file is the shipped model: replacing it takes saying so.
        None if Path::new(default_out).exists() => bail!(
            "{default_out} exists (the shipped model): give --out FILE to write the new model elsewhere, or \
             --out {default_out} to replace it"
        ),
        None => PathBuf::from(default_out),
    };
    let train = TrainConfig {
        name: name.into(),
        data: GenConfig { seed: a.seed, events: a.events, hard: a.scenarios.hard(), ..GenConfig::default() },
        train_share: a.train_share,
        split_before,
        params,
        progress,
    };
    if a.filter.is_some() && (a.history.is_none() || !a.features.is_empty()) {
        bail!("--where chooses events of a history: give --history, without --features");
    }
    let report = fit(&a, &train).await?;
    bar.finish_and_clear();
    std::fs::write(&out, report.model.to_file_json()).with_context(|| format!("cannot write {}", out.display()))?;
    print(&report, &out, a.format)
}

/// Trains on what the flags name: a table, a history file, or generated events.
/// A table's columns are the inputs, so only the other two read the pipeline.
async fn fit(a: &Args, train: &TrainConfig) -> anyhow::Result<TrainReport> {
    Ok(match &a.history {
        Some(path) if !a.features.is_empty() => {
            let time = train.split_before.is_some().then_some(a.time_column.as_str());
            let table = vigil_offline::tabular::read_csv_timed(path, &a.features, &a.label, time)?;
            eprintln!(
                "training on {} rows of {} with {} columns...",
                table.rows.len(),
                path.display(),
                a.features.len()
            );
            vigil_offline::tabular::train(&table, path, train)?
        }
        Some(path) => {
            let config = load_pipeline(&a.pipeline)?;
            let h = read_history(path, &a.label, a.filter.as_deref()).await?;
            eprintln!(
                "training on {} events of {} with {} features...",
                h.selected_count(),
                path.display(),
                config.features.len()
            );
            vigil_offline::train_on_history(&config.features, &h, path, train)?
        }
        None => {
            let config = load_pipeline(&a.pipeline)?;
            eprintln!(
                "training on {} generated events (seed {}) with {} features...",
                a.events,
                a.seed,
                config.features.len()
            );
            vigil_offline::train_on_generated(&config.features, train)?
        }
    })
}

fn print(report: &TrainReport, out: &Path, format: ReportFormat) -> anyhow::Result<()> {
    let version = vigil_model::Model::version(&report.model);
    match format {
        ReportFormat::Table => match (report.auc_roc, report.average_precision) {
            (Some(auc), Some(ap)) => println!(
                "wrote {} ({version}): trained on {} rows in {:.1} s, tested on the later {} ({} frauds): AUC-ROC {auc:.3}, average precision {ap:.3}",
                out.display(),
                report.train_events,
                report.fit_seconds,
                report.test_events,
                report.test_frauds,
            ),
            _ => println!(
                "wrote {} ({version}): trained on all {} rows in {:.1} s, none held back: evaluate it on a later history with `vigil evaluate --model {}`",
                out.display(),
                report.train_events,
                report.fit_seconds,
                out.display(),
            ),
        },
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "out": out.display().to_string(),
                "model_version": version,
                "train_rows": report.train_events,
                "test_rows": report.test_events,
                "test_frauds": report.test_frauds,
                "auc_roc": report.auc_roc,
                "average_precision": report.average_precision,
                "fit_seconds": report.fit_seconds,
            }))?
        ),
    }
    Ok(())
}

/// A date for `--before`: RFC 3339, a calendar day (midnight UTC), or seconds since 1970.
fn parse_date(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    vigil_offline::tabular::parse_time(text)
        .with_context(|| format!("`{text}` is neither RFC 3339 nor a date like 2026-03-01"))
}
