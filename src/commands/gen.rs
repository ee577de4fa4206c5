//! `vigil gen`: seeded synthetic payments with labelled fraud scenarios.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use vigil_gen::GenConfig;
use vigil_offline::history::Format;

#[derive(clap::Args)]
pub struct Args {
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
    #[command(flatten)]
    scenarios: super::ScenarioArgs,
    /// First day: RFC 3339, a date (2026-01-01, midnight UTC) or seconds since 1970.
    #[arg(long, default_value = "2026-01-01T00:00:00Z")]
    start: String,
    /// Output format; by default from the file's extension (`.csv`,
    /// `.parquet`), else JSON lines. Parquet needs `--out FILE`.
    #[arg(long, value_parser = PossibleValuesParser::new(Format::NAMES).try_map(|s| Format::parse(&s).ok_or("unknown format")))]
    format: Option<Format>,
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

pub fn run(a: Args) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&a.fraud_share) {
        bail!("--fraud-share must be between 0 and 1");
    }
    let start = vigil_offline::tabular::parse_time(&a.start)
        .with_context(|| format!("--start `{}` is neither RFC 3339 nor a date like 2026-01-01", a.start))?;
    let named = Format::of_path(&a.out);
    if let (Some(given), Some(named)) = (a.format, named) {
        if given != named {
            bail!(
                "--format {} but --out {} names another format: drop --format, or give the file the extension \
                 of the format",
                given.name(),
                a.out.display()
            );
        }
    }
    let config = GenConfig {
        seed: a.seed,
        events: a.events,
        cards: a.cards,
        merchants: a.merchants,
        days: a.days,
        start,
        fraud_share: a.fraud_share,
        hard: a.scenarios.hard(),
    };
    let items = vigil_gen::generate(&config);
    // JSON lines unless the extension says CSV or Parquet.
    let format = a.format.or(named);
    let text = match format.unwrap_or(Format::JsonLines) {
        Format::JsonLines => Some(vigil_gen::Format::JsonLines),
        Format::Csv => Some(vigil_gen::Format::Csv),
        Format::Parquet => None,
    };
    match text {
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
