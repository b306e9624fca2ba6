//! A plain Redis connection for what the load test reads or writes beside
//! the HTTP API: `INFO memory` figures and the poll-storm seeding.
//!
//! Every call has a timeout, so a Redis that restarts or vanishes during a
//! run costs a missing figure, never a run that does not end.

use std::time::Duration;

use fred::{
    clients::Client,
    interfaces::ClientLike,
    prelude::{Builder, Config},
    types::InfoKind,
};

/// Upper bound of one `INFO` call.
const INFO_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let config = Config::from_url(url)?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            c.max_command_attempts = 1;
        })
        // The poll-storm seeding batches are the slowest calls (well under
        // a second each); nothing may wait longer than this.
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(10))
        .build()?;
    tokio::time::timeout(Duration::from_secs(3), client.init()).await??;
    Ok(client)
}

/// `used_memory` from `INFO memory`, in bytes.
pub async fn used_memory(client: &Client) -> anyhow::Result<u64> {
    let info: String =
        tokio::time::timeout(INFO_TIMEOUT, client.info(Some(InfoKind::Memory))).await??;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("INFO memory has no used_memory"))
}
