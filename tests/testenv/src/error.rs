use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building with {script} failed: {detail}")]
    Build { script: PathBuf, detail: String },
    #[error("creating {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating certificates")]
    Certs(#[from] rcgen::Error),
    #[error("starting {name}")]
    Spawn {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited during start-up ({status}); its log is {log}:\n{tail}")]
    ExitedEarly {
        name: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} was not ready within {seconds}s; its log is {log}:\n{tail}")]
    NotReady {
        name: &'static str,
        seconds: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("building a client from the kubeconfig")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Precondition(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
