//! Least privilege, proven against the real API server: with `deploy/` applied, each
//! component's ServiceAccount asks what it may do (SelfSubjectRulesReview, in kube-system and in
//! an ordinary namespace) and the answer, less what a ServiceAccount without any binding may do
//! (discovery, self-reviews), must equal the checked-in `least_privilege.expected`. On top: only svcplane-allocator may read a Secret, and only its
//! own; only svcplane-proxy runs with host networking or NET_ADMIN.
//!
//! After a deliberate RBAC change, `SVCPLANE_BLESS=1 cargo test -p svcplane-testenv --test
//! least_privilege` rewrites the expectation; review its diff like code.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectRulesReview, SelfSubjectRulesReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::PodSpec;
use kube::api::{Api, ListParams, PostParams};
use svcplane_testenv::{TestEnv, kubelet, manifest};

const COMPONENTS: [&str; 4] = [
    "svcplane-allocator",
    "svcplane-dns",
    "svcplane-endpoints",
    "svcplane-proxy",
];

/// One line per (namespace, API group, resource, name): the verbs, sorted.
async fn rules(env: &TestEnv, token: &str, sa: &str) -> Vec<String> {
    let client = env.client_with_token(token).await.expect("token client");
    let api: Api<SelfSubjectRulesReview> = Api::all(client);
    let mut lines: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for ns in ["kube-system", "default"] {
        let review = SelfSubjectRulesReview {
            spec: SelfSubjectRulesReviewSpec {
                namespace: Some(ns.into()),
            },
            ..Default::default()
        };
        let status = api
            .create(&PostParams::default(), &review)
            .await
            .expect("rules review")
            .status
            .expect("status");
        assert!(!status.incomplete, "{sa} in {ns}: the review is incomplete");
        for rule in status.resource_rules {
            let groups = rule.api_groups.unwrap_or_default();
            let resources = rule.resources.unwrap_or_default();
            let names = rule.resource_names.unwrap_or_default();
            let names: Vec<String> = if names.is_empty() {
                vec!["*".into()]
            } else {
                names
            };
            for g in &groups {
                for r in &resources {
                    for n in &names {
                        let group = if g.is_empty() { "core" } else { g };
                        lines
                            .entry(format!("{sa} in {ns}: {group}/{r} name={n}"))
                            .or_default()
                            .extend(rule.verbs.iter().cloned());
                    }
                }
            }
        }
        for rule in status.non_resource_rules {
            for url in rule.non_resource_urls.unwrap_or_default() {
                lines
                    .entry(format!("{sa} in {ns}: url {url}"))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    lines
        .into_iter()
        .map(|(k, verbs)| format!("{k}: {}", verbs.into_iter().collect::<Vec<_>>().join(",")))
        .collect()
}

/// Whether `sa` may `verb` Secrets (in `namespace`, or any with None), named `name` if given.
async fn may_secrets(
    client: &kube::Client,
    sa: &str,
    verb: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:kube-system:{sa}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:kube-system".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some("secrets".into()),
                namespace: namespace.map(str::to_owned),
                name: name.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("access review")
        .status
        .is_some_and(|s| s.allowed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_account_may_do_exactly_what_is_expected() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    for file in [
        "svcplane-allocator-crds.yaml",
        "svcplane-allocator.yaml",
        "svcplane-endpoints.yaml",
        "svcplane-dns.yaml",
        "svcplane-proxy.yaml",
    ] {
        let yaml = std::fs::read_to_string(deploy.join(file)).expect("manifest");
        manifest::apply(&client, &yaml)
            .await
            .unwrap_or_else(|e| panic!("deploy/{file} rejected: {e}"));
    }

    // What any ServiceAccount may do (discovery, self-reviews): not listed per component.
    let token = kubelet::service_account_token(&client, "kube-system", "baseline")
        .await
        .expect("token");
    let baseline: std::collections::BTreeSet<String> =
        rules(&env, &token, "").await.into_iter().collect();
    let mut actual = Vec::new();
    for sa in COMPONENTS {
        let token = kubelet::service_account_token(&client, "kube-system", sa)
            .await
            .expect("token");
        actual.extend(
            rules(&env, &token, sa)
                .await
                .into_iter()
                .filter(|line| !baseline.contains(line.trim_start_matches(sa))),
        );
    }
    let actual = actual.join("\n") + "\n";
    let expected_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/least_privilege.expected");
    if std::env::var_os("SVCPLANE_BLESS").is_some() {
        std::fs::write(&expected_path, &actual).expect("write the expectation");
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    if actual != expected {
        let want: std::collections::BTreeSet<&str> = expected.lines().collect();
        let got: std::collections::BTreeSet<&str> = actual.lines().collect();
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        panic!(
            "RBAC differs from tests/least_privilege.expected\n  no longer granted: {missing:#?}\n  newly granted: {extra:#?}\n(after a deliberate change: SVCPLANE_BLESS=1 cargo test -p svcplane-testenv --test least_privilege)"
        );
    }

    // Secrets: only the allocator, only its own TLS Secret in kube-system.
    for sa in COMPONENTS {
        for verb in ["get", "list", "watch"] {
            assert!(
                !may_secrets(&client, sa, verb, None, None).await,
                "{sa} may {verb} Secrets in every namespace"
            );
            assert!(
                !may_secrets(
                    &client,
                    sa,
                    verb,
                    Some("kube-system"),
                    Some("some-other-secret")
                )
                .await,
                "{sa} may {verb} other Secrets in kube-system"
            );
        }
    }
    assert!(
        may_secrets(
            &client,
            "svcplane-allocator",
            "get",
            Some("kube-system"),
            Some("svcplane-allocator-tls")
        )
        .await,
        "the allocator keeps its CA in its own Secret"
    );
    for sa in ["svcplane-dns", "svcplane-endpoints", "svcplane-proxy"] {
        assert!(
            !may_secrets(
                &client,
                sa,
                "get",
                Some("kube-system"),
                Some("svcplane-allocator-tls")
            )
            .await,
            "{sa} may read the allocator's CA"
        );
    }

    // Host networking and NET_ADMIN: the proxy's DaemonSet only.
    let mut pods: Vec<(String, PodSpec)> = Vec::new();
    for d in Api::<Deployment>::namespaced(client.clone(), "kube-system")
        .list(&ListParams::default())
        .await
        .expect("deployments")
        .items
    {
        pods.push((
            d.metadata.name.unwrap_or_default(),
            d.spec.template.spec.unwrap_or_default(),
        ));
    }
    for d in Api::<DaemonSet>::namespaced(client.clone(), "kube-system")
        .list(&ListParams::default())
        .await
        .expect("daemonsets")
        .items
    {
        pods.push((
            d.metadata.name.unwrap_or_default(),
            d.spec.template.spec.unwrap_or_default(),
        ));
    }
    assert_eq!(
        pods.len(),
        4,
        "{:?}",
        pods.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    for (name, spec) in pods {
        let proxy = name == "svcplane-proxy";
        assert_eq!(
            spec.host_network.unwrap_or(false),
            proxy,
            "{name}: hostNetwork"
        );
        for c in &spec.containers {
            let caps = c
                .security_context
                .as_ref()
                .and_then(|s| s.capabilities.as_ref());
            let added = caps.and_then(|c| c.add.clone()).unwrap_or_default();
            let want: Vec<String> = if proxy {
                vec!["NET_ADMIN".into()]
            } else {
                Vec::new()
            };
            assert_eq!(added, want, "{name}: capabilities added");
            let dropped = caps.and_then(|c| c.drop.clone()).unwrap_or_default();
            assert_eq!(
                dropped,
                vec!["ALL".to_owned()],
                "{name}: capabilities dropped"
            );
            assert_eq!(
                c.security_context
                    .as_ref()
                    .and_then(|s| s.allow_privilege_escalation),
                Some(false),
                "{name}: allowPrivilegeEscalation"
            );
        }
    }
}
