//! Real packets through rules rendered by the proxy's core, in network namespaces this test
//! makes: a node namespace holding the rules and routing, two pod namespaces serving TCP and
//! UDP, and a client pod. Everything stays inside those namespaces; they are deleted at the end,
//! also when the test fails. Needs root, `ip` and `nft`; without them the test says why and
//! fails (CI runs as root).

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::Arc;

use svcplane_model::tracker::ServiceEndpoints;
use svcplane_model::{
    AddressType, ClusterIps, Conditions, Endpoint, EndpointPort, EndpointSlice, ObjectKey,
    Protocol, Service, ServicePort, ServiceType, TargetPort,
};
use svcplane_proxy::nft::{Nft, NftCli};
use svcplane_proxy::plan::{Config, NodePortAddresses, plan};
use svcplane_proxy::render;
use svcplane_proxy::topology::NodeFacts;

/// Namespaces and processes of one test; removed on drop.
struct Lab {
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

fn sh(args: &[&str]) {
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
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, a = s.accept(); c.sendall(name + b" " + a[0].encode()); c.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        d, a = s.recvfrom(100); s.sendto(name + b" " + a[0].encode(), a)
threading.Thread(target=udp, daemon=True).start()
tcp()
"#;

/// Sends `count` requests to ip:port (tcp or udp) and prints one line per request: the answer,
/// or `refused` / `timeout`.
const CLIENT: &str = r#"
import socket, sys
proto, ip, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for _ in range(count):
    try:
        if proto == "tcp":
            s = socket.create_connection((ip, port), timeout=1); print(s.recv(100).decode()); s.close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
            s.connect((ip, port)); s.send(b"?"); print(s.recv(100).decode()); s.close()
    except ConnectionRefusedError:
        print("refused")
    except OSError as e:
        print("timeout" if isinstance(e, TimeoutError) or "timed out" in str(e) else "error " + str(e))
"#;

impl Lab {
    /// node (10.244.0.1 on each pod link) with pod namespaces `pod-a` (10.244.1.5),
    /// `pod-b` (10.244.2.5) serving on 8080, and `client` (10.244.3.5).
    fn new() -> Lab {
        let prefix = format!("svp{}", std::process::id());
        let mut lab = Lab {
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

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn nft(&self) -> NftCli {
        NftCli::in_netns(&self.ns("node"))
    }

    /// Answers from `count` requests from the client pod, tallied.
    fn ask(&self, proto: &str, ip: &str, port: u16, count: u32) -> BTreeMap<String, u32> {
        self.ask_from("client", proto, ip, port, count)
    }

    /// The same from namespace `from` (`client`, or `ext` outside the node).
    fn ask_from(
        &self,
        from: &str,
        proto: &str,
        ip: &str,
        port: u16,
        count: u32,
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
            .output()
            .expect("client");
        let mut tally = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            *tally.entry(line.to_owned()).or_insert(0) += 1;
        }
        tally
    }

    /// Waits until both servers answer directly.
    fn wait_for_servers(&self) {
        for _ in 0..50 {
            let a = self.ask("tcp", "10.244.1.5", 8080, 1);
            let b = self.ask("tcp", "10.244.2.5", 8080, 1);
            if a.keys().any(|k| k.starts_with("pod-a")) && b.keys().any(|k| k.starts_with("pod-b"))
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("pod servers never answered");
    }
}

/// A Service with ports http (TCP 80) and dns (UDP 53) to 8080; with `node_port`, a NodePort
/// Service whose http port is also `node_port`.
fn service(name: &str, ip: &str, node_port: Option<u16>) -> (ObjectKey, Arc<Service>) {
    let key = ObjectKey::new("demo", name);
    let port = |name: &str, protocol, port, node_port| ServicePort {
        name: name.into(),
        protocol,
        port,
        target_port: TargetPort::Number(8080),
        node_port,
        app_protocol: None,
    };
    let type_ = if node_port.is_some() {
        ServiceType::NodePort
    } else {
        ServiceType::ClusterIp
    };
    let svc = Service {
        cluster_ips: ClusterIps::Ips(vec![ip.parse().expect("ip")]),
        ports: vec![
            port("http", Protocol::Tcp, 80, node_port),
            port("dns", Protocol::Udp, 53, None),
        ],
        ..Service::new(key.clone(), type_)
    };
    (key, Arc::new(svc))
}

fn endpoints(svc: &ObjectKey, ips: &[&str]) -> ServiceEndpoints {
    let port = |name: &str, protocol| EndpointPort {
        name: name.into(),
        protocol,
        port: Some(8080),
        app_protocol: None,
    };
    ServiceEndpoints {
        slices: vec![Arc::new(EndpointSlice {
            key: ObjectKey::new(&*svc.namespace, format!("{}-1", svc.name)),
            service: svc.clone(),
            address_type: AddressType::V4,
            ports: vec![port("http", Protocol::Tcp), port("dns", Protocol::Udp)],
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.parse().expect("ip")],
                    conditions: Conditions::default(),
                    hostname: None,
                    node_name: Some("node".into()),
                    zone: None,
                    hints: None,
                    target_pod: None,
                })
                .collect(),
            managed_by: None,
            trigger_time: None,
            resource_version: None,
        })],
    }
}

fn transaction(
    services: &[(ObjectKey, Arc<Service>)],
    eps: &HashMap<ObjectKey, ServiceEndpoints>,
) -> String {
    let config = Config {
        node: NodeFacts {
            name: "node".into(),
            zone: None,
        },
        node_ips: vec!["192.0.2.10".parse().expect("ip")],
        nodeport_addresses: NodePortAddresses::Primary,
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        masquerade_all: false,
        masquerade_bit: 14,
        service_cidrs: vec!["10.96.0.0/16".parse().expect("cidr")],
    };
    let p = plan(
        AddressType::V4,
        services.iter().map(|(k, s)| (k, s)),
        |k| eps.get(k),
        &config,
    );
    let mut text = String::new();
    render::full(&p, &mut text);
    text
}

fn can_make_namespaces() -> Result<(), String> {
    let probe = format!("svp-probe-{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &probe]).output();
    match made {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
            Command::new("nft")
                .arg("--version")
                .output()
                .map(drop)
                .map_err(|e| format!("nft: {e}"))
        }
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => Err(format!("ip: {e}")),
    }
}

#[test]
fn cluster_ips_carry_packets_and_refuse_what_they_should() {
    if let Err(why) = can_make_namespaces() {
        panic!("this test needs root with `ip netns` and `nft` (CI runs as root): {why}");
    }
    let lab = Lab::new();
    lab.wait_for_servers();
    let web = service("web", "10.96.0.10", Some(30080));
    let empty = service("empty", "10.96.0.11", None);
    let mut eps = HashMap::from([(
        web.0.clone(),
        endpoints(&web.0, &["10.244.1.5", "10.244.2.5"]),
    )]);
    let services = [web.clone(), empty.clone()];
    lab.nft()
        .apply(&transaction(&services, &eps))
        .expect("load rules");

    // TCP and UDP spread over both endpoints; the client's own address is kept (pod to pod).
    let tcp = lab.ask("tcp", "10.96.0.10", 80, 40);
    let from_a = tcp.get("pod-a 10.244.3.5").copied().unwrap_or(0);
    let from_b = tcp.get("pod-b 10.244.3.5").copied().unwrap_or(0);
    assert_eq!(from_a + from_b, 40, "{tcp:?}");
    assert!(
        from_a > 0 && from_b > 0,
        "random choice reached both: {tcp:?}"
    );
    let udp = lab.ask("udp", "10.96.0.10", 53, 20);
    assert_eq!(
        udp.keys().filter(|k| k.starts_with("pod-")).count(),
        2,
        "{udp:?}"
    );

    // The NodePort from outside the node: both endpoints, masqueraded to the node's address on
    // the pod's link (externalTrafficPolicy Cluster).
    let np = lab.ask_from("ext", "tcp", "192.0.2.10", 30080, 20);
    assert_eq!(
        np.keys().cloned().collect::<Vec<_>>(),
        ["pod-a 10.244.1.1", "pod-b 10.244.2.1"],
        "{np:?}"
    );

    // No endpoints: rejected (fast), unknown port: rejected, unallocated address: dropped.
    assert_eq!(
        lab.ask("tcp", "10.96.0.11", 80, 3),
        BTreeMap::from([("refused".into(), 3)])
    );
    assert_eq!(
        lab.ask("tcp", "10.96.0.10", 81, 2),
        BTreeMap::from([("refused".into(), 2)])
    );
    assert_eq!(
        lab.ask("tcp", "10.96.0.99", 80, 1),
        BTreeMap::from([("timeout".into(), 1)])
    );

    // A failed transaction changes nothing.
    let error = lab.nft().apply("add rule ip svcplane services nonsense\n");
    assert!(error.is_err());
    assert_eq!(
        lab.ask("tcp", "10.96.0.10", 80, 10).values().sum::<u32>(),
        10
    );

    // An endpoint goes away: every new connection goes to the one left.
    eps.insert(web.0.clone(), endpoints(&web.0, &["10.244.1.5"]));
    lab.nft()
        .apply(&transaction(&services, &eps))
        .expect("reload rules");
    assert_eq!(
        lab.ask("tcp", "10.96.0.10", 80, 10),
        BTreeMap::from([("pod-a 10.244.3.5".into(), 10)])
    );

    // Cleanup leaves nothing of ours.
    let mut cleanup = String::new();
    render::delete_table(AddressType::V4, &mut cleanup);
    lab.nft().apply(&cleanup).expect("cleanup");
    let left = Command::new("ip")
        .args(["netns", "exec", &lab.ns("node"), "nft", "list", "ruleset"])
        .output()
        .expect("list");
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("svcplane"),
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
}
