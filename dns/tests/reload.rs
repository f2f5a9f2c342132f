//! The binary from a Corefile: `--check-corefile`, and `reload` applying valid edits and keeping
//! the running configuration on invalid ones, against a real kube-apiserver.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Tethered, admin_fetch, dig_async, free_dns_port};
use svcplane_testenv::TestEnv;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_svcplane-dns"))
}

const KUBEADM: &str = include_str!("../testdata/kubeadm.Corefile");

#[test]
fn check_corefile_prints_what_would_run_or_the_error() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("check-corefile-kubeadm");
    std::fs::write(&path, KUBEADM).expect("write");
    let out = std::process::Command::new(binary())
        .arg(format!("--check-corefile={}", path.display()))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "server block (line 1): zones . on port 53",
        "kubernetes: zone cluster.local with in-addr.arpa and ip6.arpa, pods insecure, TTL 30, fallthrough for in-addr.arpa. ip6.arpa.",
        "health: /health on 0.0.0.0:8080 (lameduck 5s)",
        "prometheus: /metrics on 0.0.0.0:9153",
        "max_concurrent 1000",
        "cache for .: success 9984 entries 5–30 s (disabled for cluster.local.)",
        "loadbalance",
        "loop",
        "reload: the Corefile is checked every 30s",
    ] {
        assert!(stdout.contains(want), "{want:?} in:\n{stdout}");
    }
    // Anything not supported stops it, naming the plugin or option and its line.
    for (from, to, line, word) in [
        (
            "    loadbalance\n",
            "    loadbalance\n    template IN A example.org {\n    }\n",
            23,
            "template",
        ),
        (
            "       ttl 30\n",
            "       ttl 30\n       namespaces shop\n",
            11,
            "namespaces",
        ),
        (
            "    loadbalance\n",
            "    loadbalance\n    rewrite name exact a.example b.example answer name x y\n",
            23,
            "answer",
        ),
        ("    loop\n", "    loop\n    loop\n", 21, "loop given twice"),
    ] {
        let broken = KUBEADM.replace(from, to);
        std::fs::write(&path, broken).expect("write");
        let out = std::process::Command::new(binary())
            .arg(format!("--check-corefile={}", path.display()))
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("line {line}")) && stderr.contains(word),
            "line {line} and {word:?} in: {stderr}"
        );
    }
}

fn corefile(port: u16, ready: u16, kubeconfig: &std::path::Path, hosts_ip: &str) -> String {
    format!(
        ".:{port} {{
    bind 127.0.0.1
    ready 127.0.0.1:{ready}
    hosts {{
        {hosts_ip} pinned.example
        fallthrough
    }}
    kubernetes cluster.local {{
        kubeconfig {}
    }}
    reload 2s 1s
}}
",
        kubeconfig.display()
    )
}

/// dig's answer for pinned.example, within `wait`.
async fn wait_for_answer(dns: SocketAddr, want: &str, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    loop {
        let out = dig_async(dns, &["+short", "pinned.example", "A"]).await;
        if out.trim() == want || Instant::now() > deadline {
            return out.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn metric(body: &str, result: &str) -> u64 {
    body.lines()
        .find(|l| {
            l.starts_with(&format!(
                "svcplane_dns_reloads_total{{result=\"{result}\"}}"
            ))
        })
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_valid_edits_and_keeps_the_running_configuration_otherwise() {
    let env = TestEnv::start().await.expect("control plane");
    let (dns, ready) = (free_dns_port(), free_dns_port());
    let path = env.dir().join("Corefile.reload");
    let write = |text: String| std::fs::write(&path, text).expect("write Corefile");
    write(corefile(
        dns.port(),
        ready.port(),
        env.kubeconfig_path(),
        "192.0.2.1",
    ));
    let mut process = Tethered::spawn(
        "svcplane-dns",
        binary(),
        &[format!("--corefile={}", path.display())],
        &env.dir().join("svcplane-dns.reload.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(tokio::net::TcpStream::connect(ready).await.is_ok()
        && admin_fetch(ready, "/ready").await.0 == 200)
    {
        process.assert_running();
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        wait_for_answer(dns, "192.0.2.1", Duration::ZERO).await,
        "192.0.2.1"
    );

    // A valid edit is applied.
    write(corefile(
        dns.port(),
        ready.port(),
        env.kubeconfig_path(),
        "192.0.2.2",
    ));
    assert_eq!(
        wait_for_answer(dns, "192.0.2.2", Duration::from_secs(15)).await,
        "192.0.2.2",
        "{}",
        process.log_tail()
    );
    let body = admin_fetch(ready, "/metrics").await.1;
    assert_eq!(metric(&body, "applied"), 1, "{body}");

    // An invalid one is not, and says why.
    let invalid = corefile(dns.port(), ready.port(), env.kubeconfig_path(), "192.0.2.3").replace(
        "    reload 2s 1s\n",
        "    reload 2s 1s\n    template IN A example.org\n",
    );
    write(invalid);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !process.log_tail().contains("the new Corefile is invalid") {
        assert!(
            Instant::now() < deadline,
            "no complaint: {}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        process.log_tail().contains("template"),
        "{}",
        process.log_tail()
    );
    assert_eq!(
        wait_for_answer(dns, "never", Duration::ZERO).await,
        "192.0.2.2"
    );
    // One that needs a restart (another port) is not applied either.
    let other_port = free_dns_port().port();
    write(corefile(
        other_port,
        ready.port(),
        env.kubeconfig_path(),
        "192.0.2.4",
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !process.log_tail().contains("needs a restart") {
        assert!(
            Instant::now() < deadline,
            "no complaint: {}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        wait_for_answer(dns, "never", Duration::ZERO).await,
        "192.0.2.2"
    );
    let body = admin_fetch(ready, "/metrics").await.1;
    assert_eq!(metric(&body, "rejected"), 2, "{body}");

    // And the next valid edit is applied.
    write(corefile(
        dns.port(),
        ready.port(),
        env.kubeconfig_path(),
        "192.0.2.5",
    ));
    assert_eq!(
        wait_for_answer(dns, "192.0.2.5", Duration::from_secs(15)).await,
        "192.0.2.5",
        "{}",
        process.log_tail()
    );
    process.assert_running();
}

#[test]
fn feature_flags_are_checked_at_start() {
    for (args, want) in [
        (vec!["--autopath"], "--autopath needs --pods verified"),
        (
            vec![
                "--rewrite",
                "name exact a.example b.example answer name x y",
            ],
            "--rewrite",
        ),
        (vec!["--stub-domain", "corp.example"], "ZONE=ADDR"),
        (
            vec!["--stub-domain", "corp.example=not-an-ip"],
            "not an address",
        ),
        (
            vec!["--corefile", "/nonexistent", "--autopath"],
            "cannot be used with",
        ),
    ] {
        let out = std::process::Command::new(binary())
            .args(&args)
            .args([
                "--kubeconfig",
                "/nonexistent",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should not start");
        assert!(stderr.contains(want), "{args:?}: {want:?} in {stderr}");
    }
}
