//! The operator dashboard, rendered by headless Chromium against the
//! running service with the demo event.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(|b| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {b}"))
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
}

async fn headless(bin: &str, extra: &[&str], url: &str) -> String {
    let profile = std::env::temp_dir().join(format!("bx-chromium-{}", uuid::Uuid::new_v4()));
    let mut args = vec![
        "--headless".to_owned(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--no-first-run".into(),
        format!("--user-data-dir={}", profile.display()),
        "--virtual-time-budget=4000".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(url.to_owned());
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin).args(&args).output(),
    )
    .await
    .expect("chromium finishes within 60 s")
    .expect("chromium runs");
    let _ = std::fs::remove_dir_all(profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The opening tag of the seat square for `seat` in a seat map.
fn seat_tag<'a>(dom: &'a str, map: &str, seat: u32) -> &'a str {
    let start = dom
        .find(&format!("data-testid=\"seat-map-{map}\""))
        .expect("seat map rendered");
    let at = start
        + dom[start..]
            .find(&format!("data-seat=\"{seat}\""))
            .expect("seat rendered");
    let open = dom[..at].rfind('<').unwrap();
    let close = at + dom[at..].find('>').unwrap();
    &dom[open..=close]
}

#[tokio::test]
async fn dashboard_renders_seat_maps_and_figures_in_chromium() {
    let Some(bin) = chromium() else {
        missing_tool(
            "chromium",
            "scripts/deps.sh installs Debian's chromium when run as root",
        );
        return;
    };
    let app = spawn_app().await;
    boxoffice::demo::load(&app.state.stores()).await.unwrap();
    let buyer = app.admitted_token("demo-concert", "dash-buyer").await;
    let holder = app.admitted_token("demo-concert", "dash-holder").await;
    let hold = |token: String, seats: serde_json::Value| {
        let app = &app;
        async move {
            app.hold(&token, json!({"schedule_id": "day-1", "seats": seats}))
                .await
        }
    };
    assert_eq!(
        hold(holder.clone(), json!([1, 2])).await.status,
        StatusCode::CREATED
    );
    let bought = hold(buyer.clone(), json!([3])).await;
    let charge = app
        .send(Req {
            method: reqwest::Method::POST,
            path: "/v1/users/dash-buyer/wallet/charges",
            body: Some(json!({"amount": "50000"})),
            raw: None,
            headers: vec![("x-api-key", SERVICE_KEY.into())],
        })
        .await;
    assert_eq!(charge.status, StatusCode::CREATED);
    let paid = app
        .send(Req {
            method: reqwest::Method::POST,
            path: "/v1/payments",
            body: Some(json!({"hold_id": bought.body["hold_id"]})),
            raw: None,
            headers: vec![("authorization", format!("Bearer {buyer}"))],
        })
        .await;
    assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);

    let url = format!(
        "{}/dashboard#key={SERVICE_KEY}&event=demo-concert",
        app.base
    );
    let dom = headless(&bin, &["--dump-dom"], &url).await;
    assert!(
        dom.contains("data-testid=\"seat-map-day-1\""),
        "seat map missing: {}",
        &dom[..dom.len().min(500)]
    );
    assert!(dom.contains("data-testid=\"seat-map-day-2\""));
    assert!(
        seat_tag(&dom, "day-1", 1).contains("data-status=\"held\""),
        "{}",
        seat_tag(&dom, "day-1", 1)
    );
    assert!(seat_tag(&dom, "day-1", 3).contains("data-status=\"sold\""));
    assert!(seat_tag(&dom, "day-1", 4).contains("data-status=\"available\""));
    assert!(
        dom.contains("data-testid=\"sold-day-1\">1<"),
        "sold figure shows 1"
    );
    assert!(
        dom.contains("data-testid=\"revenue-day-1\">50,000<"),
        "revenue shows 50,000"
    );
    assert!(
        dom.contains("id=\"effective-rate\">5 / s<"),
        "the rate in use shows the demo's fixed 5 / s: {}",
        dom.find("effective-rate")
            .map_or("", |i| &dom[i..(i + 120).min(dom.len())])
    );

    // Screenshot for the docs, on request (`BOXOFFICE_DASHBOARD_SCREENSHOT=docs/dashboard.png`).
    if let Ok(path) = std::env::var("BOXOFFICE_DASHBOARD_SCREENSHOT") {
        let path = std::path::absolute(&path).unwrap();
        headless(
            &bin,
            &[
                "--window-size=1280,900",
                "--hide-scrollbars",
                &format!("--screenshot={}", path.display()),
            ],
            &url,
        )
        .await;
        assert!(path.exists());
    }

    // A wrong key shows the error banner.
    let dom = headless(
        &bin,
        &["--dump-dom"],
        &format!("{}/dashboard#key=wrong&event=demo-concert", app.base),
    )
    .await;
    let banner = &dom[dom.find("data-testid=\"error\"").expect("banner")..];
    assert!(
        banner[..300.min(banner.len())]
            .to_lowercase()
            .contains("rejected"),
        "{}",
        &banner[..300.min(banner.len())]
    );
}

#[tokio::test]
async fn dashboard_forbids_framing_and_foreign_code_and_forgets_the_key_with_the_tab() {
    let app = spawn_app().await;
    let r = app.get("/dashboard").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-frame-options"], "DENY");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "connect-src 'self'",
        "script-src 'sha256-",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline'; script") && !csp.contains("script-src 'unsafe"),
        "no inline script beyond the hashed one: {csp}"
    );
    // The service key lives in sessionStorage (gone with the tab), never localStorage.
    assert!(r.text.contains("sessionStorage"));
    assert!(!r.text.contains("localStorage"));
}
