//! Live reload: polls the rule files (and lists) and the model files for changes
//! and swaps a new rule set or model in when it checks; a broken edit or a
//! corrupt model file is refused and the last good one keeps serving. Polling
//! metadata once a second is cheap for rule folders and sees editors that
//! replace files as well as those that write in place. SIGHUP reloads all.
//!
//! [`live`] gives the long-running entry points (`vigil run`, `vigil serve`)
//! their engine with all of this going.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use vigil_core::PipelineConfig;

pub use crate::scoring::ModelRole;
use crate::{Engine, EngineError};

/// What the watcher did, for tests and metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub reloaded: AtomicU64,
    pub refused: AtomicU64,
}

/// `(path, length, modified)` of every rule and list file under `path`.
fn fingerprint(path: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    fn visit(dir: &Path, files: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    let mut files = Vec::new();
    if path.is_dir() {
        visit(path, &mut files);
        visit(&path.join(vigil_rules::LISTS_DIR), &mut files);
    } else {
        files.push(path.to_path_buf());
        visit(&path.with_file_name(vigil_rules::LISTS_DIR), &mut files);
    }
    let mut out: Vec<_> = files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect();
    out.sort();
    out
}

/// Watches `path` until `shutdown` completes, reloading the engine's rules on change.
pub async fn watch_rules(
    engine: Arc<Engine>,
    path: PathBuf,
    interval: Duration,
    stats: Arc<ReloadStats>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut seen = fingerprint(&path);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = fingerprint(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let before = engine.rules().version().to_owned();
        match engine.reload_rules(&path) {
            Ok(v) if v == before => {}
            Ok(v) => {
                stats.reloaded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(from = %before, to = %v, "rules reloaded");
            }
            Err(e) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, kept = %before, "changed rules refused; the last good set keeps serving");
            }
        }
    }
}

fn file_stamp(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()))
}

/// Watches model files until `shutdown` completes, swapping in each file that
/// changes and loads (checksum, format, inputs matching the pipeline). A file
/// that is refused is logged and counted; the model it would replace keeps
/// scoring, and the next change to the file is tried again.
pub async fn watch_models(
    engine: Arc<Engine>,
    files: Vec<(ModelRole, PathBuf)>,
    interval: Duration,
    stats: Arc<ReloadStats>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut seen: Vec<_> = files.iter().map(|(_, p)| file_stamp(p)).collect();
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
        for ((role, path), seen) in files.iter().zip(seen.iter_mut()) {
            let now = file_stamp(path);
            if now == *seen {
                continue;
            }
            *seen = now;
            let (before, result) = match role {
                ModelRole::Champion => (engine.model_version(), engine.reload_model(path)),
                ModelRole::Challenger => (engine.challenger_version(), engine.reload_challenger(path)),
            };
            let before = before.unwrap_or_default();
            match result {
                Ok(v) if v == before => {}
                Ok(v) => {
                    stats.reloaded.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(?role, file = %path.display(), from = %before, to = %v, "model reloaded");
                }
                Err(e) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(?role, file = %path.display(), error = %e, kept = %before,
                        "changed model file refused; the last good model keeps scoring");
                }
            }
        }
    }
}

/// The engine of a long-running entry point: connected, with rules and models
/// reloaded when their files change, and all on SIGHUP.
pub async fn live(config: &PipelineConfig) -> Result<Arc<Engine>, EngineError> {
    let engine = Arc::new(Engine::connect(config).await?);
    tracing::info!(pipeline = %config.name, rules = engine.rules().version(), "engine ready");
    reload_on_hangup(engine.clone(), config.clone());
    let second = Duration::from_secs(1);
    let stats = || Arc::new(ReloadStats::default());
    tokio::spawn(watch_rules(engine.clone(), config.rules_path.clone(), second, stats(), std::future::pending()));
    if let Some(m) = &config.model {
        let files = std::iter::once((ModelRole::Champion, m.path.clone()))
            .chain(m.challenger.clone().map(|c| (ModelRole::Challenger, c)))
            .collect();
        tokio::spawn(watch_models(engine.clone(), files, second, stats(), std::future::pending()));
    }
    Ok(engine)
}

/// On SIGHUP, reloads rules (and the models, when configured). A rule set or
/// model that does not load is refused with a logged error; the last good one
/// keeps serving.
pub fn reload_on_hangup(engine: Arc<Engine>, config: PipelineConfig) {
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
