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
    /// Print the CreateCubePod request a pod manifest would produce on a Cube node, or the
    /// error that would stop it, without calling the cloud.
    Translate {
        /// The daemon config; the node's `[nodes.provider]` table is used.
        #[arg(long, short, env = "VKHOST_CONFIG")]
        config: PathBuf,
        /// The config node id (default: the first node).
        #[arg(long)]
        node: Option<String>,
        /// A Pod, or a Deployment/StatefulSet/Job whose pod template is used.
        manifest: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print a plugin's metadata, contract version and compile time, and smoke-test it.
    Check(vkhost::plugin::CheckArgs),
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

/// `vkhost translate`: the Cube plugin's pure translation, run natively.
fn translate(config: &PathBuf, node: Option<&str>, manifest: &PathBuf) -> anyhow::Result<ExitCode> {
    let cfg = load(config)?;
    let settings = match node {
        Some(id) => {
            cfg.nodes.iter().find(|n| n.id == id).with_context(|| format!("no node {id:?} in {}", config.display()))?
        }
        None => &cfg.nodes[0],
    };
    // Credentials are not needed to translate: stand in for the ones not at hand.
    let mut provider = settings.provider.clone();
    for key in settings.secrets.keys() {
        provider.insert(key.clone(), toml::Value::String("not-needed-to-translate".into()));
    }
    if let Ok(filled) = settings.provider_json() {
        provider = serde_json::from_value(filled)?;
    }
    let config_json = serde_json::to_string(&provider)?;
    let yaml = std::fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let pod = match cube_provider::pod_from_manifest(&yaml) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: {}: {}", e.reason, e.field, e.message);
            return Ok(ExitCode::FAILURE);
        }
    };
    let node_name = format!("{}-vk-xxxxx", cfg.cluster_id);
    match cube_provider::translate(&node_name, &config_json, &pod) {
        Ok(req) => {
            print!("{}", req.render());
            Ok(ExitCode::SUCCESS)
        }
        Err(cube_provider::TranslateError::Invalid(e)) => {
            eprintln!("{}: {}: {}", e.reason, e.field, e.message);
            Ok(ExitCode::FAILURE)
        }
        Err(cube_provider::TranslateError::NotReady(m)) => {
            eprintln!("not ready (the daemon would wait and retry): {m}");
            Ok(ExitCode::FAILURE)
        }
    }
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
        Command::Translate { config, node, manifest } => translate(&config, node.as_deref(), &manifest),
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
