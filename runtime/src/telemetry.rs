use tracing_subscriber::EnvFilter;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging flags; verbosity comes from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "SVCPLANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber at `info` unless `RUST_LOG` says otherwise. Fails if one
    /// is already installed.
    pub fn init(&self) -> Result<()> {
        self.init_with_default("info")
    }

    /// Like [`init`](Self::init) with another default filter, e.g. to quiet a chatty library.
    pub fn init_with_default(&self, default_filter: &str) -> Result<()> {
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        }
        .map_err(Error::Logging)
    }
}
