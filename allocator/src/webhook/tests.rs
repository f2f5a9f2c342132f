use std::time::Duration;

use k8s_openapi::api::networking::v1::ServiceCIDR;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::*;
use crate::ranges::PortRange;

fn allocator() -> Allocator {
    let mut idx = Index::new(PortRange::DEFAULT, Duration::from_secs(60));
    let cidr: ServiceCIDR = serde_json::from_value(json!({
        "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16"]}
    }))
    .expect("servicecidr");
    idx.apply_service_cidr("kubernetes", Some(&cidr));
    let a = Allocator::new(
        idx,
        Sticky::new(Duration::from_secs(60), 100),
        Policy::default(),
        Metrics::unregistered(),
    );
    a.set_leading(true);
    a.set_synced(true);
    a
}

fn review(operation: &str, object: Value, old: Option<Value>) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0d1d7c3a-7b5e-4a1c-9d7e-2a1f3c4b5d6e",
            "kind": {"group": "", "version": "v1", "kind": "Service"},
            "resource": {"group": "", "version": "v1", "resource": "services"},
            "requestKind": {"group": "", "version": "v1", "kind": "Service"},
            "requestResource": {"group": "", "version": "v1", "resource": "services"},
            "name": "web",
            "namespace": "default",
            "operation": operation,
            "userInfo": {"username": "admin", "groups": ["system:masters"]},
            "object": object,
            "oldObject": old,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                 "selector": {"app": "web"}, "sessionAffinity": "None", "externalTrafficPolicy": "Cluster",
                 "internalTrafficPolicy": "Cluster"}
    })
}

fn response(a: &Answer) -> Value {
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let v: Value = serde_json::from_slice(&a.body).expect("json");
    v["response"].clone()
}

#[test]
fn create_is_patched_with_a_json_patch() {
    let a = allocator();
    let body = serde_json::to_vec(&review("CREATE", service(), None)).expect("json");
    let r = response(&a.review(&body));
    assert_eq!(r["uid"], "0d1d7c3a-7b5e-4a1c-9d7e-2a1f3c4b5d6e");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    let patch: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            r["patch"].as_str().expect("patch"),
        )
        .expect("base64"),
    )
    .expect("patch json");
    let paths: Vec<&str> = patch
        .as_array()
        .expect("ops")
        .iter()
        .filter_map(|o| o["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/clusterIP",
            "/spec/clusterIPs",
            "/spec/ports/0/nodePort"
        ]
    );
}

#[test]
fn denial_carries_the_reason() {
    let a = allocator();
    let mut s = service();
    s["spec"]["ports"][0]["nodePort"] = json!(20000);
    let body = serde_json::to_vec(&review("CREATE", s, None)).expect("json");
    let r = response(&a.review(&body));
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 422);
    let msg = r["status"]["message"].as_str().expect("message");
    assert!(
        msg.contains("20000 is not in the valid range") && msg.contains("30000-32767"),
        "{msg}"
    );
}

#[test]
fn followers_and_other_requests_admit_unchanged() {
    let a = allocator();
    a.set_leading(false);
    let body = serde_json::to_vec(&review("CREATE", service(), None)).expect("json");
    let r = response(&a.review(&body));
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none_or(Value::is_null));
    a.set_leading(true);
    let body = serde_json::to_vec(&review("DELETE", service(), None)).expect("json");
    assert!(
        response(&a.review(&body))
            .get("patch")
            .is_none_or(Value::is_null)
    );
    let mut r = review("CREATE", service(), None);
    r["request"]["resource"]["resource"] = json!("configmaps");
    assert!(
        response(&a.review(&serde_json::to_vec(&r).expect("json")))
            .get("patch")
            .is_none_or(Value::is_null)
    );
}

#[test]
fn unreadable_service_is_admitted_with_a_warning() {
    let a = allocator();
    let mut s = service();
    s["spec"]["ports"] = json!("eighty");
    let body = serde_json::to_vec(&review("CREATE", s, None)).expect("json");
    let r = response(&a.review(&body));
    assert_eq!(r["allowed"], true);
    assert!(
        r["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("could not read")),
        "{r}"
    );
}

#[test]
fn malformed_bodies_get_400() {
    let a = allocator();
    for body in [
        &b""[..],
        b"{",
        b"[]",
        b"{\"kind\":\"AdmissionReview\"}",
        b"\xff\xfe",
    ] {
        let ans = a.review(body);
        assert_eq!(ans.status, 400, "{:?}", String::from_utf8_lossy(body));
        assert!(!ans.body.is_empty());
    }
}

/// Mutation test of the decoder: thousands of damaged reviews (bytes flipped, cut, fields
/// replaced with values of other types) must each get a 400 or a well-formed review answering
/// the same uid; none may panic, and the allocator must still work afterwards.
#[test]
fn damaged_reviews_never_panic() {
    let a = allocator();
    let base = serde_json::to_vec(&review("CREATE", service(), None)).expect("json");
    let base_value = review("UPDATE", service(), Some(service()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let odd = [
        json!(null),
        json!(-1),
        json!(1e308),
        json!("x"),
        json!([]),
        json!({}),
        json!(true),
        json!("10.96.0.1/33"),
        json!(70000),
    ];
    for round in 0..4000 {
        let body = if round % 2 == 0 {
            let mut b = base.clone();
            match rng.random_range(0..3) {
                0 => {
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..b.len());
                        b[i] = rng.random();
                    }
                }
                1 => b.truncate(rng.random_range(0..b.len())),
                _ => {
                    let i = rng.random_range(0..b.len());
                    b.insert(i, b"{[\",:}]"[rng.random_range(0..7)]);
                }
            }
            b
        } else {
            let mut v = base_value.clone();
            // Replace one random leaf or object member with an odd value.
            let mut pointer = String::new();
            let mut node = &v;
            for _ in 0..rng.random_range(1..6) {
                let next = match node {
                    Value::Object(m) if !m.is_empty() => {
                        let k = m
                            .keys()
                            .nth(rng.random_range(0..m.len()))
                            .cloned()
                            .expect("key");
                        pointer.push_str(&format!("/{k}"));
                        m.get(&k)
                    }
                    Value::Array(items) if !items.is_empty() => {
                        let i = rng.random_range(0..items.len());
                        pointer.push_str(&format!("/{i}"));
                        items.get(i)
                    }
                    _ => None,
                };
                match next {
                    Some(n) => node = n,
                    None => break,
                }
            }
            let odd_value = odd[rng.random_range(0..odd.len())].clone();
            if let Some(target) = v.pointer_mut(&pointer) {
                *target = odd_value;
            }
            serde_json::to_vec(&v).expect("json")
        };
        let ans = a.review(&body);
        match ans.status {
            400 => assert!(!ans.json),
            200 => {
                let v: Value = serde_json::from_slice(&ans.body).expect("a 200 carries JSON");
                assert!(v["response"]["allowed"].is_boolean(), "{v}");
            }
            other => panic!("status {other}"),
        }
    }
    let body = serde_json::to_vec(&review("CREATE", service(), None)).expect("json");
    assert_eq!(response(&a.review(&body))["allowed"], true);
}
