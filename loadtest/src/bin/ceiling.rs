//! `ceiling`: the machine's ceiling for "axum + one Redis round trip".
//!
//! One route, `GET /ceiling`, runs ONE `EVALSHA` of a trivial Lua script
//! (one `GET` of a key that does not exist) through a fred pool of 4
//! connections built like the service's (`src/store/redis.rs`), and
//! answers a small JSON body. No middleware, no token, no tracing: whatever
//! the service's endpoints achieve is compared with this, measured by the
//! same Goose client in the same run.
//!
//! ```text
//! CEILING_ADDR=127.0.0.1:18081 REDIS_URL=redis://127.0.0.1:6379 \
//!   BOXOFFICE_REDIS_PREFIX=bench-1: cargo run -p loadtest --release --bin ceiling
//! ```

use std::{sync::Arc, time::Duration};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use fred::{
    clients::Pool,
    interfaces::{ClientLike, LuaInterface},
    prelude::{Builder, Config, ReconnectPolicy},
};
use serde_json::{Value, json};

/// The trivial script: one read, like the cheapest service script.
const SCRIPT: &str = "return redis.call('GET', KEYS[1]) or ARGV[1]";
/// Same as the service's pool (`POOL_SIZE` in src/store/redis.rs).
const POOL_SIZE: usize = 4;

struct App {
    pool: Pool,
    sha: String,
    key: String,
}

async fn ceiling(State(app): State<Arc<App>>) -> Result<Json<Value>, StatusCode> {
    let v: String = app
        .pool
        .next()
        .evalsha(
            app.sha.as_str(),
            vec![app.key.clone()],
            vec!["ok".to_owned()],
        )
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(Json(json!({ "status": v })))
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The service's process settings, so the reference differs only in
    // what it serves.
    let _ = boxoffice::process::no_transparent_huge_pages();
    let addr = std::env::var("CEILING_ADDR").unwrap_or_else(|_| "127.0.0.1:18081".into());
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = std::env::var("BOXOFFICE_REDIS_PREFIX").unwrap_or_default();
    let pool = Builder::from_config(Config::from_url(&url)?)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_millis(1_000);
            c.internal_command_timeout = Duration::from_millis(1_000);
            c.max_command_attempts = 1;
            c.tcp.nodelay = Some(true);
        })
        .with_performance_config(|p| p.default_command_timeout = Duration::from_millis(500))
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
        .build_pool(POOL_SIZE)?;
    pool.init().await?;
    let sha: String = pool.next().script_load(SCRIPT).await?;
    let app = Arc::new(App {
        pool,
        sha,
        key: format!("{prefix}ceiling:missing"),
    });
    let router = Router::new()
        .route("/ceiling", get(ceiling))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("ceiling: listening on {addr}");
    axum::serve(listener, router).await?;
    Ok(())
}
