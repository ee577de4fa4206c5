//! Single-event requests decided together: at most `api.store_calls`
//! feature-store calls are in flight at once, and the requests that arrive
//! while they are all busy are decided in the next call, as one engine batch
//! (one store round trip for all of them, up to `api.max_batch` events).
//!
//! At a light load every request gets a call of its own at once, so nothing
//! waits for company. Under a heavy load the calls grow instead of
//! multiplying, which spares the feature store the per-call cost and the
//! compare-and-set conflicts of many small calls on shared entities
//! (terminals, merchants). Each request keeps its own deadline: one that runs
//! out while its batch is still at the store is decided by the degraded
//! policy alone, and its batch-mates are not cut short.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};
use vigil_core::{Decision, Event};
use vigil_engine::{Engine, EngineError};

/// What a waiting request gets back: its decision, or the failure of the
/// store call its batch made (shared by every request of the batch).
pub type Outcome = Result<Decision, Arc<EngineError>>;

struct Job {
    event: Arc<Event>,
    reply: oneshot::Sender<Outcome>,
}

/// Hands single events to the engine in batches.
#[derive(Clone)]
pub struct Coalescer {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Coalescer {
    /// Starts the dispatcher. The queue is not bounded here: the API's
    /// concurrency bound (`api.max_concurrency`) already bounds the requests
    /// that can be waiting in it.
    pub fn start(engine: Arc<Engine>, store_calls: usize, max_batch: usize) -> Coalescer {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let slots = Arc::new(Semaphore::new(store_calls.max(1)));
        let max_batch = max_batch.max(1);
        tokio::spawn(async move {
            loop {
                // Take a call slot first, then every job waiting by then.
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let Some(first) = rx.recv().await else { return };
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let engine = engine.clone();
                tokio::spawn(async move {
                    decide(&engine, batch).await;
                    drop(slot);
                });
            }
        });
        Coalescer { jobs }
    }

    /// Decides one event by its deadline. When the deadline passes first, the
    /// pipeline's degraded policy decides (the event may still be counted by
    /// the call in progress; a retry then finds it counted).
    pub async fn decide(&self, engine: &Engine, event: Arc<Event>, deadline: tokio::time::Instant) -> Outcome {
        let asked = tokio::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job { event: event.clone(), reply }).is_err() {
            return Err(Arc::new(EngineError::Features(vigil_features::FeatureError::Unavailable(
                "the decision dispatcher has stopped".into(),
            ))));
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(Arc::new(EngineError::Features(vigil_features::FeatureError::Unavailable(
                "the decision was dropped before it was made".into(),
            )))),
            Err(_) => {
                engine.count_deadline_cut();
                let e = vigil_features::FeatureError::Timeout(asked.elapsed().as_millis() as u64);
                engine.decide_degraded(&[&event], e).map(|mut ds| ds.remove(0)).map_err(Arc::new)
            }
        }
    }
}

/// One engine batch for the jobs still waiting. The store call is not cut at
/// a deadline here: each request gives up at its own, and the call stays
/// bounded by the store's timeout (`store.timeout_ms`).
async fn decide(engine: &Engine, jobs: Vec<Job>) {
    // A request that gave up (its deadline passed) has dropped its answer.
    let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if jobs.is_empty() {
        return;
    }
    let events: Vec<&Event> = jobs.iter().map(|j| j.event.as_ref()).collect();
    match engine.decide_batch(&events).await {
        Ok(decisions) => {
            for (job, d) in jobs.into_iter().zip(decisions) {
                let _ = job.reply.send(Ok(d));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}
