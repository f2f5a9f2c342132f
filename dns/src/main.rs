use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = svcplane_dns::run::Args::parse();
    // hickory logs every query at info; a DNS server's log is not a query log.
    args.log.init_with_default("info,hickory_server=warn")?;
    Ok(svcplane_dns::run::run(args).await?)
}
