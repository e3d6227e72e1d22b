//! The process-level fault harness: two vkhost replicas (sharing the HA election) and cube-sim
//! as separate processes on a real control plane; each fault injected mid-burst and mid-scale-down
//! while the invariants are sampled every 250 ms; or a soak of mixed churn with random faults.
//! The shared machinery is `tests/support/chaos.rs`; `tests/e2e/chaos.rs` is its bounded
//! version in `make test`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use vkcube_e2e::bench::loadavg;
use vkcube_e2e::chaos::{Fault, Options, Profile, Report, World};

const USAGE: &str = "\
process-level fault harness: vkhost replicas and cube-sim as processes on a real control plane

usage:
  cargo build --release -p vkhost -p cube-sim && plugins/build cube
  cargo run --release -p vkcube-e2e --example chaos -- (--fault NAME | --all | --soak MINUTES)
        [--pods N] [--seed S] [--cut SECS] [--window SECS] [--lease SECS] [--timeout SECS]

  --fault NAME    one fault (or a comma-separated list), injected mid-burst (0 -> N) and
                  mid-scale-down (N -> 0):
                  kill, kill-node-delete, pause, apiserver-restart, etcd-restart, apiserver-cut,
                  sim-restart, cloud-errors, cloud-drops, cloud-lost-creates, cloud-late-creates,
                  cloud-latency, cloud-quota, reload
  --all           every fault in turn (kill-node-delete last)
  --soak MINUTES  mixed churn (scale, pod deletes, node disable/enable, reloads) with random
                  faults; a checkpoint (faults cleared, pods converged) every 10 steps
  --pods N        pods per burst, at most 200 (default 200; the soak scales between 0 and N)
  --seed S        the seed of the soak and of the cloud latency (default: random, printed)
  --cut SECS      how long apiserver-cut keeps the apiserver unreachable (default 60)
  --window SECS   how long cloud faults stay on (default 15)
  --lease SECS    the replicas' election lease (default 6)
  --timeout SECS  bound on each convergence wait (default 300)

Invariants (a violation stops the run with the evidence): never two live instances for one
pod UID at any sample; every pod Running+Ready or failed with a named reason and an Event; none
stuck Terminating; after one orphan sweep no live instance without a pod, no EIP unreleased, no
UDisk in use. Binaries from ${CARGO_TARGET_DIR:-<repo>/target}/release (VKCUBE_CHAOS_BIN_DIR=DIR
overrides), cube.wasm from ${CARGO_TARGET_DIR}/plugins (VKCUBE_PLUGIN_DIR overrides).";

enum Mode {
    Faults(Vec<Fault>),
    Soak(f64),
}

struct Args {
    mode: Mode,
    pods: usize,
    seed: u64,
    opts: Options,
    line: String,
}

fn parse_args() -> Result<Args> {
    let mut mode = None;
    let mut pods = 200;
    let mut seed = rand::random::<u32>() as u64;
    let mut opts = Options::new(Profile::Release);
    let mut it = std::env::args().skip(1);
    let secs = |v: String, flag: &str| -> Result<Duration> {
        Ok(Duration::from_secs(v.parse().with_context(|| format!("{flag} must be seconds"))?))
    };
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value\n\n{USAGE}"));
        match flag.as_str() {
            "--fault" => {
                let names = value("--fault")?;
                mode = Some(Mode::Faults(names.split(',').map(Fault::parse).collect::<Result<_>>()?))
            }
            "--all" => mode = Some(Mode::Faults(Fault::ALL.to_vec())),
            "--soak" => mode = Some(Mode::Soak(value("--soak")?.parse().context("--soak must be minutes")?)),
            "--pods" => pods = value("--pods")?.parse().context("--pods must be a positive integer")?,
            "--seed" => seed = value("--seed")?.parse().context("--seed must be an integer")?,
            "--cut" => opts.cut = secs(value("--cut")?, "--cut")?,
            "--window" => opts.cloud_window = secs(value("--window")?, "--window")?,
            "--lease" => opts.lease_seconds = value("--lease")?.parse().context("--lease must be seconds")?,
            "--timeout" => opts.timeout = secs(value("--timeout")?, "--timeout")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    let Some(mode) = mode else { bail!("give --fault NAME, --all or --soak MINUTES\n\n{USAGE}") };
    if pods == 0 || pods > 200 {
        bail!("--pods is {pods}, but must be from 1 to 200 (one node's max_pods)");
    }
    let line = format!(
        "--pods {pods} --seed {seed} --cut {} --window {} --lease {} --timeout {}",
        opts.cut.as_secs(),
        opts.cloud_window.as_secs(),
        opts.lease_seconds,
        opts.timeout.as_secs()
    );
    Ok(Args { mode, pods, seed, opts, line })
}

const CMD: &str = "cargo run --release -p vkcube-e2e --example chaos --";

fn main() -> Result<()> {
    let args = parse_args()?;
    println!(
        "vkcube chaos: seed {} cpus {} load {} ({})",
        args.seed,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        loadavg(),
        args.line
    );
    eprintln!("starting the control plane (tests/cluster/up)…");
    let cluster = vkcube_e2e::cluster();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let mut world = World::start(cluster, args.opts.clone(), "bench").await?;
        eprintln!("run dir (logs, configs, simulator state): {}", world.dir.display());
        let result = match &args.mode {
            Mode::Faults(faults) => run_faults(&mut world, faults, &args).await,
            Mode::Soak(minutes) => run_soak(&mut world, *minutes, &args).await,
        };
        world.stop();
        if let Err(e) = &result {
            eprintln!("run dir kept: {}", world.dir.display());
            eprintln!("{e:#}");
        }
        result
    })
}

async fn run_faults(world: &mut World, faults: &[Fault], args: &Args) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    println!();
    println!(
        "{:<20} {:>5} {:>9} {:>11} {:>9}  {:>4} {:>4} {:>4} {:>4} {:>4} {:>4}  {:>7} {:>8}",
        "fault",
        "pods",
        "burst s",
        "after flt s",
        "down s",
        "lost",
        "dup",
        "orph",
        "stuck",
        "eip",
        "disk",
        "samples",
        "fenced"
    );
    let mut reports: Vec<Report> = Vec::new();
    for &fault in faults {
        let latency = rng.random_range(1000..=5000);
        let report = world.cycle(fault, args.pods, latency).await.with_context(|| {
            format!("fault {} failed; reproduce: {CMD} --fault {} {}", fault.name(), fault.name(), args.line)
        })?;
        let c = &report.counts;
        println!(
            "{:<20} {:>5} {:>9.1} {:>11.1} {:>9.1}  {:>4} {:>4} {:>4} {:>4} {:>4} {:>4}  {:>7} {:>8}",
            report.fault,
            report.pods,
            report.burst_s,
            report.converge_after_fault_s,
            report.teardown_s,
            c.lost,
            c.duplicated,
            c.orphaned,
            c.stuck,
            c.eip_leaked,
            c.disk_leaked,
            c.samples,
            c.fenced_writes
        );
        for n in &report.notes {
            println!("    {n}");
        }
        println!("    reproduce: {CMD} --fault {} {}", fault.name(), args.line);
        println!("    {}", serde_json::to_string(&report)?);
        if !c.clean() {
            bail!("fault {}: invariants not at 0: {c:?}", fault.name());
        }
        reports.push(report);
    }
    println!("\nall {} fault(s) at {} pods: every invariant at 0", reports.len(), args.pods);
    Ok(())
}

async fn run_soak(world: &mut World, minutes: f64, args: &Args) -> Result<()> {
    let say = |line: String| println!("{line}");
    let report = world
        .soak(minutes, args.pods, args.seed, &say)
        .await
        .with_context(|| format!("soak failed; reproduce: {CMD} --soak {minutes} {}", args.line))?;
    println!("\nsoak: {:.1} min, seed {}, {} steps: {:?}", report.minutes, report.seed, report.steps, report.actions);
    println!("checkpoint convergence s: {:?}", report.checkpoints_s);
    println!("final convergence {:.1}s; counts {:?}", report.final_converge_s, report.counts);
    println!("reproduce: {CMD} --soak {minutes} {}", args.line);
    println!("{}", serde_json::to_string(&report)?);
    if !report.counts.clean() {
        bail!("soak: invariants not at 0: {:?}", report.counts);
    }
    Ok(())
}
