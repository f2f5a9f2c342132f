use super::*;
use crate::{AddressType, Conditions, Endpoint};
use k8s_openapi::jiff::Timestamp;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("ns", name)
}

fn slice(name: &str, service: &str, ips: &[&str], ready: bool) -> Arc<EndpointSlice> {
    Arc::new(EndpointSlice {
        key: key(name),
        service: key(service),
        address_type: AddressType::V4,
        ports: vec![],
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.parse().expect("ip")],
                conditions: Conditions {
                    ready: Some(ready),
                    ..Default::default()
                },
                hostname: None,
                node_name: None,
                zone: None,
                hints: None,
                target_pod: None,
            })
            .collect(),
        managed_by: None,
        trigger_time: None,
        resource_version: Some("1".into()),
    })
}

fn keys<V>(changes: &[Change<ObjectKey, V>]) -> Vec<String> {
    sorted_names(changes.iter().map(|c| &c.key))
}

fn service_keys(changes: &[EndpointsChange]) -> Vec<String> {
    sorted_names(changes.iter().map(|c| &c.key))
}

fn sorted_names<'a>(keys: impl Iterator<Item = &'a ObjectKey>) -> Vec<String> {
    let mut k: Vec<_> = keys.map(|k| k.name.to_string()).collect();
    k.sort();
    k
}

fn at(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn triggered(mut s: EndpointSlice, t: &str) -> Arc<EndpointSlice> {
    s.trigger_time = Some(at(t));
    Arc::new(s)
}

#[test]
fn generic_tracker_table() {
    // (steps applied since the last drain, expected (previous, current) or no change)
    type Step = (&'static str, Option<u32>);
    type Expected = Option<(Option<u32>, Option<u32>)>;
    let cases: &[(&[Step], Expected)] = &[
        (&[("a", Some(1))], Some((None, Some(1)))),
        (&[("a", Some(1)), ("a", None)], None),
        (&[("a", Some(1)), ("a", Some(2))], Some((None, Some(2)))),
        (&[("a", None)], None),
    ];
    for (steps, want) in cases {
        let mut t = ChangeTracker::new();
        for (k, v) in *steps {
            t.apply(key(k), *v);
        }
        let changes = t.drain();
        let got = changes.first().map(|c| (c.previous, c.current));
        assert_eq!(got, *want, "{steps:?}");
        assert!(t.drain().is_empty(), "a drain empties the diff");
    }
}

#[test]
fn flips_after_a_drain_cancel_out() {
    let mut t = ChangeTracker::new();
    t.apply(key("a"), Some(1));
    t.drain();
    t.apply(key("a"), Some(2));
    t.apply(key("a"), Some(1));
    assert_eq!(t.pending(), 0);
    t.apply(key("a"), None);
    assert_eq!(
        t.drain(),
        vec![Change {
            key: key("a"),
            previous: Some(1),
            current: None
        }]
    );
    assert!(t.is_empty());
}

#[test]
fn resync_reports_objects_deleted_during_a_relist() {
    let mut t = ChangeTracker::new();
    t.apply(key("a"), Some(1));
    t.apply(key("b"), Some(1));
    t.drain();
    t.resync([(key("b"), 1), (key("c"), 3)]);
    let changes = t.drain();
    assert_eq!(keys(&changes), ["a", "c"], "b is unchanged");
    let a = changes.iter().find(|c| c.key == key("a")).expect("a");
    assert_eq!(a.current, None);
}

#[test]
fn endpoints_are_reported_per_service() {
    let mut t = EndpointsTracker::new();
    t.apply(
        key("web-1"),
        Some(slice("web-1", "web", &["10.0.0.1"], true)),
    );
    t.apply(
        key("web-2"),
        Some(slice("web-2", "web", &["10.0.0.2"], true)),
    );
    t.apply(key("db-1"), Some(slice("db-1", "db", &["10.0.1.1"], true)));
    let changes = t.drain();
    assert_eq!(service_keys(&changes), ["db", "web"]);
    let web = changes.iter().find(|c| c.key == key("web")).expect("web");
    assert_eq!(web.current.as_ref().map(|e| e.slices.len()), Some(2));
    assert_eq!(web.previous, None);
}

#[test]
fn endpoint_flips_that_return_cancel_out() {
    let mut t = EndpointsTracker::new();
    t.apply(
        key("web-1"),
        Some(slice("web-1", "web", &["10.0.0.1"], true)),
    );
    t.drain();
    t.apply(
        key("web-1"),
        Some(slice("web-1", "web", &["10.0.0.1"], false)),
    );
    t.apply(
        key("web-1"),
        Some(slice("web-1", "web", &["10.0.0.1"], true)),
    );
    assert!(t.drain().is_empty());
}

#[test]
fn bookkeeping_only_rewrites_are_no_change() {
    let mut t = EndpointsTracker::new();
    t.apply(
        key("web-1"),
        Some(slice("web-1", "web", &["10.0.0.1"], true)),
    );
    t.drain();
    let mut rewritten = (*slice("web-1", "web", &["10.0.0.1"], true)).clone();
    rewritten.resource_version = Some("2".into());
    rewritten.trigger_time = Some("2026-11-23T10:00:00Z".parse().expect("timestamp"));
    t.apply(key("web-1"), Some(Arc::new(rewritten)));
    assert!(t.drain().is_empty());
}

#[test]
fn deleting_the_last_slice_reports_no_endpoints() {
    let mut t = EndpointsTracker::new();
    t.apply(
        key("web-1"),
        Some(slice("web-1", "web", &["10.0.0.1"], true)),
    );
    t.drain();
    t.apply(key("web-1"), None);
    let changes = t.drain();
    assert_eq!(changes.len(), 1);
    assert!(changes[0].previous.is_some());
    assert_eq!(changes[0].current, None);
    assert_eq!(t.slice_count(), 0);
}

#[test]
fn a_slice_moving_between_services_touches_both() {
    let mut t = EndpointsTracker::new();
    t.apply(key("s-1"), Some(slice("s-1", "old", &["10.0.0.1"], true)));
    t.drain();
    t.apply(key("s-1"), Some(slice("s-1", "new", &["10.0.0.1"], true)));
    let changes = t.drain();
    assert_eq!(service_keys(&changes), ["new", "old"]);
    assert!(t.endpoints(&key("old")).is_none());
}

#[test]
fn endpoint_resync_removes_slices_missing_from_the_list() {
    let mut t = EndpointsTracker::new();
    t.apply(
        key("web-1"),
        Some(slice("web-1", "web", &["10.0.0.1"], true)),
    );
    t.apply(key("db-1"), Some(slice("db-1", "db", &["10.0.1.1"], true)));
    t.drain();
    t.resync([slice("web-1", "web", &["10.0.0.1"], true)]);
    let changes = t.drain();
    assert_eq!(service_keys(&changes), ["db"]);
    assert_eq!(changes[0].current, None);
}

#[test]
fn endpoint_changes_hand_back_their_trigger_times() {
    let mut t = EndpointsTracker::since(at("2026-11-23T09:00:00Z"));
    let web = |ready: bool| (*slice("web-1", "web", &["10.0.0.1"], ready)).clone();
    // Listed at start-up with a time from before the consumer started: not reported.
    t.apply(
        key("web-1"),
        Some(triggered(web(true), "2026-11-23T08:00:00Z")),
    );
    let changes = t.drain();
    assert_eq!(changes.len(), 1);
    assert!(changes[0].trigger_times.is_empty());
    // Two updates that change endpoints: both times, in order.
    t.apply(
        key("web-1"),
        Some(triggered(web(false), "2026-11-23T10:00:00Z")),
    );
    t.apply(
        key("web-1"),
        Some(triggered(web(true), "2026-11-23T10:00:01Z")),
    );
    t.apply(
        key("web-1"),
        Some(triggered(web(false), "2026-11-23T10:00:02Z")),
    );
    let changes = t.drain();
    assert_eq!(
        changes[0].trigger_times,
        [
            at("2026-11-23T10:00:00Z"),
            at("2026-11-23T10:00:01Z"),
            at("2026-11-23T10:00:02Z")
        ]
    );
    // A rewrite that changes no endpoint reports no time; a change that cancels out reports
    // none either (nothing gets programmed for it).
    t.apply(
        key("web-1"),
        Some(triggered(web(false), "2026-11-23T10:00:03Z")),
    );
    t.apply(
        key("web-1"),
        Some(triggered(web(true), "2026-11-23T10:00:04Z")),
    );
    t.apply(
        key("web-1"),
        Some(triggered(web(false), "2026-11-23T10:00:05Z")),
    );
    assert!(t.drain().is_empty());
    t.apply(
        key("web-1"),
        Some(triggered(web(true), "2026-11-23T10:00:06Z")),
    );
    assert_eq!(t.drain()[0].trigger_times, [at("2026-11-23T10:00:06Z")]);
}

#[test]
fn stores_resync_and_keep_what_they_hold() {
    // The informer drives both trackers through `Store`; a re-list through it reports deletions.
    let mut services: ChangeTracker<ObjectKey, u32> = ChangeTracker::new();
    Store::apply(&mut services, key("a"), Some(1));
    Store::apply(&mut services, key("b"), Some(2));
    services.drain();
    Store::resync(&mut services, vec![(key("b"), 2), (key("c"), 3)]);
    assert_eq!(Store::get(&services, &key("c")), Some(3));
    let mut changed = keys(&services.drain());
    changed.sort();
    assert_eq!(changed, ["a", "c"]);

    let mut slices: EndpointsTracker = EndpointsTracker::new();
    let s = slice("web-1", "web", &["10.0.0.1"], true);
    Store::apply(&mut slices, key("web-1"), Some(s.clone()));
    assert!(Store::get(&slices, &key("web-1")).is_some_and(|got| Arc::ptr_eq(&got, &s)));
    Store::resync(&mut slices, vec![]);
    assert!(Store::keys(&slices).is_empty());
}
