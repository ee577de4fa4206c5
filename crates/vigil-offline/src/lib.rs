//! Vigil's offline tools, beside the live entry points: they compute features over
//! history with the very code the stream uses (the in-memory feature store), so
//! training and serving cannot drift apart; they decide through the engine's
//! one path with those features ([`backtest`], [`evaluate`]); and they train
//! the model algorithms of `vigil-model` on history, split by time (train on the
//! earlier days, evaluate on the later ones).

pub mod backtest;
pub mod columnar;
pub mod evaluate;
pub mod history;
pub mod ranking;
pub mod report;
pub mod select;
pub mod tabular;

use vigil_core::feature::FeatureDef;
use vigil_core::{Event, FeatureVector, Label};
use vigil_engine::InputMap;
use vigil_features::{MemoryStore, Plan, Step};
use vigil_gen::{GenConfig, Labelled};
use vigil_model::{FitError, Model, ModelBody, Rows, TrainParams, TrainedModel, FORMAT};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("feature computation failed: {0}")]
    Features(#[from] vigil_features::FeatureError),
    #[error("training failed: {0}")]
    Fit(String),
    #[error("bad training data: {0}")]
    Data(String),
    /// A `--where` predicate that does not run, or chooses nothing.
    #[error("--where `{predicate}`: {reason}")]
    Where { predicate: String, reason: String },
    /// A history without the labels the command needs.
    #[error("{0}")]
    NoLabels(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("report: {0}")]
    Report(String),
    #[error(transparent)]
    Engine(#[from] vigil_engine::EngineError),
}

/// Reports a long offline step as it goes (the CLI draws a progress bar from
/// it): the step's name, the work done so far and the work in all (0 when the
/// step cannot tell, such as a solver's fit).
#[derive(Clone, Default)]
pub struct Progress(Option<std::sync::Arc<ReportFn>>);

/// Called with a step's name, the work done and the work in all.
type ReportFn = dyn Fn(&'static str, u64, u64) + Send + Sync;

impl Progress {
    pub fn new(report: impl Fn(&'static str, u64, u64) + Send + Sync + 'static) -> Progress {
        Progress(Some(std::sync::Arc::new(report)))
    }

    pub fn report(&self, step: &'static str, done: u64, total: u64) {
        if let Some(f) = &self.0 {
            f(step, done, total);
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Progress(reporting)" } else { "Progress(quiet)" })
    }
}

/// Features of every event as of before it, in history order, with the fraud
/// labels (sorted by report time) applied as they became known: what the live
/// stream computes for the same events and labels in the same order.
pub fn features_over_history(
    defs: &[FeatureDef],
    events: &[&Event],
    labels: &[&Label],
) -> Result<Vec<FeatureVector>, OfflineError> {
    features_over_history_with(defs, events, labels, &Progress::default())
}

/// As [`features_over_history`], reporting the events done as step `features`.
pub fn features_over_history_with(
    defs: &[FeatureDef],
    events: &[&Event],
    labels: &[&Label],
    progress: &Progress,
) -> Result<Vec<FeatureVector>, OfflineError> {
    // A long de-duplication TTL: history may span months of event time.
    let store = MemoryStore::new(Plan::new(defs.to_vec()), 365 * 86_400);
    let mut out = Vec::with_capacity(events.len());
    let total = events.len() as u64;
    progress.report("features", 0, total);
    for step in vigil_features::interleave(events, labels, 1000) {
        match step {
            Step::Events(r) => {
                out.extend(store.process_sync(&events[r])?);
                progress.report("features", out.len() as u64, total);
            }
            Step::Labels(r) => {
                store.apply_labels_sync(&labels[r])?;
            }
        }
    }
    Ok(out)
}

/// Training parameters.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub name: String,
    pub data: GenConfig,
    /// Share of the history's time span used for training; the rest
    /// evaluates. 1 trains on every row and evaluates nothing.
    pub train_share: f64,
    /// Train on events before this time, evaluate on the rest (instead of
    /// `train_share`).
    pub split_before: Option<chrono::DateTime<chrono::Utc>>,
    /// The algorithm and its parameters (its own seed among them, where it draws).
    pub params: TrainParams,
    /// Where long steps (features, fit) report how far they are.
    pub progress: Progress,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            name: "card-fraud-logistic".into(),
            data: GenConfig::default(),
            train_share: 0.7,
            split_before: None,
            params: TrainParams::Logistic(vigil_model::logistic::LogisticParams::default()),
            progress: Progress::default(),
        }
    }
}

/// A trained model and how it did on the held-out later period.
#[derive(Debug)]
pub struct TrainReport {
    pub model: TrainedModel,
    pub train_events: usize,
    pub test_events: usize,
    pub test_frauds: usize,
    /// `None` when no rows were held back (`train_share` 1).
    pub auc_roc: Option<f64>,
    pub average_precision: Option<f64>,
    /// Wall time of the fit alone (not reading, features or scaling).
    pub fit_seconds: f64,
}

/// Area under the ROC curve (ties counted half) and average precision.
pub fn auc_and_ap(scores: &[f64], labels: &[bool]) -> (f64, f64) {
    let r = ranking::Ranking::new(scores, labels);
    (r.auc_roc(), r.average_precision())
}

/// How far out of time order a training history may be.
const LATE_S: i64 = vigil_features::state::LATENESS_S;

/// Generates labelled history, computes features, trains and evaluates.
pub fn train_on_generated(defs: &[FeatureDef], config: &TrainConfig) -> Result<TrainReport, OfflineError> {
    let items: Vec<Labelled> = vigil_gen::generate(&config.data);
    let events: Vec<&Event> = items.iter().map(|l| &l.event).collect();
    let fraud_labels = vigil_gen::labels(&items);
    let label_refs: Vec<&Label> = fraud_labels.iter().collect();
    let labels: Vec<bool> = items.iter().map(|l| l.fraud.is_some()).collect();
    let scenarios = if config.data.hard { "hard" } else { "plain" };
    let source = serde_json::json!({ "source": "vigil-gen", "seed": config.data.seed, "scenarios": scenarios });
    train_on(defs, &events, &labels, &label_refs, |_| true, source, config)
}

/// Trains on a labelled history file (JSON lines, CSV or Parquet): events
/// without a label are left out of training and evaluation but still count in
/// the features of later events; frauds with a report time feed the label
/// features from then on.
pub fn train_on_history(
    defs: &[FeatureDef],
    history: &history::History,
    path: &std::path::Path,
    config: &TrainConfig,
) -> Result<TrainReport, OfflineError> {
    if !history.labelled() {
        return Err(OfflineError::NoLabels(history.no_labels("there is nothing to train on")));
    }
    let unlabelled = (0..history.events.len()).filter(|&i| history.selected(i) && history.labels[i].is_none()).count();
    if unlabelled > 0 {
        return Err(OfflineError::Data(format!(
            "{}: {unlabelled} events have no label; give every event one (true or false)",
            path.display(),
        )));
    }
    let events: Vec<&Event> = history.events.iter().collect();
    let fraud_labels = history.fraud_labels();
    let label_refs: Vec<&Label> = fraud_labels.iter().collect();
    let labels: Vec<bool> = history.labels.iter().map(|l| *l == Some(true)).collect();
    let mut source = serde_json::json!({ "source": path.display().to_string(), "skipped_records": history.invalid });
    if let Some(s) = &history.selection {
        source["where"] = s.predicate.clone().into();
        source["selected_events"] = history.selected_count().into();
    }
    train_on(defs, &events, &labels, &label_refs, |i| history.selected(i), source, config)
}

/// Computes features over `events` (in time order), splits by time, trains
/// `config.algorithm` on the earlier part and evaluates on the later one.
/// `keep(i)`: whether event `i` trains or tests (every event counts in features).
fn train_on(
    defs: &[FeatureDef],
    events: &[&Event],
    labels: &[bool],
    fraud_labels: &[&Label],
    keep: impl Fn(usize) -> bool,
    source: serde_json::Value,
    config: &TrainConfig,
) -> Result<TrainReport, OfflineError> {
    if events.windows(2).any(|w| w[1].timestamp < w[0].timestamp - chrono::Duration::seconds(LATE_S)) {
        return Err(OfflineError::Data(format!(
            "history is not in time order (beyond {LATE_S} s of lateness): sort it by timestamp first"
        )));
    }
    let features = features_over_history_with(defs, events, fraud_labels, &config.progress)?;
    let inputs = InputMap::all(defs);
    let (mut kept, mut rows, mut kept_labels) = (Vec::new(), Vec::new(), Vec::new());
    for (i, ((e, f), l)) in events.iter().zip(&features).zip(labels).enumerate() {
        if keep(i) {
            kept.push(*e);
            rows.push(inputs.row(e, f));
            kept_labels.push(*l);
        }
    }
    let (events, labels) = (kept.as_slice(), kept_labels.as_slice());
    let (first, last) = match (events.first(), events.last()) {
        (Some(a), Some(b)) => (a.timestamp, b.timestamp),
        _ => return Err(OfflineError::Data("no events".into())),
    };
    let cut = match config.split_before {
        Some(at) => at,
        None => first + (last - first) * ((config.train_share * 1000.0) as i32) / 1000,
    };
    let split = match config.split_before {
        None if config.train_share >= 1.0 => rows.len(),
        _ => events.partition_point(|e| e.timestamp < cut),
    };
    if split == 0 || (split == rows.len() && config.train_share < 1.0) {
        return Err(OfflineError::Data(format!(
            "the time split at {} leaves no training or no test events (history from {} to {})",
            cut.to_rfc3339(),
            first.to_rfc3339(),
            last.to_rfc3339()
        )));
    }
    let input_names: Vec<String> = vigil_engine::model_inputs(defs).into_iter().map(str::to_owned).collect();
    let data = serde_json::json!({
        "from_history": source,
        "events": events.len(),
        "from": first.to_rfc3339(),
        "to": last.to_rfc3339(),
        "split_at": cut.to_rfc3339(),
    });
    fit_rows(&rows, labels, split, input_names, data, config)
}

/// Fits `config.algorithm` on `rows[..split]` (inputs named `input_names`) and
/// evaluates it on the rest, if any (`split` may be every row only with a
/// `train_share` of 1). `data` describes where the rows came from.
pub fn fit_rows(
    rows: &[Vec<f64>],
    labels: &[bool],
    split: usize,
    input_names: Vec<String>,
    mut data: serde_json::Value,
    config: &TrainConfig,
) -> Result<TrainReport, OfflineError> {
    let (n_inputs, n_train) = (input_names.len(), split);
    if n_train == 0 || split > rows.len() || (split == rows.len() && config.train_share < 1.0) {
        return Err(OfflineError::Data("the split leaves no training or no test rows".into()));
    }

    let train_frauds = labels[..split].iter().filter(|l| **l).count();
    let solving = || config.progress.report("fit", 0, 0);
    let fitting = Rows { rows: &rows[..split], labels: &labels[..split], inputs: n_inputs, solving: &solving };
    let fitted = config.params.fit(&fitting).map_err(|e| match e {
        FitError::Data(m) => OfflineError::Data(m),
        FitError::Solver(m) => OfflineError::Fit(m),
    })?;
    let body = ModelBody {
        format: FORMAT.into(),
        format_version: fitted.format_version,
        name: config.name.clone(),
        inputs: input_names,
        scaler: fitted.scaler,
        algorithm: fitted.algorithm,
        training: serde_json::Value::Null,
    };
    let draft = TrainedModel::new(body.clone()).map_err(OfflineError::Fit)?;
    let scores: Vec<f64> = rows[split..].iter().map(|r| draft.score(r)).collect();
    let (auc_roc, average_precision) = match scores.is_empty() {
        true => (None, None),
        false => {
            let (auc, ap) = auc_and_ap(&scores, &labels[split..]);
            (Some(auc), Some(ap))
        }
    };
    let test_frauds = labels[split..].iter().filter(|l| **l).count();
    if let Some(d) = data.as_object_mut() {
        d.insert("train_rows".into(), n_train.into());
        d.insert("train_frauds".into(), train_frauds.into());
        d.insert("test_rows".into(), (rows.len() - split).into());
        d.insert("test_frauds".into(), test_frauds.into());
    }
    let training = serde_json::json!({
        "library": fitted.library,
        "data": data,
        "hyperparameters": fitted.hyperparameters,
        "test_metrics": auc_roc.map(|auc| serde_json::json!({ "auc_roc": auc, "average_precision": average_precision })),
    });
    let model = TrainedModel::new(ModelBody { training, ..body }).map_err(OfflineError::Fit)?;
    Ok(TrainReport {
        model,
        train_events: n_train,
        test_events: rows.len() - split,
        test_frauds,
        auc_roc,
        average_precision,
        fit_seconds: fitted.fit_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_average_precision() {
        let (auc, ap) = auc_and_ap(&[0.9, 0.8, 0.7, 0.1], &[true, false, true, false]);
        assert!((auc - 0.75).abs() < 1e-12);
        assert!((ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        let (auc, _) = auc_and_ap(&[0.5, 0.5], &[true, false]);
        assert!((auc - 0.5).abs() < 1e-12);
    }

    #[test]
    fn trains_a_model_that_beats_chance_on_later_days() {
        let defs = vigil_core::PipelineConfig::load(
            &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/demo.toml"),
        )
        .unwrap()
        .features;
        let config = TrainConfig {
            data: GenConfig { events: 20_000, cards: 1_000, merchants: 100, days: 14, ..GenConfig::default() },
            ..TrainConfig::default()
        };
        let a = train_on_generated(&defs, &config).unwrap();
        assert!(a.auc_roc.unwrap() > 0.75, "AUC {:?}", a.auc_roc);
        // Seeded: the same data and parameters give the same model.
        let b = train_on_generated(&defs, &config).unwrap();
        assert_eq!(a.model.to_file_json(), b.model.to_file_json());

        // The unsupervised forest ranks frauds above chance without seeing a
        // label, is seeded too, and its file loads for the pipeline's inputs.
        let params = vigil_model::IsolationForestParams::new().n_trees(50);
        let forest = TrainConfig { params: TrainParams::IsolationForest(params), ..config };
        let f = train_on_generated(&defs, &forest).unwrap();
        assert!(f.auc_roc.unwrap() > 0.65, "AUC {:?}", f.auc_roc);
        assert_eq!(f.model.to_file_json(), train_on_generated(&defs, &forest).unwrap().model.to_file_json());
        let path = std::env::temp_dir().join(format!("vigil-forest-train-{}.json", std::process::id()));
        std::fs::write(&path, f.model.to_file_json()).unwrap();
        let available = vigil_engine::model_inputs(&defs);
        let loaded = vigil_model::load(&path, &available).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(loaded.body().algorithm.name(), vigil_model::ISOLATION_FOREST);
        assert_eq!(loaded.body().training["hyperparameters"]["n_trees"], 50);
    }

    #[test]
    fn a_share_of_one_trains_on_every_row_and_claims_no_test_figures() {
        let rows: Vec<Vec<f64>> = (0..200).map(|i| vec![f64::from(i % 10), f64::from(i % 7)]).collect();
        let labels: Vec<bool> = (0..200).map(|i| i % 10 == 9).collect();
        let config = TrainConfig { train_share: 1.0, ..TrainConfig::default() };
        let names = vec!["amount".to_owned(), "x".to_owned()];
        let all = fit_rows(&rows, &labels, rows.len(), names.clone(), serde_json::json!({}), &config).unwrap();
        assert_eq!((all.train_events, all.test_events), (200, 0));
        assert_eq!((all.auc_roc, all.average_precision), (None, None));
        assert!(all.model.body().training["test_metrics"].is_null());
        let held = TrainConfig { train_share: 0.7, ..config };
        assert!(fit_rows(&rows, &labels, rows.len(), names, serde_json::json!({}), &held).is_err());
    }
}

#[cfg(test)]
mod backtest_tests {
    use std::path::PathBuf;

    use vigil_core::{Action, PipelineConfig};
    use vigil_engine::Engine;
    use vigil_gen::GenConfig;

    fn engine(rules: &str) -> (Engine, PathBuf) {
        let dir = std::env::temp_dir().join(format!("vigil-bt-{}-{}", std::process::id(), rules.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("r.rules"), rules).unwrap();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut c = PipelineConfig::load(&root.join("pipelines/demo.toml")).unwrap();
        c.rules_path = dir.clone();
        c.model = None;
        (Engine::in_memory(&c).unwrap(), dir)
    }

    /// The backtest's per-rule figures equal a count made directly on the history.
    #[tokio::test]
    async fn figures_match_an_independent_count() {
        let items = vigil_gen::generate(&GenConfig {
            events: 20_000,
            cards: 1_000,
            merchants: 100,
            days: 10,
            ..GenConfig::default()
        });
        let path = std::env::temp_dir().join(format!("vigil-bt-history-{}.jsonl", std::process::id()));
        vigil_gen::write(std::fs::File::create(&path).unwrap(), &items, vigil_gen::Format::JsonLines, true).unwrap();
        let history = crate::history::read(&path, "is_fraud").unwrap();
        assert_eq!(history.events.len(), 20_000);

        let (candidate, d1) = engine(
            "rule big when amount >= 150 then review BIG score 10\nrule fr when country == \"FR\" then decline FR\n",
        );
        let (baseline, d2) = engine("rule big when amount >= 150 then review BIG score 10\n");
        let report = crate::backtest::run(&candidate, Some(&baseline), &history, |_| {}).await.unwrap();

        let big = |l: &vigil_gen::Labelled| l.event.amount >= rust_decimal::Decimal::from(150);
        let fr = |l: &vigil_gen::Labelled| l.event.country.as_deref() == Some("FR");
        let fraud = items.iter().filter(|l| l.fraud.is_some()).count() as u64;
        let count = |f: &dyn Fn(&vigil_gen::Labelled) -> bool| items.iter().filter(|l| f(l)).count() as u64;
        let count_fraud = |f: &dyn Fn(&vigil_gen::Labelled) -> bool| {
            items.iter().filter(|l| f(l) && l.fraud.is_some()).count() as u64
        };

        assert_eq!(report.labelled_fraud, Some(fraud));
        assert_eq!((report.rules[0].hits, report.rules[0].fraud_hits), (count(&big), count_fraud(&big)));
        assert_eq!((report.rules[1].hits, report.rules[1].fraud_hits), (count(&fr), count_fraud(&fr)));
        let precision = count_fraud(&big) as f64 / count(&big) as f64;
        assert!((report.rules[0].precision.unwrap() - precision).abs() < 1e-12);
        assert!((report.rules[1].recall.unwrap() - count_fraud(&fr) as f64 / fraud as f64).abs() < 1e-12);
        assert_eq!(report.decisions[&Action::Decline], count(&fr));
        assert_eq!(report.decisions[&Action::Review], count(&|l| big(l) && !fr(l)));

        // Against the baseline, exactly the French payments change: to decline.
        let b = report.baseline.unwrap();
        assert_eq!(b.changed, count(&fr));
        let to_decline: u64 = b.transitions.iter().filter(|(t, _)| t.ends_with("-> decline")).map(|(_, n)| n).sum();
        assert_eq!(to_decline, b.changed);
        assert_eq!(b.fraud_newly_flagged, Some(count_fraud(&|l| fr(l) && !big(l))));
        for d in [d1, d2] {
            let _ = std::fs::remove_dir_all(d);
        }
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn csv_history_reads_the_same_events() {
        let items =
            vigil_gen::generate(&GenConfig { events: 500, cards: 50, merchants: 10, days: 2, ..GenConfig::default() });
        let dir = std::env::temp_dir();
        let (j, c) = (
            dir.join(format!("vigil-h-{}.jsonl", std::process::id())),
            dir.join(format!("vigil-h-{}.csv", std::process::id())),
        );
        vigil_gen::write(std::fs::File::create(&j).unwrap(), &items, vigil_gen::Format::JsonLines, true).unwrap();
        vigil_gen::write(std::fs::File::create(&c).unwrap(), &items, vigil_gen::Format::Csv, true).unwrap();
        let (hj, hc) = (crate::history::read(&j, "is_fraud").unwrap(), crate::history::read(&c, "is_fraud").unwrap());
        assert_eq!(hj.events, hc.events);
        assert_eq!(hj.labels, hc.labels);
        assert_eq!(hj.reported_at, hc.reported_at);
        let truth: Vec<_> = items.iter().map(|l| l.reported_at).collect();
        assert_eq!(hj.reported_at, truth, "report times survive the file");
        assert_eq!(
            hj.fraud_labels(),
            vigil_gen::labels(&items).into_iter().map(|l| vigil_core::Label { source: None, ..l }).collect::<Vec<_>>()
        );
        assert_eq!(
            hj.labels.iter().filter(|l| **l == Some(true)).count(),
            items.iter().filter(|l| l.fraud.is_some()).count()
        );
        std::fs::write(&j, "{\"transaction_id\":\"x\"}\nnot json\n").unwrap();
        let bad = crate::history::read(&j, "is_fraud").unwrap();
        assert_eq!(bad.invalid, 2);
        assert!(bad.first_errors[1].contains(":2: malformed JSON"), "{:?}", bad.first_errors);
        let _ = std::fs::remove_file(j);
        let _ = std::fs::remove_file(c);
    }
}
