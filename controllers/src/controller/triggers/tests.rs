use super::*;
use crate::testing::{pod, service};

fn at(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn ready_pod(name: &str, since: &str) -> Arc<Pod> {
    Arc::new(Pod {
        ready_since: Some(at(since)),
        ..pod("ns", name, "x", "10.244.0.1")
    })
}

#[test]
fn first_sync_is_the_creation_then_the_earliest_unseen_change() {
    let mut t = TriggerTimes::default();
    let svc = Service {
        created: Some(at("2026-11-23T10:00:00Z")),
        ..service("ns", "web")
    };
    let a = ready_pod("a", "2026-11-23T10:00:05Z");
    assert_eq!(
        t.observe(&svc, std::slice::from_ref(&a)),
        Some(at("2026-11-23T10:00:00Z"))
    );
    // Nothing new: no trigger time.
    assert_eq!(t.observe(&svc, std::slice::from_ref(&a)), None);
    // Two pods turned ready since: the earlier one.
    let b = ready_pod("b", "2026-11-23T10:00:09Z");
    let c = ready_pod("c", "2026-11-23T10:00:07Z");
    assert_eq!(
        t.observe(&svc, &[a, b, c]),
        Some(at("2026-11-23T10:00:07Z"))
    );
    // The Service re-created under the same name: its new creation time counts.
    let again = Service {
        created: Some(at("2026-11-23T11:00:00Z")),
        ..svc.clone()
    };
    assert_eq!(t.observe(&again, &[]), Some(at("2026-11-23T11:00:00Z")));
    t.forget(&svc.key);
    assert_eq!(t.observe(&svc, &[]), Some(at("2026-11-23T10:00:00Z")));
}
