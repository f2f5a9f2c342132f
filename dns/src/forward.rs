//! Forwarding names outside the cluster zone to upstream resolvers, with a bounded cache and
//! loop protection.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::metrics::Metrics;
use crate::name::in_zone;

const SHARDS: usize = 16;
/// With flags (no Corefile), positive answers are cached at most this long, negative ones at
/// most `MAX_NEGATIVE_TTL`.
const MAX_TTL: u32 = 3600;
const MAX_NEGATIVE_TTL: u32 = 1800;
/// The EDNS buffer advertised upstream (the DNS flag day 2020 value).
const UPSTREAM_PAYLOAD: u16 = 1232;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream to forward to")]
    NoUpstream,
    #[error("a forwarding loop was detected; not forwarding")]
    Loop,
    #[error("every upstream failed; last error: {0}")]
    AllFailed(String),
    #[error("more than max_concurrent ({0}) questions are upstream already")]
    Overloaded(usize),
}

impl ForwardError {
    /// A fixed metric label per variant.
    pub fn reason(&self) -> &'static str {
        match self {
            ForwardError::NoUpstream => "no_upstream",
            ForwardError::Loop => "loop",
            ForwardError::AllFailed(_) => "upstreams_failed",
            ForwardError::Overloaded(_) => "max_concurrent",
        }
    }
}

/// What an upstream answered, as relayed to the client.
#[derive(Debug, Clone)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    name: Name,
    qtype: RecordType,
    class: DNSClass,
}

#[derive(Debug)]
struct Entry {
    reply: Reply,
    stored: Instant,
    ttl: u32,
    /// Hits since `window` began, for prefetching.
    hits: u32,
    window: Instant,
}

/// What the cache holds for a key.
#[derive(Debug)]
enum Lookup {
    /// TTLs lowered by the time spent in the cache; `refresh` when prefetching is due.
    Fresh {
        reply: Reply,
        refresh: bool,
    },
    /// Expired, but within the serve_stale window; TTLs are 0.
    Stale(Reply),
    Miss,
}

/// A bounded cache in shards (one lock each, never one lock for all); when a shard is full an
/// arbitrary entry makes room, as CoreDNS's cache does.
#[derive(Debug)]
struct Cache {
    shards: Vec<Mutex<HashMap<Key, Entry>>>,
    per_shard: usize,
    hasher: RandomState,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Cache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Entry>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// A hit with TTLs lowered by the time spent in the cache.
    #[cfg(test)]
    fn get(&self, key: &Key) -> Option<Reply> {
        match self.lookup(key, None, None) {
            Lookup::Fresh { reply, .. } => Some(reply),
            _ => None,
        }
    }

    fn lookup(
        &self,
        key: &Key,
        stale: Option<Duration>,
        prefetch: Option<&crate::corefile::Prefetch>,
    ) -> Lookup {
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = shard.get_mut(key) else {
            return Lookup::Miss;
        };
        let now = Instant::now();
        let age = now.duration_since(entry.stored).as_secs() as u32;
        if age >= entry.ttl {
            let stale_for = stale.map_or(0, |d| d.as_secs());
            if u64::from(age - entry.ttl) < stale_for {
                let mut reply = entry.reply.clone();
                for_each_record(&mut reply, |r| r.ttl = 0);
                return Lookup::Stale(reply);
            }
            shard.remove(key);
            return Lookup::Miss;
        }
        let mut refresh = false;
        if let Some(p) = prefetch {
            if now.duration_since(entry.window) > p.duration {
                entry.window = now;
                entry.hits = 0;
            }
            entry.hits += 1;
            let left = entry.ttl - age;
            if entry.hits >= p.amount
                && u64::from(left) * 100 <= u64::from(entry.ttl) * u64::from(p.percentage)
            {
                // One refresh per window: the refreshed entry starts counting again.
                entry.hits = 0;
                refresh = true;
            }
        }
        let mut reply = entry.reply.clone();
        for_each_record(&mut reply, |r| r.ttl = r.ttl.saturating_sub(age));
        Lookup::Fresh { reply, refresh }
    }

    fn put(&self, key: Key, reply: Reply, ttl: u32) {
        if ttl == 0 {
            return;
        }
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard
            && !shard.contains_key(&key)
            && let Some(victim) = shard.keys().next().cloned()
        {
            shard.remove(&victim);
        }
        let now = Instant::now();
        shard.insert(
            key,
            Entry {
                reply,
                stored: now,
                ttl,
                hits: 0,
                window: now,
            },
        );
    }
}

fn for_each_record(reply: &mut Reply, mut f: impl FnMut(&mut Record)) {
    reply
        .answers
        .iter_mut()
        .chain(reply.authorities.iter_mut())
        .chain(reply.additionals.iter_mut())
        .for_each(&mut f);
}

/// What the forwarding cache keeps and for how long: CoreDNS's `cache` plugin's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings(pub crate::corefile::Cache);

impl CacheSettings {
    /// The cache the flags give: `capacity` answers and as many denials, for their own TTLs
    /// (at most 3600 s and 1800 s), nothing with TTL 0.
    pub fn flags(capacity: usize) -> Self {
        let side = |max_ttl| crate::corefile::CacheSide {
            capacity,
            max_ttl,
            min_ttl: 0,
            disabled: false,
        };
        CacheSettings(crate::corefile::Cache {
            zones: vec![".".into()],
            success: side(MAX_TTL),
            denial: side(MAX_NEGATIVE_TTL),
            disable_success: vec![],
            disable_denial: vec![],
            serve_stale: None,
            prefetch: None,
        })
    }

    fn covers(&self, name: &str) -> bool {
        self.0.zones.iter().any(|z| in_zone(name, z))
    }

    /// How long a reply may be cached: the smallest answer TTL for data, the SOA's (capped by
    /// its minimum field) for NXDOMAIN/NODATA, within the side's bounds; nothing for failures
    /// or a disabled side.
    fn ttl(&self, name: &str, reply: &Reply) -> (bool, u32) {
        let clamp =
            |ttl: u32, side: &crate::corefile::CacheSide| ttl.max(side.min_ttl).min(side.max_ttl);
        match reply.rcode {
            ResponseCode::NoError if !reply.answers.is_empty() => {
                let side = &self.0.success;
                if side.disabled || self.0.disable_success.iter().any(|z| in_zone(name, z)) {
                    return (true, 0);
                }
                let ttl = reply.answers.iter().map(|r| r.ttl).min().unwrap_or(0);
                (true, clamp(ttl, side))
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                let side = &self.0.denial;
                if side.disabled || self.0.disable_denial.iter().any(|z| in_zone(name, z)) {
                    return (false, 0);
                }
                let ttl = reply.authorities.iter().find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                });
                // A denial without an SOA says nothing of how long it holds.
                (false, ttl.map_or(0, |t| clamp(t, side)))
            }
            _ => (false, 0),
        }
    }
}

/// The two caches CoreDNS keeps: answers and denials, each with its own capacity.
#[derive(Debug)]
struct Caches {
    settings: CacheSettings,
    success: Cache,
    denial: Cache,
}

impl Caches {
    fn new(settings: CacheSettings) -> Self {
        Caches {
            success: Cache::new(settings.0.success.capacity),
            denial: Cache::new(settings.0.denial.capacity),
            settings,
        }
    }

    fn lookup(&self, key: &Key) -> Lookup {
        let stale = self.settings.0.serve_stale.map(|(d, _)| d);
        let prefetch = self.settings.0.prefetch.as_ref();
        match self.success.lookup(key, stale, prefetch) {
            Lookup::Miss => self.denial.lookup(key, stale, prefetch),
            hit => hit,
        }
    }

    fn put(&self, key: Key, name: &str, reply: Reply) {
        let (success, ttl) = self.settings.ttl(name, &reply);
        if success {
            self.success.put(key, reply, ttl);
        } else {
            self.denial.put(key, reply, ttl);
        }
    }
}

/// Upstream order per question (`forward`'s `policy`).
pub use crate::corefile::Policy;

/// Sends questions to upstream resolvers in turn until one answers.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    cache: Option<Caches>,
    policy: Policy,
    max_concurrent: Option<usize>,
    in_flight: AtomicUsize,
    next: AtomicUsize,
    ids: RandomState,
    counter: AtomicUsize,
    /// The name of our own loop probe; seeing it arrive means an upstream sends queries back.
    probe: Name,
    looped: AtomicBool,
    metrics: Option<Metrics>,
}

/// Counts a question upstream for `max_concurrent` while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Forwarder {
    /// `own` are the addresses this server listens on: an upstream that is one of them (or the
    /// same port on any address when listening on the wildcard) is dropped with a warning.
    /// The cache is the flags' ([`CacheSettings::flags`]); upstreams are tried round robin.
    pub fn new(
        upstreams: Vec<SocketAddr>,
        own: &[SocketAddr],
        cache_capacity: usize,
        timeout: Duration,
    ) -> Self {
        let ours = |u: &SocketAddr| {
            own.iter().any(|o| {
                o == u
                    || (o.port() == u.port()
                        && o.ip().is_unspecified()
                        && (u.ip().is_loopback() || u.ip().is_unspecified()))
            })
        };
        let upstreams: Vec<SocketAddr> = upstreams
            .into_iter()
            .filter(|u| {
                let loops = ours(u);
                if loops {
                    tracing::warn!(upstream = %u, "not forwarding to our own address");
                }
                !loops
            })
            .collect();
        let ids = RandomState::new();
        let probe_label = format!("svcplane-loop-{:x}", ids.hash_one(Instant::now()));
        Forwarder {
            upstreams,
            timeout,
            cache: Some(Caches::new(CacheSettings::flags(cache_capacity))),
            policy: Policy::RoundRobin,
            max_concurrent: None,
            in_flight: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            ids,
            counter: AtomicUsize::new(0),
            probe: Name::from_ascii(format!("{probe_label}.invalid."))
                .unwrap_or_else(|_| Name::root()),
            looped: AtomicBool::new(false),
            metrics: None,
        }
    }

    /// Reports cache look-ups and upstream traffic.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The Corefile's `cache` (None: no cache at all, as without the plugin).
    pub fn with_cache(mut self, cache: Option<CacheSettings>) -> Self {
        self.cache = cache.map(Caches::new);
        self
    }

    /// `forward`'s `policy` and `max_concurrent`.
    pub fn with_policy(mut self, policy: Policy, max_concurrent: Option<usize>) -> Self {
        self.policy = policy;
        self.max_concurrent = max_concurrent;
        self
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Whether our loop probe came back, which turns forwarding off.
    pub fn loop_detected(&self) -> bool {
        self.looped.load(Ordering::Relaxed)
    }

    /// Called by the handler for every question: true (and the loop recorded) when it is our
    /// own probe coming back.
    pub fn is_own_probe(&self, name: &Name) -> bool {
        if name.eq_case(&self.probe) || name == &self.probe {
            if !self.looped.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "forwarding loop: an upstream sends our queries back to us; forwarding is off"
                );
            }
            return true;
        }
        false
    }

    /// Sends one probe (HINFO for a random name) upstream; if it comes back to us, forwarding
    /// stops (see [`is_own_probe`](Self::is_own_probe)). Its answer does not matter.
    pub async fn probe_for_loops(&self) {
        let _ = self
            .query_upstreams(&self.probe, RecordType::HINFO, DNSClass::IN)
            .await;
    }

    pub async fn resolve(
        self: &Arc<Self>,
        name: &Name,
        qtype: RecordType,
        class: DNSClass,
    ) -> Result<Reply, ForwardError> {
        if self.looped.load(Ordering::Relaxed) {
            if let Some(m) = &self.metrics {
                m.forward_error("loop");
            }
            return Err(ForwardError::Loop);
        }
        let key = Key {
            name: name.to_lowercase(),
            qtype,
            class,
        };
        let lower = key.name.to_ascii();
        let cache = self.cache.as_ref().filter(|c| c.settings.covers(&lower));
        let Some(cache) = cache else {
            return self.fetch(name, qtype, class).await;
        };
        let hit = cache.lookup(&key);
        if let Some(m) = &self.metrics {
            m.cache(!matches!(hit, Lookup::Miss));
        }
        match hit {
            Lookup::Fresh { reply, refresh } => {
                if refresh {
                    self.refresh_in_background(key, lower);
                }
                Ok(reply)
            }
            Lookup::Stale(stale) => match cache.settings.0.serve_stale {
                Some((_, crate::corefile::StaleMode::Verify)) => {
                    match self.fetch(name, qtype, class).await {
                        Ok(reply) => {
                            cache.put(key, &lower, reply.clone());
                            Ok(reply)
                        }
                        Err(_) => Ok(stale),
                    }
                }
                _ => {
                    self.refresh_in_background(key, lower);
                    Ok(stale)
                }
            },
            Lookup::Miss => {
                let reply = self.fetch(name, qtype, class).await?;
                cache.put(key, &lower, reply.clone());
                Ok(reply)
            }
        }
    }

    /// Asks upstream again for a cached question (prefetch, stale entries) without holding up
    /// the client.
    fn refresh_in_background(self: &Arc<Self>, key: Key, lower: String) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Ok(reply) = this.fetch(&key.name, key.qtype, key.class).await
                && let Some(cache) = &this.cache
            {
                cache.put(key, &lower, reply);
            }
        });
    }

    /// One question upstream, counted in metrics and against `max_concurrent`.
    async fn fetch(
        &self,
        name: &Name,
        qtype: RecordType,
        class: DNSClass,
    ) -> Result<Reply, ForwardError> {
        let _slot = match self.max_concurrent {
            Some(max) => {
                if self.in_flight.fetch_add(1, Ordering::Relaxed) >= max {
                    self.in_flight.fetch_sub(1, Ordering::Relaxed);
                    if let Some(m) = &self.metrics {
                        m.forward_error("max_concurrent");
                    }
                    return Err(ForwardError::Overloaded(max));
                }
                Some(InFlight(&self.in_flight))
            }
            None => None,
        };
        if let Some(m) = &self.metrics {
            m.forwarded();
        }
        self.query_upstreams(name, qtype, class)
            .await
            .inspect_err(|e| {
                if let Some(m) = &self.metrics {
                    m.forward_error(e.reason());
                }
            })
    }

    /// The order upstreams are tried in for one question.
    fn order(&self) -> Vec<usize> {
        let n = self.upstreams.len();
        match self.policy {
            Policy::Sequential => (0..n).collect(),
            Policy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|i| (start + i) % n).collect()
            }
            Policy::Random => {
                let mut order: Vec<usize> = (0..n).collect();
                rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
                order
            }
        }
    }

    async fn query_upstreams(
        &self,
        name: &Name,
        qtype: RecordType,
        class: DNSClass,
    ) -> Result<Reply, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let mut last = String::new();
        for i in self.order() {
            let upstream = self.upstreams[i];
            match tokio::time::timeout(self.timeout, self.exchange(upstream, name, qtype, class))
                .await
            {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => last = format!("{upstream}: {e}"),
                Err(_) => last = format!("{upstream}: timed out"),
            }
            tracing::debug!(error = %last, "upstream failed; trying the next");
        }
        Err(ForwardError::AllFailed(last))
    }

    fn request(&self, name: &Name, qtype: RecordType, class: DNSClass) -> (u16, Vec<u8>) {
        let id = self
            .ids
            .hash_one(self.counter.fetch_add(1, Ordering::Relaxed)) as u16;
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        let mut query = Query::query(name.clone(), qtype);
        query.set_query_class(class);
        msg.add_query(query);
        let mut edns = Edns::new();
        edns.set_max_payload(UPSTREAM_PAYLOAD);
        msg.set_edns(edns);
        (id, msg.to_vec().unwrap_or_default())
    }

    async fn exchange(
        &self,
        upstream: SocketAddr,
        name: &Name,
        qtype: RecordType,
        class: DNSClass,
    ) -> std::io::Result<Reply> {
        let (id, wire) = self.request(name, qtype, class);
        let bind: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(upstream).await?;
        socket.send(&wire).await?;
        let mut buf = vec![0u8; 65_535];
        // Ignore stray datagrams (wrong id or question) until the real answer or the timeout.
        let msg = loop {
            let n = socket.recv(&mut buf).await?;
            if let Ok(msg) = Message::from_vec(&buf[..n])
                && msg.metadata.id == id
                && msg.metadata.message_type == MessageType::Response
                && msg
                    .queries
                    .first()
                    .is_some_and(|q| q.name() == name && q.query_type() == qtype)
            {
                break msg;
            }
        };
        let msg = if msg.metadata.truncation {
            self.exchange_tcp(upstream, name, qtype, class).await?
        } else {
            msg
        };
        Ok(Reply {
            rcode: msg.metadata.response_code,
            answers: msg.answers,
            authorities: msg.authorities,
            additionals: msg
                .additionals
                .into_iter()
                .filter(|r| r.record_type() != RecordType::OPT)
                .collect(),
        })
    }

    async fn exchange_tcp(
        &self,
        upstream: SocketAddr,
        name: &Name,
        qtype: RecordType,
        class: DNSClass,
    ) -> std::io::Result<Message> {
        let (id, wire) = self.request(name, qtype, class);
        let mut stream = TcpStream::connect(upstream).await?;
        let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&wire);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut buf).await?;
        let msg = Message::from_vec(&buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        if msg.metadata.id != id {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "answer to another question",
            ));
        }
        Ok(msg)
    }
}

/// The nameservers of a resolv.conf, on port 53.
pub fn resolv_conf_nameservers(contents: &str) -> Vec<SocketAddr> {
    contents
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|ip| ip.split('%').next()?.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests;

/// The `search` domains of a resolv.conf, absolute and lower case (the last `search` line wins,
/// as in resolv.conf(5)).
pub fn resolv_conf_search(contents: &str) -> Vec<String> {
    let mut search = Vec::new();
    for line in contents.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("search") {
            search = words
                .map(|w| {
                    let mut w = w.trim_end_matches('.').to_ascii_lowercase();
                    w.push('.');
                    w
                })
                .collect();
        }
    }
    search
}
