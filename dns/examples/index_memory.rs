//! Heap the DNS server holds for the benchmark's cluster (10,000 Services, 10 ready endpoints
//! each, one EndpointSlice per Service, as `populate` writes them): what the watch side's
//! trackers keep, and what the published index adds on top.
//!
//! Run: `cargo run --release -p svcplane-dns --example index_memory`
//!
//! Counting is exact (a counting global allocator: bytes live, not RSS).

use std::alloc::System;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use svcplane_dns::Index;
use svcplane_dns::zone::{ZoneService, ZoneSlice};
use svcplane_model::tracker::{ChangeTracker, EndpointsTracker};
use svcplane_model::{EndpointSlice, LABEL_SERVICE_NAME, ObjectKey, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SERVICE: usize = 10;
const NAMESPACES: usize = 100;

fn live(region: &Region<'_, System>) -> i64 {
    let s = region.change();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn api_service(i: usize) -> core::Service {
    let ip = format!("10.96.{}.{}", (i / 250) % 256, i % 250 + 1);
    core::Service {
        metadata: meta(&format!("ns-{}", i % NAMESPACES), &format!("svc-{i}")),
        spec: Some(core::ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            ip_families: Some(vec!["IPv4".into()]),
            ip_family_policy: Some("SingleStack".into()),
            internal_traffic_policy: Some("Cluster".into()),
            session_affinity: Some("None".into()),
            ports: Some(vec![core::ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn api_slice(i: usize) -> discovery::EndpointSlice {
    let mut metadata = meta(&format!("ns-{}", i % NAMESPACES), &format!("svc-{i}-1"));
    metadata.labels = Some(BTreeMap::from([(
        LABEL_SERVICE_NAME.to_owned(),
        format!("svc-{i}"),
    )]));
    discovery::EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: Some(
            (0..ENDPOINTS_PER_SERVICE)
                .map(|e| {
                    let n = i * ENDPOINTS_PER_SERVICE + e;
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
                        ..Default::default()
                    }
                })
                .collect(),
        ),
        ports: Some(vec![discovery::EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

fn main() {
    let region = Region::new(GLOBAL);
    let mut services: ChangeTracker<ObjectKey, Arc<ZoneService>> = ChangeTracker::new();
    for i in 0..SERVICES {
        let svc = Service::try_from(&api_service(i)).expect("generated Services are valid");
        services.apply(svc.key.clone(), Some(Arc::new(ZoneService::from(&svc))));
    }
    let service_changes = services.drain();
    let mut slices: EndpointsTracker<ZoneSlice> = EndpointsTracker::new();
    for i in 0..SERVICES {
        let slice = EndpointSlice::try_from(&api_slice(i)).expect("generated slices are valid");
        slices.apply(slice.key.clone(), Some(Arc::new(ZoneSlice::from(&slice))));
    }
    let slice_changes = slices.drain();
    let tracked = live(&region);

    let region = Region::new(GLOBAL);
    let mut index = Index::new();
    for change in service_changes {
        index.apply_service(change.key, change.current);
    }
    for change in slice_changes {
        index.apply_endpoints(change.key, change.current);
    }
    let indexed = live(&region);
    black_box((&services, &slices, &index));

    let endpoints = SERVICES * ENDPOINTS_PER_SERVICE;
    println!("services={SERVICES} endpoints={endpoints}");
    println!(
        "trackers_mib={:.1} index_mib={:.1} total_mib={:.1} ({:.0} bytes/service+{ENDPOINTS_PER_SERVICE} endpoints)",
        mib(tracked),
        mib(indexed),
        mib(tracked + indexed),
        (tracked + indexed) as f64 / SERVICES as f64
    );
    map_costs();
}

/// Why the index uses B-trees: heap per entry of 100,000 IP-keyed entries in each map kind.
fn map_costs() {
    use std::net::{IpAddr, Ipv4Addr};
    const N: u32 = 100_000;
    let ips = || (0..N).map(|i| (IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + i)), 1u64));
    let region = Region::new(GLOBAL);
    let trie: imbl::HashMap<IpAddr, u64> = ips().collect();
    let trie_bytes = live(&region);
    let region = Region::new(GLOBAL);
    let btree: imbl::OrdMap<IpAddr, u64> = ips().collect();
    let btree_bytes = live(&region);
    let region = Region::new(GLOBAL);
    let plain: std::collections::HashMap<IpAddr, u64> = ips().collect();
    let plain_bytes = live(&region);
    println!(
        "bytes per (IpAddr, u64) entry: imbl::HashMap={} imbl::OrdMap={} std HashMap={}",
        trie_bytes / i64::from(N),
        btree_bytes / i64::from(N),
        plain_bytes / i64::from(N)
    );
    black_box((trie, btree, plain));
}
