use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Namespace;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::certs::Pki;
use crate::process::Process;
use crate::{Binaries, Error, Result, ensure_binaries};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--service-cluster-ip-range`: one CIDR, or an IPv4 and an IPv6 one for dual-stack.
    pub service_cidrs: Vec<IpNet>,
    /// `--service-node-port-range`.
    pub node_port_range: (u16, u16),
    /// Appended to kube-apiserver's flags (a later flag wins).
    pub extra_apiserver_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            service_cidrs: vec![IpNet::from(
                "10.96.0.0/16"
                    .parse::<ipnet::Ipv4Net>()
                    .expect("literal CIDR"),
            )],
            node_port_range: (30000, 32767),
            extra_apiserver_args: Vec::new(),
        }
    }
}

impl Options {
    /// IPv4 10.96.0.0/16 primary, IPv6 fd00:10:96::/112 secondary.
    pub fn dual_stack() -> Self {
        let mut o = Self::default();
        o.service_cidrs.push(IpNet::from(
            "fd00:10:96::/112"
                .parse::<ipnet::Ipv6Net>()
                .expect("literal CIDR"),
        ));
        o
    }
}

/// A running etcd + kube-apiserver pair. Dropping it stops both and removes its directory,
/// except when the thread is panicking: then the directory, with both logs, is kept and named
/// on stderr so the failing test's output points to it.
#[derive(Debug)]
pub struct TestEnv {
    // Declared before etcd so it is stopped first. Behind a lock so a shared environment (the
    // local cluster's) can still stop and restart it.
    apiserver: Mutex<Process>,
    etcd: Mutex<Process>,
    dir: PathBuf,
    server_url: String,
    /// The same, as an address (127.0.0.1 and the API server's port).
    server_addr: SocketAddr,
    etcd_url: String,
    kubeconfig: Value,
    kubeconfig_path: PathBuf,
    /// Keep the directory on drop: start-up failed and its logs explain why.
    keep_dir: bool,
    /// How kube-apiserver was started, to start it again after [`TestEnv::stop_apiserver`].
    apiserver_cmd: (PathBuf, Vec<String>),
    /// Restarts so far, to name each restart's log.
    restarts: std::sync::atomic::AtomicU32,
}

impl TestEnv {
    /// Starts a control plane with the default options (10.96.0.0/16, NodePorts 30000-32767).
    pub async fn start() -> Result<Self> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Result<Self> {
        let binaries = tokio::task::spawn_blocking(ensure_binaries)
            .await
            .map_err(|e| Error::Precondition(format!("binary build task failed: {e}")))??;
        // Free ports are picked by binding and releasing; another process can take one in
        // between, so a start that lost that race is retried with fresh ports.
        let mut attempt = 1;
        loop {
            match Self::try_start(&binaries, &options).await {
                Err(Error::ExitedEarly { tail, log, .. })
                    if attempt < 3 && tail.contains("address already in use") =>
                {
                    // The retry's logs are the ones that matter; drop this attempt's directory.
                    if let Some(dir) = log.parent() {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn try_start(binaries: &Binaries, options: &Options) -> Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("svcplane-testenv-")
            .tempdir()
            .map_err(|source| Error::Io {
                path: std::env::temp_dir(),
                source,
            })?
            .keep();
        eprintln!(
            "svcplane-testenv: control plane files and logs in {}",
            dir.display()
        );

        let service_ips: Vec<IpAddr> = options.service_cidrs.iter().map(first_host).collect();
        let pki = Pki::generate(&service_ips)?;
        let write = |name: &str, contents: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, contents).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        };
        let ca = write("ca.crt", &pki.ca_cert)?;
        let serving_cert = write("apiserver.crt", &pki.serving_cert)?;
        let serving_key = write("apiserver.key", &pki.serving_key)?;
        let sa_key = write("service-account.key", &pki.service_account_key)?;
        let sa_pub = write("service-account.pub", &pki.service_account_pub)?;

        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Process::spawn(
            "etcd",
            &binaries.etcd(),
            &[
                "--name=testenv".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=testenv={peer_url}"),
                // Test data is thrown away; fsync only slows every write.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            dir.join("etcd.log"),
        )?;
        wait_for_port(&mut etcd, etcd_port).await?;

        let cidrs: Vec<String> = options.service_cidrs.iter().map(IpNet::to_string).collect();
        let mut args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", serving_cert.display()),
            format!("--tls-private-key-file={}", serving_key.display()),
            format!("--client-ca-file={}", ca.display()),
            format!("--service-account-issuer={ISSUER}"),
            format!("--api-audiences={ISSUER}"),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            format!("--service-cluster-ip-range={}", cidrs.join(",")),
            format!(
                "--service-node-port-range={}-{}",
                options.node_port_range.0, options.node_port_range.1
            ),
            "--authorization-mode=RBAC".into(),
            // No controller manager creates default ServiceAccounts for pods to use.
            "--disable-admission-plugins=ServiceAccount".into(),
            // 127.0.0.1 is not a valid endpoint for the `kubernetes` Service.
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        args.extend(options.extra_apiserver_args.iter().cloned());
        let mut apiserver = Process::spawn(
            "kube-apiserver",
            &binaries.kube_apiserver(),
            &args,
            dir.join("kube-apiserver.log"),
        )?;
        let apiserver_cmd = (binaries.kube_apiserver(), args);
        // Until it listens, every readiness probe would only log a connection error.
        wait_for_port(&mut apiserver, api_port).await?;

        let server_url = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "svcplane-testenv", "cluster": {
                "server": server_url,
                "certificate-authority-data": B64.encode(&pki.ca_cert),
            }}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": B64.encode(&pki.admin_cert),
                "client-key-data": B64.encode(&pki.admin_key),
            }}],
            "contexts": [{"name": "svcplane-testenv", "context": {
                "cluster": "svcplane-testenv", "user": "admin",
            }}],
            "current-context": "svcplane-testenv",
        });
        // JSON is YAML, so kubectl and every client read this file as it is.
        let kubeconfig_path = write("kubeconfig", &kubeconfig.to_string())?;

        let mut env = TestEnv {
            apiserver: Mutex::new(apiserver),
            etcd: Mutex::new(etcd),
            dir,
            server_url,
            server_addr: SocketAddr::from(([127, 0, 0, 1], api_port)),
            etcd_url,
            kubeconfig,
            kubeconfig_path,
            keep_dir: false,
            apiserver_cmd,
            restarts: Default::default(),
        };
        if let Err(error) = env.wait_ready().await {
            env.keep_dir = true;
            return Err(error);
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            server = %env.server_url,
            "control plane ready"
        );
        Ok(env)
    }

    /// Waits for `/readyz` and for the `default` namespace the API server creates itself.
    async fn wait_ready(&self) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.apiserver().check_running()?;
            self.etcd().check_running()?;
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| Error::Precondition(e.to_string()))?;
            // Each probe is bounded: a stalled request must not outlive the deadline.
            let probe = async {
                client
                    .request_text(request)
                    .await
                    .is_ok_and(|body| body.trim() == "ok")
                    && Api::<Namespace>::all(client.clone())
                        .get_opt("default")
                        .await
                        .is_ok_and(|ns| ns.is_some())
            };
            if tokio::time::timeout(PROBE_TIMEOUT, probe).await == Ok(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.apiserver_not_ready());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn etcd(&self) -> MutexGuard<'_, Process> {
        self.etcd.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn apiserver_not_ready(&self) -> Error {
        let apiserver = self.apiserver();
        Error::NotReady {
            name: "kube-apiserver",
            seconds: READY_TIMEOUT.as_secs(),
            log: apiserver.log.clone(),
            tail: apiserver.log_tail(),
        }
    }

    fn apiserver(&self) -> MutexGuard<'_, Process> {
        self.apiserver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops kube-apiserver (etcd keeps running), as an outage would.
    pub fn stop_apiserver(&self) {
        self.apiserver().stop(Duration::from_secs(5));
    }

    /// Starts kube-apiserver again on the same port and data (stopping it first if it runs),
    /// and waits until it is ready. Its log is then `kube-apiserver.restarted-N.log` (N from 1).
    pub async fn restart_apiserver(&self) -> Result<()> {
        self.stop_apiserver();
        let n = self
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let log = self.dir.join(format!("kube-apiserver.restarted-{n}.log"));
        let process = Process::spawn(
            "kube-apiserver",
            &self.apiserver_cmd.0,
            &self.apiserver_cmd.1,
            log,
        )?;
        *self.apiserver() = process;
        let addr = self.server_addr;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.apiserver().check_running()?;
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(self.apiserver_not_ready());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_ready().await
    }

    /// An admin client (`system:masters`). Each call builds a new one, bound to the caller's
    /// runtime.
    pub async fn client(&self) -> Result<Client> {
        client_from(self.kubeconfig.clone()).await
    }

    /// A client that authenticates with a bearer token, e.g. a ServiceAccount's.
    pub async fn client_with_token(&self, token: &str) -> Result<Client> {
        let mut kc = self.kubeconfig.clone();
        kc["users"][0]["user"] = json!({ "token": token });
        client_from(kc).await
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// Starts the pinned kube-controller-manager against this control plane, running only
    /// `controllers` (e.g. `endpointslice-controller`), without leader election or a serving
    /// port; its log is `kube-controller-manager.log` in the environment's directory. It stops
    /// when the returned value is dropped (or this process dies).
    pub async fn start_controller_manager(&self, controllers: &str) -> Result<ControllerManager> {
        let binaries = tokio::task::spawn_blocking(crate::ensure_binaries_with_controller_manager)
            .await
            .map_err(|e| Error::Precondition(format!("build task failed: {e}")))??;
        let args = vec![
            format!("--kubeconfig={}", self.kubeconfig_path.display()),
            format!("--controllers={controllers}"),
            "--leader-elect=false".to_owned(),
            "--secure-port=0".to_owned(),
        ];
        let log = self.dir.join("kube-controller-manager.log");
        let mut process = Process::spawn(
            "kube-controller-manager",
            &binaries.kube_controller_manager(),
            &args,
            log,
        )?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        process.check_running()?;
        Ok(ControllerManager { process })
    }

    /// Writes a kubeconfig that authenticates with `token` (e.g. a ServiceAccount's) into the
    /// environment's directory, for processes that should run with that identity.
    pub fn write_kubeconfig_with_token(&self, name: &str, token: &str) -> Result<PathBuf> {
        let mut kc = self.kubeconfig.clone();
        kc["users"][0]["user"] = json!({ "token": token });
        self.write_kubeconfig(name, &kc)
    }

    /// Writes a copy of the admin kubeconfig that reaches the API server through `server`
    /// (e.g. a [`crate::relay::StallRelay`]) into the environment's directory. The serving
    /// certificate names 127.0.0.1, so TLS verifies through anything listening there.
    pub fn write_kubeconfig_via(&self, name: &str, server: SocketAddr) -> Result<PathBuf> {
        let mut kc = self.kubeconfig.clone();
        kc["clusters"][0]["cluster"]["server"] = json!(format!("https://{server}"));
        self.write_kubeconfig(name, &kc)
    }

    /// Both: `token`'s identity, through `server` (a process in a network namespace reaching
    /// the API server through a [`crate::netns::ApiRelay`] under its ServiceAccount).
    pub fn write_kubeconfig_with_token_via(
        &self,
        name: &str,
        token: &str,
        server: SocketAddr,
    ) -> Result<PathBuf> {
        let mut kc = self.kubeconfig.clone();
        kc["users"][0]["user"] = json!({ "token": token });
        kc["clusters"][0]["cluster"]["server"] = json!(format!("https://{server}"));
        self.write_kubeconfig(name, &kc)
    }

    fn write_kubeconfig(&self, name: &str, kubeconfig: &Value) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, kubeconfig.to_string()).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The API server's address (the host and port of [`TestEnv::server_url`]), for relays and
    /// proxies in front of it.
    pub fn server_addr(&self) -> SocketAddr {
        self.server_addr
    }

    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The directory holding certificates, etcd data and both logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn etcd_pid(&self) -> u32 {
        self.etcd().pid()
    }

    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver().pid()
    }

    /// The current kube-apiserver's log (another file after a restart).
    pub fn apiserver_log(&self) -> PathBuf {
        self.apiserver().log.clone()
    }

    pub fn etcd_log(&self) -> PathBuf {
        self.etcd().log.clone()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.apiserver().stop(Duration::from_secs(5));
        self.etcd().stop(Duration::from_secs(5));
        if self.keep_dir || std::thread::panicking() {
            eprintln!(
                "svcplane-testenv: kept {} and {} for inspection",
                self.apiserver().log.display(),
                self.etcd().log.display()
            );
        } else if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            eprintln!(
                "svcplane-testenv: could not remove {}: {error}",
                self.dir.display()
            );
        }
    }
}

async fn client_from(kubeconfig: Value) -> Result<Client> {
    let boxed = |e: Box<dyn std::error::Error + Send + Sync>| Error::Client(e);
    let kc: Kubeconfig = serde_json::from_value(kubeconfig).map_err(|e| boxed(e.into()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| boxed(e.into()))?;
    Client::try_from(config).map_err(|e| boxed(e.into()))
}

/// The first host address of a range: what the API server gives the `kubernetes` Service.
fn first_host(net: &IpNet) -> IpAddr {
    match net.network() {
        IpAddr::V4(v4) => std::net::Ipv4Addr::from(u32::from(v4).wrapping_add(1)).into(),
        IpAddr::V6(v6) => std::net::Ipv6Addr::from(u128::from(v6).wrapping_add(1)).into(),
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
        path: "127.0.0.1:0".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            path: "127.0.0.1:0".into(),
            source,
        })
}

async fn wait_for_port(process: &mut Process, port: u16) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        process.check_running()?;
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::NotReady {
                name: process.name,
                seconds: READY_TIMEOUT.as_secs(),
                log: process.log.clone(),
                tail: process.log_tail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running kube-controller-manager (see [`TestEnv::start_controller_manager`]).
#[derive(Debug)]
pub struct ControllerManager {
    process: Process,
}

impl ControllerManager {
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> &Path {
        &self.process.log
    }
}
