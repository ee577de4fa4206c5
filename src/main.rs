//! The `vigil` command: every entry point of the data flow, thin over the
//! crates; one module per subcommand under [`commands`].

mod commands;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::*;

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
    Run(stream::Args),
    /// Serve decisions over HTTP (the pipeline's `[api]`): signed, idempotent, bounded.
    Serve(serve::Args),
    /// Print the `Vigil-Signature` header value for a request body (for curl).
    Sign(sign::Args),
    /// Generate seeded synthetic payments with labelled fraud scenarios.
    Gen(gen::Args),
    /// Decide generated payments end to end in this process, with no server.
    Demo(demo::Args),
    /// Check a pipeline config, its rules and its model; report every problem.
    Validate(validate::Args),
    /// Work with rule files.
    Rules {
        #[command(subcommand)]
        command: rules::Command,
    },
    /// Manage the pipeline's Kafka topics.
    Topics {
        #[command(subcommand)]
        command: topics::Command,
    },
    /// Train a model (a logistic regression or an isolation forest) with the
    /// pipeline's features on history (generated, a labelled file, or a feature
    /// table), and test it on the later part.
    Train(Box<train::Args>),
    /// Evaluate a model file on labelled history: AUC-ROC, average precision,
    /// recall at 1% false positives, precision among the top scores, and the
    /// decision mix with the pipeline's rules and thresholds.
    Evaluate(evaluate::Args),
    /// Replay labelled history through a rule set: per-rule hits, precision and
    /// recall, the decision mix, and the changes against a baseline rule set.
    Backtest(backtest::Args),
    /// Record confirmed outcomes (chargebacks, analyst verdicts) for the label
    /// features: published to the pipeline's labels topic, or applied to its
    /// Redis store when it has no labels topic.
    Label(label::Args),
    /// Write a history's feature table (amount and every declared feature as of
    /// before each event, and the label) as CSV: what `vigil train` fits, for
    /// other tools and for `vigil train --features`.
    Features(features::Args),
    /// Send a JSON-lines file of events (or `-` for stdin) to the pipeline's input topic.
    Produce(produce::Args),
    /// The review store: cases in PostgreSQL from the pipeline's review decisions.
    Review {
        #[command(subcommand)]
        command: review::Command,
    },
}

impl Command {
    /// Commands that open no socket: when the reader of their output goes away
    /// (`vigil gen | head`), they stop quietly, as `cat` does.
    fn writes_files_only(&self) -> bool {
        matches!(
            self,
            Command::Gen(_)
                | Command::Demo(_)
                | Command::Validate(_)
                | Command::Rules { .. }
                | Command::Train(_)
                | Command::Evaluate(_)
                | Command::Backtest(_)
                | Command::Features(_)
                | Command::Sign(_)
        )
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(a) => stream::run(a).await,
        Command::Serve(a) => serve::run(a).await,
        Command::Sign(a) => sign::run(a),
        Command::Gen(a) => gen::run(a),
        Command::Demo(a) => demo::run(a).await,
        Command::Validate(a) => validate::run(a),
        Command::Rules { command } => rules::run(command).await,
        Command::Topics { command } => topics::run(command).await,
        Command::Train(a) => train::run(*a).await,
        Command::Evaluate(a) => evaluate::run(a).await,
        Command::Backtest(a) => backtest::run(a).await,
        Command::Label(a) => label::run(a).await,
        Command::Features(a) => features::run(a).await,
        Command::Produce(a) => produce::run(a).await,
        Command::Review { command } => review::run(command).await,
    }
}

/// Logs go to stderr, filtered by `VIGIL_LOG`, as text or, with
/// `VIGIL_LOG_FORMAT=json`, one JSON object a line (for a log shipper).
fn init_logs() -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var("VIGIL_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().flatten_event(true).with_current_span(false).init(),
        // Colour only on a terminal: a log file gets plain text.
        Ok("text") | Ok("") | Err(std::env::VarError::NotPresent) => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
        Ok(other) => return Err(format!("VIGIL_LOG_FORMAT={other}: give `text` (the default) or `json`")),
        Err(std::env::VarError::NotUnicode(_)) => return Err("VIGIL_LOG_FORMAT is not UTF-8".into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Err(e) = init_logs() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    if cli.command.writes_files_only() {
        signals::default_sigpipe();
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
            eprintln!("error: {}", said_once(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error with its causes, each said once: many errors already name their
/// cause in their own message (`cannot read X: No such file...`), and the
/// cause itself would repeat it.
fn said_once(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}
