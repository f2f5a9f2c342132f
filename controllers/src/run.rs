//! The `svcplane-endpoints` process: flags, wiring, lifecycle.

use std::sync::Arc;
use std::time::Duration;

use svcplane_runtime::{
    AdminArgs, AdminServer, ClientArgs, Events, Health, LeaderArgs, LogArgs, WatchMetrics,
};
use tokio::sync::watch;

use crate::controller::writer::ApiWriter;
use crate::controller::{Controller, Settings, Writers};

/// The Lease's name unless --leader-elect-resource-name says otherwise.
const LEASE: &str = "svcplane-endpoints";

/// Why the process could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--controllers must include endpointslice")]
    SliceControllerOff,
    #[error(transparent)]
    Runtime(#[from] svcplane_runtime::Error),
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("reading the admin server's address")]
    AdminAddr(#[source] std::io::Error),
}

/// svcplane-endpoints: Endpoints, EndpointSlices and EndpointSlice mirroring for Services.
#[derive(Debug, clap::Parser)]
#[command(name = "svcplane-endpoints", version, about)]
pub struct Args {
    /// Most endpoints one EndpointSlice takes (1-1000).
    #[arg(long, env = "SVCPLANE_MAX_ENDPOINTS_PER_SLICE", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_endpoints_per_slice: u16,
    /// Services the Endpoints controller syncs at once.
    #[arg(long, env = "SVCPLANE_CONCURRENT_ENDPOINT_SYNCS", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub concurrent_endpoint_syncs: u16,
    /// Services the EndpointSlice controller syncs at once.
    #[arg(long, env = "SVCPLANE_CONCURRENT_SERVICE_ENDPOINT_SYNCS", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub concurrent_service_endpoint_syncs: u16,
    /// Endpoints the mirroring controller syncs at once.
    #[arg(long, env = "SVCPLANE_MIRRORING_CONCURRENT_SERVICE_ENDPOINT_SYNCS", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub mirroring_concurrent_service_endpoint_syncs: u16,
    /// Every Service is synced again this often, to heal anything missed.
    #[arg(long, env = "SVCPLANE_RESYNC_PERIOD", default_value = "5m", value_parser = svcplane_runtime::parse_duration)]
    pub resync_period: Duration,
    /// `endpointslice.kubernetes.io/managed-by` of the slices written for selector Services.
    #[arg(
        long,
        env = "SVCPLANE_SLICE_MANAGER",
        default_value = "endpointslice.svcplane.dev"
    )]
    pub slice_manager: String,
    /// `endpointslice.kubernetes.io/managed-by` of mirrored slices.
    #[arg(
        long,
        env = "SVCPLANE_MIRROR_MANAGER",
        default_value = "endpointslicemirroring.svcplane.dev"
    )]
    pub mirror_manager: String,
    /// Which controllers run: any of endpoints, endpointslice, mirroring.
    #[arg(
        long,
        env = "SVCPLANE_CONTROLLERS",
        value_delimiter = ',',
        default_value = "endpoints,endpointslice,mirroring"
    )]
    pub controllers: Vec<ControllerName>,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ControllerName {
    Endpoints,
    Endpointslice,
    Mirroring,
}

impl Args {
    pub fn settings(&self) -> Result<Settings, Error> {
        if !self.controllers.contains(&ControllerName::Endpointslice) {
            return Err(Error::SliceControllerOff);
        }
        let on = |name, workers: u16| {
            if self.controllers.contains(&name) {
                usize::from(workers)
            } else {
                0
            }
        };
        Ok(Settings {
            max_endpoints_per_slice: usize::from(self.max_endpoints_per_slice),
            endpoint_workers: on(ControllerName::Endpoints, self.concurrent_endpoint_syncs),
            slice_workers: usize::from(self.concurrent_service_endpoint_syncs),
            mirror_workers: on(
                ControllerName::Mirroring,
                self.mirroring_concurrent_service_endpoint_syncs,
            ),
            resync: self.resync_period,
            slice_manager: self.slice_manager.clone(),
            mirror_manager: self.mirror_manager.clone(),
        })
    }
}

/// A name unique to this process: the pod name (HOSTNAME) and the process id.
fn identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "svcplane-endpoints".into());
    format!("{host}_{}", std::process::id())
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    let settings = args.settings()?;
    if args.leader.leader_elect {
        args.leader.validate()?;
    }
    let client = args.client.client().await?;
    // Each controller writes through its own client and rate limiter, as in
    // kube-controller-manager, so --kube-api-qps means the same thing in both.
    let writers = Writers {
        endpoints: Arc::new(ApiWriter::new(args.client.client().await?)),
        slices: Arc::new(ApiWriter::new(args.client.client().await?)),
        mirror: Arc::new(ApiWriter::new(args.client.client().await?)),
    };
    let health = Health::new();
    let registry = prometheus::Registry::new();
    let metrics = crate::metrics::Metrics::register(&registry)?;
    let watch_metrics = WatchMetrics::register(&registry)?;
    let identity = identity();
    let events = Events::new(client.clone(), "svcplane-endpoints", identity.clone());
    let controller = Controller::new(writers, events, settings, metrics.clone(), watch_metrics);
    let admin = AdminServer::bind(args.admin.admin_addr).await?;
    let admin_addr = admin.local_addr().map_err(Error::AdminAddr)?;
    tracing::info!(admin = %admin_addr, %identity, leader_elect = args.leader.leader_elect, "starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (leading_tx, leading_rx) = watch::channel(!args.leader.leader_elect);
    let election = if args.leader.leader_elect {
        Some(tokio::spawn(svcplane_runtime::leader::run(
            client.clone(),
            args.leader.clone(),
            args.leader.lease_name(LEASE),
            identity,
            leading_tx,
            stopped(stop_rx.clone()),
        )))
    } else {
        drop(leading_tx);
        None
    };
    let leader_metric = {
        let mut rx = leading_rx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                metrics.set_leader(*rx.borrow_and_update());
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
    };
    let ready = health.clone();
    let watcher = {
        let c = controller.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { c.watch(client, move || ready.set_ready(true), stop).await })
    };
    let workers = {
        let c = controller.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { c.work(leading_rx, stop).await })
    };
    let admin_task = tokio::spawn(admin.serve(registry, health.clone(), stopped(stop_rx.clone())));

    svcplane_runtime::shutdown_signal().await;
    tracing::info!("stopping");
    health.set_live(false);
    let _ = stop_tx.send(true);
    let _ = workers.await;
    if let Some(e) = election {
        let _ = e.await;
    }
    let _ = watcher.await;
    leader_metric.abort();
    let _ = admin_task.await;
    Ok(())
}
