//! The test lab: a node namespace (rules, routing), two pod namespaces serving TCP and UDP on
//! 8080, a client pod and an external host; removed on drop, also when a test fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use svcplane_proxy::nft::NftCli;
use svcplane_testenv::TestEnv;
use svcplane_testenv::netns::ApiRelay;

/// Where the API server answers inside a lab's node namespace (see [`Lab::relay_api`]).
pub const API_IN_NODE: &str = "127.0.0.1:6443";

/// Fails the test, saying why, when this process cannot make network namespaces and run `nft`
/// (CI runs as root).
pub fn require_namespaces() {
    if let Err(why) = svcplane_testenv::netns::can_make_namespaces() {
        panic!("this test needs root with `ip netns` and `nft` (CI runs as root): {why}");
    }
}

/// What the API-server tests register: namespace `demo`, and Node `node` with the lab node's
/// uplink address (192.0.2.10) as its InternalIP.
pub async fn register_node(client: &kube::Client) {
    svcplane_testenv::kubelet::create_namespace(client, "demo")
        .await
        .expect("namespace");
    svcplane_testenv::kubelet::create_node(client, "node", None, "192.0.2.10".parse().expect("ip"))
        .await
        .expect("node");
}

/// The Service `demo/web` the API-server tests create: ClusterIP 10.96.0.50, port `http` 80.
pub fn web_service() -> k8s_openapi::api::core::v1::Service {
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    Service {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("web".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.50".into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// svcplane-proxy's sync state as the tests run it, applying through `nft` and `conntrack`:
/// node `node` (192.0.2.10, 2001:db8::10), pod CIDRs 10.244.0.0/16 and fd00:10:244::/48,
/// NodePorts on the primary addresses.
pub fn proxy_state(
    nft: Box<dyn svcplane_proxy::nft::Nft>,
    conntrack: Box<dyn svcplane_proxy::conntrack::Conntrack>,
) -> svcplane_proxy::state::State {
    use svcplane_proxy::state::{Settings, State};
    let settings = Settings {
        node_name: "node".into(),
        nodeport_addresses: svcplane_proxy::plan::NodePortAddresses::Primary,
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().expect("cidr"),
            "fd00:10:244::/48".parse().expect("cidr"),
        ],
        masquerade_all: false,
        masquerade_bit: 14,
        detect_local: Default::default(),
    };
    let metrics =
        svcplane_proxy::metrics::Metrics::register(&prometheus::Registry::new()).expect("metrics");
    let mut s = State::new(settings, nft, conntrack, metrics);
    let node = svcplane_model::Node {
        name: "node".into(),
        zone: None,
        addresses: vec![
            "192.0.2.10".parse().expect("ip"),
            "2001:db8::10".parse().expect("ip"),
        ],
        allocatable_cpu_millis: None,
        ready: true,
        control_plane: false,
        pod_cidrs: Vec::new(),
    };
    s.nodes.apply(
        svcplane_model::ObjectKey::new("", "node"),
        Some(std::sync::Arc::new(node)),
    );
    s
}

/// What [`Lab::http_from`] got.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub weight: Option<String>,
    pub body: String,
}

/// Namespaces and processes of one test; removed on drop.
pub struct Lab {
    /// The next unused source port for [`Lab::ask_fresh`].
    next_port: std::sync::atomic::AtomicU16,
    prefix: String,
    namespaces: Vec<String>,
    servers: Vec<std::process::Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP and UDP server on `port` that answers every connection or datagram with `name`.
const SERVER: &str = r#"
import socket, sys, threading
name, port = sys.argv[1].encode(), int(sys.argv[2])
def tcp(family, addr):
    s = socket.socket(family); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port)); s.listen(64)
    while True:
        c, a = s.accept(); c.sendall(name + b" " + a[0].encode()); c.close()
def udp(family, addr):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    while True:
        d, a = s.recvfrom(100); s.sendto(name + b" " + a[0].encode(), a)
for f, a in [(socket.AF_INET6, "::")]:
    threading.Thread(target=tcp, args=(f, a), daemon=True).start()
    threading.Thread(target=udp, args=(f, a), daemon=True).start()
threading.Thread(target=udp, args=(socket.AF_INET, "0.0.0.0"), daemon=True).start()
tcp(socket.AF_INET, "0.0.0.0")
"#;

/// Sends `count` requests to ip:port (tcp or udp) and prints one line per request: the answer,
/// or `refused` / `timeout`.
const CLIENT: &str = r#"
import socket, sys
proto, ip, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
family, any_addr = (socket.AF_INET6, "::") if ":" in ip else (socket.AF_INET, "0.0.0.0")
# A fixed source port (one flow), or with "+N" every request from its own port N, N+1, ...
# (never an ephemeral port a finished flow still holds in conntrack).
arg = sys.argv[5] if len(sys.argv) > 5 else "0"
step = 1 if arg.startswith("+") else 0
sport = int(arg.lstrip("+"))
for i in range(count):
    try:
        if proto == "tcp":
            # 2.5 s: an ICMP error that arrives while connect() still holds the socket is
            # dropped (TcpExtLockDroppedIcmps) and only the SYN retransmitted after 1 s is
            # refused.
            s = socket.socket(family); s.settimeout(2.5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if sport: s.bind((any_addr, sport + i * step))
            s.connect((ip, port)); print(s.recv(100).decode()); s.close()
        else:
            s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((any_addr, sport + i * step))
            s.connect((ip, port)); s.send(b"?"); print(s.recv(100).decode()); s.close()
    except ConnectionRefusedError:
        print("refused")
    except OSError as e:
        timeout = isinstance(e, TimeoutError) or "timed out" in str(e)
        print("timeout" if timeout else "error " + str(e))
        if timeout:
            break  # a dropped destination stays dropped; don't wait out every request
"#;

impl Lab {
    /// node (10.244.N.1 and fd00:10:244:N::1 on pod link N) with pod namespaces `pod-a`
    /// (10.244.1.5, fd00:10:244:1::5), `pod-b` (10.244.2.5, fd00:10:244:2::5) serving TCP and
    /// UDP on 8080 in both families, and `client` (10.244.3.5, fd00:10:244:3::5); the node's
    /// uplink 192.0.2.10 / 2001:db8::10 leads to `ext` (192.0.2.1 / 2001:db8::1).
    pub fn new() -> Lab {
        // Tests run in parallel in one process: each lab gets its own names.
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("svp{}x{n}", std::process::id());
        let mut lab = Lab {
            next_port: std::sync::atomic::AtomicU16::new(10000),
            prefix: prefix.clone(),
            namespaces: Vec::new(),
            servers: Vec::new(),
        };
        let node = lab.ns("node");
        sh(&["ip", "netns", "add", &node]);
        lab.namespaces.push(node.clone());
        sh(&["ip", "-n", &node, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        // Rejects are ICMP errors, which the kernel rate-limits per destination; a test sends
        // them faster than a client normally would.
        sh(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv4.icmp_ratelimit=0",
        ]);
        for sysctl in [
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.icmp.ratelimit=0",
        ] {
            sh(&["ip", "netns", "exec", &node, "sysctl", "-qw", sysctl]);
        }
        // An "external" host on the node's uplink (TEST-NET-1, inside these namespaces only) and
        // a default route to it, as every node has one: traffic the rules do not take is
        // routed, not refused by routing.
        let ext = lab.ns("ext");
        sh(&["ip", "netns", "add", &ext]);
        lab.namespaces.push(ext.clone());
        sh(&[
            "ip", "-n", &node, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0",
            "netns", &ext,
        ]);
        sh(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            "192.0.2.10/24",
            "dev",
            "uplink",
        ]);
        sh(&["ip", "-n", &node, "link", "set", "uplink", "up"]);
        sh(&[
            "ip",
            "-n",
            &ext,
            "addr",
            "add",
            "192.0.2.1/24",
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ext, "link", "set", "eth0", "up"]);
        // IPv6 likewise (documentation prefix 2001:db8::/32, inside these namespaces only);
        // `nodad`: addresses usable at once.
        for (ns, dev, addr) in [
            (&node, "uplink", "2001:db8::10/64"),
            (&ext, "eth0", "2001:db8::1/64"),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev, "nodad"]);
        }
        sh(&[
            "ip",
            "-n",
            &node,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8::1",
        ]);
        sh(&[
            "ip",
            "-n",
            &ext,
            "-6",
            "route",
            "add",
            "2001:db8:100::/64",
            "via",
            "2001:db8::10",
        ]);
        sh(&[
            "ip",
            "-n",
            &node,
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
        ]);
        // The external host reaches LoadBalancer IPs (198.51.100.0/24, TEST-NET-2) through the
        // node, as a load balancer in front of it would.
        sh(&[
            "ip",
            "-n",
            &ext,
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "192.0.2.10",
        ]);
        for (i, pod) in ["pod-a", "pod-b", "client"].iter().enumerate() {
            let ns = lab.ns(pod);
            sh(&["ip", "netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            let host_if = format!("veth{i}");
            sh(&[
                "ip", "-n", &node, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            let subnet = i + 1;
            sh(&[
                "ip",
                "-n",
                &node,
                "addr",
                "add",
                &format!("10.244.{subnet}.1/24"),
                "dev",
                &host_if,
            ]);
            sh(&["ip", "-n", &node, "link", "set", &host_if, "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.244.{subnet}.5/24"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            let node6 = format!("fd00:10:244:{subnet}::1");
            sh(&[
                "ip",
                "-n",
                &node,
                "addr",
                "add",
                &format!("{node6}/64"),
                "dev",
                &host_if,
                "nodad",
            ]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("fd00:10:244:{subnet}::5/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            sh(&[
                "ip", "-n", &ns, "-6", "route", "add", "default", "via", &node6,
            ]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.244.{subnet}.1"),
            ]);
        }
        for pod in ["pod-a", "pod-b"] {
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.ns(pod),
                    "python3",
                    "-c",
                    SERVER,
                    pod,
                    "8080",
                ])
                .stdin(Stdio::null())
                .spawn()
                .expect("start server");
            lab.servers.push(child);
        }
        lab
    }

    /// A new lab whose pod servers already answer.
    pub fn ready() -> Lab {
        let lab = Lab::new();
        lab.wait_for_servers();
        lab
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn nft(&self) -> NftCli {
        NftCli::in_netns(&self.ns("node"))
    }

    /// Answers from `count` requests from the client pod, tallied.
    pub fn ask(&self, proto: &str, ip: &str, port: u16, count: u32) -> BTreeMap<String, u32> {
        self.ask_from("client", proto, ip, port, count)
    }

    /// Runs the client in namespace `from`: `count` requests to ip:port over `proto`, the
    /// source port as `sport` says (see [`CLIENT`]); the answers, tallied.
    fn client(
        &self,
        from: &str,
        proto: &str,
        ip: &str,
        port: u16,
        count: u32,
        sport: &str,
    ) -> BTreeMap<String, u32> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(from),
                "python3",
                "-c",
                CLIENT,
                proto,
                ip,
            ])
            .arg(port.to_string())
            .arg(count.to_string())
            .arg(sport)
            .output()
            .expect("client");
        let mut tally = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            *tally.entry(line.to_owned()).or_insert(0) += 1;
        }
        tally
    }

    /// The same from namespace `from` (`client`, or `ext` outside the node).
    pub fn ask_from(
        &self,
        from: &str,
        proto: &str,
        ip: &str,
        port: u16,
        count: u32,
    ) -> BTreeMap<String, u32> {
        self.client(from, proto, ip, port, count, "0")
    }

    /// UDP requests from the client pod, all from source port `sport` (one conntrack flow).
    pub fn ask_udp_from_port(
        &self,
        ip: &str,
        port: u16,
        count: u32,
        sport: u16,
    ) -> BTreeMap<String, u32> {
        self.client("client", "udp", ip, port, count, &sport.to_string())
    }

    /// Like [`Lab::ask_from`], each request from a source port never used before in this lab
    /// (below the ephemeral range): every request is a new flow for conntrack, whatever flows
    /// earlier requests left behind.
    pub fn ask_fresh(
        &self,
        from: &str,
        proto: &str,
        ip: &str,
        port: u16,
        count: u32,
    ) -> BTreeMap<String, u32> {
        let n = u16::try_from(count).expect("count");
        let first = self
            .next_port
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        assert!(
            first.checked_add(n).is_some_and(|p| p < 32768),
            "out of fresh ports"
        );
        self.client(from, proto, ip, port, count, &format!("+{first}"))
    }

    /// GET http://127.0.0.1:`port``path` inside the node namespace (an admin or metrics
    /// endpoint of the proxy running there); empty when nothing answers.
    pub fn node_http(&self, port: u16, path: &str) -> String {
        self.http_from("node", &format!("http://127.0.0.1:{port}{path}"))
            .body
    }

    /// GET `url` from namespace `from`: status (0 when nothing answered), the
    /// `X-Load-Balancing-Endpoint-Weight` header, the body.
    pub fn http_from(&self, from: &str, url: &str) -> HttpAnswer {
        let script = r#"
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError as e:
    r = e
except Exception:
    print(0); print(""); sys.exit(0)
print(r.status); print(r.headers.get("X-Load-Balancing-Endpoint-Weight") or ""); print(r.read().decode(), end="")
"#;
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(from),
                "python3",
                "-c",
                script,
                url,
            ])
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.splitn(3, '\n');
        let status = lines
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let weight = lines
            .next()
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_owned);
        HttpAnswer {
            status,
            weight,
            body: lines.next().unwrap_or_default().to_owned(),
        }
    }

    /// Makes `env`'s API server reachable at [`API_IN_NODE`] inside the node namespace, through
    /// a unix socket (no IP route out of the namespace). Dropping the relay stops it.
    pub async fn relay_api(&self, env: &TestEnv) -> ApiRelay {
        let apiserver = env.server_addr();
        let port = API_IN_NODE
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        ApiRelay::start(&self.ns("node"), port, apiserver, env.dir())
            .await
            .expect("relay")
    }

    /// Waits until both servers answer directly.
    pub fn wait_for_servers(&self) {
        // Both families: the first IPv6 packets on fresh links can go missing while neighbour
        // discovery settles, which no test should mistake for a rule.
        for _ in 0..50 {
            let answered = [
                ("pod-a", "10.244.1.5"),
                ("pod-b", "10.244.2.5"),
                ("pod-a", "fd00:10:244:1::5"),
                ("pod-b", "fd00:10:244:2::5"),
            ]
            .iter()
            .all(|(pod, ip)| {
                self.ask("tcp", ip, 8080, 1)
                    .keys()
                    .any(|k| k.starts_with(pod))
            });
            if answered {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("pod servers never answered");
    }
}
