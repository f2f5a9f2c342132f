use std::sync::Arc;

use prometheus::Registry;
use svcplane_model::ServiceType;

use super::*;
use crate::conntrack::FakeConntrack;
use crate::nft::FakeNft;
use crate::plan::tests::{endpoints, service};

fn state(nft: &FakeNft) -> State {
    let settings = Settings {
        node_name: "node-a".into(),
        nodeport_addresses: plan::NodePortAddresses::Primary,
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        masquerade_all: false,
        masquerade_bit: 14,
        detect_local: Default::default(),
    };
    let metrics = Metrics::register(&Registry::new()).expect("metrics");
    State::new(
        settings,
        Box::new(nft.clone()),
        Box::new(FakeConntrack::default()),
        metrics,
    )
}

#[test]
fn a_sync_replaces_both_families_in_one_transaction() {
    let nft = FakeNft::new();
    let mut s = state(&nft);
    let web = service(
        "web",
        &["10.96.0.10", "fd00:10:96::10"],
        ServiceType::ClusterIp,
    );
    s.services.apply(web.key.clone(), Some(web.clone()));
    for slice in endpoints("web", &[("10.244.1.5", "node-b", true)]).slices {
        s.slices.apply(slice.key.clone(), Some(slice));
    }
    assert!(s.pending() > 0);
    s.sync().expect("sync");
    assert_eq!(s.pending(), 0);
    let applied = nft.applied();
    assert_eq!(applied.len(), 1);
    let text = &applied[0];
    assert!(text.contains("add table ip svcplane {"));
    assert!(text.contains("add table ip6 svcplane {"));
    assert!(text.contains("10.96.0.10 . tcp . 80 . 0 : 10.244.1.5 . 8080"));
    // No IPv6 endpoints: the IPv6 cluster IP is rejected there.
    assert!(text.contains("fd00:10:96::10 . tcp . 80 comment \"ns/web:http\" : goto reject-chain"));
}

#[test]
fn a_failed_sync_is_counted_and_the_next_one_carries_everything() {
    let nft = FakeNft::new();
    let mut s = state(&nft);
    let web = service("web", &["10.96.0.10"], ServiceType::ClusterIp);
    s.services.apply(web.key.clone(), Some(web.clone()));
    nft.fail_next(1);
    assert!(s.sync().is_err());
    assert!(nft.applied().is_empty());
    // Nothing new arrives, yet the retry renders the Service again.
    s.sync().expect("retry");
    assert!(nft.applied()[0].contains("add element ip svcplane cluster-ips { 10.96.0.10 }"));
}

#[test]
fn the_node_supplies_zone_and_nodeport_addresses() {
    let nft = FakeNft::new();
    let mut s = state(&nft);
    let node = Node {
        name: "node-a".into(),
        zone: Some("zone-a".into()),
        addresses: vec!["192.0.2.10".parse().expect("ip")],
        allocatable_cpu_millis: None,
        ready: true,
        control_plane: false,
        pod_cidrs: Vec::new(),
    };
    s.nodes
        .apply(ObjectKey::new("", "node-a"), Some(Arc::new(node)));
    let (text, _) = s.transaction();
    assert!(text.contains("add element ip svcplane nodeport-ips { 192.0.2.10 }"));
    assert_eq!(s.config().node.zone.as_deref(), Some("zone-a"));
}

#[test]
fn a_sync_that_changes_no_rule_says_it_wrote_nothing() {
    let nft = FakeNft::new();
    let mut s = state(&nft);
    let web = service("web", &["10.96.0.10"], ServiceType::ClusterIp);
    s.services.apply(web.key.clone(), Some(web.clone()));
    for slice in endpoints("web", &[("10.244.1.5", "node-b", true)]).slices {
        s.slices.apply(slice.key.clone(), Some(slice));
    }
    s.sync().expect("first sync");
    assert!(s.last_sync_wrote(), "the first sync writes the tables");
    // A not-ready endpoint joins: the rules stay as they are.
    for slice in endpoints(
        "web",
        &[
            ("10.244.1.5", "node-b", true),
            ("10.244.2.5", "node-c", false),
        ],
    )
    .slices
    {
        s.slices.apply(slice.key.clone(), Some(slice));
    }
    assert!(s.pending() > 0);
    assert_eq!(s.sync().expect("second sync"), "partial");
    assert!(!s.last_sync_wrote(), "{:?}", nft.applied());
    assert_eq!(nft.applied().len(), 1, "nothing more went to nft");
    // The not-ready one turns ready: that is written.
    for slice in endpoints(
        "web",
        &[
            ("10.244.1.5", "node-b", true),
            ("10.244.2.5", "node-c", true),
        ],
    )
    .slices
    {
        s.slices.apply(slice.key.clone(), Some(slice));
    }
    s.sync().expect("third sync");
    assert!(s.last_sync_wrote());
    assert_eq!(nft.applied().len(), 2);
}
