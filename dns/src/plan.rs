//! What the server runs: server blocks with their plugins, built from a Corefile or the flags.
//!
//! A [`Plan`] is built once per configuration (at start and on each `reload`) and published;
//! every question loads the plan in force and goes through the [`Block`] whose zone matches
//! it best (see [`crate::pipeline`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use svcplane_model::ObjectKey;

use crate::answer::reverse_zone;
use crate::corefile::{self, Corefile, NameMatch, Reload, Rewrite};
use crate::forward::{CacheSettings, Forwarder};
use crate::hosts::HostsPlugin;
use crate::metrics::Metrics;
use crate::name::{falls_through, in_zone};
use crate::{Config, PodMode};

/// How long one upstream gets to answer before the next is tried.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// The `kubernetes` plugin's settings that the index and its watches depend on.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeSettings {
    pub config: Arc<Config>,
    /// Whether `in-addr.arpa` and `ip6.arpa` are served (PTR of cluster addresses).
    pub reverse: bool,
    /// `fallthrough`: `None` never; `Some(empty)` every zone.
    pub fallthrough: Option<Vec<String>>,
    pub endpoint_pod_names: bool,
    pub noendpoints: bool,
    pub kubeconfig: Option<PathBuf>,
}

impl KubeSettings {
    /// The plugin as kubeadm's Corefile sets it up (with the reverse zones, falling through
    /// there), for `config`'s zone: what the flags run.
    fn kubeadm(config: Arc<Config>) -> Self {
        KubeSettings {
            config,
            reverse: true,
            fallthrough: Some(vec!["in-addr.arpa.".into(), "ip6.arpa.".into()]),
            endpoint_pod_names: false,
            noendpoints: false,
            kubeconfig: None,
        }
    }

    /// Whether `lower` (absolute, lower case) is a name the plugin answers for.
    pub fn covers(&self, lower: &str) -> bool {
        in_zone(lower, &self.config.zone) || (self.reverse && reverse_zone(lower).is_some())
    }

    pub fn falls_through(&self, lower: &str) -> bool {
        falls_through(&self.fallthrough, lower)
    }
}

/// One `forward` of a block.
#[derive(Debug)]
pub struct ForwardPlugin {
    pub from: String,
    pub except: Vec<String>,
    pub forwarder: Arc<Forwarder>,
}

impl ForwardPlugin {
    pub fn covers(&self, lower: &str) -> bool {
        in_zone(lower, &self.from) && !self.except.iter().any(|z| in_zone(lower, z))
    }
}

/// One server block as it runs; plugins apply in CoreDNS's order: log, loadbalance, cache,
/// rewrite, autopath, hosts, kubernetes, forward.
#[derive(Debug)]
pub struct Block {
    /// The port the block serves; `None` (flags) for every listener.
    pub port: Option<u16>,
    /// Absolute, lower case.
    pub zones: Vec<String>,
    pub errors: bool,
    pub log: bool,
    pub loadbalance: bool,
    pub rewrite: Vec<Rewrite>,
    pub autopath: Option<Vec<String>>,
    /// `search` domains of /etc/resolv.conf, appended to autopath's search path.
    pub search: Vec<String>,
    pub hosts: Option<Arc<HostsPlugin>>,
    pub kubernetes: Option<Arc<KubeSettings>>,
    pub forward: Vec<ForwardPlugin>,
    /// The rcode when no plugin of the block handles a name: SERVFAIL as CoreDNS, REFUSED for
    /// a server built without a forwarder.
    pub unhandled: ResponseCode,
    /// For the autopath counter.
    pub metrics: Option<Metrics>,
}

impl Block {
    /// How well the block's zones match `lower`: the longest matching zone's length.
    fn matches(&self, lower: &str) -> Option<usize> {
        self.zones
            .iter()
            .filter(|z| in_zone(lower, z))
            .map(|z| z.len())
            .max()
    }
}

/// Everything one configuration runs.
#[derive(Debug)]
pub struct Plan {
    pub blocks: Vec<Arc<Block>>,
    /// Addresses to answer DNS on (UDP and TCP).
    pub listen: Vec<SocketAddr>,
    pub kubernetes: Option<Arc<KubeSettings>>,
    /// Addresses of the admin server (`/health`, `/ready`, `/metrics` on each).
    pub admin: Vec<SocketAddr>,
    pub lameduck: Duration,
    pub reload: Option<Reload>,
    /// Forwarders that send a loop probe at start (`loop`).
    pub loop_probes: Vec<Arc<Forwarder>>,
}

impl Plan {
    /// The block that answers `lower` (absolute, lower case) arriving on `port`: the one whose
    /// zone matches it most closely; none means REFUSED. Port 0 (a handler used without a
    /// listener) matches every block.
    pub fn block(&self, port: u16, lower: &str) -> Option<&Arc<Block>> {
        let on_port = |b: &Block| port == 0 || b.port.is_none_or(|p| p == port);
        if let [only] = self.blocks.as_slice() {
            // The common case (one block for `.`, or the flags): no comparison needed.
            return (on_port(only) && only.matches(lower).is_some()).then_some(only);
        }
        self.blocks
            .iter()
            .filter(|b| on_port(b))
            .filter_map(|b| b.matches(lower).map(|len| (len, b)))
            .max_by_key(|(len, _)| *len)
            .map(|(_, b)| b)
    }

    /// Every forwarder of every block (for the loop probe's return).
    pub fn forwarders(&self) -> impl Iterator<Item = &Arc<Forwarder>> {
        self.blocks
            .iter()
            .flat_map(|b| b.forward.iter().map(|f| &f.forwarder))
    }

    /// What must stay the same for a reload to apply without a restart: the listeners, the
    /// admin addresses and the kubernetes plugin's settings (which the watches depend on).
    pub fn restart_needed(&self, new: &Plan) -> Option<&'static str> {
        if self.listen != new.listen {
            Some("the addresses served (server block ports or bind)")
        } else if self.admin != new.admin {
            Some("the health, ready or prometheus addresses")
        } else if self.kubernetes != new.kubernetes {
            Some("the kubernetes plugin's settings")
        } else {
            None
        }
    }
}

/// What the flags describe, as a plan: one block for every name, the kubernetes plugin as
/// kubeadm configures it, forwarding with the flags' cache.
#[derive(Debug)]
pub struct FlagSettings {
    pub config: Config,
    pub listen: Vec<SocketAddr>,
    pub upstreams: Vec<SocketAddr>,
    pub cache_capacity: usize,
    pub loadbalance: bool,
    pub admin: SocketAddr,
    pub lameduck: Duration,
    /// The Corefile's features as flags.
    pub plugins: FlagPlugins,
}

/// What the flags add to kubeadm's behaviour, each as the Corefile plugin of the same meaning.
#[derive(Debug, Clone, Default)]
pub struct FlagPlugins {
    /// `--stub-domain`: zones (absolute, lower case) forwarded to their own upstreams.
    pub stub_domains: Vec<(String, Vec<SocketAddr>)>,
    /// `--hosts-file`: `hosts FILE { fallthrough }`.
    pub hosts_file: Option<PathBuf>,
    /// `--rewrite`: `rewrite` rules, in order.
    pub rewrite: Vec<Rewrite>,
    /// `--autopath`: `autopath @kubernetes` (with `--pods verified`).
    pub autopath: bool,
    /// `--log-queries`: `log`.
    pub log: bool,
    /// `--serve-stale`: the cache's `serve_stale DURATION`.
    pub serve_stale: Option<Duration>,
    /// `--prefetch`: the cache's `prefetch AMOUNT` (1 minute, 10 %).
    pub prefetch: Option<u32>,
    /// `search` domains of /etc/resolv.conf, for autopath.
    pub search: Vec<String>,
}

impl Plan {
    pub fn from_flags(flags: FlagSettings, metrics: &Metrics) -> Plan {
        let mut cache = CacheSettings::flags(flags.cache_capacity);
        cache.0.serve_stale = flags
            .plugins
            .serve_stale
            .map(|d| (d, corefile::StaleMode::Immediate));
        cache.0.prefetch = flags.plugins.prefetch.map(|amount| corefile::Prefetch {
            amount,
            duration: Duration::from_secs(60),
            percentage: 10,
        });
        let forwarder_to = |upstreams: Vec<SocketAddr>| {
            Arc::new(
                Forwarder::new(upstreams, &flags.listen, 0, FORWARD_TIMEOUT)
                    .with_cache(Some(cache.clone()))
                    .with_policy(corefile::Policy::RoundRobin, None)
                    .with_metrics(metrics.clone()),
            )
        };
        let forwarder = forwarder_to(flags.upstreams.clone());
        let kube = Arc::new(KubeSettings::kubeadm(Arc::new(flags.config)));
        let mut block = Block::single(Some(kube.clone()), Some(forwarder.clone()));
        block.loadbalance = flags.loadbalance;
        let plugins = flags.plugins;
        let mut probes = vec![forwarder];
        // Stub domains first: the first forward whose zone covers a name takes it.
        let stubs: Vec<ForwardPlugin> = plugins
            .stub_domains
            .into_iter()
            .map(|(zone, upstreams)| {
                let forwarder = forwarder_to(upstreams);
                probes.push(forwarder.clone());
                ForwardPlugin {
                    from: zone,
                    except: vec![],
                    forwarder,
                }
            })
            .collect();
        block.forward.splice(0..0, stubs);
        block.hosts = plugins.hosts_file.map(|file| {
            HostsPlugin::new(corefile::Hosts {
                file,
                fallthrough: Some(vec![]),
                ..corefile::Hosts::new(vec![".".into()])
            })
        });
        block.rewrite = plugins.rewrite;
        block.autopath = plugins.autopath.then(|| vec![".".into()]);
        block.search = plugins.search;
        block.log = plugins.log;
        block.metrics = Some(metrics.clone());
        Plan {
            blocks: vec![Arc::new(block)],
            listen: flags.listen,
            kubernetes: Some(kube),
            admin: vec![flags.admin],
            lameduck: flags.lameduck,
            reload: None,
            loop_probes: probes,
        }
    }

    /// A plan for tests and tools: the cluster zone from `config` and, if given, forwarding.
    pub fn simple(config: Arc<Config>, forwarder: Option<Arc<Forwarder>>) -> Plan {
        let kube = Arc::new(KubeSettings::kubeadm(config));
        Plan {
            blocks: vec![Arc::new(Block::single(Some(kube.clone()), forwarder))],
            listen: vec![],
            kubernetes: Some(kube),
            admin: vec![],
            lameduck: Duration::ZERO,
            reload: None,
            loop_probes: vec![],
        }
    }
}

impl Block {
    fn single(kube: Option<Arc<KubeSettings>>, forwarder: Option<Arc<Forwarder>>) -> Block {
        let unhandled = if forwarder.is_some() {
            ResponseCode::ServFail
        } else {
            ResponseCode::Refused
        };
        Block {
            port: None,
            zones: vec![".".into()],
            // As before Corefiles: forwarding failures at DEBUG.
            errors: false,
            log: false,
            loadbalance: false,
            rewrite: vec![],
            autopath: None,
            search: vec![],
            hosts: None,
            kubernetes: kube,
            forward: forwarder
                .into_iter()
                .map(|forwarder| ForwardPlugin {
                    from: ".".into(),
                    except: vec![],
                    forwarder,
                })
                .collect(),
            unhandled,
            metrics: None,
        }
    }
}

fn err(line: usize, message: impl Into<String>) -> corefile::Error {
    corefile::Error {
        line,
        message: message.into(),
    }
}

/// What a Corefile needs from outside it.
#[derive(Debug)]
pub struct Environment<'a> {
    /// The name-server Service (`--nameserver-service`).
    pub nameserver: ObjectKey,
    pub metrics: &'a Metrics,
    /// Reads a file (resolv.conf for `forward`, autopath's search path).
    pub read: fn(&std::path::Path) -> std::io::Result<String>,
}

impl Plan {
    /// The plan a Corefile describes; an error names the line of what cannot run.
    pub fn from_corefile(file: &Corefile, env: &Environment<'_>) -> Result<Plan, corefile::Error> {
        let mut listen = Vec::new();
        for block in &file.servers {
            let ips: Vec<IpAddr> = if block.bind.is_empty() {
                vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
            } else {
                block.bind.clone()
            };
            for ip in ips {
                let addr = SocketAddr::new(ip, block.port);
                if !listen.contains(&addr) {
                    listen.push(addr);
                }
            }
        }
        let mut kubernetes: Option<Arc<KubeSettings>> = None;
        let mut admin: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut lameduck = Duration::ZERO;
        let mut reload = None;
        let mut loop_probes = Vec::new();
        let mut blocks = Vec::new();
        let search = (env.read)(std::path::Path::new("/etc/resolv.conf"))
            .map(|text| crate::forward::resolv_conf_search(&text))
            .unwrap_or_default();
        for block in &file.servers {
            let p = &block.plugins;
            if let Some(h) = &p.health {
                admin.insert(h.addr);
                lameduck = lameduck.max(h.lameduck);
            }
            admin.extend(p.ready);
            admin.extend(p.prometheus);
            if p.reload.is_some() {
                reload = reload.or(p.reload);
            }
            let kube = match &p.kubernetes {
                None => None,
                Some(k) => {
                    let settings = Arc::new(kube_settings(block.line, k, env)?);
                    kubernetes = Some(settings.clone());
                    Some(settings)
                }
            };
            let mut forward = Vec::new();
            for f in &p.forward {
                let mut upstreams = Vec::new();
                for to in &f.to {
                    match to {
                        corefile::Upstream::Addr(a) => upstreams.push(*a),
                        corefile::Upstream::ResolvConf(path) => {
                            let text = (env.read)(path).map_err(|e| {
                                err(
                                    block.line,
                                    format!("forward: reading {}: {e}", path.display()),
                                )
                            })?;
                            let found = crate::forward::resolv_conf_nameservers(&text);
                            if found.is_empty() {
                                return Err(err(
                                    block.line,
                                    format!("forward: {} names no nameserver", path.display()),
                                ));
                            }
                            upstreams.extend(found);
                        }
                    }
                }
                let cache = p.cache.clone().map(CacheSettings);
                let forwarder = Arc::new(
                    Forwarder::new(upstreams, &listen, 0, FORWARD_TIMEOUT)
                        .with_cache(cache)
                        .with_policy(f.policy, f.max_concurrent)
                        .with_metrics(env.metrics.clone()),
                );
                if p.loop_detect {
                    loop_probes.push(forwarder.clone());
                }
                forward.push(ForwardPlugin {
                    from: f.from.clone(),
                    except: f.except.clone(),
                    forwarder,
                });
            }
            let hosts = p.hosts.clone().map(HostsPlugin::new);
            blocks.push(Arc::new(Block {
                port: Some(block.port),
                zones: block.zones.clone(),
                errors: p.errors,
                log: p.log,
                loadbalance: p.loadbalance,
                rewrite: p.rewrite.clone(),
                autopath: p.autopath.clone(),
                search: search.clone(),
                hosts,
                kubernetes: kube,
                forward,
                unhandled: ResponseCode::ServFail,
                metrics: Some(env.metrics.clone()),
            }));
        }
        Ok(Plan {
            blocks,
            listen,
            kubernetes,
            admin: admin.into_iter().collect(),
            lameduck,
            reload,
            loop_probes,
        })
    }

    /// Starts what runs beside the answers: hosts files re-read on change.
    pub fn start_background(&self) {
        for block in &self.blocks {
            if let Some(h) = &block.hosts {
                h.watch();
            }
        }
    }
}

fn kube_settings(
    line: usize,
    k: &corefile::Kubernetes,
    env: &Environment<'_>,
) -> Result<KubeSettings, corefile::Error> {
    let mut zone = None;
    let mut reverse = (false, false);
    for z in &k.zones {
        match z.as_str() {
            "in-addr.arpa." => reverse.0 = true,
            "ip6.arpa." => reverse.1 = true,
            "." => {
                return Err(err(
                    line,
                    "kubernetes: the cluster zone cannot be the root; name it (e.g. cluster.local)",
                ));
            }
            other if other.ends_with(".arpa.") => {
                return Err(err(
                    line,
                    format!(
                        "kubernetes: reverse zone {other} is not supported by svcplane-dns; it serves in-addr.arpa and ip6.arpa whole"
                    ),
                ));
            }
            other => {
                if zone.is_some() {
                    return Err(err(
                        line,
                        format!(
                            "kubernetes: a second cluster zone ({other}) is not supported by svcplane-dns"
                        ),
                    ));
                }
                zone = Some(other.trim_end_matches('.').to_owned());
            }
        }
    }
    let Some(zone) = zone else {
        return Err(err(
            line,
            "kubernetes: no cluster zone (e.g. cluster.local)",
        ));
    };
    if reverse.0 != reverse.1 {
        return Err(err(
            line,
            "kubernetes: svcplane-dns serves in-addr.arpa and ip6.arpa together; name both or neither",
        ));
    }
    Ok(KubeSettings {
        config: Arc::new(Config {
            zone,
            ttl: k.ttl,
            pods: k.pods,
            nameserver: env.nameserver.clone(),
        }),
        reverse: reverse.0,
        fallthrough: k.fallthrough.clone(),
        endpoint_pod_names: k.endpoint_pod_names,
        noendpoints: k.noendpoints,
        kubeconfig: k.kubeconfig.clone(),
    })
}

impl Plan {
    /// What `--check-corefile` prints: each block and what runs in it.
    pub fn describe(&self, file: &Corefile) -> String {
        let mut out = String::new();
        for (block, source) in self.blocks.iter().zip(&file.servers) {
            let bind = if source.bind.is_empty() {
                "every address".to_owned()
            } else {
                join(source.bind.iter())
            };
            let _ = writeln!(
                out,
                "server block (line {}): zones {} on port {} ({bind})",
                source.line,
                block.zones.join(" "),
                source.port
            );
            let p = &source.plugins;
            let mut line = |text: String| {
                let _ = writeln!(out, "  {text}");
            };
            if p.errors {
                line("errors: failures are logged".into());
            }
            if p.log {
                line("log: every query is logged".into());
            }
            if let Some(h) = &p.health {
                line(format!(
                    "health: /health on {} (lameduck {:?})",
                    h.addr, h.lameduck
                ));
            }
            if let Some(a) = p.ready {
                line(format!("ready: /ready on {a}"));
            }
            if let Some(a) = p.prometheus {
                line(format!("prometheus: /metrics on {a}"));
            }
            if block.loadbalance {
                line("loadbalance: A/AAAA answers shuffled per query".into());
            }
            if let Some(c) = &p.cache {
                line(format!(
                    "cache for {}: success {} entries {}–{} s{}, denial {} entries {}–{} s{}{}{}",
                    c.zones.join(" "),
                    c.success.capacity,
                    c.success.min_ttl,
                    c.success.max_ttl,
                    disabled(c.success.disabled, &c.disable_success),
                    c.denial.capacity,
                    c.denial.min_ttl,
                    c.denial.max_ttl,
                    disabled(c.denial.disabled, &c.disable_denial),
                    c.serve_stale
                        .map(|(d, m)| format!(", serve_stale {d:?} {m:?}"))
                        .unwrap_or_default(),
                    c.prefetch
                        .map(|p| format!(
                            ", prefetch after {} hits in {:?} below {}% TTL",
                            p.amount, p.duration, p.percentage
                        ))
                        .unwrap_or_default(),
                ));
            }
            for r in &block.rewrite {
                line(format!(
                    "rewrite ({}): name {} {} -> {}{}",
                    if r.continues { "continue" } else { "stop" },
                    match r.kind {
                        NameMatch::Exact => "exact",
                        NameMatch::Prefix => "prefix",
                        NameMatch::Suffix => "suffix",
                        NameMatch::Substring => "substring",
                        NameMatch::Regex => "regex",
                    },
                    r.from,
                    r.to,
                    if r.answer_auto { ", answer auto" } else { "" }
                ));
            }
            if let Some(zones) = &block.autopath {
                line(format!(
                    "autopath for {}: search path of the asking pod's namespace, then {}",
                    zones.join(" "),
                    if block.search.is_empty() {
                        "the name itself".to_owned()
                    } else {
                        format!("{} and the name itself", block.search.join(" "))
                    }
                ));
            }
            if let Some(h) = &block.hosts {
                let s = &h.settings;
                line(format!(
                    "hosts for {}: {} inline entries and {} (re-read every {:?}), TTL {}{}{}",
                    s.zones.join(" "),
                    s.inline.len(),
                    s.file.display(),
                    s.reload,
                    s.ttl,
                    if s.no_reverse { ", no PTR" } else { "" },
                    fallthrough(&s.fallthrough),
                ));
            }
            if let Some(k) = &block.kubernetes {
                line(format!(
                    "kubernetes: zone {}{}, pods {}, TTL {}{}{}{}",
                    k.config.zone,
                    if k.reverse {
                        " with in-addr.arpa and ip6.arpa"
                    } else {
                        ""
                    },
                    match k.config.pods {
                        PodMode::Disabled => "disabled",
                        PodMode::Insecure => "insecure",
                        PodMode::Verified => "verified",
                    },
                    k.config.ttl,
                    fallthrough(&k.fallthrough),
                    if k.endpoint_pod_names {
                        ", endpoint_pod_names"
                    } else {
                        ""
                    },
                    if k.noendpoints { ", noendpoints" } else { "" },
                ));
            }
            for (f, source) in block.forward.iter().zip(&p.forward) {
                line(format!(
                    "forward {}{} to {} ({:?}{}){}",
                    f.from,
                    if f.except.is_empty() {
                        String::new()
                    } else {
                        format!(" except {}", f.except.join(" "))
                    },
                    join(f.forwarder.upstreams().iter()),
                    source.policy,
                    source
                        .max_concurrent
                        .map(|m| format!(", max_concurrent {m}"))
                        .unwrap_or_default(),
                    if p.cache.is_some() { ", cached" } else { "" },
                ));
            }
            if p.loop_detect {
                line("loop: a probe detects forwarding loops at start".into());
            }
            if let Some(r) = p.reload {
                line(format!(
                    "reload: the Corefile is checked every {:?} (jitter {:?})",
                    r.interval, r.jitter
                ));
            }
        }
        out
    }
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
}

fn disabled(all: bool, zones: &[String]) -> String {
    if all {
        " (disabled)".into()
    } else if zones.is_empty() {
        String::new()
    } else {
        format!(" (disabled for {})", zones.join(" "))
    }
}

fn fallthrough(f: &Option<Vec<String>>) -> String {
    match f {
        None => String::new(),
        Some(z) if z.is_empty() => ", fallthrough everywhere".into(),
        Some(z) => format!(", fallthrough for {}", z.join(" ")),
    }
}
