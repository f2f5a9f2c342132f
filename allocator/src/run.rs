//! The `svcplane-allocator` process: flags, wiring, lifecycle.
//!
//! Tasks: three watches (ServiceCIDRs, IPAddresses, Services) feeding the shared
//! [`Allocator`]; the HTTPS webhook; Lease leader election (only the leader answers the webhook
//! with allocations and reports ready); the sticky memory's ConfigMap; the audit; LoadBalancer
//! IPAM; self-managed certificates when asked for.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::{IPAddress, ServiceCIDR};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use svcplane_runtime::tls::{CertStore, TlsServer};
use svcplane_runtime::{AdminArgs, AdminServer, ClientArgs, Events, Health, LeaderArgs, LogArgs};
use tokio::sync::{Notify, watch};

use crate::index::{Index, Owner};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::ranges::PortRange;
use crate::sticky::Sticky;
use crate::webhook::{Allocator, lock};

/// The Lease's name unless --leader-elect-resource-name says otherwise.
const LEASE: &str = "svcplane-allocator";
/// The webhook's path.
pub const WEBHOOK_PATH: &str = "/mutate-services";
/// The ConfigMap key holding the sticky memory.
const STICKY_KEY: &str = "services.json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] svcplane_runtime::Error),
    #[error(transparent)]
    Tls(#[from] svcplane_runtime::tls::Error),
    #[error(transparent)]
    Policy(#[from] crate::policy::Error),
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("reading a listener's address")]
    Addr(#[source] std::io::Error),
    #[error("--tls-cert-file and --tls-private-key-file go together; or use --self-managed-tls")]
    TlsFlags,
    #[error("{0}")]
    LoadBalancer(String),
}

/// svcplane-allocator: ClusterIPs and NodePorts through a mutating admission webhook, and
/// LoadBalancer IPs from pools.
#[derive(Debug, clap::Parser)]
#[command(name = "svcplane-allocator", version, about)]
pub struct Args {
    /// Where the HTTPS webhook listens.
    #[arg(
        long,
        env = "SVCPLANE_WEBHOOK_BIND_ADDRESS",
        default_value = "0.0.0.0:9443"
    )]
    pub webhook_bind_address: SocketAddr,
    /// Serving certificate (PEM chain), re-read when it changes.
    #[arg(long, env = "SVCPLANE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "SVCPLANE_TLS_PRIVATE_KEY_FILE")]
    pub tls_private_key_file: Option<PathBuf>,
    /// Make and rotate our own CA and serving certificate (kept in a Secret) and write the CA
    /// into the MutatingWebhookConfiguration's caBundle.
    #[arg(long, env = "SVCPLANE_SELF_MANAGED_TLS", default_value_t = false)]
    pub self_managed_tls: bool,
    /// The MutatingWebhookConfiguration whose caBundle self-managed TLS keeps current.
    #[arg(
        long,
        env = "SVCPLANE_WEBHOOK_CONFIGURATION",
        default_value = "svcplane-allocator"
    )]
    pub webhook_configuration: String,
    /// The Service in front of the webhook (its DNS names go into the certificate).
    #[arg(
        long,
        env = "SVCPLANE_WEBHOOK_SERVICE",
        default_value = "svcplane-allocator"
    )]
    pub webhook_service: String,
    /// Secret holding the self-managed CA and certificate.
    #[arg(
        long,
        env = "SVCPLANE_TLS_SECRET",
        default_value = "svcplane-allocator-tls"
    )]
    pub tls_secret: String,
    /// Lifetime of self-managed certificates; renewed when a third of it is left.
    #[arg(long, env = "SVCPLANE_SELF_MANAGED_CERT_VALIDITY", default_value = "8760h", value_parser = svcplane_runtime::parse_duration)]
    pub self_managed_cert_validity: Duration,
    /// Extra IP SANs for self-managed certificates (e.g. 127.0.0.1 when the API server calls a URL).
    #[arg(long, env = "SVCPLANE_TLS_SAN_IPS", value_delimiter = ',')]
    pub tls_san_ips: Vec<IpAddr>,
    /// The namespace this replica runs in (its Secret, ConfigMap and Service live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    /// Same as the API server's --service-node-port-range (no API exposes it).
    #[arg(
        long,
        env = "SVCPLANE_SERVICE_NODE_PORT_RANGE",
        default_value = "30000-32767"
    )]
    pub service_node_port_range: PortRange,
    /// How long a value handed out stays reserved when it never shows up stored.
    #[arg(long, env = "SVCPLANE_RESERVATION_TTL", default_value = "60s", value_parser = svcplane_runtime::parse_duration)]
    pub reservation_ttl: Duration,
    /// How long a deleted Service's values are kept for its re-creation (0 turns it off).
    #[arg(long, env = "SVCPLANE_STICKY_RETENTION", default_value = "1h", value_parser = svcplane_runtime::parse_duration)]
    pub sticky_retention: Duration,
    /// Most deleted Services remembered (oldest forgotten first).
    #[arg(long, env = "SVCPLANE_STICKY_MAX_ENTRIES", default_value_t = 5000)]
    pub sticky_max_entries: usize,
    /// The ConfigMap (in --namespace) the sticky memory is kept in.
    #[arg(
        long,
        env = "SVCPLANE_STICKY_CONFIGMAP",
        default_value = "svcplane-allocator-sticky"
    )]
    pub sticky_configmap: String,
    /// Allocation policy (YAML; see docs/allocator.md).
    #[arg(long, env = "SVCPLANE_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
    /// How often the audit runs in full (it also runs shortly after changes).
    #[arg(long, env = "SVCPLANE_AUDIT_PERIOD", default_value = "3m", value_parser = svcplane_runtime::parse_duration)]
    pub audit_period: Duration,
    /// How long a finding must last before the audit reports it (leaked IPAddresses: 60 s).
    #[arg(long, env = "SVCPLANE_AUDIT_GRACE", default_value = "30s", value_parser = svcplane_runtime::parse_duration)]
    pub audit_grace: Duration,
    /// After taking over, how long answers wait for allocations the API server made while no
    /// replica answered (see docs/allocator.md); 0 answers at once.
    #[arg(long, env = "SVCPLANE_TAKEOVER_SETTLE", default_value = "2s", value_parser = svcplane_runtime::parse_duration)]
    pub takeover_settle: Duration,
    /// Assign LoadBalancer IPs from LoadBalancerIPPools (needs the CRD). Off by default: on a
    /// cluster with a cloud load-balancer controller the two would fight over the status.
    #[arg(long, env = "SVCPLANE_LOAD_BALANCER_IPAM", default_value_t = false, action = clap::ArgAction::Set)]
    pub load_balancer_ipam: bool,
    /// LoadBalancer Services with this loadBalancerClass are ours too (unset class always is).
    #[arg(long, env = "SVCPLANE_LOAD_BALANCER_CLASS")]
    pub load_balancer_class: Option<String>,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

fn identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "svcplane-allocator".into());
    format!("{host}_{}", std::process::id())
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    if args.leader.leader_elect {
        args.leader.validate()?;
    }
    let policy = match &args.policy_file {
        Some(path) => Policy::load(path, args.service_node_port_range)?,
        None => Policy::default(),
    };
    let store = match (
        &args.tls_cert_file,
        &args.tls_private_key_file,
        args.self_managed_tls,
    ) {
        (Some(cert), Some(key), false) => {
            let cert_pem = std::fs::read(cert).map_err(|e| svcplane_runtime::tls::Error::Read {
                path: cert.clone(),
                source: e,
            })?;
            let key_pem = std::fs::read(key).map_err(|e| svcplane_runtime::tls::Error::Read {
                path: key.clone(),
                source: e,
            })?;
            CertStore::from_pem(&cert_pem, &key_pem)?
        }
        (None, None, true) => crate::certs::bootstrap_store(),
        _ => return Err(Error::TlsFlags),
    };
    let client = args.client.client().await?;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    let identity = identity();
    let events = Events::new(client.clone(), "svcplane-allocator", identity.clone());
    let health = Health::new();
    let index = Index::new(args.service_node_port_range, args.reservation_ttl);
    let sticky = Sticky::new(args.sticky_retention, args.sticky_max_entries);
    let allocator = Arc::new(Allocator::new(index, sticky, policy, metrics.clone()));
    load_sticky(&client, &args, &allocator).await;

    let admin = AdminServer::bind(args.admin.admin_addr).await?;
    let admin_addr = admin.local_addr().map_err(Error::Addr)?;
    let webhook = TlsServer::bind(args.webhook_bind_address, store.clone()).await?;
    let webhook_addr = webhook.local_addr().map_err(Error::Addr)?;
    tracing::info!(admin = %admin_addr, webhook = %webhook_addr, %identity, leader_elect = args.leader.leader_elect, "starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();

    let (leading_tx, leading_rx) = watch::channel(!args.leader.leader_elect);
    if args.leader.leader_elect {
        tasks.push(tokio::spawn(svcplane_runtime::leader::run(
            client.clone(),
            args.leader.clone(),
            args.leader.lease_name(LEASE),
            identity.clone(),
            leading_tx,
            stopped(stop_rx.clone()),
        )));
    } else {
        drop(leading_tx);
    }

    // Watches.
    let changed = Arc::new(Notify::new());
    let synced = Arc::new(SyncFlags::default());
    tasks.push(tokio::spawn(watch_cidrs(
        client.clone(),
        allocator.clone(),
        synced.clone(),
        changed.clone(),
        stopped(stop_rx.clone()),
    )));
    tasks.push(tokio::spawn(watch_ip_addresses(
        client.clone(),
        allocator.clone(),
        synced.clone(),
        changed.clone(),
        stopped(stop_rx.clone()),
    )));
    tasks.push(tokio::spawn(watch_services(
        client.clone(),
        allocator.clone(),
        synced.clone(),
        changed.clone(),
        stopped(stop_rx.clone()),
    )));

    // Leadership and readiness: ready = leading and synced (and, on taking the lease, after a
    // quorum read of what is taken, so nothing the previous leader handed out is missed).
    let (settled_tx, settled_rx) = watch::channel(false);
    tasks.push(tokio::spawn(lead(
        client.clone(),
        allocator.clone(),
        synced.clone(),
        health.clone(),
        Settle {
            period: args.takeover_settle,
            done: settled_tx,
        },
        leading_rx.clone(),
        stopped(stop_rx.clone()),
    )));
    tasks.push(tokio::spawn(keep_sticky(
        client.clone(),
        args.namespace.clone(),
        args.sticky_configmap.clone(),
        allocator.clone(),
        stopped(stop_rx.clone()),
    )));
    tasks.push(tokio::spawn(crate::audit::run(
        client.clone(),
        allocator.clone(),
        events.clone(),
        args.audit_period,
        args.audit_grace,
        changed.clone(),
        stopped(stop_rx.clone()),
    )));
    if args.load_balancer_ipam {
        let settings = crate::lbipam::Settings {
            load_balancer_class: args.load_balancer_class.clone(),
        };
        let lb_metrics = crate::lbipam::Metrics::register(&registry)?;
        tasks.push(tokio::spawn(crate::lbipam::run(
            client.clone(),
            settings,
            events.clone(),
            lb_metrics,
            leading_rx.clone(),
            stopped(stop_rx.clone()),
        )));
    }
    if args.self_managed_tls {
        let cfg = crate::certs::SelfManaged {
            namespace: args.namespace.clone(),
            secret_name: args.tls_secret.clone(),
            webhook_configuration: args.webhook_configuration.clone(),
            dns_names: vec![
                format!("{}.{}.svc", args.webhook_service, args.namespace),
                format!(
                    "{}.{}.svc.cluster.local",
                    args.webhook_service, args.namespace
                ),
            ],
            ip_sans: args.tls_san_ips.clone(),
            validity: args.self_managed_cert_validity,
        };
        tasks.push(tokio::spawn(crate::certs::run(
            client.clone(),
            cfg,
            store.clone(),
            leading_rx.clone(),
            stopped(stop_rx.clone()),
        )));
    } else if let (Some(cert), Some(key)) = (
        args.tls_cert_file.clone(),
        args.tls_private_key_file.clone(),
    ) {
        tasks.push(tokio::spawn(store.clone().reload_files(
            cert,
            key,
            Duration::from_secs(10),
            stopped(stop_rx.clone()),
        )));
    }
    let handler: svcplane_runtime::tls::Handler = {
        let allocator = allocator.clone();
        // Below the webhook's timeoutSeconds (5 s in deploy/), so held requests are answered.
        let most = args.takeover_settle + Duration::from_secs(1);
        Arc::new(move |req: http::Request<Bytes>| {
            let allocator = allocator.clone();
            let mut settled = settled_rx.clone();
            Box::pin(async move {
                // Just after taking over, answers wait for the settle period (see `lead`).
                if allocator.is_leading() && !*settled.borrow() {
                    let _ = tokio::time::timeout(most, settled.wait_for(|s| *s)).await;
                }
                serve(&allocator, req)
            })
        })
    };
    tasks.push(tokio::spawn(
        webhook.serve(handler, stopped(stop_rx.clone())),
    ));
    tasks.push(tokio::spawn(admin.serve(
        registry,
        health.clone(),
        stopped(stop_rx.clone()),
    )));

    svcplane_runtime::shutdown_signal().await;
    tracing::info!("stopping");
    health.set_live(false);
    health.set_ready(false);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

fn serve(allocator: &Allocator, req: http::Request<Bytes>) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, body: Vec<u8>, json: bool| {
        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        let ct = if json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ct),
        );
        resp
    };
    if req.uri().path() != WEBHOOK_PATH {
        return reply(http::StatusCode::NOT_FOUND, b"not found\n".to_vec(), false);
    }
    if req.method() != http::Method::POST {
        return reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            b"POST only\n".to_vec(),
            false,
        );
    }
    let answer = allocator.review(req.body());
    let status = http::StatusCode::from_u16(answer.status)
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    reply(status, answer.body, answer.json)
}

/// Which watches have finished their first list.
#[derive(Debug, Default)]
pub struct SyncFlags {
    cidrs: std::sync::atomic::AtomicBool,
    ips: std::sync::atomic::AtomicBool,
    services: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl SyncFlags {
    fn all(&self) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.cidrs.load(Acquire) && self.ips.load(Acquire) && self.services.load(Acquire)
    }

    fn set(&self, flag: &std::sync::atomic::AtomicBool) {
        flag.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait_all(&self) {
        loop {
            let notified = self.notify.notified();
            if self.all() {
                return;
            }
            notified.await;
        }
    }
}

async fn watch_cidrs(
    client: Client,
    a: Arc<Allocator>,
    synced: Arc<SyncFlags>,
    changed: Arc<Notify>,
    stop: impl Future<Output = ()>,
) {
    let api: Api<ServiceCIDR> = Api::all(client);
    let mut seen: Option<Vec<String>> = None;
    let stream = svcplane_runtime::watch(api, watcher::Config::default());
    let mut stream = std::pin::pin!(stream.take_until(stop));
    while let Some(event) = stream.next().await {
        let mut idx = lock(&a.index);
        match event {
            Event::Apply(o) => idx.apply_service_cidr(&o.name_any(), Some(&o)),
            Event::Delete(o) => idx.apply_service_cidr(&o.name_any(), None),
            Event::Init => seen = Some(Vec::new()),
            Event::InitApply(o) => {
                let name = o.name_any();
                idx.apply_service_cidr(&name, Some(&o));
                seen.get_or_insert_with(Vec::new).push(name);
            }
            Event::InitDone => {
                let keep = seen.take().unwrap_or_default();
                let stale: Vec<String> = idx
                    .service_cidrs()
                    .map(|c| c.name.clone())
                    .filter(|n| !keep.contains(n))
                    .collect();
                for name in stale {
                    idx.apply_service_cidr(&name, None);
                }
                drop(idx);
                synced.set(&synced.cidrs);
            }
        }
        changed.notify_one();
    }
}

async fn watch_ip_addresses(
    client: Client,
    a: Arc<Allocator>,
    synced: Arc<SyncFlags>,
    changed: Arc<Notify>,
    stop: impl Future<Output = ()>,
) {
    let api: Api<IPAddress> = Api::all(client);
    let mut seen: Option<std::collections::HashSet<String>> = None;
    let stream = svcplane_runtime::watch(api, watcher::Config::default());
    let mut stream = std::pin::pin!(stream.take_until(stop));
    while let Some(event) = stream.next().await {
        let mut idx = lock(&a.index);
        match event {
            Event::Apply(o) => idx.apply_ip_address(&o.name_any(), Some(&o)),
            Event::Delete(o) => idx.apply_ip_address(&o.name_any(), None),
            Event::Init => seen = Some(Default::default()),
            Event::InitApply(o) => {
                let name = o.name_any();
                idx.apply_ip_address(&name, Some(&o));
                seen.get_or_insert_with(Default::default).insert(name);
            }
            Event::InitDone => {
                let keep = seen.take().unwrap_or_default();
                let stale: Vec<String> = idx
                    .ip_objects()
                    .map(|(ip, _)| ip.to_string())
                    .filter(|n| !keep.contains(n))
                    .collect();
                for name in stale {
                    idx.apply_ip_address(&name, None);
                }
                drop(idx);
                synced.set(&synced.ips);
            }
        }
        changed.notify_one();
    }
}

async fn watch_services(
    client: Client,
    a: Arc<Allocator>,
    synced: Arc<SyncFlags>,
    changed: Arc<Notify>,
    stop: impl Future<Output = ()>,
) {
    let api: Api<Service> = Api::all(client);
    let mut seen: Option<std::collections::HashSet<Owner>> = None;
    let stream = svcplane_runtime::watch(api, watcher::Config::default());
    let mut stream = std::pin::pin!(stream.take_until(stop));
    while let Some(event) = stream.next().await {
        match event {
            Event::Apply(s) => {
                if let Some(o) = crate::index::owner_of(&s) {
                    a.apply_service(&o, Some(&s));
                }
            }
            Event::Delete(s) => {
                if let Some(o) = crate::index::owner_of(&s) {
                    a.apply_service(&o, None);
                }
            }
            Event::Init => seen = Some(Default::default()),
            Event::InitApply(s) => {
                if let Some(o) = crate::index::owner_of(&s) {
                    a.apply_service(&o, Some(&s));
                    seen.get_or_insert_with(Default::default).insert(o);
                }
            }
            Event::InitDone => {
                let keep = seen.take().unwrap_or_default();
                let gone: Vec<Owner> = lock(&a.index)
                    .services()
                    .map(|(o, _)| o.clone())
                    .filter(|o| !keep.contains(o))
                    .collect();
                for o in gone {
                    a.apply_service(&o, None);
                }
                synced.set(&synced.services);
            }
        }
        changed.notify_one();
    }
}

/// The wait after taking over, and whether it is over.
struct Settle {
    period: Duration,
    done: watch::Sender<bool>,
}

/// Follows leadership: on taking the lease, a quorum read of Services and IPAddresses reserves
/// everything stored at that moment (the watch may lag behind what the previous leader handed
/// out), then /readyz turns true.
///
/// Then the settle period: while no replica was ready, the API server let Service writes past
/// the webhook (failurePolicy Ignore) and allocated for them itself; some of those may still be
/// between their allocation and their store when traffic moves to us. Requests that arrive in
/// the first `--takeover-settle` wait, a second quorum read picks up what those writes took,
/// and only then are they answered, so a pick of ours cannot land on a value the registry just
/// handed out behind our back.
async fn lead(
    client: Client,
    a: Arc<Allocator>,
    synced: Arc<SyncFlags>,
    health: Health,
    settle: Settle,
    mut leading: watch::Receiver<bool>,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let lead = *leading.borrow_and_update();
        if lead {
            // Every wait of the takeover also watches the lease: a replica that loses it midway
            // stops at once instead of answering as a leader it no longer is.
            let takeover = take_over(&client, &a, &synced, &health, &settle);
            tokio::select! {
                _ = &mut stop => break,
                () = takeover => {}
                () = lease_changed(&mut leading) => continue,
            }
        } else {
            settle.done.send_replace(false);
            a.set_leading(false);
            health.set_ready(false);
        }
        tokio::select! {
            _ = &mut stop => break,
            () = lease_changed(&mut leading) => {}
        }
    }
    a.set_leading(false);
    health.set_ready(false);
}

/// Resolves when leadership changes; never when there is no election (the sender is gone).
async fn lease_changed(leading: &mut watch::Receiver<bool>) {
    if leading.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Becoming the answering leader: synced watches, a quorum catch-up, ready, the settle period,
/// a second catch-up, then answers.
async fn take_over(
    client: &Client,
    a: &Allocator,
    synced: &SyncFlags,
    health: &Health,
    settle: &Settle,
) {
    synced.wait_all().await;
    loop {
        match catch_up(client, a).await {
            Ok(n) => {
                tracing::info!(values = n, "leading: reserved everything stored; ready");
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "leading: could not read Services and IPAddresses; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    a.set_synced(true);
    a.set_leading(true);
    health.set_ready(true);
    if !settle.period.is_zero() {
        tokio::time::sleep(settle.period).await;
        match catch_up(client, a).await {
            Ok(n) => tracing::info!(
                values = n,
                "settled after taking over; answering the webhook"
            ),
            Err(error) => {
                tracing::warn!(%error, "second read after taking over failed; answering anyway")
            }
        }
    }
    settle.done.send_replace(true);
}

async fn catch_up(client: &Client, a: &Allocator) -> kube::Result<usize> {
    let services: Api<Service> = Api::all(client.clone());
    let ips: Api<IPAddress> = Api::all(client.clone());
    let lp = ListParams::default();
    let svc_list = services.list(&lp).await?;
    let ip_list = ips.list(&lp).await?;
    let now = Instant::now();
    let mut idx = lock(&a.index);
    let mut n = 0;
    for s in &svc_list.items {
        let Some(owner) = crate::index::owner_of(s) else {
            continue;
        };
        let held = crate::index::Held::of(s);
        if idx.held(&owner) == Some(&held) {
            continue; // the watch has it: reserving would only outlive a later release
        }
        for ip in held.ips {
            idx.reserve_ip(ip, &owner, now);
            n += 1;
        }
        for port in held.ports {
            idx.reserve_port(port, &owner, now);
            n += 1;
        }
    }
    for o in &ip_list.items {
        let p = &o.spec.parent_ref;
        if let Ok(ip) = o.name_any().parse::<IpAddr>()
            && idx.ip_object(ip).is_none()
        {
            let owner = Owner::new(p.namespace.clone().unwrap_or_default(), p.name.clone());
            idx.reserve_ip(ip, &owner, now);
            n += 1;
        }
    }
    Ok(n)
}

async fn load_sticky(client: &Client, args: &Args, a: &Allocator) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &args.namespace);
    match api.get_opt(&args.sticky_configmap).await {
        Ok(Some(cm)) => {
            let doc = cm.data.as_ref().and_then(|d| d.get(STICKY_KEY));
            if let Some(doc) = doc {
                match lock(&a.sticky).load(doc) {
                    Ok(n) => tracing::info!(entries = n, "loaded the sticky memory"),
                    Err(error) => {
                        tracing::warn!(%error, configmap = %args.sticky_configmap, "the sticky memory does not parse; starting without it")
                    }
                }
            }
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "could not read the sticky memory; starting without it")
        }
    }
}

/// The leader writes the sticky memory back when it changed (at most every 2 s).
async fn keep_sticky(
    client: Client,
    namespace: String,
    name: String,
    a: Arc<Allocator>,
    stop: impl Future<Output = ()>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let mut stop = std::pin::pin!(stop);
    let mut pending: Option<String> = None;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let now = crate::sticky::unix_now();
        {
            let mut s = lock(&a.sticky);
            s.expire(now);
            a.metrics
                .sticky_entries
                .set(i64::try_from(s.len()).unwrap_or(i64::MAX));
            if let Some(doc) = s.take_dirty() {
                pending = Some(doc);
            }
        }
        lock(&a.index).expire(Instant::now());
        if !a.is_leading() {
            continue;
        }
        let Some(doc) = pending.clone() else { continue };
        let patch = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {STICKY_KEY: doc},
        });
        match api
            .patch(
                &name,
                &PatchParams::apply("svcplane-allocator").force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => pending = None,
            Err(error) => {
                tracing::warn!(%error, configmap = %name, "could not save the sticky memory; retrying")
            }
        }
    }
}
