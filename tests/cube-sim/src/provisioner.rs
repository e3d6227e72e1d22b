//! placeholder
#[derive(clap::Args)]
pub struct ProvisionerArgs {}
pub async fn run(_a: ProvisionerArgs) -> anyhow::Result<()> { Ok(()) }
