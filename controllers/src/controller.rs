//! The controller process core, along upstream's seams:
//! - [`intake`]: watches feed the indexed [`Cache`] through the runtime's informers and queue
//!   the Services an event touches;
//! - [`workers`]: per leadership term, fresh queues and workers for each of the three
//!   controllers (Endpoints, EndpointSlices, mirroring), as kube-controller-manager runs three;
//! - [`sync`]: one controller's sync of one Service, returning an [`Outcome`];
//! - [`expectations`] and [`triggers`]: the pure bookkeeping syncs rely on;
//! - [`writer`]: the writes, behind a trait with an in-memory fake.

mod expectations;
mod intake;
mod sync;
mod triggers;
pub mod workers;
pub mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use svcplane_model::ObjectKey;
use svcplane_runtime::{Events, Queue, WatchMetrics};
use tokio::sync::watch;

use crate::cache::Cache;
use crate::metrics::Metrics;
use expectations::Expectations;
use triggers::TriggerTimes;
use writer::Writer;

pub use sync::{Outcome, SyncError};

/// `endpoints.kubernetes.io/managed-by` on the Endpoints we write.
pub const ENDPOINTS_MANAGED_BY: &str = "svcplane-endpoints";
pub const LABEL_ENDPOINTS_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
pub const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Endpoints used as leader-election locks are nobody's endpoints.
pub const ANNOTATION_LEADER: &str = "control-plane.alpha.kubernetes.io/leader";

/// The three controllers this process runs in place of kube-controller-manager's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Endpoints,
    Slices,
    Mirror,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Endpoints, Part::Slices, Part::Mirror];

    /// The metric label and log name, as upstream names the controllers.
    pub fn name(self) -> &'static str {
        match self {
            Part::Endpoints => "endpoints",
            Part::Slices => "endpointslice",
            Part::Mirror => "mirroring",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_endpoints_per_slice: usize,
    /// Workers per controller (`--concurrent-endpoint-syncs`,
    /// `--concurrent-service-endpoint-syncs`, `--mirroring-concurrent-service-endpoint-syncs`);
    /// 0 turns that controller off (the EndpointSlice controller always runs).
    pub endpoint_workers: usize,
    pub slice_workers: usize,
    pub mirror_workers: usize,
    pub resync: Duration,
    /// `endpointslice.kubernetes.io/managed-by` of the slices we own.
    pub slice_manager: String,
    /// The same for mirrored slices.
    pub mirror_manager: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_endpoints_per_slice: 100,
            endpoint_workers: 5,
            slice_workers: 5,
            mirror_workers: 5,
            resync: Duration::from_secs(300),
            slice_manager: "endpointslice.svcplane.dev".into(),
            mirror_manager: "endpointslicemirroring.svcplane.dev".into(),
        }
    }
}

impl Settings {
    pub fn workers(&self, part: Part) -> usize {
        match part {
            Part::Endpoints => self.endpoint_workers,
            Part::Slices => self.slice_workers.max(1),
            Part::Mirror => self.mirror_workers,
        }
    }
}

/// Each controller writes through its own writer (in production its own client and rate
/// limiter, as kube-controller-manager gives each controller its own).
#[derive(Clone)]
pub struct Writers {
    pub endpoints: Arc<dyn Writer>,
    pub slices: Arc<dyn Writer>,
    pub mirror: Arc<dyn Writer>,
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers").finish_non_exhaustive()
    }
}

impl Writers {
    pub fn get(&self, part: Part) -> &dyn Writer {
        match part {
            Part::Endpoints => &*self.endpoints,
            Part::Slices => &*self.slices,
            Part::Mirror => &*self.mirror,
        }
    }
}

/// The Controller; clones share it.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    writers: Writers,
    events: Events,
    metrics: Metrics,
    watch_metrics: WatchMetrics,
    cache: Mutex<Cache>,
    slice_expectations: Mutex<Expectations>,
    mirror_expectations: Mutex<Expectations>,
    endpoint_triggers: Mutex<TriggerTimes>,
    slice_triggers: Mutex<TriggerTimes>,
    /// For `topology-mode: Auto` Services: why hints are off (`None`: they are on).
    hints: Mutex<HashMap<ObjectKey, Option<String>>>,
    /// The current leadership term's queues; `None` while not leading.
    queues: Mutex<Option<HashMap<Part, Queue<ObjectKey>>>>,
    /// True once every watch has listed: workers start only then, so no sync acts on a
    /// half-listed cache.
    synced: watch::Sender<bool>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking worker must not wedge the others; the state is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controller {
    pub fn new(
        writers: Writers,
        events: Events,
        settings: Settings,
        metrics: Metrics,
        watch_metrics: WatchMetrics,
    ) -> Self {
        Controller {
            inner: Arc::new(Inner {
                settings,
                writers,
                events,
                metrics,
                watch_metrics,
                cache: Mutex::new(Cache::default()),
                slice_expectations: Mutex::new(Expectations::default()),
                mirror_expectations: Mutex::new(Expectations::default()),
                endpoint_triggers: Mutex::new(TriggerTimes::default()),
                slice_triggers: Mutex::new(TriggerTimes::default()),
                hints: Mutex::new(HashMap::new()),
                queues: Mutex::new(None),
                synced: watch::channel(false).0,
            }),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        lock(&self.inner.cache)
    }

    fn expectations(&self, part: Part) -> MutexGuard<'_, Expectations> {
        match part {
            Part::Mirror => lock(&self.inner.mirror_expectations),
            _ => lock(&self.inner.slice_expectations),
        }
    }

    /// Parts that run with these settings.
    fn parts(&self) -> impl Iterator<Item = Part> + '_ {
        Part::ALL
            .into_iter()
            .filter(|p| self.inner.settings.workers(*p) > 0)
    }

    /// Queues `keys` for the given controllers of the current term; nothing while not leading
    /// (a new term queues everything).
    fn enqueue(&self, parts: &[Part], keys: impl IntoIterator<Item = ObjectKey>) {
        let queues = lock(&self.inner.queues);
        let Some(queues) = queues.as_ref() else {
            return;
        };
        for key in keys {
            for part in parts {
                if let Some(q) = queues.get(part) {
                    q.add(key.clone());
                }
            }
        }
        let depth = queues.values().map(Queue::len).sum();
        self.inner.metrics.queue(depth);
    }

    /// Queues every Service and every Endpoints (leftovers and mirrors) for every controller.
    pub fn enqueue_all(&self) {
        let keys: Vec<ObjectKey> = {
            let cache = self.cache();
            let mut keys: HashSet<ObjectKey> = cache.services().cloned().collect();
            keys.extend(cache.endpoints_keys().cloned());
            keys.extend(cache.slice_services().cloned());
            keys.into_iter().collect()
        };
        self.enqueue(&Part::ALL, keys);
    }
}

#[cfg(test)]
mod tests;
