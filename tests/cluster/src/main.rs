//! `svcplane-cluster`: the whole Service plane on one machine, in the foreground; Ctrl-C stops
//! it and removes everything it made.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use svcplane_cluster::{COMPONENTS, Cluster, Options};

#[derive(Debug, Parser)]
#[command(name = "svcplane-cluster", version, about)]
struct Args {
    /// Simulated nodes (network namespaces, each running svcplane-proxy).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Namespace-name prefix; a start removes what an earlier run with it left behind.
    #[arg(long, default_value = "svpl")]
    prefix: String,
    /// Skip the demo app.
    #[arg(long)]
    no_demo: bool,
    /// Where the svcplane binaries are (default: next to this one, built first when run by
    /// cargo).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[command(flatten)]
    log: svcplane_runtime::LogArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The demo app's HTTP server (what the local kubelet runs for non-svcplane images).
    #[command(hide = true)]
    DemoServer {
        #[arg(long)]
        pod: String,
        #[arg(long)]
        node: String,
        #[arg(long = "port", required = true)]
        ports: Vec<u16>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // The control plane's start-up polls fail by design until it is up: keep them quiet.
    if let Err(error) = args.log.init_with_default("warn,kube_client=off") {
        eprintln!("svcplane-cluster: {error}");
        return std::process::ExitCode::FAILURE;
    }
    let result = match args.command {
        Some(Command::DemoServer { pod, node, ports }) => {
            svcplane_cluster::demo::serve(pod, node, ports).await
        }
        None => run(args.nodes, args.prefix, !args.no_demo, args.bin_dir).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "svcplane-cluster: {}",
                svcplane_runtime::error_chain(&*error)
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// Under `cargo run`, builds the component binaries (same profile) so they match this
/// checkout; otherwise expects them next to this binary.
fn build_components() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = exe.parent().context("this binary's directory")?.to_owned();
    if let Ok(cargo) = std::env::var("CARGO") {
        eprintln!(
            "svcplane-cluster: building {} from this checkout",
            COMPONENTS.join(", ")
        );
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--locked", "--bins"]);
        for c in COMPONENTS {
            build.args(["-p", c]);
        }
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build.status().context("running cargo build")?;
        anyhow::ensure!(status.success(), "building the components failed");
    }
    Ok(dir)
}

async fn run(
    nodes: usize,
    prefix: String,
    demo: bool,
    bin_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    // Root first: a one-line answer before any build.
    if let Err(why) = svcplane_testenv::netns::can_make_namespaces() {
        anyhow::bail!(
            "needs root to make network namespaces and nftables rules ({why}); run: sudo -E env PATH=\"$PATH\" cargo run -p svcplane-cluster"
        );
    }
    let bin_dir = match bin_dir {
        Some(dir) => dir,
        None => build_components()?,
    };
    // Handlers first: Ctrl-C during start-up still cleans up.
    let stop = svcplane_runtime::shutdown_signal();
    let say = |line: &str| eprintln!("svcplane-cluster: {line}");
    let options = Options {
        nodes,
        prefix,
        bin_dir,
        demo,
        api_faults: false,
    };
    let cluster = tokio::select! {
        started = Cluster::start(options, say) => started?,
        () = stop => {
            eprintln!("svcplane-cluster: interrupted during start-up; cleaning up");
            return Ok(());
        }
    };
    print_usage(&cluster, demo);
    svcplane_runtime::shutdown_signal().await;
    eprintln!("svcplane-cluster: stopping; removing every namespace and process it made");
    cluster.stop().await;
    eprintln!("svcplane-cluster: stopped");
    Ok(())
}

fn print_usage(cluster: &Cluster, demo: bool) {
    let names = cluster.names();
    let kubeconfig = cluster
        .env()
        .map(|e| e.kubeconfig_path().display().to_string())
        .unwrap_or_default();
    println!();
    println!(
        "The Service plane is up: svcplane-allocator, -endpoints, -dns and -proxy on {} nodes.",
        cluster.nodes().len()
    );
    println!();
    println!("  export KUBECONFIG={kubeconfig}");
    println!("  kubectl get pods -A -o wide");
    if demo {
        let client = names.pod("demo", "client");
        println!();
        println!("From the demo's client pod (its resolv.conf points at 10.96.0.10):");
        println!("  ip netns exec {client} dig @10.96.0.10 web.demo.svc.cluster.local");
        println!("  ip netns exec {client} curl http://web.demo.svc.cluster.local/");
        println!("  ip netns exec {client} curl http://web/            # search path");
        println!();
        println!("From outside the cluster (the LoadBalancer IP and NodePort of demo/web-public):");
        println!("  kubectl -n demo get svc web-public");
        println!(
            "  ip netns exec {} curl http://<EXTERNAL-IP>/",
            names.external()
        );
        println!();
        println!("Scale and watch traffic follow:  kubectl -n demo scale deploy/web --replicas=5");
    }
    println!();
    println!(
        "Logs: {}   Ctrl-C stops everything and removes it.",
        cluster.log_dir().display()
    );
}
