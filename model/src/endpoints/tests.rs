use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn slice(address_type: &str, endpoints: Vec<discovery::Endpoint>) -> discovery::EndpointSlice {
    discovery::EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some("shop".into()),
            name: Some("web-abc12".into()),
            resource_version: Some("42".into()),
            labels: Some(BTreeMap::from([
                (LABEL_SERVICE_NAME.into(), "web".into()),
                (LABEL_MANAGED_BY.into(), "svcplane.dev/endpoints".into()),
            ])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_LAST_CHANGE_TRIGGER_TIME.into(),
                "2026-11-23T10:00:00Z".into(),
            )])),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: Some(endpoints),
        ports: Some(vec![discovery::EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

fn endpoint(addr: &str) -> discovery::Endpoint {
    discovery::Endpoint {
        addresses: vec![addr.into()],
        ..Default::default()
    }
}

#[test]
fn converts_every_field() {
    let raw = slice(
        "IPv4",
        vec![discovery::Endpoint {
            addresses: vec!["10.244.1.5".into()],
            conditions: Some(discovery::EndpointConditions {
                ready: Some(false),
                serving: Some(true),
                terminating: Some(true),
            }),
            hostname: Some("web-0".into()),
            node_name: Some("node-a".into()),
            zone: Some("zone-1".into()),
            hints: Some(discovery::EndpointHints {
                for_zones: Some(vec![discovery::ForZone {
                    name: "zone-1".into(),
                }]),
                for_nodes: None,
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some("shop".into()),
                name: Some("web-0".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
    );
    let s = EndpointSlice::try_from(&raw).expect("valid");
    assert_eq!(s.key, ObjectKey::new("shop", "web-abc12"));
    assert_eq!(s.service, ObjectKey::new("shop", "web"));
    assert_eq!(s.address_type, AddressType::V4);
    assert_eq!(s.managed_by.as_deref(), Some("svcplane.dev/endpoints"));
    assert_eq!(
        s.trigger_time,
        Some("2026-11-23T10:00:00Z".parse().expect("timestamp"))
    );
    assert_eq!(s.resource_version.as_deref(), Some("42"));
    assert_eq!(
        s.ports,
        vec![EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: Some(8080),
            app_protocol: None
        }]
    );
    let e = &s.endpoints[0];
    assert_eq!(
        e.addresses,
        vec!["10.244.1.5".parse::<IpAddr>().expect("ip")]
    );
    assert!(!e.conditions.is_ready());
    assert!(e.conditions.is_serving());
    assert!(e.conditions.is_terminating());
    assert_eq!(e.hostname.as_deref(), Some("web-0"));
    assert_eq!(e.node_name.as_deref(), Some("node-a"));
    assert_eq!(e.zone.as_deref(), Some("zone-1"));
    assert_eq!(
        e.hints,
        Some(Box::new(Hints {
            for_zones: vec!["zone-1".into()],
            for_nodes: vec![]
        }))
    );
    assert_eq!(e.target_pod, Some(ObjectKey::new("shop", "web-0")));
}

#[test]
fn unknown_conditions_follow_the_api_defaults() {
    let table = [
        (Conditions::default(), true, true, false),
        (
            Conditions {
                ready: Some(false),
                ..Default::default()
            },
            false,
            false,
            false,
        ),
        (
            Conditions {
                ready: Some(false),
                serving: Some(true),
                terminating: Some(true),
            },
            false,
            true,
            true,
        ),
    ];
    for (c, ready, serving, terminating) in table {
        assert_eq!(
            (c.is_ready(), c.is_serving(), c.is_terminating()),
            (ready, serving, terminating),
            "{c:?}"
        );
    }
}

#[test]
fn ipv6_slices_convert() {
    let s = EndpointSlice::try_from(&slice("IPv6", vec![endpoint("fd00::5")])).expect("valid");
    assert_eq!(s.address_type, AddressType::V6);
}

#[test]
fn malformed_slices_are_rejected_with_a_reason() {
    let mut no_label = slice("IPv4", vec![]);
    no_label.metadata.labels = None;
    let cases = [
        (no_label, "missing_field"),
        (slice("FQDN", vec![]), "unsupported_address_type"),
        (slice("IPv4", vec![endpoint("fd00::1")]), "invalid_ip"),
        (slice("IPv4", vec![endpoint("10.0.0.999")]), "invalid_ip"),
        (
            slice(
                "IPv4",
                vec![discovery::Endpoint {
                    addresses: vec![],
                    ..Default::default()
                }],
            ),
            "missing_field",
        ),
    ];
    for (raw, reason) in cases {
        let err = EndpointSlice::try_from(&raw).expect_err("must be rejected");
        assert_eq!(err.reason(), reason, "{err}");
    }
}
