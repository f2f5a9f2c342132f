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

fn corefile_cache(text: &str) -> CacheSettings {
    let file = crate::corefile::parse_with_env(&format!(".:53 {{\n{text}\n}}\n"), &|_| None)
        .expect("Corefile");
    CacheSettings(file.servers[0].plugins.cache.clone().expect("cache"))
}

#[test]
fn cache_ttls_are_clamped_as_the_corefile_says() {
    // CoreDNS's defaults: answers 5..3600 s, denials 5..1800 s.
    let defaults = corefile_cache("cache");
    let cases = [
        (
            reply(ResponseCode::NoError, vec![a("x.", 0)], vec![]),
            (true, 5),
        ),
        (
            reply(ResponseCode::NoError, vec![a("x.", 300)], vec![]),
            (true, 300),
        ),
        (
            reply(ResponseCode::NoError, vec![a("x.", 86_400)], vec![]),
            (true, 3600),
        ),
        (
            reply(ResponseCode::NXDomain, vec![], vec![soa(0, 0)]),
            (false, 5),
        ),
        (
            reply(ResponseCode::NXDomain, vec![], vec![soa(7200, 7200)]),
            (false, 1800),
        ),
        (reply(ResponseCode::ServFail, vec![], vec![]), (false, 0)),
    ];
    for (r, want) in cases {
        assert_eq!(defaults.ttl("x.", &r), want, "{r:?}");
    }
    // `cache 30`: both maximums 30 s; `success`/`denial` set each side.
    let short = corefile_cache("cache 30");
    assert_eq!(
        short.ttl(
            "x.",
            &reply(ResponseCode::NoError, vec![a("x.", 300)], vec![])
        ),
        (true, 30)
    );
    let sides = corefile_cache("cache {\n success 100 600 60\n denial 100 20 10\n}");
    assert_eq!(
        sides.ttl(
            "x.",
            &reply(ResponseCode::NoError, vec![a("x.", 1)], vec![])
        ),
        (true, 60)
    );
    assert_eq!(
        sides.ttl(
            "x.",
            &reply(ResponseCode::NXDomain, vec![], vec![soa(300, 300)])
        ),
        (false, 20)
    );
    // `disable`: everywhere, or only below a zone (kubeadm's cluster.local).
    let kubeadm = corefile_cache(
        "cache 30 {\n disable success cluster.local\n disable denial cluster.local\n}",
    );
    let hit = reply(ResponseCode::NoError, vec![a("x.", 300)], vec![]);
    let miss = reply(ResponseCode::NXDomain, vec![], vec![soa(300, 300)]);
    assert_eq!(kubeadm.ttl("web.shop.svc.cluster.local.", &hit), (true, 0));
    assert_eq!(kubeadm.ttl("nx.shop.svc.cluster.local.", &miss), (false, 0));
    assert_eq!(kubeadm.ttl("example.org.", &hit), (true, 30));
    assert_eq!(kubeadm.ttl("example.org.", &miss), (false, 30));
    let off = corefile_cache("cache {\n disable denial\n}");
    assert_eq!(off.ttl("example.org.", &miss), (false, 0));
    assert_eq!(off.ttl("example.org.", &hit), (true, 300));
    // The cache's own zones.
    let zoned = corefile_cache("cache 30 example.org");
    assert!(zoned.covers("www.example.org."));
    assert!(!zoned.covers("example.net."));
}

fn key(name: &str) -> Key {
    Key {
        name: Name::from_ascii(name).expect("name"),
        qtype: RecordType::A,
        class: DNSClass::IN,
    }
}

#[test]
fn stale_entries_are_served_within_the_window_with_ttl_zero() {
    let cache = Cache::new(64);
    cache.put(
        key("s."),
        reply(ResponseCode::NoError, vec![a("s.", 1)], vec![]),
        1,
    );
    // Make it expired by backdating the entry.
    {
        let mut shard = cache.shard(&key("s.")).lock().expect("lock");
        let entry = shard.get_mut(&key("s.")).expect("entry");
        entry.stored -= Duration::from_secs(10);
    }
    assert!(matches!(cache.lookup(&key("s."), None, None), Lookup::Miss));
    cache.put(
        key("s."),
        reply(ResponseCode::NoError, vec![a("s.", 1)], vec![]),
        1,
    );
    {
        let mut shard = cache.shard(&key("s.")).lock().expect("lock");
        shard.get_mut(&key("s.")).expect("entry").stored -= Duration::from_secs(10);
    }
    match cache.lookup(&key("s."), Some(Duration::from_secs(60)), None) {
        Lookup::Stale(r) => assert_eq!(r.answers[0].ttl, 0),
        other => panic!("want stale, got {other:?}"),
    }
    // Past the window: gone.
    {
        let mut shard = cache.shard(&key("s.")).lock().expect("lock");
        shard.get_mut(&key("s.")).expect("entry").stored -= Duration::from_secs(120);
    }
    assert!(matches!(
        cache.lookup(&key("s."), Some(Duration::from_secs(60)), None),
        Lookup::Miss
    ));
}

#[test]
fn prefetch_is_due_after_enough_hits_near_expiry() {
    let cache = Cache::new(64);
    let prefetch = crate::corefile::Prefetch {
        amount: 3,
        duration: Duration::from_secs(60),
        percentage: 50,
    };
    cache.put(
        key("p."),
        reply(ResponseCode::NoError, vec![a("p.", 100)], vec![]),
        100,
    );
    let refresh = |cache: &Cache| match cache.lookup(&key("p."), None, Some(&prefetch)) {
        Lookup::Fresh { refresh, .. } => refresh,
        other => panic!("want a hit, got {other:?}"),
    };
    // Plenty of TTL left: never due, however many hits.
    assert!(!(0..5).any(|_| refresh(&cache)));
    // 60 of 100 s gone (40 % left, under 50 %): due on the third hit of a window.
    {
        let mut shard = cache.shard(&key("p.")).lock().expect("lock");
        let entry = shard.get_mut(&key("p.")).expect("entry");
        entry.stored -= Duration::from_secs(60);
        entry.hits = 0;
    }
    assert!(!refresh(&cache));
    assert!(!refresh(&cache));
    assert!(refresh(&cache));
    // And counting starts again.
    assert!(!refresh(&cache));
}

#[test]
fn upstream_order_follows_the_policy() {
    let upstreams: Vec<SocketAddr> = (1..=3)
        .map(|i| format!("192.0.2.{i}:53").parse().expect("addr"))
        .collect();
    let with = |policy| {
        Forwarder::new(upstreams.clone(), &[], 10, Duration::from_secs(1)).with_policy(policy, None)
    };
    let sequential = with(Policy::Sequential);
    assert!((0..5).all(|_| sequential.order() == [0, 1, 2]));
    let round_robin = with(Policy::RoundRobin);
    let firsts: Vec<usize> = (0..6).map(|_| round_robin.order()[0]).collect();
    assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
    let random = with(Policy::Random);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let mut order = random.order();
        seen.insert(order[0]);
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2], "a permutation");
    }
    assert_eq!(seen.len(), 3, "each upstream comes first sometimes");
}
