use svcplane_model::Pod;

use super::*;
use crate::desired::slice_groups;
use crate::testing::{pod, service};

const MANAGER: &str = "endpointslice.svcplane.dev";

fn zone_of(_: &str) -> Option<Option<&'static str>> {
    Some(Some("zone-a"))
}

fn pods(n: usize) -> Vec<Pod> {
    (0..n)
        .map(|i| {
            pod(
                "ns",
                &format!("p{i}"),
                "web",
                &format!("10.1.{}.{}", i / 250, i % 250),
            )
        })
        .collect()
}

fn desired(svc: &Service, pods: &[Pod]) -> Vec<(AddressType, SliceGroups)> {
    vec![(
        AddressType::V4,
        slice_groups(svc, pods, AddressType::V4, &zone_of),
    )]
}

/// Applies a plan the way the API would: created slices get names and a UID.
fn apply(existing: &[Arc<EndpointSlice>], plan: Plan, next: &mut usize) -> Vec<Arc<EndpointSlice>> {
    let mut out: Vec<EndpointSlice> = existing
        .iter()
        .filter(|s| {
            !plan
                .delete
                .iter()
                .any(|d| d.metadata.name == s.metadata.name)
        })
        .map(|s| (**s).clone())
        .collect();
    for u in plan.update {
        match out.iter_mut().find(|s| s.metadata.name == u.metadata.name) {
            Some(slot) => {
                let uid = slot.metadata.uid.clone();
                *slot = u;
                slot.metadata.uid = uid;
            }
            None => panic!("update of an unknown slice {:?}", u.metadata.name),
        }
    }
    for mut c in plan.create {
        *next += 1;
        c.metadata.name = Some(format!("web-{next}"));
        c.metadata.uid = Some(format!("slice-uid-{next}"));
        out.push(c);
    }
    out.into_iter().map(Arc::new).collect()
}

fn sizes(slices: &[Arc<EndpointSlice>]) -> Vec<usize> {
    let mut s: Vec<usize> = slices.iter().map(|s| endpoint_count(s)).collect();
    s.sort();
    s
}

fn all_addresses(slices: &[Arc<EndpointSlice>]) -> Vec<String> {
    let mut a: Vec<String> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .map(|e| e.addresses[0].clone())
        .collect();
    a.sort();
    a
}

#[test]
fn new_service_gets_full_slices_then_no_op() {
    let svc = service("ns", "web");
    let pods = pods(250);
    let plan = plan(&svc, &[], &desired(&svc, &pods), 100, MANAGER);
    assert_eq!(
        (plan.create.len(), plan.update.len(), plan.delete.len()),
        (3, 0, 0)
    );
    let created = &plan.create[0];
    let labels = created.metadata.labels.as_ref().expect("labels");
    assert_eq!(
        labels.get(LABEL_SERVICE_NAME).map(String::as_str),
        Some("web")
    );
    assert_eq!(
        labels.get(LABEL_MANAGED_BY).map(String::as_str),
        Some(MANAGER)
    );
    assert_eq!(created.metadata.generate_name.as_deref(), Some("web-"));
    let owner = &created.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Service", "uid-web", Some(true))
    );
    let mut n = 0;
    let slices = apply(&[], plan, &mut n);
    assert_eq!(sizes(&slices), [50, 100, 100]);
    // The same desired state again: nothing to write.
    let again = super::plan(&svc, &slices, &desired(&svc, &pods), 100, MANAGER);
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn one_readiness_flip_rewrites_one_slice() {
    let svc = service("ns", "web");
    let mut pods = pods(250);
    let mut n = 0;
    let slices = apply(
        &[],
        plan(&svc, &[], &desired(&svc, &pods), 100, MANAGER),
        &mut n,
    );
    pods[7].ready = false;
    let p = plan(&svc, &slices, &desired(&svc, &pods), 100, MANAGER);
    assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
    let updated = &p.update[0];
    assert!(updated.metadata.resource_version.is_none() || updated.metadata.name.is_some());
    let flipped = updated
        .endpoints
        .iter()
        .flatten()
        .find(|e| e.addresses[0] == "10.1.0.7")
        .expect("the flipped endpoint stays in its slice");
    assert_eq!(
        flipped.conditions.as_ref().and_then(|c| c.ready),
        Some(false)
    );
}

#[test]
fn new_endpoints_fill_a_slice_being_written_or_the_tightest_fit() {
    let svc = service("ns", "web");
    let mut pods = pods(150);
    let mut n = 0;
    let slices = apply(
        &[],
        plan(&svc, &[], &desired(&svc, &pods), 100, MANAGER),
        &mut n,
    );
    assert_eq!(sizes(&slices), [50, 100]);
    // Five more pods: they go into the half-full slice, one update, no create.
    pods.extend((150..155).map(|i| pod("ns", &format!("p{i}"), "web", &format!("10.2.0.{i}"))));
    let p = plan(&svc, &slices, &desired(&svc, &pods), 100, MANAGER);
    assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
    let slices = apply(&slices, p, &mut n);
    assert_eq!(sizes(&slices), [55, 100]);
    assert_eq!(all_addresses(&slices).len(), 155);
}

#[test]
fn removed_pods_leave_their_slices_and_empty_slices_go() {
    let svc = service("ns", "web");
    let all = pods(150);
    let mut n = 0;
    let slices = apply(
        &[],
        plan(&svc, &[], &desired(&svc, &all), 100, MANAGER),
        &mut n,
    );
    // Keep only the pods of the full slice: the other slice empties and is deleted.
    let full = slices
        .iter()
        .find(|s| endpoint_count(s) == 100)
        .expect("a full slice");
    let keep: Vec<Pod> = all
        .iter()
        .filter(|p| {
            full.endpoints
                .iter()
                .flatten()
                .any(|e| e.addresses[0] == p.ips[0].to_string())
        })
        .cloned()
        .collect();
    let p = plan(&svc, &slices, &desired(&svc, &keep), 100, MANAGER);
    assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 0, 1));
}

#[test]
fn no_endpoints_leave_one_placeholder() {
    let svc = service("ns", "web");
    let mut n = 0;
    let p = plan(&svc, &[], &desired(&svc, &[]), 100, MANAGER);
    assert_eq!(p.create.len(), 1);
    assert!(p.create[0].endpoints.as_ref().is_some_and(Vec::is_empty));
    let slices = apply(&[], p, &mut n);
    // The placeholder is kept, not deleted and re-created.
    assert!(plan(&svc, &slices, &desired(&svc, &[]), 100, MANAGER).is_empty());
    // Pods arriving fill it (a recycle or an update, never a second slice).
    let pods = pods(3);
    let p = plan(&svc, &slices, &desired(&svc, &pods), 100, MANAGER);
    let slices = apply(&slices, p, &mut n);
    assert_eq!(slices.len(), 1);
    assert_eq!(sizes(&slices), [3]);
    // And all pods leaving turns the last slice back into a placeholder in place.
    let p = plan(&svc, &slices, &desired(&svc, &[]), 100, MANAGER);
    assert_eq!(
        (p.create.len(), p.update.len(), p.delete.len()),
        (0, 1, 0),
        "{p:?}"
    );
}

#[test]
fn slices_of_another_owner_or_family_are_deleted() {
    let svc = service("ns", "web");
    let pods = pods(3);
    let mut n = 0;
    let slices = apply(
        &[],
        plan(&svc, &[], &desired(&svc, &pods), 100, MANAGER),
        &mut n,
    );
    // The Service was re-created: new UID, old slices are not its own.
    let recreated = Service {
        uid: Some("uid-web-2".into()),
        ..svc.clone()
    };
    let p = plan(
        &recreated,
        &slices,
        &desired(&recreated, &pods),
        100,
        MANAGER,
    );
    assert_eq!(p.delete.len(), 1, "{p:?}");
    assert_eq!(p.create.len() + p.update.len(), 1);
    // An IPv6 slice of an IPv4-only Service goes.
    let mut v6 = (*slices[0]).clone();
    v6.address_type = "IPv6".into();
    v6.metadata.name = Some("web-v6".into());
    let mut with_v6 = slices.clone();
    with_v6.push(Arc::new(v6));
    let p = plan(&svc, &with_v6, &desired(&svc, &pods), 100, MANAGER);
    assert_eq!(p.delete.len(), 1);
    assert_eq!(p.delete[0].metadata.name.as_deref(), Some("web-v6"));
}

#[test]
fn service_label_changes_rewrite_labels() {
    let svc = service("ns", "web");
    let pods = pods(3);
    let mut n = 0;
    let slices = apply(
        &[],
        plan(&svc, &[], &desired(&svc, &pods), 100, MANAGER),
        &mut n,
    );
    let relabelled = Service {
        labels: crate::testing::labels(&[("team", "a")]),
        ..svc
    };
    let p = plan(
        &relabelled,
        &slices,
        &desired(&relabelled, &pods),
        100,
        MANAGER,
    );
    assert_eq!(p.update.len(), 1);
    let labels = p.update[0].metadata.labels.as_ref().expect("labels");
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
}

#[test]
fn max_endpoints_per_slice_is_honoured() {
    let svc = service("ns", "web");
    let pods = pods(25);
    let p = plan(&svc, &[], &desired(&svc, &pods), 10, MANAGER);
    let mut n = 0;
    let slices = apply(&[], p, &mut n);
    assert_eq!(sizes(&slices), [5, 10, 10]);
}

#[test]
fn a_pod_recreated_under_the_same_name_updates_in_place() {
    let svc = service("ns", "web");
    let mut pods = pods(2);
    let mut n = 0;
    let slices = apply(
        &[],
        plan(&svc, &[], &desired(&svc, &pods), 100, MANAGER),
        &mut n,
    );
    pods[0].uid = Some("uid-new".into());
    let p = plan(&svc, &slices, &desired(&svc, &pods), 100, MANAGER);
    assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
}
