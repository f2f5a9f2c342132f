use hickory_proto::rr::rdata::{A, SOA};

use super::*;

fn a(name: &str, ttl: u32) -> Record {
    Record::from_rdata(
        Name::from_ascii(name).expect("name"),
        ttl,
        RData::A(A([192, 0, 2, 1].into())),
    )
}

fn soa(ttl: u32, minimum: u32) -> Record {
    let n = Name::from_ascii("example.org.").expect("name");
    Record::from_rdata(
        n.clone(),
        ttl,
        RData::SOA(SOA::new(n.clone(), n, 1, 1, 1, 1, minimum)),
    )
}

fn reply(rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Reply {
    Reply {
        rcode,
        answers,
        authorities,
        additionals: vec![],
    }
}

#[test]
fn cache_ttls_table() {
    let cases = [
        (
            reply(
                ResponseCode::NoError,
                vec![a("x.", 60), a("x.", 30)],
                vec![],
            ),
            30,
        ),
        (
            reply(ResponseCode::NoError, vec![a("x.", 86_400)], vec![]),
            MAX_TTL,
        ),
        (
            reply(ResponseCode::NXDomain, vec![], vec![soa(300, 60)]),
            60,
        ),
        (reply(ResponseCode::NoError, vec![], vec![soa(20, 60)]), 20),
        (
            reply(ResponseCode::NXDomain, vec![], vec![soa(86_400, 86_400)]),
            MAX_NEGATIVE_TTL,
        ),
        (reply(ResponseCode::NXDomain, vec![], vec![]), 0),
        (reply(ResponseCode::ServFail, vec![], vec![]), 0),
    ];
    for (r, want) in cases {
        let settings = CacheSettings::flags(10);
        assert_eq!(settings.ttl("x.", &r).1, want, "{r:?}");
    }
}

#[test]
fn the_cache_is_bounded_and_ages_ttls() {
    let cache = Cache::new(SHARDS * 2);
    for i in 0..200 {
        let key = Key {
            name: Name::from_ascii(format!("n{i}.example.")).expect("name"),
            qtype: RecordType::A,
            class: DNSClass::IN,
        };
        cache.put(
            key,
            reply(ResponseCode::NoError, vec![a("x.", 60)], vec![]),
            60,
        );
    }
    let held: usize = cache
        .shards
        .iter()
        .map(|s| s.lock().expect("lock").len())
        .sum();
    assert!(held <= SHARDS * 2, "held {held}");
    let key = Key {
        name: Name::from_ascii("n199.example.").expect("name"),
        qtype: RecordType::A,
        class: DNSClass::IN,
    };
    let hit = cache.get(&key).expect("the last one is kept");
    assert!(hit.answers[0].ttl <= 60);
}

#[test]
fn own_addresses_are_never_upstreams() {
    let own: Vec<SocketAddr> = vec![
        "127.0.0.1:5353".parse().expect("addr"),
        "0.0.0.0:53".parse().expect("addr"),
    ];
    let f = Forwarder::new(
        vec![
            "127.0.0.1:5353".parse().expect("addr"),
            "127.0.0.1:53".parse().expect("addr"),
            "192.0.2.53:53".parse().expect("addr"),
        ],
        &own,
        10,
        Duration::from_secs(1),
    );
    assert_eq!(
        f.upstreams(),
        &["192.0.2.53:53".parse::<SocketAddr>().expect("addr")]
    );
}

#[test]
fn resolv_conf_parsing() {
    let conf = "# comment\nsearch svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nnameserver  192.0.2.1 \noptions ndots:5\n";
    let want: Vec<SocketAddr> = vec![
        "10.96.0.10:53".parse().expect("addr"),
        "[fe80::1]:53".parse().expect("addr"),
        "192.0.2.1:53".parse().expect("addr"),
    ];
    assert_eq!(resolv_conf_nameservers(conf), want);
}
