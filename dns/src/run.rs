//! The `svcplane-dns` process: flags or a Corefile, wiring, lifecycle, `reload`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use svcplane_model::ObjectKey;
use svcplane_runtime::{AdminArgs, AdminServer, ClientArgs, Health, LogArgs};

use crate::corefile::{self, Corefile};
use crate::metrics::Metrics;
use crate::plan::{Environment, FlagPlugins, FlagSettings, Plan};
use crate::server::{DnsServer, Handler};
use crate::{Config, Index, PodMode};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--nameserver-service must be namespace/name, got {0:?}")]
    NameserverService(String),
    #[error("reading the Corefile {path}")]
    ReadCorefile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {error}")]
    Corefile {
        path: PathBuf,
        error: corefile::Error,
    },
    #[error("{0}")]
    Flag(String),
    #[error("the Corefile has no kubernetes plugin; svcplane-dns needs one (e.g. kubeadm's)")]
    NoKubernetes,
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
    #[arg(
        long,
        env = "SVCPLANE_CLUSTER_DOMAIN",
        conflicts_with = "corefile",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,
    /// Address to serve DNS on, UDP and TCP; repeat for several.
    #[arg(
        long = "listen",
        env = "SVCPLANE_DNS_LISTEN",
        conflicts_with = "corefile",
        value_delimiter = ',',
        default_value = "0.0.0.0:53"
    )]
    pub listen: Vec<SocketAddr>,
    /// TTL of cluster answers, in seconds; also the SOA minimum.
    #[arg(long, env = "SVCPLANE_DNS_TTL", conflicts_with = "corefile", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub ttl: u32,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`: off, for any address, or only for a pod that has it.
    #[arg(long, env = "SVCPLANE_DNS_PODS", conflicts_with = "corefile", value_enum, default_value_t = PodsFlag::Insecure)]
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
    #[arg(long = "upstream", env = "SVCPLANE_DNS_UPSTREAM", conflicts_with = "corefile", value_delimiter = ',', value_parser = parse_upstream)]
    pub upstream: Vec<SocketAddr>,
    /// Entries the forwarding cache holds at most.
    #[arg(
        long,
        env = "SVCPLANE_DNS_CACHE_CAPACITY",
        conflicts_with = "corefile",
        default_value_t = 10_000
    )]
    pub cache_capacity: usize,
    /// How long to keep answering after SIGTERM while /health reports unhealthy.
    #[arg(long, env = "SVCPLANE_DNS_LAMEDUCK", conflicts_with = "corefile", default_value = "5s", value_parser = svcplane_runtime::parse_duration)]
    pub lameduck: Duration,
    /// Forward a zone to its own resolvers (a stub domain): ZONE=ADDR[,ADDR…] (ip or ip:port);
    /// repeat for several (`;` between them in the environment variable).
    #[arg(long = "stub-domain", env = "SVCPLANE_DNS_STUB_DOMAINS", value_delimiter = ';', value_parser = parse_stub_domain, conflicts_with = "corefile")]
    pub stub_domains: Vec<(String, Vec<SocketAddr>)>,
    /// Answer A/AAAA/PTR from this hosts file first (re-read when it changes); names it lacks go
    /// on to the cluster zone and forwarding, as CoreDNS's `hosts FILE { fallthrough }`.
    #[arg(
        long,
        env = "SVCPLANE_DNS_HOSTS_FILE",
        value_name = "PATH",
        conflicts_with = "corefile"
    )]
    pub hosts_file: Option<PathBuf>,
    /// A rewrite rule as a Corefile writes it after `rewrite`, e.g. "name suffix .corp.example
    /// .svc.cluster.local answer auto"; repeat for several, applied in order.
    #[arg(long = "rewrite", value_name = "RULE", conflicts_with = "corefile")]
    pub rewrite: Vec<String>,
    /// Walk a pod's DNS search path in the server, as CoreDNS's `autopath @kubernetes`; needs
    /// `--pods verified`.
    #[arg(long, env = "SVCPLANE_DNS_AUTOPATH", conflicts_with = "corefile")]
    pub autopath: bool,
    /// Log every question, as CoreDNS's `log`.
    #[arg(long, env = "SVCPLANE_DNS_LOG_QUERIES", conflicts_with = "corefile")]
    pub log_queries: bool,
    /// Keep forwarded answers this long past expiry and serve them when every upstream fails or
    /// while they are refreshed (the cache's `serve_stale`).
    #[arg(long, env = "SVCPLANE_DNS_SERVE_STALE", value_parser = svcplane_runtime::parse_duration, conflicts_with = "corefile")]
    pub serve_stale: Option<Duration>,
    /// Refresh a forwarded answer asked this many times within a minute before it expires (the
    /// cache's `prefetch AMOUNT`).
    #[arg(
        long,
        env = "SVCPLANE_DNS_PREFETCH",
        value_name = "AMOUNT",
        conflicts_with = "corefile"
    )]
    pub prefetch: Option<u32>,
    /// Shuffle the A/AAAA records of every answer, as CoreDNS's loadbalance plugin.
    #[arg(long, env = "SVCPLANE_DNS_LOADBALANCE", conflicts_with = "corefile")]
    pub loadbalance: bool,
    /// Run from a CoreDNS Corefile (e.g. the mounted `coredns` ConfigMap) instead of the DNS
    /// flags above; `--nameserver-service`, the API client and logging flags still apply.
    #[arg(long, env = "SVCPLANE_DNS_COREFILE", value_name = "PATH")]
    pub corefile: Option<PathBuf>,
    /// Print what a Corefile would run, or why it cannot, and exit.
    #[arg(long, value_name = "PATH", exclusive = true)]
    pub check_corefile: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

fn parse_stub_domain(s: &str) -> Result<(String, Vec<SocketAddr>), String> {
    let (zone, addrs) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ZONE=ADDR[,ADDR…]"))?;
    let zone = zone.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !zone.is_empty()
        && zone.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(format!("{zone:?} is not a zone"));
    }
    let addrs = addrs
        .split(',')
        .map(|a| parse_upstream(a.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((format!("{zone}."), addrs))
}

/// A `--rewrite` rule, read by the Corefile parser.
fn parse_rewrite(rule: &str) -> Result<corefile::Rewrite, Error> {
    let text = format!(".:53 {{\n    rewrite {rule}\n}}\n");
    let file = corefile::parse_with_env(&text, &|_| None)
        .map_err(|e| Error::Flag(format!("--rewrite {rule:?}: {}", e.message)))?;
    file.servers
        .into_iter()
        .next()
        .and_then(|s| s.plugins.rewrite.into_iter().next())
        .ok_or_else(|| Error::Flag(format!("--rewrite {rule:?}: no rule")))
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
    fn nameserver(&self) -> Result<ObjectKey, Error> {
        let (ns, name) = self
            .nameserver_service
            .split_once('/')
            .ok_or_else(|| Error::NameserverService(self.nameserver_service.clone()))?;
        Ok(ObjectKey::new(ns, name))
    }

    pub fn config(&self) -> Result<Config, Error> {
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
            nameserver: self.nameserver()?,
        })
    }

    /// The plan the flags describe.
    fn flag_plan(&self, metrics: &Metrics) -> Result<Plan, Error> {
        let upstreams = if self.upstream.is_empty() {
            let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            crate::forward::resolv_conf_nameservers(&conf)
        } else {
            self.upstream.clone()
        };
        let config = self.config()?;
        if self.autopath && config.pods != PodMode::Verified {
            return Err(Error::Flag(
                "--autopath needs --pods verified (it finds the asking pod by its address)".into(),
            ));
        }
        let search = std::fs::read_to_string("/etc/resolv.conf")
            .map(|text| crate::forward::resolv_conf_search(&text))
            .unwrap_or_default();
        Ok(Plan::from_flags(
            FlagSettings {
                config,
                listen: self.listen.clone(),
                upstreams,
                cache_capacity: self.cache_capacity,
                loadbalance: self.loadbalance,
                admin: self.admin.admin_addr,
                lameduck: self.lameduck,
                plugins: FlagPlugins {
                    stub_domains: self.stub_domains.clone(),
                    hosts_file: self.hosts_file.clone(),
                    rewrite: self
                        .rewrite
                        .iter()
                        .map(|r| parse_rewrite(r))
                        .collect::<Result<_, _>>()?,
                    autopath: self.autopath,
                    log: self.log_queries,
                    serve_stale: self.serve_stale,
                    prefetch: self.prefetch,
                    search,
                },
            },
            metrics,
        ))
    }
}

fn read_file(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

/// Reads, parses and plans a Corefile.
pub fn load_corefile(
    path: &Path,
    nameserver: ObjectKey,
    metrics: &Metrics,
) -> Result<(Corefile, Plan), Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadCorefile {
        path: path.to_owned(),
        source,
    })?;
    let corefile_error = |error| Error::Corefile {
        path: path.to_owned(),
        error,
    };
    let file = corefile::parse(&text).map_err(corefile_error)?;
    let env = Environment {
        nameserver,
        metrics,
        read: read_file,
    };
    let plan = Plan::from_corefile(&file, &env).map_err(corefile_error)?;
    if plan.kubernetes.is_none() {
        return Err(Error::NoKubernetes);
    }
    Ok((file, plan))
}

/// `--check-corefile`: what would run, or the error; the exit status says which.
pub fn check_corefile(path: &Path, nameserver: &str) -> Result<String, Error> {
    let (ns, name) = nameserver
        .split_once('/')
        .ok_or_else(|| Error::NameserverService(nameserver.to_owned()))?;
    let metrics = Metrics::register(&prometheus::Registry::new())?;
    let (file, plan) = load_corefile(path, ObjectKey::new(ns, name), &metrics)?;
    Ok(plan.describe(&file))
}

/// Serves until SIGTERM/SIGINT, then keeps answering through the lameduck period.
pub async fn run(args: Args) -> Result<(), Error> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    let watch_metrics = svcplane_runtime::WatchMetrics::register(&registry)?;
    let plan = match &args.corefile {
        Some(path) => {
            let (_, plan) = load_corefile(path, args.nameserver()?, &metrics)?;
            tracing::info!(corefile = %path.display(), "running from the Corefile");
            plan
        }
        None => args.flag_plan(&metrics)?,
    };
    let kube = plan.kubernetes.clone().ok_or(Error::NoKubernetes)?;
    let mut client_args = args.client.clone();
    if let Some(path) = &kube.kubeconfig {
        client_args.kubeconfig = Some(path.clone());
    }
    let client = client_args.client().await?;
    let index = Arc::new(ArcSwap::from_pointee(Index::new()));
    let health = Health::new();

    for f in plan.forwarders() {
        tracing::info!(upstreams = ?f.upstreams(), "forwarding");
    }
    plan.start_background();
    let listen = plan.listen.clone();
    let admin_addrs = plan.admin.clone();
    let lameduck = plan.lameduck;
    let reload = plan.reload;
    let probes = plan.loop_probes.clone();
    let plan = Arc::new(ArcSwap::from_pointee(plan));
    let handler = Handler::with_plan(index.clone(), plan.clone(), metrics.clone());
    let dns = DnsServer::bind(&listen, handler).await?;
    let mut admins = Vec::new();
    for addr in &admin_addrs {
        admins.push(AdminServer::bind(*addr).await?);
    }
    let admin_bound: Vec<String> = admins
        .iter()
        .map(|a| a.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()
        .map_err(Error::AdminAddr)?;
    tracing::info!(dns = ?dns.local_addrs(), admin = ?admin_bound, zone = %kube.config.zone, "serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let ready = health.clone();
    let watches = tokio::spawn(crate::watch::run(
        client,
        index.clone(),
        crate::watch::Options {
            pods: kube.config.pods == PodMode::Verified,
            endpoints: !kube.noendpoints,
            endpoint_pod_names: kube.endpoint_pod_names,
        },
        metrics.clone(),
        watch_metrics,
        move || ready.set_ready(true),
        stopped(stop_rx.clone()),
    ));
    let admin_tasks: Vec<_> = admins
        .into_iter()
        .map(|admin| {
            tokio::spawn(admin.serve(registry.clone(), health.clone(), stopped(stop_rx.clone())))
        })
        .collect();
    let dns_task = tokio::spawn(dns.run(stopped(stop_rx.clone())));
    if let (Some(path), Some(every)) = (&args.corefile, reload) {
        tokio::spawn(reload_loop(
            path.clone(),
            every,
            args.nameserver()?,
            metrics.clone(),
            plan.clone(),
        ));
    }

    // Started once we serve, so a probe that loops back through an upstream reaches us.
    for forwarder in probes {
        tokio::spawn(async move { forwarder.probe_for_loops().await });
    }

    svcplane_runtime::shutdown_signal().await;
    health.set_live(false);
    tracing::info!(?lameduck, "lameduck: still answering, reporting unhealthy");
    tokio::time::sleep(lameduck).await;
    let _ = stop_tx.send(true);
    let _ = watches.await;
    for task in admin_tasks {
        let _ = task.await;
    }
    dns_task.await??;
    Ok(())
}

/// `reload`: re-reads the Corefile every interval (plus jitter) and, when what it says
/// changed, runs the new configuration; an invalid one, or one that needs a restart, is
/// logged and the running configuration kept.
async fn reload_loop(
    path: PathBuf,
    every: corefile::Reload,
    nameserver: ObjectKey,
    metrics: Metrics,
    plan: Arc<ArcSwap<Plan>>,
) {
    let jitter = every.jitter.as_millis() as u64;
    let offset = if jitter == 0 {
        0
    } else {
        rand::random_range(0..jitter)
    };
    let period = (every.interval + Duration::from_millis(offset))
        .saturating_sub(every.jitter / 2)
        .max(Duration::from_secs(1));
    let mut last_text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut last = corefile::parse(&last_text).ok();
    loop {
        tokio::time::sleep(period).await;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(corefile = %path.display(), %error, "reload: cannot read the Corefile; keeping the running configuration");
                continue;
            }
        };
        if text == last_text {
            continue;
        }
        last_text.clone_from(&text);
        // Compared parsed, so comments and spacing are no change (as CoreDNS's checksum).
        let parsed = corefile::parse(&text);
        if let (Ok(new), Some(old)) = (&parsed, &last)
            && new == old
        {
            continue;
        }
        match parsed {
            Err(error) => {
                tracing::error!(corefile = %path.display(), %error, "reload: the new Corefile is invalid; keeping the running configuration");
                metrics.reload(false);
            }
            Ok(file) => {
                let env = Environment {
                    nameserver: nameserver.clone(),
                    metrics: &metrics,
                    read: read_file,
                };
                match Plan::from_corefile(&file, &env) {
                    Err(error) => {
                        tracing::error!(corefile = %path.display(), %error, "reload: the new Corefile cannot run; keeping the running configuration");
                        metrics.reload(false);
                    }
                    Ok(new) => {
                        if let Some(what) = plan.load().restart_needed(&new) {
                            tracing::error!(corefile = %path.display(), changed = what, "reload: this change needs a restart; keeping the running configuration");
                            metrics.reload(false);
                        } else {
                            new.start_background();
                            for forwarder in new.loop_probes.clone() {
                                tokio::spawn(async move { forwarder.probe_for_loops().await });
                            }
                            plan.store(Arc::new(new));
                            tracing::info!(corefile = %path.display(), "reload: running the new configuration");
                            metrics.reload(true);
                        }
                    }
                }
                last = Some(file);
            }
        }
    }
}
