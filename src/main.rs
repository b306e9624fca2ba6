//! The `boxoffice` binary: reads configuration, starts telemetry, builds the
//! application and runs it. Everything else lives in the library.

use std::process::ExitCode;

use boxoffice::{app::Application, config::Config, telemetry};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: boxoffice [serve [--demo] | audit | user-token <user_id> [--ttl 1h] | lua-library]\n\n  serve       run the HTTP service (default)\n  --demo      also load the demo event if it does not exist\n  audit       check the invariants in Redis and PostgreSQL; exit 1 on a violation,\n              2 when a store cannot be read\n  user-token  print a user assertion (JWT) for <user_id>, signed with\n              BOXOFFICE_USER_JWT_SECRET as the platform's login would\n              (development, demos, load tests); --ttl 30s|15m|1h|2d, default 1h\n  lua-library print the Redis function library of the scripts (FUNCTION LOAD\n              payload; its first line names it; benchmarks load it by hand)\n";

/// `boxoffice user-token <user_id> [--ttl 1h]`.
fn user_token(args: &[&str]) -> ExitCode {
    let fail = |m: String| {
        eprintln!("boxoffice user-token: {m}");
        ExitCode::from(2)
    };
    let (user, ttl) = match args {
        [user] => (*user, "1h"),
        [user, "--ttl", ttl] | ["--ttl", ttl, user] => (*user, *ttl),
        _ => return fail(format!("expected <user_id> [--ttl 1h]\n{USAGE}")),
    };
    let user = match boxoffice::ids::UserId::parse(user) {
        Ok(u) => u,
        Err(e) => return fail(e.to_string()),
    };
    let ttl = match boxoffice::auth::parse_ttl(ttl) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let minted = Config::from_env()
        .map_err(|e| anyhow::anyhow!(e))
        .and_then(|c| boxoffice::auth::UserVerifier::new(&c.user_jwt))
        .and_then(|v| v.mint(&user, ttl));
    match minted {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

/// `boxoffice audit`: connects to both stores and checks the invariants.
async fn audit(config: &Config) -> ExitCode {
    let keys = boxoffice::store::keys::Keys::new(config.redis_prefix.clone());
    let stores = async {
        let redis = boxoffice::store::redis::Redis::connect(&config.redis_url, keys).await?;
        let pg = boxoffice::store::pg::Pg::connect(&config.database_url).await?;
        anyhow::Ok((redis, pg))
    };
    let report = match stores.await {
        Ok((redis, pg)) => boxoffice::audit::run(&pg, &redis).await,
        Err(e) => Err(e),
    };
    match report {
        Ok(a) => {
            for c in &a.checks {
                let verdict = if c.passed() { "passed" } else { "FAILED" };
                println!(
                    "{verdict} {}: {} ({} examined, {} violations)",
                    c.name,
                    c.description,
                    c.examined,
                    c.violations.len()
                );
                for v in &c.violations {
                    println!("  VIOLATION {}: {v}", c.name);
                }
            }
            let failed = a.failed();
            println!(
                "audit: {} checks, {} failed{}, {} violations",
                a.checks.len(),
                failed.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", failed.join(", "))
                },
                a.violations.len()
            );
            if a.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("boxoffice audit: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// mimalloc: per-thread free lists; glibc malloc's locking and
/// consolidation were ~15 % of the CPU of a status poll.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let huge_pages = boxoffice::process::no_transparent_huge_pages();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let demo = match args.as_slice() {
        ["audit"] => {
            return match Config::from_env() {
                Ok(c) => audit(&c).await,
                Err(e) => {
                    eprintln!("boxoffice: {e}");
                    ExitCode::from(2)
                }
            };
        }
        ["user-token", rest @ ..] => return user_token(rest),
        ["lua-library"] => {
            use std::io::Write;
            let code = &boxoffice::store::redis::library().code;
            return match std::io::stdout().write_all(code.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            };
        }
        ["audit", "--help" | "-h"] => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [] | ["serve"] => false,
        ["serve", "--demo"] | ["--demo"] => true,
        ["-h" | "--help" | "help"] => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("boxoffice: unknown arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_env().and_then(|c| {
        c.check_secrets_for_listening()?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("boxoffice: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(config.log_format);
    tracing::debug!(?huge_pages, "transparent huge pages");
    if let Some(var) = config.dev_secret_variable() {
        tracing::warn!(
            "{var} has its public development default: allowed on a loopback address only; set BOXOFFICE_SERVICE_KEY, BOXOFFICE_TOKEN_SECRET and BOXOFFICE_USER_JWT_SECRET (or BOXOFFICE_USER_JWT_PUBLIC_KEY) in production"
        );
    }
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("boxoffice: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if demo && let Err(e) = boxoffice::demo::load(&app.state().stores()).await {
        eprintln!("boxoffice: cannot load the demo event: {e:#}");
        return ExitCode::FAILURE;
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        boxoffice::app::shutdown_signal().await;
        signal.cancel();
    });
    match app.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boxoffice: {e:#}");
            ExitCode::FAILURE
        }
    }
}
