//! The upstream both servers forward to: a few fixed names outside the cluster, on loopback, as a
//! recursive resolver would answer them (RA set, AA clear, the client's DO bit echoed). Every TTL
//! is 0 so svcplane-dns's forwarding cache keeps nothing and both servers relay fresh answers.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// Addresses of `big.example.org`: more than a 512-byte answer holds.
const BIG: u8 = 60;

/// A running stub; dropping it stops it.
#[derive(Debug)]
pub struct Stub {
    pub addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Serves UDP and TCP on one free loopback port.
pub async fn start() -> Stub {
    let (tcp, udp) = loop {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
        let addr = tcp.local_addr().expect("addr");
        if let Ok(udp) = UdpSocket::bind(addr).await {
            break (tcp, udp);
        }
    };
    let addr = tcp.local_addr().expect("addr");
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            if let Some(reply) = respond(&buf[..n], false) {
                let _ = udp.send_to(&reply, from).await;
            }
        }
    });
    let tcp_task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                    if stream.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let Some(reply) = respond(&buf, true) else {
                        return;
                    };
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&reply);
                    if stream.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Stub {
        addr,
        tasks: vec![udp_task, tcp_task],
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("stub name")
}

fn record(owner: &Name, data: RData) -> Record {
    Record::from_rdata(owner.clone(), 0, data)
}

fn soa(zone: &str) -> Record {
    record(
        &name(zone),
        RData::SOA(SOA::new(
            name("ns.stub.invalid."),
            name("hostmaster.stub.invalid."),
            1,
            3600,
            600,
            86_400,
            0,
        )),
    )
}

/// Records of `qtype` at `lower` (lower-case, absolute), owned by `owner`.
fn data(lower: &str, owner: &Name, qtype: RecordType) -> Option<Vec<Record>> {
    let one = |d: RData| Some(vec![record(owner, d)]);
    let none = Some(vec![]);
    match lower {
        "example.org." => match qtype {
            RecordType::A => one(RData::A(A(Ipv4Addr::new(192, 0, 2, 7)))),
            RecordType::AAAA => one(RData::AAAA(AAAA(Ipv6Addr::new(
                0x2001, 0xdb8, 0, 0, 0, 0, 0, 7,
            )))),
            RecordType::TXT => one(RData::TXT(TXT::new(vec!["stub".into()]))),
            RecordType::MX => one(RData::MX(MX::new(10, name("mail.example.org.")))),
            RecordType::NS => one(RData::NS(NS(name("ns.stub.invalid.")))),
            RecordType::SOA => Some(vec![soa("example.org.")]),
            _ => none,
        },
        "mail.example.org." => match qtype {
            RecordType::A => one(RData::A(A(Ipv4Addr::new(192, 0, 2, 25)))),
            _ => none,
        },
        "big.example.org." => match qtype {
            RecordType::A => Some(
                (0..BIG)
                    .map(|i| record(owner, RData::A(A(Ipv4Addr::new(192, 0, 2, 100 + i)))))
                    .collect(),
            ),
            _ => none,
        },
        "7.2.0.192.in-addr.arpa." => match qtype {
            RecordType::PTR => one(RData::PTR(PTR(name("example.org.")))),
            _ => none,
        },
        _ => None,
    }
}

/// The answer to one raw query; `None` drops it (not a query).
fn respond(raw: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(raw).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.clone());
    let limit = match &query.edns {
        Some(edns) => {
            let mut out = Edns::new();
            out.set_max_payload(1232);
            out.set_dnssec_ok(edns.flags().dnssec_ok);
            reply.set_edns(out);
            if edns.version() > 0 {
                reply.metadata.response_code = ResponseCode::BADVERS;
                return reply.to_vec().ok();
            }
            usize::from(edns.max_payload().max(512))
        }
        None => 512,
    };
    let limit = if tcp { 65_535 } else { limit };
    let [q] = query.queries.as_slice() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply.to_vec().ok();
    };
    if q.query_class() != DNSClass::IN
        || matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR)
    {
        reply.metadata.response_code = ResponseCode::Refused;
        return reply.to_vec().ok();
    }
    let owner = q.name().clone();
    let lower = owner.to_ascii().to_ascii_lowercase();
    let qtype = q.query_type();
    if lower == "www.example.org." {
        // A CNAME, followed as a recursive resolver would.
        let target = name("example.org.");
        reply.add_answer(record(&owner, RData::CNAME(CNAME(target.clone()))));
        if qtype != RecordType::CNAME {
            match data("example.org.", &target, qtype) {
                Some(records) if !records.is_empty() => {
                    reply.add_answers(records);
                }
                _ => {
                    reply.add_authority(soa("example.org."));
                }
            }
        }
    } else {
        match data(&lower, &owner, qtype) {
            Some(records) if !records.is_empty() => {
                reply.add_answers(records);
            }
            Some(_) => {
                reply.add_authority(soa("example.org."));
            }
            None => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                reply.add_authority(if lower.ends_with(".example.org.") {
                    soa("example.org.")
                } else {
                    soa(".")
                });
            }
        }
    }
    let wire = reply.to_vec().ok()?;
    if wire.len() <= limit {
        return Some(wire);
    }
    // Too big for the client's buffer: TC and no records, as resolvers do.
    reply.metadata.truncation = true;
    reply.answers.clear();
    reply.authorities.clear();
    reply.additionals.clear();
    reply.to_vec().ok()
}
