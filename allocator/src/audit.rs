//! The audit: Services against IPAddress objects, ServiceCIDRs and the NodePort range, run
//! every `--audit-period` and shortly after any watched change.
//!
//! Findings become Warning Events (once per finding, on the leader) with the API server's
//! repair-loop reasons, and gauges. Repairs are left to the API server's own repair
//! controllers, which run in every cluster and would race ours: the audit reports, and the
//! allocator's only repair is its own, dropping reservations whose time is up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use svcplane_runtime::Events;
use tokio::sync::Notify;

use crate::index::{Holder, Index, Owner};
use crate::ranges::CidrRange;
use crate::webhook::{Allocator, lock};

/// How long an IPAddress may point at a missing Service before it counts as leaked (the API
/// server's repair loop waits the same).
const LEAK_GRACE: Duration = Duration::from_secs(60);
/// How long any other finding must last before it is reported, by default (`--audit-grace`):
/// the watches of Services and IPAddresses lag each other under load, and a Service deleted and
/// re-created in quick succession can look like a duplicate for a moment.
pub const GRACE: Duration = Duration::from_secs(30);

/// When each current finding was first seen.
pub type Suspects = HashMap<(About, &'static str), Instant>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum About {
    Service(Owner),
    IpAddress(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// The metric label.
    pub kind: &'static str,
    /// The Event reason (the API server's repair loops' reasons where they have one).
    pub reason: &'static str,
    pub about: About,
    pub note: String,
}

/// The findings in the index now that have lasted their grace period (`LEAK_GRACE` for leaked
/// IPAddresses, `grace` for the rest); `suspects` remembers when each was first seen.
pub fn audit(idx: &Index, suspects: &mut Suspects, now: Instant, grace: Duration) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut still = BTreeSet::new();
    for f in raw_findings(idx) {
        let key = (f.about.clone(), f.kind);
        let first = *suspects.entry(key.clone()).or_insert(now);
        still.insert(key);
        let wait = if f.kind == "leaked_ip_address" {
            LEAK_GRACE
        } else {
            grace
        };
        if now.duration_since(first) >= wait {
            out.push(f);
        }
    }
    suspects.retain(|k, _| still.contains(k));
    out.sort();
    out
}

fn raw_findings(idx: &Index) -> Vec<Finding> {
    let mut out = Vec::new();
    let (dup_ips, dup_ports) = idx.duplicates();
    for (ip, owners) in dup_ips {
        for o in owners.iter().skip(1) {
            out.push(Finding {
                kind: "duplicate_cluster_ip",
                reason: "ClusterIPAlreadyAllocated",
                about: About::Service(o.clone()),
                note: format!("Cluster IP {ip} was assigned to multiple services ({}); please recreate service", join(&owners)),
            });
        }
    }
    for (port, owners) in dup_ports {
        for o in owners.iter().skip(1) {
            out.push(Finding {
                kind: "duplicate_node_port",
                reason: "PortAlreadyAllocated",
                about: About::Service(o.clone()),
                note: format!(
                    "Port {port} was assigned to multiple services ({}); please recreate service",
                    join(&owners)
                ),
            });
        }
    }
    let services: BTreeMap<&Owner, _> = idx.services().collect();
    for (owner, held) in &services {
        for ip in &held.ips {
            if !idx.in_some_cidr(*ip) {
                out.push(Finding {
                    kind: "cluster_ip_out_of_range",
                    reason: "ClusterIPOutOfRange",
                    about: About::Service((*owner).clone()),
                    note: format!("Cluster IP {ip} is not within any configured Service CIDR; please recreate service"),
                });
            } else if idx.ip_object(*ip).is_none() {
                out.push(Finding {
                    kind: "cluster_ip_not_allocated",
                    reason: "ClusterIPNotAllocated",
                    about: About::Service((*owner).clone()),
                    note: format!("Cluster IP {ip} has no IPAddress object (the API server's repair loop recreates it)"),
                });
            }
        }
        for port in &held.ports {
            if !idx.node_ports.contains(*port) {
                out.push(Finding {
                    kind: "node_port_out_of_range",
                    reason: "PortOutOfRange",
                    about: About::Service((*owner).clone()),
                    note: format!(
                        "Port {port} is not within the port range {}; please recreate service",
                        idx.node_ports
                    ),
                });
            }
        }
    }
    for (ip, holder) in idx.ip_objects() {
        if let Holder::Service(owner) = holder
            && !services.contains_key(owner)
        {
            out.push(Finding {
                kind: "leaked_ip_address",
                reason: "IPAddressNotAllocated",
                about: About::IpAddress(*ip),
                note: format!("IPAddress {ip} for Service {owner} appears to have leaked (the API server's repair loop deletes it)"),
            });
        }
    }
    out
}

fn join(owners: &[Owner]) -> String {
    owners
        .iter()
        .map(Owner::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub const FINDING_KINDS: [&str; 6] = [
    "duplicate_cluster_ip",
    "duplicate_node_port",
    "cluster_ip_out_of_range",
    "node_port_out_of_range",
    "cluster_ip_not_allocated",
    "leaked_ip_address",
];

/// Updates the range gauges from the index.
fn gauges(a: &Allocator, idx: &Index) {
    let m = &a.metrics;
    m.range_addresses.reset();
    for c in idx.service_cidrs() {
        for r in &c.ranges {
            let used = idx.used_in(r);
            let size = CidrRange::size(r);
            let label = format!("{}/{}", c.name, r.cidr);
            m.range_addresses
                .with_label_values(&["cluster_ip", &label, "used"])
                .set(used as f64);
            m.range_addresses
                .with_label_values(&["cluster_ip", &label, "free"])
                .set(size.saturating_sub(used) as f64);
        }
    }
    let ports = idx.node_ports;
    let used = idx.used_ports_in(ports);
    let label = ports.to_string();
    m.range_addresses
        .with_label_values(&["node_port", &label, "used"])
        .set(f64::from(used));
    m.range_addresses
        .with_label_values(&["node_port", &label, "free"])
        .set(f64::from(ports.size().saturating_sub(used)));
    let (ips, port_res) = idx.reservations();
    m.reservations
        .with_label_values(&["cluster_ip"])
        .set(i64::try_from(ips).unwrap_or(i64::MAX));
    m.reservations
        .with_label_values(&["node_port"])
        .set(i64::try_from(port_res).unwrap_or(i64::MAX));
}

pub async fn run(
    _client: Client,
    a: Arc<Allocator>,
    events: Events,
    period: Duration,
    grace: Duration,
    changed: Arc<Notify>,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut suspects = HashMap::new();
    let mut reported: BTreeSet<(About, String)> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(period) => {}
            _ = changed.notified() => {
                // Let a burst of changes settle into one pass.
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        if !a.is_synced() && !a.is_leading() {
            // Followers have nothing settled to report; the gauges still follow.
            gauges(&a, &lock(&a.index));
            continue;
        }
        let findings = {
            let idx = lock(&a.index);
            gauges(&a, &idx);
            audit(&idx, &mut suspects, Instant::now(), grace)
        };
        let mut counts: BTreeMap<&str, i64> = FINDING_KINDS.iter().map(|k| (*k, 0)).collect();
        for f in &findings {
            *counts.entry(f.kind).or_default() += 1;
        }
        for (kind, n) in counts {
            a.metrics.audit_findings.with_label_values(&[kind]).set(n);
        }
        a.metrics.last_audit.set(crate::sticky::unix_now() as f64);
        let current: BTreeSet<(About, String)> = findings
            .iter()
            .map(|f| (f.about.clone(), f.note.clone()))
            .collect();
        if a.is_leading() {
            for f in findings
                .iter()
                .filter(|f| !reported.contains(&(f.about.clone(), f.note.clone())))
            {
                tracing::warn!(kind = f.kind, note = %f.note, "audit finding");
                events
                    .warn(&reference(&f.about), f.reason, f.note.clone())
                    .await;
            }
        }
        reported = current;
    }
}

fn reference(about: &About) -> ObjectReference {
    match about {
        About::Service(o) => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(o.namespace.to_string()),
            name: Some(o.name.to_string()),
            ..Default::default()
        },
        About::IpAddress(ip) => ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("IPAddress".into()),
            name: Some(ip.to_string()),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::networking::v1::{IPAddress, ServiceCIDR};
    use serde_json::json;

    use super::*;
    use crate::ranges::PortRange;

    fn svc(name: &str, ip: &str, node_port: i32) -> Service {
        serde_json::from_value(json!({"metadata": {"namespace": "ns", "name": name},
            "spec": {"type": "NodePort", "clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80, "nodePort": node_port}]}}))
        .expect("service")
    }

    fn ipaddr(ip: &str, parent: &str) -> IPAddress {
        serde_json::from_value(json!({"metadata": {"name": ip},
            "spec": {"parentRef": {"group": "", "resource": "services", "namespace": "ns", "name": parent}}}))
        .expect("ipaddress")
    }

    #[test]
    fn finds_what_the_repair_loops_would() {
        let mut idx = Index::new(PortRange::DEFAULT, Duration::from_secs(60));
        let cidr: ServiceCIDR = serde_json::from_value(
            json!({"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16"]}}),
        )
        .expect("cidr");
        idx.apply_service_cidr("kubernetes", Some(&cidr));
        for (name, ip, port) in [
            ("a", "10.96.0.5", 30100),
            ("b", "10.96.0.5", 30100),
            ("c", "10.0.0.1", 20000),
            ("d", "10.96.0.6", 30101),
        ] {
            idx.apply_service(&Owner::new("ns", name), Some(&svc(name, ip, port)));
        }
        idx.apply_ip_address("10.96.0.5", Some(&ipaddr("10.96.0.5", "a")));
        idx.apply_ip_address("10.96.0.9", Some(&ipaddr("10.96.0.9", "gone")));
        let mut suspects = HashMap::new();
        let now = Instant::now();
        let kinds = |f: &[Finding]| {
            f.iter()
                .map(|f| (f.kind, f.about.clone()))
                .collect::<BTreeSet<_>>()
        };
        assert!(
            audit(&idx, &mut suspects, now, GRACE).is_empty(),
            "nothing reported before its grace"
        );
        let first = audit(&idx, &mut suspects, now + GRACE, GRACE);
        let svc_about = |n: &str| About::Service(Owner::new("ns", n));
        assert_eq!(
            kinds(&first),
            BTreeSet::from([
                ("duplicate_cluster_ip", svc_about("b")),
                ("duplicate_node_port", svc_about("b")),
                ("cluster_ip_out_of_range", svc_about("c")),
                ("node_port_out_of_range", svc_about("c")),
                ("cluster_ip_not_allocated", svc_about("d")),
            ])
        );
        // The leak is reported once it outlived the grace period.
        assert!(
            !first.iter().any(|f| f.kind == "leaked_ip_address"),
            "leaks wait longer"
        );
        let later = audit(&idx, &mut suspects, now + LEAK_GRACE, GRACE);
        assert!(later.iter().any(|f| f.kind == "leaked_ip_address"
            && f.about == About::IpAddress("10.96.0.9".parse().expect("ip"))));
        idx.apply_ip_address("10.96.0.9", None);
        let _ = audit(&idx, &mut suspects, now + LEAK_GRACE, GRACE);
        assert!(
            !suspects
                .keys()
                .any(|(a, _)| matches!(a, About::IpAddress(_))),
            "a finding that went away is forgotten"
        );
    }
}
