use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = svcplane_endpoints::run::Args::parse();
    args.log.init()?;
    Ok(svcplane_endpoints::run::run(args).await?)
}
