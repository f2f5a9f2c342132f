use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn serves_health_readiness_and_metrics() {
    let registry = Registry::new();
    let counter = IntCounter::new("svcplane_test_total", "A test counter.").expect("counter");
    registry
        .register(Box::new(counter.clone()))
        .expect("register");
    counter.inc_by(7);

    let server = AdminServer::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let health = Health::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(registry, health.clone(), async {
        let _ = stopped.await;
    }));

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 503, "not ready before sync");
    assert_eq!(get(addr, "/ready").await.0, 503, "CoreDNS's spelling too");
    health.set_ready(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    assert_eq!(get(addr, "/ready").await.0, 200);
    health.set_live(false);
    assert_eq!(
        get(addr, "/healthz").await.0,
        503,
        "lameduck reports unhealthy"
    );
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("svcplane_test_total 7"), "{body}");
    assert_eq!(get(addr, "/nope").await.0, 404);

    stop.send(()).expect("stop");
    task.await.expect("server task ends on shutdown");
}

#[tokio::test]
async fn a_taken_port_fails_at_bind() {
    let first = AdminServer::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = first.local_addr().expect("addr");
    let err = AdminServer::bind(addr).await.expect_err("port is taken");
    assert!(matches!(err, Error::AdminBind { .. }), "{err}");
}
