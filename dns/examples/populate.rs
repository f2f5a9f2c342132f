//! Fills a cluster with Services and EndpointSlices for DNS benchmarks: `--services` ClusterIP
//! Services named `svc-<i>` spread over `--namespaces` namespaces `ns-<j>`, each with one
//! EndpointSlice of `--endpoints` ready endpoints, written as a controller would.
//!
//!   cargo run --release -p svcplane-dns --example populate -- --kubeconfig KC

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = svcplane_runtime::ClientArgs {
        kubeconfig: Some(args.kubeconfig.clone()),
        kube_api_qps: 100_000.0,
        kube_api_burst: 100_000,
        kube_api_timeout: std::time::Duration::from_secs(30),
    }
    .client()
    .await?;
    let start = Instant::now();
    let pp = PostParams::default();
    for j in 0..args.namespaces {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(format!("ns-{j}")),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&pp, &ns)
            .await?;
    }
    let results: Vec<anyhow::Result<()>> = stream::iter(0..args.services)
        .map(|i| {
            let client = client.clone();
            let pp = pp.clone();
            let ns = format!("ns-{}", i % args.namespaces);
            let name = format!("svc-{i}");
            let per = args.endpoints;
            async move {
                let svc = Service {
                    metadata: meta(&ns, &name),
                    spec: Some(ServiceSpec {
                        ports: Some(vec![ServicePort {
                            name: Some("http".into()),
                            port: 80,
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    status: None,
                };
                Api::<Service>::namespaced(client.clone(), &ns)
                    .create(&pp, &svc)
                    .await?;
                let endpoints = (0..per)
                    .map(|e| {
                        let n = i * per + e;
                        Endpoint {
                            addresses: vec![format!(
                                "10.{}.{}.{}",
                                128 + n / 65_536,
                                (n / 256) % 256,
                                n % 256
                            )],
                            conditions: Some(EndpointConditions {
                                ready: Some(true),
                                serving: Some(true),
                                terminating: Some(false),
                            }),
                            ..Default::default()
                        }
                    })
                    .collect();
                let mut slice_meta = meta(&ns, &format!("{name}-1"));
                slice_meta.labels = Some(BTreeMap::from([
                    ("kubernetes.io/service-name".into(), name.clone()),
                    (
                        "endpointslice.kubernetes.io/managed-by".into(),
                        "svcplane-bench".into(),
                    ),
                ]));
                let slice = EndpointSlice {
                    metadata: slice_meta,
                    address_type: "IPv4".into(),
                    endpoints: Some(endpoints),
                    ports: Some(vec![EndpointPort {
                        name: Some("http".into()),
                        port: Some(8080),
                        protocol: Some("TCP".into()),
                        app_protocol: None,
                    }]),
                };
                Api::<EndpointSlice>::namespaced(client, &ns)
                    .create(&pp, &slice)
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        anyhow::bail!("{failed} of {} Services failed; first: {e}", args.services);
    }
    println!(
        "populated services={} endpoints={} seconds={:.1}",
        args.services,
        args.services * args.endpoints,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
