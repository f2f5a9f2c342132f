//! What every test over the local cluster needs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use svcplane_cluster::{Cluster, Options};

/// Where cargo put this package's binary; the components are next to it (`tests/run` builds
/// them first).
pub fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_svcplane-cluster"))
        .parent()
        .expect("target directory")
        .to_owned();
    for c in svcplane_cluster::COMPONENTS {
        assert!(
            dir.join(c).is_file(),
            "{c} is not built in {}: run tests/run, or `cargo build --workspace --bins` first",
            dir.display()
        );
    }
    dir
}

pub fn require_root() {
    if let Err(why) = svcplane_testenv::netns::can_make_namespaces() {
        panic!("these tests need root with `ip netns` and `nft` (CI runs as root): {why}");
    }
}

/// A prefix no other test (or person) uses.
pub fn prefix(test: &str) -> String {
    format!("sve{}{test}", std::process::id() % 100_000)
}

pub async fn start(test: &str) -> Cluster {
    start_with(test, 2, false).await
}

/// With `nodes` nodes and, if `api_faults`, the fault-injecting API proxy.
pub async fn start_with(test: &str, nodes: usize, api_faults: bool) -> Cluster {
    require_root();
    Cluster::start(
        Options {
            nodes,
            api_faults,
            prefix: prefix(test),
            bin_dir: bin_dir(),
            demo: true,
        },
        |line| eprintln!("cluster: {line}"),
    )
    .await
    .expect("the local cluster starts")
}

/// The pods of `namespace` whose names start with `prefix`, not being deleted.
pub async fn pods(
    cluster: &Cluster,
    namespace: &str,
    prefix: &str,
) -> Vec<k8s_openapi::api::core::v1::Pod> {
    kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(cluster.client().clone(), namespace)
        .list(&Default::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}
