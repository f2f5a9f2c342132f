use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::Event;
use svcplane_model::tracker::Store;
use svcplane_model::{IpFamily, IpFamilyPolicy, Labels, ObjectKey, Protocol, Selector};

use super::crd::{self, LoadBalancerIPPool, LoadBalancerIPPoolSpec, ServiceAllocation};
use super::pool::{Allocation, LabelSelector, Range};
use super::service::{Backend, convert, parse_requested};
use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

fn svc(ns: &str, name: &str) -> LbService {
    LbService::new(ns, name)
}

fn tcp(ports: &[u16]) -> Vec<(Protocol, u16)> {
    ports.iter().map(|p| (Protocol::Tcp, *p)).collect()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, *v)).collect()
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::parse(&crd::LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        match_expressions: Vec::new(),
    })
    .expect("valid selector")
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("timestamp")
}

fn ipam(pools: Vec<Pool>) -> Ipam {
    let mut ipam = Ipam::new();
    for p in pools {
        ipam.set_pool(p);
    }
    ipam
}

/// Adds (or replaces) a Service and reconciles it.
fn add(ipam: &mut Ipam, s: LbService) -> Outcome {
    let k = s.key.clone();
    ipam.set_service(s);
    ipam.reconcile(&k)
}

fn assigned(ipam: &mut Ipam, s: LbService) -> Vec<IpAddr> {
    let name = s.key.to_string();
    let out = add(ipam, s);
    assert!(out.problem.is_none(), "{name}: {:?}", out.problem);
    out.ips
}

fn refused(ipam: &mut Ipam, s: LbService) -> Refusal {
    let name = s.key.to_string();
    let out = add(ipam, s);
    assert!(out.ips.is_empty(), "{name} got {:?}", out.ips);
    out.problem.unwrap_or_else(|| panic!("{name}: no refusal"))
}

// ---- ranges and pools ----

#[test]
fn ranges_parse_cidrs_and_ranges() {
    let ok = [
        ("192.0.2.0/28", "192.0.2.0-192.0.2.15", 16u128),
        ("192.0.2.7/32", "192.0.2.7-192.0.2.7", 1),
        (" 192.0.2.10 - 192.0.2.20 ", "192.0.2.10-192.0.2.20", 11),
        ("192.0.2.5-192.0.2.5", "192.0.2.5-192.0.2.5", 1),
        ("2001:db8::/120", "2001:db8::-2001:db8::ff", 256),
        ("2001:db8::1-2001:db8::3", "2001:db8::1-2001:db8::3", 3),
        (
            "2001:db8::/64",
            "2001:db8::-2001:db8::ffff:ffff:ffff:ffff",
            1 << 64,
        ),
        (
            "::/0",
            "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            u128::MAX,
        ),
    ];
    for (input, want, count) in ok {
        let r = Range::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(r.to_string(), want, "{input}");
        assert_eq!(r.count(), count, "{input}");
    }
    let bad = [
        ("192.0.2.0", "not a CIDR or an address range"),
        ("192.0.2.1/24", "host bits"),
        ("192.0.2.0/33", "not a CIDR"),
        ("192.0.2.9-192.0.2.1", "ends before it starts"),
        ("192.0.2.1-2001:db8::1", "mixes IPv4 and IPv6"),
        ("192.0.2.1-foo", "\"foo\" is not an IP address"),
        ("", "not a CIDR"),
        ("banana", "not a CIDR"),
    ];
    for (input, want) in bad {
        let err = Range::parse(input).expect_err(input);
        assert!(err.contains(want), "{input}: {err}");
    }
}

#[test]
fn buggy_addresses_are_counted_without_walking() {
    for (range, want) in [
        ("192.0.2.0/24", 2u128),
        ("192.0.2.1-192.0.2.254", 0),
        ("192.0.2.255-192.0.3.0", 2),
        ("192.0.0.0/16", 512),
        ("0.0.0.0/0", 1 << 25),
        ("192.0.2.0/32", 1),
        ("2001:db8::/120", 0),
    ] {
        let r = Range::parse(range).expect(range);
        assert_eq!(r.buggy(), want, "{range}");
        if r.count() < 100_000 {
            let brute = (r.start..=r.end)
                .filter(|n| pool::is_buggy(r.family, *n))
                .count() as u128;
            assert_eq!(brute, want, "{range} by brute force");
        }
    }
}

#[test]
fn pool_errors_are_collected_and_other_entries_kept() {
    let p = Pool::new("p", &["192.0.2.0/30", "nonsense", "192.0.2.2-192.0.2.5"]);
    assert_eq!(p.ranges.len(), 1);
    assert_eq!(p.errors.len(), 2, "{:?}", p.errors);
    assert!(p.errors[0].contains("nonsense"));
    assert!(p.errors[1].contains("overlaps"));
    assert_eq!(Pool::new("empty", &[]).errors, ["no addresses"]);

    let bad_selector = Pool::from_spec(
        "sel",
        &LoadBalancerIPPoolSpec {
            addresses: vec!["192.0.2.0/30".into()],
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: Some(ServiceAllocation {
                service_selectors: vec![crd::LabelSelector {
                    match_labels: BTreeMap::new(),
                    match_expressions: vec![crd::LabelSelectorRequirement {
                        key: "app".into(),
                        operator: "Near".into(),
                        values: vec![],
                    }],
                }],
                ..Default::default()
            }),
        },
    );
    assert!(bad_selector.errors[0].contains("unknown operator"));
}

#[test]
fn a_broken_pool_gives_nothing_new_and_other_pools_still_work() {
    let mut ipam = ipam(vec![
        Pool::new("broken", &["192.0.2.0/30", "192.0.2.300/32"]),
        Pool::new("good", &["198.51.100.0/30"]),
    ]);
    assert_eq!(assigned(&mut ipam, svc("a", "x")), ips(&["198.51.100.0"]));
    assert!(
        ipam.pool_error("broken")
            .is_some_and(|e| e.contains("192.0.2.300"))
    );
    assert_eq!(ipam.pool_error("good"), None);
    // Naming it, or requesting one of its addresses, is refused with the pool's error.
    let named = refused(
        &mut ipam,
        LbService {
            pool: Some("broken".into()),
            ..svc("a", "named")
        },
    );
    assert_eq!(named.reason(), "pool_invalid");
    let requested = refused(
        &mut ipam,
        LbService {
            requested: Requested::Ips(ips(&["192.0.2.1"])),
            ..svc("a", "req")
        },
    );
    assert_eq!(requested.reason(), "pool_invalid");
}

#[test]
fn a_pool_turning_broken_keeps_its_services_but_gives_out_nothing() {
    let mut ipam = ipam(vec![Pool::new("p", &["192.0.2.0/30"])]);
    assert_eq!(assigned(&mut ipam, svc("a", "x")), ips(&["192.0.2.0"]));
    ipam.set_pool(Pool::new("p", &["192.0.2.0/30", "typo"]));
    // Sticky through the typo.
    assert_eq!(ipam.reconcile(&key("a", "x")).ips, ips(&["192.0.2.0"]));
    assert_eq!(
        refused(&mut ipam, svc("a", "y")).reason(),
        "no_matching_pool"
    );
}

#[test]
fn overlapping_pools_the_older_keeps_the_addresses() {
    let mut ipam = ipam(vec![
        Pool::new("young", &["192.0.2.0/29"]).with_created(ts(2_000)),
        Pool::new("old", &["192.0.2.4/30", "198.51.100.0/30"]).with_created(ts(1_000)),
    ]);
    assert_eq!(ipam.pool_of(ip("192.0.2.5")), Some("old"));
    assert_eq!(ipam.pool_of(ip("198.51.100.1")), Some("old"));
    assert_eq!(
        ipam.pool_of(ip("192.0.2.1")),
        None,
        "young lost its whole range"
    );
    let err = ipam.pool_error("young").expect("young reports the overlap");
    assert!(
        err.contains("overlaps") && err.contains("pool old"),
        "{err}"
    );
    assert_eq!(ipam.pool_error("old"), None);
    // Deleting the old pool gives the range back to the young one.
    ipam.remove_pool("old");
    assert_eq!(ipam.pool_of(ip("192.0.2.5")), Some("young"));
    assert_eq!(ipam.pool_error("young"), None);
}

#[test]
fn label_selectors() {
    let expr = |key: &str, op: &str, values: &[&str]| crd::LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    };
    let sel = |labels: &[(&str, &str)], exprs: Vec<crd::LabelSelectorRequirement>| {
        LabelSelector::parse(&crd::LabelSelector {
            match_labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            match_expressions: exprs,
        })
        .expect("valid")
    };
    let web_prod = labels(&[("app", "web"), ("env", "prod")]);
    let cases = [
        (sel(&[], vec![]), true),
        (sel(&[("app", "web")], vec![]), true),
        (sel(&[("app", "db")], vec![]), false),
        (sel(&[], vec![expr("env", "In", &["prod", "dev"])]), true),
        (sel(&[], vec![expr("env", "In", &["dev"])]), false),
        (sel(&[], vec![expr("env", "NotIn", &["dev"])]), true),
        (sel(&[], vec![expr("tier", "NotIn", &["x"])]), true),
        (sel(&[], vec![expr("env", "Exists", &[])]), true),
        (sel(&[], vec![expr("tier", "Exists", &[])]), false),
        (sel(&[], vec![expr("tier", "DoesNotExist", &[])]), true),
        (
            sel(&[("app", "web")], vec![expr("env", "DoesNotExist", &[])]),
            false,
        ),
    ];
    for (i, (s, want)) in cases.iter().enumerate() {
        assert_eq!(s.matches(&web_prod), *want, "case {i}: {s:?}");
    }
    for bad in [
        expr("a", "In", &[]),
        expr("a", "Exists", &["x"]),
        expr("a", "Like", &["x"]),
    ] {
        assert!(
            LabelSelector::parse(&crd::LabelSelector {
                match_labels: BTreeMap::new(),
                match_expressions: vec![bad.clone()],
            })
            .is_err(),
            "{bad:?}"
        );
    }
}

// ---- which pool ----

#[test]
fn candidate_pools_by_selectors_priority_and_auto_assign() {
    let alloc = |priority: Option<i32>| Allocation {
        priority,
        ..Default::default()
    };
    let base = || {
        ipam(vec![
            Pool::new("a-plain", &["192.0.2.0/32"]),
            Pool::new("b-prio20", &["192.0.2.1/32"]).with_allocation(alloc(Some(20))),
            Pool::new("c-prio10", &["192.0.2.2/32"]).with_allocation(alloc(Some(10))),
            Pool::new("d-prio0", &["192.0.2.3/32"]).with_allocation(alloc(Some(0))),
            Pool::new("e-manual", &["192.0.2.4/32"])
                .with_auto_assign(false)
                .with_allocation(alloc(Some(1))),
            Pool::new("f-team", &["192.0.2.5/32"]).with_allocation(Allocation {
                priority: Some(5),
                namespaces: vec!["team".into()],
                ..Default::default()
            }),
        ])
    };
    // Priority first (10 before 20), then the unprioritised ones (0 counts as unset) by name;
    // the manual pool is never picked automatically.
    let mut ipam = base();
    let order: Vec<IpAddr> = (0..4)
        .map(|i| assigned(&mut ipam, svc("other", &format!("s{i}")))[0])
        .collect();
    assert_eq!(
        order,
        ips(&["192.0.2.2", "192.0.2.1", "192.0.2.0", "192.0.2.3"])
    );
    assert_eq!(
        refused(&mut ipam, svc("other", "s4")).reason(),
        "pools_full"
    );

    // The namespace-pinned pool comes first for its namespace only.
    let mut ipam = base();
    assert_eq!(assigned(&mut ipam, svc("team", "x")), ips(&["192.0.2.5"]));
    assert_eq!(assigned(&mut ipam, svc("other", "y")), ips(&["192.0.2.2"]));

    // Naming the manual pool uses it.
    let mut ipam = base();
    let named = LbService {
        pool: Some("e-manual".into()),
        ..svc("other", "m")
    };
    assert_eq!(assigned(&mut ipam, named), ips(&["192.0.2.4"]));
    let unknown = LbService {
        pool: Some("nope".into()),
        ..svc("other", "u")
    };
    assert_eq!(refused(&mut ipam, unknown).reason(), "unknown_pool");
    let not_allowed = LbService {
        pool: Some("f-team".into()),
        ..svc("other", "n")
    };
    assert_eq!(refused(&mut ipam, not_allowed).reason(), "pool_not_allowed");
}

#[test]
fn namespace_and_service_selectors() {
    let mut ipam = ipam(vec![Pool::new("prod", &["192.0.2.0/30"]).with_allocation(
        Allocation {
            namespace_selectors: vec![selector(&[("env", "prod")])],
            namespaces: vec!["legacy".into()],
            service_selectors: vec![selector(&[("expose", "public")])],
            ..Default::default()
        },
    )]);
    ipam.set_namespace("shop", labels(&[("env", "prod")]));
    ipam.set_namespace("lab", labels(&[("env", "dev")]));
    let public = |ns: &str, name: &str| LbService {
        labels: labels(&[("expose", "public")]),
        ..svc(ns, name)
    };
    assert_eq!(
        assigned(&mut ipam, public("shop", "a")),
        ips(&["192.0.2.0"])
    );
    assert_eq!(
        assigned(&mut ipam, public("legacy", "b")),
        ips(&["192.0.2.1"])
    );
    let r = refused(&mut ipam, public("lab", "c"));
    assert_eq!(r.reason(), "no_matching_pool");
    assert_eq!(
        r.to_string(),
        "no pool matches namespace lab and the Service's labels"
    );
    assert_eq!(
        refused(&mut ipam, svc("shop", "unlabelled")).reason(),
        "no_matching_pool"
    );
    // Relabelling the namespace: the next reconcile of its Service releases the address.
    ipam.set_namespace("shop", labels(&[("env", "dev")]));
    let out = ipam.reconcile(&key("shop", "a"));
    assert!(out.ips.is_empty() && out.freed(), "{out:?}");
}

// ---- picking ----

#[test]
fn picks_the_lowest_free_address_in_order() {
    let mut ipam = ipam(vec![Pool::new(
        "p",
        &["192.0.2.8-192.0.2.9", "192.0.2.0/31"],
    )]);
    // Ranges are walked in address order, whatever the spec's order.
    let got: Vec<IpAddr> = (0..4)
        .map(|i| assigned(&mut ipam, svc("a", &format!("s{i}")))[0])
        .collect();
    assert_eq!(
        got,
        ips(&["192.0.2.0", "192.0.2.1", "192.0.2.8", "192.0.2.9"])
    );
    let full = refused(&mut ipam, svc("a", "s4"));
    assert_eq!(full.to_string(), "pool p is full (IPv4)");
    // A freed address is the next one given.
    assert_eq!(ipam.remove_service(&key("a", "s1")), ips(&["192.0.2.1"]));
    assert_eq!(assigned(&mut ipam, svc("a", "s5")), ips(&["192.0.2.1"]));
}

#[test]
fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
    let mut ipam = ipam(vec![
        Pool::new("p", &["192.0.2.254-192.0.3.1"]).with_avoid_buggy_ips(true),
    ]);
    let got: Vec<IpAddr> = (0..2)
        .map(|i| assigned(&mut ipam, svc("a", &format!("s{i}")))[0])
        .collect();
    assert_eq!(got, ips(&["192.0.2.254", "192.0.3.1"]));
    assert_eq!(refused(&mut ipam, svc("a", "s2")).reason(), "pools_full");
    let u = ipam.usage("p").expect("pool");
    assert_eq!((u.size_v4, u.used_v4, u.free_v4()), (2, 2, 0));
    let r = refused(
        &mut ipam,
        LbService {
            requested: Requested::Ips(ips(&["192.0.3.0"])),
            ..svc("a", "req")
        },
    );
    assert!(matches!(r, Refusal::Avoided { .. }), "{r:?}");
    // Without the flag the same range hands out .255 and .0.
    let mut ipam = self::ipam(vec![Pool::new("p", &["192.0.2.255-192.0.3.0"])]);
    assert_eq!(assigned(&mut ipam, svc("a", "x")), ips(&["192.0.2.255"]));
}

#[test]
fn big_pools_stay_cheap() {
    let mut ipam = ipam(vec![Pool::new("v6", &["2001:db8::/64"])]);
    let v6 = |name: &str| LbService {
        families: vec![IpFamily::V6],
        ..svc("a", name)
    };
    assert_eq!(assigned(&mut ipam, v6("x")), ips(&["2001:db8::"]));
    assert_eq!(assigned(&mut ipam, v6("y")), ips(&["2001:db8::1"]));
    let u = ipam.usage("v6").expect("pool");
    assert_eq!(u.size_v6, 1 << 64);
    assert_eq!(u.used_v6, 2);
    assert_eq!(u.free_v6(), (1 << 64) - 2);
    assert_eq!(u.size_v4, 0);
    let whole = ipam_with_everything();
    assert_eq!(whole.usage("all").expect("pool").size_v6, u128::MAX);
}

fn ipam_with_everything() -> Ipam {
    ipam(vec![Pool::new("all", &["::/0"])])
}

// ---- sharing ----

#[test]
fn sharing_rules() {
    let base = |name: &str, key: Option<&str>, ports: &[u16]| LbService {
        sharing_key: key.map(Into::into),
        ports: tcp(ports),
        ..svc("a", name)
    };
    let local = |s: LbService, sel: &[(&str, &str)]| LbService {
        backend: Backend::Local(Selector::new(labels(sel))),
        ..s
    };
    let udp53 = LbService {
        ports: vec![(Protocol::Udp, 53)],
        ..base("dns-udp", Some("k"), &[])
    };
    let cases: Vec<(LbService, LbService, Result<(), service::SharingConflict>)> = vec![
        (
            base("a", Some("k"), &[80]),
            base("b", Some("k"), &[443]),
            Ok(()),
        ),
        (
            base("a", Some("k"), &[80]),
            base("b", Some("k"), &[80, 443]),
            Err(service::SharingConflict::Port(Protocol::Tcp, 80)),
        ),
        // TCP and UDP on one port number do not collide.
        (base("dns-tcp", Some("k"), &[53]), udp53, Ok(())),
        (
            base("a", Some("k"), &[80]),
            base("b", Some("other"), &[443]),
            Err(service::SharingConflict::Key),
        ),
        (
            base("a", None, &[80]),
            base("b", None, &[443]),
            Err(service::SharingConflict::Key),
        ),
        (
            base("a", Some("k"), &[80]),
            local(base("b", Some("k"), &[443]), &[("app", "x")]),
            Err(service::SharingConflict::Backend),
        ),
        (
            local(base("a", Some("k"), &[80]), &[("app", "x")]),
            local(base("b", Some("k"), &[443]), &[("app", "x")]),
            Ok(()),
        ),
        (
            local(base("a", Some("k"), &[80]), &[("app", "x")]),
            local(base("b", Some("k"), &[443]), &[("app", "y")]),
            Err(service::SharingConflict::Backend),
        ),
    ];
    for (a, b, want) in cases {
        assert_eq!(a.can_share(&b), want, "{} vs {}", a.key, b.key);
        assert_eq!(b.can_share(&a), want, "{} vs {} (reversed)", b.key, a.key);
    }
}

#[test]
fn shared_addresses_by_key_and_requested() {
    let mut ipam = ipam(vec![Pool::new("p", &["192.0.2.0/29"])]);
    let web = |name: &str, key: Option<&str>, ports: &[u16]| LbService {
        sharing_key: key.map(Into::into),
        ports: tcp(ports),
        ..svc("a", name)
    };
    // Automatic: the second Service with the key joins the first's address.
    assert_eq!(
        assigned(&mut ipam, web("http", Some("k"), &[80])),
        ips(&["192.0.2.0"])
    );
    assert_eq!(
        assigned(&mut ipam, web("https", Some("k"), &[443])),
        ips(&["192.0.2.0"])
    );
    // Same port with the same key: not on that address, but another is free.
    assert_eq!(
        assigned(&mut ipam, web("http2", Some("k"), &[80])),
        ips(&["192.0.2.1"])
    );
    // Requested: compatible joins, incompatible is refused with the reason.
    let ask = |s: LbService, addr: &str| LbService {
        requested: Requested::Ips(ips(&[addr])),
        ..s
    };
    assert_eq!(
        assigned(&mut ipam, ask(web("ssh", Some("k"), &[22]), "192.0.2.0")),
        ips(&["192.0.2.0"])
    );
    let r = refused(&mut ipam, ask(web("clash", Some("k"), &[443]), "192.0.2.0"));
    assert_eq!(
        r.to_string(),
        "192.0.2.0 is used by a/https, which also uses port TCP/443"
    );
    let r = refused(
        &mut ipam,
        ask(web("other", Some("j"), &[8080]), "192.0.2.0"),
    );
    assert!(r.to_string().ends_with("which does not share key j"), "{r}");
    let r = refused(&mut ipam, ask(web("nokey", None, &[8080]), "192.0.2.0"));
    assert!(
        r.to_string()
            .ends_with("and this Service has no sharing key"),
        "{r}"
    );
    // A shared address counts once and is freed only when its last holder goes.
    assert_eq!(ipam.usage("p").expect("pool").used_v4, 2);
    for name in ["http", "https"] {
        assert!(!ipam.remove_service(&key("a", name)).is_empty());
        assert!(ipam.holders(&ip("192.0.2.0")).next().is_some());
    }
    ipam.remove_service(&key("a", "ssh"));
    assert!(ipam.holders(&ip("192.0.2.0")).next().is_none());
}

#[test]
fn a_sharing_partner_that_turns_incompatible_moves() {
    let mut ipam = ipam(vec![Pool::new("p", &["192.0.2.0/30"])]);
    let web = |name: &str, ports: &[u16]| LbService {
        sharing_key: Some("k".into()),
        ports: tcp(ports),
        ..svc("a", name)
    };
    assert_eq!(assigned(&mut ipam, web("one", &[80])), ips(&["192.0.2.0"]));
    assert_eq!(assigned(&mut ipam, web("two", &[443])), ips(&["192.0.2.0"]));
    // two now also wants port 80: it can no longer stay.
    let out = add(&mut ipam, web("two", &[80, 443]));
    assert_eq!(out.ips, ips(&["192.0.2.1"]));
    assert_eq!(out.previous, ips(&["192.0.2.0"]));
    assert_eq!(ipam.reconcile(&key("a", "one")).ips, ips(&["192.0.2.0"]));
}

// ---- requested addresses ----

#[test]
fn requested_addresses() {
    let pools = || {
        ipam(vec![
            Pool::new("auto", &["192.0.2.0/30"]),
            Pool::new("manual", &["198.51.100.0/30", "2001:db8::/126"]).with_auto_assign(false),
        ])
    };
    let ask = |list: &str| LbService {
        requested: parse_requested(list, "test"),
        ..svc("a", "x")
    };
    let dual = |s: LbService, policy: IpFamilyPolicy| LbService {
        families: vec![IpFamily::V4, IpFamily::V6],
        policy: Some(policy),
        ..s
    };
    type Want = Result<Vec<IpAddr>, &'static str>;
    let cases: Vec<(&str, LbService, Want)> = vec![
        ("in an auto pool", ask("192.0.2.3"), Ok(ips(&["192.0.2.3"]))),
        (
            "in a manual pool",
            ask("198.51.100.2"),
            Ok(ips(&["198.51.100.2"])),
        ),
        (
            "in no pool",
            ask("203.0.113.1"),
            Err("requested_ip_not_in_pool"),
        ),
        ("not an address", ask("192.0.2.x"), Err("invalid_request")),
        (
            "two of a family",
            ask("192.0.2.1,192.0.2.2"),
            Err("invalid_request"),
        ),
        (
            "two for single-stack",
            ask("192.0.2.1, 2001:db8::1"),
            Err("invalid_request"),
        ),
        (
            "wrong family for single-stack",
            ask("2001:db8::1"),
            Err("invalid_request"),
        ),
        (
            "both families, RequireDualStack, primary first",
            dual(
                ask("2001:db8::2, 198.51.100.1"),
                IpFamilyPolicy::RequireDualStack,
            ),
            Ok(ips(&["198.51.100.1", "2001:db8::2"])),
        ),
        (
            "one for RequireDualStack",
            dual(ask("198.51.100.1"), IpFamilyPolicy::RequireDualStack),
            Err("invalid_request"),
        ),
        (
            "one for PreferDualStack",
            dual(ask("2001:db8::1"), IpFamilyPolicy::PreferDualStack),
            Ok(ips(&["2001:db8::1"])),
        ),
        (
            "outside the named pool",
            LbService {
                pool: Some("manual".into()),
                ..ask("192.0.2.1")
            },
            Err("requested_ip_outside_named_pool"),
        ),
        (
            "inside the named pool",
            LbService {
                pool: Some("manual".into()),
                ..ask("198.51.100.3")
            },
            Ok(ips(&["198.51.100.3"])),
        ),
    ];
    for (what, s, want) in cases {
        let mut ipam = pools();
        let out = add(&mut ipam, s);
        match want {
            Ok(want) => assert_eq!((out.ips, out.problem), (want, None), "{what}"),
            Err(reason) => {
                assert!(out.ips.is_empty(), "{what}: {:?}", out.ips);
                assert_eq!(out.problem.map(|p| p.reason()), Some(reason), "{what}");
            }
        }
    }
    assert_eq!(
        Refusal::NotInPool(ip("203.0.113.1")).to_string(),
        "requested IP 203.0.113.1 is in no pool"
    );
}

#[test]
fn requested_address_taken_without_sharing_is_refused_and_the_holder_keeps_it() {
    let mut ipam = ipam(vec![Pool::new("p", &["192.0.2.0/30"])]);
    assert_eq!(assigned(&mut ipam, svc("a", "first")), ips(&["192.0.2.0"]));
    let r = refused(
        &mut ipam,
        LbService {
            requested: Requested::Ips(ips(&["192.0.2.0"])),
            ..svc("b", "second")
        },
    );
    assert_eq!(r.reason(), "ip_in_use");
    assert!(
        r.to_string().starts_with("192.0.2.0 is used by a/first"),
        "{r}"
    );
    assert_eq!(ipam.reconcile(&key("a", "first")).ips, ips(&["192.0.2.0"]));
    // Changing the request moves the Service.
    let out = add(
        &mut ipam,
        LbService {
            requested: Requested::Ips(ips(&["192.0.2.2"])),
            ..svc("a", "first")
        },
    );
    assert_eq!(
        (out.ips, out.previous),
        (ips(&["192.0.2.2"]), ips(&["192.0.2.0"]))
    );
}

// ---- families ----

#[test]
fn families_from_policy() {
    let v4 = || Pool::new("v4", &["192.0.2.0/30"]);
    let v6 = || Pool::new("v6", &["2001:db8::/126"]);
    let s = |families: &[IpFamily], policy: Option<IpFamilyPolicy>| LbService {
        families: families.to_vec(),
        policy,
        ..svc("a", "x")
    };
    use IpFamily::{V4, V6};
    use IpFamilyPolicy::*;
    type Want = Result<Vec<IpAddr>, &'static str>;
    let cases: Vec<(&str, Vec<Pool>, LbService, Want)> = vec![
        (
            "single v4",
            vec![v4(), v6()],
            s(&[V4], Some(SingleStack)),
            Ok(ips(&["192.0.2.0"])),
        ),
        (
            "single v6",
            vec![v4(), v6()],
            s(&[V6], Some(SingleStack)),
            Ok(ips(&["2001:db8::"])),
        ),
        (
            "single v6 without v6 pools",
            vec![v4()],
            s(&[V6], Some(SingleStack)),
            Err("no_pool_for_family"),
        ),
        (
            "no families at all: IPv4",
            vec![v4(), v6()],
            s(&[], None),
            Ok(ips(&["192.0.2.0"])),
        ),
        (
            "require dual",
            vec![v4(), v6()],
            s(&[V6, V4], Some(RequireDualStack)),
            Ok(ips(&["2001:db8::", "192.0.2.0"])),
        ),
        (
            "require dual without v6 pools",
            vec![v4()],
            s(&[V4, V6], Some(RequireDualStack)),
            Err("no_pool_for_family"),
        ),
        (
            "prefer dual with both",
            vec![v4(), v6()],
            s(&[V4], Some(PreferDualStack)),
            Ok(ips(&["192.0.2.0", "2001:db8::"])),
        ),
        (
            "prefer dual with v4 only",
            vec![v4()],
            s(&[V4, V6], Some(PreferDualStack)),
            Ok(ips(&["192.0.2.0"])),
        ),
        (
            "two families without a policy: both",
            vec![v4(), v6()],
            s(&[V4, V6], None),
            Ok(ips(&["192.0.2.0", "2001:db8::"])),
        ),
    ];
    for (what, pools, s, want) in cases {
        let mut ipam = ipam(pools);
        let out = add(&mut ipam, s);
        match want {
            Ok(want) => assert_eq!((out.ips, out.problem), (want, None), "{what}"),
            Err(reason) => {
                assert!(out.ips.is_empty(), "{what}");
                assert_eq!(out.problem.map(|p| p.reason()), Some(reason), "{what}");
            }
        }
    }
    assert_eq!(
        Refusal::NoPoolForFamily {
            family: V6,
            required: true
        }
        .to_string(),
        "RequireDualStack but no IPv6 pool matches the Service"
    );
}

#[test]
fn prefer_dual_stack_with_one_family_full_gets_the_other_with_a_warning() {
    let mut ipam = ipam(vec![
        Pool::new("v4", &["192.0.2.0/32"]),
        Pool::new("v6", &["2001:db8::/127"]),
    ]);
    assert_eq!(assigned(&mut ipam, svc("a", "taker")), ips(&["192.0.2.0"]));
    let out = add(
        &mut ipam,
        LbService {
            families: vec![IpFamily::V4, IpFamily::V6],
            policy: Some(IpFamilyPolicy::PreferDualStack),
            ..svc("a", "dual")
        },
    );
    assert_eq!(out.ips, ips(&["2001:db8::"]));
    assert_eq!(out.problem.map(|p| p.reason()), Some("pools_full"));
    // RequireDualStack in the same spot gets nothing.
    let out = add(
        &mut ipam,
        LbService {
            families: vec![IpFamily::V4, IpFamily::V6],
            policy: Some(IpFamilyPolicy::RequireDualStack),
            ..svc("a", "dual")
        },
    );
    assert!(out.ips.is_empty());
    assert!(out.freed());
}

// ---- release, re-checks, adoption ----

#[test]
fn pool_changes_recheck_assignments_sticky_where_valid() {
    let mut ipam = ipam(vec![Pool::new("p", &["192.0.2.0/29"])]);
    for i in 0..3 {
        assigned(&mut ipam, svc("a", &format!("s{i}")));
    }
    // Shrink the pool so .0 falls out; .1 and .2 stay valid.
    ipam.set_pool(Pool::new("p", &["192.0.2.1-192.0.2.7"]));
    let outs: Vec<Outcome> = (0..3)
        .map(|i| ipam.reconcile(&key("a", &format!("s{i}"))))
        .collect();
    assert_eq!(outs[0].ips, ips(&["192.0.2.3"]));
    assert_eq!(outs[0].previous, ips(&["192.0.2.0"]));
    assert!(!outs[1].changed() && !outs[2].changed());
    // Moving the Service's address into another pool that admits it keeps it (sticky, even from
    // a pool without autoAssign).
    ipam.set_pool(Pool::new("p", &["192.0.2.4/30"]));
    ipam.set_pool(Pool::new("q", &["192.0.2.0/30"]).with_auto_assign(false));
    assert!(!ipam.reconcile(&key("a", "s1")).changed());
    // Deleting every pool releases everything.
    ipam.remove_pool("p");
    ipam.remove_pool("q");
    let out = ipam.reconcile(&key("a", "s1"));
    assert!(out.ips.is_empty() && out.freed());
    assert_eq!(out.problem.map(|p| p.reason()), Some("no_matching_pool"));
}

#[test]
fn adoption_keeps_valid_status_and_settles_conflicts_oldest_first() {
    let mut ipam = ipam(vec![
        Pool::new("p", &["192.0.2.0/29"]),
        Pool::new("v6", &["2001:db8::/126"]),
    ]);
    let seen = |name: &str, created: i64, ingress: &[&str]| LbService {
        created: Some(ts(created)),
        ingress: ips(ingress),
        ..svc("a", name)
    };
    ipam.set_service(seen("young", 2_000, &["192.0.2.5"]));
    ipam.set_service(seen("old", 1_000, &["192.0.2.5"]));
    ipam.set_service(seen("outside", 1_500, &["203.0.113.9"]));
    ipam.set_service(seen("two-v4", 1_600, &["192.0.2.1", "192.0.2.2"]));
    ipam.set_service(LbService {
        requested: Requested::Ips(ips(&["192.0.2.7"])),
        ..seen("moved-request", 1_700, &["192.0.2.6"])
    });
    let order = ipam.adoption_order();
    assert_eq!(order[0], key("a", "old"));
    let adopted: BTreeMap<String, Vec<IpAddr>> = order
        .iter()
        .map(|k| (k.name.to_string(), ipam.adopt(k)))
        .collect();
    assert_eq!(adopted["old"], ips(&["192.0.2.5"]));
    assert_eq!(adopted["young"], Vec::<IpAddr>::new());
    assert_eq!(adopted["outside"], Vec::<IpAddr>::new());
    assert_eq!(adopted["two-v4"], ips(&["192.0.2.1"]));
    assert_eq!(adopted["moved-request"], Vec::<IpAddr>::new());
    assert_eq!(ipam.ips_outside_pools(), 1);
    // Reconciling after adoption changes nothing that was valid.
    assert!(!ipam.reconcile(&key("a", "old")).changed());
    assert_eq!(ipam.reconcile(&key("a", "young")).ips, ips(&["192.0.2.0"]));
    assert_eq!(
        ipam.reconcile(&key("a", "moved-request")).ips,
        ips(&["192.0.2.7"])
    );
}

#[test]
fn usage_counts_per_pool_and_family() {
    let mut ipam = ipam(vec![
        Pool::new("mixed", &["192.0.2.0/30", "2001:db8::/126"]),
        Pool::new("other", &["198.51.100.0/24"]).with_avoid_buggy_ips(true),
    ]);
    assigned(
        &mut ipam,
        LbService {
            families: vec![IpFamily::V4, IpFamily::V6],
            policy: Some(IpFamilyPolicy::RequireDualStack),
            ..svc("a", "dual")
        },
    );
    assigned(
        &mut ipam,
        LbService {
            pool: Some("other".into()),
            ..svc("a", "x")
        },
    );
    assert_eq!(
        ipam.usage("mixed"),
        Some(Usage {
            size_v4: 4,
            size_v6: 4,
            used_v4: 1,
            used_v6: 1
        })
    );
    assert_eq!(
        ipam.usage("other"),
        Some(Usage {
            size_v4: 254,
            size_v6: 0,
            used_v4: 1,
            used_v6: 0
        })
    );
    assert_eq!(ipam.usage("nope"), None);
}

// ---- the edge: Services from the API ----

fn api_service(name: &str, type_: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(core::ServiceSpec {
            type_: Some(type_.into()),
            ports: Some(vec![
                core::ServicePort {
                    port: 443,
                    ..Default::default()
                },
                core::ServicePort {
                    port: 80,
                    protocol: Some("UDP".into()),
                    ..Default::default()
                },
            ]),
            ip_families: Some(vec!["IPv4".into()]),
            ip_family_policy: Some("SingleStack".into()),
            ..Default::default()
        }),
        status: None,
    }
}

fn with_ingress(mut s: Service, list: &[&str]) -> Service {
    s.status = Some(core::ServiceStatus {
        load_balancer: Some(core::LoadBalancerStatus {
            ingress: Some(
                list.iter()
                    .map(|ip| core::LoadBalancerIngress {
                        ip: Some((*ip).into()),
                        ip_mode: Some("VIP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }),
        ..Default::default()
    });
    s
}

#[test]
fn services_convert_with_annotations_and_classes() {
    let mut s = api_service("web", "LoadBalancer");
    s.metadata.annotations = Some(BTreeMap::from([
        (ANNOTATION_IPS.into(), " 192.0.2.1 , 2001:db8::1 ".into()),
        (ANNOTATION_POOL.into(), "gold".into()),
        (ANNOTATION_SHARING_KEY.into(), "k".into()),
    ]));
    if let Some(spec) = s.spec.as_mut() {
        spec.load_balancer_ip = Some("192.0.2.9".into());
        spec.external_traffic_policy = Some("Local".into());
        spec.selector = Some(BTreeMap::from([("app".into(), "web".into())]));
    }
    let Ok(Some(Watched::Ours(lb))) = convert(&s, None) else {
        panic!("not ours");
    };
    assert_eq!(
        lb.requested,
        Requested::Ips(ips(&["192.0.2.1", "2001:db8::1"]))
    );
    assert_eq!(lb.pool.as_deref(), Some("gold"));
    assert_eq!(lb.sharing_key.as_deref(), Some("k"));
    assert_eq!(lb.ports, vec![(Protocol::Tcp, 443), (Protocol::Udp, 80)]);
    assert_eq!(
        lb.backend,
        Backend::Local(Selector::new(labels(&[("app", "web")])))
    );
    assert_eq!(lb.uid.as_deref(), Some("uid-web"));

    // spec.loadBalancerIP when there is no annotation.
    let mut plain = api_service("plain", "LoadBalancer");
    if let Some(spec) = plain.spec.as_mut() {
        spec.load_balancer_ip = Some("192.0.2.9".into());
    }
    let Ok(Some(Watched::Ours(lb))) = convert(&plain, None) else {
        panic!("not ours");
    };
    assert_eq!(lb.requested, Requested::Ips(ips(&["192.0.2.9"])));

    // Classes: none is always ours; ours is ours; another is not.
    let mut classed = api_service("classed", "LoadBalancer");
    if let Some(spec) = classed.spec.as_mut() {
        spec.load_balancer_class = Some("example.com/lb".into());
    }
    assert!(matches!(convert(&classed, None), Ok(None)));
    assert!(matches!(
        convert(&classed, Some("svcplane.dev/lb")),
        Ok(None)
    ));
    assert!(matches!(
        convert(&classed, Some("example.com/lb")),
        Ok(Some(Watched::Ours(_)))
    ));
    assert!(matches!(
        convert(&api_service("x", "LoadBalancer"), Some("example.com/lb")),
        Ok(Some(Watched::Ours(_)))
    ));

    // Not a LoadBalancer: nothing, unless addresses are left in the status.
    assert!(matches!(
        convert(&api_service("c", "ClusterIP"), None),
        Ok(None)
    ));
    let left = with_ingress(api_service("c", "ClusterIP"), &["192.0.2.1"]);
    assert_eq!(
        convert(&left, None).ok().flatten(),
        Some(Watched::Stale {
            uid: Some("uid-c".into()),
            ingress: ips(&["192.0.2.1"]),
        })
    );
    // A malformed Service is rejected by the model's conversion.
    let mut bad = api_service("bad", "LoadBalancer");
    if let Some(spec) = bad.spec.as_mut() {
        spec.ip_families = Some(vec!["IPv5".into()]);
    }
    assert!(convert(&bad, None).is_err());
}

#[test]
fn requested_annotation_parsing() {
    assert_eq!(parse_requested("", "a"), Requested::Any);
    assert_eq!(parse_requested(" , ", "a"), Requested::Any);
    assert_eq!(
        parse_requested("2001:db8::1", "a"),
        Requested::Ips(ips(&["2001:db8::1"]))
    );
    let Requested::Invalid(why) = parse_requested("192.0.2.1,nope", "ann") else {
        panic!("accepted")
    };
    assert_eq!(why, "ann: \"nope\" is not an IP address");
}

#[test]
fn status_patch_shape() {
    assert_eq!(
        service_status_patch(&ips(&["192.0.2.1", "2001:db8::1"])),
        serde_json::json!({"status": {"loadBalancer": {"ingress": [
            {"ip": "192.0.2.1", "ipMode": "VIP"},
            {"ip": "2001:db8::1", "ipMode": "VIP"},
        ]}}})
    );
    assert_eq!(
        service_status_patch(&[]),
        serde_json::json!({"status": {"loadBalancer": {"ingress": null}}})
    );
}

// ---- the controller's state machine ----

fn api_pool(name: &str, addresses: &[&str]) -> LoadBalancerIPPool {
    let mut p = LoadBalancerIPPool::new(
        name,
        LoadBalancerIPPoolSpec {
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
        },
    );
    p.metadata.generation = Some(1);
    p
}

fn api_namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A controller state with every watch listed.
fn listed(pools: Vec<LoadBalancerIPPool>, services: Vec<Service>) -> (State, Informers) {
    let metrics = Metrics::unregistered();
    let mut informers = Informers::new(None, &metrics);
    let mut state = State::new(metrics);
    informers
        .pools
        .handle(Event::Init, &mut PoolStore(&mut state));
    for p in pools {
        informers
            .pools
            .handle(Event::InitApply(p), &mut PoolStore(&mut state));
    }
    informers
        .pools
        .handle(Event::InitDone, &mut PoolStore(&mut state));
    for ev in [
        Event::Init,
        Event::InitApply(api_namespace("ns")),
        Event::InitDone,
    ] {
        informers
            .namespaces
            .handle(ev, &mut NamespaceStore(&mut state));
    }
    informers
        .services
        .handle(Event::Init, &mut ServiceStore(&mut state));
    for s in services {
        informers
            .services
            .handle(Event::InitApply(s), &mut ServiceStore(&mut state));
    }
    informers
        .services
        .handle(Event::InitDone, &mut ServiceStore(&mut state));
    assert!(informers.synced());
    (state, informers)
}

fn status_writes(actions: &[Action]) -> Vec<(String, Vec<IpAddr>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ServiceStatus { key, ips } => Some((key.to_string(), ips.clone())),
            _ => None,
        })
        .collect()
}

fn events(actions: &[Action]) -> Vec<(String, &'static str, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event {
                key, reason, note, ..
            } => Some((key.to_string(), *reason, note.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn leader_assigns_writes_and_records_events_once() {
    let (mut state, mut informers) = listed(
        vec![api_pool("p", &["192.0.2.0/31"])],
        vec![
            api_service("a", "LoadBalancer"),
            with_ingress(api_service("kept", "LoadBalancer"), &["192.0.2.1"]),
        ],
    );
    // A follower writes nothing but knows the adopted address.
    assert!(state.process().is_empty());
    assert_eq!(
        state.ipam().assigned(&key("ns", "kept")),
        ips(&["192.0.2.1"])
    );

    state.set_leading(true);
    let actions = state.process();
    assert_eq!(
        status_writes(&actions),
        vec![("ns/a".to_owned(), ips(&["192.0.2.0"]))]
    );
    assert_eq!(
        events(&actions),
        vec![(
            "ns/a".to_owned(),
            REASON_ALLOCATED,
            "assigned 192.0.2.0".to_owned()
        )]
    );
    state.wrote_service(&key("ns", "a"), &ips(&["192.0.2.0"]));
    assert!(state.pool_statuses().iter().any(|a| matches!(
        a,
        Action::PoolStatus { status, .. } if status.assigned_ipv4 == 2 && status.available_ipv4 == 0
    )));

    // A third Service is refused: one Warning, not repeated when nothing changed.
    informers.services.handle(
        Event::Apply(api_service("late", "LoadBalancer")),
        &mut ServiceStore(&mut state),
    );
    let actions = state.process();
    assert_eq!(
        events(&actions),
        vec![(
            "ns/late".to_owned(),
            REASON_FAILED,
            "pool p is full (IPv4)".to_owned()
        )]
    );
    assert!(status_writes(&actions).is_empty());
    state.touch(key("ns", "late"));
    assert!(state.process().is_empty());

    // Deleting a holder frees an address, and the waiting Service gets it.
    informers.services.handle(
        Event::Delete(api_service("a", "LoadBalancer")),
        &mut ServiceStore(&mut state),
    );
    let actions = state.process();
    assert_eq!(
        status_writes(&actions),
        vec![("ns/late".to_owned(), ips(&["192.0.2.0"]))]
    );
}

#[test]
fn type_change_clears_status_and_frees_the_address() {
    let (mut state, mut informers) = listed(
        vec![api_pool("p", &["192.0.2.0/32"])],
        vec![with_ingress(
            api_service("a", "LoadBalancer"),
            &["192.0.2.0"],
        )],
    );
    state.set_leading(true);
    assert!(state.process().is_empty(), "the status is already right");
    informers.services.handle(
        Event::Apply(with_ingress(api_service("a", "ClusterIP"), &["192.0.2.0"])),
        &mut ServiceStore(&mut state),
    );
    informers.services.handle(
        Event::Apply(api_service("b", "LoadBalancer")),
        &mut ServiceStore(&mut state),
    );
    let mut writes = status_writes(&state.process());
    writes.sort();
    assert_eq!(
        writes,
        vec![
            ("ns/a".to_owned(), vec![]),
            ("ns/b".to_owned(), ips(&["192.0.2.0"]))
        ]
    );
    // Someone else's leftovers outside our pools are not ours to clear.
    informers.services.handle(
        Event::Apply(with_ingress(api_service("z", "NodePort"), &["203.0.113.1"])),
        &mut ServiceStore(&mut state),
    );
    assert!(status_writes(&state.process()).is_empty());
}

#[test]
fn a_new_term_rebuilds_from_status_and_moves_nothing() {
    let (mut state, _informers) = listed(
        vec![api_pool("p", &["192.0.2.0/29"])],
        vec![
            with_ingress(api_service("a", "LoadBalancer"), &["192.0.2.5"]),
            with_ingress(api_service("b", "LoadBalancer"), &["192.0.2.2"]),
        ],
    );
    state.set_leading(true);
    assert!(state.process().is_empty());
    state.set_leading(false);
    assert!(state.process().is_empty());
    state.set_leading(true);
    assert!(state.process().is_empty());
    assert_eq!(state.ipam().assigned(&key("ns", "a")), ips(&["192.0.2.5"]));
}

#[test]
fn pool_edits_reach_services() {
    let (mut state, mut informers) = listed(
        vec![api_pool("p", &["192.0.2.0/30"])],
        vec![with_ingress(
            api_service("a", "LoadBalancer"),
            &["192.0.2.0"],
        )],
    );
    state.set_leading(true);
    assert!(state.process().is_empty());
    informers.pools.handle(
        Event::Apply(api_pool("p", &["192.0.2.2/31"])),
        &mut PoolStore(&mut state),
    );
    let actions = state.process();
    assert_eq!(
        status_writes(&actions),
        vec![("ns/a".to_owned(), ips(&["192.0.2.2"]))]
    );
    assert_eq!(events(&actions)[0].2, "assigned 192.0.2.2 (was 192.0.2.0)");
    // A broken edit reports its error in the pool status.
    informers.pools.handle(
        Event::Apply(api_pool("p", &["192.0.2.2/31", "oops"])),
        &mut PoolStore(&mut state),
    );
    state.process();
    let statuses = state.pool_statuses();
    let Some(Action::PoolStatus { status, .. }) = statuses.first() else {
        panic!("no pool status: {statuses:?}");
    };
    assert!(status.error.as_deref().is_some_and(|e| e.contains("oops")));
}

#[test]
fn metrics_follow_state() {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).expect("register");
    let mut state = State::new(metrics);
    let mut pools = PoolIntake::default();
    pools.handle(Event::Init, &mut PoolStore(&mut state));
    pools.handle(
        Event::InitApply(api_pool("p", &["192.0.2.0/30"])),
        &mut PoolStore(&mut state),
    );
    pools.handle(Event::InitDone, &mut PoolStore(&mut state));
    let mut store = ServiceStore(&mut state);
    store.apply(
        key("ns", "a"),
        convert(
            &with_ingress(api_service("a", "LoadBalancer"), &["203.0.113.1"]),
            None,
        )
        .ok()
        .flatten(),
    );
    state.set_leading(true);
    state.process();
    let families = registry.gather();
    let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
    for name in METRIC_NAMES {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        families
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .find(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            // Exactly one of the two is set.
            .map(|m| m.get_gauge().get_value() + m.get_counter().get_value())
            .unwrap_or(f64::NAN)
    };
    let pool = |family, state| {
        value(
            "svcplane_allocator_lb_pool_addresses",
            &[("pool", "p"), ("family", family), ("state", state)],
        )
    };
    assert_eq!(pool("IPv4", "used"), 1.0);
    assert_eq!(pool("IPv4", "free"), 3.0);
    assert_eq!(pool("IPv6", "free"), 0.0);
    // The status still shows the address from outside every pool until the write lands.
    assert_eq!(value("svcplane_allocator_lb_ips_outside_pools", &[]), 1.0);
    assert_eq!(value("svcplane_allocator_lb_allocations_total", &[]), 1.0);
}

// ---- the CRD ----

#[test]
fn crd_manifest_is_up_to_date() {
    use kube::CustomResourceExt;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/svcplane-allocator-crds.yaml"
    );
    let yaml = serde_saphyr::to_string(&LoadBalancerIPPool::crd()).expect("CRD as YAML");
    let want = format!(
        "# LoadBalancerIPPool, generated from allocator/src/lbipam/crd.rs; do not edit. Regenerate with\n\
         #   SVCPLANE_WRITE_CRDS=1 cargo test -p svcplane-allocator --lib crd\n{yaml}"
    );
    if std::env::var_os("SVCPLANE_WRITE_CRDS").is_some() {
        std::fs::write(path, &want).expect("write the CRD manifest");
        return;
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "{path} is out of date with allocator/src/lbipam/crd.rs; regenerate it with\n  \
         SVCPLANE_WRITE_CRDS=1 cargo test -p svcplane-allocator --lib crd"
    );
    // What the manifest must say, whatever the generator does.
    let crd = LoadBalancerIPPool::crd();
    assert_eq!(crd.spec.group, "allocator.svcplane.dev");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("loadbalancerippools.allocator.svcplane.dev")
    );
    let version = &crd.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some())
    );
    let text = serde_json::to_string(&crd).expect("json");
    for field in [
        "avoidBuggyIPs",
        "autoAssign",
        "serviceAllocation",
        "assignedIPv4",
    ] {
        assert!(text.contains(field), "{field}");
    }
}

#[test]
fn pool_spec_defaults() {
    let spec: LoadBalancerIPPoolSpec =
        serde_json::from_value(serde_json::json!({"addresses": ["192.0.2.0/30"]})).expect("spec");
    assert!(spec.auto_assign);
    assert!(!spec.avoid_buggy_ips);
    assert_eq!(spec.service_allocation, None);
}
