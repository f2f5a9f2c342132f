//! The simulated network: a LAN (a bridge in its own namespace) joining the nodes and an
//! "external" host, each node a namespace that routes for its pods, each pod a namespace on a
//! veth to its node. Every address lives inside these namespaces; nothing links them to the host
//! namespace by IP.
//!
//! Addresses (all inside the namespaces):
//! - LAN 192.0.2.0/24 (TEST-NET-1): external host .1, node N .(10+N);
//! - pods on node N: 10.244.N.0/24, the node's side of every pod veth holds 10.244.N.1/32;
//! - LoadBalancer IPs 198.51.100.0/24 (TEST-NET-2): the external host routes them to node 1.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
pub use svcplane_testenv::netns::connect_in;

/// The LAN address of node `n` (1-based).
pub fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + u8::try_from(n).unwrap_or(0))
}

/// The external host's LAN address.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// Where LoadBalancer IPs come from (the demo's LoadBalancerIPPool).
pub const LOAD_BALANCER_CIDR: &str = "198.51.100.0/24";

/// The pods' CIDR (the proxy's --cluster-cidr in deploy/svcplane-proxy.yaml).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Runs `ip …` (or another tool) to completion; an error carries its stderr.
pub async fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespaces of one cluster: every name starts with `prefix-`.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
}

impl Names {
    pub fn lan(&self) -> String {
        format!("{}-lan", self.prefix)
    }

    pub fn external(&self) -> String {
        format!("{}-ext", self.prefix)
    }

    /// The namespace of node `node-N`.
    pub fn node(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// The namespace of pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> String {
        format!("{}-{namespace}-{name}", self.prefix)
    }
}

/// Removes what an earlier run with this prefix left behind (after a SIGKILL): kills every
/// process still inside one of its namespaces, then deletes the namespaces and their
/// /etc/netns files. Returns how many namespaces it removed. Blocking (a few `ip` runs per
/// namespace), so it also serves `Drop`; see [`remove_leftovers`].
pub fn remove_leftovers_now(prefix: &str) -> usize {
    let Ok(list) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    else {
        return 0;
    };
    let mine: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect();
    for ns in &mine {
        remove_namespace_now(ns);
    }
    mine.len()
}

/// Kills the processes in `ns`, deletes it and its /etc/netns directory. Errors are ignored:
/// this is clean-up, and a second pass (the next start) repeats it. Blocking.
pub fn remove_namespace_now(ns: &str) {
    let run = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
    };
    if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = run(&["kill", "-9", pid]);
        }
    }
    let _ = run(&["ip", "netns", "del", ns]);
    let _ = std::fs::remove_dir_all(etc_netns(ns));
}

/// [`remove_leftovers_now`] off the runtime's threads.
pub async fn remove_leftovers(prefix: &str) -> anyhow::Result<usize> {
    let prefix = prefix.to_owned();
    Ok(tokio::task::spawn_blocking(move || remove_leftovers_now(&prefix)).await?)
}

/// [`remove_namespace_now`] off the runtime's threads.
pub async fn remove_namespace(ns: &str) {
    let ns = ns.to_owned();
    let _ = tokio::task::spawn_blocking(move || remove_namespace_now(&ns)).await;
}

/// `ip netns exec` bind-mounts the files here over /etc: a pod's resolv.conf.
pub fn etc_netns(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

/// Writes the resolv.conf `ip netns exec` shows to processes in `ns`.
pub fn write_resolv_conf(ns: &str, contents: &str) -> anyhow::Result<()> {
    let dir = etc_netns(ns);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("resolv.conf");
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
}

/// `ip -n <ns> …`.
async fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["ip", "-n", ns];
    all.extend_from_slice(args);
    sh(&all).await
}

async fn add_namespace(ns: &str) -> anyhow::Result<()> {
    sh(&["ip", "netns", "add", ns]).await?;
    ip_in(ns, &["link", "set", "lo", "up"]).await?;
    Ok(())
}

async fn sysctl(ns: &str, setting: &str) -> anyhow::Result<()> {
    sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", setting]).await?;
    Ok(())
}

/// Makes the LAN and the external host. Call [`add_node`] for each node afterwards.
pub async fn add_lan(names: &Names) -> anyhow::Result<()> {
    let lan = names.lan();
    add_namespace(&lan).await?;
    ip_in(&lan, &["link", "add", "br0", "type", "bridge"]).await?;
    ip_in(&lan, &["link", "set", "br0", "up"]).await?;
    let ext = names.external();
    add_namespace(&ext).await?;
    join_lan(names, &ext, "ext", EXTERNAL_IP).await?;
    // A load balancer in front of the nodes: LoadBalancer IPs go to node 1.
    ip_in(
        &ext,
        &[
            "route",
            "add",
            LOAD_BALANCER_CIDR,
            "via",
            &node_ip(1).to_string(),
        ],
    )
    .await?;
    Ok(())
}

/// Plugs `ns` into the LAN bridge with `ip`/24 on its `uplink`.
async fn join_lan(names: &Names, ns: &str, port: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    let lan = names.lan();
    ip_in(
        &lan,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "uplink", "netns", ns,
        ],
    )
    .await?;
    ip_in(&lan, &["link", "set", port, "master", "br0", "up"]).await?;
    ip_in(ns, &["addr", "add", &format!("{ip}/24"), "dev", "uplink"]).await?;
    ip_in(ns, &["link", "set", "uplink", "up"]).await?;
    Ok(())
}

/// Node `n` of `count`: forwarding on, on the LAN, routes to the other nodes' pods, a default
/// route to the external host.
pub async fn add_node(names: &Names, node: &str, n: usize, count: usize) -> anyhow::Result<()> {
    let ns = names.node(node);
    add_namespace(&ns).await?;
    // Rejects are ICMP errors, which the kernel rate-limits; a demo or test sends them faster
    // than clients normally would.
    for setting in ["net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0"] {
        sysctl(&ns, setting).await?;
    }
    join_lan(names, &ns, &format!("n{n}"), node_ip(n)).await?;
    for other in (1..=count).filter(|&o| o != n) {
        ip_in(
            &ns,
            &[
                "route",
                "add",
                &format!("10.244.{other}.0/24"),
                "via",
                &node_ip(other).to_string(),
            ],
        )
        .await?;
    }
    ip_in(
        &ns,
        &["route", "add", "default", "via", &EXTERNAL_IP.to_string()],
    )
    .await?;
    Ok(())
}

/// Pod namespace `ns` on node `n` (namespace `node_ns`) with address 10.244.n.`host`, joined
/// by veth `veth` (the node's side).
pub async fn add_pod(
    node_ns: &str,
    n: usize,
    ns: &str,
    veth: &str,
    host: u8,
) -> anyhow::Result<Ipv4Addr> {
    let n8 = u8::try_from(n).context("node number")?;
    let gateway = Ipv4Addr::new(10, 244, n8, 1).to_string();
    let ip = Ipv4Addr::new(10, 244, n8, host);
    add_namespace(ns).await?;
    ip_in(
        node_ns,
        &[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )
    .await?;
    ip_in(
        node_ns,
        &["addr", "add", &format!("{gateway}/32"), "dev", veth],
    )
    .await?;
    ip_in(node_ns, &["link", "set", veth, "up"]).await?;
    ip_in(node_ns, &["route", "add", &format!("{ip}/32"), "dev", veth]).await?;
    ip_in(ns, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"]).await?;
    ip_in(ns, &["link", "set", "eth0", "up"]).await?;
    ip_in(
        ns,
        &["route", "add", &gateway, "dev", "eth0", "scope", "link"],
    )
    .await?;
    ip_in(
        ns,
        &["route", "add", "default", "via", &gateway, "dev", "eth0"],
    )
    .await?;
    Ok(ip)
}

/// GET `path` from `addr` inside `ns`: the status code and body. For probes and checks; the
/// request never leaves the namespace.
pub async fn http_get_in(
    ns: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let stream = connect_in(ns, addr, timeout).await?;
    let mut stream = stream.into_std()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.take(1 << 20).read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("no HTTP status line"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    })
    .await
    .map_err(std::io::Error::other)?
}
