use std::collections::HashSet;
use std::sync::Arc;

use svcplane_model::{Labels, ObjectKey, Pod, Selector, Service};

use super::*;
use crate::testing::{labels, pod, service};

fn keys(v: Vec<ObjectKey>) -> HashSet<String> {
    v.into_iter().map(|k| k.to_string()).collect()
}

fn selecting(name: &str, pairs: &[(&str, &str)]) -> Arc<Service> {
    Arc::new(Service {
        selector: Selector::new(labels(pairs)),
        ..service("ns", name)
    })
}

fn labelled(name: &str, l: Labels) -> Arc<Pod> {
    Arc::new(Pod {
        labels: l,
        ..pod("ns", name, "x", "10.244.0.1")
    })
}

#[test]
fn a_pod_event_reaches_only_the_services_that_select_it() {
    let mut cache = Cache::default();
    cache.apply_service(
        ObjectKey::new("ns", "web"),
        Some(selecting("web", &[("app", "web")])),
    );
    cache.apply_service(
        ObjectKey::new("ns", "web-canary"),
        Some(selecting(
            "web-canary",
            &[("app", "web"), ("track", "canary")],
        )),
    );
    cache.apply_service(
        ObjectKey::new("ns", "db"),
        Some(selecting("db", &[("app", "db")])),
    );
    cache.apply_service(
        ObjectKey::new("other", "web"),
        Some(Arc::new(service("other", "web"))),
    );
    let key = ObjectKey::new("ns", "p");
    let stable = labelled("p", labels(&[("app", "web"), ("track", "stable")]));
    assert_eq!(
        keys(cache.apply_pod(key.clone(), Some(stable.clone()))),
        HashSet::from(["ns/web".to_string()])
    );
    // An identical update touches nothing.
    assert!(cache.apply_pod(key.clone(), Some(stable)).is_empty());
    // Labels changing: the Services selecting it before and after.
    let canary = labelled("p", labels(&[("app", "web"), ("track", "canary")]));
    assert_eq!(
        keys(cache.apply_pod(key.clone(), Some(canary))),
        HashSet::from(["ns/web".to_string(), "ns/web-canary".to_string()])
    );
    let db = labelled("p", labels(&[("app", "db")]));
    assert_eq!(
        keys(cache.apply_pod(key.clone(), Some(db))),
        HashSet::from([
            "ns/web".to_string(),
            "ns/web-canary".to_string(),
            "ns/db".to_string()
        ])
    );
    assert_eq!(
        keys(cache.apply_pod(key, None)),
        HashSet::from(["ns/db".to_string()])
    );
}

#[test]
fn pods_for_a_service_come_from_the_label_index() {
    let mut cache = Cache::default();
    let svc = selecting("web-canary", &[("app", "web"), ("track", "canary")]);
    cache.apply_service(svc.key.clone(), Some(svc.clone()));
    for (name, l) in [
        ("a", labels(&[("app", "web"), ("track", "canary")])),
        ("b", labels(&[("app", "web"), ("track", "stable")])),
        ("c", labels(&[("track", "canary")])),
    ] {
        cache.apply_pod(ObjectKey::new("ns", name), Some(labelled(name, l)));
    }
    let found: Vec<_> = cache
        .pods_for(&svc)
        .iter()
        .map(|p| p.key.name.to_string())
        .collect();
    assert_eq!(found, ["a"]);
    // A selector that matches nothing finds nothing.
    let none = selecting("none", &[("app", "nothing")]);
    assert!(cache.pods_for(&none).is_empty());
}

#[test]
fn a_relabelled_service_is_found_under_its_new_selector_only() {
    let mut cache = Cache::default();
    let key = ObjectKey::new("ns", "web");
    cache.apply_service(key.clone(), Some(selecting("web", &[("app", "web")])));
    cache.apply_service(key.clone(), Some(selecting("web", &[("app", "api")])));
    let p = labelled("p", labels(&[("app", "web")]));
    assert!(
        cache
            .apply_pod(ObjectKey::new("ns", "p"), Some(p))
            .is_empty()
    );
    let q = labelled("q", labels(&[("app", "api")]));
    assert_eq!(
        keys(cache.apply_pod(ObjectKey::new("ns", "q"), Some(q))),
        HashSet::from(["ns/web".to_string()])
    );
    cache.apply_service(key, None);
    assert!(cache.apply_pod(ObjectKey::new("ns", "q"), None).is_empty());
}
