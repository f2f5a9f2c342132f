//! A fault-injecting proxy between the components and kube-apiserver, on loopback. It
//! terminates TLS with the API server's own serving certificate (so the components' kubeconfigs
//! trust it unchanged), and for each request either answers with an error status (429 with
//! `Retry-After`, 500, 503), waits before forwarding, or forwards it at once over a fresh TLS
//! connection to the real API server. Responses stream, so watches pass through. Changing the
//! mode cuts every open connection, so clients with long-running watches meet it too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use svcplane_runtime::tls::{rustls, tokio_rustls};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// What the proxy does to requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mode {
    /// Every request waits this long before it is forwarded (or failed).
    pub delay: Duration,
    /// This status (429, 500, 503) answers `percent` of requests…
    pub status: Option<u16>,
    /// …in every hundred, spread evenly.
    pub percent: u64,
}

/// What passed through.
#[derive(Debug, Default)]
struct Counts {
    forwarded: AtomicU64,
    failed: AtomicU64,
}

type Body = BoxBody<Bytes, hyper::Error>;

/// The running proxy; dropping it stops it.
#[derive(Debug)]
pub struct ApiFaults {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    cut: watch::Sender<u64>,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

fn error(status: u16) -> Response<Body> {
    let reason = match status {
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "injected by the fault suite", "reason": reason, "code": status,
    })
    .to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if status == 429 {
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    response
}

impl ApiFaults {
    /// Listens on a free loopback port in front of `upstream`, serving the certificate and key
    /// in `dir` (`apiserver.crt`, `apiserver.key`) and trusting `ca.crt` from there.
    pub async fn start(dir: &Path, upstream: SocketAddr) -> anyhow::Result<ApiFaults> {
        let read = |f: &str| std::fs::read(dir.join(f)).with_context(|| format!("reading {f}"));
        let chain = CertificateDer::pem_slice_iter(&read("apiserver.crt")?)
            .collect::<Result<Vec<_>, _>>()
            .context("apiserver.crt")?;
        let key =
            PrivateKeyDer::from_pem_slice(&read("apiserver.key")?).context("apiserver.key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&read("ca.crt")?) {
            roots.add(ca.context("ca.crt")?)?;
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(Mutex::new(Mode::default()));
        let counts = Arc::new(Counts::default());
        let (cut, cuts) = watch::channel(0u64);
        let (m, c) = (mode.clone(), counts.clone());
        let task = tokio::spawn(async move {
            let serial = Arc::new(AtomicU64::new(0));
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, connector) = (acceptor.clone(), connector.clone());
                let (mode, counts, serial) = (m.clone(), c.clone(), serial.clone());
                let mut cuts = cuts.clone();
                // Only a change after this connection came cuts it.
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (connector, mode, counts, serial) = (
                            connector.clone(),
                            mode.clone(),
                            counts.clone(),
                            serial.clone(),
                        );
                        async move {
                            let now = *mode.lock().unwrap_or_else(PoisonError::into_inner);
                            if !now.delay.is_zero() {
                                tokio::time::sleep(now.delay).await;
                            }
                            let n = serial.fetch_add(1, Ordering::Relaxed) % 100;
                            if let Some(status) = now.status.filter(|_| n < now.percent) {
                                counts.failed.fetch_add(1, Ordering::Relaxed);
                                return Ok::<_, Infallible>(error(status));
                            }
                            counts.forwarded.fetch_add(1, Ordering::Relaxed);
                            Ok(forward(&connector, upstream, request)
                                .await
                                .unwrap_or_else(|_| error(503)))
                        }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Ok(ApiFaults {
            addr,
            mode,
            cut,
            counts,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `mode` from now on and cuts every open connection.
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
        self.cut.send_modify(|n| *n += 1);
    }

    /// Requests forwarded and requests failed so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.forwarded.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for ApiFaults {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    connector: &tokio_rustls::TlsConnector,
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> anyhow::Result<Response<Body>> {
    let tcp = TcpStream::connect(upstream).await?;
    let tls = connector
        .connect(ServerName::IpAddress(upstream.ip().into()), tcp)
        .await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    Ok(response.map(|b| b.boxed()))
}
