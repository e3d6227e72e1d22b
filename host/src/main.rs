//! The `vkhost` command line: run the daemon, check a plugin, operate virtual nodes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vkhost::config::{DaemonConfig, LogFormat};

#[derive(Parser)]
#[command(
    name = "vkhost",
    version,
    about = "A virtual kubelet whose provider logic runs as sandboxed WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: register the configured virtual nodes and serve their pods.
    Run {
        /// The daemon's TOML config (see config.example.toml).
        #[arg(long, short, env = "VKHOST_CONFIG")]
        config: PathBuf,
    },
    /// Provider plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Operate a virtual node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The same as `vkhost plugin translate`.
    Translate(vkhost::translate::TranslateArgs),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print a plugin's metadata, contract version and compile time, and smoke-test it: a file or
    /// an `oci://` reference, pulled and verified as the daemon does.
    Check(vkhost::plugin::CheckArgs),
    /// Print what a plugin's `create` would send for a pod manifest (its `plan`), or the error
    /// that would stop the pod, without any side effect.
    Translate(vkhost::translate::TranslateArgs),
    /// Push a component to an OCI registry as a wasm artifact, signed with --key (cosign's format).
    Push(vkhost::plugin::source::publish::PushArgs),
    /// Write the detached signature FILE.sig of a component file.
    Sign(vkhost::plugin::source::publish::SignArgs),
    /// Write a new ECDSA P-256 signing key pair (PREFIX.key, PREFIX.pub).
    Keygen(vkhost::plugin::source::publish::KeygenArgs),

    /// Show which plugin version each node of a running daemon runs, and the rollout.
    Versions(vkhost::plugin::VersionsArgs),
    /// Keep a node of a running daemon on a plugin version it holds, whatever rollouts do.
    Pin(vkhost::plugin::PinArgs),
    /// Release a node's pin.
    Unpin(vkhost::plugin::UnpinArgs),
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Cordon the node: no new instances are created through it; existing ones are kept.
    Disable {
        name: String,
        #[arg(long, short, env = "VKHOST_CONFIG")]
        config: PathBuf,
    },
    /// Undo `disable`.
    Enable {
        name: String,
        #[arg(long, short, env = "VKHOST_CONFIG")]
        config: PathBuf,
    },
    /// Delete every instance of the node (and the volumes the provider deletes with them), then the Node.
    Delete {
        name: String,
        #[arg(long, short, env = "VKHOST_CONFIG")]
        config: PathBuf,
    },
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load(config: &PathBuf) -> anyhow::Result<DaemonConfig> {
    Ok(DaemonConfig::load(config)?)
}

/// The `[admin]` table of the `--config` given to a command that talks to a running daemon.
fn admin_config(args: &vkhost::plugin::AdminArgs) -> anyhow::Result<Option<vkhost::plugin::AdminConfig>> {
    let Some(path) = &args.config else { return Ok(None) };
    let admin = load(path)?.admin;
    Ok(Some(vkhost::plugin::AdminConfig { listen: admin.listen, token_file: admin.token_file }))
}

async fn shutdown_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight work, leaving instances running");
    token.cancel();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vkhost: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let cfg = load(&config)?;
            init_logging(cfg.log.format, &cfg.log.level);
            let token = CancellationToken::new();
            tokio::spawn(shutdown_signal(token.clone()));
            vkhost::daemon::run(cfg, token).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { command: PluginCommand::Check(args) } => {
            let code = vkhost::plugin::run_check(args).await?;
            Ok(ExitCode::from(code as u8))
        }
        Command::Plugin { command: PluginCommand::Versions(args) } => {
            let admin = admin_config(&args.admin)?;
            Ok(ExitCode::from(vkhost::plugin::run_versions(args, admin.as_ref()).await? as u8))
        }
        Command::Plugin { command: PluginCommand::Pin(args) } => {
            let admin = admin_config(&args.admin)?;
            let code = vkhost::plugin::run_pin(&args.node, Some(&args.version), &args.admin, admin.as_ref()).await?;
            Ok(ExitCode::from(code as u8))
        }
        Command::Plugin { command: PluginCommand::Unpin(args) } => {
            let admin = admin_config(&args.admin)?;
            Ok(ExitCode::from(vkhost::plugin::run_pin(&args.node, None, &args.admin, admin.as_ref()).await? as u8))
        }
        Command::Plugin { command: PluginCommand::Translate(args) } | Command::Translate(args) => {
            let code = vkhost::translate::run_translate(args).await?;
            Ok(ExitCode::from(code as u8))
        }
        Command::Plugin { command: PluginCommand::Push(args) } => {
            init_logging(LogFormat::Text, "warn");
            let code = vkhost::plugin::source::publish::run_push(args).await?;
            Ok(ExitCode::from(code as u8))
        }
        Command::Plugin { command: PluginCommand::Sign(args) } => {
            Ok(ExitCode::from(vkhost::plugin::source::publish::run_sign(args)? as u8))
        }
        Command::Plugin { command: PluginCommand::Keygen(args) } => {
            Ok(ExitCode::from(vkhost::plugin::source::publish::run_keygen(args)? as u8))
        }
        Command::Node { command } => {
            init_logging(LogFormat::Text, "warn");
            let (name, config) = match &command {
                NodeCommand::Disable { name, config }
                | NodeCommand::Enable { name, config }
                | NodeCommand::Delete { name, config } => (name.clone(), config.clone()),
            };
            let cfg = load(&config)?;
            let client = vkhost::apiclient::client(cfg.kubeconfig.as_deref(), &cfg.api).await?;
            match command {
                NodeCommand::Disable { .. } => {
                    vkhost::node::ops::disable(&client, &name).await?;
                    println!("node {name} disabled: cordoned, no new instances; existing pods keep running");
                }
                NodeCommand::Enable { .. } => {
                    vkhost::node::ops::enable(&client, &name).await?;
                    println!("node {name} enabled");
                }
                NodeCommand::Delete { .. } => {
                    let plugin = vkhost::daemon::load_plugin(&cfg).await.context("loading the provider plugin")?;
                    let report = vkhost::node::ops::delete(&client, &plugin, &cfg, &name).await?;
                    println!("node {name} deleted with its {} instances", report.instances_deleted);
                    if report.deletions_resumed > 0 {
                        println!("finished {} deletions an interrupted run had started", report.deletions_resumed);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
