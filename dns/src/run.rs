//! The `svcplane-dns` process: flags, wiring, lifecycle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use svcplane_model::ObjectKey;
use svcplane_runtime::{AdminArgs, AdminServer, ClientArgs, Health, LogArgs};

use crate::forward::Forwarder;
use crate::server::{DnsServer, Handler};

/// How long one upstream gets to answer before the next is tried.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
use crate::{Config, Index, PodMode};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--nameserver-service must be namespace/name, got {0:?}")]
    NameserverService(String),
    #[error(transparent)]
    Runtime(#[from] svcplane_runtime::Error),
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("reading the admin server's address")]
    AdminAddr(#[source] std::io::Error),
    #[error(transparent)]
    Server(#[from] crate::server::Error),
    #[error("the DNS server task ended abnormally")]
    ServerTask(#[from] tokio::task::JoinError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodsFlag {
    Disabled,
    Insecure,
    Verified,
}

/// svcplane-dns: cluster DNS for Services and pods.
#[derive(Debug, clap::Parser)]
#[command(name = "svcplane-dns", version, about)]
pub struct Args {
    /// The cluster zone served.
    #[arg(long, env = "SVCPLANE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Address to serve DNS on, UDP and TCP; repeat for several.
    #[arg(
        long = "listen",
        env = "SVCPLANE_DNS_LISTEN",
        value_delimiter = ',',
        default_value = "0.0.0.0:53"
    )]
    pub listen: Vec<SocketAddr>,
    /// TTL of cluster answers, in seconds; also the SOA minimum.
    #[arg(long, env = "SVCPLANE_DNS_TTL", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub ttl: u32,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`: off, for any address, or only for a pod that has it.
    #[arg(long, env = "SVCPLANE_DNS_PODS", value_enum, default_value_t = PodsFlag::Insecure)]
    pub pods: PodsFlag,
    /// The Service (namespace/name) whose cluster IPs are the zone's name servers.
    #[arg(
        long,
        env = "SVCPLANE_DNS_NAMESERVER_SERVICE",
        default_value = "kube-system/kube-dns"
    )]
    pub nameserver_service: String,
    /// Upstream resolver for names outside the cluster zone (ip or ip:port); repeat for several.
    /// Default: the nameservers in /etc/resolv.conf.
    #[arg(long = "upstream", env = "SVCPLANE_DNS_UPSTREAM", value_delimiter = ',', value_parser = parse_upstream)]
    pub upstream: Vec<SocketAddr>,
    /// Entries the forwarding cache holds at most.
    #[arg(long, env = "SVCPLANE_DNS_CACHE_CAPACITY", default_value_t = 10_000)]
    pub cache_capacity: usize,
    /// How long to keep answering after SIGTERM while /health reports unhealthy.
    #[arg(long, env = "SVCPLANE_DNS_LAMEDUCK", default_value = "5s", value_parser = svcplane_runtime::parse_duration)]
    pub lameduck: Duration,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("{s:?} is not an address like 192.0.2.53 or 192.0.2.53:5353"))
}

impl Args {
    pub fn config(&self) -> Result<Config, Error> {
        let (ns, name) = self
            .nameserver_service
            .split_once('/')
            .ok_or_else(|| Error::NameserverService(self.nameserver_service.clone()))?;
        Ok(Config {
            zone: self
                .cluster_domain
                .trim_end_matches('.')
                .to_ascii_lowercase(),
            ttl: self.ttl,
            pods: match self.pods {
                PodsFlag::Disabled => PodMode::Disabled,
                PodsFlag::Insecure => PodMode::Insecure,
                PodsFlag::Verified => PodMode::Verified,
            },
            nameserver: ObjectKey::new(ns, name),
        })
    }
}

/// Serves until SIGTERM/SIGINT, then keeps answering through the lameduck period.
pub async fn run(args: Args) -> Result<(), Error> {
    let config = Arc::new(args.config()?);
    let client = args.client.client().await?;
    let index = Arc::new(ArcSwap::from_pointee(Index::new()));
    let health = Health::new();
    let registry = prometheus::Registry::new();
    let metrics = crate::metrics::Metrics::register(&registry)?;
    let watch_metrics = svcplane_runtime::WatchMetrics::register(&registry)?;

    let upstreams = if args.upstream.is_empty() {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        crate::forward::resolv_conf_nameservers(&conf)
    } else {
        args.upstream.clone()
    };
    let forwarder = Arc::new(
        Forwarder::new(
            upstreams,
            &args.listen,
            args.cache_capacity,
            FORWARD_TIMEOUT,
        )
        .with_metrics(metrics.clone()),
    );
    tracing::info!(upstreams = ?forwarder.upstreams(), "forwarding names outside the zone");
    let handler = Handler::new(
        index.clone(),
        config.clone(),
        Some(forwarder.clone()),
        metrics.clone(),
    );
    let dns = DnsServer::bind(&args.listen, handler).await?;
    let admin = AdminServer::bind(args.admin.admin_addr).await?;
    tracing::info!(dns = ?dns.local_addrs(), admin = %admin.local_addr().map_err(Error::AdminAddr)?, zone = %config.zone, "serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let ready = health.clone();
    let watches = tokio::spawn(crate::watch::run(
        client,
        index.clone(),
        config.pods == PodMode::Verified,
        metrics,
        watch_metrics,
        move || ready.set_ready(true),
        stopped(stop_rx.clone()),
    ));
    let admin_task = tokio::spawn(admin.serve(registry, health.clone(), stopped(stop_rx.clone())));
    let dns_task = tokio::spawn(dns.run(stopped(stop_rx.clone())));

    // Started once we serve, so a probe that loops back through an upstream reaches us.
    tokio::spawn(async move { forwarder.probe_for_loops().await });

    svcplane_runtime::shutdown_signal().await;
    health.set_live(false);
    tracing::info!(lameduck = ?args.lameduck, "lameduck: still answering, reporting unhealthy");
    tokio::time::sleep(args.lameduck).await;
    let _ = stop_tx.send(true);
    let _ = watches.await;
    let _ = admin_task.await;
    dns_task.await??;
    Ok(())
}
