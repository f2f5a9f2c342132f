//! Leadership terms and workers. Each term (from taking the lease to losing it) gets fresh
//! queues, one per controller, and its own workers; when the term ends the workers are stopped
//! where they are and the queues are dropped with whatever they held, so no key of an
//! interrupted sync can stay "in progress" into the next term (the next term queues everything
//! again, as a restarted kube-controller-manager would).

use std::collections::HashMap;
use std::pin::pin;
use std::time::Instant;

use svcplane_model::ObjectKey;
use svcplane_runtime::Queue;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{Controller, Outcome, Part, lock};

/// Retries start at 10 ms and double up to 100 s (never dropped).
const BACKOFF_BASE: std::time::Duration = std::time::Duration::from_millis(10);
const BACKOFF_CAP: std::time::Duration = std::time::Duration::from_secs(100);

/// One leadership term's workers.
struct Term {
    queues: Vec<Queue<ObjectKey>>,
    workers: Vec<JoinHandle<()>>,
}

impl Controller {
    /// Runs the controllers' workers while `leader` is true; returns when `shutdown` resolves.
    /// Without leader election `leader` is true from the start and its sender is gone.
    pub async fn work(
        &self,
        mut leader: watch::Receiver<bool>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = pin!(shutdown);
        let mut synced = self.inner.synced.subscribe();
        tokio::select! {
            _ = &mut shutdown => return,
            _ = synced.wait_for(|s| *s) => {}
        }
        let resync = self.inner.settings.resync;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
        let mut final_value = false;
        loop {
            while !*leader.borrow_and_update() {
                tokio::select! {
                    _ = &mut shutdown => return,
                    changed = leader.changed(), if !final_value => final_value = changed.is_err(),
                }
            }
            tracing::info!("leading: syncing Services");
            let term = self.start_term();
            let lost = loop {
                tokio::select! {
                    _ = &mut shutdown => break false,
                    _ = ticker.tick() => self.enqueue_all(),
                    changed = leader.changed(), if !final_value => {
                        final_value = changed.is_err();
                        if !*leader.borrow_and_update() {
                            break true;
                        }
                    }
                }
            };
            self.end_term(term);
            if !lost {
                return;
            }
            tracing::warn!("lost the lease: stopped writing");
        }
    }

    fn start_term(&self) -> Term {
        let mut queues = HashMap::new();
        let mut workers = Vec::new();
        for part in self.parts() {
            let queue = Queue::new(BACKOFF_BASE, BACKOFF_CAP);
            for _ in 0..self.inner.settings.workers(part) {
                let me = self.clone();
                let q = queue.clone();
                workers.push(tokio::spawn(async move { me.worker(part, q).await }));
            }
            queues.insert(part, queue);
        }
        let term = Term {
            queues: queues.values().cloned().collect(),
            workers,
        };
        *lock(&self.inner.queues) = Some(queues);
        self.enqueue_all();
        term
    }

    /// Stops writing at once: the queues stop handing out keys and the workers are stopped
    /// mid-sync if need be (an interrupted write either happened or did not; the next term's
    /// syncs read the cache and converge either way).
    fn end_term(&self, term: Term) {
        *lock(&self.inner.queues) = None;
        for queue in &term.queues {
            queue.close();
        }
        for worker in &term.workers {
            worker.abort();
        }
        self.inner.metrics.queue(0);
    }

    async fn worker(&self, part: Part, queue: Queue<ObjectKey>) {
        let metrics = &self.inner.metrics;
        while let Some((key, since)) = queue.next().await {
            let span = tracing::info_span!("sync", controller = part.name(), service = %key);
            let started = Instant::now();
            let result = self.sync(part, &key).instrument(span.clone()).await;
            let label = match &result {
                Ok(Outcome::Done) => "ok",
                Ok(Outcome::Stale) => "stale",
                Ok(Outcome::NodesMissing(_)) | Err(_) => "error",
            };
            metrics.synced(part.name(), label, started.elapsed());
            let _enter = span.enter();
            match &result {
                Ok(Outcome::Done) => {}
                // Expected right after our own writes, until their events arrive.
                Ok(Outcome::Stale) => tracing::debug!("cache older than our last write; retrying"),
                Ok(Outcome::NodesMissing(n)) => {
                    tracing::debug!(pods = n, "pods wait for Nodes not yet seen; retrying")
                }
                Err(error) if error.is_conflict() => {
                    tracing::debug!(%error, "conflict; retrying with backoff")
                }
                Err(error) => {
                    tracing::warn!(%error, reason = error.reason(), "sync failed; retrying with backoff")
                }
            }
            let ok = matches!(result, Ok(Outcome::Done));
            queue.done(&key, ok);
            metrics.finished(label, since.elapsed());
        }
    }
}
