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

/// The rcode `dig` printed (`status: NOERROR`), or `none` without a reply.
pub fn dig_status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("none")
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

/// A server process this test starts, tied to the test process: it runs under a small `sh`
/// that SIGKILLs it when its stdin (a pipe only we hold) closes, so it goes away with the test
/// however the test ends, `kill -9` included. Output goes to `log`. Dropping it stops the process.
#[derive(Debug)]
pub struct Tethered {
    name: String,
    child: std::process::Child,
    lifeline: Option<std::process::ChildStdin>,
    log: std::path::PathBuf,
}

/// `sh -c` body: runs "$@" in the background, kills it on EOF on stdin, exits with its status.
const TETHER: &str = r#"exec 3<&0 0</dev/null
"$@" 3<&- &
c=$!
{ cat <&3 >/dev/null; kill -9 "$c" 2>/dev/null; } &
exec 3<&-
wait "$c""#;

impl Tethered {
    pub fn spawn(
        name: &str,
        program: &std::path::Path,
        args: &[String],
        log: &std::path::Path,
    ) -> Self {
        Self::spawn_with_env(name, program, args, &[], log)
    }

    /// [`Tethered::spawn`] with environment variables set for the process.
    pub fn spawn_with_env(
        name: &str,
        program: &std::path::Path,
        args: &[String],
        env: &[(String, String)],
        log: &std::path::Path,
    ) -> Self {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(TETHER)
            .arg("sh")
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
        let lifeline = child.stdin.take();
        Tethered {
            name: name.to_owned(),
            child,
            lifeline,
            log: log.to_owned(),
        }
    }

    /// Panics with the log's tail if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its log ({}) ends:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }

    /// The last 4 KiB of the log.
    pub fn log_tail(&self) -> String {
        let raw = std::fs::read(&self.log).unwrap_or_default();
        let tail = &raw[raw.len().saturating_sub(4096)..];
        String::from_utf8_lossy(tail).into_owned()
    }
}

impl Drop for Tethered {
    fn drop(&mut self) {
        // Closing the lifeline makes the wrapper kill the server; the wrapper then exits.
        drop(self.lifeline.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An upstream on loopback (UDP) that answers every A question with its one address (TTL 0),
/// NXDOMAIN for names starting with `nx.`, NODATA for other types, and records what it was
/// asked. Dropping it stops it.
pub struct NameStub {
    pub addr: SocketAddr,
    pub address: std::net::Ipv4Addr,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NameStub {
    pub async fn start(address: std::net::Ipv4Addr) -> NameStub {
        use hickory_proto::op::{Message, MessageType, ResponseCode};
        use hickory_proto::rr::rdata::{A, SOA};
        use hickory_proto::rr::{Name, RData, Record, RecordType};
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind stub");
        let addr = socket.local_addr().expect("addr");
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(q) = query.queries.first().cloned() else {
                    continue;
                };
                let name = q.name().to_ascii().to_ascii_lowercase();
                log.lock()
                    .expect("lock")
                    .push(format!("{name} {}", q.query_type()));
                let mut reply = Message::new(
                    query.metadata.id,
                    MessageType::Response,
                    query.metadata.op_code,
                );
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.add_query(q.clone());
                if name.starts_with("nx.") {
                    reply.metadata.response_code = ResponseCode::NXDomain;
                    let apex = Name::from_ascii("stub.invalid.").expect("name");
                    reply.add_authority(Record::from_rdata(
                        apex.clone(),
                        0,
                        RData::SOA(SOA::new(apex.clone(), apex, 1, 1, 1, 1, 0)),
                    ));
                } else if q.query_type() == RecordType::A {
                    reply.add_answer(Record::from_rdata(
                        q.name().clone(),
                        0,
                        RData::A(A(address)),
                    ));
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        NameStub {
            addr,
            address,
            asked,
            task,
        }
    }

    /// The questions asked so far, as `name. TYPE`, lower case.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("lock").clone()
    }
}

impl Drop for NameStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}
