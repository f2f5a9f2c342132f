//! Objects deleted while svcplane-endpoints could not watch: the API server is stopped, a pod
//! and a Service are deleted straight from etcd, and the API server comes back. The watches
//! re-list, and the controller must notice both deletions (no event ever says so).

mod common;

use common::*;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use svcplane_testenv::TestEnv;
use svcplane_testenv::kubelet::PodBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deletes one key through etcd's HTTP gateway (`/v3/kv/deleterange`); returns how many went.
async fn etcd_delete(etcd_url: &str, key: &str) -> u64 {
    use base64::Engine as _;
    let addr = etcd_url.trim_start_matches("http://");
    let body = format!(
        "{{\"key\":\"{}\"}}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("etcd");
    let req = format!(
        "POST /v3/kv/deleterange HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let json = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let json = json.find('{').map(|i| &json[i..]).unwrap_or(json);
    let end = json.rfind('}').map(|i| i + 1).unwrap_or(json.len());
    let v: serde_json::Value = serde_json::from_str(&json[..end]).unwrap_or_default();
    v["deleted"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .or_else(|| v["deleted"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_during_an_outage_are_found_by_the_relist() {
    let env = TestEnv::start().await.expect("control plane");
    let ns = "shop";
    let client = cluster(&env, ns, &[("node-a", Some("zone-a"))]).await;
    let controller = start(&env, &[]);
    wait_ready(&controller).await;
    let port = || vec![service_port("http", 80, IntOrString::Int(8080))];
    create_service(
        &client,
        &selector_service(ns, "web", &[("app", "web")], port()),
    )
    .await;
    create_service(
        &client,
        &selector_service(ns, "api", &[("app", "api")], port()),
    )
    .await;
    for (name, app, ip) in [
        ("web-0", "web", "10.244.5.1"),
        ("web-1", "web", "10.244.5.2"),
        ("api-0", "api", "10.244.5.3"),
    ] {
        running_pod(
            &client,
            PodBuilder::new(ns, name).label("app", app).node("node-a"),
            ip,
            true,
        )
        .await;
    }
    eventually(
        Duration::from_secs(20),
        "both Services' Endpoints",
        || async {
            let web = get_endpoints(&client, ns, "web")
                .await
                .map(|e| endpoints_lines(&e));
            let api = get_endpoints(&client, ns, "api")
                .await
                .map(|e| endpoints_lines(&e));
            if web.as_ref().map(Vec::len) == Some(2) && api.as_ref().map(Vec::len) == Some(1) {
                Ok(())
            } else {
                Err(format!("{web:?} {api:?}"))
            }
        },
    )
    .await;

    env.stop_apiserver();
    assert_eq!(
        etcd_delete(env.etcd_url(), "/registry/pods/shop/web-1").await,
        1
    );
    assert_eq!(
        etcd_delete(env.etcd_url(), "/registry/services/specs/shop/api").await,
        1
    );
    env.restart_apiserver().await.expect("API server back");
    let client = env.client().await.expect("client");

    eventually(
        Duration::from_secs(60),
        "the deleted pod and Service noticed",
        || async {
            let web = get_endpoints(&client, ns, "web")
                .await
                .map(|e| endpoints_lines(&e));
            let web_slices = seen(&slices(&client, ns, "web", SLICE_MANAGER).await);
            let api = get_endpoints(&client, ns, "api").await;
            let api_slices = slices(&client, ns, "api", SLICE_MANAGER).await;
            let web_ok = web.as_deref() == Some(&["10.244.5.1 ready http:8080".to_owned()][..])
                && web_slices.iter().map(|s| s.ip.as_str()).collect::<Vec<_>>() == ["10.244.5.1"];
            if web_ok && api.is_none() && api_slices.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "web {web:?} {web_slices:?}; api Endpoints {}, api slices {}",
                    api.is_some(),
                    api_slices.len()
                ))
            }
        },
    )
    .await;
    drop(controller);
}
