//! The driver of `bench/proxy.sh`: svcplane-proxy against kube-proxy (nftables mode, built from
//! the pinned Kubernetes module) on one kube-apiserver holding `--services` ClusterIP Services
//! in one namespace, each with one TCP port and one EndpointSlice of two ready endpoints. Each
//! proxy runs alone, pinned to CPU 1, in a fresh node network namespace that reaches the API
//! server through a unix-socket relay, with `--min-sync-period` 0 (kube-proxy has no such flag:
//! in nftables mode `--iptables-min-sync-period` sets it). For each:
//!
//! 1. first full sync: from the process start until the kernel's rules hold the last populated
//!    Service (`nft get element ip <table> cluster-ips { <its ClusterIP> }`, which both proxies'
//!    layouts have, polled every 20 ms; the first full sync is one transaction, so that one
//!    Service stands for all), and the proxy's own full-sync metric for it.
//! 2. `--adds` Services added one at a time on top, their slice first, 1.6 s apart;
//! 3. `--changes` endpoint changes, one at a time: one address of a random Service's slice
//!    replaced by a fresh one from 10.200.0.0/16;
//! 4. VmRSS and VmHWM after the full sync and at the end; the lines of its IPv4 table.
//!
//! Adds and changes are timed alike for both proxies, by their own gauge of the wall-clock time
//! of the last successful sync, which each sets just after the sync's transaction has committed
//! (`kubeproxy_sync_proxy_rules_last_timestamp_seconds`,
//! `svcplane_proxy_last_sync_timestamp_seconds`): wall-clock times are taken just before the
//! API write and when it returns; a thread of the driver inside the node namespace reads the
//! gauge every `--poll-interval-ms` until it passes the first; the latency is the gauge minus
//! the write's return (also reported from just before the write). With min-sync-period 0 and
//! nothing else writing, the first sync after the write is the one carrying it, but for an
//! occasional periodic resync: so every add and every `--check-every`-th change is looked up
//! in the kernel once the gauge has moved, and a sync without it counts as a mismatch and the
//! next one is timed. (`nft monitor` is no use here: on kube-proxy's 10k-Service table it spends
//! more than two minutes reading the ruleset before it reports anything.)
//!
//! Prints `proxy key value` lines on stdout, which `bench/proxy.sh` turns into Markdown; progress
//! and diagnostics on stderr. Traffic stays on loopback and in the namespaces made here, which are
//! deleted on exit (the shell script deletes leftovers of a killed run by their name prefix).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Parser;
use futures::{TryStreamExt as _, stream};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nix::sched::{CloneFlags, CpuSet, sched_setaffinity, setns};
use nix::unistd::Pid;
use serde_json::json;
use svcplane_model::{ANNOTATION_LAST_CHANGE_TRIGGER_TIME, LABEL_MANAGED_BY, LABEL_SERVICE_NAME};
use svcplane_testenv::TestEnv;
use svcplane_testenv::netns::ApiRelay;
use svcplane_testenv::rng::Rng;
use tokio::sync::mpsc;

const NAMESPACE: &str = "bench";
const NODE: &str = "node";
const NODE_IP: &str = "192.0.2.10";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Where the API server answers inside a node namespace (through the relay).
const API_PORT: u16 = 6443;
/// Both proxies' metrics, on 127.0.0.1 inside their namespace.
const METRICS_PORT: u16 = 10249;
/// Between two added Services: longer than either proxy's default min-sync-period (1 s).
const ADD_SPACING: Duration = Duration::from_millis(1600);

#[derive(Debug, Parser)]
struct Args {
    /// The svcplane-proxy binary.
    #[arg(long)]
    svcplane_proxy: PathBuf,
    /// The kube-proxy binary (tests/controlplane/build.sh kube-proxy).
    #[arg(long)]
    kube_proxy: PathBuf,
    /// Directory for the proxies' logs.
    #[arg(long)]
    work: PathBuf,
    /// Prefix of the network namespaces' names.
    #[arg(long, default_value = "svpbench")]
    netns_prefix: String,
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    #[arg(long, default_value_t = 20)]
    adds: usize,
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// Which proxies to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "svcplane,kube-proxy"
    )]
    proxies: Vec<Proxy>,
    /// Longest wait for one add or change to be synced; longer counts as a miss.
    #[arg(long, default_value_t = 10)]
    timeout_seconds: u64,
    /// How often the proxy's last-sync timestamp is read during the adds and changes. Only how
    /// soon the next write goes out depends on it, not the latencies (the timestamp is the
    /// commit's); each read costs the proxy a metrics scrape on its CPU.
    #[arg(long, default_value_t = 5)]
    poll_interval_ms: u64,
    /// Every this many changes (from the first), check in the kernel that the sync timed
    /// carried the change. Every add is checked.
    #[arg(long, default_value_t = 50)]
    check_every: usize,
    /// The changes phase stops after this many misses.
    #[arg(long, default_value_t = 20)]
    max_misses: usize,
    /// Longest wait for a proxy's first full sync.
    #[arg(long, default_value_t = 900)]
    full_sync_timeout_seconds: u64,
    /// API requests in flight while populating.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Proxy {
    Svcplane,
    KubeProxy,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Svcplane => "svcplane",
            Proxy::KubeProxy => "kube-proxy",
        }
    }

    /// Its IPv4 table (`table ip <name>`).
    fn table(self) -> &'static str {
        match self {
            Proxy::Svcplane => "svcplane",
            Proxy::KubeProxy => "kube-proxy",
        }
    }

    /// A set of ClusterIPs in its IPv4 table (both proxies name it so).
    const CLUSTER_IPS_SET: &'static str = "cluster-ips";

    /// What /proc/<pid>/comm says once `ip netns exec` and `taskset` have exec'd it.
    fn comm(self) -> &'static str {
        match self {
            Proxy::Svcplane => "svcplane-proxy",
            Proxy::KubeProxy => "kube-proxy",
        }
    }

    /// Its gauge (name, label selecting IPv4) of the wall-clock time of its last successful
    /// sync, which both proxies set just after the sync's transaction has committed.
    fn last_sync_metric(self) -> (&'static str, &'static str) {
        match self {
            Proxy::Svcplane => ("svcplane_proxy_last_sync_timestamp_seconds", ""),
            Proxy::KubeProxy => (
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "ip_family=\"IPv4\"",
            ),
        }
    }

    /// The histograms (name, label selecting IPv4 or the kind) of its full and partial syncs.
    fn sync_metrics(self) -> [(&'static str, &'static str); 2] {
        match self {
            Proxy::Svcplane => [
                ("svcplane_proxy_sync_duration_seconds", "kind=\"full\""),
                ("svcplane_proxy_sync_duration_seconds", "kind=\"partial\""),
            ],
            Proxy::KubeProxy => [
                (
                    "kubeproxy_sync_full_proxy_rules_duration_seconds",
                    "ip_family=\"IPv4\"",
                ),
                (
                    "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                    "ip_family=\"IPv4\"",
                ),
            ],
        }
    }
}

/// One result line: `proxy key value`.
fn report(proxy: Proxy, key: &str, value: f64) {
    println!("{} {key} {value}", proxy.name());
}

/// A child process, killed when dropped.
struct Spawned {
    child: Child,
    /// kube-proxy (built with the lifeline) exits when this closes, even if we are killed.
    _stdin: Option<ChildStdin>,
    log: Option<PathBuf>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawned {
    /// An error with the end of its log if it has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let tail = self
                .log
                .as_deref()
                .and_then(|l| std::fs::read_to_string(l).ok())
                .map(|text| {
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(20)..].join("\n")
                })
                .unwrap_or_default();
            bail!("process exited ({status}):\n{tail}");
        }
        Ok(())
    }
}

/// A node network namespace with loopback and an uplink holding the Node's address (one end of
/// a veth pair whose other end stays in the namespace too); deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

impl Netns {
    async fn create(name: String) -> anyhow::Result<Self> {
        run(tokio::process::Command::new("ip").args(["netns", "add", &name])).await?;
        let ns = Netns(name);
        for args in [
            &["link", "set", "lo", "up"][..],
            // No dummy links on every kernel: a veth pair with both ends in the namespace.
            &[
                "link",
                "add",
                "uplink",
                "type",
                "veth",
                "peer",
                "name",
                "uplink-peer",
            ],
            &["addr", "add", &format!("{NODE_IP}/24"), "dev", "uplink"],
            &["link", "set", "uplink", "up"],
            &["link", "set", "uplink-peer", "up"],
        ] {
            run(tokio::process::Command::new("ip")
                .args(["-n", &ns.0])
                .args(args))
            .await?;
        }
        Ok(ns)
    }

    /// `program` inside the namespace, pinned to CPU 0 (the proxy has CPU 1).
    fn on_cpu0(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.0, "taskset", "-c", "0", program]);
        cmd
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{METRICS_PORT}/metrics");
        run(self
            .on_cpu0("curl")
            .args(["-sf", "--noproxy", "*", "--max-time", "5", &url]))
        .await
    }
}

/// Runs a command to the end; its stdout, or an error with its stderr.
async fn run(cmd: &mut tokio::process::Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A histogram's sum and count.
#[derive(Debug, Default, Clone, Copy)]
struct Hist {
    sum: f64,
    count: f64,
}

impl Hist {
    fn minus(self, before: Hist) -> Hist {
        Hist {
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }
}

/// Full and partial syncs as the proxy counts them.
#[derive(Debug, Default, Clone, Copy)]
struct SyncStats {
    full: Hist,
    partial: Hist,
}

/// A sample's value from Prometheus text: `name` with a label set containing `label` (any
/// label set, or none, if `label` is empty).
fn sample(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once('}')?,
            None if rest.starts_with(' ') => ("", rest),
            None => return None,
        };
        (label.is_empty() || labels.split(',').any(|l| l == label))
            .then(|| value.split_whitespace().next()?.parse().ok())?
    })
}

fn sync_stats(proxy: Proxy, text: &str) -> SyncStats {
    let hist = |(name, label): (&str, &str)| Hist {
        sum: sample(text, &format!("{name}_sum"), label).unwrap_or(0.0),
        count: sample(text, &format!("{name}_count"), label).unwrap_or(0.0),
    };
    let [full, partial] = proxy.sync_metrics();
    SyncStats {
        full: hist(full),
        partial: hist(partial),
    }
}

/// Reports the mean duration and count of the syncs a phase caused, per kind.
fn report_syncs(proxy: Proxy, phase: &str, before: SyncStats, after: SyncStats) {
    for (kind, h) in [
        ("full", after.full.minus(before.full)),
        ("partial", after.partial.minus(before.partial)),
    ] {
        report(proxy, &format!("{phase}_{kind}_syncs"), h.count);
        if h.count > 0.0 {
            report(proxy, &format!("{phase}_{kind}_ms"), h.sum / h.count * 1e3);
        }
    }
}

/// VmRSS and VmHWM in MiB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Seconds since the Unix epoch, the clock both proxies stamp their last sync with.
fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What a [`Poller`]'s thread measured of itself.
#[derive(Debug, Default)]
struct PollStats {
    scrapes: u64,
    failures: u64,
    busy: Duration,
    bytes: usize,
}

/// The proxy's last-sync timestamp (set just after a sync's transaction commits), read by a
/// thread of ours inside the node namespace; each new value arrives on a channel, in order.
struct Poller {
    values: mpsc::UnboundedReceiver<f64>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<PollStats>>>,
}

impl Poller {
    /// Starts polling and waits for the timestamp's first value.
    async fn start(ns: &Netns, proxy: Proxy, interval: Duration) -> anyhow::Result<Self> {
        // Opened here, so that a missing namespace fails the start.
        let netns = File::open(Path::new("/var/run/netns").join(&ns.0))
            .with_context(|| format!("network namespace {}", ns.0))?;
        let (tx, values) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("metrics-poller".into())
            .spawn(move || poll(&netns, proxy, interval, &tx))?;
        let mut poller = Self {
            values,
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        if poller.next_after(f64::MIN, deadline).await?.is_none() {
            let (name, _) = proxy.last_sync_metric();
            bail!("{}: no {name} in its metrics", proxy.name());
        }
        Ok(poller)
    }

    /// The first value above `after` (a wall-clock time) that arrives by `deadline`; values at
    /// or below it are skipped.
    async fn next_after(&mut self, after: f64, deadline: Instant) -> anyhow::Result<Option<f64>> {
        loop {
            match tokio::time::timeout_at(deadline.into(), self.values.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => {
                    let why = self.stop().err().unwrap_or_else(|| anyhow!("it stopped"));
                    return Err(why.context("metrics poller"));
                }
                Ok(Some(value)) if value > after => return Ok(Some(value)),
                Ok(Some(_)) => {}
            }
        }
    }

    /// Waits until the timestamp has not moved for `quiet`, at most `timeout`.
    async fn settle(&mut self, quiet: Duration, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let moved = self.next_after(f64::MIN, Instant::now() + quiet).await?;
            if moved.is_none() {
                return Ok(());
            }
        }
        bail!("the proxy kept syncing for {timeout:?}")
    }

    /// Stops the thread and returns what it measured of itself.
    fn stop(&mut self) -> anyhow::Result<PollStats> {
        self.values.close();
        let thread = self
            .thread
            .take()
            .context("metrics poller already stopped")?;
        thread
            .join()
            .map_err(|_| anyhow!("metrics poller panicked"))?
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // Joined (it notices within a scrape's timeout), so that no thread of ours is left in
        // the namespace when it is deleted.
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

/// A [`Poller`]'s thread: enters the node namespace and CPU 0 (the proxy has CPU 1), then
/// scrapes the proxy's metrics every `interval` until the receiver is closed. Its sockets
/// belong to the namespace: nothing links the namespace to the host by IP.
fn poll(
    netns: &File,
    proxy: Proxy,
    interval: Duration,
    tx: &mpsc::UnboundedSender<f64>,
) -> anyhow::Result<PollStats> {
    setns(netns, CloneFlags::CLONE_NEWNET).context("entering the node namespace")?;
    let mut cpu0 = CpuSet::new();
    cpu0.set(0)?;
    sched_setaffinity(Pid::from_raw(0), &cpu0).context("pinning to CPU 0")?;
    let (name, label) = proxy.last_sync_metric();
    let addr = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
    // Only this metric family: kube-proxy's handler (client_golang's) still gathers all of them
    // but encodes one, a fraction of the scrape's cost on the proxy's CPU; svcplane-proxy's
    // ignores the query and sends its few kilobytes.
    let request = format!("GET /metrics?name%5B%5D={name} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut stats = PollStats::default();
    let mut last = None;
    let mut response = Vec::new();
    while !tx.is_closed() {
        let started = Instant::now();
        match scrape(addr, &request, &mut response) {
            Ok(()) => {
                stats.scrapes += 1;
                stats.busy += started.elapsed();
                stats.bytes = response.len();
                let value = sample(&String::from_utf8_lossy(&response), name, label);
                if let Some(value) = value
                    && last != Some(value)
                {
                    last = Some(value);
                    let _ = tx.send(value);
                }
            }
            Err(_) => stats.failures += 1,
        }
        std::thread::sleep(interval);
    }
    Ok(stats)
}

/// One HTTP/1.0 `request`, its response's headers and body. HTTP/1.0: no chunked encoding, and
/// the response ends with the connection.
fn scrape(addr: SocketAddr, request: &str, response: &mut Vec<u8>) -> std::io::Result<()> {
    let timeout = Duration::from_secs(2);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request.as_bytes())?;
    response.clear();
    stream.read_to_end(response)?;
    if response.get(8..13) != Some(b" 200 ") {
        return Err(std::io::Error::other("not 200 OK"));
    }
    Ok(())
}

/// What a timed write must have put in the kernel.
enum Expect<'a> {
    /// A new Service's ClusterIP, in the cluster-ips set (which both proxies' tables have).
    ClusterIp(&'a str),
    /// An endpoint among those of a ClusterIP's port 80/TCP.
    Endpoint {
        cluster_ip: &'a str,
        endpoint: Ipv4Addr,
    },
}

impl Expect<'_> {
    /// Whether the proxy's table holds it now.
    async fn in_kernel(&self, ns: &Netns, proxy: Proxy) -> anyhow::Result<bool> {
        let table = proxy.table();
        match *self {
            Expect::ClusterIp(ip) => {
                let element = format!("{{ {ip} }}");
                let found = nft(ns, &["get", "element", "ip", table])
                    .args([Proxy::CLUSTER_IPS_SET, &element])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await?;
                Ok(found.success())
            }
            Expect::Endpoint {
                cluster_ip,
                endpoint,
            } => {
                let listed = match proxy {
                    // Services with two endpoints: one map from ClusterIP, protocol, port and a
                    // random pick to the endpoint.
                    Proxy::Svcplane => {
                        let keys = format!(
                            "{{ {cluster_ip} . tcp . 80 . 0, {cluster_ip} . tcp . 80 . 1 }}"
                        );
                        nft_output(
                            ns,
                            &["get", "element", "ip", table, "cluster-n2-eps", &keys],
                        )
                        .await?
                    }
                    // The Service port's chain (its name has a hash in it) from the service-ips
                    // map, then that chain's jumps to chains named after their endpoints.
                    Proxy::KubeProxy => {
                        let key = format!("{{ {cluster_ip} . tcp . 80 }}");
                        let verdict =
                            nft_output(ns, &["get", "element", "ip", table, "service-ips", &key])
                                .await?;
                        let chain = verdict.as_deref().and_then(|v| {
                            let (_, rest) = v.split_once("goto ")?;
                            let name = rest.split_whitespace().next()?;
                            Some(
                                name.trim_matches(|c| matches!(c, '"' | ',' | '}'))
                                    .to_owned(),
                            )
                        });
                        match chain {
                            Some(chain) => {
                                nft_output(ns, &["list", "chain", "ip", table, &chain]).await?
                            }
                            None => None,
                        }
                    }
                };
                Ok(listed.is_some_and(|l| names_ip(&l, &endpoint.to_string())))
            }
        }
    }
}

/// `nft args…` in the namespace, on CPU 0.
fn nft(ns: &Netns, args: &[&str]) -> tokio::process::Command {
    let mut cmd = ns.on_cpu0("nft");
    cmd.args(args);
    cmd
}

/// What `nft args…` printed, or None if it failed (no such element or chain, say).
async fn nft_output(ns: &Netns, args: &[&str]) -> anyhow::Result<Option<String>> {
    let out = nft(ns, args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("nft")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Whether `text` names `ip` (not as part of a longer address).
fn names_ip(text: &str, ip: &str) -> bool {
    text.match_indices(ip).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + ip.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
            && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// The latencies of one phase's timed writes, in milliseconds.
#[derive(Debug, Default)]
struct Latencies {
    /// From the write's response to the commit of the sync carrying it (negative when that
    /// came first).
    from_return: Vec<f64>,
    /// From just before the write was sent.
    from_start: Vec<f64>,
    /// Writes whose sync did not come within the timeout.
    misses: usize,
    /// Writes checked in the kernel after the timestamp moved, and how often it did not hold
    /// them yet (a sync without the write; the next one was then timed).
    checked: usize,
    mismatches: usize,
    /// Time spent looking in the kernel.
    checking: Duration,
}

impl Latencies {
    /// Waits for the first sync committed after `start` (wall clock) and returns its commit
    /// time. With `check`, that sync must have put `check` in the kernel; an earlier one
    /// counts as a mismatch and the next is waited for. None if none came by `deadline`.
    async fn committed(
        &mut self,
        poller: &mut Poller,
        node: &Node,
        start: f64,
        deadline: Instant,
        check: Option<&Expect<'_>>,
    ) -> anyhow::Result<Option<f64>> {
        if check.is_some() {
            self.checked += 1;
        }
        let mut after = start;
        while let Some(at) = poller.next_after(after, deadline).await? {
            let Some(expect) = check else {
                return Ok(Some(at));
            };
            let looked = Instant::now();
            let found = expect.in_kernel(&node.ns, node.proxy).await?;
            self.checking += looked.elapsed();
            if found {
                return Ok(Some(at));
            }
            self.mismatches += 1;
            eprintln!(
                "{}: a sync {:.1} ms after the write did not carry it",
                node.proxy.name(),
                (at - start) * 1e3
            );
            after = at;
        }
        self.misses += 1;
        Ok(None)
    }

    fn push(&mut self, start: f64, returned: f64, committed: f64) -> f64 {
        let ms = (committed - returned) * 1e3;
        self.from_return.push(ms);
        self.from_start.push((committed - start) * 1e3);
        ms
    }

    /// `<phase>_n`, `_misses`, `_checked`, `_mismatches`, and the percentiles `ps` of both
    /// latencies (`<phase>_p50_ms`, `<phase>_start_p50_ms`, …; p100 is `max`).
    fn report(self, proxy: Proxy, phase: &str, ps: &[u32]) {
        if self.checked > 0 {
            eprintln!(
                "{}: {phase}: {} kernel checks, {:.0} ms each on average",
                proxy.name(),
                self.checked,
                self.checking.as_secs_f64() * 1e3 / self.checked as f64
            );
        }
        report(proxy, &format!("{phase}_n"), self.from_return.len() as f64);
        report(proxy, &format!("{phase}_misses"), self.misses as f64);
        report(proxy, &format!("{phase}_checked"), self.checked as f64);
        report(
            proxy,
            &format!("{phase}_mismatches"),
            self.mismatches as f64,
        );
        for (which, samples) in [("", self.from_return), ("start_", self.from_start)] {
            let samples = sorted(samples);
            if samples.is_empty() {
                continue;
            }
            for &p in ps {
                let key = if p == 100 {
                    "max".into()
                } else {
                    format!("p{p}")
                };
                let value = percentile(&samples, f64::from(p) / 100.0);
                report(proxy, &format!("{phase}_{which}{key}_ms"), value);
            }
        }
    }
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The `n`th address of a pool starting at `base`.
fn pool_ip(base: Ipv4Addr, n: usize) -> anyhow::Result<Ipv4Addr> {
    let n = u32::try_from(n)?;
    Ok(Ipv4Addr::from(
        u32::from(base).checked_add(n).context("pool exhausted")?,
    ))
}

fn service(name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(8080)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn endpoint(ip: Ipv4Addr, worker: usize) -> Endpoint {
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        node_name: Some(format!("worker-{worker}")),
        ..Default::default()
    }
}

/// The slice of Service `service` (named after it), as an endpoint controller would write it.
fn slice(service: &str, ips: [Ipv4Addr; 2], worker: usize) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(service.into()),
            labels: Some(BTreeMap::from([
                (LABEL_SERVICE_NAME.to_owned(), service.to_owned()),
                (LABEL_MANAGED_BY.to_owned(), "bench.svcplane.dev".to_owned()),
            ])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            ips.iter()
                .enumerate()
                .map(|(e, ip)| endpoint(*ip, worker + e))
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

struct Bench {
    args: Args,
    env: TestEnv,
    client: kube::Client,
    /// Each populated Service's two endpoint addresses, as the API server has them now.
    endpoints: Vec<[Ipv4Addr; 2]>,
    /// Each populated Service's ClusterIP.
    cluster_ips: Vec<String>,
    /// The same seed for each proxy: both change the same Services' endpoints in the same order.
    seed: u64,
    /// The ClusterIP of the last populated Service.
    probe_ip: String,
    /// Addresses handed out so far from the change and add pools.
    changed: usize,
    added: usize,
}

impl Bench {
    async fn populate(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        svcplane_testenv::kubelet::create_namespace(&self.client, NAMESPACE).await?;
        svcplane_testenv::kubelet::create_node(&self.client, NODE, None, NODE_IP.parse()?).await?;
        let base = Ipv4Addr::new(10, 128, 0, 0);
        self.endpoints = (0..self.args.services)
            .map(|i| Ok([pool_ip(base, 2 * i)?, pool_ip(base, 2 * i + 1)?]))
            .collect::<anyhow::Result<_>>()?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), NAMESPACE);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NAMESPACE);
        let created = stream::iter(
            self.endpoints
                .iter()
                .enumerate()
                .map(Ok::<_, anyhow::Error>),
        )
        .map_ok(|(i, ips)| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                let name = format!("svc-{i}");
                let pp = PostParams::default();
                let created = services.create(&pp, &service(&name)).await?;
                slices.create(&pp, &slice(&name, *ips, i % 50)).await?;
                let ip = created
                    .spec
                    .and_then(|s| s.cluster_ip)
                    .context("a populated Service has no ClusterIP")?;
                anyhow::Ok((i, ip))
            }
        })
        .try_buffer_unordered(self.args.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
        self.cluster_ips = vec![String::new(); self.args.services];
        for (i, ip) in created {
            self.cluster_ips[i] = ip;
        }
        self.probe_ip = self.cluster_ips[self.args.services - 1].clone();
        eprintln!(
            "populated {} Services with 2 endpoints each in {:.1}s",
            self.args.services,
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Starts `proxy` in a fresh node namespace; returns it with the moment it was started.
    async fn start_node(&self, proxy: Proxy) -> anyhow::Result<(Node, Instant)> {
        let name = proxy.name();
        let ns = Netns::create(format!("{}-{name}", self.args.netns_prefix)).await?;
        let apiserver = self.env.server_addr();
        let relay = ApiRelay::start(&ns.0, API_PORT, apiserver, self.env.dir()).await?;
        let kubeconfig = self.env.write_kubeconfig_via(
            &format!("{name}.kubeconfig"),
            SocketAddr::from(([127, 0, 0, 1], API_PORT)),
        )?;
        let log = self.args.work.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &ns.0, "taskset", "-c", "1"]);
        match proxy {
            Proxy::Svcplane => {
                cmd.arg(&self.args.svcplane_proxy).args([
                    format!("--hostname-override={NODE}"),
                    format!("--cluster-cidr={CLUSTER_CIDR}"),
                    format!("--admin-addr=127.0.0.1:{METRICS_PORT}"),
                    "--min-sync-period=0s".into(),
                ]);
            }
            Proxy::KubeProxy => {
                cmd.arg(&self.args.kube_proxy)
                    .args([
                        "--proxy-mode=nftables".into(),
                        format!("--hostname-override={NODE}"),
                        format!("--cluster-cidr={CLUSTER_CIDR}"),
                        format!("--metrics-bind-address=127.0.0.1:{METRICS_PORT}"),
                        "--healthz-bind-address=127.0.0.1:10256".into(),
                        // There is no --min-sync-period flag; outside IPVS mode this one sets it.
                        "--iptables-min-sync-period=0s".into(),
                        // Leave the machine's conntrack sysctls alone.
                        "--conntrack-max-per-core=0".into(),
                        "--conntrack-tcp-timeout-established=0".into(),
                        "--conntrack-tcp-timeout-close-wait=0".into(),
                    ])
                    .env("SVCPLANE_LIFELINE", "stdin");
            }
        }
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()));
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdin = child.stdin.take();
        let node = Node {
            proxy,
            process: Spawned {
                child,
                _stdin: stdin,
                log: Some(log),
            },
            _relay: relay,
            ns,
        };
        Ok((node, started))
    }

    /// Phase 1: the first full sync, then memory and the size of the table.
    async fn full_sync(&self, node: &mut Node, started: Instant) -> anyhow::Result<()> {
        let (proxy, name) = (node.proxy, node.proxy.name());
        let probe = Expect::ClusterIp(&self.probe_ip);
        let deadline = started + Duration::from_secs(self.args.full_sync_timeout_seconds);
        let committed = loop {
            // Fails until the table, the set and the element are there.
            if probe.in_kernel(&node.ns, proxy).await? {
                break Instant::now();
            }
            node.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{name}: set {} of table ip {} did not hold {} within {}s",
                    Proxy::CLUSTER_IPS_SET,
                    proxy.table(),
                    self.probe_ip,
                    self.args.full_sync_timeout_seconds
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        report(
            proxy,
            "full_sync_wall_s",
            (committed - started).as_secs_f64(),
        );
        let pid = node.process.child.id();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
        if comm.trim() != proxy.comm() {
            bail!("process {pid} is {comm:?}, not {}", proxy.comm());
        }
        // The proxy observes its metric just after the commit.
        let mut stats = SyncStats::default();
        for _ in 0..100 {
            if let Ok(text) = node.ns.metrics().await {
                stats = sync_stats(proxy, &text);
                if stats.full.count >= 1.0 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if stats.full.count < 1.0 {
            bail!("{name}: its metrics never showed a full sync");
        }
        report(
            proxy,
            "full_sync_metric_s",
            stats.full.sum / stats.full.count,
        );
        report(proxy, "full_sync_metric_count", stats.full.count);
        // Late events and their syncs.
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.check_running()?;
        let (rss, hwm) = memory(pid)?;
        report(proxy, "rss_sync_mib", rss);
        report(proxy, "hwm_sync_mib", hwm);
        let table = run(node
            .ns
            .on_cpu0("nft")
            .args(["list", "table", "ip", proxy.table()]))
        .await?;
        report(proxy, "ruleset_lines", table.lines().count() as f64);
        Ok(())
    }

    /// Phase 2: Services added one at a time, each with its slice created first.
    async fn adds(&mut self, node: &mut Node, poller: &mut Poller) -> anyhow::Result<()> {
        let (proxy, name) = (node.proxy, node.proxy.name());
        let timeout = Duration::from_secs(self.args.timeout_seconds);
        let services: Api<Service> = Api::namespaced(self.client.clone(), NAMESPACE);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NAMESPACE);
        let pp = PostParams::default();
        let before = sync_stats(proxy, &node.ns.metrics().await?);
        let mut adds = Latencies::default();
        let base = Ipv4Addr::new(10, 201, 0, 0);
        for k in 0..self.args.adds {
            let svc = format!("add-{k}");
            let ips = [pool_ip(base, self.added)?, pool_ip(base, self.added + 1)?];
            self.added += 2;
            slices.create(&pp, &slice(&svc, ips, k)).await?;
            tokio::time::sleep(ADD_SPACING).await;
            let start = wall_clock();
            let created = services.create(&pp, &service(&svc)).await?;
            let returned = wall_clock();
            let next = Instant::now() + ADD_SPACING;
            let ip = created
                .spec
                .and_then(|s| s.cluster_ip)
                .context("created Service has no ClusterIP")?;
            let check = Expect::ClusterIp(&ip);
            let deadline = Instant::now() + timeout;
            match adds
                .committed(poller, node, start, deadline, Some(&check))
                .await?
            {
                Some(at) => {
                    adds.push(start, returned, at);
                }
                None => eprintln!("{name}: Service {svc} ({ip}) not synced within {timeout:?}"),
            }
            node.check_running()?;
            tokio::time::sleep_until(next.into()).await;
        }
        let after = sync_stats(proxy, &node.ns.metrics().await?);
        eprintln!(
            "{name}: adds (ms from the create's response) {:.1?}",
            adds.from_return
        );
        adds.report(proxy, "add", &[50, 100]);
        report_syncs(proxy, "add", before, after);
        Ok(())
    }

    /// Deletes what [`Bench::adds`] created, so the next proxy starts from the same Services.
    async fn remove_adds(&self) {
        let services: Api<Service> = Api::namespaced(self.client.clone(), NAMESPACE);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NAMESPACE);
        let dp = DeleteParams::default();
        for k in 0..self.args.adds {
            let svc = format!("add-{k}");
            let _ = services.delete(&svc, &dp).await;
            let _ = slices.delete(&svc, &dp).await;
        }
    }

    /// Phase 3: endpoint changes, one at a time.
    async fn changes(&mut self, node: &mut Node, poller: &mut Poller) -> anyhow::Result<()> {
        let (proxy, name) = (node.proxy, node.proxy.name());
        let timeout = Duration::from_secs(self.args.timeout_seconds);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NAMESPACE);
        let before = sync_stats(proxy, &node.ns.metrics().await?);
        let mut rng = Rng::new(self.seed);
        let mut changes = Latencies::default();
        let mut slowest: Vec<(f64, usize, Ipv4Addr)> = Vec::new();
        let base = Ipv4Addr::new(10, 200, 0, 1);
        for c in 0..self.args.changes {
            let i = rng.below(self.args.services);
            let e = rng.below(2);
            let fresh = pool_ip(base, self.changed)?;
            if fresh.octets()[1] != 200 {
                bail!("out of fresh addresses in 10.200.0.0/16");
            }
            self.changed += 1;
            self.endpoints[i][e] = fresh;
            let eps: Vec<Endpoint> = self.endpoints[i]
                .iter()
                .enumerate()
                .map(|(e, ip)| endpoint(*ip, i % 50 + e))
                .collect();
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let patch = json!({
                "metadata": { "annotations": { ANNOTATION_LAST_CHANGE_TRIGGER_TIME: now } },
                "endpoints": eps,
            });
            let pp = PatchParams::default();
            let start = wall_clock();
            slices
                .patch(&format!("svc-{i}"), &pp, &Patch::Merge(&patch))
                .await?;
            let returned = wall_clock();
            let check = Expect::Endpoint {
                cluster_ip: &self.cluster_ips[i],
                endpoint: fresh,
            };
            let checked = self.args.check_every > 0 && c % self.args.check_every == 0;
            let deadline = Instant::now() + timeout;
            match changes
                .committed(poller, node, start, deadline, checked.then_some(&check))
                .await?
            {
                Some(at) => {
                    let ms = changes.push(start, returned, at);
                    slowest.push((ms, i, fresh));
                    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
                    slowest.truncate(5);
                }
                None => {
                    eprintln!(
                        "{name}: change {c} (svc-{i} → {fresh}) not synced within {timeout:?}"
                    );
                    if changes.misses >= self.args.max_misses {
                        eprintln!("{name}: {} misses, stopping the changes", changes.misses);
                        break;
                    }
                }
            }
            if (c + 1) % 100 == 0 {
                node.check_running()?;
                eprintln!("{name}: {} changes", c + 1);
            }
        }
        let after = sync_stats(proxy, &node.ns.metrics().await?);
        let slowest: Vec<String> = slowest
            .iter()
            .map(|(ms, i, ip)| format!("{ms:.1} ms (svc-{i} → {ip})"))
            .collect();
        eprintln!("{name}: slowest changes: {}", slowest.join(", "));
        let early = changes.from_return.iter().filter(|ms| **ms < 0.0).count();
        if early > 0 {
            eprintln!("{name}: {early} changes were committed before the API write returned");
        }
        changes.report(proxy, "change", &[50, 99, 100]);
        report_syncs(proxy, "change", before, after);
        Ok(())
    }

    async fn run_proxy(&mut self, proxy: Proxy) -> anyhow::Result<()> {
        let (mut node, started) = self.start_node(proxy).await?;
        self.full_sync(&mut node, started).await?;
        // Only now: its scrapes would take the proxy's CPU from the full sync.
        let interval = Duration::from_millis(self.args.poll_interval_ms);
        let mut poller = Poller::start(&node.ns, proxy, interval).await?;
        poller
            .settle(Duration::from_secs(1), Duration::from_secs(120))
            .await?;
        self.adds(&mut node, &mut poller).await?;
        poller
            .settle(Duration::from_secs(1), Duration::from_secs(60))
            .await?;
        self.changes(&mut node, &mut poller).await?;
        let polled = poller.stop()?;
        eprintln!(
            "{}: {} metrics scrapes of {} bytes, {:.2} ms each on average, {} failed",
            proxy.name(),
            polled.scrapes,
            polled.bytes,
            polled.busy.as_secs_f64() * 1e3 / polled.scrapes.max(1) as f64,
            polled.failures
        );
        node.check_running()?;
        let (rss, hwm) = memory(node.process.child.id())?;
        report(proxy, "rss_end_mib", rss);
        report(proxy, "hwm_end_mib", hwm);
        drop(poller);
        drop(node);
        self.remove_adds().await;
        Ok(())
    }
}

/// One proxy in its node namespace. Fields drop in order: the process before the relay and
/// the namespace it runs in.
struct Node {
    proxy: Proxy,
    process: Spawned,
    _relay: ApiRelay,
    ns: Netns,
}

impl Node {
    fn check_running(&mut self) -> anyhow::Result<()> {
        self.process.check_running().context(self.proxy.name())
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    if args.services == 0 {
        bail!("--services must be at least 1");
    }
    std::fs::create_dir_all(&args.work)?;
    let env = TestEnv::start().await?;
    let client = env.client().await?;
    let seed = args.seed;
    let proxies = args.proxies.clone();
    let mut bench = Bench {
        args,
        env,
        client,
        endpoints: Vec::new(),
        seed,
        cluster_ips: Vec::new(),
        probe_ip: String::new(),
        changed: 0,
        added: 0,
    };
    bench.populate().await?;
    for proxy in proxies {
        eprintln!("{}: starting", proxy.name());
        bench.run_proxy(proxy).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // On SIGTERM or Ctrl-C the run is dropped, which stops the proxies and the control plane
    // and deletes the namespaces.
    tokio::select! {
        result = bench(args) => result,
        () = svcplane_runtime::shutdown_signal() => bail!("interrupted"),
    }
}
