//! Network namespaces for tests that need real packets (the proxy's), and a way for a process
//! inside one to reach the API server without any IP route out of the namespace.
//!
//! [`ApiRelay`] binds a listener on 127.0.0.1 *inside* a namespace; every connection to it is
//! carried over a unix socket (filesystem, not network) to the host side, which connects to the
//! API server on host loopback. Nothing links the namespace to the host by IP.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{CloneFlags, setns};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;

/// Moves the calling thread into network namespace `ns` (made with `ip netns add`): sockets it
/// makes from then on belong to that namespace. Only for a thread of one's own that ends
/// afterwards (never a runtime's worker or blocking thread); see [`on_thread_in`].
pub fn enter(ns: &str) -> std::io::Result<()> {
    let handle = File::open(PathBuf::from("/var/run/netns").join(ns))?;
    setns(&handle, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Runs `f` on a new thread inside network namespace `ns` and returns what it returned; the
/// thread ends with it, so no other code ever runs in the namespace by accident.
pub fn on_thread_in<T: Send>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(ns)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("netns thread panicked")))
    })
}

/// Binds a TCP listener on `addr` inside network namespace `ns`. The socket belongs to that
/// namespace for good; the thread that made it exits.
pub fn bind_in(ns: &str, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    on_thread_in(ns, || {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
}

/// Connects to `addr` from inside network namespace `ns` (on a thread of its own, see
/// [`on_thread_in`]); the stream, non-blocking, for tokio.
pub async fn connect_in(
    ns: &str,
    addr: SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<TcpStream> {
    let ns = ns.to_owned();
    let stream = tokio::task::spawn_blocking(move || {
        on_thread_in(&ns, || {
            let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })
    })
    .await
    .map_err(std::io::Error::other)??;
    TcpStream::from_std(stream)
}

/// The API server reachable at 127.0.0.1:`port` inside a namespace. Dropping it stops relaying.
#[derive(Debug)]
pub struct ApiRelay {
    tasks: JoinSet<()>,
    socket: PathBuf,
}

impl ApiRelay {
    /// Relays 127.0.0.1:`port` in `ns` to `apiserver` through a unix socket under `dir`.
    pub async fn start(
        ns: &str,
        port: u16,
        apiserver: SocketAddr,
        dir: &Path,
    ) -> std::io::Result<Self> {
        let socket = dir.join(format!("relay-{ns}.sock"));
        let _ = std::fs::remove_file(&socket);
        let unix = UnixListener::bind(&socket)?;
        let inside = TcpListener::from_std(bind_in(ns, SocketAddr::from(([127, 0, 0, 1], port)))?)?;
        let mut tasks = JoinSet::new();
        // Host side: unix socket → API server.
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut from, _)) = unix.accept().await {
                conns.spawn(async move {
                    if let Ok(mut to) = TcpStream::connect(apiserver).await {
                        let _ = tokio::io::copy_bidirectional(&mut from, &mut to).await;
                    }
                });
            }
        });
        // Namespace side: 127.0.0.1:port → unix socket.
        let path = socket.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut from, _)) = inside.accept().await {
                let path = path.clone();
                conns.spawn(async move {
                    if let Ok(mut to) = UnixStream::connect(&path).await {
                        let _ = tokio::io::copy_bidirectional(&mut from, &mut to).await;
                    }
                });
            }
        });
        Ok(Self { tasks, socket })
    }
}

impl Drop for ApiRelay {
    fn drop(&mut self) {
        self.tasks.abort_all();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Whether this process can make network namespaces and run `nft` (root with iproute2 and
/// nftables); the reason when not.
pub fn can_make_namespaces() -> Result<(), String> {
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("svp-probe-{}-{n}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
            Command::new("nft")
                .arg("--version")
                .output()
                .map(drop)
                .map_err(|e| format!("nft: {e}"))
        }
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => Err(format!("ip: {e}")),
    }
}
