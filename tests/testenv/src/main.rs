//! Starts svcplane's test control plane (etcd + kube-apiserver) in the foreground for people and
//! scripts, prints how to reach it, and stops it cleanly on Ctrl-C or SIGTERM.

use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use ipnet::IpNet;
use svcplane_testenv::{Options, TestEnv};

#[derive(Debug, Parser)]
#[command(name = "svcplane-testenv", version, about)]
struct Args {
    /// Service CIDR(s), comma-separated: one, or an IPv4 and an IPv6 one for dual-stack.
    #[arg(
        long,
        env = "SVCPLANE_SERVICE_CLUSTER_IP_RANGE",
        value_delimiter = ',',
        default_value = "10.96.0.0/16"
    )]
    service_cluster_ip_range: Vec<IpNet>,
    /// Shorthand for --service-cluster-ip-range 10.96.0.0/16,fd00:10:96::/112.
    #[arg(
        long,
        env = "SVCPLANE_DUAL_STACK",
        conflicts_with = "service_cluster_ip_range"
    )]
    dual_stack: bool,
    #[command(flatten)]
    log: svcplane_runtime::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init()?;
    let options = if args.dual_stack {
        Options::dual_stack()
    } else {
        Options {
            service_cidrs: args.service_cluster_ip_range,
            ..Options::default()
        }
    };
    // Handlers first: whoever reads the lines below may signal at once.
    let stop = svcplane_runtime::shutdown_signal();
    let started = Instant::now();
    let env = TestEnv::start_with(options)
        .await
        .context("starting the control plane")?;
    // key=value lines: easy to read, and easy for scripts to pick apart.
    println!("ready-seconds={:.1}", started.elapsed().as_secs_f64());
    println!("server={}", env.server_url());
    println!("kubeconfig={}", env.kubeconfig_path().display());
    println!("etcd-pid={}", env.etcd_pid());
    println!("kube-apiserver-pid={}", env.apiserver_pid());
    println!("logs={}", env.dir().display());
    println!(
        "# export KUBECONFIG={}   (Ctrl-C stops the control plane)",
        env.kubeconfig_path().display()
    );
    stop.await;
    drop(env);
    eprintln!("svcplane-testenv: stopped");
    Ok(())
}
