use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = svcplane_dns::run::Args::parse();
    if let Some(path) = &args.check_corefile {
        return match svcplane_dns::run::check_corefile(path, &args.nameserver_service) {
            Ok(description) => {
                print!("{description}");
                Ok(())
            }
            Err(error) => {
                eprintln!("svcplane-dns: {error}");
                std::process::exit(1);
            }
        };
    }
    // hickory logs every query at info; a DNS server's log is not a query log.
    args.log.init_with_default("info,hickory_server=warn")?;
    Ok(svcplane_dns::run::run(args).await?)
}
