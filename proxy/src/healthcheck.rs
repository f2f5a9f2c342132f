//! kube-proxy's two health endpoints, as load balancers and kubelets expect them
//! (`pkg/proxy/healthcheck`, written down in `docs/upstream/kube-proxy-nftables.md` §3.3–3.4).
//!
//! - [`ProxyHealth`] is the proxy's own health: a family turns unhealthy when a change has waited
//!   for a sync longer than the timeout (upstream: 2 × `--sync-period`). [`ProxyHealthServer`]
//!   serves it on `/healthz` (which also fails while this Node is being deleted) and `/livez`.
//! - [`ServiceHealthServer`] opens one listener per `healthCheckNodePort` of the LoadBalancer
//!   Services with `externalTrafficPolicy: Local`; a load balancer sends traffic to this node only
//!   while it answers 200 (local ready endpoints, and the proxy healthy).
//!
//! Replies are built by pure functions ([`service_reply`], [`healthz_reply`], [`livez_reply`]) and
//! time comes from a [`Clock`], so both are tested without sockets or sleeps. This module opens
//! listeners and answers HTTP; it never touches rules, and never fails a sync: a port that cannot
//! be opened is reported to the caller and tried again on the next sync, as upstream.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Node as ApiNode;
use k8s_openapi::jiff::Timestamp;
use svcplane_model::tracker::ServiceEndpoints;
use svcplane_model::{AddressType, ObjectKey, Service, ServiceType, TrafficPolicy};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// The taint the Cluster Autoscaler puts on a Node it is about to delete; `/healthz` fails while
/// it is there so load balancers drain the node first.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Reason of the Warning Event on a Service whose health check port could not be opened.
pub const LISTEN_FAILED_REASON: &str = "FailedToStartServiceHealthcheck";

/// Upstream's `--healthz-bind-address` default.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";

/// `X-Load-Balancing-Endpoint-Weight`: the local endpoint count, for load balancers that weigh
/// nodes by it.
pub const ENDPOINT_WEIGHT_HEADER: &str = "x-load-balancing-endpoint-weight";

/// What Go's `time.Time{}` marshals to: upstream's `lastUpdated` before any sync.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Service's health check port could not be opened on one of the addresses; it is tried
    /// again on the next sync.
    #[error("opening the health check of Service {service} on {addr}")]
    Listen {
        service: ObjectKey,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("binding the proxy health server to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// A fixed label per variant, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Listen { .. } => "listen_failed",
            Error::Bind { .. } => "bind_failed",
        }
    }

    /// The Service a [`Error::Listen`] is about, for its Event.
    pub fn service(&self) -> Option<&ObjectKey> {
        match self {
            Error::Listen { service, .. } => Some(service),
            Error::Bind { .. } => None,
        }
    }

    /// The note of the Warning Event ([`LISTEN_FAILED_REASON`]), worded as upstream's.
    pub fn event_note(&self, node_name: &str) -> String {
        match self {
            Error::Listen {
                service,
                addr,
                source,
            } => format!(
                "node {node_name} failed to start healthcheck \"{service}\" on port {}: {source}",
                addr.port()
            ),
            Error::Bind { addr, source } => {
                format!("node {node_name} failed to start proxy healthz on {addr}: {source}")
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where [`ProxyHealth`] reads the time; [`FakeClock`] in tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> SystemTime;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told. Clones share the time.
#[derive(Debug, Clone)]
pub struct FakeClock(Arc<Mutex<SystemTime>>);

impl FakeClock {
    pub fn new(start: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = lock(&self.0);
        *now += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        *lock(&self.0)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The proxy's own health, per address family. Clones share state: the sync loop reports to one
/// clone, the servers read another.
#[derive(Debug, Clone)]
pub struct ProxyHealth {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    clock: Arc<dyn Clock>,
    timeout: Duration,
    times: Mutex<Times>,
}

#[derive(Debug)]
struct Times {
    last_updated: BTreeMap<AddressType, SystemTime>,
    /// When the oldest change not yet synced was queued; absent when fully synced.
    oldest_queued: BTreeMap<AddressType, SystemTime>,
    node_eligible: bool,
}

/// One reading of [`ProxyHealth`], as upstream's `ProxyHealth` struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// Every family known is healthy (node eligibility is not part of it).
    pub healthy: bool,
    /// The latest successful sync of any family; `None` before the first.
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
    /// Families that have reported [`ProxyHealth::updated`] at least once.
    pub families: BTreeMap<AddressType, FamilyHealth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyHealth {
    pub last_updated: SystemTime,
    pub healthy: bool,
}

impl ProxyHealth {
    /// `timeout`: how long a queued change may wait for a sync (upstream: 2 × sync period).
    pub fn new(timeout: Duration) -> Self {
        Self::with_clock(timeout, Arc::new(SystemClock))
    }

    pub fn with_clock(timeout: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            shared: Arc::new(Shared {
                clock,
                timeout,
                times: Mutex::new(Times {
                    last_updated: BTreeMap::new(),
                    oldest_queued: BTreeMap::new(),
                    // Eligible until the Node says otherwise, so a proxy that has not yet heard
                    // of its Node is not drained for that alone.
                    node_eligible: true,
                }),
            }),
        }
    }

    /// A change for `family` is waiting for a sync. Only the first one since the last sync
    /// counts: the timeout runs from the oldest.
    pub fn queued_update(&self, family: AddressType) {
        let now = self.shared.clock.now();
        lock(&self.shared.times)
            .oldest_queued
            .entry(family)
            .or_insert(now);
    }

    /// `family`'s rules now reflect everything queued.
    pub fn updated(&self, family: AddressType) {
        let now = self.shared.clock.now();
        let mut times = lock(&self.shared.times);
        times.oldest_queued.remove(&family);
        times.last_updated.insert(family, now);
    }

    /// Whether this Node may take load balancer traffic (see [`node_eligible`]).
    pub fn set_node_eligible(&self, eligible: bool) {
        lock(&self.shared.times).node_eligible = eligible;
    }

    pub fn node_eligible(&self) -> bool {
        lock(&self.shared.times).node_eligible
    }

    /// The proxy's health without the Node's eligibility: what Service health checks report.
    pub fn is_healthy(&self) -> bool {
        self.report().healthy
    }

    pub fn report(&self) -> HealthReport {
        let now = self.shared.clock.now();
        let times = lock(&self.shared.times);
        let mut report = HealthReport {
            healthy: true,
            last_updated: times.last_updated.values().max().copied(),
            current_time: now,
            families: BTreeMap::new(),
        };
        // As upstream, only families that have synced once are judged: a family is late when
        // its oldest queued change has waited the whole timeout.
        for (&family, &last_updated) in &times.last_updated {
            let late = times.oldest_queued.get(&family).is_some_and(|&queued| {
                now.duration_since(queued).unwrap_or(Duration::ZERO) >= self.shared.timeout
            });
            report.healthy &= !late;
            report.families.insert(
                family,
                FamilyHealth {
                    last_updated,
                    healthy: !late,
                },
            );
        }
        report
    }
}

/// Upstream's eligibility rule: the Node exists, is not being deleted and does not carry
/// [`TO_BE_DELETED_TAINT`].
pub fn node_eligible(node: Option<&ApiNode>) -> bool {
    let Some(node) = node else {
        return false;
    };
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    !node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

/// The health check ports `family`'s proxy serves (upstream: `HealthCheckNodePorts` of the
/// family's service map): LoadBalancer Services with `externalTrafficPolicy: Local`, a
/// `healthCheckNodePort`, a cluster IP of `family` and at least one port.
pub fn health_check_ports<'a>(
    family: AddressType,
    services: impl IntoIterator<Item = (&'a ObjectKey, &'a Arc<Service>)>,
) -> BTreeMap<ObjectKey, u16> {
    services
        .into_iter()
        .filter(|(_, svc)| {
            crate::plan::proxied(svc)
                && svc.type_ == ServiceType::LoadBalancer
                && svc.external_traffic_policy == TrafficPolicy::Local
                && !svc.ports.is_empty()
                && svc
                    .cluster_ips()
                    .iter()
                    .any(|ip| AddressType::of(ip) == family)
        })
        .filter_map(|(key, svc)| {
            let port = svc.health_check_node_port.filter(|p| *p != 0)?;
            Some((key.clone(), port))
        })
        .collect()
}

/// Upstream's `LocalReadyEndpoints` for one Service and family: distinct addresses of ready
/// endpoints on `node_name`, over all ports. Terminating endpoints are not ready, so a node
/// whose only endpoints are terminating reports 0 while still serving them.
pub fn local_ready_endpoints(
    family: AddressType,
    node_name: &str,
    endpoints: Option<&ServiceEndpoints>,
) -> usize {
    let Some(endpoints) = endpoints else {
        return 0;
    };
    let mut ips = BTreeSet::new();
    for slice in &endpoints.slices {
        // Upstream's endpoints map holds nothing for a slice without a usable port.
        if slice.address_type != family
            || !slice.ports.iter().any(|p| p.port.is_some_and(|n| n != 0))
        {
            continue;
        }
        for e in &slice.endpoints {
            let Some(ip) = e.addresses.first() else {
                continue;
            };
            if AddressType::of(ip) == family
                && e.conditions.is_ready()
                && e.node_name.as_deref() == Some(node_name)
            {
                ips.insert(*ip);
            }
        }
    }
    ips.len()
}

/// The answer of a Service's health check port, on any path and method.
pub fn service_reply(
    service: &ObjectKey,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> Response<String> {
    let status = if local_endpoints != 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Upstream writes this by hand, pretty-printed with tabs; the bytes are kept.
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        json_string(&service.namespace),
        json_string(&service.name),
    );
    let mut resp = json_response(status, body);
    resp.headers_mut()
        .insert(ENDPOINT_WEIGHT_HEADER, HeaderValue::from(local_endpoints));
    resp
}

/// `/healthz`: 200 when every family is healthy and this Node is eligible.
pub fn healthz_reply(report: &HealthReport, node_eligible: bool) -> Response<String> {
    proxy_reply(report, Some(node_eligible), report.healthy && node_eligible)
}

/// `/livez`: 200 when every family is healthy; the Node does not matter.
pub fn livez_reply(report: &HealthReport) -> Response<String> {
    proxy_reply(report, None, report.healthy)
}

fn proxy_reply(report: &HealthReport, node_eligible: Option<bool>, ok: bool) -> Response<String> {
    // As upstream, a healthy answer says "updated now": older kube-proxies reported the last
    // sync loop run, and clients may compare it with the current time.
    let last_updated = if ok {
        Some(report.current_time)
    } else {
        report.last_updated
    };
    let mut body = String::with_capacity(256);
    let _ = write!(
        body,
        "{{\"lastUpdated\":\"{}\",\"currentTime\":\"{}\"",
        rfc3339(last_updated),
        rfc3339(Some(report.current_time))
    );
    if let Some(eligible) = node_eligible {
        let _ = write!(body, ",\"nodeEligible\":{eligible}");
    }
    let _ = write!(body, ",\"healthy\":{}", report.healthy);
    if !report.families.is_empty() {
        body.push_str(",\"status\":{");
        for (i, (family, h)) in report.families.iter().enumerate() {
            let _ = write!(
                body,
                "{}\"{}\":{{\"lastUpdated\":\"{}\",\"healthy\":{}}}",
                if i == 0 { "" } else { "," },
                family.as_str(),
                rfc3339(Some(h.last_updated)),
                h.healthy
            );
        }
        body.push('}');
    }
    body.push('}');
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body)
}

/// The proxy health server's routes: exactly `/healthz` and `/livez`, any method, as upstream's
/// mux; anything else is Go's plain 404.
pub fn proxy_route(path: &str, health: &ProxyHealth) -> Response<String> {
    match path {
        "/healthz" => healthz_reply(&health.report(), health.node_eligible()),
        "/livez" => livez_reply(&health.report()),
        _ => {
            let mut resp = Response::new("404 page not found\n".to_owned());
            *resp.status_mut() = StatusCode::NOT_FOUND;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            resp
        }
    }
}

fn json_response(status: StatusCode, body: String) -> Response<String> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// RFC 3339 in UTC with as many fractional digits as needed, as Go marshals a `time.Time`.
fn rfc3339(t: Option<SystemTime>) -> String {
    t.and_then(|t| Timestamp::try_from(t).ok())
        .map_or_else(|| ZERO_TIME.to_owned(), |ts| ts.to_string())
}

/// Opens a TCP listener. An IPv6 socket is IPv6-only unless `dual_stack`, so the IPv4 and IPv6
/// health check servers can hold the same port.
fn listen(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            socket2::SockRef::from(&socket).set_only_v6(!dual_stack)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts until dropped; dropping it also ends its connections (they live in its `JoinSet`).
async fn accept_loop<F>(listener: TcpListener, respond: F)
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<String> + Clone + Send + Sync + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                // Out of file descriptors, typically: give others a moment to close some.
                tracing::warn!(%error, "health check accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let respond = respond.clone();
        connections.spawn(async move {
            let svc = service_fn(move |req| {
                let resp = respond(&req).map(|b| Full::new(Bytes::from(b)));
                std::future::ready(Ok::<_, Infallible>(resp))
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%error, %peer, "health check connection ended with an error");
            }
        });
    }
}

/// `/healthz` and `/livez` (upstream's `--healthz-bind-address`), bound before it serves so a
/// taken port fails at start-up.
#[derive(Debug)]
pub struct ProxyHealthServer {
    listener: TcpListener,
}

impl ProxyHealthServer {
    /// An unspecified address (`0.0.0.0` or `::`) listens on both families, as Go does.
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        let bound = if addr.ip().is_unspecified() {
            let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), addr.port());
            match listen(any6, true) {
                Err(e) if e.kind() != io::ErrorKind::AddrInUse => {
                    // No IPv6 on this host.
                    let any4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
                    listen(any4, false)
                }
                other => other,
            }
        } else {
            listen(addr, false)
        };
        let listener = bound.map_err(|source| Error::Bind { addr, source })?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves; open connections end with it.
    pub async fn serve(self, health: ProxyHealth, shutdown: impl Future<Output = ()>) {
        let respond =
            move |req: &Request<hyper::body::Incoming>| proxy_route(req.uri().path(), &health);
        tokio::select! {
            () = shutdown => {}
            () = accept_loop(self.listener, respond) => {}
        }
    }
}

/// One family's Service health check listeners (upstream has one such server per proxier).
/// Needs a Tokio runtime: listeners are served by spawned tasks, which end when their Service
/// goes or the server is dropped.
#[derive(Debug)]
pub struct ServiceHealthServer {
    family: AddressType,
    /// `None`: the family's unspecified address.
    addresses: Option<BTreeSet<IpAddr>>,
    health: ProxyHealth,
    services: BTreeMap<ObjectKey, Instance>,
}

#[derive(Debug)]
struct Instance {
    port: u16,
    /// The addresses it was opened on, to reopen it when they change.
    ips: Vec<IpAddr>,
    local_endpoints: Arc<AtomicUsize>,
    listeners: Vec<(SocketAddr, JoinHandle<()>)>,
}

impl Instance {
    /// Returns once every listener is closed (its port free again).
    async fn close(mut self) {
        let tasks = std::mem::take(&mut self.listeners);
        // All aborted before the first wait, so a caller that gives up waiting leaks nothing.
        for (_, task) in &tasks {
            task.abort();
        }
        for (_, task) in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for Instance {
    /// Dropping a `JoinHandle` does not end its task; the listeners must not outlive this.
    fn drop(&mut self) {
        for (_, task) in &self.listeners {
            task.abort();
        }
    }
}

impl ServiceHealthServer {
    /// `addresses`: where health check ports listen, as [`crate::plan::Plan::nodeport_ips`]
    /// says for NodePorts: `None` for every address of the family (its unspecified address),
    /// otherwise exactly these (none at all when the set is empty). Addresses of the other
    /// family are ignored.
    pub fn new(
        family: AddressType,
        addresses: Option<BTreeSet<IpAddr>>,
        health: ProxyHealth,
    ) -> Self {
        Self {
            family,
            addresses,
            health,
            services: BTreeMap::new(),
        }
    }

    /// Changes where ports listen; the next [`Self::sync_services`] reopens them all there.
    pub fn set_addresses(&mut self, addresses: Option<BTreeSet<IpAddr>>) {
        self.addresses = addresses;
    }

    fn bind_ips(&self) -> Vec<IpAddr> {
        match &self.addresses {
            None => vec![match self.family {
                AddressType::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                AddressType::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            }],
            Some(ips) => ips
                .iter()
                .copied()
                .filter(|ip| AddressType::of(ip) == self.family)
                .collect(),
        }
    }

    /// Makes the open listeners match `wanted` (Service → health check port): closes those no
    /// longer wanted or whose port (or the addresses) changed, then opens the new ones. A
    /// Service whose port cannot be opened on every address holds none of it, is returned as
    /// an [`Error::Listen`] (for a Warning Event) and is tried again on the next call.
    pub async fn sync_services(&mut self, wanted: &BTreeMap<ObjectKey, u16>) -> Vec<Error> {
        let ips = self.bind_ips();
        let stale: Vec<ObjectKey> = self
            .services
            .iter()
            .filter(|(key, inst)| wanted.get(*key) != Some(&inst.port) || inst.ips != ips)
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(inst) = self.services.remove(&key) {
                tracing::debug!(service.ns = %key.namespace, service.name = %key.name, port = inst.port, "closing health check");
                inst.close().await;
            }
        }
        let mut failures = Vec::new();
        for (key, &port) in wanted {
            if self.services.contains_key(key) {
                continue;
            }
            match self.open(key, port, &ips).await {
                Ok(inst) => {
                    tracing::debug!(service.ns = %key.namespace, service.name = %key.name, port, "opened health check");
                    self.services.insert(key.clone(), inst);
                }
                Err(error) => failures.push(error),
            }
        }
        failures
    }

    async fn open(&self, key: &ObjectKey, port: u16, ips: &[IpAddr]) -> Result<Instance> {
        let local_endpoints = Arc::new(AtomicUsize::new(0));
        let mut inst = Instance {
            port,
            ips: ips.to_vec(),
            local_endpoints: local_endpoints.clone(),
            listeners: Vec::with_capacity(ips.len()),
        };
        for ip in ips {
            let addr = SocketAddr::new(*ip, port);
            let listener = match listen(addr, false) {
                Ok(l) => l,
                Err(source) => {
                    tracing::warn!(service.ns = %key.namespace, service.name = %key.name, %addr, error = %source, "health check port not opened; retried on the next sync");
                    // Close what opened, so another owner (or the next try) can have the port.
                    inst.close().await;
                    return Err(Error::Listen {
                        service: key.clone(),
                        addr,
                        source,
                    });
                }
            };
            let bound = listener.local_addr().unwrap_or(addr);
            let respond = {
                let key = key.clone();
                let count = local_endpoints.clone();
                let health = self.health.clone();
                move |_: &Request<hyper::body::Incoming>| {
                    service_reply(&key, count.load(Ordering::Relaxed), health.is_healthy())
                }
            };
            inst.listeners
                .push((bound, tokio::spawn(accept_loop(listener, respond))));
        }
        Ok(inst)
    }

    /// Sets each open Service's local ready endpoint count; Services missing from `counts`
    /// have none, and counts for Services without a listener are dropped.
    pub fn sync_endpoints(&mut self, counts: &BTreeMap<ObjectKey, usize>) {
        for (key, inst) in &self.services {
            let n = counts.get(key).copied().unwrap_or(0);
            inst.local_endpoints.store(n, Ordering::Relaxed);
        }
    }

    /// The Services with open listeners and their ports.
    pub fn services(&self) -> impl Iterator<Item = (&ObjectKey, u16)> {
        self.services.iter().map(|(k, inst)| (k, inst.port))
    }

    /// Where a Service's health check listens (the actual ports, should it ask for port 0).
    pub fn local_addrs(&self, service: &ObjectKey) -> Vec<SocketAddr> {
        self.services
            .get(service)
            .map(|inst| inst.listeners.iter().map(|(a, _)| *a).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
