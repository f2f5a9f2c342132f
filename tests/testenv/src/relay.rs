//! A TCP relay in front of the API server that can be made to stall, so a test can cut one
//! process off the API without stopping it: the connection stays open, requests just never
//! arrive and answers never come, as on a network partition. It never looks inside the bytes
//! (they are TLS).

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Listens on 127.0.0.1 and forwards each connection to a target until [`StallRelay::stall`].
/// Dropping it aborts its tasks, which closes the listener and every connection.
#[derive(Debug)]
pub struct StallRelay {
    addr: SocketAddr,
    stalled: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl StallRelay {
    /// Starts relaying connections made to [`StallRelay::addr`] to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stalled, watching) = watch::channel(false);
        let accept = tokio::spawn(accept(listener, target, watching));
        Ok(Self {
            addr,
            stalled,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on no byte moves in either direction, on open or new connections. What is read
    /// meanwhile is discarded, so a request caught in the relay never reaches the server late.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }
}

impl Drop for StallRelay {
    fn drop(&mut self) {
        // The connection tasks live in the accept task's JoinSet, which aborts them when dropped.
        self.accept.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, stalled: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                connections.spawn(relay(client, target, stalled.clone()));
            }
            Err(error) => {
                // E.g. out of file descriptors: wait rather than spin.
                tracing::debug!(%error, "relay: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
}

async fn relay(client: TcpStream, target: SocketAddr, stalled: watch::Receiver<bool>) {
    if *stalled.borrow() {
        // A black hole accepts and swallows, and never reaches the server.
        pump(client, tokio::io::sink(), stalled).await;
        return;
    }
    let server = match TcpStream::connect(target).await {
        Ok(server) => server,
        Err(error) => {
            tracing::debug!(%error, %target, "relay: connecting to the target failed");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, stalled.clone()),
        pump(server_read, client_write, stalled),
    );
}

/// Copies `from` to `to` until either ends or fails, discarding everything once stalled.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) => {
                tracing::debug!(%error, "relay: read failed");
                break;
            }
        };
        if *stalled.borrow() {
            continue;
        }
        tokio::select! {
            written = to.write_all(&buf[..n]) => {
                if let Err(error) = written {
                    tracing::debug!(%error, "relay: write failed");
                    break;
                }
            }
            // A write still pending when the stall begins is abandoned, not finished.
            _ = stalled.wait_for(|s| *s) => {}
        }
    }
    // A stalled relay passes on nothing, not even the end of the stream.
    if !*stalled.borrow() {
        let _ = to.shutdown().await;
    }
}
