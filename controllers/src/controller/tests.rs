//! The sync paths and leadership terms against in-memory writers: no API server.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use prometheus::Registry;
use svcplane_model::{Node, ObjectKey, Service};
use svcplane_runtime::events::FakeEvents;
use svcplane_runtime::{Events, WatchMetrics};
use tokio::sync::watch;

use super::writer::FakeWriter;
use super::*;
use crate::metrics::Metrics;
use crate::testing::{pod, service};

struct Fixture {
    controller: Controller,
    endpoints: FakeWriter,
    slices: FakeWriter,
    events: FakeEvents,
}

fn web() -> ObjectKey {
    ObjectKey::new("ns", "web")
}

/// A controller whose cache holds Service `ns/web` selecting one ready pod on a known Node, and
/// counts as synced.
fn fixture() -> Fixture {
    let endpoints = FakeWriter::new();
    let slices = FakeWriter::new();
    let (events, recorded) = Events::fake();
    let writers = Writers {
        endpoints: Arc::new(endpoints.clone()),
        slices: Arc::new(slices.clone()),
        mirror: Arc::new(FakeWriter::new()),
    };
    let settings = Settings {
        endpoint_workers: 1,
        slice_workers: 1,
        mirror_workers: 1,
        ..Settings::default()
    };
    let metrics = Metrics::register(&Registry::new()).expect("metrics");
    let controller = Controller::new(
        writers,
        events,
        settings,
        metrics,
        WatchMetrics::unregistered(),
    );
    {
        let mut cache = controller.cache();
        cache.apply_node(
            "node-1",
            Some(Arc::new(Node {
                name: "node-1".into(),
                zone: Some("zone-a".into()),
                addresses: vec![],
                allocatable_cpu_millis: Some(1000),
                ready: true,
                control_plane: false,
                pod_cidrs: Vec::new(),
            })),
        );
        cache.apply_service(web(), Some(Arc::new(service("ns", "web"))));
        let p = pod("ns", "web-0", "web", "10.244.0.5");
        cache.apply_pod(p.key.clone(), Some(Arc::new(p)));
    }
    controller.inner.synced.send_replace(true);
    Fixture {
        controller,
        endpoints,
        slices,
        events: recorded,
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn addresses(f: &Fixture) -> Vec<String> {
    f.endpoints
        .endpoints(&web())
        .and_then(|ep| ep.subsets)
        .into_iter()
        .flatten()
        .flat_map(|s| s.addresses.unwrap_or_default())
        .map(|a| a.ip)
        .collect()
}

/// A leading controller whose first Endpoints write (of ns/web) has started and is held
/// mid-write; then the lease goes. The gate releases held writes.
async fn leading_with_a_held_write() -> (
    Fixture,
    Arc<tokio::sync::Semaphore>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let f = fixture();
    let gate = f.endpoints.hold();
    let (leader, leading) = watch::channel(true);
    let work = {
        let c = f.controller.clone();
        tokio::spawn(async move { c.work(leading, std::future::pending()).await })
    };
    eventually("the first write to start", || f.endpoints.entered() >= 1).await;
    leader.send_replace(false);
    (f, gate, leader, work)
}

/// Regression: a sync interrupted by a lost lease left its key "in progress" in the one
/// shared queue, so after the lease came back every later add of that key was parked behind
/// it and the Service was never synced again.
#[tokio::test]
async fn a_key_interrupted_by_a_lost_lease_is_synced_in_the_next_term() {
    let (f, gate, leader, work) = leading_with_a_held_write().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.send_replace(true);
    // The next term syncs the same key again (a second write begins) ...
    eventually("the next term's write to start", || {
        f.endpoints.entered() >= 2
    })
    .await;
    gate.add_permits(100);
    // ... and it lands.
    eventually("the Endpoints to be written", || !addresses(&f).is_empty()).await;
    assert_eq!(addresses(&f), ["10.244.0.5"]);
    work.abort();
}

#[tokio::test]
async fn a_term_that_ends_stops_writing() {
    let (f, gate, _leader, work) = leading_with_a_held_write().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.add_permits(100);
    // New events while following queue nothing.
    f.controller.enqueue_all();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(f.endpoints.calls().is_empty(), "{:?}", f.endpoints.calls());
    assert!(addresses(&f).is_empty());
    work.abort();
}

#[tokio::test]
async fn a_second_sync_of_an_unchanged_service_writes_nothing() {
    let f = fixture();
    for part in [Part::Endpoints, Part::Slices] {
        let first = f.controller.sync(part, &web()).await.expect("sync");
        assert_eq!(first, Outcome::Done);
    }
    assert_eq!(f.endpoints.calls().len(), 1);
    assert_eq!(f.slices.calls().len(), 1);
    for part in [Part::Endpoints, Part::Slices] {
        assert_eq!(
            f.controller.sync(part, &web()).await.expect("sync"),
            Outcome::Done
        );
    }
    assert_eq!(f.endpoints.calls().len(), 1, "{:?}", f.endpoints.calls());
    assert_eq!(f.slices.calls().len(), 1, "{:?}", f.slices.calls());
}

#[tokio::test]
async fn a_cache_older_than_our_own_write_is_stale_and_writes_nothing() {
    let f = fixture();
    f.controller.sync(Part::Slices, &web()).await.expect("sync");
    let written: EndpointSlice = f.slices.slices().pop().expect("a slice");
    // The cache goes back to an older generation of our slice (as a late watch event would
    // before the intake learned to ignore those).
    let mut older = written.clone();
    older.metadata.generation = Some(0);
    let key = ObjectKey::of(&older);
    f.controller.cache().apply_slice(key, Some(Arc::new(older)));
    // A change arrives: the pod goes away.
    f.controller
        .cache()
        .apply_pod(ObjectKey::new("ns", "web-0"), None);
    let outcome = f.controller.sync(Part::Slices, &web()).await.expect("sync");
    assert_eq!(outcome, Outcome::Stale);
    assert_eq!(f.slices.calls().len(), 1, "only the first write");
}

#[tokio::test]
async fn a_conflict_is_a_named_error_and_the_retry_converges() {
    let f = fixture();
    f.endpoints
        .fail_next(409, "Conflict", "the object has been modified");
    let error = f
        .controller
        .sync(Part::Endpoints, &web())
        .await
        .expect_err("conflict");
    assert_eq!(error.reason(), "conflict");
    assert_eq!((error.verb, error.resource), ("create", "endpoints"));
    assert_eq!(error.object, web());
    assert!(
        error.to_string().contains("create endpoints ns/web"),
        "{error}"
    );
    assert_eq!(
        f.controller
            .sync(Part::Endpoints, &web())
            .await
            .expect("retry"),
        Outcome::Done
    );
    assert_eq!(addresses(&f), ["10.244.0.5"]);
}

#[tokio::test]
async fn a_failed_write_records_a_warning_event() {
    let f = fixture();
    f.endpoints
        .fail_next(500, "InternalError", "etcdserver: request timed out");
    let error = f
        .controller
        .sync(Part::Endpoints, &web())
        .await
        .expect_err("failure");
    assert_eq!(error.reason(), "server_error");
    let events = f.events.recorded();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].warning);
    assert_eq!(events[0].reason, "FailedToCreateEndpoint");
    assert_eq!(events[0].object, "Endpoints ns/web");
}

#[tokio::test]
async fn a_terminating_namespace_is_not_an_error() {
    let f = fixture();
    f.endpoints.terminate_namespace("ns");
    f.slices.terminate_namespace("ns");
    for part in [Part::Endpoints, Part::Slices] {
        assert_eq!(
            f.controller.sync(part, &web()).await.expect("no error"),
            Outcome::Done,
            "{part:?}"
        );
    }
    assert!(f.endpoints.endpoints(&web()).is_none());
    assert!(f.slices.slices().is_empty());
    assert!(f.events.recorded().is_empty(), "{:?}", f.events.recorded());
}

#[tokio::test]
async fn a_deleted_service_takes_its_endpoints_and_slices_along() {
    let f = fixture();
    for part in [Part::Endpoints, Part::Slices] {
        f.controller.sync(part, &web()).await.expect("sync");
    }
    f.controller
        .cache()
        .apply_service(web(), None::<Arc<Service>>);
    for part in [Part::Endpoints, Part::Slices] {
        f.controller.sync(part, &web()).await.expect("sync");
    }
    assert!(f.endpoints.endpoints(&web()).is_none());
    assert!(f.slices.slices().is_empty());
}

#[tokio::test]
async fn pods_on_unknown_nodes_are_retried() {
    let f = fixture();
    f.controller.cache().apply_node("node-1", None);
    let outcome = f.controller.sync(Part::Slices, &web()).await.expect("sync");
    assert_eq!(outcome, Outcome::NodesMissing(1));
}

/// A watch event for our own earlier write that arrives after a later write was written
/// through to the cache must not take the cache back: the next sync would find it older than
/// its own write (stale) or conflict on the resourceVersion, and wait out a backoff.
#[tokio::test]
async fn a_late_event_of_our_own_earlier_write_does_not_regress_the_cache() {
    let f = fixture();
    f.controller
        .sync(Part::Endpoints, &web())
        .await
        .expect("first write");
    let first = f.endpoints.endpoints(&web()).expect("written");
    // A second write (a pod added), written through to the cache.
    let p = pod("ns", "web-1", "web", "10.244.0.6");
    f.controller
        .cache()
        .apply_pod(p.key.clone(), Some(Arc::new(p)));
    f.controller
        .sync(Part::Endpoints, &web())
        .await
        .expect("second write");
    let second = f.endpoints.endpoints(&web()).expect("written");
    assert_ne!(
        first.metadata.resource_version,
        second.metadata.resource_version
    );
    // The first write's watch event arrives late.
    let mut informers = f.controller.informers();
    f.controller.handle(
        &mut informers,
        intake::Update::Endpoints(Box::new(kube::runtime::watcher::Event::Apply(first))),
    );
    let cached = f
        .controller
        .cache()
        .endpoints(&web())
        .cloned()
        .expect("cached");
    assert_eq!(
        cached.metadata.resource_version,
        second.metadata.resource_version
    );
    // So the next sync is a no-op, not a conflict.
    let calls = f.endpoints.calls().len();
    assert_eq!(
        f.controller
            .sync(Part::Endpoints, &web())
            .await
            .expect("sync"),
        Outcome::Done
    );
    assert_eq!(f.endpoints.calls().len(), calls);
}

/// Regression (found by the endpoints differential test in the fault-suite session): a slice
/// we wrote and someone else deleted (the garbage collector, after the Service was re-created
/// under the same name before we synced it) stayed "expected", so every later sync of the
/// Service was stale and its slices were never written again.
#[tokio::test]
async fn a_slice_deleted_by_someone_else_is_written_again() {
    let f = fixture();
    f.controller.sync(Part::Slices, &web()).await.expect("sync");
    let written: EndpointSlice = f.slices.slices().pop().expect("a slice");
    f.slices.remove_slice(&ObjectKey::of(&written));
    let mut informers = f.controller.informers();
    f.controller.handle(
        &mut informers,
        intake::Update::Slice(Box::new(kube::runtime::watcher::Event::Delete(written))),
    );
    let outcome = f.controller.sync(Part::Slices, &web()).await.expect("sync");
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(f.slices.slices().len(), 1, "{:?}", f.slices.calls());
}
