use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort as CorePort, EndpointSubset};
use svcplane_model::Service;

use super::*;
use crate::testing::service;

const MANAGER: &str = "endpointslicemirroring.svcplane.dev";

fn endpoints(ready: &[&str], not_ready: &[&str]) -> Endpoints {
    let addr = |ip: &&str| EndpointAddress {
        ip: (*ip).into(),
        ..Default::default()
    };
    Endpoints {
        metadata: ObjectMeta {
            name: Some("ext".into()),
            namespace: Some("ns".into()),
            uid: Some("ep-uid".into()),
            labels: Some(BTreeMap::from([("team".into(), "a".into())])),
            ..Default::default()
        },
        subsets: Some(vec![EndpointSubset {
            addresses: Some(ready.iter().map(addr).collect()),
            not_ready_addresses: Some(not_ready.iter().map(addr).collect()),
            ports: Some(vec![CorePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }]),
    }
}

#[test]
fn only_endpoints_of_selectorless_services_are_mirrored() {
    let ep = endpoints(&["10.0.0.1"], &[]);
    let selectorless = Service {
        selector: None,
        ..service("ns", "ext")
    };
    assert!(should_mirror(&ep, Some(&selectorless)));
    assert!(!should_mirror(&ep, Some(&service("ns", "ext"))));
    assert!(!should_mirror(&ep, None));
    let mut skip = ep.clone();
    skip.metadata.labels = Some(BTreeMap::from([(LABEL_SKIP_MIRROR.into(), "true".into())]));
    assert!(!should_mirror(&skip, Some(&selectorless)));
}

#[test]
fn addresses_split_by_family_with_ready_conditions_and_copied_metadata() {
    let ep = endpoints(&["10.0.0.1", "fd00::1"], &["10.0.0.2", "not-an-ip"]);
    let d = desired(&ep, MANAGER, 1000);
    assert_eq!(d.invalid, 1);
    assert_eq!(d.slices.len(), 2);
    let v4 = d
        .slices
        .iter()
        .find(|s| s.address_type == "IPv4")
        .expect("v4");
    let ready: Vec<(String, Option<bool>)> = v4
        .endpoints
        .iter()
        .flatten()
        .map(|e| {
            (
                e.addresses[0].clone(),
                e.conditions.as_ref().and_then(|c| c.ready),
            )
        })
        .collect();
    assert_eq!(
        ready,
        [
            ("10.0.0.1".into(), Some(true)),
            ("10.0.0.2".into(), Some(false))
        ]
    );
    let labels = v4.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(
        labels.get(LABEL_MANAGED_BY).map(String::as_str),
        Some(MANAGER)
    );
    assert_eq!(
        labels.get(LABEL_SERVICE_NAME).map(String::as_str),
        Some("ext")
    );
    let owner = &v4.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Endpoints", "ep-uid")
    );
}

#[test]
fn at_most_the_cap_per_subset_ready_first() {
    let ready: Vec<String> = (0..8).map(|i| format!("10.0.0.{i}")).collect();
    let not_ready: Vec<String> = (0..4).map(|i| format!("10.0.1.{i}")).collect();
    let r: Vec<&str> = ready.iter().map(String::as_str).collect();
    let n: Vec<&str> = not_ready.iter().map(String::as_str).collect();
    let d = desired(&endpoints(&r, &n), MANAGER, 10);
    assert_eq!(d.skipped, 2);
    let kept = &d.slices[0].endpoints.as_ref().expect("endpoints");
    assert_eq!(kept.len(), 10);
    assert_eq!(
        kept.iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count(),
        8
    );
}

#[test]
fn an_unchanged_mirror_is_left_alone_and_a_changed_one_rebuilt_in_place() {
    let ep = endpoints(&["10.0.0.1"], &[]);
    let d = desired(&ep, MANAGER, 1000);
    let p = plan(d.slices, &[]);
    assert_eq!(p.create.len(), 1);
    let mut existing = p.create[0].clone();
    existing.metadata.name = Some("ext-abcde".into());
    existing.metadata.generate_name = None;
    let existing = vec![Arc::new(existing)];
    assert!(plan(desired(&ep, MANAGER, 1000).slices, &existing).is_empty());
    let changed = endpoints(&["10.0.0.1", "10.0.0.9"], &[]);
    let p = plan(desired(&changed, MANAGER, 1000).slices, &existing);
    assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
    assert_eq!(p.update[0].metadata.name.as_deref(), Some("ext-abcde"));
}
