use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service as ApiService, ServiceSpec};
use svcplane_model::Service;
use svcplane_model::tracker::ChangeTracker;

use super::*;

fn api(name: &str, ip: &str) -> ApiService {
    ApiService {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn informer(metrics: &WatchMetrics) -> Informer<ApiService, Arc<Service>> {
    Informer::new(
        "Service",
        Box::new(|obj: &ApiService| Service::try_from(obj).map(|s| Some(Arc::new(s)))),
        metrics.clone(),
    )
}

fn ip_of(store: &ChangeTracker<ObjectKey, Arc<Service>>, name: &str) -> Option<String> {
    store
        .get(&ObjectKey::new("ns", name))
        .and_then(|s| s.cluster_ips().first().map(ToString::to_string))
}

fn rejected(metrics: &WatchMetrics) -> u64 {
    metrics
        .rejected
        .with_label_values(&["Service", "invalid_ip"])
        .get()
}

#[test]
fn a_version_that_does_not_convert_keeps_the_last_good_one() {
    let metrics = WatchMetrics::unregistered();
    let mut inf = informer(&metrics);
    let mut store = ChangeTracker::new();
    assert!(
        inf.handle(Event::Apply(api("web", "10.96.0.1")), &mut store)
            .is_none()
    );
    let bad = inf.handle(Event::Apply(api("web", "not-an-ip")), &mut store);
    assert_eq!(bad.map(|r| r.key), Some(ObjectKey::new("ns", "web")));
    assert_eq!(ip_of(&store, "web").as_deref(), Some("10.96.0.1"));
    assert_eq!(rejected(&metrics), 1);

    // Through a re-list too; and a Service deleted meanwhile goes.
    inf.handle(Event::Apply(api("db", "10.96.0.2")), &mut store);
    inf.handle(Event::Init, &mut store);
    assert!(
        inf.handle(Event::InitApply(api("web", "still-bad")), &mut store)
            .is_some()
    );
    inf.handle(Event::InitApply(api("new", "10.96.0.3")), &mut store);
    inf.handle(Event::InitDone, &mut store);
    assert_eq!(ip_of(&store, "web").as_deref(), Some("10.96.0.1"));
    assert_eq!(ip_of(&store, "db"), None);
    assert_eq!(ip_of(&store, "new").as_deref(), Some("10.96.0.3"));
    assert_eq!(rejected(&metrics), 2);
}

#[test]
fn an_object_never_good_is_not_invented_and_synced_follows_the_first_list() {
    let metrics = WatchMetrics::unregistered();
    let mut inf = informer(&metrics);
    let mut store = ChangeTracker::new();
    inf.handle(Event::Init, &mut store);
    inf.handle(Event::InitApply(api("bad", "x")), &mut store);
    assert!(!inf.is_synced());
    inf.handle(Event::InitDone, &mut store);
    assert!(inf.is_synced());
    assert!(store.is_empty());
    inf.handle(Event::Apply(api("bad", "10.96.0.9")), &mut store);
    inf.handle(Event::Delete(api("bad", "10.96.0.9")), &mut store);
    assert!(store.is_empty());
}

#[test]
fn not_of_interest_removes_the_object() {
    let metrics = WatchMetrics::unregistered();
    // Keep only Services with a cluster IP (as DNS keeps only running pods).
    let mut inf: Informer<ApiService, Arc<Service>> = Informer::new(
        "Service",
        Box::new(|obj: &ApiService| {
            Service::try_from(obj).map(|s| s.has_cluster_ip().then(|| Arc::new(s)))
        }),
        metrics,
    );
    let mut store = ChangeTracker::new();
    inf.handle(Event::Apply(api("web", "10.96.0.1")), &mut store);
    inf.handle(Event::Apply(api("web", "None")), &mut store);
    assert!(store.is_empty());
}
