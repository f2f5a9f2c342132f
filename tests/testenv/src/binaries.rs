use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::{Error, Result};

/// Where the control-plane binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    pub fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }

    pub fn kube_controller_manager(&self) -> PathBuf {
        self.dir.join("kube-controller-manager")
    }

    pub fn kube_proxy(&self) -> PathBuf {
        self.dir.join("kube-proxy")
    }
}

/// The script that builds the binaries, found from this crate's source location.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../controlplane/build.sh")
}

/// Builds etcd and kube-apiserver if the cache lacks them (minutes, once per machine) and
/// returns where they are. `SVCPLANE_CONTROLPLANE_BIN_DIR` points at prebuilt ones instead.
/// Calls from many threads and processes wait for one build.
pub fn ensure_binaries() -> Result<Binaries> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    cached(&BUILT, &[])
}

/// Like [`ensure_binaries`], also building kube-controller-manager (the upstream peer).
pub fn ensure_binaries_with_controller_manager() -> Result<Binaries> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    cached(&BUILT, &["kube-controller-manager"])
}

/// Like [`ensure_binaries`], also building kube-proxy (the proxy's upstream peer).
pub fn ensure_binaries_with_kube_proxy() -> Result<Binaries> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    cached(&BUILT, &["kube-controller-manager", "kube-proxy"])
}

/// The script that builds CoreDNS (the DNS server's upstream peer), from `bench/coredns`.
pub fn coredns_build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/coredns/build.sh")
}

/// Builds CoreDNS from the module pinned in `bench/coredns` if the cache lacks it (minutes, once
/// per machine) and returns the binary's path. `SVCPLANE_COREDNS` points at a prebuilt one
/// instead (`tests/run` sets it). Calls from many threads and processes wait for one build.
pub fn ensure_coredns() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(path) = std::env::var_os("SVCPLANE_COREDNS") {
        return Ok(path.into());
    }
    let script = coredns_build_script();
    BUILT
        .get_or_init(|| run_build(&script, &[]))
        .clone()
        .map_err(|detail| Error::Build { script, detail })
}

fn cached(cell: &OnceLock<Result<PathBuf, String>>, extra: &[&str]) -> Result<Binaries> {
    if let Some(dir) = std::env::var_os("SVCPLANE_CONTROLPLANE_BIN_DIR") {
        return Ok(Binaries { dir: dir.into() });
    }
    let script = build_script();
    cell.get_or_init(|| run_build(&script, extra))
        .clone()
        .map(|dir| Binaries { dir })
        .map_err(|detail| Error::Build { script, detail })
}

fn run_build(script: &Path, extra: &[&str]) -> Result<PathBuf, String> {
    let out = Command::new("bash")
        .arg(script)
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    if !out.status.success() {
        return Err(format!("exited with {}", out.status));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if dir.is_empty() {
        return Err("printed no path".into());
    }
    Ok(PathBuf::from(dir))
}
