//! A plain Redis connection for what the load test reads or writes beside
//! the HTTP API: `INFO memory` figures and the poll-storm seeding.

use std::time::Duration;

use fred::{
    clients::Client,
    interfaces::ClientLike,
    prelude::{Builder, Config},
    types::InfoKind,
};

pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let config = Config::from_url(url)?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
        .build()?;
    tokio::time::timeout(Duration::from_secs(3), client.init()).await??;
    Ok(client)
}

/// `used_memory` from `INFO memory`, in bytes.
pub async fn used_memory(client: &Client) -> anyhow::Result<u64> {
    let info: String = client.info(Some(InfoKind::Memory)).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("INFO memory has no used_memory"))
}
