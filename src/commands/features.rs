//! `vigil features`: a history's feature table, as CSV.

use std::path::PathBuf;

use anyhow::Context as _;

use super::{load_pipeline, progress_bar, read_history};

#[derive(clap::Args)]
pub struct Args {
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
    /// Only the events for which this SQL predicate holds are written (run by
    /// DataFusion over the history's fields, attributes and label, as in
    /// `channel = 'ecom' AND amount > 100`; text in single quotes); every
    /// event still counts in the features of later ones.
    #[arg(long = "where", value_name = "PREDICATE")]
    filter: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let config = load_pipeline(&a.pipeline)?;
    let h = read_history(&a.history, &a.label, a.filter.as_deref()).await?;
    let (bar, progress) = progress_bar();
    let n = if a.out.as_os_str() == "-" {
        vigil_offline::tabular::write_features(std::io::stdout().lock(), &config.features, &h, &progress)?
    } else {
        let f = std::fs::File::create(&a.out).with_context(|| format!("cannot write {}", a.out.display()))?;
        vigil_offline::tabular::write_features(std::io::BufWriter::new(f), &config.features, &h, &progress)?
    };
    bar.finish_and_clear();
    eprintln!("wrote the features of {n} events");
    Ok(())
}
