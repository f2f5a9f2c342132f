//! Raw bytes through svcplane-dns's whole request path (decode, answer, encode). Fails on a
//! panic, or on a response that is not a well-formed DNS message for the same id.
#![no_main]

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use svcplane_dns::server::Handler;
use svcplane_dns::zone::ZoneService;
use svcplane_dns::{Config, Index, PodMode};
use svcplane_model::{ClusterIps, ObjectKey, Service, ServiceType};

fn handler() -> &'static Handler {
    static HANDLER: OnceLock<Handler> = OnceLock::new();
    HANDLER.get_or_init(|| {
        let mut index = Index::new();
        index.apply_namespace("shop", true);
        for (name, ips, type_, external) in [
            ("web", ClusterIps::Ips(vec!["10.96.0.20".parse().unwrap()]), ServiceType::ClusterIp, None),
            ("db", ClusterIps::Headless, ServiceType::ClusterIp, None),
            ("ext", ClusterIps::NotSet, ServiceType::ExternalName, Some("web.shop.svc.cluster.local".into())),
        ] {
            let svc = Service {
                cluster_ips: ips,
                external_name: external,
                ..Service::new(ObjectKey::new("shop", name), type_)
            };
            index.apply_service(svc.key.clone(), Some(Arc::new(ZoneService::from(&svc))));
        }
        index.set_synced();
        let config = Config {
            zone: "cluster.local".into(),
            ttl: 5,
            pods: PodMode::Insecure,
            nameserver: ObjectKey::new("kube-system", "kube-dns"),
        };
        let metrics = svcplane_dns::metrics::Metrics::register(&prometheus::Registry::new()).unwrap();
        Handler::new(Arc::new(ArcSwap::from_pointee(index)), Arc::new(config), None, metrics)
    })
}

fuzz_target!(|data: &[u8]| {
    let src = "127.0.0.1:5353".parse().unwrap();
    if let Some(response) = futures::executor::block_on(handler().respond_to_bytes(data, src)) {
        let msg = Message::from_vec(&response).expect("responses decode");
        assert_eq!(&response[..2], &data[..2], "responses answer the request's id");
        drop(msg);
    }
});
