//! An HTTPS listener for the allocator's admission webhook: HTTP/1.1 over rustls (ring), with a
//! serving certificate that can be replaced while the server runs.
//!
//! The certificate lives in a [`CertStore`]; every handshake asks the store, so a replaced
//! certificate is served from the next handshake on, without restarting the listener or
//! dropping connections. Where the certificate comes from (files a Secret volume refreshes, or
//! a Secret the component manages itself) is the caller's business; [`CertStore::reload_files`]
//! covers the first case.
//!
//! The crypto provider is passed explicitly everywhere: nothing here depends on, or installs,
//! a process-wide default provider.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use crate::admin::text;
use crate::error_chain;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

// Re-exported so dependents (and their tests' TLS clients) use the very versions this module
// serves with.
pub use {rustls, tokio_rustls};

/// The largest request body the server reads: the API server's own limit on a request, which
/// bounds any AdmissionReview it can send.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How long a client has to complete the TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client has to send a request's headers once the connection is up or idle.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request body may take to arrive.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at accept, so slow or hostile clients cannot
/// hold more than this many bodies (each at most the body cap) in memory.
pub const MAX_CONNECTIONS: usize = 256;

/// What went wrong loading certificates, binding the listener or verifying a chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("parsing the certificate chain PEM")]
    CertificatePem(#[source] pem::Error),
    #[error("no certificate in the certificate chain PEM")]
    NoCertificate,
    #[error("parsing the private key PEM")]
    KeyPem(#[source] pem::Error),
    #[error("no private key in the key PEM")]
    NoKey,
    #[error("the private key is unusable or does not match the certificate")]
    KeyMismatch(#[source] rustls::Error),
    #[error("building the TLS server configuration")]
    ServerConfig(#[source] rustls::Error),
    #[error("binding the TLS server to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the trusted CA PEM")]
    TrustedPem(#[source] pem::Error),
    #[error("no usable CA certificate in the trusted CA PEM")]
    NoTrustedCa,
    #[error("{name:?} is not a DNS name or IP address")]
    InvalidServerName { name: String },
    #[error("the certificate does not verify for {name}")]
    Verification {
        name: String,
        #[source]
        source: rustls::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the server calls for each request, with the whole body read.
pub type Handler = Arc<
    dyn Fn(Request<Bytes>) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// The current serving certificate chain and key. Clones share the certificate: a replacement
/// through any clone is seen by the next handshake of every server using the store.
#[derive(Clone)]
pub struct CertStore {
    resolver: Arc<Resolver>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is not printed; the chain length says enough to tell stores apart in logs.
        f.debug_struct("CertStore")
            .field("chain_len", &self.resolver.current.load().cert.len())
            .finish()
    }
}

/// The rustls side of the store, kept out of the public type so the trait stays an
/// implementation detail.
#[derive(Debug)]
struct Resolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertStore {
    /// A store serving `cert_chain_pem` (leaf first) with `key_pem` (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let key = certified_key(cert_chain_pem, key_pem)?;
        Ok(Self {
            resolver: Arc::new(Resolver {
                current: ArcSwap::from_pointee(key),
            }),
        })
    }

    /// Serves a new chain and key from the next handshake on. A pair that does not parse, or
    /// whose key does not match its leaf, is refused and the current one stays.
    pub fn replace_pem(&self, cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<()> {
        let key = certified_key(cert_chain_pem, key_pem)?;
        self.resolver.current.store(Arc::new(key));
        Ok(())
    }

    /// The chain and key handshakes get right now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.resolver.current.load_full()
    }

    fn server_config(&self) -> Result<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(PROVIDER.clone())
            .with_safe_default_protocol_versions()
            .map_err(Error::ServerConfig)?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Polls `cert` and `key` every `every` until `shutdown` resolves, and serves their
    /// contents whenever they change. A pair that is bad or half-written (say, the certificate
    /// already new and the key still old) is logged and skipped; the current certificate stays
    /// until a later poll reads a good pair.
    pub async fn reload_files(
        self,
        cert: PathBuf,
        key: PathBuf,
        every: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The contents last tried, good or bad, so a bad pair is reported once, not every poll.
        let mut last: Option<(Vec<u8>, Vec<u8>)> = None;
        let mut read_failed = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = interval.tick() => {}
            }
            let pair = match read_pair(&cert, &key).await {
                Ok(pair) => {
                    read_failed = false;
                    pair
                }
                Err(error) => {
                    if !read_failed {
                        tracing::warn!(
                            error = %error_chain(&error),
                            "reading the serving certificate files failed; keeping the current one"
                        );
                    }
                    read_failed = true;
                    continue;
                }
            };
            if last.as_ref() == Some(&pair) {
                continue;
            }
            match self.replace_pem(&pair.0, &pair.1) {
                Ok(()) => tracing::info!(
                    cert.path = %cert.display(),
                    "serving certificate loaded"
                ),
                Err(error) => tracing::warn!(
                    cert.path = %cert.display(),
                    error = %error_chain(&error),
                    "serving certificate files are not a usable pair (yet); keeping the current one"
                ),
            }
            last = Some(pair);
        }
    }
}

async fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let (cert, key) = (cert.to_owned(), key.to_owned());
    let read = |path: PathBuf| std::fs::read(&path).map_err(|source| Error::Read { path, source });
    let path = cert.clone();
    tokio::task::spawn_blocking(move || Ok((read(cert)?, read(key)?)))
        .await
        .map_err(|join| Error::Read {
            path,
            source: std::io::Error::other(join),
        })?
}

fn certified_key(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::CertificatePem)?;
    if chain.is_empty() {
        return Err(Error::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => Error::NoKey,
        other => Error::KeyPem(other),
    })?;
    // Also parses the leaf, so a certificate PEM holding garbage DER is refused here too.
    CertifiedKey::from_der(chain, key, &PROVIDER).map_err(Error::KeyMismatch)
}

/// Checks that `chain_pem` (leaf first) is valid at `at` for `server_name` (a DNS name or an IP
/// address) when only the CAs in `trusted_pem` are trusted: what a TLS client holding that CA
/// bundle would accept.
pub fn verify_server_cert(
    trusted_pem: &[u8],
    chain_pem: &[u8],
    server_name: &str,
    at: SystemTime,
) -> Result<()> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(trusted_pem) {
        // A CA webpki cannot use as a trust anchor is skipped, like any client would.
        let _ = roots.add(ca.map_err(Error::TrustedPem)?);
    }
    if roots.is_empty() {
        return Err(Error::NoTrustedCa);
    }
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::CertificatePem)?;
    let (leaf, intermediates) = chain.split_first().ok_or(Error::NoCertificate)?;
    let name =
        ServerName::try_from(server_name.to_owned()).map_err(|_| Error::InvalidServerName {
            name: server_name.to_owned(),
        })?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), PROVIDER.clone())
        .build()
        .map_err(|_| Error::NoTrustedCa)?;
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    verifier
        .verify_server_cert(
            leaf,
            intermediates,
            &name,
            &[],
            UnixTime::since_unix_epoch(since_epoch),
        )
        .map(|_| ())
        .map_err(|source| Error::Verification {
            name: server_name.to_owned(),
            source,
        })
}

/// The HTTPS server, bound before it serves so a taken port fails at start-up.
#[derive(Debug)]
pub struct TlsServer {
    listener: TcpListener,
    config: Arc<ServerConfig>,
    max_body: usize,
}

impl TlsServer {
    pub async fn bind(addr: SocketAddr, store: CertStore) -> Result<Self> {
        let config = store.server_config()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Self {
            listener,
            config: Arc::new(config),
            max_body: MAX_BODY,
        })
    }

    /// Requests with a larger body get 413 without reaching the handler ([`MAX_BODY`] unless
    /// set here).
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting; connections already open finish
    /// on their own tasks. Accept, handshake and connection errors are logged, never fatal.
    pub async fn serve(self, handler: Handler, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let max_body = self.max_body;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(error) => {
                        tracing::warn!(%error, "TLS server accept failed");
                        // Out of file descriptors and the like: give it a moment, not a spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, limit = MAX_CONNECTIONS, "too many connections; closing one");
                drop(stream);
                continue;
            };
            let acceptor = TlsAcceptor::from(self.config.clone());
            let handler = handler.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(respond(req, &handler, max_body).await) }
                });
                if let Err(error) = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tls), svc)
                    .await
                {
                    tracing::debug!(%error, %peer, "TLS connection ended with an error");
                }
            });
        }
    }
}

async fn respond(
    req: Request<Incoming>,
    handler: &Handler,
    max_body: usize,
) -> Response<Full<Bytes>> {
    // A declared length over the cap is refused before a byte of the body is read.
    if req.body().size_hint().lower() > max_body as u64 {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, max_body).collect());
    let Ok(collected) = read.await else {
        return text(StatusCode::REQUEST_TIMEOUT, "request body too slow\n");
    };
    match collected {
        Ok(body) => handler(Request::from_parts(parts, body.to_bytes())).await,
        Err(error) if error.is::<LengthLimitError>() => too_large(),
        Err(error) => {
            tracing::debug!(%error, "reading a request body failed");
            text(StatusCode::BAD_REQUEST, "reading the request body failed\n")
        }
    }
}

fn too_large() -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    // The rest of the body is never read, so the connection cannot carry another request.
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

#[cfg(test)]
mod tests;
