//! One module per subcommand, each with its arguments (`Args`) and its `run`;
//! what several share is here: the pipeline, input files, history, progress.

pub mod backtest;
pub mod demo;
pub mod evaluate;
pub mod features;
pub mod gen;
pub mod label;
pub mod produce;
pub mod review;
pub mod rules;
pub mod serve;
pub mod sign;
pub mod stream;
pub mod topics;
pub mod train;
pub mod validate;

use std::io::BufRead;
use std::path::Path;

use anyhow::Context as _;
use clap::ValueEnum;
use vigil_core::PipelineConfig;

/// Reads and validates `--pipeline`; a file that cannot be read says which
/// flag names it and where a relative path was looked for.
pub fn load_pipeline(path: &Path) -> anyhow::Result<PipelineConfig> {
    PipelineConfig::load(path).map_err(|e| match e {
        vigil_core::ConfigError::Io { .. } => anyhow::anyhow!("{e}; {}", pipeline_hint(path)),
        e => anyhow::anyhow!("{e}"),
    })
}

/// What to do about a pipeline file that is not there.
pub fn pipeline_hint(path: &Path) -> String {
    let here = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
    if path.is_relative() {
        format!("give --pipeline FILE (a relative path is read from the current folder, {here})")
    } else {
        "give --pipeline FILE".to_owned()
    }
}

/// A report as a table for people, or as JSON.
#[derive(Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
}

/// Which fraud scenarios generated events carry (`vigil gen`, `vigil demo`
/// and the generated history of `vigil train`).
#[derive(clap::Args)]
pub struct ScenarioArgs {
    /// Generate the easy history of earlier versions instead (three fraud
    /// scenarios, every fraud labelled and confirmed within 30 days; a seed
    /// gives the events it gave before). By default the generator adds card
    /// testing, a terminal skimming for weeks at usual amounts, a taken-over
    /// card spent like its owner and a merchant bust-out, confirms about 15%
    /// of frauds only 30 to 75 days later and leaves 3% unreported.
    #[arg(long)]
    plain: bool,
    /// The default now (the hard scenarios); kept for earlier scripts.
    #[arg(long, hide = true, conflicts_with = "plain")]
    hard: bool,
}

impl ScenarioArgs {
    /// Whether the hard scenarios are generated.
    pub fn hard(&self) -> bool {
        !self.plain
    }
}

/// A file to read, or stdin for `-`.
pub fn open_input(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(std::io::BufReader::new(file)))
}

/// A file's bytes, or stdin's for `-`.
pub fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).context("cannot read stdin")?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The non-blank lines of a file or stdin, each with its place (`file:line`).
pub fn read_lines(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for (n, line) in open_input(path)?.split(b'\n').enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if !line.iter().all(u8::is_ascii_whitespace) {
            out.push((format!("{}:{}", path.display(), n + 1), line));
        }
    }
    Ok(out)
}

/// Reads a history, telling on stderr which records were skipped and why,
/// and with `--where` chooses the events to report on.
pub async fn read_history(
    path: &Path,
    label: &str,
    filter: Option<&str>,
) -> anyhow::Result<vigil_offline::history::History> {
    let mut h = vigil_offline::history::read(path, label)?;
    for e in &h.first_errors {
        eprintln!("skipped: {e}");
    }
    if h.events.is_empty() {
        // A field no event has, in every record: most likely the label column
        // under another name than `--label`'s.
        let unknown = h.first_errors.iter().find_map(|e| e.split("unknown field `").nth(1)?.split('`').next());
        let hint = match unknown {
            Some(field) => format!("; if `{field}` is the label column, give --label {field}"),
            None if path.extension().is_some_and(|e| e == "csv") => {
                "; a feature table, as `vigil features` writes, is read by `evaluate --table` and `train --features`"
                    .to_owned()
            }
            None => String::new(),
        };
        anyhow::bail!(
            "{}: no valid event ({} records refused, the first reasons above); a history holds one event per \
             record (docs/events.md){hint}",
            path.display(),
            h.invalid,
        );
    }
    if let Some(predicate) = filter {
        let n = vigil_offline::select::apply(&mut h, predicate, label).await?;
        eprintln!("--where chose {n} of {} events", h.events.len());
    }
    Ok(h)
}

/// A progress bar on stderr for the long steps of offline work (hidden when
/// stderr is not a terminal): a bar while a step can count its work, a spinner
/// with the elapsed time while it cannot (a solver's fit).
pub fn progress_bar() -> (indicatif::ProgressBar, vigil_offline::Progress) {
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

/// `--store-wait SECONDS`, for the entry points that decide (`run`, `serve`).
#[derive(clap::Args)]
pub struct StoreWait {
    /// How long to wait for the feature store at start, in seconds. An
    /// instance started (or restarted by its orchestrator) while Redis is down
    /// then waits for it, retrying with backoff, as a running instance rides
    /// out an outage, instead of exiting at once. The default, 0, exits at
    /// once with the store's error. A signal ends the wait.
    #[arg(long = "store-wait", value_name = "SECONDS", default_value_t = 0)]
    seconds: u64,
}

impl StoreWait {
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.seconds)
    }
}

/// The engine, once the feature store answers. While the store is unavailable
/// it retries with backoff (0.5 s doubling to 8 s) until `wait` has passed,
/// then fails with the store's error; any other error fails at once. `None`
/// when a signal came first.
pub async fn live_once_store_answers(
    config: &vigil_core::PipelineConfig,
    wait: std::time::Duration,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> anyhow::Result<Option<std::sync::Arc<vigil_engine::Engine>>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut attempt = 0u32;
    loop {
        let e = match vigil_engine::watch::live(config).await {
            Ok(engine) => return Ok(Some(engine)),
            Err(e) => e,
        };
        let vigil_engine::EngineError::Features(vigil_features::FeatureError::Unavailable(why)) = &e else {
            return Err(e.into());
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(match attempt {
                0 => e.into(),
                _ => anyhow::Error::new(e)
                    .context(format!("the feature store did not answer within --store-wait {} s", wait.as_secs())),
            });
        }
        attempt += 1;
        let pause = std::time::Duration::from_millis(250u64 << attempt.min(5)).min(left);
        tracing::warn!(error = %why, attempt, retry_in_ms = pause.as_millis() as u64,
            "the feature store is unavailable at start; waiting for it (--store-wait)");
        tokio::select! {
            _ = &mut *shutdown => return Ok(None),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
