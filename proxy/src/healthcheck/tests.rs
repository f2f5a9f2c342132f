use std::net::TcpListener as StdListener;

use k8s_openapi::api::core::v1::{NodeSpec, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use svcplane_model::{
    ClusterIps, Conditions, Endpoint, EndpointPort, EndpointSlice, Protocol, ServicePort,
    TargetPort,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// 2024-06-01T12:00:00Z.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_717_243_200)
}

fn clocked() -> (ProxyHealth, FakeClock) {
    let clock = FakeClock::new(t0());
    (
        ProxyHealth::with_clock(TIMEOUT, Arc::new(clock.clone())),
        clock,
    )
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

fn header<'a>(resp: &'a Response<String>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[test]
fn service_reply_table() {
    // (local endpoints, proxy healthy) -> status
    let cases = [
        (0, true, 503),
        (1, true, 200),
        (3, true, 200),
        (0, false, 503),
        (3, false, 503),
    ];
    for (n, healthy, status) in cases {
        let resp = service_reply(&key("shop", "web"), n, healthy);
        assert_eq!(
            resp.status().as_u16(),
            status,
            "{n} endpoints, healthy {healthy}"
        );
        assert_eq!(header(&resp, "content-type"), Some("application/json"));
        assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
        assert_eq!(
            header(&resp, "X-Load-Balancing-Endpoint-Weight"),
            Some(n.to_string().as_str()),
            "the weight is the count even when unhealthy"
        );
        let body: serde_json::Value = serde_json::from_str(resp.body()).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "service": {"namespace": "shop", "name": "web"},
                "localEndpoints": n,
                "serviceProxyHealthy": healthy,
            })
        );
    }
}

#[test]
fn service_reply_keeps_upstream_bytes() {
    let resp = service_reply(&key("shop", "web"), 2, true);
    assert_eq!(
        resp.body(),
        "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
    );
}

#[test]
fn fresh_proxy_is_healthy_with_no_families() {
    let (health, _) = clocked();
    let report = health.report();
    assert!(report.healthy);
    assert_eq!(report.last_updated, None);
    assert!(report.families.is_empty());
    let resp = healthz_reply(&report, true);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.body(),
        r#"{"lastUpdated":"2024-06-01T12:00:00Z","currentTime":"2024-06-01T12:00:00Z","nodeEligible":true,"healthy":true}"#
    );
}

#[test]
fn a_queued_change_turns_unhealthy_once_the_timeout_has_passed() {
    let (health, clock) = clocked();
    health.updated(AddressType::V4);
    clock.advance(Duration::from_secs(10));
    health.queued_update(AddressType::V4);
    clock.advance(TIMEOUT - Duration::from_secs(1));
    assert!(health.is_healthy(), "late only after the whole timeout");
    clock.advance(Duration::from_secs(1));
    assert!(!health.is_healthy(), "the timeout has passed");

    let report = health.report();
    assert_eq!(report.last_updated, Some(t0()));
    assert_eq!(
        report.families.get(&AddressType::V4),
        Some(&FamilyHealth {
            last_updated: t0(),
            healthy: false
        })
    );

    health.updated(AddressType::V4);
    assert!(health.is_healthy(), "a sync makes it healthy again");
    clock.advance(TIMEOUT * 10);
    assert!(
        health.is_healthy(),
        "no queued change: healthy however old the sync"
    );
}

#[test]
fn the_timeout_runs_from_the_oldest_queued_change() {
    let (health, clock) = clocked();
    health.updated(AddressType::V4);
    health.queued_update(AddressType::V4);
    clock.advance(TIMEOUT / 2);
    health.queued_update(AddressType::V4);
    clock.advance(TIMEOUT / 2);
    assert!(
        !health.is_healthy(),
        "a later change does not restart the timeout"
    );
}

#[test]
fn one_late_family_makes_the_proxy_unhealthy() {
    let (health, clock) = clocked();
    health.updated(AddressType::V4);
    health.updated(AddressType::V6);
    health.queued_update(AddressType::V6);
    clock.advance(TIMEOUT);
    health.updated(AddressType::V4);
    let report = health.report();
    assert!(!report.healthy);
    assert!(report.families[&AddressType::V4].healthy);
    assert!(!report.families[&AddressType::V6].healthy);
    assert_eq!(
        report.last_updated,
        Some(t0() + TIMEOUT),
        "the newest sync of any family"
    );
}

#[test]
fn a_family_that_never_synced_is_not_judged() {
    // Upstream judges only families it has seen an update for; the sync loop reports one when it
    // starts, so a proxy whose first sync never succeeds still turns unhealthy.
    let (health, clock) = clocked();
    health.queued_update(AddressType::V6);
    clock.advance(TIMEOUT * 2);
    assert!(health.is_healthy());
    health.updated(AddressType::V6);
    health.queued_update(AddressType::V6);
    clock.advance(TIMEOUT);
    assert!(!health.is_healthy());
}

#[test]
fn healthz_and_livez_replies() {
    let (health, clock) = clocked();
    health.updated(AddressType::V4);
    clock.advance(Duration::from_millis(1500));

    // Healthy and eligible: lastUpdated says "now".
    let resp = healthz_reply(&health.report(), true);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
    assert_eq!(
        resp.body(),
        r#"{"lastUpdated":"2024-06-01T12:00:01.5Z","currentTime":"2024-06-01T12:00:01.5Z","nodeEligible":true,"healthy":true,"status":{"IPv4":{"lastUpdated":"2024-06-01T12:00:00Z","healthy":true}}}"#
    );

    // The Node is going: /healthz fails, /livez does not and says nothing about the Node.
    let resp = healthz_reply(&health.report(), false);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.body(),
        r#"{"lastUpdated":"2024-06-01T12:00:00Z","currentTime":"2024-06-01T12:00:01.5Z","nodeEligible":false,"healthy":true,"status":{"IPv4":{"lastUpdated":"2024-06-01T12:00:00Z","healthy":true}}}"#
    );
    let resp = livez_reply(&health.report());
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.body(),
        r#"{"lastUpdated":"2024-06-01T12:00:01.5Z","currentTime":"2024-06-01T12:00:01.5Z","healthy":true,"status":{"IPv4":{"lastUpdated":"2024-06-01T12:00:00Z","healthy":true}}}"#
    );

    // A change waited too long: both fail, lastUpdated is the last sync.
    health.queued_update(AddressType::V4);
    clock.advance(TIMEOUT);
    for resp in [
        healthz_reply(&health.report(), true),
        livez_reply(&health.report()),
    ] {
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(resp.body()).expect("json");
        assert_eq!(body["healthy"], false);
        assert_eq!(body["lastUpdated"], "2024-06-01T12:00:00Z");
        assert_eq!(body["currentTime"], "2024-06-01T12:01:01.5Z");
        assert_eq!(body["status"]["IPv4"]["healthy"], false);
    }
}

#[test]
fn proxy_routes() {
    let (health, _) = clocked();
    health.set_node_eligible(false);
    assert_eq!(proxy_route("/healthz", &health).status().as_u16(), 503);
    assert_eq!(proxy_route("/livez", &health).status().as_u16(), 200);
    health.set_node_eligible(true);
    assert_eq!(proxy_route("/healthz", &health).status().as_u16(), 200);
    for path in ["/", "/healthz/", "/readyz", "/metrics"] {
        let resp = proxy_route(path, &health);
        assert_eq!(resp.status().as_u16(), 404, "{path}");
        assert_eq!(resp.body(), "404 page not found\n");
    }
}

fn api_node(deleting: bool, taints: &[&str]) -> ApiNode {
    let mut node = ApiNode::default();
    node.metadata.name = Some("n1".into());
    if deleting {
        node.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    }
    node.spec = Some(NodeSpec {
        taints: Some(
            taints
                .iter()
                .map(|k| Taint {
                    key: (*k).into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    });
    node
}

#[test]
fn node_eligibility_table() {
    assert!(!node_eligible(None), "no Node object");
    assert!(node_eligible(Some(&api_node(false, &[]))));
    assert!(node_eligible(Some(&api_node(
        false,
        &["node.kubernetes.io/unschedulable"]
    ))));
    assert!(!node_eligible(Some(&api_node(true, &[]))), "being deleted");
    assert!(!node_eligible(Some(&api_node(
        false,
        &["other", TO_BE_DELETED_TAINT]
    ))));
}

fn lb_service(name: &str, ips: &[&str], etp: TrafficPolicy, hc: Option<u16>) -> Arc<Service> {
    Arc::new(Service {
        cluster_ips: ClusterIps::Ips(ips.iter().map(|i| i.parse().expect("ip")).collect()),
        external_traffic_policy: etp,
        health_check_node_port: hc,
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(8080),
            node_port: Some(31080),
            app_protocol: None,
        }],
        ..Service::new(key("shop", name), ServiceType::LoadBalancer)
    })
}

#[test]
fn health_check_ports_table() {
    let mut nodeport = (*lb_service(
        "nodeport",
        &["10.96.0.5"],
        TrafficPolicy::Local,
        Some(30005),
    ))
    .clone();
    nodeport.type_ = ServiceType::NodePort;
    let svcs = [
        lb_service("local", &["10.96.0.1"], TrafficPolicy::Local, Some(30001)),
        lb_service(
            "dual",
            &["10.96.0.2", "fd00::2"],
            TrafficPolicy::Local,
            Some(30002),
        ),
        lb_service("v6", &["fd00::3"], TrafficPolicy::Local, Some(30003)),
        lb_service(
            "cluster",
            &["10.96.0.4"],
            TrafficPolicy::Cluster,
            Some(30004),
        ),
        Arc::new(nodeport),
        lb_service("no-port", &["10.96.0.6"], TrafficPolicy::Local, None),
        lb_service("zero", &["10.96.0.7"], TrafficPolicy::Local, Some(0)),
    ];
    let pairs: Vec<(ObjectKey, Arc<Service>)> =
        svcs.iter().map(|s| (s.key.clone(), s.clone())).collect();
    let v4 = health_check_ports(AddressType::V4, pairs.iter().map(|(k, s)| (k, s)));
    assert_eq!(
        v4,
        BTreeMap::from([(key("shop", "dual"), 30002), (key("shop", "local"), 30001)])
    );
    let v6 = health_check_ports(AddressType::V6, pairs.iter().map(|(k, s)| (k, s)));
    assert_eq!(
        v6,
        BTreeMap::from([(key("shop", "dual"), 30002), (key("shop", "v6"), 30003)])
    );
}

fn ep(ip: &str, node: &str, ready: Option<bool>) -> Endpoint {
    Endpoint {
        addresses: vec![ip.parse().expect("ip")],
        conditions: Conditions {
            ready,
            serving: None,
            terminating: ready.map(|r| !r),
        },
        hostname: None,
        node_name: Some(node.into()),
        zone: None,
        hints: None,
        target_pod: None,
    }
}

fn slice(name: &str, family: AddressType, ports: &[u16], eps: Vec<Endpoint>) -> Arc<EndpointSlice> {
    Arc::new(EndpointSlice {
        key: key("shop", name),
        service: key("shop", "web"),
        address_type: family,
        ports: ports
            .iter()
            .map(|p| EndpointPort {
                name: format!("p{p}").into(),
                protocol: Protocol::Tcp,
                port: Some(*p),
                app_protocol: None,
            })
            .collect(),
        endpoints: eps,
        managed_by: None,
        trigger_time: None,
        resource_version: None,
    })
}

#[test]
fn local_ready_endpoints_count_distinct_local_ready_addresses() {
    let eps = ServiceEndpoints {
        slices: vec![
            slice(
                "web-a",
                AddressType::V4,
                &[80, 443],
                vec![
                    ep("10.244.1.1", "n1", Some(true)),
                    ep("10.244.1.2", "n1", None), // unknown readiness counts as ready
                    ep("10.244.1.3", "n1", Some(false)), // terminating
                    ep("10.244.2.1", "n2", Some(true)), // elsewhere
                ],
            ),
            // The same endpoint in another slice (another port) counts once.
            slice(
                "web-b",
                AddressType::V4,
                &[8080],
                vec![ep("10.244.1.1", "n1", Some(true))],
            ),
            slice(
                "web-6",
                AddressType::V6,
                &[80],
                vec![ep("fd00::1", "n1", Some(true))],
            ),
            // A slice without ports holds nothing upstream.
            slice(
                "web-c",
                AddressType::V4,
                &[],
                vec![ep("10.244.1.9", "n1", Some(true))],
            ),
        ],
    };
    assert_eq!(local_ready_endpoints(AddressType::V4, "n1", Some(&eps)), 2);
    assert_eq!(local_ready_endpoints(AddressType::V6, "n1", Some(&eps)), 1);
    assert_eq!(local_ready_endpoints(AddressType::V4, "n2", Some(&eps)), 1);
    assert_eq!(local_ready_endpoints(AddressType::V4, "n3", Some(&eps)), 0);
    assert_eq!(local_ready_endpoints(AddressType::V4, "n1", None), 0);
}

/// Whether nothing listens on `addr` any more.
async fn refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect(addr).await, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

/// A minimal HTTP/1.1 GET; `None` when the connection is refused.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, Vec<(String, String)>, String)> {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return None,
        Err(e) => panic!("connecting to {addr}: {e}"),
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((status, headers, body.to_owned()))
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn loopback() -> Option<BTreeSet<IpAddr>> {
    Some(BTreeSet::from([IpAddr::V4(Ipv4Addr::LOCALHOST)]))
}

#[tokio::test]
async fn service_listeners_answer_and_close_with_their_service() {
    let (health, clock) = clocked();
    health.updated(AddressType::V4);
    let mut server = ServiceHealthServer::new(AddressType::V4, loopback(), health.clone());
    let web = key("shop", "web");
    let db = key("shop", "db");
    // Port 0: the kernel picks free ports, read back through local_addrs.
    let wanted = BTreeMap::from([(web.clone(), 0), (db.clone(), 0)]);
    assert!(server.sync_services(&wanted).await.is_empty());
    let [web_addr] = server.local_addrs(&web)[..] else {
        panic!("one listener for web");
    };
    let [db_addr] = server.local_addrs(&db)[..] else {
        panic!("one listener for db");
    };
    assert_ne!(web_addr.port(), 0);

    // No endpoints reported yet: 503.
    let (status, headers, body) = get(web_addr, "/").await.expect("web listens");
    assert_eq!(status, 503);
    assert_eq!(
        find(&headers, "x-load-balancing-endpoint-weight"),
        Some("0")
    );
    assert_eq!(find(&headers, "content-type"), Some("application/json"));
    assert_eq!(find(&headers, "x-content-type-options"), Some("nosniff"));
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["service"]["name"], "web");
    assert_eq!(body["localEndpoints"], 0);

    server.sync_endpoints(&BTreeMap::from([
        (web.clone(), 3),
        (key("shop", "not-open"), 5),
    ]));
    let (status, headers, body) = get(web_addr, "/any/path").await.expect("web listens");
    assert_eq!(status, 200);
    assert_eq!(
        find(&headers, "x-load-balancing-endpoint-weight"),
        Some("3")
    );
    assert_eq!(
        body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 3,\n\t\"serviceProxyHealthy\": true\n}"
    );
    let (status, _, _) = get(db_addr, "/").await.expect("db listens");
    assert_eq!(status, 503, "db is missing from the counts: none");

    // The proxy falls behind: every Service check fails, endpoints or not.
    health.queued_update(AddressType::V4);
    clock.advance(TIMEOUT);
    let (status, _, body) = get(web_addr, "/").await.expect("web listens");
    assert_eq!(status, 503);
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["serviceProxyHealthy"], false);
    assert_eq!(body["localEndpoints"], 3);
    health.updated(AddressType::V4);

    // db goes: its port closes by the time sync_services returns; web stays as it was.
    let wanted = BTreeMap::from([(web.clone(), 0)]);
    assert!(server.sync_services(&wanted).await.is_empty());
    assert!(refused(db_addr).await, "db's listener is closed");
    assert_eq!(
        server.local_addrs(&web),
        vec![web_addr],
        "web kept its listener"
    );
    assert_eq!(get(web_addr, "/").await.expect("web listens").0, 200);

    // Dropping the server closes the rest.
    drop(server);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !refused(web_addr).await {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("web's listener closes after the server is dropped");
}

#[tokio::test]
async fn a_taken_port_is_reported_and_retried() {
    let (health, _) = clocked();
    let mut server = ServiceHealthServer::new(AddressType::V4, loopback(), health);
    let blocker = StdListener::bind("127.0.0.1:0").expect("bind blocker");
    let port = blocker.local_addr().expect("addr").port();
    let web = key("shop", "web");
    let wanted = BTreeMap::from([(web.clone(), port)]);

    let failures = server.sync_services(&wanted).await;
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].service(), Some(&web));
    assert_eq!(failures[0].reason(), "listen_failed");
    assert!(
        failures[0].event_note("n1").starts_with(&format!(
            "node n1 failed to start healthcheck \"shop/web\" on port {port}: "
        )),
        "{}",
        failures[0].event_note("n1")
    );
    assert_eq!(
        server.services().count(),
        0,
        "not open, so retried next time"
    );

    drop(blocker);
    assert!(server.sync_services(&wanted).await.is_empty());
    assert_eq!(server.services().collect::<Vec<_>>(), vec![(&web, port)]);
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    assert_eq!(get(addr, "/").await.expect("listens").0, 503);
}

#[tokio::test]
async fn listeners_move_with_their_port_and_addresses() {
    let (health, _) = clocked();
    // No addresses match: the Service is open but listens nowhere (upstream's CIDRs that match
    // no node address).
    let mut server = ServiceHealthServer::new(AddressType::V4, Some(BTreeSet::new()), health);
    let web = key("shop", "web");
    let first = StdListener::bind("127.0.0.1:0").expect("bind");
    let port = first.local_addr().expect("addr").port();
    drop(first);
    let wanted = BTreeMap::from([(web.clone(), port)]);
    assert!(server.sync_services(&wanted).await.is_empty());
    assert!(server.local_addrs(&web).is_empty());

    // Loopback becomes a listen address: the next sync opens the port there.
    server.set_addresses(loopback());
    assert!(server.sync_services(&wanted).await.is_empty());
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    assert_eq!(server.local_addrs(&web), vec![addr]);
    assert!(get(addr, "/").await.is_some());

    // The Service's port changes: the old one closes.
    let wanted = BTreeMap::from([(web.clone(), 0)]);
    assert!(server.sync_services(&wanted).await.is_empty());
    assert!(refused(addr).await, "the old port is closed");
    let [moved] = server.local_addrs(&web)[..] else {
        panic!("one listener");
    };
    assert!(get(moved, "/").await.is_some());
}

#[tokio::test]
async fn proxy_health_server_serves_healthz_and_livez() {
    let (health, clock) = clocked();
    health.updated(AddressType::V4);
    let server = ProxyHealthServer::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(health.clone(), async {
        let _ = stopped.await;
    }));

    let (status, headers, body) = get(addr, "/healthz").await.expect("listens");
    assert_eq!(status, 200);
    assert_eq!(find(&headers, "content-type"), Some("application/json"));
    assert_eq!(find(&headers, "x-content-type-options"), Some("nosniff"));
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["nodeEligible"], true);
    assert_eq!(body["status"]["IPv4"]["healthy"], true);

    health.set_node_eligible(false);
    assert_eq!(get(addr, "/healthz").await.expect("listens").0, 503);
    let (status, _, body) = get(addr, "/livez").await.expect("listens");
    assert_eq!(status, 200);
    assert!(!body.contains("nodeEligible"), "{body}");

    health.set_node_eligible(true);
    health.queued_update(AddressType::V4);
    clock.advance(TIMEOUT);
    assert_eq!(get(addr, "/healthz").await.expect("listens").0, 503);
    assert_eq!(get(addr, "/livez").await.expect("listens").0, 503);
    assert_eq!(get(addr, "/other").await.expect("listens").0, 404);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops on shutdown")
        .expect("no panic");
    assert!(refused(addr).await, "closed after shutdown");
}
