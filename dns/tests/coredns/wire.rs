//! Asking a server one question, and the comparable form of its reply.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::questions::{EdnsMode, Proto, Question};

/// How long one attempt waits; a UDP question is sent twice before "no reply".
const TIMEOUT: Duration = Duration::from_secs(2);

/// A reply reduced to what is compared: TTLs, record order, letter case of names and SOA
/// serials are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub rcode: String,
    /// Header flags set: `aa`, `tc`, `rd`, `ra`, `ad`, `cd`.
    pub flags: BTreeSet<&'static str>,
    /// The OPT record: version and DO bit.
    pub edns: Option<(u8, bool)>,
    /// The question section as sent back, letter case kept.
    pub question: Vec<String>,
    pub answer: BTreeSet<String>,
    pub authority: BTreeSet<String>,
    pub additional: BTreeSet<String>,
}

/// A reply, or why there is none.
pub type Outcome = Result<Reply, String>;

fn rcode_name(code: ResponseCode) -> String {
    match u16::from(code) {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        16 => "BADVERS".into(),
        n => format!("RCODE{n}"),
    }
}

/// `name TYPE CLASS rdata`, names lower-case (RFC 4343), SOA serial 0.
fn record_key(record: &Record) -> String {
    let rdata = match &record.data {
        RData::SOA(soa) => {
            let mut soa = soa.clone();
            soa.serial = 0;
            RData::SOA(soa).to_string().to_ascii_lowercase()
        }
        // Free text: case matters.
        RData::TXT(_) => record.data.to_string(),
        other => other.to_string().to_ascii_lowercase(),
    };
    format!(
        "{} {} {} {}",
        record.name.to_ascii().to_ascii_lowercase(),
        record.record_type(),
        record.dns_class,
        rdata
    )
}

impl Reply {
    fn from_message(msg: &Message) -> Self {
        let m = &msg.metadata;
        let flags = [
            (m.authoritative, "aa"),
            (m.truncation, "tc"),
            (m.recursion_desired, "rd"),
            (m.recursion_available, "ra"),
            (m.authentic_data, "ad"),
            (m.checking_disabled, "cd"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        let keys = |records: &[Record]| records.iter().map(record_key).collect();
        Reply {
            rcode: rcode_name(m.response_code),
            flags,
            edns: msg
                .edns
                .as_ref()
                .map(|e| (e.version(), e.flags().dnssec_ok)),
            question: msg
                .queries
                .iter()
                .map(|q| format!("{} {} {}", q.name(), q.query_class(), q.query_type()))
                .collect(),
            answer: keys(&msg.answers),
            authority: keys(&msg.authorities),
            additional: keys(&msg.additionals),
        }
    }

    /// NOERROR with no answer.
    pub fn is_nodata(&self) -> bool {
        self.rcode == "NOERROR" && self.answer.is_empty()
    }
}

/// One line: `NOERROR aa rd edns0+do | AN: … | NS: … | AR: …`.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.rcode)?;
        for flag in &self.flags {
            write!(f, " {flag}")?;
        }
        match self.edns {
            None => write!(f, " no-opt")?,
            Some((v, dnssec)) => write!(f, " opt(v{v}{})", if dnssec { ",do" } else { "" })?,
        }
        for (label, section) in [
            ("AN", &self.answer),
            ("NS", &self.authority),
            ("AR", &self.additional),
        ] {
            if section.is_empty() {
                continue;
            }
            let shown: Vec<&str> = section.iter().take(6).map(String::as_str).collect();
            write!(f, " | {label}: {}", shown.join("; "))?;
            if section.len() > shown.len() {
                write!(f, "; … ({} in all)", section.len())?;
            }
        }
        Ok(())
    }
}

/// The fields in which two outcomes differ; `reply` when either server did not reply (both
/// silent is suspect too). When both replies are truncated their sections are not compared: a
/// client throws a truncated reply away and asks again over TCP, and which records fit is up
/// to each server's packing.
pub fn differing(a: &Outcome, b: &Outcome) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    let (Ok(a), Ok(b)) = (a, b) else {
        out.insert("reply");
        return out;
    };
    if a.rcode != b.rcode {
        out.insert("rcode");
    }
    for flag in ["aa", "tc", "rd", "ra", "ad", "cd"] {
        if a.flags.contains(flag) != b.flags.contains(flag) {
            out.insert(flag);
        }
    }
    match (a.edns, b.edns) {
        (Some((va, da)), Some((vb, db))) => {
            if va != vb {
                out.insert("opt");
            }
            if da != db {
                out.insert("do");
            }
        }
        (None, None) => {}
        _ => {
            out.insert("opt");
        }
    }
    if a.question != b.question {
        out.insert("question");
    }
    if !(a.flags.contains("tc") && b.flags.contains("tc")) {
        if a.answer != b.answer {
            out.insert("answer");
        }
        if a.authority != b.authority {
            out.insert("authority");
        }
        if a.additional != b.additional {
            out.insert("additional");
        }
    }
    out
}

fn encode(q: &Question, id: u16) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = q.rd;
    // Labels as raw bytes: `_*` and `--1` are sent as they are, not rejected as unsafe.
    let labels = q
        .name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .map(str::as_bytes);
    let name = Name::from_labels(labels).expect("question name");
    let mut query = Query::query(name, q.qtype);
    query.set_query_class(q.class);
    msg.add_query(query);
    let edns = |payload: u16, dnssec: bool, version: u8| {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        e.set_dnssec_ok(dnssec);
        e.set_version(version);
        e
    };
    match q.edns {
        EdnsMode::None => {}
        EdnsMode::Edns0 => {
            msg.set_edns(edns(1232, false, 0));
        }
        EdnsMode::Do => {
            msg.set_edns(edns(1232, true, 0));
        }
        EdnsMode::Small => {
            msg.set_edns(edns(512, true, 0));
        }
        EdnsMode::Version1 => {
            msg.set_edns(edns(1232, false, 1));
        }
    }
    msg.to_vec().expect("encode question")
}

fn decode(raw: &[u8], id: u16) -> Outcome {
    let msg = Message::from_vec(raw).map_err(|e| format!("undecodable reply: {e}"))?;
    if msg.metadata.id != id {
        return Err(format!("reply with id {} to query {id}", msg.metadata.id));
    }
    Ok(Reply::from_message(&msg))
}

/// Asks `server` over the question's transport. Zone transfers over TCP may be answered with
/// several messages: only the first is compared.
pub async fn ask(server: SocketAddr, q: &Question, id: u16) -> Outcome {
    ask_from(server, q, id, std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// [`ask`] from the loopback address `src` (autopath tells pods apart by it).
pub async fn ask_from(server: SocketAddr, q: &Question, id: u16, src: std::net::IpAddr) -> Outcome {
    let wire = encode(q, id);
    match q.proto {
        Proto::Udp => {
            let socket = UdpSocket::bind(SocketAddr::new(src, 0))
                .await
                .map_err(|e| e.to_string())?;
            socket.connect(server).await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 65_535];
            for _ in 0..2 {
                socket.send(&wire).await.map_err(|e| e.to_string())?;
                if let Ok(n) = tokio::time::timeout(TIMEOUT, socket.recv(&mut buf)).await {
                    let n = n.map_err(|e| e.to_string())?;
                    return decode(&buf[..n], id);
                }
            }
            Err("no reply".into())
        }
        Proto::Tcp => {
            let exchange = async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(src, 0))?;
                let mut stream = socket.connect(server).await?;
                let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&wire);
                stream.write_all(&framed).await?;
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await?;
                let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                stream.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            };
            match tokio::time::timeout(TIMEOUT, exchange).await {
                Ok(Ok(buf)) => decode(&buf, id),
                Ok(Err(e)) => Err(format!("no reply ({e})")),
                Err(_) => Err("no reply".into()),
            }
        }
    }
}

/// Whether `outcome` is an answer of `qtype` records containing `rdata` (lower-case text).
pub fn answers_with(outcome: &Outcome, qtype: RecordType, rdata: &str) -> bool {
    outcome.as_ref().is_ok_and(|r| {
        r.rcode == "NOERROR"
            && r.answer
                .iter()
                .any(|k| k.contains(&format!(" {qtype} ")) && k.ends_with(&format!(" {rdata}")))
    })
}
