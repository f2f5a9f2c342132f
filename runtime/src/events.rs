//! Kubernetes Events and the object references they point at, for every controller.
//!
//! [`Events`] publishes through kube's `Recorder` (events.k8s.io, with the reporting controller
//! and instance); [`Events::fake`] keeps them in memory for component tests. Publishing never
//! fails a sync: an Event that cannot be written is logged at debug and dropped, as client-go's
//! broadcaster drops them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use svcplane_model::ObjectKey;

/// Where a controller's Events go. Clones share the destination.
#[derive(Clone)]
pub struct Events {
    sink: Sink,
}

#[derive(Clone)]
enum Sink {
    Api(Arc<ApiSink>),
    Fake(FakeEvents),
}

/// kube's `Recorder` folds every Event with the same object, type and reason into one series for
/// six minutes and keeps the *first* note, so a second, different message would be lost. As
/// client-go's correlator does, a repeat of the same message joins its series and a new message
/// starts a new Event: each (object, type, reason) remembers its last note and the recorder that
/// published it, and a changed note gets a fresh recorder.
struct ApiSink {
    client: Client,
    reporter: Reporter,
    last: Mutex<HashMap<SeriesKey, (String, Recorder)>>,
}

/// Which series an Event belongs to (the object by kind, namespace, name and uid).
type SeriesKey = (String, String, String, String, bool, String);

/// Series remembered at most; beyond it the memory starts afresh (a few repeats then start new
/// Events instead of joining their series, which is harmless).
const MAX_SERIES: usize = 10_000;

impl ApiSink {
    fn recorder_for(
        &self,
        about: &ObjectReference,
        warning: bool,
        reason: &str,
        note: &str,
    ) -> Recorder {
        let key = (
            about.kind.clone().unwrap_or_default(),
            about.namespace.clone().unwrap_or_default(),
            about.name.clone().unwrap_or_default(),
            about.uid.clone().unwrap_or_default(),
            warning,
            reason.to_owned(),
        );
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, recorder)) = last.get(&key)
            && seen == note
        {
            return recorder.clone();
        }
        if last.len() >= MAX_SERIES {
            last.clear();
        }
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        last.insert(key, (note.to_owned(), recorder.clone()));
        recorder
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// One Event as [`Events::fake`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub warning: bool,
    pub reason: String,
    pub note: String,
    /// `kind namespace/name` of the object the Event is about.
    pub object: String,
}

/// The in-memory side of [`Events::fake`].
#[derive(Debug, Clone, Default)]
pub struct FakeEvents(Arc<Mutex<Vec<RecordedEvent>>>);

impl FakeEvents {
    /// Everything published so far, oldest first.
    pub fn recorded(&self) -> Vec<RecordedEvent> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Events {
    /// Events written by `controller` (e.g. `svcplane-endpoints`) from replica `instance`.
    pub fn new(client: Client, controller: &str, instance: String) -> Self {
        let reporter = Reporter {
            controller: controller.into(),
            instance: Some(instance),
        };
        Self {
            sink: Sink::Api(Arc::new(ApiSink {
                client,
                reporter,
                last: Mutex::new(HashMap::new()),
            })),
        }
    }

    /// Events kept in memory, for tests.
    pub fn fake() -> (Self, FakeEvents) {
        let fake = FakeEvents::default();
        (
            Self {
                sink: Sink::Fake(fake.clone()),
            },
            fake,
        )
    }

    pub async fn warn(&self, about: &ObjectReference, reason: &str, note: String) {
        self.publish(about, EventType::Warning, reason, note).await;
    }

    pub async fn normal(&self, about: &ObjectReference, reason: &str, note: String) {
        self.publish(about, EventType::Normal, reason, note).await;
    }

    async fn publish(&self, about: &ObjectReference, type_: EventType, reason: &str, note: String) {
        match &self.sink {
            Sink::Api(sink) => {
                let recorder = sink.recorder_for(about, type_ == EventType::Warning, reason, &note);
                let event = Event {
                    type_,
                    reason: reason.into(),
                    note: Some(note),
                    action: "Sync".into(),
                    secondary: None,
                };
                if let Err(error) = recorder.publish(&event, about).await {
                    tracing::debug!(%error, reason, "could not record an event");
                }
            }
            Sink::Fake(fake) => {
                let object = format!(
                    "{} {}/{}",
                    about.kind.as_deref().unwrap_or_default(),
                    about.namespace.as_deref().unwrap_or_default(),
                    about.name.as_deref().unwrap_or_default()
                );
                fake.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(RecordedEvent {
                        warning: type_ == EventType::Warning,
                        reason: reason.into(),
                        note,
                        object,
                    });
            }
        }
    }
}

/// A reference to a namespaced object of the core (`v1`) or another API group.
pub fn reference(
    api_version: &str,
    kind: &str,
    key: &ObjectKey,
    uid: Option<&str>,
) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        namespace: Some(key.namespace.to_string()),
        name: Some(key.name.to_string()),
        uid: uid.map(str::to_owned),
        ..Default::default()
    }
}
