//! The `vkhost plugin check`, `versions`, `pin` and `unpin` subcommands' arguments and exit
//! codes; `main.rs` only routes to them. `versions` and the pins talk to a running daemon's
//! admin endpoint (`[admin] listen`, the token of `[admin] token_file`).

use std::path::PathBuf;

use crate::plugin::check::{CheckReport, check_with, describe_failure, read_config_file};
use crate::plugin::settings::PluginSettings;

/// Check a provider plugin, from a file or an OCI registry: source checks (size, signature),
/// contract version, compile, typecheck, metadata and (with --config) the plugin's verdict on a
/// node config. Exits 1 when the plugin would be refused.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The component: a file (`*.wasm`), or an OCI artifact as `[plugin] source` names it
    /// (`oci://registry/repository:tag` or `…@sha256:<hex>`), pulled as the daemon pulls it
    /// (credentials from VKHOST_REGISTRY_USERNAME and VKHOST_REGISTRY_PASSWORD).
    #[arg(value_name = "FILE|oci://REFERENCE")]
    pub plugin: String,
    /// A node's provider config to validate: a TOML file (the `[nodes.provider]` table) or JSON.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The node name passed to `validate-config`.
    #[arg(long, default_value = "check-node")]
    pub node: String,
    /// As `[plugin] public_key`: a PEM public key (ECDSA P-256) the component must be signed by,
    /// with cosign's signature for an OCI artifact, a detached `FILE.sig` for a file.
    #[arg(long, value_name = "PEM")]
    pub public_key: Option<PathBuf>,
    /// As `[plugin] max_component_mib`: a larger file or OCI layer is refused before it is read.
    #[arg(long, value_name = "MIB", default_value_t = crate::plugin::source::MAX_COMPONENT_MIB)]
    pub max_component_mib: u64,
    /// Compile (and pull) even if the cache holds the component (to see the compile time).
    #[arg(long)]
    pub no_cache: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl CheckArgs {
    /// The `[plugin]` table the daemon would run this plugin with: `source` for a reference
    /// (anything with a scheme, so `https://…` is refused naming what is accepted), else `path`.
    fn settings(&self) -> PluginSettings {
        let mut settings = if self.plugin.contains("://") {
            let mut s = PluginSettings::new("");
            s.source = Some(self.plugin.clone());
            s
        } else {
            PluginSettings::new(&self.plugin)
        };
        settings.public_key = self.public_key.clone();
        settings.max_component_mib = self.max_component_mib;
        settings
    }
}

/// Runs the check and prints the report (stdout) or the reason for refusal (stderr). Returns the
/// process exit code: 0 accepted, 1 refused, 2 unreadable config file.
pub async fn run_check(args: CheckArgs) -> anyhow::Result<i32> {
    let config = match &args.config {
        None => None,
        Some(path) => match read_config_file(path) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("error: config {e}");
                return Ok(2);
            }
        },
    };
    let mut settings = args.settings();
    if args.no_cache {
        // A fresh directory per run: nothing to hit, and nothing left behind that matters.
        settings.cache_dir = match fresh_private_dir() {
            Ok(dir) => Some(dir),
            Err(e) => {
                eprintln!(
                    "error: --no-cache: cannot create a scratch directory in {}: {e}",
                    std::env::temp_dir().display()
                );
                return Ok(2);
            }
        };
    }
    let result = check_with(settings.clone(), config, &args.node).await;
    if args.no_cache
        && let Some(dir) = &settings.cache_dir
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    match result {
        Ok(report) => {
            print_report(&report, args.json)?;
            Ok(0)
        }
        Err(e) => {
            if args.json {
                println!("{}", serde_json::json!({ "ok": false, "error": e.to_string() }));
            }
            eprintln!("error: {}", describe_failure(&args.plugin, &e));
            eprintln!("result      REFUSED");
            Ok(1)
        }
    }
}

/// A new directory under the temp dir that nobody else can have prepared: an unguessable name,
/// created (not reused) with mode 0700. A predictable name in a shared /tmp could be planted
/// beforehand, as a directory or a symlink to one.
fn fresh_private_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vkhost-check-{}-{:016x}", std::process::id(), rand::random::<u64>()));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir)?;
    Ok(dir)
}

fn print_report(report: &CheckReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// Where a running daemon's admin endpoint is: from its config, or given.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The daemon's config: `[admin] listen` and `token_file` are read from it.
    #[arg(long, short, env = "VKHOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// The admin endpoint's URL, e.g. `http://127.0.0.1:10255` (instead of `[admin] listen`).
    #[arg(long)]
    pub admin: Option<String>,
    /// The file holding the admin bearer token (instead of `[admin] token_file`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// Show every node's plugin version, the versions held and where the rollout stands.
#[derive(Debug, Clone, clap::Args)]
pub struct VersionsArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Keep a node on a version the daemon holds, whatever rollouts do (until `unpin` or a restart).
#[derive(Debug, Clone, clap::Args)]
pub struct PinArgs {
    /// The node: its config id (`[[nodes]] id`) or its name.
    pub node: String,
    /// The version: a version string (`1.4.0`) or a sha256 prefix (`sha256:3f2a…`).
    pub version: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Release a node's pin: it runs what the rollout gives it again.
#[derive(Debug, Clone, clap::Args)]
pub struct UnpinArgs {
    /// The node: its config id or its name.
    pub node: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// A daemon's `[admin]` settings, read from its config by the caller.
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    pub listen: String,
    pub token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// The endpoint's base URL and the token, if any: the flags, else `config` (the `--config`
    /// file's `[admin]` table, which the caller read).
    fn resolve(&self, config: Option<&AdminConfig>) -> anyhow::Result<(String, Option<String>)> {
        let base = match (&self.admin, config) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(c)) if !c.listen.is_empty() => {
                // A daemon listening on every address is reached on loopback.
                let listen = c.listen.replace("0.0.0.0:", "127.0.0.1:").replace("[::]:", "[::1]:");
                format!("http://{listen}")
            }
            (None, Some(_)) => anyhow::bail!("the config's [admin] listen is empty: the daemon has no admin endpoint"),
            (None, None) => anyhow::bail!("give --config (the daemon's config) or --admin URL"),
        };
        let token_file = self.token_file.clone().or_else(|| config.and_then(|c| c.token_file.clone()));
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok((base, token))
    }
}

async fn admin_call(
    admin: &AdminArgs,
    config: Option<&AdminConfig>,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
    let (base, token) = admin.resolve(config)?;
    let http = reqwest::Client::new();
    let url = format!("{base}{path}");
    let mut req = match &body {
        Some(body) => http.post(&url).json(body),
        None => http.get(&url),
    };
    if let (Some(token), Some(_)) = (&token, &body) {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.map_err(|e| anyhow::anyhow!("{url}: {}", crate::error_chain(&e)))?;
    let status = resp.status();
    let value = resp.json().await.map_err(|e| anyhow::anyhow!("{url}: answer is not JSON: {e}"))?;
    Ok((status, value))
}

/// `vkhost plugin versions`: 0, or 1 when the daemon could not be asked.
pub async fn run_versions(args: VersionsArgs, config: Option<&AdminConfig>) -> anyhow::Result<i32> {
    let (status, view) = admin_call(&args.admin, config, "/plugin/versions", None).await?;
    if !status.is_success() {
        eprintln!("error: {status}: {view}");
        return Ok(1);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render_versions(&view));
    }
    Ok(0)
}

/// `vkhost plugin pin` and `unpin`: 0 done, 1 refused.
pub async fn run_pin(
    node: &str,
    version: Option<&str>,
    admin: &AdminArgs,
    config: Option<&AdminConfig>,
) -> anyhow::Result<i32> {
    let (path, body) = match version {
        Some(v) => ("/plugin/pin", serde_json::json!({ "node": node, "version": v })),
        None => ("/plugin/unpin", serde_json::json!({ "node": node })),
    };
    let (status, answer) = admin_call(admin, config, path, Some(body)).await?;
    if !status.is_success() {
        eprintln!("error: {}", answer["error"].as_str().unwrap_or(&answer.to_string()));
        return Ok(1);
    }
    let n = &answer["node"];
    let held = if n["pinned"].as_bool() == Some(true) { "pinned to" } else { "runs" };
    println!(
        "node {} {held} {} (sha256 {})",
        n["node"].as_str().unwrap_or(node),
        n["version"].as_str().unwrap_or("?"),
        short_sha(&n["sha256"])
    );
    Ok(0)
}

fn short_sha(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or("?").chars().take(12).collect()
}

/// The versions view as text: the rollout, then one line per node.
fn render_versions(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let version = |x: &serde_json::Value| {
        format!(
            "{}@{} sha256:{}",
            x["name"].as_str().unwrap_or("?"),
            x["version"].as_str().unwrap_or("?"),
            short_sha(&x["sha256"])
        )
    };
    if v["rollout"].as_bool() == Some(true) {
        let _ = writeln!(
            out,
            "rollout     canary nodes {}, healthy {} s",
            v["canary_nodes"],
            v["healthy_seconds"].as_u64().unwrap_or(0)
        );
    } else {
        let _ = writeln!(out, "rollout     none: a new version goes to every node at once");
    }
    let _ = writeln!(out, "stable      {}", version(&v["stable"]));
    if let Some(c) = v["candidate"].as_object() {
        let c = serde_json::Value::Object(c.clone());
        let _ = writeln!(
            out,
            "in rollout  {} ({} for {} s)",
            version(&c),
            c["phase"].as_str().unwrap_or("?"),
            c["phase_seconds"].as_u64().unwrap_or(0)
        );
    }
    if let Some(r) = v["rolled_back"].as_object() {
        let _ = writeln!(out, "rolled back sha256:{}: {}", short_sha(&r["digest"]), r["reason"].as_str().unwrap_or(""));
    }
    let _ = writeln!(out, "{:<16} {:<32} {:<12} {:<14} NOTE", "NODE", "NAME", "VERSION", "SHA256");
    for n in v["nodes"].as_array().into_iter().flatten() {
        let names: Vec<&str> = n["names"].as_array().into_iter().flatten().filter_map(|x| x.as_str()).collect();
        let mut note = Vec::new();
        if n["pinned"].as_bool() == Some(true) {
            note.push("pinned".to_string());
        }
        if let Some(calls) = n["watched_calls"].as_u64() {
            note.push(format!("watched, {calls} calls"));
        }
        let _ = writeln!(
            out,
            "{:<16} {:<32} {:<12} {:<14} {}",
            n["node"].as_str().unwrap_or("?"),
            if names.is_empty() { "-".to_string() } else { names.join(",") },
            n["version"].as_str().unwrap_or("?"),
            short_sha(&n["sha256"]),
            note.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_args(plugin: &str) -> CheckArgs {
        CheckArgs {
            plugin: plugin.into(),
            config: None,
            node: "n".into(),
            public_key: Some("author.pub".into()),
            max_component_mib: 8,
            no_cache: false,
            json: false,
        }
    }

    #[test]
    fn a_reference_is_checked_as_the_daemons_source_and_anything_else_as_its_path() {
        let s = check_args("oci://127.0.0.1:5000/vk/cube:1").settings();
        assert_eq!((s.path.as_os_str(), s.source.as_deref()), ("".as_ref(), Some("oci://127.0.0.1:5000/vk/cube:1")));
        assert_eq!((s.public_key.as_deref(), s.max_component_mib), (Some("author.pub".as_ref()), 8));
        let s = check_args("plugins/cube.wasm").settings();
        assert_eq!((s.path.as_os_str(), s.source.as_deref()), ("plugins/cube.wasm".as_ref(), None));
        // Another scheme is not taken for a file name: refused, saying what is accepted.
        let err = check_args("https://registry.example.com/vk/cube:1").settings().source().unwrap_err();
        assert!(err.to_string().contains("it must start with oci://"), "{err}");
    }

    #[test]
    fn no_cache_scratch_directories_are_new_private_and_unguessable() {
        let (a, b) = (fresh_private_dir().unwrap(), fresh_private_dir().unwrap());
        assert_ne!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o700);
        }
        std::fs::remove_dir(&a).unwrap();
        std::fs::remove_dir(&b).unwrap();
    }
}
