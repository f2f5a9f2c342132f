//! Builders for the unit tests' Services and pods.

use std::net::IpAddr;

use svcplane_model::{
    ClusterIps, IpFamily, Labels, NamedPort, ObjectKey, Pod, PodPhase, Protocol, Selector, Service,
    ServicePort, ServiceType, TargetPort,
};

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, *v)).collect()
}

pub fn port(name: &str, port: u16, target: TargetPort) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: Protocol::Tcp,
        port,
        target_port: target,
        node_port: None,
        app_protocol: None,
    }
}

/// A ClusterIP Service in `ns` selecting `app=<name>`, with one port `http` 80 → 8080.
pub fn service(ns: &str, name: &str) -> Service {
    Service {
        uid: Some(format!("uid-{name}").into()),
        cluster_ips: ClusterIps::Ips(vec!["10.96.0.10".parse().expect("ip")]),
        ip_families: vec![IpFamily::V4],
        ports: vec![port("http", 80, TargetPort::Number(8080))],
        selector: Selector::new(labels(&[("app", name)])),
        ..Service::new(ObjectKey::new(ns, name), ServiceType::ClusterIp)
    }
}

/// A running, ready pod in `ns` labelled `app=<app>` on `node-1` with `ip`.
pub fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Pod {
    Pod {
        key: ObjectKey::new(ns, name),
        uid: Some(format!("uid-{name}").into()),
        labels: labels(&[("app", app)]),
        ips: vec![ip.parse::<IpAddr>().expect("ip")],
        phase: PodPhase::Running,
        ready: true,
        ready_since: None,
        terminating: false,
        hostname: None,
        subdomain: None,
        node_name: Some("node-1".into()),
        named_ports: vec![NamedPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
    }
}
