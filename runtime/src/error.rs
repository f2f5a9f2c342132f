use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading kubeconfig {path}")]
    KubeconfigRead {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no usable API client configuration (kubeconfig or in-cluster)")]
    ConfigInfer(#[source] kube::config::InferConfigError),
    #[error("building the API client")]
    ClientBuild(#[source] kube::Error),
    #[error("--kube-api-qps must be positive and --kube-api-burst at least 1 (got {qps}, {burst})")]
    InvalidRateLimit { qps: f64, burst: u32 },
    #[error(
        "leader election needs lease duration > renew deadline > 1.2 x retry period \
         (got {lease:?}, {renew:?}, {retry:?})"
    )]
    LeaderTimings {
        lease: std::time::Duration,
        renew: std::time::Duration,
        retry: std::time::Duration,
    },
    #[error("--kube-api-timeout must be more than zero")]
    InvalidTimeout,
    #[error("binding the admin server to {addr}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("starting the log subscriber")]
    Logging(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line (`error: cause: cause`), for one log field.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
