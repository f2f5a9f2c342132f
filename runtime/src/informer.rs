//! The one watch intake every svcplane component uses: watch events → conversion into model
//! values → a [`Store`] (a change tracker, or a consumer's indexed cache).
//!
//! What it adds over feeding the store directly:
//! - an object whose newer version does not convert keeps its last good version, on live
//!   updates and through re-lists alike; the rejection is logged with its reason, counted in
//!   `svcplane_watch_rejected_objects_total{kind,reason}`, and handed back so a controller can
//!   record an Event;
//! - a re-list replaces the store's content, so objects deleted while the watch was down are
//!   removed;
//! - [`Informer::is_synced`] turns true once the first list has been applied.
//!
//! The informer is synchronous and I/O-free (the stream comes from [`crate::watch`]), so its
//! rules are unit-tested without an API server.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use prometheus::{IntCounterVec, Opts, Registry};
use svcplane_model::ObjectKey;
use svcplane_model::tracker::Store;

/// Turns an API object into what the store keeps: `Ok(None)` means "not of interest" (kept
/// out of the store, e.g. a finished pod), `Err` a malformed object.
pub type Convert<A, V> = Box<dyn Fn(&A) -> Result<Option<V>, svcplane_model::Error> + Send + Sync>;

/// `svcplane_watch_rejected_objects_total`, shared by every informer of a process.
#[derive(Debug, Clone)]
pub struct WatchMetrics {
    rejected: IntCounterVec,
}

impl WatchMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let rejected = IntCounterVec::new(
            Opts::new(
                "svcplane_watch_rejected_objects_total",
                "Watched objects ignored because they do not convert, per kind and reason; the last good version stays in use.",
            ),
            &["kind", "reason"],
        )?;
        registry.register(Box::new(rejected.clone()))?;
        Ok(Self { rejected })
    }

    /// Metrics registered nowhere, for tests.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).unwrap_or_else(|_| unreachable!("a fresh registry"))
    }
}

/// An object that did not convert; the store still holds its previous version, if any.
#[derive(Debug)]
pub struct Rejected {
    pub kind: &'static str,
    pub key: ObjectKey,
    pub error: svcplane_model::Error,
}

/// One watch's intake. See the module docs.
pub struct Informer<A, V> {
    kind: &'static str,
    convert: Convert<A, V>,
    /// `Some` while a (re-)list is being received.
    listing: Option<Vec<(ObjectKey, V)>>,
    synced: bool,
    metrics: WatchMetrics,
}

impl<A, V> std::fmt::Debug for Informer<A, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("kind", &self.kind)
            .field("synced", &self.synced)
            .finish_non_exhaustive()
    }
}

impl<A, V> Informer<A, V>
where
    A: k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    /// `kind` names the objects in logs and metrics (`Service`, `Pod`, ...).
    pub fn new(kind: &'static str, convert: Convert<A, V>, metrics: WatchMetrics) -> Self {
        Self {
            kind,
            convert,
            listing: None,
            synced: false,
            metrics,
        }
    }

    /// True once the first list has been applied to the store.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Applies one watch event to `store`.
    pub fn handle<S: Store<Value = V>>(
        &mut self,
        event: Event<A>,
        store: &mut S,
    ) -> Option<Rejected> {
        match event {
            Event::Apply(obj) => {
                let key = ObjectKey::of(&obj);
                match (self.convert)(&obj) {
                    Ok(value) => store.apply(key, value),
                    // The previous version stays in the store untouched.
                    Err(error) => return Some(self.reject(key, error)),
                }
            }
            Event::Delete(obj) => store.apply(ObjectKey::of(&obj), None),
            Event::Init => self.listing = Some(Vec::new()),
            Event::InitApply(obj) => {
                let key = ObjectKey::of(&obj);
                let converted = (self.convert)(&obj);
                let listing = self.listing.get_or_insert_with(Vec::new);
                match converted {
                    Ok(Some(value)) => listing.push((key, value)),
                    Ok(None) => {}
                    Err(error) => {
                        // Keep the last good version through the re-list too.
                        if let Some(old) = store.get(&key) {
                            listing.push((key.clone(), old));
                        }
                        return Some(self.reject(key, error));
                    }
                }
            }
            Event::InitDone => {
                store.resync(self.listing.take().unwrap_or_default());
                if !self.synced {
                    tracing::debug!(kind = self.kind, "listed");
                }
                self.synced = true;
            }
        }
        None
    }

    fn reject(&self, key: ObjectKey, error: svcplane_model::Error) -> Rejected {
        tracing::warn!(kind = self.kind, object = %key, reason = error.reason(), %error, "ignoring an object that does not convert; its last good version stays in use");
        self.metrics
            .rejected
            .with_label_values(&[self.kind, error.reason()])
            .inc();
        Rejected {
            kind: self.kind,
            key,
            error,
        }
    }
}

#[cfg(test)]
mod tests;
