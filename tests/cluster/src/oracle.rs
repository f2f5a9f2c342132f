//! The fault suite's oracle: what the whole Service plane must show for the API objects as they
//! stand, computed from Services and Pods alone (not from svcplane's code), and compared with
//! what the components made and what the network does:
//! - Endpoints and EndpointSlices hold exactly the selected pods with an address, ready or not
//!   as the pods say, on the Service's ports; none remain for deleted or ExternalName Services;
//! - every ClusterIP, NodePort and LoadBalancer IP is unique and in its range; every ClusterIP
//!   has its IPAddress object and no IPAddress outlives its Service;
//! - every name answers from 10.96.0.10 (real `dig` in a pod) as the Service says, deleted ones
//!   not at all;
//! - every ClusterIP, NodePort and LoadBalancer IP reaches exactly the ready pods (the demo
//!   server answers with its pod name; with ClientIP affinity, one of them), or is refused
//!   when there are none.
//!
//! [`check`] returns every divergence found, one line each; empty means all is right.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::IPAddress;
use kube::api::{Api, ListParams};

use crate::Cluster;

/// The namespaces whose Services the oracle checks, and names that must not resolve.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub namespaces: Vec<String>,
    /// (namespace, name) of Services deleted along the way.
    pub deleted: BTreeSet<(String, String)>,
    /// Ready pods of each kube-system Deployment and DaemonSet when all was well (see
    /// [`components`]); at rest means as many again.
    pub components: BTreeMap<String, i32>,
}

/// Ready pods of each Deployment and DaemonSet in kube-system (the svcplane components).
pub async fn components(cluster: &Cluster) -> Result<BTreeMap<String, i32>, String> {
    let client = cluster.client().clone();
    let mut ready = BTreeMap::new();
    for d in list(Api::<Deployment>::namespaced(client.clone(), "kube-system")).await? {
        let n = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        ready.insert(d.metadata.name.unwrap_or_default(), n);
    }
    for d in list(Api::<DaemonSet>::namespaced(client, "kube-system")).await? {
        let n = d.status.map_or(0, |s| s.number_ready);
        ready.insert(d.metadata.name.unwrap_or_default(), n);
    }
    Ok(ready)
}

/// Whether a Lease holder `<pod>_<pid>` of an svcplane component is a live process (pods share
/// the host's pid namespace here); an empty holder counts as not live.
fn holder_alive(holder: &str) -> bool {
    let Some(pid) = holder
        .rsplit_once('_')
        .and_then(|(_, p)| p.parse::<u32>().ok())
    else {
        return false;
    };
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("svcplane-"))
}

const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 16);
const LB_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 51, 100, 0), 24);
const NODE_PORTS: std::ops::RangeInclusive<i32> = 30000..=32767;

fn in_net(ip: &str, (net, bits): (Ipv4Addr, u8)) -> bool {
    ip.parse::<Ipv4Addr>()
        .is_ok_and(|ip| (u32::from(ip) ^ u32::from(net)) >> (32 - bits) == 0)
}

/// A selected pod as the oracle sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Member {
    ip: String,
    name: String,
    ready: bool,
}

fn selected(svc: &Service, pods: &[Pod]) -> Option<Vec<Member>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let ns = svc.metadata.namespace.as_deref();
    let mut members: Vec<Member> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == ns)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some(Member {
                ip,
                name: p.metadata.name.clone()?,
                ready: crate::pod_ready(p),
            })
        })
        .collect();
    members.sort();
    Some(members)
}

fn key(svc: &Service) -> (String, String) {
    (
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

fn cluster_ip(svc: &Service) -> Option<String> {
    svc.spec
        .as_ref()?
        .cluster_ip
        .clone()
        .filter(|ip| !ip.is_empty() && ip != "None")
}

fn service_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP")
}

fn lb_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect()
}

/// The (name, port) the Service's ports resolve to on the demo pods (named port `http` is
/// 8080; a number is itself).
fn target_ports(svc: &Service) -> BTreeSet<(String, i32)> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let target = match p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => n,
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s))
                    if s == "http" =>
                {
                    8080
                }
                Some(_) => -1,
                None => p.port,
            };
            (p.name.unwrap_or_default(), target)
        })
        .collect()
}

/// Everything the oracle reads from the API, once.
struct Objects {
    services: Vec<Service>,
    pods: Vec<Pod>,
    endpoints: Vec<Endpoints>,
    slices: Vec<EndpointSlice>,
    addresses: Vec<IPAddress>,
}

async fn list<K>(api: Api<K>) -> Result<Vec<K>, String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items)
}

async fn read(cluster: &Cluster, scope: &Scope) -> Result<Objects, String> {
    let client = cluster.client().clone();
    let mut o = Objects {
        services: list(Api::<Service>::all(client.clone())).await?,
        pods: Vec::new(),
        endpoints: Vec::new(),
        slices: Vec::new(),
        addresses: list(Api::<IPAddress>::all(client.clone())).await?,
    };
    for ns in &scope.namespaces {
        o.pods
            .extend(list(Api::<Pod>::namespaced(client.clone(), ns)).await?);
        o.endpoints
            .extend(list(Api::<Endpoints>::namespaced(client.clone(), ns)).await?);
        o.slices
            .extend(list(Api::<EndpointSlice>::namespaced(client.clone(), ns)).await?);
    }
    Ok(o)
}

/// The slices of Service `ns/name` (by their service-name label, whoever manages them).
fn slices_of<'a>(
    slices: &'a [EndpointSlice],
    ns: &'a str,
    name: &'a str,
) -> impl Iterator<Item = &'a EndpointSlice> {
    slices.iter().filter(move |s| {
        s.metadata.namespace.as_deref() == Some(ns)
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .map(String::as_str)
                == Some(name)
    })
}

/// The API-level checks: endpoints, slices, allocations.
fn check_objects(o: &Objects, scope: &Scope, wrong: &mut Vec<String>) {
    let in_scope = |ns: &str| scope.namespaces.iter().any(|n| n == ns);
    // Endpoints and slices per Service.
    let services: BTreeMap<(String, String), &Service> =
        o.services.iter().map(|s| (key(s), s)).collect();
    for ((ns, name), svc) in &services {
        if !in_scope(ns) {
            continue;
        }
        let who = format!("{ns}/{name}");
        let members = selected(svc, &o.pods);
        let endpoints = o.endpoints.iter().find(|e| {
            e.metadata.namespace.as_deref() == Some(ns) && e.metadata.name.as_deref() == Some(name)
        });
        let slices: Vec<&EndpointSlice> = slices_of(&o.slices, ns, name).collect();
        let Some(members) = members else {
            if svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_none()
                && service_type(svc) != "ExternalName"
            {
                continue; // Without a selector its endpoints are the user's.
            }
            if endpoints.is_some() {
                wrong.push(format!(
                    "{who}: Endpoints exist for an ExternalName Service"
                ));
            }
            if !slices.is_empty() {
                wrong.push(format!(
                    "{who}: {} EndpointSlices exist for an ExternalName Service",
                    slices.len()
                ));
            }
            continue;
        };
        let want_ready: BTreeSet<&str> = members
            .iter()
            .filter(|m| m.ready)
            .map(|m| m.ip.as_str())
            .collect();
        let want_unready: BTreeSet<&str> = members
            .iter()
            .filter(|m| !m.ready)
            .map(|m| m.ip.as_str())
            .collect();
        let ports = target_ports(svc);
        // Endpoints.
        match endpoints {
            None => wrong.push(format!("{who}: no Endpoints object")),
            Some(ep) => {
                let subsets = ep.subsets.clone().unwrap_or_default();
                let got_ready: BTreeSet<&str> = subsets
                    .iter()
                    .flat_map(|s| s.addresses.iter().flatten())
                    .map(|a| a.ip.as_str())
                    .collect();
                let got_unready: BTreeSet<&str> = subsets
                    .iter()
                    .flat_map(|s| s.not_ready_addresses.iter().flatten())
                    .map(|a| a.ip.as_str())
                    .collect();
                if got_ready != want_ready || got_unready != want_unready {
                    wrong.push(format!(
                        "{who}: Endpoints ready {got_ready:?} not ready {got_unready:?}; want ready {want_ready:?} not ready {want_unready:?}"
                    ));
                }
                let got_ports: BTreeSet<(String, i32)> = subsets
                    .iter()
                    .flat_map(|s| s.ports.iter().flatten())
                    .map(|p| (p.name.clone().unwrap_or_default(), p.port))
                    .collect();
                if !members.is_empty() && got_ports != ports {
                    wrong.push(format!(
                        "{who}: Endpoints ports {got_ports:?}, want {ports:?}"
                    ));
                }
            }
        }
        // Slices: every selected pod once, with its readiness.
        let mut seen: BTreeMap<String, (bool, bool, bool)> = BTreeMap::new();
        for slice in &slices {
            for ep in slice.endpoints.iter().flatten() {
                let c = ep.conditions.clone().unwrap_or_default();
                for ip in &ep.addresses {
                    let conditions = (
                        c.ready.unwrap_or(false),
                        c.serving.unwrap_or(false),
                        c.terminating.unwrap_or(false),
                    );
                    if seen.insert(ip.clone(), conditions).is_some() {
                        wrong.push(format!("{who}: {ip} is in two EndpointSlices"));
                    }
                }
            }
            let got_ports: BTreeSet<(String, i32)> = slice
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone().unwrap_or_default(), p.port.unwrap_or(-1)))
                .collect();
            if slice.endpoints.as_ref().is_some_and(|e| !e.is_empty()) && got_ports != ports {
                wrong.push(format!(
                    "{who}: slice {:?} ports {got_ports:?}, want {ports:?}",
                    slice.metadata.name
                ));
            }
        }
        let want: BTreeMap<String, (bool, bool, bool)> = members
            .iter()
            .map(|m| (m.ip.clone(), (m.ready, m.ready, false)))
            .collect();
        if seen != want {
            wrong.push(format!(
                "{who}: EndpointSlices (ready, serving, terminating) {seen:?}; want {want:?}"
            ));
        }
    }
    // Deleted Services leave nothing behind.
    for (ns, name) in &scope.deleted {
        if services.contains_key(&(ns.clone(), name.clone())) {
            continue; // Created again under the same name.
        }
        if o.endpoints.iter().any(|e| {
            e.metadata.namespace.as_deref() == Some(ns) && e.metadata.name.as_deref() == Some(name)
        }) {
            wrong.push(format!("{ns}/{name}: Endpoints outlived the Service"));
        }
        let left = slices_of(&o.slices, ns, name).count();
        if left > 0 {
            wrong.push(format!(
                "{ns}/{name}: {left} EndpointSlices outlived the Service"
            ));
        }
    }

    // Allocations, over every Service in the cluster.
    let mut ips: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut node_ports: BTreeMap<(String, i32), Vec<String>> = BTreeMap::new();
    let mut lbs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for svc in &o.services {
        let (ns, name) = key(svc);
        let who = format!("{ns}/{name}");
        let spec = svc.spec.clone().unwrap_or_default();
        for ip in spec.cluster_ips.clone().unwrap_or_default() {
            if ip == "None" {
                continue;
            }
            if !in_net(&ip, SERVICE_CIDR) {
                wrong.push(format!("{who}: ClusterIP {ip} outside 10.96.0.0/16"));
            }
            ips.entry(ip).or_default().push(who.clone());
        }
        for p in spec.ports.clone().unwrap_or_default() {
            if let Some(np) = p.node_port {
                if !NODE_PORTS.contains(&np) {
                    wrong.push(format!("{who}: NodePort {np} outside 30000-32767"));
                }
                if !matches!(service_type(svc), "NodePort" | "LoadBalancer") {
                    wrong.push(format!(
                        "{who}: NodePort {np} on a {} Service",
                        service_type(svc)
                    ));
                }
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                node_ports.entry((proto, np)).or_default().push(who.clone());
            } else if matches!(service_type(svc), "NodePort" | "LoadBalancer") {
                wrong.push(format!("{who}: port {} has no NodePort", p.port));
            }
        }
        for ip in lb_ips(svc) {
            if !in_net(&ip, LB_POOL) {
                wrong.push(format!(
                    "{who}: LoadBalancer IP {ip} outside the pool 198.51.100.0/24"
                ));
            }
            lbs.entry(ip).or_default().push(who.clone());
        }
        if service_type(svc) == "LoadBalancer" && lb_ips(svc).is_empty() {
            wrong.push(format!("{who}: LoadBalancer without an IP"));
        }
    }
    for (ip, owners) in ips.iter().filter(|(_, o)| o.len() > 1) {
        wrong.push(format!("ClusterIP {ip} given to {owners:?}"));
    }
    for ((proto, port), owners) in node_ports.iter().filter(|(_, o)| o.len() > 1) {
        wrong.push(format!("NodePort {port}/{proto} given to {owners:?}"));
    }
    for (ip, owners) in lbs.iter().filter(|(_, o)| o.len() > 1) {
        wrong.push(format!("LoadBalancer IP {ip} given to {owners:?}"));
    }
    // IPAddress objects: one per ClusterIP, none without its Service.
    let mut recorded: BTreeMap<String, String> = BTreeMap::new();
    for a in &o.addresses {
        let ip = a.metadata.name.clone().unwrap_or_default();
        let parent = format!(
            "{}/{}",
            a.spec.parent_ref.namespace.clone().unwrap_or_default(),
            a.spec.parent_ref.name
        );
        match ips.get(&ip) {
            Some(owners) if owners.contains(&parent) => {}
            Some(owners) => wrong.push(format!(
                "IPAddress {ip} names {parent}, but the address belongs to {owners:?}"
            )),
            None => wrong.push(format!("IPAddress {ip} leaked: {parent} does not hold it")),
        }
        recorded.insert(ip, parent);
    }
    for (ip, owners) in &ips {
        if !recorded.contains_key(ip) {
            wrong.push(format!("ClusterIP {ip} of {owners:?} has no IPAddress"));
        }
    }
}

/// `dig +short` for `name` A from the client pod; its lines.
async fn dig(cluster: &Cluster, name: &str) -> Result<Vec<String>, String> {
    let out = cluster
        .exec(
            "demo",
            "client",
            &[
                "dig",
                "+short",
                "+time=2",
                "+tries=2",
                "@10.96.0.10",
                name,
                "A",
            ],
        )
        .await
        .map_err(|e| format!("dig {name}: {e}"))?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(str::to_owned)
        .collect())
}

async fn check_dns(o: &Objects, scope: &Scope, cluster: &Cluster, wrong: &mut Vec<String>) {
    for svc in &o.services {
        let (ns, name) = key(svc);
        if !scope.namespaces.contains(&ns) {
            continue;
        }
        let fqdn = format!("{name}.{ns}.svc.cluster.local");
        let got = match dig(cluster, &fqdn).await {
            Ok(got) => got,
            Err(e) => {
                wrong.push(e);
                continue;
            }
        };
        let spec = svc.spec.clone().unwrap_or_default();
        if service_type(svc) == "ExternalName" {
            let want = format!("{}.", spec.external_name.unwrap_or_default());
            if got.first() != Some(&want) {
                wrong.push(format!("DNS {fqdn}: {got:?}, want CNAME {want}"));
            }
            continue;
        }
        let want: BTreeSet<String> = match cluster_ip(svc) {
            Some(ip) => BTreeSet::from([ip]),
            None => selected(svc, &o.pods)
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.ready)
                .map(|m| m.ip)
                .collect(),
        };
        let got: BTreeSet<String> = got.into_iter().collect();
        if got != want {
            wrong.push(format!("DNS {fqdn}: {got:?}, want {want:?}"));
        }
    }
    for (ns, name) in &scope.deleted {
        if o.services
            .iter()
            .any(|s| key(s) == (ns.clone(), name.clone()))
        {
            continue;
        }
        let fqdn = format!("{name}.{ns}.svc.cluster.local");
        match dig(cluster, &fqdn).await {
            Ok(got) if got.is_empty() => {}
            Ok(got) => wrong.push(format!("DNS {fqdn} of a deleted Service answers {got:?}")),
            Err(e) => wrong.push(e),
        }
    }
}

/// Requests `GET /` on `addr` from namespace `ns` until every pod of `want` answered, or up to
/// a bound; the pods that answered, or the connection error if nothing did.
fn ask(ns: &str, addr: SocketAddr, want: &BTreeSet<String>) -> Result<BTreeSet<String>, String> {
    use std::io::{Read as _, Write as _};
    let tries = if want.is_empty() { 3 } else { 12 * want.len() };
    svcplane_testenv::netns::on_thread_in(ns, || {
        let mut seen = BTreeSet::new();
        let mut last_error = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..tries {
            if Instant::now() > deadline || (!want.is_empty() && seen.is_superset(want)) {
                break;
            }
            let answer = (|| {
                let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: churn\r\n\r\n")?;
                let mut text = String::new();
                s.take(4096).read_to_string(&mut text)?;
                Ok::<_, std::io::Error>(text)
            })();
            match answer {
                Ok(text) => {
                    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
                    if let Some(pod) = body.split(" on ").next().filter(|p| !p.is_empty()) {
                        seen.insert(pod.trim().to_owned());
                    }
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        Ok(match (seen.is_empty(), last_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(seen),
        })
    })
    .map_err(|e| e.to_string())?
}

async fn check_traffic(o: &Objects, scope: &Scope, cluster: &Cluster, wrong: &mut Vec<String>) {
    let client_ns = cluster.names().pod("demo", "client");
    let external = cluster.names().external();
    for svc in &o.services {
        let (ns, name) = key(svc);
        if !scope.namespaces.contains(&ns) {
            continue;
        }
        let Some(ip) = cluster_ip(svc) else { continue };
        let Some(members) = selected(svc, &o.pods) else {
            continue;
        };
        let want: BTreeSet<String> = members
            .iter()
            .filter(|m| m.ready)
            .map(|m| m.name.clone())
            .collect();
        let spec = svc.spec.clone().unwrap_or_default();
        let affinity = spec.session_affinity.as_deref() == Some("ClientIP");
        let Some(port) = spec.ports.clone().unwrap_or_default().into_iter().next() else {
            continue;
        };
        let mut targets: Vec<(String, &str, SocketAddr)> = Vec::new();
        let Ok(vip) = ip.parse::<IpAddr>() else {
            continue;
        };
        let Ok(service_port) = u16::try_from(port.port) else {
            continue;
        };
        targets.push((
            format!("ClusterIP {ip}:{}", port.port),
            &client_ns,
            SocketAddr::new(vip, service_port),
        ));
        if let Some(np) = port.node_port.and_then(|p| u16::try_from(p).ok()) {
            targets.push((
                format!("NodePort node-1:{np}"),
                &external,
                crate::churn::node_addr(1, np),
            ));
        }
        for lb in lb_ips(svc) {
            if let Ok(lb_ip) = lb.parse::<IpAddr>() {
                targets.push((
                    format!("LoadBalancer {lb}:{}", port.port),
                    &external,
                    SocketAddr::new(lb_ip, service_port),
                ));
            }
        }
        for (what, from, addr) in targets {
            let (from, want2) = (from.to_owned(), want.clone());
            let got = tokio::task::spawn_blocking(move || ask(&from, addr, &want2))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match got {
                Ok(seen) if seen == want => {}
                // ClientIP affinity pins one client to one ready pod.
                Ok(seen) if affinity && seen.len() == 1 && seen.is_subset(&want) => {}
                Ok(seen) => wrong.push(format!(
                    "{ns}/{name} via {what}: answered by {seen:?}, want {want:?}"
                )),
                Err(_) if want.is_empty() => {}
                Err(e) => wrong.push(format!(
                    "{ns}/{name} via {what}: {e}, want answers from {want:?}"
                )),
            }
        }
    }
}

/// Every divergence between the plane and what the API objects say, one line each.
pub async fn check(cluster: &Cluster, scope: &Scope) -> Vec<String> {
    let objects = match read(cluster, scope).await {
        Ok(o) => o,
        Err(e) => return vec![format!("reading the API: {e}")],
    };
    let mut wrong = Vec::new();
    check_objects(&objects, scope, &mut wrong);
    if wrong.is_empty() {
        check_dns(&objects, scope, cluster, &mut wrong).await;
    }
    if wrong.is_empty() {
        check_traffic(&objects, scope, cluster, &mut wrong).await;
    }
    wrong
}

/// Whether the workload is at rest: every Deployment has as many pods as it wants, none
/// terminating, each with an address; and the components are back: as many ready pods as at
/// the start, every svcplane Lease held by a live process.
pub async fn quiet(cluster: &Cluster, scope: &Scope) -> Result<(), String> {
    let now = components(cluster).await?;
    for (name, want) in &scope.components {
        let have = now.get(name).copied().unwrap_or(0);
        if have < *want {
            return Err(format!(
                "kube-system/{name}: {have} ready, {want} at the start"
            ));
        }
    }
    for lease in list(Api::<Lease>::namespaced(
        cluster.client().clone(),
        "kube-system",
    ))
    .await?
    {
        let name = lease.metadata.name.unwrap_or_default();
        if !name.starts_with("svcplane-") {
            continue;
        }
        let holder = lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        if !holder_alive(&holder) {
            return Err(format!("Lease {name} held by {holder:?}, no live process"));
        }
    }
    for ns in &scope.namespaces {
        let pods = Api::<Pod>::namespaced(cluster.client().clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let deployments = Api::<Deployment>::namespaced(cluster.client().clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        for d in &deployments.items {
            let want = usize::try_from(d.spec.replicas.unwrap_or(1)).unwrap_or(0);
            let labels = d.spec.selector.match_labels.clone().unwrap_or_default();
            let have = pods
                .items
                .iter()
                .filter(|p| {
                    let l = p.metadata.labels.clone().unwrap_or_default();
                    labels.iter().all(|(k, v)| l.get(k) == Some(v))
                })
                .count();
            if have != want {
                return Err(format!(
                    "{ns}/{}: {have} pods, {want} wanted",
                    d.metadata.name.as_deref().unwrap_or_default()
                ));
            }
        }
        for p in &pods.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            if p.metadata.deletion_timestamp.is_some() {
                return Err(format!("{ns}/{name} terminating"));
            }
            if p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_none() {
                return Err(format!("{ns}/{name} has no address yet"));
            }
        }
    }
    Ok(())
}

/// Waits for the workload to come to rest, then for the oracle to hold; the time from the
/// call to the oracle holding, and the first divergences it waited out (what took the time).
/// On timeout, the divergences still found.
pub async fn converge(
    cluster: &Cluster,
    scope: &Scope,
    within: Duration,
) -> Result<(Duration, Vec<String>), Vec<String>> {
    let started = Instant::now();
    let deadline = started + within;
    let mut first = Vec::new();
    let mut last = Vec::new();
    while Instant::now() < deadline {
        match quiet(cluster, scope).await {
            Err(why) => last = vec![format!("not at rest: {why}")],
            Ok(()) => {
                last = check(cluster, scope).await;
                if last.is_empty() {
                    return Ok((started.elapsed(), first));
                }
            }
        }
        if first.is_empty() {
            first.clone_from(&last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("a valid object")
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        obj(json!({
            "metadata": { "name": name, "namespace": "churn", "labels": { "app": "a" } },
            "status": { "podIP": ip, "phase": "Running", "conditions": [
                { "type": "Ready", "status": if ready { "True" } else { "False" } }] },
        }))
    }

    /// One Service `web` (10.96.0.20, NodePort 30080) over pods p1 (ready) and p2 (not), with
    /// everything the components should have made for it.
    fn consistent() -> Objects {
        Objects {
            services: vec![obj(json!({
                "metadata": { "name": "web", "namespace": "churn" },
                "spec": { "type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                    "selector": { "app": "a" },
                    "ports": [{ "name": "http", "port": 80, "targetPort": "http", "nodePort": 30080 }] },
            }))],
            pods: vec![
                pod("p1", "10.244.1.2", true),
                pod("p2", "10.244.2.2", false),
            ],
            endpoints: vec![obj(json!({
                "metadata": { "name": "web", "namespace": "churn" },
                "subsets": [{ "addresses": [{ "ip": "10.244.1.2" }],
                    "notReadyAddresses": [{ "ip": "10.244.2.2" }],
                    "ports": [{ "name": "http", "port": 8080 }] }],
            }))],
            slices: vec![obj(json!({
                "metadata": { "name": "web-x", "namespace": "churn",
                    "labels": { "kubernetes.io/service-name": "web" } },
                "addressType": "IPv4",
                "endpoints": [
                    { "addresses": ["10.244.1.2"], "conditions": { "ready": true, "serving": true, "terminating": false } },
                    { "addresses": ["10.244.2.2"], "conditions": { "ready": false, "serving": false, "terminating": false } }],
                "ports": [{ "name": "http", "port": 8080 }],
            }))],
            addresses: vec![obj(json!({
                "metadata": { "name": "10.96.0.20" },
                "spec": { "parentRef": { "resource": "services", "namespace": "churn", "name": "web" } },
            }))],
        }
    }

    fn divergences(o: &Objects, deleted: &[&str]) -> Vec<String> {
        let scope = Scope {
            components: BTreeMap::new(),
            namespaces: vec!["churn".into()],
            deleted: deleted
                .iter()
                .map(|n| ("churn".to_owned(), (*n).to_owned()))
                .collect(),
        };
        let mut wrong = Vec::new();
        check_objects(o, &scope, &mut wrong);
        wrong
    }

    #[test]
    fn a_consistent_plane_passes() {
        assert_eq!(divergences(&consistent(), &[]), Vec::<String>::new());
    }

    #[test]
    fn each_divergence_is_reported() {
        type Change = Box<dyn Fn(&mut Objects)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "Endpoints ready",
                Box::new(|o| o.pods[1] = pod("p2", "10.244.2.2", true)),
            ),
            (
                "ClusterIP 10.96.0.20 given to",
                Box::new(|o| {
                    let mut twin = o.services[0].clone();
                    twin.metadata.name = Some("twin".into());
                    o.services.push(twin);
                }),
            ),
            (
                "leaked",
                Box::new(|o| {
                    o.addresses.push(obj(json!({
                        "metadata": { "name": "10.96.0.99" },
                        "spec": { "parentRef": { "resource": "services", "namespace": "churn", "name": "gone" } },
                    })))
                }),
            ),
            ("has no IPAddress", Box::new(|o| o.addresses.clear())),
            (
                "outside 30000-32767",
                Box::new(|o| {
                    if let Some(p) = o.services[0].spec.as_mut().and_then(|s| s.ports.as_mut()) {
                        p[0].node_port = Some(8080);
                    }
                }),
            ),
            (
                "EndpointSlices (ready, serving, terminating)",
                Box::new(|o| {
                    if let Some(eps) = o.slices[0].endpoints.as_mut() {
                        eps.pop();
                    }
                }),
            ),
            (
                "is in two EndpointSlices",
                Box::new(|o| {
                    let mut twin = o.slices[0].clone();
                    twin.metadata.name = Some("web-y".into());
                    o.slices.push(twin);
                }),
            ),
        ];
        for (want, change) in cases {
            let mut o = consistent();
            change(&mut o);
            let wrong = divergences(&o, &[]);
            assert!(
                wrong.iter().any(|w| w.contains(want)),
                "{want:?} not reported: {wrong:?}"
            );
        }
        // What a deleted Service leaves behind.
        let mut o = consistent();
        o.services.clear();
        o.addresses.clear();
        let wrong = divergences(&o, &["web"]);
        assert!(
            wrong.iter().any(|w| w.contains("Endpoints outlived"))
                && wrong.iter().any(|w| w.contains("EndpointSlices outlived")),
            "{wrong:?}"
        );
    }
}
