//! The `vkhost plugin check` subcommand's arguments and exit codes; `main.rs` only routes to it.

use std::path::PathBuf;

use crate::plugin::check::{CheckReport, check_with, describe_failure, read_config_file};
use crate::plugin::settings::PluginSettings;

/// Check a provider plugin file: contract version, compile, typecheck, metadata and (with
/// --config) the plugin's verdict on a node config. Exits 1 when the plugin would be refused.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The component file (`*.wasm`).
    pub file: PathBuf,
    /// A node's provider config to validate: a TOML file (the `[nodes.provider]` table) or JSON.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The node name passed to `validate-config`.
    #[arg(long, default_value = "check-node")]
    pub node: String,
    /// Compile even if a cached compilation exists (to see the compile time).
    #[arg(long)]
    pub no_cache: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
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
    let mut settings = PluginSettings::new(&args.file);
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
            eprintln!("error: {}", describe_failure(&args.file, &e));
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

#[cfg(test)]
mod tests {
    use super::*;

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
