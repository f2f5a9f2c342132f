use std::collections::HashMap;

use svcplane_model::{AddressType, ServiceType};

use super::*;
use crate::plan::tests::{config, endpoints, run, service};

fn render(plan: &Plan) -> String {
    let mut out = String::new();
    full(plan, &mut out);
    out
}

#[test]
fn one_service_golden() {
    let web = service("web", &["10.96.0.10"], ServiceType::NodePort);
    let eps = HashMap::from([(
        web.key.clone(),
        endpoints(
            "web",
            &[
                ("10.244.1.5", "node-b", true),
                ("10.244.2.5", "node-a", true),
            ],
        ),
    )]);
    let text = render(&run(AddressType::V4, &[web], &eps, &config()));
    if std::env::var_os("SVCPLANE_BLESS").is_some() {
        std::fs::write(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/render/golden-one-service.nft"
            ),
            &text,
        )
        .expect("write golden");
    }
    let golden = include_str!("golden-one-service.nft");
    assert_eq!(
        text, golden,
        "rendered:\n{text}\n(SVCPLANE_BLESS=1 rewrites the file)"
    );
}

#[test]
fn endpoint_counts_share_one_rule_each_and_families_use_their_words() {
    let a = service("a", &["10.96.0.1"], ServiceType::ClusterIp);
    let b = service("b", &["10.96.0.2"], ServiceType::ClusterIp);
    let c = service("c", &["10.96.0.3"], ServiceType::ClusterIp);
    let eps = HashMap::from([
        (a.key.clone(), endpoints("a", &[("10.244.0.1", "n", true)])),
        (b.key.clone(), endpoints("b", &[("10.244.0.2", "n", true)])),
        (
            c.key.clone(),
            endpoints("c", &[("10.244.0.3", "n", true), ("10.244.0.4", "n", true)]),
        ),
    ]);
    let text = render(&run(AddressType::V4, &[a, b, c], &eps, &config()));
    let dispatch: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("numgen random mod") && l.starts_with("add rule"))
        .collect();
    assert_eq!(dispatch.len(), 2, "{dispatch:#?}");
    assert!(text.contains("add element ip svcplane cluster-n1 { 10.96.0.1 . tcp . 80, 10.96.0.1 . udp . 53, 10.96.0.2 . tcp . 80, 10.96.0.2 . udp . 53 }"));

    let v6 = service("v6", &["fd00:10:96::1"], ServiceType::ClusterIp);
    let eps = HashMap::from([(
        v6.key.clone(),
        endpoints("v6", &[("fd00:10:244::1", "n", true)]),
    )]);
    let text = render(&run(AddressType::V6, &[v6], &eps, &config()));
    assert!(text.contains("add table ip6 svcplane"));
    assert!(text.contains(
        "dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 1 map @cluster-n1-eps"
    ));
    assert!(text.contains("fd00:10:96::1 . tcp . 80 . 0 : fd00:10:244::1 . 8080"));
    assert!(
        !text.contains(" ip daddr"),
        "no IPv4 words in the IPv6 table"
    );
}

#[test]
fn masquerade_all_marks_every_cluster_ip_connection() {
    let mut c = config();
    c.masquerade_all = true;
    let text = render(&run(AddressType::V4, &[], &HashMap::new(), &c));
    assert!(text.contains(
        "add rule ip svcplane services ip daddr @cluster-ips meta mark set meta mark | 0x4000"
    ));
    assert!(!text.contains("saddr != {"));
}

#[test]
fn local_traffic_is_told_by_cidr_or_interface_as_the_mode_says() {
    use crate::plan::DetectLocal;
    let svc = service("web", &["10.96.0.10"], ServiceType::ClusterIp);
    let mut c = config();
    c.detect_local = DetectLocal::InterfacePrefix("veth".into());
    let text = render(&run(
        AddressType::V4,
        std::slice::from_ref(&svc),
        &HashMap::new(),
        &c,
    ));
    assert!(text.contains(
        "add rule ip svcplane services ip daddr @cluster-ips iifname != \"veth*\" meta mark set meta mark | 0x4000"
    ), "{text}");
    c.detect_local = DetectLocal::Bridge("cbr0".into());
    let text = render(&run(
        AddressType::V4,
        std::slice::from_ref(&svc),
        &HashMap::new(),
        &c,
    ));
    assert!(text.contains("iifname != \"cbr0\" meta mark set"), "{text}");
    // The node's own pod CIDR; none for a family means nothing counts as local there (no
    // off-cluster masquerade rule), as upstream.
    c.detect_local = DetectLocal::NodeCidr;
    c.node_pod_cidrs = vec!["10.244.7.0/24".parse().expect("cidr")];
    let text = render(&run(
        AddressType::V4,
        std::slice::from_ref(&svc),
        &HashMap::new(),
        &c,
    ));
    assert!(
        text.contains("ip saddr != { 10.244.7.0/24 } meta mark set"),
        "{text}"
    );
    let text = render(&run(AddressType::V6, &[svc], &HashMap::new(), &c));
    assert!(!text.contains("saddr != {"), "{text}");
}
