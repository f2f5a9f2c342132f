//! Forwarding names outside the cluster zone to upstream resolvers, with a bounded cache and
//! loop protection.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::metrics::Metrics;

const SHARDS: usize = 16;
/// Positive answers are cached at most this long, negative ones at most `MAX_NEGATIVE_TTL`.
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
}

impl ForwardError {
    /// A fixed metric label per variant.
    pub fn reason(&self) -> &'static str {
        match self {
            ForwardError::NoUpstream => "no_upstream",
            ForwardError::Loop => "loop",
            ForwardError::AllFailed(_) => "upstreams_failed",
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
    fn get(&self, key: &Key) -> Option<Reply> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let entry = shard.get(key)?;
        let age = entry.stored.elapsed().as_secs() as u32;
        if age >= entry.ttl {
            shard.remove(key);
            return None;
        }
        let mut reply = entry.reply.clone();
        for r in reply
            .answers
            .iter_mut()
            .chain(reply.authorities.iter_mut())
            .chain(reply.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(reply)
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
        shard.insert(
            key,
            Entry {
                reply,
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

/// How long a reply may be cached: the smallest answer TTL for data, the SOA's (capped by its
/// minimum field) for NXDOMAIN/NODATA, nothing for failures.
fn cache_ttl(reply: &Reply) -> u32 {
    match reply.rcode {
        ResponseCode::NoError if !reply.answers.is_empty() => reply
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0)
            .min(MAX_TTL),
        ResponseCode::NoError | ResponseCode::NXDomain => reply
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(0)
            .min(MAX_NEGATIVE_TTL),
        _ => 0,
    }
}

/// Sends questions to upstream resolvers in turn until one answers.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    cache: Cache,
    next: AtomicUsize,
    ids: RandomState,
    counter: AtomicUsize,
    /// The name of our own loop probe; seeing it arrive means an upstream sends queries back.
    probe: Name,
    looped: AtomicBool,
    metrics: Option<Metrics>,
}

impl Forwarder {
    /// `own` are the addresses this server listens on: an upstream that is one of them (or the
    /// same port on any address when listening on the wildcard) is dropped with a warning.
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
            cache: Cache::new(cache_capacity),
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
        &self,
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
        let hit = self.cache.get(&key);
        if let Some(m) = &self.metrics {
            m.cache(hit.is_some());
        }
        if let Some(hit) = hit {
            return Ok(hit);
        }
        if let Some(m) = &self.metrics {
            m.forwarded();
        }
        let reply = self
            .query_upstreams(name, qtype, class)
            .await
            .inspect_err(|e| {
                if let Some(m) = &self.metrics {
                    m.forward_error(e.reason());
                }
            })?;
        self.cache.put(key, reply.clone(), cache_ttl(&reply));
        Ok(reply)
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
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..self.upstreams.len() {
            let upstream = self.upstreams[(start + i) % self.upstreams.len()];
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
