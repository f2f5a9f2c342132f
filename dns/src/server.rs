//! The DNS wire side: a hickory `RequestHandler` that answers from the published [`Index`],
//! and the UDP/TCP listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record as WireRecord, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, RequestInfo, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::pipeline::{Outcome, QName, Response};
use crate::plan::Plan;
use crate::{Config, Index, QType, Rcode, Rdata, Record};

/// The EDNS version this server speaks; higher versions get BADVERS (RFC 6891).
const EDNS_VERSION: u8 = 0;
/// An idle TCP connection is closed after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);
const TCP_RESPONSE_BUFFER: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving DNS")]
    Serve(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Answers from whatever index and plan are published when a query arrives.
#[derive(Debug, Clone)]
pub struct Handler {
    index: Arc<ArcSwap<Index>>,
    plan: Arc<ArcSwap<Plan>>,
    /// The port of the listener this handler serves (server blocks are per port).
    port: u16,
    metrics: Metrics,
}

impl Handler {
    /// The cluster zone of `config` and, with a forwarder, everything else forwarded; without
    /// one, names outside the cluster zone are refused.
    pub fn new(
        index: Arc<ArcSwap<Index>>,
        config: Arc<Config>,
        forwarder: Option<Arc<Forwarder>>,
        metrics: Metrics,
    ) -> Self {
        Self::with_plan(
            index,
            Arc::new(ArcSwap::from_pointee(Plan::simple(config, forwarder))),
            metrics,
        )
    }

    /// Answers as the published plan says (it may be replaced, e.g. by `reload`).
    pub fn with_plan(
        index: Arc<ArcSwap<Index>>,
        plan: Arc<ArcSwap<Plan>>,
        metrics: Metrics,
    ) -> Self {
        Self {
            index,
            plan,
            port: 0,
            metrics,
        }
    }

    fn on_port(&self, port: u16) -> Self {
        Self {
            port,
            ..self.clone()
        }
    }
}

pub(crate) fn qtype(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::AAAA => QType::Aaaa,
        RecordType::SRV => QType::Srv,
        RecordType::PTR => QType::Ptr,
        RecordType::TXT => QType::Txt,
        RecordType::CNAME => QType::Cname,
        RecordType::SOA => QType::Soa,
        RecordType::NS => QType::Ns,
        RecordType::AXFR => QType::Axfr,
        RecordType::IXFR => QType::Ixfr,
        other => QType::Other(u16::from(other)),
    }
}

pub(crate) fn rcode(r: Rcode) -> ResponseCode {
    match r {
        Rcode::NoError => ResponseCode::NoError,
        Rcode::NxDomain => ResponseCode::NXDomain,
        Rcode::ServFail => ResponseCode::ServFail,
        Rcode::Refused => ResponseCode::Refused,
    }
}

/// Encodes a model record; `None` (logged) for a name that is not a valid DNS name, which can
/// only come from object data, e.g. an over-long ExternalName.
pub(crate) fn wire(record: &Record) -> Option<WireRecord> {
    let name = wire_name;
    let data = match &record.data {
        Rdata::A(ip) => RData::A(A(*ip)),
        Rdata::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        Rdata::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
        Rdata::Ptr(t) => RData::PTR(PTR(name(t)?)),
        Rdata::Cname(t) => RData::CNAME(CNAME(name(t)?)),
        Rdata::Ns(t) => RData::NS(NS(name(t)?)),
        Rdata::Txt(t) => RData::TXT(TXT::new(vec![t.clone()])),
        Rdata::Soa {
            mname,
            rname,
            serial,
            refresh,
            retry,
            expire,
            minimum,
        } => RData::SOA(SOA::new(
            name(mname)?,
            name(rname)?,
            *serial,
            *refresh as i32,
            *retry as i32,
            *expire as i32,
            *minimum,
        )),
    };
    match name(&record.name) {
        Some(owner) => Some(WireRecord::from_rdata(owner, record.ttl, data)),
        None => {
            tracing::warn!(name = %record.name, "skipping a record whose name is not a valid DNS name");
            None
        }
    }
}

pub(crate) fn wire_all(records: &[Record]) -> Vec<WireRecord> {
    records.iter().filter_map(wire).collect()
}

/// Whether the wire form of a question section uses a compression pointer (or a reserved
/// label type) in a name.
fn question_has_pointer(raw: &[u8]) -> bool {
    let mut i = 0;
    while i < raw.len() {
        // One name: labels up to the root.
        loop {
            let Some(&len) = raw.get(i) else {
                return false;
            };
            if len & 0xC0 != 0 {
                return true;
            }
            i += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
        i += 4; // type and class
    }
    false
}

/// What the server reports when a response could not be sent.
fn failed(request: &Request) -> ResponseInfo {
    not_sent(request, ResponseCode::ServFail)
}

/// What the server reports, with `code`, for a request it sent nothing for.
fn not_sent(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

async fn send_error<R: ResponseHandler>(
    request: &Request,
    code: ResponseCode,
    edns: Option<&Edns>,
    mut handle: R,
) -> ResponseInfo {
    let mut edns = edns.cloned();
    if let Some(e) = edns.as_mut() {
        e.set_rcode_high(code.high());
    }
    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref())
        .error_msg(&request.metadata, code);
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, "sending an error response failed");
            failed(request)
        }
    }
}

fn rcode_label(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        handle: R,
    ) -> ResponseInfo {
        let start = std::time::Instant::now();
        let (info, qtype) = self.respond(request, handle).await;
        let protocol = match request.protocol() {
            hickory_server::net::xfer::Protocol::Udp => "udp",
            hickory_server::net::xfer::Protocol::Tcp => "tcp",
            _ => "other",
        };
        self.metrics.request(
            qtype,
            rcode_label(info.response_code),
            protocol,
            start.elapsed(),
        );
        info
    }
}

impl Handler {
    /// Why a request gets no lookup at all, as the rcode to answer with.
    fn validate<'r>(
        &self,
        request: &'r Request,
        plan: &Plan,
    ) -> Result<RequestInfo<'r>, ResponseCode> {
        if request
            .edns
            .as_ref()
            .is_some_and(|e| e.version() > EDNS_VERSION)
        {
            return Err(ResponseCode::BADVERS);
        }
        if request.metadata.message_type != MessageType::Query {
            return Err(ResponseCode::FormErr);
        }
        if request.metadata.op_code != OpCode::Query {
            return Err(ResponseCode::NotImp);
        }
        // Exactly one question, as every resolver sends; anything else is malformed.
        let info = request.request_info().map_err(|_| ResponseCode::FormErr)?;
        if info.query.query_class() != DNSClass::IN {
            return Err(ResponseCode::Refused);
        }
        let name = info.query.original().name();
        if plan.forwarders().any(|f| f.is_own_probe(name)) {
            // Our loop probe came back: answering it, not forwarding it, ends the loop.
            return Err(ResponseCode::Refused);
        }
        Ok(info)
    }

    /// Answers `request`; also returns its question type, for metrics.
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        handle: R,
    ) -> (ResponseInfo, Option<QType>) {
        if question_has_pointer(request.queries.as_bytes()) {
            // Nothing precedes the question but the header, so a compressed question name can
            // only point into it: malformed. hickory-server would echo the question bytes as
            // they came, and the pointer would then land in *our* header, making the reply
            // undecodable (found by cargo-fuzz). Dropped, as an unparseable datagram is.
            tracing::debug!(
                id = request.metadata.id,
                "dropping a query whose question name is compressed"
            );
            return (not_sent(request, ResponseCode::FormErr), None);
        }
        let response_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns.set_version(EDNS_VERSION);
            // RFC 3225: the DO bit of the query is copied into the reply.
            edns.set_dnssec_ok(req.flags().dnssec_ok);
            edns
        });
        // One plan for the whole question, even if a reload publishes another meanwhile.
        let plan = self.plan.load();
        let info = match self.validate(request, &plan) {
            Ok(info) => info,
            Err(code) => {
                let qtype = request
                    .request_info()
                    .ok()
                    .map(|i| qtype(i.query.query_type()));
                return (
                    send_error(request, code, response_edns.as_ref(), handle).await,
                    qtype,
                );
            }
        };
        let t = qtype(info.query.query_type());
        (
            self.answer_query(request, &plan, &info, response_edns.as_ref(), handle)
                .await,
            Some(t),
        )
    }

    async fn answer_query<R: ResponseHandler>(
        &self,
        request: &Request,
        plan: &Plan,
        info: &RequestInfo<'_>,
        response_edns: Option<&Edns>,
        handle: R,
    ) -> ResponseInfo {
        let original = info.query.original();
        let name = QName::new(presentation(original.name()));
        let Some(block) = plan.block(self.port, &name.lower) else {
            return send_error(request, ResponseCode::Refused, response_edns, handle).await;
        };
        let start = block.log.then(std::time::Instant::now);
        let index = self.index.load();
        let outcome = match block.resolve_now(&index, &name, original.query_type()) {
            Some(outcome) => outcome,
            // Boxed: the plugins' future is large, and most questions never need it.
            None => {
                Box::pin(block.resolve(&index, name, original.query_type(), request.src().ip()))
                    .await
            }
        };
        let info = match outcome {
            Outcome::Reply(reply) => send_reply(request, reply, response_edns, handle).await,
            Outcome::Error(code) | Outcome::Failure(code) => {
                send_error(request, code, response_edns, handle).await
            }
        };
        if let Some(start) = start {
            // The `log` plugin: one line per question.
            tracing::info!(
                target: "svcplane_dns::query",
                remote = %request.src(),
                id = request.metadata.id,
                qtype = %original.query_type(),
                name = %original.name(),
                proto = ?request.protocol(),
                rcode = %info.response_code,
                duration = ?start.elapsed(),
                "query"
            );
        }
        info
    }
}

/// A name of ours as a wire name. Plain labels are taken as they are: hickory's text parser
/// refuses a label that starts with `-`, which IPv6 pod labels do (`--1`).
pub(crate) fn wire_name(text: &str) -> Option<Name> {
    Name::from_ascii(text).ok().or_else(|| {
        let labels = text.trim_end_matches('.').split('.').map(str::as_bytes);
        let mut name = Name::from_labels(labels).ok()?;
        name.set_fqdn(true);
        Some(name)
    })
}

/// A question's name as text without escapes where none is needed to read it back: hickory
/// escapes a label's leading `-` (`\--1`), which is a plain IPv6 pod label here. A label
/// holding a dot or a byte outside printable ASCII keeps the escaped form, which matches no
/// cluster name.
fn presentation(name: &Name) -> String {
    let plain = name.iter().all(|label| {
        label
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b'.' && *b != b'\\')
    });
    if !plain {
        return name.to_ascii();
    }
    let mut text = String::new();
    for label in name.iter() {
        text.push_str(&String::from_utf8_lossy(label));
        text.push('.');
    }
    if text.is_empty() {
        text.push('.');
    }
    text
}

/// The size of a response as encoded, with no limit.
fn encoded_len(
    request: &Request,
    metadata: &Metadata,
    answers: &[WireRecord],
    authority: &[WireRecord],
    additionals: &[WireRecord],
    edns: Option<&Edns>,
) -> usize {
    let response = MessageResponseBuilder::new(&request.queries, edns).build(
        *metadata,
        answers.iter(),
        std::iter::empty(),
        authority.iter(),
        additionals.iter(),
    );
    let mut buf = Vec::with_capacity(512);
    let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut buf);
    // An encoding error shows up when the response is sent.
    let _ = response.destructive_emit(&mut encoder);
    buf.len()
}

/// At least the encoded size of `record` (no name compression assumed); large for record
/// types this server does not write itself.
fn record_bound(record: &WireRecord) -> usize {
    let name = |n: &Name| n.len() + 1;
    let rdata = match &record.data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::SRV(srv) => 6 + name(&srv.target),
        RData::CNAME(n) => name(&n.0),
        RData::PTR(n) => name(&n.0),
        RData::NS(n) => name(&n.0),
        RData::SOA(soa) => name(&soa.mname) + name(&soa.rname) + 20,
        RData::TXT(txt) => txt.txt_data.iter().map(|t| t.len() + 1).sum(),
        _ => usize::from(u16::MAX),
    };
    name(&record.name) + 10 + rdata
}

/// Cuts a response to the client's UDP size (see [`udp_fit`]): the additional section first;
/// if that is not enough, answers, and TC so the client asks again over TCP.
fn fit_udp(
    request: &Request,
    metadata: &mut Metadata,
    answers: &mut Vec<WireRecord>,
    authority: &mut Vec<WireRecord>,
    additionals: &mut Vec<WireRecord>,
    edns: Option<&Edns>,
) {
    match udp_fit(request, metadata, answers, authority, additionals, edns) {
        Fit::All => {}
        Fit::WithoutAdditionals => additionals.clear(),
        Fit::Answers(n) => {
            answers.truncate(n);
            authority.clear();
            additionals.clear();
            metadata.truncation = true;
        }
    }
}

/// How much of an answer goes into a UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    All,
    /// The additional section is dropped (no TC: it is optional data).
    WithoutAdditionals,
    /// Only this many answers, and TC.
    Answers(usize),
}

/// For a UDP request whose full answer exceeds the client's size (its EDNS payload size, or
/// 512): what fits with the OPT record kept (RFC 6891).
fn udp_fit(
    request: &Request,
    metadata: &Metadata,
    answers: &[WireRecord],
    authority: &[WireRecord],
    additionals: &[WireRecord],
    edns: Option<&Edns>,
) -> Fit {
    if request.protocol() != hickory_server::net::xfer::Protocol::Udp {
        return Fit::All;
    }
    let limit = usize::from(edns.map_or(512, |e| e.max_payload().max(512)));
    // Most answers are far below the limit: a bound without name compression settles them
    // without encoding the response twice.
    let question: usize = request
        .queries
        .queries()
        .iter()
        .map(|q| q.name().len() + 1 + 4)
        .sum();
    let bound = 12
        + question
        + [answers, authority, additionals]
            .iter()
            .flat_map(|records| records.iter())
            .map(record_bound)
            .sum::<usize>()
        + if edns.is_some() { 11 } else { 0 };
    if bound <= limit
        || encoded_len(request, metadata, answers, authority, additionals, edns) <= limit
    {
        return Fit::All;
    }
    if encoded_len(request, metadata, answers, authority, &[], edns) <= limit {
        return Fit::WithoutAdditionals;
    }
    // The largest prefix of the answers that fits, by bisection (none always fits).
    let (mut fits, mut too_many) = (0, answers.len());
    while too_many - fits > 1 {
        let mid = (fits + too_many) / 2;
        if encoded_len(request, metadata, &answers[..mid], &[], &[], edns) <= limit {
            fits = mid;
        } else {
            too_many = mid;
        }
    }
    Fit::Answers(fits)
}

/// Captures an encoded response in memory, for [`Handler::respond_to_bytes`].
#[derive(Clone, Default)]
struct Capture {
    max_size: u16,
    bytes: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a WireRecord> + Send + 'a,
            impl Iterator<Item = &'a WireRecord> + Send + 'a,
            impl Iterator<Item = &'a WireRecord> + Send + 'a,
            impl Iterator<Item = &'a WireRecord> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let mut buf = Vec::with_capacity(512);
        let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut buf);
        encoder.set_max_size(self.max_size);
        let info = response.destructive_emit(&mut encoder)?;
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) = Some(buf);
        Ok(info)
    }
}

impl Handler {
    /// The whole request path on raw bytes, as if they came over UDP from `src`: the encoded
    /// answer, or `None` when the bytes are not a DNS message at all (the server drops those).
    /// Used by the fuzz target and tests; no socket involved.
    pub async fn respond_to_bytes(&self, raw: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
        self.respond_to_packet(raw.to_vec(), src).await
    }

    /// [`Handler::respond_to_bytes`] for a datagram already owned (the UDP loop's).
    async fn respond_to_packet(&self, raw: Vec<u8>, src: SocketAddr) -> Option<Vec<u8>> {
        let request =
            Request::from_bytes(raw, src, hickory_server::net::xfer::Protocol::Udp).ok()?;
        let max_size = request
            .edns
            .as_ref()
            .map_or(512, |e| e.max_payload().max(512));
        let capture = Capture {
            max_size,
            ..Capture::default()
        };
        self.handle_request::<_, hickory_server::net::runtime::TokioTime>(
            &request,
            capture.clone(),
        )
        .await;
        capture
            .bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Sends a reply, cut to the client's UDP size (the OPT record kept).
async fn send_reply<R: ResponseHandler>(
    request: &Request,
    reply: Response,
    edns: Option<&Edns>,
    mut handle: R,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = reply.rcode;
    metadata.authoritative = reply.authoritative;
    metadata.recursion_available = reply.recursion_available;
    let Response {
        mut answers,
        mut authorities,
        mut additionals,
        ..
    } = reply;
    // Too big for the client's UDP size: the additional section goes first; if that is not
    // enough, as many answers as fit and TC, so the client asks again over TCP.
    fit_udp(
        request,
        &mut metadata,
        &mut answers,
        &mut authorities,
        &mut additionals,
        edns,
    );
    let response = MessageResponseBuilder::new(&request.queries, edns).build(
        metadata,
        answers.iter(),
        authorities.iter(),
        std::iter::empty(),
        additionals.iter(),
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, "sending a response failed");
            failed(request)
        }
    }
}

/// A DNS server listening on UDP and TCP at each address.
pub struct DnsServer {
    /// TCP, one hickory server per port; UDP is served by [`serve_udp`], without hickory's
    /// per-request machinery.
    servers: Vec<Server<Handler>>,
    udp: Vec<(Arc<UdpSocket>, Handler)>,
    local: Vec<SocketAddr>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// The largest UDP datagram read; DNS questions are far smaller, and a longer one is cut and
/// then refused as malformed.
const UDP_RECEIVE: usize = 4096;

/// Answers UDP questions on `socket` until the task is aborted. A question the index answers
/// is answered in place; one that waits for an upstream continues in a task of its own, so it
/// holds up nothing else. Garbage is dropped, as hickory's own UDP path drops it.
async fn serve_udp(socket: Arc<UdpSocket>, handler: Handler) {
    let mut buf = vec![0u8; UDP_RECEIVE];
    loop {
        let (n, src) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(error) => {
                // ICMP errors from earlier sends surface here (ECONNREFUSED): not fatal.
                tracing::debug!(%error, "receiving a UDP question failed");
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let h = handler.clone();
        let mut reply = Box::pin(async move { h.respond_to_packet(packet, src).await });
        match futures::poll!(&mut reply) {
            std::task::Poll::Ready(reply) => send(&socket, reply, src).await,
            std::task::Poll::Pending => {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let reply = reply.await;
                    send(&socket, reply, src).await;
                });
            }
        }
    }
}

async fn send(socket: &UdpSocket, reply: Option<Vec<u8>>, to: SocketAddr) {
    if let Some(bytes) = reply
        && let Err(error) = socket.send_to(&bytes, to).await
    {
        tracing::debug!(%error, %to, "sending a UDP answer failed");
    }
}

impl DnsServer {
    /// Binds UDP and TCP on every address (port 0 picks one port per address, shared by both).
    pub async fn bind(addrs: &[SocketAddr], handler: Handler) -> Result<Self, Error> {
        let mut servers: Vec<(u16, Server<Handler>)> = Vec::new();
        let mut local = Vec::new();
        let mut udp = Vec::new();
        for addr in addrs {
            let tcp = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    addr: *addr,
                    source,
                })?;
            let bound = tcp.local_addr().map_err(|source| Error::Bind {
                addr: *addr,
                source,
            })?;
            let socket = UdpSocket::bind(bound).await.map_err(|source| Error::Bind {
                addr: bound,
                source,
            })?;
            // Server blocks are chosen by the port a question arrives on.
            let on_port = handler.on_port(addr.port());
            let server = match servers.iter().position(|(p, _)| *p == addr.port()) {
                Some(i) => &mut servers[i].1,
                None => {
                    servers.push((addr.port(), Server::new(on_port.clone())));
                    &mut servers.last_mut().expect("just pushed").1
                }
            };
            server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
            udp.push((Arc::new(socket), on_port));
            local.push(bound);
        }
        Ok(Self {
            servers: servers.into_iter().map(|(_, s)| s).collect(),
            udp,
            local,
        })
    }

    /// The addresses bound, with the ports picked.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Serves until a server fails or `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let udp: Vec<tokio::task::JoinHandle<()>> = self
            .udp
            .iter()
            .map(|(socket, handler)| tokio::spawn(serve_udp(socket.clone(), handler.clone())))
            .collect();
        let mut servers = self.servers;
        let failed = if servers.is_empty() {
            shutdown.await;
            None
        } else {
            let done = futures::future::select_all(
                servers.iter_mut().map(|s| Box::pin(s.block_until_done())),
            );
            tokio::select! {
                (done, _, _) = done => Some(done.map_err(|e| Error::Serve(e.into()))),
                _ = shutdown => None,
            }
        };
        let mut result = Ok(());
        if let Some(done) = failed {
            result = done;
        } else {
            for server in &mut servers {
                if let Err(e) = server.shutdown_gracefully().await {
                    result = Err(Error::Serve(e.into()));
                }
            }
        }
        for task in udp {
            task.abort();
        }
        result
    }
}
