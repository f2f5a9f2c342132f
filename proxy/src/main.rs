use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = svcplane_proxy::run::Args::parse();
    args.log.init()?;
    Ok(svcplane_proxy::run::run(args).await?)
}
