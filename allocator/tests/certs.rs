//! Self-managed webhook certificates against a real kube-apiserver: the leader creates the
//! Secret, publishes the CA bundle in every webhook of the MutatingWebhookConfiguration (also
//! when that appears later), rotates serving certificate and CA, and the store serves a
//! certificate a client holding the published bundle accepts; a replica that does not lead only
//! reads, and starts writing once it leads.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use svcplane_testenv::wait::eventually;

use bytes::Bytes;
use http_body_util::Full;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use svcplane_allocator::certs::{self, CA_CRT, CA_KEY, SelfManaged, TLS_CRT, TLS_KEY};
use svcplane_runtime::tls::rustls::pki_types::pem::PemObject;
use svcplane_runtime::tls::rustls::pki_types::{CertificateDer, ServerName};
use svcplane_runtime::tls::rustls::{self, ClientConfig, RootCertStore};
use svcplane_runtime::tls::tokio_rustls::TlsConnector;
use svcplane_runtime::tls::{CertStore, Handler, TlsServer};
use svcplane_testenv::TestEnv;
use tokio::sync::{oneshot, watch};

const NS: &str = "default";
const SECRET: &str = "svcplane-allocator-tls";
const WEBHOOKS: &str = "svcplane-allocator";
const NAME: &str = "svcplane-allocator.default.svc";
const WAIT: Duration = Duration::from_secs(30);

fn cfg() -> SelfManaged {
    SelfManaged {
        namespace: NS.into(),
        secret_name: SECRET.into(),
        webhook_configuration: WEBHOOKS.into(),
        dns_names: vec![NAME.into(), format!("{NAME}.cluster.local")],
        ip_sans: vec![IpAddr::from([127, 0, 0, 1])],
        // The CA lives 18 s: rotated after about 12 s. Rounds are 1 s apart.
        validity: Duration::from_secs(6),
    }
}

fn webhook(name: &str) -> MutatingWebhook {
    MutatingWebhook {
        name: name.into(),
        admission_review_versions: vec!["v1".into()],
        side_effects: "None".into(),
        failure_policy: Some("Ignore".into()),
        client_config: WebhookClientConfig {
            url: Some("https://127.0.0.1:1/x".into()),
            ..Default::default()
        },
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
            resources: Some(vec!["services".into()]),
            scope: None,
        }]),
        ..Default::default()
    }
}

/// Serves `store` on loopback until the returned sender is dropped.
async fn serve(store: CertStore) -> (SocketAddr, oneshot::Sender<()>) {
    let server = TlsServer::bind("127.0.0.1:0".parse().expect("addr"), store)
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let handler: Handler = Arc::new(|_req: http::Request<Bytes>| {
        Box::pin(async { http::Response::new(Full::new(Bytes::from_static(b"ok"))) })
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(handler, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// A TLS handshake with the server at `addr` by a client that trusts only `trusted_pem` and
/// asks for the Service's name, as the API server would.
async fn handshake(addr: SocketAddr, trusted_pem: &[u8]) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(trusted_pem) {
        roots
            .add(ca.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(NAME).map_err(|e| e.to_string())?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn data(secret: &Secret, key: &str) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

/// The caBundle of each webhook, once all of them carry the same one.
async fn published(api: &Api<MutatingWebhookConfiguration>) -> Result<Vec<u8>, String> {
    let config = api.get(WEBHOOKS).await.map_err(|e| e.to_string())?;
    let bundles: Vec<Vec<u8>> = config
        .webhooks
        .iter()
        .flatten()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.clone())
                .unwrap_or_default()
        })
        .collect();
    match bundles.as_slice() {
        [first, second] if first == second && !first.is_empty() => Ok(first.clone()),
        other => Err(format!(
            "{} webhooks, bundles differ or are empty",
            other.len()
        )),
    }
}

fn certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("PEM")
}

fn pem(cert: &CertificateDer<'_>) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_managed_certificates_are_created_published_rotated_and_read_by_followers() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());

    let store = certs::bootstrap_store();
    let (addr, _server) = serve(store.clone()).await;
    let (_leading, leading_rx) = watch::channel(true);
    let (stop_leader, leader_stopped) = oneshot::channel::<()>();
    let leader = tokio::spawn(certs::run(
        client.clone(),
        cfg(),
        store.clone(),
        leading_rx,
        async {
            let _ = leader_stopped.await;
        },
    ));

    // No webhook configuration yet: the Secret is made anyway and its certificate served.
    let secret = eventually(WAIT, "the Secret", || async {
        match secrets.get_opt(SECRET).await {
            Ok(Some(s)) => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    for key in [TLS_CRT, TLS_KEY, CA_CRT, CA_KEY] {
        assert!(!data(&secret, key).is_empty(), "{key}");
    }
    eventually(WAIT, "the Secret's certificate served", || async {
        let secret = secrets.get(SECRET).await.map_err(|e| e.to_string())?;
        handshake(addr, &data(&secret, CA_CRT)).await
    })
    .await;

    // The configuration applied later gets the bundle on both webhooks.
    configs
        .create(
            &PostParams::default(),
            &MutatingWebhookConfiguration {
                metadata: ObjectMeta {
                    name: Some(WEBHOOKS.into()),
                    ..Default::default()
                },
                webhooks: Some(vec![webhook("a.svcplane.dev"), webhook("b.svcplane.dev")]),
            },
        )
        .await
        .expect("create the webhook configuration");
    // Certificates live seconds here, so each check that they verify "now" is retried rather
    // than racing a reissue on a busy machine.
    let first = eventually(WAIT, "the bundle published and trusted", || async {
        let bundle = published(&configs).await?;
        let secret = secrets.get(SECRET).await.map_err(|e| e.to_string())?;
        if bundle != data(&secret, CA_CRT) {
            return Err("the published bundle is not the Secret's".into());
        }
        handshake(addr, &bundle).await?;
        Ok(bundle)
    })
    .await;
    assert_eq!(certificates(&first).len(), 1, "one CA so far");

    // The CA rotates: the new one heads the bundle and the old one stays; the certificate is
    // then reissued from the new CA, and verifies with the bundle the API server holds.
    let old_ca = certificates(&first).remove(0);
    let rotated = eventually(WAIT, "the CA rotated", || async {
        let bundle = published(&configs).await?;
        match certificates(&bundle).as_slice() {
            [new, old] if *old == old_ca && *new != old_ca => Ok(bundle),
            other => Err(format!("{} CAs in the bundle", other.len())),
        }
    })
    .await;
    let new_ca = pem(&certificates(&rotated)[0]);
    eventually(
        WAIT,
        "a certificate from the new CA served, trusted with the published bundle",
        || async {
            handshake(addr, &new_ca).await?;
            handshake(addr, &published(&configs).await?).await
        },
    )
    .await;
    assert!(
        handshake(addr, &pem(&old_ca)).await.is_err(),
        "no longer from the old CA"
    );

    let _ = stop_leader.send(());
    tokio::time::timeout(Duration::from_secs(5), leader)
        .await
        .expect("run returns on shutdown")
        .expect("run task");

    // A replica that does not lead serves what the Secret holds and writes nothing, though the
    // serving certificate expires meanwhile.
    let before_secret = secrets.get(SECRET).await.expect("Secret");
    let before_configs = configs.get(WEBHOOKS).await.expect("configuration");
    let follower_store = certs::bootstrap_store();
    let (follower_addr, _follower_server) = serve(follower_store.clone()).await;
    let (leading, leading_rx) = watch::channel(false);
    let (_stop_follower, follower_stopped) = oneshot::channel::<()>();
    tokio::spawn(certs::run(
        client.clone(),
        cfg(),
        follower_store.clone(),
        leading_rx,
        async {
            let _ = follower_stopped.await;
        },
    ));
    let secret_leaf = certificates(&data(&before_secret, TLS_CRT)).remove(0);
    eventually(
        WAIT,
        "the follower serves the Secret's certificate",
        || async {
            if follower_store.current().cert.first() == Some(&secret_leaf) {
                Ok(())
            } else {
                Err("still another certificate".to_owned())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after_secret = secrets.get(SECRET).await.expect("Secret");
    let after_configs = configs.get(WEBHOOKS).await.expect("configuration");
    assert_eq!(
        after_secret.metadata.resource_version, before_secret.metadata.resource_version,
        "a follower does not write the Secret"
    );
    assert_eq!(
        after_configs.metadata.resource_version, before_configs.metadata.resource_version,
        "a follower does not write the webhook configuration"
    );

    // Once it leads, it renews the expired certificate.
    leading.send(true).expect("follower running");
    eventually(WAIT, "the new leader renews", || async {
        let secret = secrets.get(SECRET).await.map_err(|e| e.to_string())?;
        if secret.metadata.resource_version == before_secret.metadata.resource_version {
            return Err("Secret unchanged".into());
        }
        let bundle = published(&configs).await?;
        handshake(follower_addr, &bundle).await
    })
    .await;
}
