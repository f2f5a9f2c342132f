use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::*;

const NAME: &str = "webhook.test";

/// A CA and a leaf it signed for [`NAME`] and 127.0.0.1, all PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki(ca_name: &str, leaf_not_after: Option<SystemTime>) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().expect("leaf key");
    let mut leaf =
        CertificateParams::new(vec![NAME.to_owned(), "127.0.0.1".to_owned()]).expect("params");
    leaf.distinguished_name.push(DnType::CommonName, NAME);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if let Some(not_after) = leaf_not_after {
        leaf.not_before = (not_after - Duration::from_secs(7200)).into();
        leaf.not_after = not_after.into();
    }
    let cert = leaf.signed_by(&key, &issuer).expect("leaf cert");
    Pki {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn store(pki: &Pki) -> CertStore {
    CertStore::from_pem(pki.cert.as_bytes(), pki.key.as_bytes()).expect("store")
}

/// A server on loopback whose handler sends each body it sees to `seen` and answers 200 with
/// the body's length.
struct Running {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Bytes>,
    calls: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(store: CertStore, max_body: Option<usize>) -> Running {
    let mut server = TlsServer::bind("127.0.0.1:0".parse().expect("addr"), store)
        .await
        .expect("bind");
    if let Some(max) = max_body {
        server = server.with_max_body(max);
    }
    let addr = server.local_addr().expect("addr");
    let (tx, seen) = mpsc::unbounded_channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let handler: Handler = Arc::new(move |req: Request<Bytes>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let body = req.into_body();
        let _ = tx.send(body.clone());
        Box::pin(async move { Response::new(Full::new(Bytes::from(format!("{}", body.len())))) })
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(handler, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        seen,
        calls,
        stop: Some(stop),
        task,
    }
}

fn connector(trusted_pem: &str) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(trusted_pem.as_bytes()) {
        roots.add(ca.expect("CA PEM")).expect("CA");
    }
    let mut config = ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Offered like the API server's client does; the server must pick HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn connect(addr: SocketAddr, trusted_pem: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(NAME).expect("name");
    connector(trusted_pem).connect(name, tcp).await
}

fn post(body: &[u8], close: bool) -> Vec<u8> {
    let mut req = format!(
        "POST /mutate HTTP/1.1\r\nHost: {NAME}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// Reads one response with a Content-Length body; returns its status and body.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> (u16, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if raw.len() >= end + 4 + len {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("status");
                let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).into_owned();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("response within 5s")
            .expect("read");
        assert!(n > 0, "connection closed mid-response: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    }
}

/// One request on a fresh connection trusting `trusted_pem`.
async fn call(addr: SocketAddr, trusted_pem: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut tls = connect(addr, trusted_pem).await?;
    tls.write_all(&post(body, true)).await?;
    Ok(read_response(&mut tls).await)
}

#[tokio::test]
async fn serves_posts_over_tls_with_keep_alive() {
    let pki = pki("ca-one", None);
    let mut server = serve(store(&pki), None).await;

    let mut tls = connect(server.addr, &pki.ca).await.expect("handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "HTTP/1.1 negotiated"
    );
    tls.write_all(&post(br#"{"kind":"AdmissionReview"}"#, false))
        .await
        .expect("write");
    assert_eq!(read_response(&mut tls).await, (200, "26".to_owned()));
    assert_eq!(
        server.seen.recv().await.expect("seen"),
        Bytes::from_static(br#"{"kind":"AdmissionReview"}"#)
    );

    // Same connection, second request.
    tls.write_all(&post(b"again", true)).await.expect("write");
    assert_eq!(read_response(&mut tls).await, (200, "5".to_owned()));
    assert_eq!(server.seen.recv().await.expect("seen"), "again");

    let _ = server.stop.take().map(|s| s.send(()));
    tokio::time::timeout(Duration::from_secs(1), &mut server.task)
        .await
        .expect("serve returns on shutdown")
        .expect("serve task");
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn a_replaced_certificate_serves_new_handshakes() {
    let (one, two) = (pki("ca-one", None), pki("ca-two", None));
    let store = store(&one);
    let server = serve(store.clone(), None).await;

    let mut open = connect(server.addr, &one.ca).await.expect("handshake");
    open.write_all(&post(b"x", false)).await.expect("write");
    assert_eq!(read_response(&mut open).await.0, 200);

    store
        .replace_pem(two.cert.as_bytes(), two.key.as_bytes())
        .expect("replace");
    assert!(
        connect(server.addr, &one.ca).await.is_err(),
        "a new handshake no longer verifies against the first CA"
    );
    assert_eq!(
        call(server.addr, &two.ca, b"hi").await.expect("second CA"),
        (200, "2".to_owned())
    );
    // A connection from before the replacement carries on.
    open.write_all(&post(b"yz", true)).await.expect("write");
    assert_eq!(read_response(&mut open).await, (200, "2".to_owned()));
}

#[tokio::test]
async fn bad_pem_is_refused_and_the_old_certificate_stays() {
    let (one, two) = (pki("ca-one", None), pki("ca-two", None));
    let store = store(&one);
    let server = serve(store.clone(), None).await;
    let key = one.key.as_bytes();

    let garbage = store.replace_pem(b"not a certificate", key);
    assert!(matches!(garbage, Err(Error::NoCertificate)), "{garbage:?}");
    let half = &one.cert.as_bytes()[..one.cert.len() / 2];
    let truncated = store.replace_pem(half, key);
    assert!(
        matches!(truncated, Err(Error::CertificatePem(_))),
        "{truncated:?}"
    );
    let no_key = store.replace_pem(two.cert.as_bytes(), b"");
    assert!(matches!(no_key, Err(Error::NoKey)), "{no_key:?}");
    let mismatch = store.replace_pem(two.cert.as_bytes(), key);
    assert!(
        matches!(mismatch, Err(Error::KeyMismatch(_))),
        "{mismatch:?}"
    );
    let not_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let bad_der = store.replace_pem(not_der.as_bytes(), key);
    assert!(matches!(bad_der, Err(Error::KeyMismatch(_))), "{bad_der:?}");
    assert!(CertStore::from_pem(b"", key).is_err());

    assert_eq!(
        call(server.addr, &one.ca, b"ok").await.expect("old CA"),
        (200, "2".to_owned())
    );
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "svcplane-runtime-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn reload_files_picks_up_a_new_pair_and_skips_half_written_ones() {
    let (one, two) = (pki("ca-one", None), pki("ca-two", None));
    let dir = TempDir::new();
    let (cert, key) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
    std::fs::write(&cert, &one.cert).expect("write");
    std::fs::write(&key, &one.key).expect("write");
    let store = store(&one);
    let server = serve(store.clone(), None).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let reload = tokio::spawn(store.clone().reload_files(
        cert.clone(),
        key.clone(),
        Duration::from_millis(50),
        async {
            let _ = stopped.await;
        },
    ));

    // The new certificate has landed, its key not yet.
    std::fs::write(&cert, &two.cert).expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        call(server.addr, &one.ca, b"").await.is_ok(),
        "the old pair is served while the new one is half-written"
    );

    std::fs::write(&key, &two.key).expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    while call(server.addr, &two.ca, b"").await.is_err() {
        assert!(Instant::now() < deadline, "new pair not served within 5s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connect(server.addr, &one.ca).await.is_err());

    // A missing file keeps the current pair too.
    std::fs::remove_file(&key).expect("remove");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(call(server.addr, &two.ca, b"").await.is_ok());

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(1), reload)
        .await
        .expect("reload returns on shutdown")
        .expect("reload task");
}

#[tokio::test]
async fn oversized_bodies_get_413_without_reaching_the_handler() {
    let pki = pki("ca-one", None);

    // Declared too long: refused before the body is sent.
    let server = serve(store(&pki), None).await;
    let mut tls = connect(server.addr, &pki.ca).await.expect("handshake");
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: {NAME}\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    tls.write_all(head.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut tls).await.0, 413);
    assert_eq!(
        call(server.addr, &pki.ca, &[b'a'; 1000])
            .await
            .expect("call")
            .0,
        200
    );
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);

    // Chunked, so only reading tells: cut off at the cap.
    let server = serve(store(&pki), Some(16)).await;
    let mut tls = connect(server.addr, &pki.ca).await.expect("handshake");
    let chunked = format!(
        "POST /mutate HTTP/1.1\r\nHost: {NAME}\r\nTransfer-Encoding: chunked\r\n\r\n\
         40\r\n{}\r\n0\r\n\r\n",
        "b".repeat(64)
    );
    tls.write_all(chunked.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut tls).await.0, 413);
    assert_eq!(server.calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        call(server.addr, &pki.ca, &[b'c'; 16]).await.expect("call"),
        (200, "16".to_owned()),
        "a body of exactly the cap is fine"
    );
}

#[test]
fn verify_server_cert_checks_issuer_names_and_time() {
    let not_after = SystemTime::now() + Duration::from_secs(3600);
    let (one, two) = (pki("ca-one", Some(not_after)), pki("ca-two", None));
    let now = SystemTime::now();
    let verify = |trusted: &str, name: &str, at: SystemTime| {
        verify_server_cert(trusted.as_bytes(), one.cert.as_bytes(), name, at)
    };

    verify(&one.ca, NAME, now).expect("DNS name");
    verify(&one.ca, "127.0.0.1", now).expect("IP address");
    let bundle = format!("{}{}", two.ca, one.ca);
    verify(&bundle, NAME, now).expect("either CA of a bundle");
    assert!(matches!(
        verify(&one.ca, "other.test", now),
        Err(Error::Verification { .. })
    ));
    assert!(matches!(
        verify(&two.ca, NAME, now),
        Err(Error::Verification { .. })
    ));
    assert!(matches!(
        verify(&one.ca, NAME, not_after + Duration::from_secs(60)),
        Err(Error::Verification { .. })
    ));
    assert!(matches!(verify("", NAME, now), Err(Error::NoTrustedCa)));
    assert!(matches!(
        verify(&one.ca, "not a name!", now),
        Err(Error::InvalidServerName { .. })
    ));
}
