//! The demo app's HTTP server, which the local kubelet runs for every pod whose image is not an
//! svcplane component: `GET /` answers "<pod> on <node>", `GET /ready` is the readiness probe
//! (200 or 503), `GET /readiness/fail` and `/readiness/pass` turn it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The demo manifest: namespace `demo`, Deployment and Services `web`, a LoadBalancerIPPool,
/// an ExternalName and the client pod.
pub const MANIFEST: &str = include_str!("../demo.yaml");

/// Serves on every port (IPv4, all addresses) until the process ends.
pub async fn serve(pod: String, node: String, ports: Vec<u16>) -> anyhow::Result<()> {
    let ready = Arc::new(AtomicBool::new(true));
    let hello = Bytes::from(format!("{pod} on {node}\n"));
    let mut servers = JoinSet::new();
    for port in ports {
        let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
        let ready = ready.clone();
        let hello = hello.clone();
        servers.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let ready = ready.clone();
                let hello = hello.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let response = answer(req.uri().path(), &ready, &hello);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }
    while servers.join_next().await.is_some() {}
    Ok(())
}

fn answer(path: &str, ready: &AtomicBool, hello: &Bytes) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/ready" if ready.load(Ordering::Relaxed) => (StatusCode::OK, Bytes::from("ready\n")),
        "/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from("not ready (GET /readiness/pass turns it back)\n"),
        ),
        "/readiness/fail" => {
            ready.store(false, Ordering::Relaxed);
            (StatusCode::OK, Bytes::from("readiness: failing\n"))
        }
        "/readiness/pass" => {
            ready.store(true, Ordering::Relaxed);
            (StatusCode::OK, Bytes::from("readiness: passing\n"))
        }
        _ => (StatusCode::OK, hello.clone()),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}
