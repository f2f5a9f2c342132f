//! The Corefile: CoreDNS's configuration, read into typed settings.
//!
//! [`parse`] reads the text (Caddyfile syntax: server blocks, directives, nested blocks,
//! comments, quotes, `{$ENV}` substitution) into a [`Corefile`]: one [`ServerBlock`] per block,
//! each with the settings of the plugins it names. Only the plugins and options svcplane-dns
//! implements are accepted; anything else is an [`Error`] naming it and its line, never ignored.
//! [`crate::plan`] turns a `Corefile` into what the server runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::PodMode;

mod parse;
#[cfg(test)]
mod tests;

pub use parse::{parse, parse_with_env};

/// A Corefile problem: what and where (1-based line; 0 when it concerns the whole file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Corefile line {line}: {message}")]
pub struct Error {
    pub line: usize,
    pub message: String,
}

/// A whole Corefile.
#[derive(Debug, Clone, PartialEq)]
pub struct Corefile {
    pub servers: Vec<ServerBlock>,
}

/// One server block: `zone[:port] [zone[:port]…] { plugins }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerBlock {
    /// Line of the block's keys.
    pub line: usize,
    /// The zones the block serves: lower case, absolute (`.` for the root, `example.org.`).
    pub zones: Vec<String>,
    /// All keys of one block share one port (53 when none is given).
    pub port: u16,
    /// `bind`: addresses to listen on; empty means every address.
    pub bind: Vec<IpAddr>,
    pub plugins: Plugins,
}

/// The plugins of one server block, each `None`/`false`/empty when absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plugins {
    pub errors: bool,
    pub health: Option<HealthPlugin>,
    /// `ready [ADDRESS]`.
    pub ready: Option<SocketAddr>,
    pub kubernetes: Option<Kubernetes>,
    /// `prometheus [ADDRESS]`.
    pub prometheus: Option<SocketAddr>,
    /// In the order written.
    pub forward: Vec<Forward>,
    pub cache: Option<Cache>,
    /// `loop`.
    pub loop_detect: bool,
    pub reload: Option<Reload>,
    /// `loadbalance [round_robin]`.
    pub loadbalance: bool,
    pub hosts: Option<Hosts>,
    /// `rewrite name …`, in the order written.
    pub rewrite: Vec<Rewrite>,
    /// `log`.
    pub log: bool,
    /// `autopath @kubernetes`: the zones it applies to (the block's when none are given).
    pub autopath: Option<Vec<String>>,
}

/// `health [ADDRESS] { lameduck DURATION }`; CoreDNS's default address is `:8080`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthPlugin {
    pub addr: SocketAddr,
    pub lameduck: Duration,
}

/// `kubernetes [ZONES…] { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Kubernetes {
    /// Absolute, lower case; the block's zones when none are given.
    pub zones: Vec<String>,
    /// `pods disabled|insecure|verified`; CoreDNS's default is `disabled`.
    pub pods: PodMode,
    /// `ttl N`, 0–3600; default 5.
    pub ttl: u32,
    /// `fallthrough [ZONES…]`: `None` when absent; `Some(empty)` for every zone.
    pub fallthrough: Option<Vec<String>>,
    pub endpoint_pod_names: bool,
    pub noendpoints: bool,
    /// `kubeconfig PATH`: the API client's kubeconfig (otherwise the process's own).
    pub kubeconfig: Option<PathBuf>,
}

/// Where `forward` sends: an address, or the nameservers of a resolv.conf-style file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Addr(SocketAddr),
    ResolvConf(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Upstreams in a random order per query (CoreDNS's default).
    Random,
    /// Each query starts at the next upstream.
    RoundRobin,
    /// Always the first upstream first.
    Sequential,
}

/// `forward FROM TO… { except …; policy …; max_concurrent N }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// The zone forwarded, absolute (`.` for everything).
    pub from: String,
    pub to: Vec<Upstream>,
    /// Zones below `from` not forwarded (absolute).
    pub except: Vec<String>,
    pub policy: Policy,
    pub max_concurrent: Option<usize>,
}

/// One side (success or denial) of `cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSide {
    /// Entries at most (CoreDNS's default 9984).
    pub capacity: usize,
    /// Longest time an entry is kept, in seconds (3600 success, 1800 denial by default).
    pub max_ttl: u32,
    /// Shortest time an entry is kept, in seconds (5 by default).
    pub min_ttl: u32,
    /// `disable success|denial`.
    pub disabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleMode {
    /// Answer the expired entry at once and refresh it in the background.
    Immediate,
    /// Ask upstream first; answer the expired entry only if that fails.
    Verify,
}

/// `cache [TTL] [ZONES…] { success …; denial …; serve_stale …; prefetch …; disable … }`.
/// `TTL` sets both sides' `max_ttl`; [`Cache::new`] has CoreDNS's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Cache {
    /// Absolute; the block's zones when none are given.
    pub zones: Vec<String>,
    pub success: CacheSide,
    pub denial: CacheSide,
    /// `serve_stale [DURATION] [immediate|verify]`: how long past expiry (default 1h).
    pub serve_stale: Option<(Duration, StaleMode)>,
    pub prefetch: Option<Prefetch>,
    /// `disable success ZONES…`: zones (absolute) whose successful answers are not cached.
    /// `disable success` without zones sets `success.disabled` instead (every zone).
    pub disable_success: Vec<String>,
    /// `disable denial ZONES…`: zones (absolute) whose denials are not cached.
    /// `disable denial` without zones sets `denial.disabled` instead (every zone).
    pub disable_denial: Vec<String>,
}

/// `prefetch AMOUNT [DURATION [PERCENTAGE%]]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prefetch {
    /// Hits within `duration` that make an entry worth refreshing.
    pub amount: u32,
    /// Default 1 minute.
    pub duration: Duration,
    /// Refresh when less than this share of the TTL is left (default 10).
    pub percentage: u8,
}

/// `reload [INTERVAL] [JITTER]` (30 s and 15 s by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reload {
    pub interval: Duration,
    pub jitter: Duration,
}

/// `hosts [FILE [ZONES…]] { ENTRIES; ttl; no_reverse; reload; fallthrough }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hosts {
    /// `/etc/hosts` when none is given.
    pub file: PathBuf,
    /// Absolute; the block's zones when none are given.
    pub zones: Vec<String>,
    /// Inline entries: an address and its names (absolute, lower case).
    pub inline: Vec<(IpAddr, Vec<String>)>,
    /// Default 3600.
    pub ttl: u32,
    pub no_reverse: bool,
    /// How often the file is re-read (default 5 s; 0 = never).
    pub reload: Duration,
    pub fallthrough: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameMatch {
    Exact,
    Prefix,
    Suffix,
    Substring,
    Regex,
}

/// `rewrite [continue|stop] name [exact|prefix|suffix|substring|regex] FROM TO [answer auto]`.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub line: usize,
    /// `continue`: later rules apply to the rewritten name; `stop` (default): none do.
    pub continues: bool,
    pub kind: NameMatch,
    /// Lower case with a trailing dot, as CoreDNS normalizes it (so a prefix or substring ends
    /// at a label boundary); for `regex`, the pattern as written (compiled case-insensitive).
    pub from: String,
    /// Lower case with a trailing dot; for `regex`, `{1}`… refer to the pattern's groups.
    pub to: String,
    /// Compiled `from`, for `regex`.
    pub regex: Option<regex::Regex>,
    /// `answer auto`: names in the answer are rewritten back to the question's.
    pub answer_auto: bool,
}

impl PartialEq for Rewrite {
    fn eq(&self, other: &Self) -> bool {
        (
            self.continues,
            self.kind,
            &self.from,
            &self.to,
            self.answer_auto,
        ) == (
            other.continues,
            other.kind,
            &other.from,
            &other.to,
            other.answer_auto,
        )
    }
}

impl HealthPlugin {
    /// CoreDNS's default: `:8080`, no lameduck.
    pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080);
}

impl Default for HealthPlugin {
    fn default() -> Self {
        HealthPlugin {
            addr: Self::DEFAULT_ADDR,
            lameduck: Duration::ZERO,
        }
    }
}

/// `ready`'s default address, `:8181`.
pub const READY_DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8181);

/// `prometheus`'s default address, `localhost:9153`.
pub const PROMETHEUS_DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9153);

impl Kubernetes {
    /// `kubernetes ZONES` with every option at CoreDNS's default.
    pub fn new(zones: Vec<String>) -> Self {
        Kubernetes {
            zones,
            pods: PodMode::Disabled,
            ttl: 5,
            fallthrough: None,
            endpoint_pod_names: false,
            noendpoints: false,
            kubeconfig: None,
        }
    }
}

impl Forward {
    /// `forward FROM TO…` with every option at CoreDNS's default.
    pub fn new(from: impl Into<String>, to: Vec<Upstream>) -> Self {
        Forward {
            from: from.into(),
            to,
            except: Vec::new(),
            policy: Policy::Random,
            max_concurrent: None,
        }
    }
}

impl CacheSide {
    /// CoreDNS's success defaults: 9984 entries, TTL 5 s–3600 s.
    pub const SUCCESS: CacheSide = CacheSide {
        capacity: 9984,
        max_ttl: 3600,
        min_ttl: 5,
        disabled: false,
    };
    /// CoreDNS's denial defaults: 9984 entries, TTL 5 s–1800 s.
    pub const DENIAL: CacheSide = CacheSide {
        capacity: 9984,
        max_ttl: 1800,
        min_ttl: 5,
        disabled: false,
    };
}

impl Cache {
    /// `cache` for `zones` with every option at CoreDNS's default.
    pub fn new(zones: Vec<String>) -> Self {
        Cache {
            zones,
            success: CacheSide::SUCCESS,
            denial: CacheSide::DENIAL,
            serve_stale: None,
            prefetch: None,
            disable_success: Vec::new(),
            disable_denial: Vec::new(),
        }
    }
}

impl Default for Reload {
    /// CoreDNS's defaults: every 30 s, jitter 15 s.
    fn default() -> Self {
        Reload {
            interval: Duration::from_secs(30),
            jitter: Duration::from_secs(15),
        }
    }
}

impl Hosts {
    /// `hosts` (`/etc/hosts`) for `zones` with every option at CoreDNS's default.
    pub fn new(zones: Vec<String>) -> Self {
        Hosts {
            file: PathBuf::from("/etc/hosts"),
            zones,
            inline: Vec::new(),
            ttl: 3600,
            no_reverse: false,
            reload: Duration::from_secs(5),
            fallthrough: None,
        }
    }
}
