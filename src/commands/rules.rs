//! `vigil rules`: check rule files, run their tests.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use vigil_engine::Engine;
use vigil_rules::{RuleSet, Schema};

#[derive(Subcommand)]
pub enum Command {
    /// Run the rule tests kept beside the rules (`tests/*.toml` in the rules folder).
    Test {
        /// The rules folder (its tests are in `tests/*.toml` inside it), or one rule file.
        path: PathBuf,
        /// Pipeline whose features, thresholds and model weight the tests use.
        #[arg(long, default_value = "pipelines/demo.toml")]
        pipeline: PathBuf,
    },
    /// Check a rule file or folder against a pipeline's features.
    Check {
        /// A rule file, or a folder of `*.rules` files (and its `lists/`).
        path: PathBuf,
        /// Pipeline whose declared features the rules may use.
        #[arg(long, default_value = "pipelines/demo.toml")]
        pipeline: PathBuf,
    },
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { path, pipeline } => {
            // Rules name the pipeline's features: checked without them, every
            // feature would be an unknown name.
            let schema = Schema { features: super::load_pipeline(&pipeline)?.features };
            let rules = RuleSet::load(&path, &schema).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}: {} rules check (version {})", path.display(), rules.rules().len(), rules.version());
            Ok(())
        }
        Command::Test { path, pipeline } => {
            let mut config = super::load_pipeline(&pipeline)?;
            config.rules_path = path.clone();
            let engine = Engine::in_memory(&config)?;
            let results = vigil_engine::ruletest::run_all(&engine, &path).await;
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
    }
}
