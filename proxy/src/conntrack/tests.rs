use std::collections::HashMap;

use svcplane_model::{AddressType, ServiceType};

use super::*;
use crate::plan::tests::{config, endpoints, run, service};

fn view(eps: &[(&str, &str, bool)]) -> UdpView {
    let web = service("web", &["10.96.0.10"], ServiceType::NodePort);
    let mut map = HashMap::new();
    if !eps.is_empty() {
        map.insert(web.key.clone(), endpoints("web", eps));
    }
    UdpView::of(&run(AddressType::V4, &[web], &map, &config()))
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("ip"))
}

#[test]
fn stale_udp_flows_table() {
    let two = view(&[("10.244.1.5", "n", true), ("10.244.2.5", "n", true)]);
    let one = view(&[("10.244.1.5", "n", true)]);
    let none = view(&[]);
    // Nothing changed: nothing to delete.
    assert!(two.stale(&two).is_empty());
    // An endpoint went: its flows to the UDP port (53) of the ClusterIP.
    assert_eq!(
        two.stale(&one).into_iter().collect::<Vec<_>>(),
        [Filter {
            dst: ip("10.96.0.10"),
            port: 53,
            reply_src: ip("10.244.2.5")
        }]
    );
    // The last one went too.
    assert_eq!(
        one.stale(&none).into_iter().collect::<Vec<_>>(),
        [Filter {
            dst: ip("10.96.0.10"),
            port: 53,
            reply_src: ip("10.244.1.5")
        }]
    );
    // Endpoints again after none: flows left from the refused time go.
    assert_eq!(
        none.stale(&one).into_iter().collect::<Vec<_>>(),
        [Filter {
            dst: ip("10.96.0.10"),
            port: 53,
            reply_src: None
        }]
    );
    // TCP ports (80, NodePort 30080) never appear.
    assert!(two.stale(&none).iter().all(|f| f.port == 53));
}
