//! The `svcplane-proxy` process: flags, watches, the sync loop, lifecycle.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node as ApiNode, Service as ApiService};
use k8s_openapi::api::discovery::v1::EndpointSlice as ApiSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use svcplane_model::{
    AddressType, EndpointSlice, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, Node, Service,
    ServiceCidr,
};
use svcplane_runtime::events::Events;
use svcplane_runtime::{
    AdminArgs, AdminServer, ClientArgs, Health, Informer, LogArgs, WatchMetrics, watch,
};

use crate::conntrack::ConntrackCli;
use crate::healthcheck::{self, ProxyHealth, ProxyHealthServer, ServiceHealthServer};
use crate::metrics::Metrics;
use crate::monitor::Notice;
use crate::nft::{Nft, NftCli};
use crate::plan::{DetectLocal, NodePortAddresses};
use crate::render;
use crate::state::{Settings, State};

/// Why the proxy could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no node name: pass --hostname-override or set NODE_NAME")]
    NoNodeName,
    #[error("--nodeport-addresses takes CIDRs or `primary`, got {0:?}")]
    NodePortAddresses(String),
    #[error("--detect-local-mode {0}")]
    DetectLocal(String),
    #[error("--masquerade-bit must be 0..=31, got {0}")]
    MasqueradeBit(u8),
    #[error(transparent)]
    Nft(#[from] crate::nft::Error),
    #[error(transparent)]
    Runtime(#[from] svcplane_runtime::Error),
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Healthz(#[from] healthcheck::Error),
    #[error("reading the admin server's address")]
    AdminAddr(#[source] std::io::Error),
}

/// svcplane-proxy: programs this node's nftables so Service addresses carry traffic.
#[derive(Debug, clap::Parser)]
#[command(name = "svcplane-proxy", version, about)]
pub struct Args {
    /// This node's name (default: $NODE_NAME, then the host name).
    #[arg(long, env = "SVCPLANE_HOSTNAME_OVERRIDE")]
    pub hostname_override: Option<String>,
    /// Where NodePorts answer: `primary` (the node's primary address per family) or CIDRs.
    #[arg(
        long,
        env = "SVCPLANE_NODEPORT_ADDRESSES",
        value_delimiter = ',',
        default_value = "primary"
    )]
    pub nodeport_addresses: Vec<String>,
    /// Pod CIDRs of the cluster: traffic to ClusterIPs from elsewhere is masqueraded.
    #[arg(long, env = "SVCPLANE_CLUSTER_CIDR", value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// How traffic from pods is recognised: ClusterCIDR (sources in --cluster-cidr), NodeCIDR
    /// (sources in this Node's spec.podCIDRs), BridgeInterface (--pod-bridge-interface) or
    /// InterfaceNamePrefix (--pod-interface-name-prefix).
    #[arg(
        long,
        env = "SVCPLANE_DETECT_LOCAL_MODE",
        default_value = "ClusterCIDR"
    )]
    pub detect_local_mode: String,
    /// The bridge pods are attached to, for --detect-local-mode=BridgeInterface.
    #[arg(long, env = "SVCPLANE_POD_BRIDGE_INTERFACE")]
    pub pod_bridge_interface: Option<String>,
    /// The prefix of pod interface names, for --detect-local-mode=InterfaceNamePrefix.
    #[arg(long, env = "SVCPLANE_POD_INTERFACE_NAME_PREFIX")]
    pub pod_interface_name_prefix: Option<String>,
    /// Masquerade all traffic to Service addresses.
    #[arg(long, env = "SVCPLANE_MASQUERADE_ALL", default_value_t = false)]
    pub masquerade_all: bool,
    /// Bit of the packet mark that asks for masquerading (0-31).
    #[arg(long, env = "SVCPLANE_MASQUERADE_BIT", default_value_t = 14)]
    pub masquerade_bit: u8,
    /// Least time between two syncs that write rules: changes arriving meanwhile are batched.
    /// A sync that finds nothing to write does not count.
    #[arg(long, env = "SVCPLANE_MIN_SYNC_PERIOD", default_value = "1s", value_parser = svcplane_runtime::parse_duration)]
    pub min_sync_period: Duration,
    /// How long a change that finds the proxy idle waits for company before it is synced: a
    /// new Service's EndpointSlice follows it by a few milliseconds, and without the wait the
    /// two would go into two syncs, the second one --min-sync-period later. 0 syncs at once.
    #[arg(long, env = "SVCPLANE_SYNC_SETTLE", default_value = "30ms", value_parser = svcplane_runtime::parse_duration)]
    pub sync_settle: Duration,
    /// A failed sync is retried after this long.
    #[arg(long, env = "SVCPLANE_SYNC_PERIOD", default_value = "30s", value_parser = svcplane_runtime::parse_duration)]
    pub sync_period: Duration,
    /// Where /healthz and /livez answer as kube-proxy's do (unhealthy when a change waited
    /// longer than twice --sync-period; /healthz also while this Node is being deleted).
    #[arg(long, env = "SVCPLANE_HEALTHZ_BIND_ADDRESS", default_value = healthcheck::DEFAULT_HEALTHZ_BIND_ADDRESS)]
    pub healthz_bind_address: SocketAddr,
    /// Remove everything svcplane-proxy created on this node, then exit.
    #[arg(long, env = "SVCPLANE_CLEANUP", default_value_t = false)]
    pub cleanup: bool,
    /// The nft binary.
    #[arg(long, env = "SVCPLANE_NFT_BINARY", default_value = "nft")]
    pub nft_binary: String,
    /// The conntrack binary (conntrack-tools), for deleting stale UDP flows.
    #[arg(long, env = "SVCPLANE_CONNTRACK_BINARY", default_value = "conntrack")]
    pub conntrack_binary: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

impl Args {
    pub fn settings(&self) -> Result<Settings, Error> {
        let node_name = self
            .hostname_override
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|n| n.trim().to_lowercase())
            .filter(|n| !n.is_empty())
            .ok_or(Error::NoNodeName)?;
        let nodeport_addresses = match self.nodeport_addresses.as_slice() {
            [one] if one == "primary" => NodePortAddresses::Primary,
            many => NodePortAddresses::Cidrs(
                many.iter()
                    .map(|c| c.parse().map_err(|_| Error::NodePortAddresses(c.clone())))
                    .collect::<Result<_, _>>()?,
            ),
        };
        if self.masquerade_bit > 31 {
            return Err(Error::MasqueradeBit(self.masquerade_bit));
        }
        let interface = |name: &Option<String>, flag: &str| match name.as_deref() {
            Some(n)
                if !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) =>
            {
                Ok(n.to_owned())
            }
            Some(n) => Err(Error::DetectLocal(format!(
                "needs a plain interface name in {flag}, got {n:?}"
            ))),
            None => Err(Error::DetectLocal(format!("needs {flag}"))),
        };
        let detect_local = match self.detect_local_mode.as_str() {
            "ClusterCIDR" | "" => DetectLocal::ClusterCidr,
            "NodeCIDR" => DetectLocal::NodeCidr,
            "BridgeInterface" => DetectLocal::Bridge(interface(
                &self.pod_bridge_interface,
                "--pod-bridge-interface",
            )?),
            "InterfaceNamePrefix" => DetectLocal::InterfacePrefix(interface(
                &self.pod_interface_name_prefix,
                "--pod-interface-name-prefix",
            )?),
            other => {
                return Err(Error::DetectLocal(format!(
                    "takes ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix, got {other:?}"
                )));
            }
        };
        Ok(Settings {
            node_name,
            nodeport_addresses,
            cluster_cidrs: self.cluster_cidr.clone(),
            detect_local,
            masquerade_all: self.masquerade_all,
            masquerade_bit: self.masquerade_bit,
        })
    }
}

enum Update {
    Service(Box<Event<ApiService>>),
    Slice(Box<Event<ApiSlice>>),
    Node(Box<Event<ApiNode>>),
    Cidr(Box<Event<ServiceCIDR>>),
}

fn cleanup_transaction() -> String {
    let mut text = String::new();
    for family in [AddressType::V4, AddressType::V6] {
        render::delete_table(family, &mut text);
    }
    text
}

const FAMILIES: [AddressType; 2] = [AddressType::V4, AddressType::V6];

/// This Node's eligibility for load-balanced traffic from a watch event (`None`: the event
/// says nothing about it): gone, being deleted or marked for deletion by the autoscaler is not
/// eligible, as upstream's /healthz says.
fn node_eligibility(event: &Event<ApiNode>) -> Option<bool> {
    match event {
        Event::Apply(n) | Event::InitApply(n) => Some(healthcheck::node_eligible(Some(n))),
        Event::Delete(_) => Some(false),
        Event::Init | Event::InitDone => None,
    }
}

/// Opens and closes one family's health check listeners after a sync; a port that cannot be
/// opened gets a Warning Event on its Service and is tried again after the next sync.
async fn sync_health_checks(
    server: &mut ServiceHealthServer,
    wanted: crate::state::HealthChecks,
    events: &Events,
    node_name: &str,
) {
    server.set_addresses(wanted.addresses);
    for error in server.sync_services(&wanted.ports).await {
        if let Some(key) = error.service() {
            let about = svcplane_runtime::events::reference("v1", "Service", key, None);
            events
                .warn(
                    &about,
                    healthcheck::LISTEN_FAILED_REASON,
                    error.event_note(node_name),
                )
                .await;
        }
    }
    server.sync_endpoints(&wanted.local_endpoints);
}

/// Runs until SIGTERM/SIGINT (or, with --cleanup, removes the rules and returns).
pub async fn run(args: Args) -> Result<(), Error> {
    let nft = NftCli::new(&args.nft_binary);
    let version = nft.check_version()?;
    if args.cleanup {
        nft.apply(&cleanup_transaction())?;
        tracing::info!("removed svcplane-proxy's tables");
        return Ok(());
    }
    let settings = args.settings()?;
    let node_name = settings.node_name.clone();
    let client = args.client.client().await?;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    let watch_metrics = WatchMetrics::register(&registry)?;
    let health = Health::new();
    let admin = AdminServer::bind(args.admin.admin_addr).await?;
    let admin_addr = admin.local_addr().map_err(Error::AdminAddr)?;
    tracing::info!(node = %node_name, nft = %version, admin = %admin_addr, "starting");

    // kube-proxy's health: unhealthy when a queued change waited past twice the sync period.
    let proxy_health = ProxyHealth::new(2 * args.sync_period);
    let healthz = ProxyHealthServer::bind(args.healthz_bind_address).await?;
    let mut health_checks =
        FAMILIES.map(|family| ServiceHealthServer::new(family, None, proxy_health.clone()));
    let events = Events::new(client.clone(), "svcplane-proxy", node_name.clone());

    // Changes other processes make to our tables (a flush, a deleted rule) are repaired by
    // a full sync as soon as they are committed.
    let (_monitor, mut foreign) = match nft.monitor() {
        Ok((monitor, rx)) => (Some(monitor), rx),
        Err(e) => {
            tracing::warn!(error = %e, "nft monitor did not start; changes others make to the tables are repaired only by the hourly full sync");
            (None, tokio::sync::mpsc::unbounded_channel().1)
        }
    };
    let conntrack = ConntrackCli::new(&args.conntrack_binary);
    let mut state = State::new(
        settings,
        Box::new(nft),
        Box::new(conntrack),
        metrics.clone(),
    );
    let mut services: Informer<ApiService, Arc<Service>> = Informer::new(
        "Service",
        Box::new(|obj: &ApiService| Service::try_from(obj).map(|s| Some(Arc::new(s)))),
        watch_metrics.clone(),
    );
    let mut slices: Informer<ApiSlice, Arc<EndpointSlice>> = Informer::new(
        "EndpointSlice",
        Box::new(|obj: &ApiSlice| match EndpointSlice::try_from(obj) {
            Ok(s) => Ok(Some(Arc::new(s))),
            Err(e) if e.reason() == "unsupported_address_type" => Ok(None),
            Err(e) => Err(e),
        }),
        watch_metrics.clone(),
    );
    let mut nodes: Informer<ApiNode, Arc<Node>> = Informer::new(
        "Node",
        Box::new(|obj: &ApiNode| Node::try_from(obj).map(|n| Some(Arc::new(n)))),
        watch_metrics.clone(),
    );
    let mut cidrs: Informer<ServiceCIDR, Arc<ServiceCidr>> = Informer::new(
        "ServiceCIDR",
        Box::new(|obj: &ServiceCIDR| ServiceCidr::try_from(obj).map(|c| Some(Arc::new(c)))),
        watch_metrics,
    );
    let node_field = format!("metadata.name={node_name}");
    // As upstream: Services handed to another proxy, and slices of headless Services, are never
    // even watched (the plan also skips them, so its rules hold on their own).
    let not_ours = format!("!{LABEL_SERVICE_PROXY_NAME},!{LABEL_HEADLESS}");
    let streams = vec![
        watch(
            Api::<ApiService>::all(client.clone()),
            watcher::Config::default().labels(&not_ours),
        )
        .map(|e| Update::Service(Box::new(e)))
        .boxed(),
        watch(
            Api::<ApiSlice>::all(client.clone()),
            watcher::Config::default().labels(&not_ours),
        )
        .map(|e| Update::Slice(Box::new(e)))
        .boxed(),
        watch(
            Api::<ApiNode>::all(client.clone()),
            watcher::Config::default().fields(&node_field),
        )
        .map(|e| Update::Node(Box::new(e)))
        .boxed(),
        watch(Api::<ServiceCIDR>::all(client), watcher::Config::default())
            .map(|e| Update::Cidr(Box::new(e)))
            .boxed(),
    ];
    let mut updates = pin!(stream::select_all(streams).ready_chunks(1024));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = {
        let mut rx = stop_rx.clone();
        tokio::spawn(admin.serve(registry, health.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };
    let healthz_task = {
        let mut rx = stop_rx.clone();
        tokio::spawn(healthz.serve(proxy_health.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };
    // As upstream's sync loop: a family that never syncs still turns unhealthy.
    for family in FAMILIES {
        proxy_health.updated(family);
    }
    let signal = tokio::spawn(async move {
        svcplane_runtime::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    // The first sync waits for every watch to list: rules from a half-listed cache would
    // refuse Services that exist. Until then the previous process's rules keep working.
    let mut synced = false;
    let mut last_sync: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    // When the oldest change not yet synced arrived.
    let mut pending_since: Option<Instant> = None;
    loop {
        let wait = match (synced, state.pending() > 0 || retry_at.is_some()) {
            (true, true) => {
                let earliest = last_sync.map_or_else(Instant::now, |t| t + args.min_sync_period);
                let earliest =
                    pending_since.map_or(earliest, |p| earliest.max(p + args.sync_settle));
                let at = retry_at.map_or(earliest, |r| r.max(earliest));
                at.saturating_duration_since(Instant::now())
            }
            _ => state
                .full_sync_due()
                .map_or(Duration::from_secs(3600), |t| {
                    t.saturating_duration_since(Instant::now())
                }),
        };
        tokio::select! {
            _ = stop_rx.wait_for(|s| *s) => break,
            Some(notice) = foreign.recv() => {
                match &notice {
                    Notice::Changed { pid, command, event } => tracing::warn!(pid, command = %command, event = %event, "another process changed svcplane-proxy's tables; restoring them with a full sync"),
                    Notice::Restarted { why } => tracing::warn!(why = %why, "nft monitor restarted; a full sync covers what it may have missed"),
                }
                metrics.foreign_change();
                state.force_full();
                if synced {
                    retry_at = Some(retry_at.map_or_else(Instant::now, |r| r.min(Instant::now())));
                }
            }
            batch = updates.next() => {
                let Some(batch) = batch else { break };
                for update in batch {
                    match update {
                        Update::Service(e) => drop(services.handle(*e, &mut state.services)),
                        Update::Slice(e) => drop(slices.handle(*e, &mut state.slices)),
                        Update::Node(e) => {
                            if let Some(eligible) = node_eligibility(&e) {
                                proxy_health.set_node_eligible(eligible);
                            }
                            drop(nodes.handle(*e, &mut state.nodes));
                        }
                        Update::Cidr(e) => drop(cidrs.handle(*e, &mut state.service_cidrs)),
                    }
                }
                metrics.pending(state.pending());
                if state.pending() > 0 && pending_since.is_none() {
                    pending_since = Some(Instant::now());
                }
                if synced && state.pending() > 0 {
                    for family in FAMILIES {
                        proxy_health.queued_update(family);
                    }
                }
                if !synced && services.is_synced() && slices.is_synced() && nodes.is_synced() && cidrs.is_synced() {
                    tracing::info!("caches synced");
                    synced = true;
                    for family in FAMILIES {
                        proxy_health.queued_update(family);
                    }
                }
            }
            _ = tokio::time::sleep(wait), if synced => {
                let started = Instant::now();
                pending_since = None;
                match state.sync() {
                    Ok(_) => {
                        if last_sync.is_none() {
                            tracing::info!(took = ?started.elapsed(), "first full sync applied");
                            health.set_ready(true);
                        }
                        retry_at = None;
                        for (server, family) in health_checks.iter_mut().zip(FAMILIES) {
                            proxy_health.updated(family);
                            sync_health_checks(server, state.health_checks(family), &events, &node_name).await;
                        }
                    }
                    Err(failed) => {
                        // A full sync comes next; after a failed partial one (an element
                        // someone else removed, say) it is tried at once, after a failed full
                        // one after --sync-period, as upstream.
                        let retry_in = if failed.kind == "partial" { args.min_sync_period } else { args.sync_period };
                        tracing::warn!(error = %failed.error, reason = failed.error.reason(), kind = failed.kind, ?retry_in, "sync failed; the previous rules stay in place");
                        retry_at = Some(Instant::now() + retry_in);
                    }
                }
                // Only work done counts against --min-sync-period: a sync that wrote nothing
                // (a not-ready endpoint came, say) leaves the next change free to go at once.
                if retry_at.is_some() || state.last_sync_wrote() {
                    last_sync = Some(Instant::now());
                }
            }
        }
    }
    tracing::info!("stopping; the rules stay in place for the next start");
    health.set_live(false);
    signal.abort();
    admin_task.abort();
    healthz_task.abort();
    drop(health_checks);
    Ok(())
}
