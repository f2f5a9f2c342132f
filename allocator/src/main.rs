use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = svcplane_allocator::run::Args::parse();
    args.log.init()?;
    Ok(svcplane_allocator::run::run(args).await?)
}
