//! Heap held by the model for a cluster of 10,000 Services and 100,000 endpoints (10 per
//! Service, one EndpointSlice each), next to the heap the same objects take as k8s-openapi
//! values, which is what a cache of whole API objects (a kube-runtime reflector store) holds.
//!
//! Run: `cargo run --release -p svcplane-model --example memory`
//!
//! Counting is exact: a counting global allocator reports bytes live, not RSS. The API objects
//! are built without `managedFields`, which real watch events carry, so the ratio understates
//! what a naive cache would cost.

use std::alloc::System;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use svcplane_model::tracker::{ChangeTracker, EndpointsTracker};
use svcplane_model::{EndpointSlice, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, ObjectKey, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SERVICE: usize = 10;
const NAMESPACES: usize = 100;

fn live(region: &Region<'_, System>) -> i64 {
    let s = region.change();
    // Reallocations are already folded into the allocated and deallocated counts.
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn meta(ns: &str, name: &str, i: usize, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.to_owned()),
        name: Some(name.to_owned()),
        uid: Some(format!("6f1c3a52-8d0e-4b5a-9c1f-{i:012x}")),
        resource_version: Some(format!("{}", 100_000 + i)),
        labels: Some(labels),
        ..Default::default()
    }
}

fn api_service(i: usize) -> core::Service {
    let ns = format!("team-{}", i % NAMESPACES);
    let name = format!("service-{i}");
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), name.clone()),
        ("app.kubernetes.io/part-of".to_owned(), ns.clone()),
    ]);
    let ip = format!("10.96.{}.{}", (i / 250) % 256, i % 250 + 1);
    core::Service {
        metadata: meta(&ns, &name, i, labels.clone()),
        spec: Some(core::ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            ip_families: Some(vec!["IPv4".into()]),
            ip_family_policy: Some("SingleStack".into()),
            internal_traffic_policy: Some("Cluster".into()),
            session_affinity: Some("None".into()),
            selector: Some(labels),
            ports: Some(vec![
                core::ServicePort {
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    ..Default::default()
                },
                core::ServicePort {
                    name: Some("metrics".into()),
                    protocol: Some("TCP".into()),
                    port: 9090,
                    target_port: Some(IntOrString::Int(9090)),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: Some(Default::default()),
    }
}

fn api_slice(i: usize) -> discovery::EndpointSlice {
    let ns = format!("team-{}", i % NAMESPACES);
    let service = format!("service-{i}");
    let labels = BTreeMap::from([
        (LABEL_SERVICE_NAME.to_owned(), service.clone()),
        (
            LABEL_MANAGED_BY.to_owned(),
            "svcplane.dev/endpoints".to_owned(),
        ),
    ]);
    let endpoints = (0..ENDPOINTS_PER_SERVICE)
        .map(|e| {
            let n = i * ENDPOINTS_PER_SERVICE + e;
            let pod = format!("{service}-{e}");
            discovery::Endpoint {
                addresses: vec![format!(
                    "10.{}.{}.{}",
                    128 + n / 65_536,
                    (n / 256) % 256,
                    n % 256
                )],
                conditions: Some(discovery::EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(format!("node-{}", n % 500)),
                zone: Some(format!("zone-{}", n % 3)),
                target_ref: Some(core::ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(ns.clone()),
                    name: Some(pod),
                    uid: Some(format!("0b8e6c1d-2f3a-4e5b-8c7d-{n:012x}")),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    discovery::EndpointSlice {
        metadata: meta(&ns, &format!("{service}-x7k2p"), i, labels),
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(vec![
            discovery::EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None,
            },
            discovery::EndpointPort {
                name: Some("metrics".into()),
                port: Some(9090),
                protocol: Some("TCP".into()),
                app_protocol: None,
            },
        ]),
    }
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    // The API objects as a whole-object cache would hold them.
    let region = Region::new(GLOBAL);
    let services: Vec<core::Service> = (0..SERVICES).map(api_service).collect();
    let api_service_bytes = live(&region);
    let region = Region::new(GLOBAL);
    let slices: Vec<discovery::EndpointSlice> = (0..SERVICES).map(api_slice).collect();
    let api_slice_bytes = live(&region);
    let api_bytes = api_service_bytes + api_slice_bytes;

    // The model, held in the trackers DNS and the proxy keep.
    let region = Region::new(GLOBAL);
    let mut service_tracker: ChangeTracker<ObjectKey, Arc<Service>> = ChangeTracker::new();
    for raw in &services {
        let svc = Service::try_from(raw).expect("generated services are valid");
        service_tracker.apply(svc.key.clone(), Some(Arc::new(svc)));
    }
    // A consumer drains after the initial sync; what stays is the steady state.
    black_box(service_tracker.drain());
    let model_service_bytes = live(&region);
    let region = Region::new(GLOBAL);
    let mut endpoints_tracker = EndpointsTracker::new();
    for raw in &slices {
        let slice = EndpointSlice::try_from(raw).expect("generated slices are valid");
        endpoints_tracker.apply(slice.key.clone(), Some(Arc::new(slice)));
    }
    black_box(endpoints_tracker.drain());
    let model_slice_bytes = live(&region);
    let model_bytes = model_service_bytes + model_slice_bytes;
    println!(
        "services: api_mib={:.1} model_mib={:.1}; endpoint slices: api_mib={:.1} model_mib={:.1}",
        mib(api_service_bytes),
        mib(model_service_bytes),
        mib(api_slice_bytes),
        mib(model_slice_bytes)
    );
    println!(
        "sizes: Service={} EndpointSlice={} Endpoint={} ObjectKey={}",
        size_of::<Service>(),
        size_of::<EndpointSlice>(),
        size_of::<svcplane_model::Endpoint>(),
        size_of::<ObjectKey>()
    );

    let endpoints = SERVICES * ENDPOINTS_PER_SERVICE;
    println!("services={SERVICES} endpoints={endpoints}");
    println!(
        "api_objects_mib={:.1} ({:.0} bytes/service+{ENDPOINTS_PER_SERVICE} endpoints)",
        mib(api_bytes),
        api_bytes as f64 / SERVICES as f64
    );
    println!(
        "model_mib={:.1} ({:.0} bytes/service+{ENDPOINTS_PER_SERVICE} endpoints)",
        mib(model_bytes),
        model_bytes as f64 / SERVICES as f64
    );
    println!(
        "model/api_ratio={:.2}",
        model_bytes as f64 / api_bytes as f64
    );
    black_box((services, slices, service_tracker, endpoints_tracker));
}
