//! Helpers shared by the DNS integration tests.
#![allow(dead_code)] // each test file uses its own subset

use std::net::SocketAddr;
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
