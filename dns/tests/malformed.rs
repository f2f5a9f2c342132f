//! Tens of thousands of mangled queries through the whole request path: no panic, no stall, and
//! every response the server sends is a well-formed DNS message answering the same id. (The
//! cargo-fuzz target in `dns/fuzz` explores the same path with coverage guidance.)

use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use svcplane_dns::server::Handler;
use svcplane_dns::zone::ZoneService;
use svcplane_dns::{Config, Index, PodMode};
use svcplane_model::{ClusterIps, ObjectKey, Service, ServiceType};
use svcplane_testenv::rng::Rng;

fn handler() -> Handler {
    let mut index = Index::new();
    index.apply_namespace("shop", true);
    let web = Service {
        cluster_ips: ClusterIps::Ips(vec!["10.96.0.20".parse().expect("ip")]),
        ..Service::new(ObjectKey::new("shop", "web"), ServiceType::ClusterIp)
    };
    index.apply_service(web.key.clone(), Some(Arc::new(ZoneService::from(&web))));
    index.set_synced();
    let config = Config {
        zone: "cluster.local".into(),
        ttl: 5,
        pods: PodMode::Insecure,
        nameserver: ObjectKey::new("kube-system", "kube-dns"),
    };
    Handler::new(
        Arc::new(ArcSwap::from_pointee(index)),
        Arc::new(config),
        None,
        svcplane_dns::metrics::Metrics::register(&prometheus::Registry::new()).expect("metrics"),
    )
}

fn seed(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut msg = Message::new(4242, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if edns {
        msg.set_edns(Edns::new());
    }
    msg.to_vec().expect("encode")
}

#[tokio::test]
async fn mangled_queries_get_well_formed_answers_or_none() {
    let handler = handler();
    let src = "127.0.0.1:5353".parse().expect("addr");
    let seeds = [
        seed("web.shop.svc.cluster.local.", RecordType::A, false),
        seed(
            "_http._tcp.web.shop.svc.cluster.local.",
            RecordType::SRV,
            true,
        ),
        seed("20.0.96.10.in-addr.arpa.", RecordType::PTR, true),
        seed(
            "10-244-1-5.shop.pod.cluster.local.",
            RecordType::AAAA,
            false,
        ),
        seed("example.org.", RecordType::TXT, true),
    ];
    let mut rng = Rng::new(0x5eed_cafe_f00d_d00d);
    let (mut answered, mut dropped) = (0, 0);
    for i in 0..20_000 {
        let mut packet = seeds[i % seeds.len()].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 if !packet.is_empty() => {
                    let at = rng.below(packet.len());
                    packet[at] ^= 1 << rng.below(8);
                }
                1 if !packet.is_empty() => {
                    let at = rng.below(packet.len());
                    packet[at] = rng.next_u64() as u8;
                }
                2 => packet.truncate(rng.below(packet.len() + 1)),
                _ => packet.extend((0..rng.below(16)).map(|_| rng.next_u64() as u8)),
            }
        }
        match handler.respond_to_bytes(&packet, src).await {
            Some(response) => {
                answered += 1;
                let msg = Message::from_vec(&response)
                    .unwrap_or_else(|e| panic!("response to {packet:?} does not decode: {e}"));
                assert_eq!(msg.metadata.message_type, MessageType::Response);
                assert_eq!(
                    &response[..2],
                    &packet[..2],
                    "the response answers the request's id"
                );
                assert!(
                    response.len() <= 4096,
                    "within any buffer a client may ask for"
                );
            }
            None => dropped += 1,
        }
    }
    assert!(
        answered > 1000 && dropped > 100,
        "both paths exercised: {answered} answered, {dropped} dropped"
    );
    // Still answering normally afterwards.
    let ok = handler
        .respond_to_bytes(&seeds[0], src)
        .await
        .expect("answer");
    let msg = Message::from_vec(&ok).expect("decode");
    assert_eq!(msg.answers.len(), 1);
}

/// A query cargo-fuzz found (2026-11-27): its question name holds a label of binary bytes, and
/// the answer must still be a well-formed message.
#[tokio::test]
async fn fuzz_found_binary_label_query() {
    let packet: Vec<u8> = vec![
        1, 0, 0, 101, 0, 1, 0, 0, 0, 0, 0, 0, 54, 0, 1, 5, 1, 24, 24, 24, 61, 24, 24, 24, 136, 24,
        24, 24, 24, 41, 24, 24, 24, 0, 0, 6, 0, 24, 0, 24, 24, 24, 24, 24, 24, 8, 24, 10, 1, 64, 0,
        156, 10, 232, 92, 51, 255, 255, 255, 255, 54, 54, 46, 0, 1, 33, 95, 192, 0, 0, 0, 0, 56,
        10,
    ];
    let src = "127.0.0.1:5353".parse().expect("addr");
    if let Some(response) = handler().respond_to_bytes(&packet, src).await {
        let msg = Message::from_vec(&response);
        assert!(msg.is_ok(), "{msg:?}: response {response:?}");
        assert_eq!(&response[..2], &packet[..2]);
    }
}
