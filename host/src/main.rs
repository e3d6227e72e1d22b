//! The `vkhost` command line: run the daemon, check a plugin, operate virtual nodes.

fn main() -> anyhow::Result<()> {
    println!("vkhost {}", env!("CARGO_PKG_VERSION"));
    Ok(())
}
