//! The `cube-sim` command: serve the simulator, run the UDisk provisioner, or benchmark.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use cube_sim::{Config, KeyPair, Simulator};

#[derive(Parser)]
#[command(
    name = "cube-sim",
    version,
    about = "A simulator of the Cube serverless container API (plus the UNet and UDisk calls it needs) on loopback",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Stand-in for the UDisk CSI controller: provisions PVCs of StorageClasses with
    /// provisioner udisk.csi.ucloud.cn as simulator disks plus bound PVs.
    UdiskProvisioner(cube_sim::provisioner::ProvisionerArgs),
    /// Sends N signed GetCubePod calls with C in flight and prints calls/s, p50, p99.
    Bench(cube_sim::bench::BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (loopback only). Port 0 picks a free port; the first stdout line
    /// is always `listening on http://ADDR`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// An accepted API key pair; repeat for more.
    #[arg(long = "key", value_name = "PUBLIC:PRIVATE")]
    keys: Vec<KeyPair>,
    /// TOML config: regions, zones, projects, vpcs, subnets, registries, quotas, lifecycle,
    /// limits, faults (see README.md). Flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep instances, EIPs and disks in this JSON file across restarts.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// A self-hosted registry host (host or host:port) images may come from; repeatable.
    #[arg(long = "registry", value_name = "HOST")]
    registries: Vec<String>,
    /// Milliseconds an instance reports Pending (default 200).
    #[arg(long, value_name = "MS")]
    pending_ms: Option<u64>,
    /// Milliseconds it then reports ContainerCreating before Running (default 800).
    #[arg(long, value_name = "MS")]
    creating_ms: Option<u64>,
    /// Up to this many more milliseconds of ContainerCreating, a share fixed per instance
    /// (default 0: every instance starts alike).
    #[arg(long, value_name = "MS")]
    creating_jitter_ms: Option<u64>,
    /// Give instances addresses of this loopback network and serve their nginx containers
    /// there (`[network] pod_cidr` with `serve = true`), e.g. 127.77.0.0/16.
    #[arg(long, value_name = "CIDR")]
    serve_pods: Option<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.cmd {
        Some(Cmd::UdiskProvisioner(args)) => rt.block_on(cube_sim::provisioner::run(args)),
        Some(Cmd::Bench(args)) => rt.block_on(cube_sim::bench::run(args)),
        None => rt.block_on(serve(cli.serve)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Config::from_toml(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    cfg.keys.extend(args.keys);
    cfg.registries.extend(args.registries);
    if let Some(s) = args.state {
        cfg.state_file = Some(s);
    }
    if let Some(ms) = args.pending_ms {
        cfg.lifecycle.pending_ms = ms;
    }
    if let Some(ms) = args.creating_jitter_ms {
        cfg.lifecycle.creating_jitter_ms = ms;
    }
    if let Some(ms) = args.creating_ms {
        cfg.lifecycle.creating_ms = ms;
    }
    if let Some(cidr) = args.serve_pods {
        cfg.network.pod_cidr = cidr;
        cfg.network.serve = true;
    }
    if cfg.keys.is_empty() {
        anyhow::bail!("no API key pair: pass --key PUBLIC:PRIVATE or [[keys]] in the config");
    }
    let handle = Simulator::start(cfg).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", handle.url())?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    handle.shutdown().await;
    Ok(())
}
