//! What one sync costs in this process (render and diff, no kernel): SERVICES ClusterIP Services
//! with two ready endpoints each, then single changes on top of them.
//!
//!     cargo run --release -p svcplane-proxy --example sync_cost [SERVICES]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use svcplane_model::{
    AddressType, ClusterIps, Conditions, Endpoint, EndpointPort, EndpointSlice, ObjectKey,
    Protocol, Service, ServicePort, ServiceType, TargetPort,
};
use svcplane_proxy::conntrack::FakeConntrack;
use svcplane_proxy::metrics::Metrics;
use svcplane_proxy::nft::FakeNft;
use svcplane_proxy::plan::NodePortAddresses;
use svcplane_proxy::state::{Settings, State};

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

fn service(i: u32) -> Arc<Service> {
    Arc::new(Service {
        cluster_ips: ClusterIps::Ips(vec![ip(0x0a60_0000 + i)]),
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(8080),
            node_port: None,
            app_protocol: None,
        }],
        ..Service::new(
            ObjectKey::new("bench", format!("svc-{i}")),
            ServiceType::ClusterIp,
        )
    })
}

fn slice(i: u32, first: u32) -> Arc<EndpointSlice> {
    Arc::new(EndpointSlice {
        key: ObjectKey::new("bench", format!("svc-{i}-1")),
        service: ObjectKey::new("bench", format!("svc-{i}")),
        address_type: AddressType::V4,
        ports: vec![EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: Some(8080),
            app_protocol: None,
        }],
        endpoints: [first, first + 1]
            .into_iter()
            .map(|n| Endpoint {
                addresses: vec![ip(n)],
                conditions: Conditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                },
                hostname: None,
                node_name: Some("node-b".into()),
                zone: None,
                hints: None,
                target_pod: None,
            })
            .collect(),
        managed_by: None,
        trigger_time: None,
        resource_version: None,
    })
}

fn main() {
    let services: u32 = std::env::args()
        .nth(1)
        .map_or(10_000, |s| s.parse().expect("SERVICES"));
    let nft = FakeNft::new();
    let settings = Settings {
        node_name: "node-a".into(),
        nodeport_addresses: NodePortAddresses::Primary,
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        masquerade_all: false,
        masquerade_bit: 14,
        detect_local: Default::default(),
    };
    let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics");
    let mut state = State::new(
        settings,
        Box::new(nft.clone()),
        Box::new(FakeConntrack::default()),
        metrics,
    );
    for i in 0..services {
        let s = service(i);
        state.services.apply(s.key.clone(), Some(s));
        let e = slice(i, 0x0af4_0000 + 2 * i);
        state.slices.apply(e.key.clone(), Some(e));
    }
    let started = Instant::now();
    state.sync().expect("sync");
    let full = started.elapsed();
    let bytes = nft.applied().last().map_or(0, String::len);
    println!("services {services}: first sync {full:?}, {bytes} bytes of nft text");

    if let Some(dir) = std::env::var_os("SYNC_COST_DUMP") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::write(dir.join("full.nft"), &nft.applied()[0]).expect("write");
        // One endpoint of Service 0 replaced, and one Service added.
        let e = slice(0, 0x0af6_0000);
        state.slices.apply(e.key.clone(), Some(e));
        let (text, kind) = state.transaction();
        assert_eq!(kind, "partial");
        std::fs::write(dir.join("endpoint.nft"), text).expect("write");
        let e = slice(0, 0x0af4_0000);
        state.slices.apply(e.key.clone(), Some(e));
        state.sync().expect("sync back");
    }
    let mut took = Vec::new();
    for round in 0..50u32 {
        let i = services + round;
        let s = service(i);
        state.services.apply(s.key.clone(), Some(s));
        let e = slice(i, 0x0af5_0000 + 2 * i);
        state.slices.apply(e.key.clone(), Some(e));
        let started = Instant::now();
        state.sync().expect("sync");
        took.push(started.elapsed());
    }
    took.sort();
    let bytes = nft.applied().last().map_or(0, String::len);
    println!(
        "one Service added: median {:?}, max {:?}, {bytes} bytes of nft text",
        took[took.len() / 2],
        took[took.len() - 1]
    );
}
