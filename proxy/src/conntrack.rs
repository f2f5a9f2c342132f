//! Stale UDP flows. Conntrack keeps sending a UDP "connection" (a client's address and port)
//! to the endpoint it first went to, rules or not; when that endpoint goes away, the client's
//! datagrams vanish until the entry times out. After a sync that removes UDP endpoints (or
//! gives a UDP destination its first endpoints, replacing a reject), the entries going to the
//! old ones are deleted, as upstream does (`docs/upstream/kube-proxy-nftables.md` §7). TCP and
//! SCTP flows are left alone, as upstream leaves them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;

use svcplane_model::Protocol;

use crate::plan::{Plan, Vip};

/// Entries to delete: UDP flows to `dst` (an address, or any address for a NodePort) on
/// `port`, and only those answered by `reply_src` when given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Filter {
    pub dst: Option<IpAddr>,
    pub port: u16,
    pub reply_src: Option<IpAddr>,
}

/// The UDP destinations of a plan with their endpoints (`None`: refused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpView {
    vips: BTreeMap<Vip, Option<BTreeSet<IpAddr>>>,
    nodeports: BTreeMap<u16, Option<BTreeSet<IpAddr>>>,
}

impl UdpView {
    pub fn of(plan: &Plan) -> Self {
        let mut view = UdpView::default();
        let vips = plan
            .cluster
            .iter()
            .chain(&plan.external)
            .chain(&plan.external_short)
            .chain(&plan.external_local);
        for (vip, targets) in vips {
            if vip.1 == Protocol::Udp {
                let entry = view
                    .vips
                    .entry(*vip)
                    .or_insert_with(|| Some(BTreeSet::new()));
                entry
                    .get_or_insert_with(BTreeSet::new)
                    .extend(targets.iter().map(|(ip, _)| *ip));
            }
        }
        for vip in plan.refused.keys() {
            // Under a Local policy a destination can be refused to outsiders and served to
            // pods at once: it counts as served.
            if vip.1 == Protocol::Udp {
                view.vips.entry(*vip).or_insert(None);
            }
        }
        let nodeports = plan
            .nodeports
            .iter()
            .chain(&plan.nodeports_short)
            .chain(&plan.nodeports_local);
        for ((p, port), targets) in nodeports {
            if *p == Protocol::Udp {
                let entry = view
                    .nodeports
                    .entry(*port)
                    .or_insert_with(|| Some(BTreeSet::new()));
                entry
                    .get_or_insert_with(BTreeSet::new)
                    .extend(targets.iter().map(|(ip, _)| *ip));
            }
        }
        for (p, port) in plan.refused_nodeports.keys() {
            if *p == Protocol::Udp {
                view.nodeports.entry(*port).or_insert(None);
            }
        }
        view
    }

    /// What to delete going from `self` (applied before) to `next` (applied now).
    pub fn stale(&self, next: &UdpView) -> BTreeSet<Filter> {
        let mut out = BTreeSet::new();
        let mut compare = |dst: Option<IpAddr>,
                           port: u16,
                           before: Option<&Option<BTreeSet<IpAddr>>>,
                           now: Option<&Option<BTreeSet<IpAddr>>>| {
            match (before, now) {
                // Endpoints that went away: their flows.
                (Some(Some(old)), now) => {
                    let kept = now.cloned().flatten().unwrap_or_default();
                    for ip in old.difference(&kept) {
                        out.insert(Filter {
                            dst,
                            port,
                            reply_src: Some(*ip),
                        });
                    }
                }
                // A destination that was refused or unknown and now has endpoints: flows left
                // from before (rejected or dropped) must not pin it.
                (Some(None) | None, Some(Some(_))) => {
                    out.insert(Filter {
                        dst,
                        port,
                        reply_src: None,
                    });
                }
                _ => {}
            }
        };
        let vips: BTreeSet<&Vip> = self.vips.keys().chain(next.vips.keys()).collect();
        for vip in vips {
            compare(Some(vip.0), vip.2, self.vips.get(vip), next.vips.get(vip));
        }
        let ports: BTreeSet<&u16> = self.nodeports.keys().chain(next.nodeports.keys()).collect();
        for port in ports {
            compare(
                None,
                *port,
                self.nodeports.get(port),
                next.nodeports.get(port),
            );
        }
        out
    }
}

/// Why a deletion failed.
#[derive(Debug, thiserror::Error)]
#[error("conntrack {args}: {detail}")]
pub struct Error {
    pub args: String,
    pub detail: String,
}

/// Deletes conntrack entries.
pub trait Conntrack: Send + Sync {
    /// Deletes the UDP entries `filter` matches; returns how many went.
    fn delete(&self, filter: &Filter) -> Result<u64, Error>;
}

/// The `conntrack` command (conntrack-tools).
#[derive(Debug, Clone)]
pub struct ConntrackCli {
    binary: String,
    leading: Vec<String>,
}

impl ConntrackCli {
    pub fn new(binary: &str) -> Self {
        Self {
            binary: binary.into(),
            leading: Vec::new(),
        }
    }

    /// `conntrack` inside network namespace `ns` (tests).
    pub fn in_netns(ns: &str) -> Self {
        Self {
            binary: "ip".into(),
            leading: vec!["netns".into(), "exec".into(), ns.into(), "conntrack".into()],
        }
    }
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "ipv4" } else { "ipv6" }
}

impl Conntrack for ConntrackCli {
    fn delete(&self, filter: &Filter) -> Result<u64, Error> {
        let mut args: Vec<String> = vec!["-D".into(), "-p".into(), "udp".into()];
        if let Some(ip) = filter.dst.or(filter.reply_src) {
            args.extend(["-f".into(), family(&ip).into()]);
        }
        if let Some(dst) = filter.dst {
            args.extend(["--orig-dst".into(), dst.to_string()]);
        }
        args.extend(["--orig-port-dst".into(), filter.port.to_string()]);
        if let Some(src) = filter.reply_src {
            args.extend(["--reply-src".into(), src.to_string()]);
        }
        let shown = args.join(" ");
        let out = Command::new(&self.binary)
            .args(&self.leading)
            .args(&args)
            .output()
            .map_err(|e| Error {
                args: shown.clone(),
                detail: format!("{e} (install conntrack-tools)"),
            })?;
        // "N flow entries have been deleted." on stderr; exit 1 when N is 0.
        let text = String::from_utf8_lossy(&out.stderr);
        let deleted = text
            .split_whitespace()
            .zip(text.split_whitespace().skip(1))
            .find(|(_, next)| *next == "flow")
            .and_then(|(n, _)| n.parse::<u64>().ok());
        match deleted {
            Some(n) => Ok(n),
            None => Err(Error {
                args: shown,
                detail: text.trim().to_owned(),
            }),
        }
    }
}

/// Records deletions, for component tests.
#[derive(Debug, Clone, Default)]
pub struct FakeConntrack {
    deleted: std::sync::Arc<std::sync::Mutex<Vec<Filter>>>,
}

impl FakeConntrack {
    pub fn deleted(&self) -> Vec<Filter> {
        self.deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Conntrack for FakeConntrack {
    fn delete(&self, filter: &Filter) -> Result<u64, Error> {
        self.deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(filter.clone());
        Ok(0)
    }
}

#[cfg(test)]
mod tests;
