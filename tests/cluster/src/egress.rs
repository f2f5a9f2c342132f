//! The API server's way into the cluster network, as konnectivity gives it in real clusters:
//! kube-apiserver's egress selector sends its "cluster" traffic (admission webhooks among it)
//! as HTTP CONNECT over a unix socket; this relay opens each requested connection from inside a
//! node's network namespace, where the node's svcplane-proxy turns a ClusterIP into a pod. No IP
//! route joins the host to the cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::net;

/// The EgressSelectorConfiguration that sends kube-apiserver's cluster traffic to `socket`.
pub fn selector_config(socket: &Path) -> String {
    format!(
        "apiVersion: apiserver.k8s.io/v1beta1\n\
         kind: EgressSelectorConfiguration\n\
         egressSelections:\n\
         - name: cluster\n  \
           connection:\n    \
             proxyProtocol: HTTPConnect\n    \
             transport:\n      \
               uds:\n        \
                 udsName: {}\n",
        socket.display()
    )
}

/// Serves CONNECT requests on a unix socket until dropped.
#[derive(Debug)]
pub struct EgressRelay {
    tasks: JoinSet<()>,
    socket: PathBuf,
}

impl EgressRelay {
    /// Listens on `socket`; connections are opened from namespace `node_ns`.
    pub fn start(socket: &Path, node_ns: String) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let ns = node_ns.clone();
                conns.spawn(async move {
                    if let Err(error) = serve(stream, &ns).await {
                        tracing::debug!(%error, "egress: connection failed");
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            tasks,
            socket: socket.to_owned(),
        })
    }
}

impl Drop for EgressRelay {
    fn drop(&mut self) {
        self.tasks.abort_all();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn serve(mut client: UnixStream, ns: &str) -> std::io::Result<()> {
    // The request head: "CONNECT host:port HTTP/1.1" and headers, ending in an empty line.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || client.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("incomplete CONNECT request"));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.split_whitespace();
    let target = match (words.next(), words.next()) {
        (Some("CONNECT"), Some(target)) => target.parse::<SocketAddr>().ok(),
        _ => None,
    };
    let Some(target) = target else {
        client
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await?;
        return Err(std::io::Error::other(format!(
            "not a CONNECT to an address: {:?}",
            text.lines().next()
        )));
    };
    let mut server = match net::connect_in(ns, target, Duration::from_secs(5)).await {
        Ok(server) => server,
        Err(error) => {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                .await?;
            return Err(error);
        }
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
