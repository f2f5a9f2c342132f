//! The kernel side: transactions piped to `nft -f -`, one atomic batch each (as upstream's
//! knftables drives the `nft` binary). [`FakeNft`] records transactions for component tests.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::monitor::{Monitor, Notice, OwnPids};

/// Why a transaction was not applied (nothing of it was: `nft -f` is all or nothing).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running {binary}: {source} (install nftables, or point --nft-binary at it)")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft rejected the transaction: {stderr}")]
    Rejected { stderr: String },
    #[error("nft {found} is too old: svcplane-proxy needs nftables 1.0.1 or newer")]
    TooOld { found: String },
}

impl Error {
    /// A fixed metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Spawn { .. } => "spawn",
            Error::Rejected { .. } => "rejected",
            Error::TooOld { .. } => "too_old",
        }
    }
}

/// Applies transactions to the kernel's ruleset.
pub trait Nft: Send + Sync {
    /// Applies `transaction` atomically.
    fn apply(&self, transaction: &str) -> Result<(), Error>;
}

/// The `nft` command.
#[derive(Debug, Clone)]
pub struct NftCli {
    binary: PathBuf,
    /// Arguments before nft's own: with `ip` as the binary, `netns exec <ns> nft` runs it in a
    /// network namespace (tests).
    leading: Vec<String>,
    /// The pids of the `nft` processes run here, so the monitor knows our own commits.
    own: OwnPids,
}

impl NftCli {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            leading: Vec::new(),
            own: OwnPids::default(),
        }
    }

    /// Follows `nft monitor` in the same namespace, reporting changes other processes make
    /// to the svcplane tables (see [`crate::monitor`]).
    pub fn monitor(&self) -> std::io::Result<(Monitor, UnboundedReceiver<Notice>)> {
        Monitor::start(
            self.binary.clone(),
            self.leading.clone(),
            crate::render::TABLE,
            self.own.clone(),
        )
    }

    /// `nft` inside network namespace `ns` (through `ip netns exec`).
    pub fn in_netns(ns: &str) -> Self {
        Self {
            binary: "ip".into(),
            leading: vec!["netns".into(), "exec".into(), ns.into(), "nft".into()],
            own: OwnPids::default(),
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
        let spawn_error = |source| Error::Spawn {
            binary: self.binary.display().to_string(),
            source,
        };
        let mut child = Command::new(&self.binary)
            .args(&self.leading)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        self.own.record(child.id());
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error shows up as nft's own failure below.
            let _ = pipe.write_all(text.as_bytes());
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(Error::Rejected {
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// Checks that the binary runs and is new enough for the rules rendered here
    /// (concatenated `typeof` maps with `numgen` keys).
    pub fn check_version(&self) -> Result<String, Error> {
        let out = self.run(&["--version"], None)?;
        let version = out
            .split_whitespace()
            .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
            .unwrap_or_default()
            .trim_start_matches('v')
            .to_owned();
        let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
        if parts.len() < 2
            || (
                parts[0],
                parts.get(1).copied().unwrap_or(0),
                parts.get(2).copied().unwrap_or(0),
            ) < (1, 0, 1)
        {
            return Err(Error::TooOld {
                found: out.trim().to_owned(),
            });
        }
        Ok(version)
    }

    /// `nft list table <family> svcplane`, for tests and debugging.
    pub fn list(&self, family: &str) -> Result<String, Error> {
        self.run(&["list", "table", family, crate::render::TABLE], None)
    }
}

impl Nft for NftCli {
    fn apply(&self, transaction: &str) -> Result<(), Error> {
        self.run(&["-f", "-"], Some(transaction)).map(drop)
    }
}

/// Records transactions; fails the next ones when told to.
#[derive(Debug, Clone, Default)]
pub struct FakeNft {
    applied: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<usize>>,
}

impl FakeNft {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn applied(&self) -> Vec<String> {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The next `n` transactions fail.
    pub fn fail_next(&self, n: usize) {
        *self.failures.lock().unwrap_or_else(|e| e.into_inner()) += n;
    }
}

impl Nft for FakeNft {
    fn apply(&self, transaction: &str) -> Result<(), Error> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if *failures > 0 {
            *failures -= 1;
            return Err(Error::Rejected {
                stderr: "injected failure".into(),
            });
        }
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(transaction.to_owned());
        Ok(())
    }
}
