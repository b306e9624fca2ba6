//! Goose load tests of boxoffice.
//!
//! ```text
//! cargo run -p loadtest --release -- <scenario> [goose options]
//! cargo run -p loadtest --release -- holds --host http://127.0.0.1:18080 -u 64 -r 64 -t 20s
//! ```
//!
//! Each scenario first sets up what it needs through the service's admin API
//! (its own event, named after the scenario and the run, so runs never
//! collide), then hands the rest of the command line to Goose. Goose prints
//! its usual report; on top of it every run writes, into `loadtest/reports/`
//! (git-ignored): Goose's HTML and JSON reports, and `<scenario>-summary.json`
//! with req/s and p50/p90/p99 per request name, which `scripts/bench_report.py`
//! turns into `docs/BENCHMARKS.md`.
//!
//! `prequeue` is no Goose scenario but a sequence of measured phases
//! against a pre-queue of a million entries (`prequeue.rs`,
//! `scripts/bench_prequeue.sh`).
//!
//! The service's settings are read the way the service reads them
//! (`boxoffice::config::Config::from_env`): `BOXOFFICE_SERVICE_KEY` for the
//! admin calls, and for `poll-storm` also `REDIS_URL`,
//! `BOXOFFICE_REDIS_PREFIX` and `BOXOFFICE_TOKEN_SECRET`, which must be the
//! values the service runs with.

mod common;
mod flash_sale;
mod loopback;
mod pay;
mod poll_storm;
mod prequeue;
mod procstat;
mod redis;
mod scenarios;
mod setup;
mod summary;

use std::time::Duration;

use goose::{client::GooseClientBuilder, config::GooseConfiguration, prelude::*};

use common::Ctx;

const USAGE: &str = "\
usage: loadtest <scenario> [goose options]

scenarios:
  ceiling     GET /ceiling on the `ceiling` server (axum + one EVALSHA): the reference
  join        every request joins the queue with a fresh user id (open queue)
  status      users join once, then poll GET /v1/queue/status in a loop
  holds       admitted users hold `count: 1` on large schedules
  hot-seat    everyone holds one of seats 1..3 (409s count as successes)
  payment     per iteration: join, hold `count: 1`, pay (wallets charged up front)
  pay         the payment path alone: LOADTEST_PAY_STOCK purchases made ready before the
              run (a buyer each: wallet charged, joined, one seat held); each iteration pays one
  flash-sale  N buyers (one per Goose user, one iteration each) queue, hold, charge, pay
  poll-storm  a queue of LOADTEST_WAITING users seeded straight into Redis; users
              poll status with tokens deep in the queue (admission paused)
  prequeue    not Goose: a pre-queue of LOADTEST_PREQUEUE entries seeded into Redis,
              then phases (joins, polls, opens_at passing, polls, streams, the
              admin entry list), each with Redis's own per-command latencies
              (`loadtest prequeue --host URL`; scripts/bench_prequeue.sh)

goose options: as `loadtest <scenario> --help` lists them (-H/--host, -u, -r, -t, ...).
Defaults: --host http://127.0.0.1:18080 (18081 for ceiling), reports in loadtest/reports/.

environment:
  BOXOFFICE_SERVICE_KEY      admin key of the service under test
  REDIS_URL, BOXOFFICE_REDIS_PREFIX, BOXOFFICE_TOKEN_SECRET
                             as the service runs with (poll-storm seeding; Redis
                             memory figures of every scenario)
  LOADTEST_REPORT_DIR        where reports go (default loadtest/reports)
  LOADTEST_BUYERS            flash-sale buyers (default: -u)
  LOADTEST_SEATS             flash-sale seats (default 5000)
  LOADTEST_PREQUEUE_SECONDS  flash-sale pre-queue phase: buyers arriving this long
                             before opens_at wait in the pre-queue (default 5; 0 = none)
  LOADTEST_ADMIT_PER_SECOND  flash-sale admission rate (default 1000)
  LOADTEST_MAX_ACTIVE        flash-sale admitted users at one time (default 1000)
  LOADTEST_ADMISSION         flash-sale admission: fixed (LOADTEST_ADMIT_PER_SECOND) or
                             auto (the autopilot, up to that rate; default fixed)
  LOADTEST_TARGET_P99_MS     flash-sale autopilot target (default 50)
  LOADTEST_AUTO_START        flash-sale autopilot's first rate (default 200 per second)
  LOADTEST_PAY_STOCK         pay: purchases made ready before the run (default 30000);
                             the run should not use them all (the summary says if it did)
  LOADTEST_WAITING           poll-storm queue length (default 100000)
  LOADTEST_PREQUEUE          prequeue entries (default 1000000)
  LOADTEST_PREQUEUE_SECONDS, LOADTEST_PREQUEUE_CONCURRENCY, LOADTEST_PREQUEUE_STREAMS
                             prequeue phase length (15), requests in flight (32),
                             streams of the stream phase (2000; 0 = none)
";

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    // As the service does: the buyers' clients are on the service's cores.
    let _ = boxoffice::process::no_transparent_huge_pages();
    if let Err(e) = run().await {
        eprintln!("loadtest: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let Some(first) = args.first().cloned() else {
        eprint!("{USAGE}");
        std::process::exit(2);
    };
    if matches!(first.as_str(), "-h" | "--help" | "help") {
        print!("{USAGE}");
        return Ok(());
    }
    if first == "prequeue" {
        return prequeue::run(&args[1..]).await;
    }
    let scenario = common::Scenario::parse(&first)
        .ok_or_else(|| anyhow::anyhow!("unknown scenario {first:?}\n\n{USAGE}"))?;
    args.remove(0);

    let report_dir = common::report_dir();
    std::fs::create_dir_all(&report_dir)?;
    // Goose's own reports, unless the caller asked for others; no telnet
    // controller (two load tests at once would fight over its port).
    if !args.iter().any(|a| a.starts_with("--report-file")) {
        for ext in ["html", "json"] {
            args.push("--report-file".into());
            args.push(format!(
                "{}/{}.{ext}",
                report_dir.display(),
                scenario.name()
            ));
        }
    }
    if !args.iter().any(|a| a == "--no-telnet") {
        args.push("--no-telnet".into());
    }
    let mut config =
        GooseConfiguration::parse_args_default(&args).map_err(|e| anyhow::anyhow!("{e}"))?;
    if config.host.is_none() {
        config.host = Some(scenario.default_host().to_owned());
    }
    let host = config.host.clone().unwrap_or_default();
    let users = config.users.unwrap_or(1);

    let service = boxoffice::config::Config::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let redis = redis::connect(&service.redis_url).await.ok();
    if redis.is_none() {
        eprintln!("loadtest: Redis at REDIS_URL not reachable; no memory figures");
    }

    // Scenario set-up through the admin API (and Redis for poll-storm).
    let mut ctx = Ctx::new(scenario, &host, &service);
    let mut extra = serde_json::Map::new();
    setup::prepare(&mut ctx, users, redis.as_ref(), &mut extra).await?;
    common::install(ctx);
    let ctx = common::ctx();

    let mem_before = match &redis {
        Some(r) => redis::used_memory(r).await.ok(),
        None => None,
    };

    let mut attack = GooseAttack::initialize_with_config(config)?
        .set_client_builder_without_cookies(
            GooseClientBuilder::new()
                .without_cookies()
                .timeout(Duration::from_secs(30)),
        )?
        .register_scenario(scenarios::build(scenario)?);
    if matches!(scenario, common::Scenario::FlashSale) {
        // One buyer per Goose user; the run ends when every buyer is done
        // (Goose then never resets its metrics, and refuses a run time:
        // each buyer gives up after MAX_WAIT in the queue instead).
        attack = *attack.set_default(GooseDefault::Iterations, 1)?;
    }
    let cpu_before = procstat::cpu_seconds("self");
    let metrics = attack.execute().await?;
    // The generator's own CPU over the run (user + system), for the
    // report's "where the time goes" (it shares the machine's cores).
    if let (Some(b), Some(a)) = (cpu_before, procstat::cpu_seconds("self")) {
        extra.insert("generator_cpu_seconds".into(), (a - b).into());
    }

    let mem_after = match &redis {
        Some(r) => redis::used_memory(r).await.ok(),
        None => None,
    };
    if let (Some(b), Some(a)) = (mem_before, mem_after) {
        extra.insert("redis_used_memory_before".into(), b.into());
        extra.insert("redis_used_memory_after".into(), a.into());
    }
    scenarios::finish(ctx, &mut extra).await;
    if matches!(scenario, common::Scenario::FlashSale) {
        flash_sale::finish(ctx, &mut extra).await;
    }

    let path = report_dir.join(format!("{}-summary.json", scenario.name()));
    let summary = summary::build(scenario.name(), &host, &metrics, extra);
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    summary::print(&summary);
    println!("loadtest: wrote {}", path.display());
    Ok(())
}
