//! Helpers shared by the DNS integration tests.
#![allow(dead_code)] // each test file uses its own subset

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;

/// Runs `dig` against `addr` (one try, two seconds unless `args` say otherwise; later options
/// win) and returns what it printed.
pub fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig is installed (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`dig`] off the async runtime's worker threads.
pub async fn dig_async(addr: SocketAddr, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dig(addr, &args)
    })
    .await
    .expect("join")
}

pub fn test_metrics() -> svcplane_dns::metrics::Metrics {
    svcplane_dns::metrics::Metrics::register(&prometheus::Registry::new()).expect("metrics")
}

/// A port free for both UDP and TCP on loopback (bound and released; a clash makes the server
/// fail to start, which the test reports).
pub fn free_dns_port() -> SocketAddr {
    for _ in 0..20 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = tcp.local_addr().expect("addr");
        if UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// GET on the admin server, status code only.
pub async fn admin_get(addr: SocketAddr, path: &str) -> u16 {
    admin_fetch(addr, path).await.0
}

/// Status and body of an admin endpoint.
pub async fn admin_fetch(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("admin");
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
