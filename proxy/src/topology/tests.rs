use super::*;

fn node() -> NodeFacts {
    NodeFacts {
        name: "node-a".into(),
        zone: Some("zone-a".into()),
    }
}

/// (ip, ready, serving, terminating, node, zone hint, node hint)
type Row = (
    &'static str,
    bool,
    bool,
    bool,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

fn eps(rows: &[Row]) -> Vec<Backend> {
    rows.iter()
        .map(
            |(ip, ready, serving, terminating, on, zone, node_hint)| Backend {
                ip: ip.parse().expect("ip"),
                port: 8080,
                ready: *ready,
                serving: *serving,
                terminating: *terminating,
                local: *on == "node-a",
                zones: zone.map(|z| vec![z.into()]),
                nodes: node_hint.map(|n| vec![n.into()]),
            },
        )
        .collect()
}

fn ips(list: &[(IpAddr, u16)]) -> Vec<String> {
    list.iter().map(|(ip, _)| ip.to_string()).collect()
}

#[test]
fn categorize_table() {
    // (endpoints, cluster list, local list, any)
    type Case = (
        Vec<Row>,
        &'static [&'static str],
        &'static [&'static str],
        bool,
    );
    let cases: Vec<Case> = vec![
        // Ready endpoints: all for cluster traffic, the local one for local traffic.
        (
            vec![
                ("10.0.0.1", true, true, false, "node-a", None, None),
                ("10.0.0.2", true, true, false, "node-b", None, None),
            ],
            &["10.0.0.1", "10.0.0.2"],
            &["10.0.0.1"],
            true,
        ),
        // Not ready and not terminating: never used.
        (
            vec![("10.0.0.1", false, false, false, "node-a", None, None)],
            &[],
            &[],
            false,
        ),
        // No ready endpoint left: serving terminating ones are the fallback.
        (
            vec![
                ("10.0.0.1", false, true, true, "node-b", None, None),
                ("10.0.0.2", false, false, true, "node-a", None, None),
            ],
            &["10.0.0.1"],
            &[],
            true,
        ),
        // A ready endpoint wins over terminating ones.
        (
            vec![
                ("10.0.0.1", true, true, false, "node-b", None, None),
                ("10.0.0.2", false, true, true, "node-a", None, None),
            ],
            &["10.0.0.1"],
            &["10.0.0.2"],
            true,
        ),
        // Zone hints for this node's zone: only those.
        (
            vec![
                (
                    "10.0.0.1",
                    true,
                    true,
                    false,
                    "node-b",
                    Some("zone-a"),
                    None,
                ),
                (
                    "10.0.0.2",
                    true,
                    true,
                    false,
                    "node-c",
                    Some("zone-b"),
                    None,
                ),
            ],
            &["10.0.0.1"],
            &[],
            true,
        ),
        // One ready endpoint without hints: hints are ignored.
        (
            vec![
                (
                    "10.0.0.1",
                    true,
                    true,
                    false,
                    "node-b",
                    Some("zone-a"),
                    None,
                ),
                ("10.0.0.2", true, true, false, "node-c", None, None),
            ],
            &["10.0.0.1", "10.0.0.2"],
            &[],
            true,
        ),
        // Nothing hinted for this zone: hints are ignored.
        (
            vec![(
                "10.0.0.1",
                true,
                true,
                false,
                "node-b",
                Some("zone-b"),
                None,
            )],
            &["10.0.0.1"],
            &[],
            true,
        ),
        // Node hints for this node win over zone hints.
        (
            vec![
                (
                    "10.0.0.1",
                    true,
                    true,
                    false,
                    "node-a",
                    Some("zone-a"),
                    Some("node-a"),
                ),
                (
                    "10.0.0.2",
                    true,
                    true,
                    false,
                    "node-b",
                    Some("zone-a"),
                    Some("node-b"),
                ),
            ],
            &["10.0.0.1"],
            &["10.0.0.1"],
            true,
        ),
    ];
    for (rows, cluster, local, any) in cases {
        let u = categorize(&eps(&rows), &node());
        assert_eq!(ips(&u.cluster), cluster, "{rows:?}");
        assert_eq!(ips(&u.local), local, "{rows:?}");
        assert_eq!(u.any, any, "{rows:?}");
    }
}

#[test]
fn backends_follow_the_port_and_family_and_prefer_non_terminating_copies() {
    use svcplane_model::{Conditions, Endpoint, EndpointPort, ObjectKey};
    let endpoint = |ip: &str, terminating: bool| Endpoint {
        addresses: vec![ip.parse().expect("ip")],
        conditions: Conditions {
            ready: Some(!terminating),
            serving: Some(true),
            terminating: Some(terminating),
        },
        hostname: None,
        node_name: Some("node-a".into()),
        zone: None,
        hints: None,
        target_pod: None,
    };
    let slice = |name: &str, family, port: u16, eps: Vec<Endpoint>| EndpointSlice {
        key: ObjectKey::new("ns", name),
        service: ObjectKey::new("ns", "web"),
        address_type: family,
        ports: vec![EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: Some(port),
            app_protocol: None,
        }],
        endpoints: eps,
        managed_by: None,
        trigger_time: None,
        resource_version: None,
    };
    let slices = [
        slice(
            "a",
            AddressType::V4,
            8080,
            vec![endpoint("10.0.0.2", true), endpoint("10.0.0.1", false)],
        ),
        slice(
            "b",
            AddressType::V4,
            8080,
            vec![endpoint("10.0.0.2", false)],
        ),
        slice("c", AddressType::V6, 8080, vec![endpoint("fd00::1", false)]),
    ];
    let got = backends(&slices, AddressType::V4, "http", Protocol::Tcp, &node());
    let summary: Vec<(String, bool, bool)> = got
        .iter()
        .map(|b| (format!("{}:{}", b.ip, b.port), b.terminating, b.local))
        .collect();
    assert_eq!(
        summary,
        [
            ("10.0.0.1:8080".to_owned(), false, true),
            ("10.0.0.2:8080".to_owned(), false, true)
        ]
    );
    assert!(backends(&slices, AddressType::V4, "other", Protocol::Tcp, &node()).is_empty());
    assert!(backends(&slices, AddressType::V4, "http", Protocol::Udp, &node()).is_empty());
    assert_eq!(
        backends(&slices, AddressType::V6, "http", Protocol::Tcp, &node()).len(),
        1
    );
}
