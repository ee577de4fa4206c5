//! The `vigil` command: every entry point of the data flow, thin over the crates.

mod demo;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use vigil_core::PipelineConfig;
use vigil_engine::Engine;
use vigil_gen::GenConfig;
use vigil_rules::{RuleSet, Schema};

/// mimalloc rather than glibc's allocator: the server allocates per request
/// from several threads, and glibc's arenas spent about a quarter of its CPU
/// under load (benches/RESULTS.md, the HTTP API).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "vigil", version, about = "Streaming risk and fraud scoring for payment systems")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume events from Kafka, decide each, produce decisions and dead letters.
    Run {
        #[arg(long)]
        pipeline: PathBuf,
    },
    /// Serve decisions over HTTP (the pipeline's `[api]`): signed, idempotent, bounded.
    Serve {
        #[arg(long)]
        pipeline: PathBuf,
        /// Listen here instead of `api.listen`.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Print the `Vigil-Signature` header value for a request body (for curl).
    Sign {
        /// The client id, as in `[[api.clients]]`.
        #[arg(long)]
        client: String,
        /// Environment variable holding the client's secret.
        #[arg(long)]
        secret_env: String,
        #[arg(long, default_value = "POST")]
        method: String,
        #[arg(long, default_value = "/v1/decisions")]
        path: String,
        /// The body file, or `-` for stdin; sign exactly the bytes you send.
        body: PathBuf,
    },
    /// Generate seeded synthetic payments with labelled fraud scenarios.
    Gen(GenArgs),
    /// Decide generated payments end to end in this process, with no server.
    Demo {
        #[arg(long, default_value = "pipelines/demo.toml")]
        pipeline: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Where to write the decisions (JSON lines).
        #[arg(long, default_value = "vigil-demo-decisions.jsonl")]
        out: PathBuf,
    },
    /// Check a pipeline config, its rules and its model; report every problem.
    Validate {
        #[arg(long)]
        pipeline: PathBuf,
    },
    /// Work with rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Manage the pipeline's Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Train a fraud model on generated history with the pipeline's features (linfa).
    Train {
        #[arg(long, default_value = "pipelines/demo.toml")]
        pipeline: PathBuf,
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Share of the history's time span to train on; the later rest evaluates.
        #[arg(long, default_value_t = 0.7)]
        train_share: f64,
        /// `logistic` (supervised fraud probability) or `isolation-forest`
        /// (unsupervised anomaly score; labels only evaluate it).
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
        #[command(flatten)]
        filter: WhereArg,
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
        /// Isolation forest: number of trees.
        #[arg(long, default_value_t = 100)]
        trees: usize,
        /// Isolation forest: rows drawn to grow each tree.
        #[arg(long, default_value_t = 256)]
        sample_size: usize,
        /// Where to write the model; `models/card-fraud.json` for a logistic
        /// regression, `models/card-anomaly.json` for an isolation forest.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The summary as a line of text or as JSON.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
    },
    /// Evaluate a model file on labelled history: AUC-ROC, average precision,
    /// recall at 1% false positives, precision among the top scores, and the
    /// decision mix with the pipeline's rules and thresholds.
    Evaluate {
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
        #[command(flatten)]
        filter: WhereArg,
    },
    /// Replay labelled history through a rule set: per-rule hits, precision and
    /// recall, the decision mix, and the changes against a baseline rule set.
    Backtest {
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
        #[command(flatten)]
        filter: WhereArg,
    },
    /// Record confirmed outcomes (chargebacks, analyst verdicts) for the label
    /// features: published to the pipeline's labels topic, or applied to its
    /// Redis store when it has no labels topic.
    Label {
        #[arg(long)]
        pipeline: PathBuf,
        /// A JSON-lines file of labels (or `-` for stdin), one per line.
        #[arg(long, conflicts_with_all = ["transaction_id", "fraud", "genuine"])]
        file: Option<PathBuf>,
        /// The labelled transaction.
        #[arg(long, required_unless_present = "file")]
        transaction_id: Option<String>,
        #[arg(long, conflicts_with = "genuine")]
        fraud: bool,
        #[arg(long)]
        genuine: bool,
        /// When the outcome became known (RFC 3339); now by default.
        #[arg(long)]
        reported_at: Option<String>,
        /// Where it came from, such as `chargeback` or `analyst`.
        #[arg(long)]
        source: Option<String>,
        /// An entity field of the transaction, `name=value` (repeatable), such as
        /// `terminal_id=T1`: fraud labels carry those the label features count by.
        #[arg(long = "field", value_name = "NAME=VALUE")]
        fields: Vec<String>,
    },
    /// Write a history's feature table (amount and every declared feature as of
    /// before each event, and the label) as CSV: what `vigil train` fits, for
    /// other tools and for `vigil train --features`.
    Features {
        #[arg(long, default_value = "pipelines/demo.toml")]
        pipeline: PathBuf,
        /// History: JSON lines, CSV or Parquet, in time order.
        #[arg(long)]
        history: PathBuf,
        #[arg(long, default_value = "is_fraud")]
        label: String,
        /// Output CSV file, or `-` for stdout.
        #[arg(long, default_value = "-")]
        out: PathBuf,
        #[command(flatten)]
        filter: WhereArg,
    },
    /// Send a JSON-lines file of events (or `-` for stdin) to the pipeline's input topic.
    Produce {
        #[arg(long)]
        pipeline: PathBuf,
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum AlgorithmArg {
    Logistic,
    IsolationForest,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Run the rule tests kept beside the rules (`tests/*.toml` in the rules folder).
    Test {
        path: PathBuf,
        /// Pipeline whose features, thresholds and model weight the tests use.
        #[arg(long, default_value = "pipelines/demo.toml")]
        pipeline: PathBuf,
    },
    /// Check a rule file or folder against a pipeline's features.
    Check {
        path: PathBuf,
        /// Pipeline whose declared features the rules may use.
        #[arg(long, default_value = "pipelines/demo.toml")]
        pipeline: PathBuf,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the input, decisions and dead-letter topics where missing.
    Create {
        #[arg(long)]
        pipeline: PathBuf,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutFormat {
    Jsonl,
    Csv,
    /// Needs `--out FILE`.
    Parquet,
}

/// `--where`, shared by the commands that read a history.
#[derive(clap::Args)]
struct WhereArg {
    /// Only the events for which this SQL predicate holds (run by DataFusion
    /// over the history's fields, attributes and label, as in
    /// `channel = 'ecom' AND amount > 100`) train, test, are reported or are
    /// written; every event still counts in the features of later ones.
    #[arg(long = "where", value_name = "PREDICATE")]
    predicate: Option<String>,
}

#[derive(clap::Args)]
struct GenArgs {
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 5_000)]
    cards: usize,
    #[arg(long, default_value_t = 400)]
    merchants: usize,
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Share of events that belong to a fraud scenario.
    #[arg(long, default_value_t = 0.015)]
    fraud_share: f64,
    /// First day, RFC 3339.
    #[arg(long, default_value = "2026-01-01T00:00:00Z")]
    start: String,
    /// Output format; by default from the file's extension (`.csv`,
    /// `.parquet`), else JSON lines.
    #[arg(long, value_enum)]
    format: Option<OutFormat>,
    /// Output file, or `-` for stdout.
    #[arg(long, default_value = "-")]
    out: PathBuf,
    /// Also write `transaction_id,is_fraud,fraud_scenario` to this CSV file.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Put `is_fraud` and `fraud_scenario` in every record (a labelled history).
    #[arg(long)]
    inline_labels: bool,
}

impl Command {
    /// Commands that open no socket: when the reader of their output goes away
    /// (`vigil gen | head`), they stop quietly, as `cat` does.
    fn writes_files_only(&self) -> bool {
        matches!(
            self,
            Command::Gen(_)
                | Command::Demo { .. }
                | Command::Validate { .. }
                | Command::Rules { .. }
                | Command::Train { .. }
                | Command::Evaluate { .. }
                | Command::Backtest { .. }
                | Command::Features { .. }
                | Command::Sign { .. }
        )
    }
}

/// Restores the default action of SIGPIPE, which Rust's runtime ignores (so
/// that a closed pipe would otherwise end in an error or a panic at the next
/// print). Only for commands without sockets: a server must not die because
/// a peer closed its connection.
fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to the default at start-up, before
    // any thread that could be writing exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.command.writes_files_only() {
        default_sigpipe();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_pipeline(path: &Path) -> anyhow::Result<PipelineConfig> {
    PipelineConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { pipeline } => {
            let config = load_pipeline(&pipeline)?;
            let kafka = config.kafka.clone().ok_or(vigil_stream::StreamError::NoKafka)?;
            let engine = live_engine(&config).await?;
            let stats = Arc::new(vigil_stream::Stats::default());
            vigil_stream::run(&kafka, engine, stats, vigil_stream::shutdown_signal()).await?;
            Ok(())
        }
        Command::Serve { pipeline, listen } => {
            let mut config = load_pipeline(&pipeline)?;
            let Some(api) = config.api.as_mut() else {
                return Err(vigil_api::ApiError::NotConfigured(pipeline).into());
            };
            if let Some(l) = listen {
                api.listen = l;
            }
            let engine = live_engine(&config).await?;
            let listener = vigil_api::bind(config.api.as_ref().expect("checked above")).await?;
            vigil_api::serve(&config, engine, listener, vigil_stream::shutdown_signal()).await?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Sign { client, secret_env, method, path, body } => {
            let secret = std::env::var(&secret_env).with_context(|| format!("${secret_env} is not set"))?;
            let bytes = if body == Path::new("-") {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(&body).with_context(|| format!("cannot read {}", body.display()))?
            };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
            println!("{}", vigil_api::auth::sign(&client, secret.as_bytes(), now, &method, &path, &bytes));
            Ok(())
        }
        Command::Gen(args) => gen(args),
        Command::Demo { pipeline, events, seed, out } => {
            let config = load_pipeline(&pipeline)?;
            let gen = GenConfig { seed, events, ..GenConfig::default() };
            let summary = demo::run(&config, &gen, &out, 500).await?;
            summary.print(&mut std::io::stdout().lock(), &out)?;
            Ok(())
        }
        Command::Validate { pipeline } => validate(&pipeline),
        Command::Train {
            pipeline,
            events,
            seed,
            train_share,
            history,
            label,
            features,
            algorithm,
            before,
            time_column,
            filter,
            plain_inputs,
            max_iterations,
            tolerance,
            trees,
            sample_size,
            out,
            format,
        } => {
            if !(0.05..=0.95).contains(&train_share) {
                bail!("--train-share must be between 0.05 and 0.95");
            }
            if !(tolerance.is_finite() && tolerance > 0.0) {
                bail!("--tolerance must be a positive number");
            }
            let split_before = before.as_deref().map(parse_date).transpose()?;
            let (bar, progress) = progress_bar();
            let config = load_pipeline(&pipeline)?;
            let (algorithm, name, default_out) = match algorithm {
                AlgorithmArg::Logistic => {
                    (vigil_offline::Algorithm::Logistic, "card-fraud-logistic", "models/card-fraud.json")
                }
                AlgorithmArg::IsolationForest => {
                    (vigil_offline::Algorithm::IsolationForest, "card-anomaly-iforest", "models/card-anomaly.json")
                }
            };
            let out = out.unwrap_or_else(|| PathBuf::from(default_out));
            let train = vigil_offline::TrainConfig {
                name: name.into(),
                data: GenConfig { seed, events, ..GenConfig::default() },
                train_share,
                split_before,
                algorithm,
                max_iterations,
                gradient_tolerance: tolerance,
                n_trees: trees,
                sample_size,
                progress,
                plain_inputs,
                ..vigil_offline::TrainConfig::default()
            };
            if filter.predicate.is_some() && (history.is_none() || !features.is_empty()) {
                bail!("--where chooses events of a history: give --history, without --features");
            }
            let report = match &history {
                Some(path) if !features.is_empty() => {
                    let time = split_before.is_some().then_some(time_column.as_str());
                    let table = vigil_offline::tabular::read_csv_timed(path, &features, &label, time)?;
                    eprintln!(
                        "training on {} rows of {} with {} columns...",
                        table.rows.len(),
                        path.display(),
                        features.len()
                    );
                    vigil_offline::tabular::train(&table, path, &train)?
                }
                Some(path) => {
                    let h = read_history(path, &label, filter.predicate.as_deref()).await?;
                    eprintln!(
                        "training on {} events of {} with {} features...",
                        h.selected_count(),
                        path.display(),
                        config.features.len()
                    );
                    vigil_offline::train_on_history(&config.features, &h, path, &train)?
                }
                None => {
                    eprintln!(
                        "training on {events} generated events (seed {seed}) with {} features...",
                        config.features.len()
                    );
                    vigil_offline::train_on_generated(&config.features, &train)?
                }
            };
            bar.finish_and_clear();
            std::fs::write(&out, report.model.to_file_json())
                .with_context(|| format!("cannot write {}", out.display()))?;
            let version = vigil_model::Model::version(&report.model);
            match format {
                ReportFormat::Table => println!(
                    "wrote {} ({version}): trained on {} rows in {:.1} s, tested on the later {} ({} frauds): AUC-ROC {:.3}, average precision {:.3}",
                    out.display(),
                    report.train_events,
                    report.fit_seconds,
                    report.test_events,
                    report.test_frauds,
                    report.auc_roc,
                    report.average_precision
                ),
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
        Command::Rules { command: RulesCommand::Check { path, pipeline } } => {
            let schema = match PipelineConfig::load(&pipeline) {
                Ok(c) => Schema { features: c.features },
                Err(vigil_core::ConfigError::Io { .. }) => Schema::default(),
                Err(e) => bail!("{e}"),
            };
            let rules = RuleSet::load(&path, &schema).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}: {} rules check (version {})", path.display(), rules.rules().len(), rules.version());
            Ok(())
        }
        Command::Rules { command: RulesCommand::Test { path, pipeline } } => {
            let mut config = load_pipeline(&pipeline)?;
            config.rules_path = path.clone();
            let engine = Engine::in_memory(&config)?;
            let results = vigil_engine::ruletest::run_all(&engine, &path);
            let (mut passed, mut failed) = (0usize, 0usize);
            for case in results.values().flatten() {
                println!("{case}");
                if case.failure.is_some() {
                    failed += 1;
                } else {
                    passed += 1;
                }
            }
            println!("rule tests: {passed} passed, {failed} failed");
            if passed + failed == 0 {
                bail!("no rule tests under {}/{}", path.display(), vigil_engine::ruletest::TESTS_DIR);
            }
            if failed > 0 {
                bail!("{failed} rule test(s) failed");
            }
            Ok(())
        }
        Command::Evaluate { model, history, label, pipeline, format, report, table, filter } => {
            let mut config = load_pipeline(&pipeline)?;
            // A model over columns the pipeline does not declare was trained on
            // a table (`train --features`): score that table's rows directly.
            let any = vigil_model::load_any(&model)?;
            let declared = vigil_engine::model_inputs(&config.features);
            if table || any.body().inputs.iter().any(|i| !declared.contains(&i.as_str())) {
                if filter.predicate.is_some() {
                    bail!("--where chooses events of a history, not rows of a feature table");
                }
                let table = vigil_offline::tabular::read_csv(&history, &any.body().inputs, &label)?;
                return print_evaluation(&vigil_offline::evaluate::run_table(&any, &table)?, format, report.as_deref());
            }
            let weight = config.model.as_ref().map_or(100.0, |m| m.weight);
            config.model = Some(vigil_core::pipeline::ModelConfig { path: model, weight, challenger: None });
            let engine = Engine::in_memory(&config)?;
            let h = read_history(&history, &label, filter.predicate.as_deref()).await?;
            let (bar, progress) = progress_bar();
            let evaluation = vigil_offline::evaluate::run(&engine, &h, &progress);
            bar.finish_and_clear();
            print_evaluation(&evaluation?, format, report.as_deref())
        }
        Command::Backtest { rules, history, baseline, pipeline, label, format, filter } => {
            let config = load_pipeline(&pipeline)?;
            let engine_for = |path: &Path| -> anyhow::Result<Engine> {
                let mut c = config.clone();
                c.rules_path = path.to_path_buf();
                Ok(Engine::in_memory(&c)?)
            };
            let candidate = engine_for(&rules)?;
            let base = baseline.as_deref().map(engine_for).transpose()?;
            let started = std::time::Instant::now();
            let h = read_history(&history, &label, filter.predicate.as_deref()).await?;
            let (bar, progress) = progress_bar();
            let total = h.events.len() as u64;
            let report =
                vigil_offline::backtest::run(&candidate, base.as_ref(), &h, |n| progress.report("backtest", n, total));
            bar.finish_and_clear();
            let report = report?;
            match format {
                ReportFormat::Table => {
                    print!("{}", report.to_table());
                    eprintln!("({:.1} s)", started.elapsed().as_secs_f64());
                }
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(())
        }
        Command::Topics { command: TopicsCommand::Create { pipeline, partitions } } => {
            let config = load_pipeline(&pipeline)?;
            let kafka = config.kafka.ok_or(vigil_stream::StreamError::NoKafka)?;
            let created = vigil_stream::create_topics(&kafka, partitions).await?;
            if created.is_empty() {
                println!("all topics exist");
            }
            for t in created {
                println!("created {t}");
            }
            Ok(())
        }
        Command::Label { pipeline, file, transaction_id, fraud, genuine, reported_at, source, fields } => {
            let config = load_pipeline(&pipeline)?;
            let lines: Vec<(String, Vec<u8>)> = match (&file, transaction_id) {
                (Some(file), _) => {
                    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
                        Box::new(std::io::stdin().lock())
                    } else {
                        Box::new(std::io::BufReader::new(
                            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
                        ))
                    };
                    let mut out = Vec::new();
                    for (n, line) in reader.split(b'\n').enumerate() {
                        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
                        if !line.iter().all(u8::is_ascii_whitespace) {
                            out.push((format!("{}:{}", file.display(), n + 1), line));
                        }
                    }
                    out
                }
                (None, Some(id)) => {
                    if fraud == genuine {
                        bail!("say which outcome: --fraud or --genuine");
                    }
                    let mut map = serde_json::Map::new();
                    map.insert("transaction_id".into(), id.into());
                    map.insert("label".into(), if fraud { "fraud" } else { "genuine" }.into());
                    let at = reported_at.unwrap_or_else(|| chrono::Utc::now().to_rfc3339());
                    map.insert("reported_at".into(), at.into());
                    if let Some(s) = source {
                        map.insert("source".into(), s.into());
                    }
                    for f in &fields {
                        let (k, v) = f.split_once('=').with_context(|| format!("--field `{f}` is not NAME=VALUE"))?;
                        map.insert(k.trim().into(), v.into());
                    }
                    vec![("the label".to_owned(), serde_json::to_vec(&map)?)]
                }
                (None, None) => bail!("give --file or --transaction-id"),
            };
            label(&config, lines).await
        }
        Command::Features { pipeline, history, label, out, filter } => {
            let config = load_pipeline(&pipeline)?;
            let h = read_history(&history, &label, filter.predicate.as_deref()).await?;
            let (bar, progress) = progress_bar();
            let n = if out.as_os_str() == "-" {
                vigil_offline::tabular::write_features(std::io::stdout().lock(), &config.features, &h, &progress)?
            } else {
                let f = std::fs::File::create(&out).with_context(|| format!("cannot write {}", out.display()))?;
                vigil_offline::tabular::write_features(std::io::BufWriter::new(f), &config.features, &h, &progress)?
            };
            bar.finish_and_clear();
            eprintln!("wrote the features of {n} events");
            Ok(())
        }
        Command::Produce { pipeline, file } => {
            let config = load_pipeline(&pipeline)?;
            let kafka = config.kafka.ok_or(vigil_stream::StreamError::NoKafka)?;
            let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?,
                ))
            };
            let lines = reader.split(b'\n').map_while(Result::ok);
            let n = vigil_stream::produce_lines(&kafka, &kafka.input_topic, lines).await?;
            println!("produced {n} records to {}", kafka.input_topic);
            Ok(())
        }
    }
}

/// The engine of a long-running entry point (`run`, `serve`): connected, with
/// rules and models reloaded when their files change, and all on SIGHUP.
async fn live_engine(config: &PipelineConfig) -> anyhow::Result<Arc<Engine>> {
    let engine = Arc::new(Engine::connect(config).await?);
    tracing::info!(pipeline = %config.name, rules = engine.rules().version(), "engine ready");
    spawn_reload_on_hangup(engine.clone(), config.clone());
    tokio::spawn(vigil_engine::watch::watch_rules(
        engine.clone(),
        config.rules_path.clone(),
        std::time::Duration::from_secs(1),
        Arc::new(vigil_engine::watch::ReloadStats::default()),
        std::future::pending(),
    ));
    if let Some(m) = &config.model {
        use vigil_engine::watch::ModelRole;
        let files = std::iter::once((ModelRole::Champion, m.path.clone()))
            .chain(m.challenger.clone().map(|c| (ModelRole::Challenger, c)))
            .collect();
        tokio::spawn(vigil_engine::watch::watch_models(
            engine.clone(),
            files,
            std::time::Duration::from_secs(1),
            Arc::new(vigil_engine::watch::ReloadStats::default()),
            std::future::pending(),
        ));
    }
    Ok(engine)
}

/// On SIGHUP, reloads rules (and the model, when configured). A rule set or model
/// that does not load is refused with a logged error; the last good one keeps serving.
fn spawn_reload_on_hangup(engine: Arc<Engine>, config: PipelineConfig) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else { return };
        while hangup.recv().await.is_some() {
            match engine.reload_rules(&config.rules_path) {
                Ok(v) => tracing::info!(version = %v, "rules reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, kept = %engine.rules().version(), "rules refused; keeping the last good set")
                }
            }
            if let Some(m) = &config.model {
                match engine.reload_model(&m.path) {
                    Ok(v) => tracing::info!(version = %v, "model reloaded"),
                    Err(e) => tracing::error!(error = %e, "model refused; keeping the last good one"),
                }
                if let Some(c) = &m.challenger {
                    match engine.reload_challenger(c) {
                        Ok(v) => tracing::info!(version = %v, "challenger model reloaded"),
                        Err(e) => tracing::error!(error = %e, "challenger model refused; keeping the last good one"),
                    }
                }
            }
        }
    });
}

/// Reads a history file, telling on stderr which records were skipped and why.
/// A date for `--before`: RFC 3339, a calendar day (midnight UTC), or seconds since 1970.
fn parse_date(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    vigil_offline::tabular::parse_time(text)
        .with_context(|| format!("`{text}` is neither RFC 3339 nor a date like 2026-03-01"))
}

/// A progress bar on stderr for the long steps of offline work (hidden when
/// stderr is not a terminal): a bar while a step can count its work, a spinner
/// with the elapsed time while it cannot (a solver's fit).
fn progress_bar() -> (indicatif::ProgressBar, vigil_offline::Progress) {
    // Hidden until the first step has its style, length and name.
    let bar = indicatif::ProgressBar::hidden();
    let shown = bar.clone();
    let current = std::sync::Mutex::new(None::<&'static str>);
    let progress = vigil_offline::Progress::new(move |step, done, total| {
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        if *current != Some(step) {
            *current = Some(step);
            let template = if total == 0 {
                "{spinner} {msg} {elapsed}"
            } else {
                "{msg:10} {bar:40} {human_pos}/{human_len} ({eta} left)"
            };
            shown.reset();
            shown.set_length(total);
            shown.set_message(step);
            shown.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            if shown.is_hidden() {
                shown.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            if total == 0 {
                shown.enable_steady_tick(std::time::Duration::from_millis(120));
            } else {
                shown.disable_steady_tick();
            }
        }
        shown.set_position(done);
    });
    (bar, progress)
}

/// Reads a history and, with `--where`, chooses the events to report on.
async fn read_history(
    path: &Path,
    label: &str,
    filter: Option<&str>,
) -> anyhow::Result<vigil_offline::history::History> {
    let mut h = vigil_offline::history::read(path, label)?;
    for e in &h.first_errors {
        eprintln!("skipped: {e}");
    }
    if let Some(predicate) = filter {
        let n = vigil_offline::select::apply(&mut h, predicate, label).await?;
        eprintln!("--where chose {n} of {} events", h.events.len());
    }
    Ok(h)
}

fn print_evaluation(
    eval: &vigil_offline::evaluate::Evaluation,
    format: ReportFormat,
    report: Option<&Path>,
) -> anyhow::Result<()> {
    match format {
        ReportFormat::Table => print!("{}", eval.to_table()),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(eval)?),
    }
    if let Some(dir) = report {
        let written = vigil_offline::report::write(eval, dir)?;
        eprintln!("report: {}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    Ok(())
}

/// Checks every label first (refusing all if one is bad, with its place), then
/// publishes them to the labels topic or applies them to the Redis store.
async fn label(config: &PipelineConfig, lines: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let mut labels = Vec::with_capacity(lines.len());
    let mut problems = Vec::new();
    for (place, line) in &lines {
        match vigil_core::Label::from_json(line).and_then(|l| l.missing_for(&config.features).map(|()| l)) {
            Ok(l) => labels.push(l),
            Err(e) => problems.push(format!("{place}: {e}")),
        }
    }
    if !problems.is_empty() {
        bail!("{} label(s) refused, nothing recorded:\n{}", problems.len(), problems.join("\n"));
    }
    if let Some(topic) = config.kafka.as_ref().and_then(|k| k.labels_topic.as_ref().map(|t| (k, t))) {
        let (kafka, topic) = topic;
        let n = vigil_stream::produce_lines(kafka, topic, labels.iter().map(vigil_core::Label::to_json)).await?;
        println!("published {n} label(s) to {topic}");
        return Ok(());
    }
    if matches!(config.store.backend, vigil_core::pipeline::StoreBackend::Memory) {
        bail!(
            "{}: no [kafka] labels_topic and an in-memory store: a label recorded by this command would vanish \
             with it; set kafka.labels_topic, or use a Redis store",
            config.file.display()
        );
    }
    let engine = vigil_engine::Engine::connect(config).await?;
    let refs: Vec<&vigil_core::Label> = labels.iter().collect();
    let outcomes = engine.apply_labels(&refs).await?;
    let counted = outcomes.iter().filter(|o| **o == vigil_engine::LabelOutcome::Counted).count();
    println!(
        "applied {} label(s): {counted} fraud(s) newly counted, {} unchanged",
        labels.len(),
        labels.len() - counted
    );
    Ok(())
}

fn gen(a: GenArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&a.fraud_share) {
        bail!("--fraud-share must be between 0 and 1");
    }
    let start = chrono::DateTime::parse_from_rfc3339(&a.start)
        .with_context(|| format!("--start `{}` is not RFC 3339", a.start))?
        .with_timezone(&chrono::Utc);
    let config = GenConfig {
        seed: a.seed,
        events: a.events,
        cards: a.cards,
        merchants: a.merchants,
        days: a.days,
        start,
        fraud_share: a.fraud_share,
    };
    let items = vigil_gen::generate(&config);
    let ext = a.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let chosen = a.format.unwrap_or(match ext.as_deref() {
        Some("csv") => OutFormat::Csv,
        Some("parquet" | "parq" | "pq") => OutFormat::Parquet,
        _ => OutFormat::Jsonl,
    });
    let format = match chosen {
        OutFormat::Jsonl => Some(vigil_gen::Format::JsonLines),
        OutFormat::Csv => Some(vigil_gen::Format::Csv),
        OutFormat::Parquet => None,
    };
    match format {
        None if a.out.as_os_str() == "-" => {
            bail!("--format parquet needs --out FILE: Parquet is not written to stdout")
        }
        None => vigil_offline::columnar::write(&a.out, &items, a.inline_labels)?,
        Some(format) if a.out.as_os_str() == "-" => {
            vigil_gen::write(std::io::stdout().lock(), &items, format, a.inline_labels)?
        }
        Some(format) => {
            let f = std::fs::File::create(&a.out).with_context(|| format!("cannot write {}", a.out.display()))?;
            vigil_gen::write(f, &items, format, a.inline_labels)?;
        }
    }
    if let Some(path) = a.labels {
        let f = std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        vigil_gen::write_labels(f, &items)?;
    }
    let fraud = items.iter().filter(|l| l.fraud.is_some()).count();
    eprintln!("generated {} events ({} labelled fraud), seed {}", items.len(), fraud, a.seed);
    std::io::stderr().flush()?;
    Ok(())
}

/// Checks the config, then its rules and model, listing every problem found.
fn validate(path: &Path) -> anyhow::Result<()> {
    let config = match PipelineConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            bail!("{} does not validate", path.display());
        }
    };
    let schema = Schema { features: config.features.clone() };
    let mut problems = Vec::new();
    let rules = match RuleSet::load(&config.rules_path, &schema) {
        Ok(r) => Some(r),
        Err(e) => {
            problems.extend(e.0.iter().map(|p| p.to_string()));
            None
        }
    };
    if let Some(m) = &config.model {
        if let Err(e) = vigil_model::load(&m.path, &vigil_engine::model_inputs(&config.features)) {
            problems.push(e.to_string());
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!("{} does not validate: {} problem(s)", path.display(), problems.len());
    }
    println!(
        "{}: pipeline `{}` is valid: {} features, {} rules in {} (version {}){}",
        path.display(),
        config.name,
        config.features.len(),
        rules.as_ref().map_or(0, |r| r.rules().len()),
        config.rules_path.display(),
        rules.as_ref().map_or("", |r| r.version()),
        if config.kafka.is_some() { ", kafka configured" } else { "" }
    );
    if let Some(api) = &config.api {
        println!(
            "  api on {}: {} signing client(s){}",
            api.listen,
            api.clients.len(),
            if api.jwt.is_some() { ", bearer JWTs" } else { "" }
        );
    }
    Ok(())
}
