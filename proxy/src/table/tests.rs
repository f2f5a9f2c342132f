use std::sync::Arc;

use svcplane_model::{AddressType, ServiceType, SessionAffinity};

use super::*;
use crate::plan::tests::{config, endpoints, service};
use crate::plan::{self};

/// The fragment of one Service on IPv4.
fn fragment_of(svc: &Arc<svcplane_model::Service>, eps: &[(&str, &str, bool)]) -> Fragment {
    let e = endpoints(&svc.key.name, eps);
    let mut p = Plan {
        family: Some(AddressType::V4),
        ..Plan::default()
    };
    plan::service(&mut p, AddressType::V4, &svc.key, svc, Some(&e), &config());
    render::fragment(&p)
}

fn table() -> Table {
    let mut t = Table::new(AddressType::V4);
    t.set_globals(&plan::globals(AddressType::V4, &config()));
    t
}

fn partial(t: &Table) -> String {
    let mut out = String::new();
    t.partial(&mut out).expect("a partial sync is possible");
    out
}

fn full(t: &Table) -> String {
    let mut out = String::new();
    t.full(&mut out);
    out
}

#[test]
fn nothing_committed_means_a_full_sync() {
    let t = table();
    assert!(t.needs_full());
    assert!(t.partial(&mut String::new()).is_none());
}

#[test]
fn a_service_added_writes_only_its_elements() {
    let mut t = table();
    let a = service("a", &["10.96.0.1"], ServiceType::ClusterIp);
    t.set(a.key.clone(), fragment_of(&a, &[("10.244.1.5", "n", true)]));
    t.committed();
    let b = service("b", &["10.96.0.2"], ServiceType::ClusterIp);
    t.set(b.key.clone(), fragment_of(&b, &[("10.244.1.6", "n", true)]));
    let text = partial(&t);
    assert!(!text.contains("delete"), "{text}");
    assert!(
        !text.contains("add chain") && !text.contains("add rule"),
        "{text}"
    );
    assert!(
        text.contains("add element ip svcplane cluster-ips { 10.96.0.2 }"),
        "{text}"
    );
    assert!(
        text.contains("add element ip svcplane cluster-n1-eps { 10.96.0.2 . tcp . 80 . 0 : 10.244.1.6 . 8080, 10.96.0.2 . udp . 53 . 0 : 10.244.1.6 . 5353 }"),
        "{text}"
    );
    assert!(!text.contains("10.96.0.1"), "nothing of a: {text}");
    t.committed();
    assert_eq!(partial(&t), "", "nothing changed since");
}

#[test]
fn an_endpoint_change_replaces_its_bucket_and_a_new_count_gets_its_group() {
    let mut t = table();
    let a = service("a", &["10.96.0.1"], ServiceType::ClusterIp);
    t.set(a.key.clone(), fragment_of(&a, &[("10.244.1.5", "n", true)]));
    t.committed();
    // Same count, other endpoint: the bucket's element is deleted and added again.
    t.set(a.key.clone(), fragment_of(&a, &[("10.244.1.7", "n", true)]));
    let text = partial(&t);
    assert!(text.contains("delete element ip svcplane cluster-n1-eps { 10.96.0.1 . tcp . 80 . 0, 10.96.0.1 . udp . 53 . 0 }"), "{text}");
    assert!(
        text.contains(
            "add element ip svcplane cluster-n1-eps { 10.96.0.1 . tcp . 80 . 0 : 10.244.1.7 . 8080"
        ),
        "{text}"
    );
    assert!(!text.contains("cluster-ips"), "the ClusterIP stays: {text}");
    t.committed();
    // Two endpoints: a new group (set, map, rule in a rewritten services chain), the old one
    // emptied and removed after the rule that named it.
    t.set(
        a.key.clone(),
        fragment_of(&a, &[("10.244.1.7", "n", true), ("10.244.1.8", "n", true)]),
    );
    let text = partial(&t);
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing in:\n{text}"))
    };
    let declared = at("add set ip svcplane cluster-n2 {");
    let flushed = at("flush chain ip svcplane services");
    let rule = at("add rule ip svcplane services ip daddr . meta l4proto . th dport @cluster-n2 ");
    let added = at("add element ip svcplane cluster-n2-eps");
    let removed = at("delete set ip svcplane cluster-n1\n");
    let removed_map = at("delete map ip svcplane cluster-n1-eps");
    assert!(declared < flushed && flushed < rule && rule < added && added < removed);
    assert!(added < removed_map);
    assert!(
        !text.contains("@cluster-n1 "),
        "no rule names the emptied group: {text}"
    );
}

#[test]
fn a_key_claimed_twice_is_written_once_and_handed_over() {
    let mut t = table();
    let mut a = service("a", &["10.96.0.1"], ServiceType::ClusterIp);
    Arc::make_mut(&mut a).external_ips = vec!["192.0.2.100".parse().expect("ip")];
    let mut b = service("b", &["10.96.0.2"], ServiceType::ClusterIp);
    Arc::make_mut(&mut b).external_ips = vec!["192.0.2.100".parse().expect("ip")];
    t.set(b.key.clone(), fragment_of(&b, &[("10.244.2.1", "n", true)]));
    t.set(a.key.clone(), fragment_of(&a, &[("10.244.1.1", "n", true)]));
    let text = full(&t);
    assert!(
        text.contains("192.0.2.100 . tcp . 80 . 0 : 10.244.1.1 . 8080"),
        "a (the lower key) wins: {text}"
    );
    assert!(
        !text.contains("192.0.2.100 . tcp . 80 . 0 : 10.244.2.1"),
        "{text}"
    );
    t.committed();
    t.set(a.key.clone(), Fragment::default());
    let text = partial(&t);
    assert!(text.contains("delete element ip svcplane external-n1-eps { 192.0.2.100 . tcp . 80 . 0, 192.0.2.100 . udp . 53 . 0 }"), "{text}");
    assert!(
        text.contains("192.0.2.100 . tcp . 80 . 0 : 10.244.2.1 . 8080"),
        "b takes over: {text}"
    );
    assert!(
        !text.contains("delete element ip svcplane external-n1 {"),
        "the key stays in the group: {text}"
    );
}

#[test]
fn a_failed_transaction_asks_for_a_full_sync() {
    let mut t = table();
    t.committed();
    assert!(!t.needs_full());
    t.failed();
    assert!(t.needs_full());
    assert!(t.partial(&mut String::new()).is_none());
}

#[test]
fn affinity_gets_chains_and_client_sets_that_partial_syncs_leave_alone() {
    let mut t = table();
    let mut a = service("a", &["10.96.0.1"], ServiceType::ClusterIp);
    Arc::make_mut(&mut a).session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 60,
    };
    let two = [("10.244.1.5", "n", true), ("10.244.1.6", "n", true)];
    t.set(a.key.clone(), fragment_of(&a, &two));
    let text = full(&t);
    for needle in [
        "add set ip svcplane aff-ns/a_http-10.244.1.5-8080-60s { type ipv4_addr; flags dynamic,timeout; timeout 60s; }",
        "add rule ip svcplane aff-ns/a_http-10.244.1.5-8080 update @aff-ns/a_http-10.244.1.5-8080-60s { ip saddr }",
        "add rule ip svcplane aff-ns/a_http-10.244.1.5-8080 meta l4proto tcp dnat ip to 10.244.1.5:8080",
        "add rule ip svcplane aff-ns/a_http-cluster ip saddr @aff-ns/a_http-10.244.1.5-8080-60s goto aff-ns/a_http-10.244.1.5-8080",
        "add rule ip svcplane aff-ns/a_http-cluster numgen random mod 2 vmap { 0 : goto aff-ns/a_http-10.244.1.5-8080, 1 : goto aff-ns/a_http-10.244.1.6-8080 }",
        "add rule ip svcplane services ip daddr . meta l4proto . th dport @cluster-affinity-keys ip daddr . meta l4proto . th dport vmap @cluster-affinity",
        "add element ip svcplane cluster-affinity { 10.96.0.1 . tcp . 80 : goto aff-ns/a_http-cluster,",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }
    assert!(
        !text.contains("cluster-n2"),
        "affinity destinations skip the groups: {text}"
    );
    t.committed();
    // An endpoint goes: its client set and chain go after the chains that named them; the
    // other endpoint's client set is not touched (its clients keep their endpoint).
    t.set(a.key.clone(), fragment_of(&a, &two[..1]));
    let text = partial(&t);
    assert!(
        text.contains("flush chain ip svcplane aff-ns/a_http-cluster\n"),
        "{text}"
    );
    assert!(
        text.contains("delete chain ip svcplane aff-ns/a_http-10.244.1.6-8080\n"),
        "{text}"
    );
    assert!(
        text.contains("delete set ip svcplane aff-ns/a_http-10.244.1.6-8080-60s\n"),
        "{text}"
    );
    assert!(!text.contains("10.244.1.5-8080-60s {"), "kept: {text}");
    assert!(
        text.find("flush chain ip svcplane aff-ns/a_http-cluster")
            < text.find("delete chain ip svcplane aff-ns/a_http-10.244.1.6-8080"),
        "{text}"
    );
    t.committed();
    // The Service goes: everything of it goes.
    t.set(a.key.clone(), Fragment::default());
    let text = partial(&t);
    assert!(
        text.contains("delete chain ip svcplane aff-ns/a_http-cluster\n"),
        "{text}"
    );
    assert!(
        text.contains("delete element ip svcplane cluster-affinity {"),
        "{text}"
    );
}
