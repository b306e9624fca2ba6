//! Invariant 10: nobody acts as someone else. Identity comes only from a
//! credential the platform issued (a user assertion, or the service key on a
//! user's behalf); a queue token is the credential of one live entry; money
//! enters a wallet only from the platform.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An HS256 assertion with arbitrary claims, signed with `secret`.
fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

impl TestApp {
    async fn join_with(
        &self,
        event: &str,
        headers: Vec<(&str, String)>,
        body: Option<Value>,
    ) -> Resp {
        self.send(Req {
            method: Method::POST,
            path: &format!("/v1/events/{event}/queue"),
            body,
            raw: None,
            headers,
        })
        .await
    }

    async fn joined_total(&self, event: &str) -> Value {
        let r = self
            .admin(Method::GET, &format!("/v1/admin/events/{event}"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["live"]["joined_total"].clone()
    }
}

fn bearer(t: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {t}"))]
}

#[tokio::test]
async fn joining_as_someone_else_is_impossible_and_writes_nothing() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 10, 60, 4).await;
    let secret = USER_JWT_SECRET.as_bytes();

    // No credential at all, with or without a body naming a user.
    app.join_with("e1", vec![], Some(json!({"user_id": "alice"})))
        .await
        .assert_problem(401, "unauthorized");
    app.join_with("e1", vec![], None)
        .await
        .assert_problem(401, "unauthorized");
    // bob's own assertion cannot join alice.
    app.join_with(
        "e1",
        bearer(&user_token("bob")),
        Some(json!({"user_id": "alice"})),
    )
    .await
    .assert_problem(403, "forbidden");
    // Forged, expired, not yet valid (nbf), and alg:none assertions.
    let forged = hs256(
        b"not-the-platform-secret-0123456789abcdef",
        &json!({"sub": "alice", "exp": now() + 600}),
    );
    let expired = hs256(secret, &json!({"sub": "alice", "exp": now() - 120}));
    let no_exp = hs256(secret, &json!({"sub": "alice"}));
    let no_sub = hs256(secret, &json!({"exp": now() + 600}));
    let bad_sub = hs256(secret, &json!({"sub": "a b", "exp": now() + 600}));
    let not_yet = hs256(
        secret,
        &json!({"sub": "alice", "nbf": now() + 120, "exp": now() + 600}),
    );
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 600).as_bytes())
    );
    // A queue token is not a user assertion either.
    let other = app.join("e1", "carol").await;
    let queue_token = other.body["token"].as_str().unwrap().to_owned();
    for bad in [
        forged,
        expired,
        no_exp,
        no_sub,
        bad_sub,
        not_yet,
        alg_none,
        queue_token,
        "garbage".into(),
    ] {
        app.join_with("e1", bearer(&bad), None)
            .await
            .assert_problem(401, "unauthorized");
    }
    // A wrong service key.
    app.join_with(
        "e1",
        vec![("x-api-key", "not-the-key".into())],
        Some(json!({"user_id": "alice"})),
    )
    .await
    .assert_problem(401, "unauthorized");
    assert_eq!(
        app.joined_total("e1").await,
        1,
        "only carol's own join wrote anything"
    );

    // Within 30 s of skew (exp and nbf) an assertion still counts; the Bearer scheme is
    // case-insensitive.
    let skewed = hs256(
        secret,
        &json!({"sub": "alice", "nbf": now() + 10, "exp": now() - 10}),
    );
    let r = app
        .join_with(
            "e1",
            vec![("authorization", format!("bEaReR {skewed}"))],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["user_id"], "alice");
    // The platform joins on a user's behalf with the service key.
    let r = app.join_for("e1", "dave").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["user_id"], "dave");
    // The same user again, with the body repeating the assertion: same
    // entry, fresh token.
    let again = app
        .join_with(
            "e1",
            bearer(&user_token("alice")),
            Some(json!({"user_id": "alice"})),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(app.joined_total("e1").await, 3);
}

fn b64(raw: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let app = spawn_with(
        Settings::new()
            .set("BOXOFFICE_USER_JWT_AUDIENCE", "boxoffice")
            .set("BOXOFFICE_USER_JWT_ISSUER", "https://login.example"),
    )
    .await;
    app.simple_event("e1", open_queue(), 10, 60, 4).await;
    let secret = USER_JWT_SECRET.as_bytes();
    let exp = now() + 600;
    for bad in [
        json!({"sub": "alice", "exp": exp}),
        json!({"sub": "alice", "exp": exp, "aud": "other", "iss": "https://login.example"}),
        json!({"sub": "alice", "exp": exp, "aud": "boxoffice", "iss": "https://evil.example"}),
        json!({"sub": "alice", "exp": exp, "aud": "boxoffice"}),
    ] {
        app.join_with("e1", bearer(&hs256(secret, &bad)), None)
            .await
            .assert_problem(401, "unauthorized");
    }
    let good = hs256(
        secret,
        &json!({"sub": "alice", "exp": exp, "aud": "boxoffice", "iss": "https://login.example"}),
    );
    let r = app.join_with("e1", bearer(&good), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

/// A key pair made by `openssl` for one test: (private PEM, public PEM).
fn key_pair(dir: &std::path::Path, algorithm: &[&str]) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let ok = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(algorithm)
        .arg("-out")
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs")
        .success();
    assert!(ok, "openssl genpkey {algorithm:?}");
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("openssl runs")
        .success();
    assert!(ok, "openssl pkey -pubout");
    (std::fs::read(&private).unwrap(), public)
}

#[tokio::test]
async fn public_key_assertions_verify_and_key_confusion_is_refused() {
    type KeyFromPem = fn(&[u8]) -> EncodingKey;
    let cases: [(&[&str], Algorithm, KeyFromPem); 3] = [
        (
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Algorithm::RS256,
            |p| EncodingKey::from_rsa_pem(p).unwrap(),
        ),
        (
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::ES256,
            |p| EncodingKey::from_ec_pem(p).unwrap(),
        ),
        (&["-algorithm", "ed25519"], Algorithm::EdDSA, |p| {
            EncodingKey::from_ed_pem(p).unwrap()
        }),
    ];
    for (openssl_args, alg, encoding_key) in cases {
        let dir = std::env::temp_dir().join(format!("bx-keys-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (private, public_path) = key_pair(&dir, openssl_args);
        let public_pem = std::fs::read(&public_path).unwrap();
        let mut settings = Settings::new().set(
            "BOXOFFICE_USER_JWT_PUBLIC_KEY",
            public_path.to_str().unwrap(),
        );
        settings.env.remove("BOXOFFICE_USER_JWT_SECRET");
        let app = spawn_with(settings).await;
        app.simple_event("e1", open_queue(), 10, 60, 4).await;
        let claims = json!({"sub": "alice", "exp": now() + 600});
        let good =
            jsonwebtoken::encode(&Header::new(alg), &claims, &encoding_key(&private)).unwrap();
        let r = app.join_with("e1", bearer(&good), None).await;
        assert_eq!(r.status, StatusCode::CREATED, "{alg:?}: {}", r.text);
        // The classic confusion: HS256 "signed" with the public key bytes.
        let confused = hs256(&public_pem, &json!({"sub": "mallory", "exp": now() + 600}));
        app.join_with("e1", bearer(&confused), None)
            .await
            .assert_problem(401, "unauthorized");
        // With only a public key configured, no HS256 assertion passes, not
        // even one signed with the development default.
        let dev = hs256(
            boxoffice::config::DEV_USER_JWT_SECRET.as_bytes(),
            &json!({"sub": "mallory", "exp": now() + 600}),
        );
        app.join_with("e1", bearer(&dev), None)
            .await
            .assert_problem(401, "unauthorized");
        assert_eq!(app.joined_total("e1").await, 1, "{alg:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn money_enters_a_wallet_only_from_the_platform() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 10, 60, 4).await;
    let token = app.admitted_token("e1", "alice").await;
    for credential in [token.clone(), user_token("alice")] {
        let r = app
            .send(Req {
                method: Method::POST,
                path: "/v1/users/alice/wallet/charges",
                body: Some(json!({"amount": "10000000"})),
                raw: None,
                headers: bearer(&credential),
            })
            .await;
        r.assert_problem(403, "forbidden");
    }
    let r = app
        .send(Req {
            method: Method::POST,
            path: "/v1/users/alice/wallet/charges",
            body: Some(json!({"amount": "5"})),
            raw: None,
            headers: vec![],
        })
        .await;
    r.assert_problem(401, "unauthorized");
    assert_eq!(app.balance("alice").await, "0");
    assert_eq!(app.ledger("alice").await.1, 0, "no ledger row");
    // And alice's token cannot pay with money she does not have.
    let hold = app.hold_seats(&token, json!([1])).await;
    app.pay(&token, &hold, None)
        .await
        .assert_problem(402, "insufficient_funds");
}

#[tokio::test]
async fn amounts_parse_exactly_or_not_at_all() {
    let app = spawn_app().await;
    for bad in [
        "9.99999999999999999999999999999",
        " 5",
        "5 ",
        "+5",
        "5.",
        ".5",
        "-5",
        "5e0",
        "0x5",
        "1,000",
        "\u{0665}",
        "0",
        "0.0",
    ] {
        app.charge("bob", bad, None)
            .await
            .assert_problem(422, "invalid_request");
    }
    assert_eq!(app.ledger("bob").await.1, 0, "nothing written");
    assert_eq!(app.balance("bob").await, "0");
    // Admin prices parse the same way; a name with NUL is a 422, not a 500.
    let schedule = |price: &str| {
        json!([{"schedule_id": "d1", "starts_at": "2026-12-24T20:00:00Z", "seats": 10,
                "row_size": 10, "price": price, "hold_seconds": 60, "max_per_user": 4}])
    };
    for price in ["9.99999999999999999999999999999", " 5", "+5", "5.", "1e3"] {
        app.create_event("e1", open_queue(), schedule(price))
            .await
            .assert_problem(422, "invalid_request");
    }
    let r = app
        .admin(
            Method::POST,
            "/v1/admin/events",
            Some(
                json!({"event_id": "e1", "name": "Nul\u{0}name", "queue": open_queue(),
                        "schedules": schedule("1000")}),
            ),
        )
        .await;
    r.assert_problem(422, "invalid_request");
    app.admin(Method::GET, "/v1/admin/events/e1", None)
        .await
        .assert_problem(404, "not_found");
}

#[tokio::test]
async fn a_token_of_a_gone_entry_is_refused_everywhere() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 10, 60, 4).await;
    app.charge("alice", "100000", None).await;
    let old = app.admitted_token("e1", "alice").await;
    let held = app.hold_seats(&old, json!([1])).await;
    assert_eq!(app.leave(&old).await.status, StatusCode::NO_CONTENT);
    // alice joins again: a new entry, admitted. The old token stays dead.
    let new = app.admitted_token("e1", "alice").await;
    assert_ne!(old, new);
    app.status(&old)
        .await
        .assert_problem(410, "queue_token_expired");
    app.hold(&old, json!({"schedule_id": "d1", "seats": [2]}))
        .await
        .assert_problem(410, "queue_token_expired");
    app.get_with_token("/v1/events/e1/schedules/d1/seats", &old)
        .await
        .assert_problem(410, "queue_token_expired");
    app.get_with_token("/v1/events/e1/schedules", &old)
        .await
        .assert_problem(410, "queue_token_expired");
    app.get_with_token(&format!("/v1/holds/{held}"), &old)
        .await
        .assert_problem(410, "queue_token_expired");
    app.pay(&old, &held, None)
        .await
        .assert_problem(410, "queue_token_expired");
    assert_eq!(app.balance("alice").await, "100000", "no money moved");
    // The new token works, and owns the hold placed under the old entry.
    let r = app.pay(&new, &held, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // Paid: the entry is gone, so every route refuses the new token too.
    app.status(&new)
        .await
        .assert_problem(410, "queue_token_expired");
    app.hold(&new, json!({"schedule_id": "d1", "seats": [3]}))
        .await
        .assert_problem(410, "queue_token_expired");
    // Reading the payment it made, too (it answered 200 until the token's
    // own expiry); a live entry's token reads it, as does the assertion.
    let payment = format!("/v1/payments/{}", r.body["payment_id"].as_str().unwrap());
    app.get_with_token(&payment, &new)
        .await
        .assert_problem(410, "queue_token_expired");
    let again = app.admitted_token("e1", "alice").await;
    let read = app.get_with_token(&payment, &again).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!(app.get_as(&payment, "alice").await.status, StatusCode::OK);
    // An assertion past its exp (beyond 30 s of skew) is a 401.
    let expired = hs256(
        USER_JWT_SECRET.as_bytes(),
        &json!({"sub": "alice", "exp": now() - 60}),
    );
    app.get_with_token("/v1/users/alice/wallet", &expired)
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn refusals_about_holds_leak_nothing() {
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 10, 60, 4).await;
    let (_, paid) = app.buy("e1", "alice", "5000", json!([1])).await;
    let paid_hold = paid.body["hold_id"].as_str().unwrap().to_owned();
    let payment_id = paid.body["payment_id"].as_str().unwrap().to_owned();
    let alice = app.admitted_token("e1", "alice").await;
    let live = app.hold_seats(&alice, json!([2])).await;

    app.charge("mallory", "5000", None).await;
    let mallory = app.admitted_token("e1", "mallory").await;
    // Someone else's live hold: 403 to read, release or pay.
    app.get_with_token(&format!("/v1/holds/{live}"), &mallory)
        .await
        .assert_problem(403, "forbidden");
    app.release_hold(&mallory, &live)
        .await
        .assert_problem(403, "forbidden");
    app.pay(&mallory, &live, None)
        .await
        .assert_problem(403, "forbidden");
    // Someone else's paid hold: 403 on every route (the hold routes said
    // 410 once it was gone from Redis), and its payment id is never shown.
    let r = app.pay(&mallory, &paid_hold, None).await;
    r.assert_problem(403, "forbidden");
    assert!(!r.text.contains(&payment_id), "{}", r.text);
    for r in [
        app.get_with_token(&format!("/v1/holds/{paid_hold}"), &mallory)
            .await,
        app.release_hold(&mallory, &paid_hold).await,
    ] {
        r.assert_problem(403, "forbidden");
        assert!(!r.text.contains(&payment_id), "{}", r.text);
    }
    // A hold that never existed: 404 on every route.
    let never = "e1.d1.99999999999999";
    app.pay(&mallory, never, None)
        .await
        .assert_problem(404, "not_found");
    app.get_with_token(&format!("/v1/holds/{never}"), &mallory)
        .await
        .assert_problem(404, "not_found");
    app.release_hold(&mallory, never)
        .await
        .assert_problem(404, "not_found");
    // alice's own paid hold, read by alice: gone from the live holds, 410.
    let alice_again = app.admitted_token("e1", "alice").await;
    app.get_with_token(&format!("/v1/holds/{paid_hold}"), &alice_again)
        .await
        .assert_problem(410, "hold_expired");
    // The payment itself: the owner's assertion and the service key read
    // it; another user cannot.
    let path = format!("/v1/payments/{payment_id}");
    assert_eq!(app.get_as(&path, "alice").await.status, StatusCode::OK);
    app.get_as(&path, "mallory")
        .await
        .assert_problem(403, "forbidden");
    app.get_with_token(&path, &mallory)
        .await
        .assert_problem(403, "forbidden");
    app.get_as("/v1/users/alice/payments", "mallory")
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(
        app.get_as("/v1/users/alice/payments", "alice").await.body["payments"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // The caller's own hold, gone (released): 410.
    let own = app.hold_seats(&mallory, json!([3])).await;
    let r = app.release_hold(&mallory, &own).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.pay(&mallory, &own, None)
        .await
        .assert_problem(410, "hold_expired");
    app.get_with_token(&format!("/v1/holds/{own}"), &mallory)
        .await
        .assert_problem(410, "hold_expired");
    app.release_hold(&mallory, &own)
        .await
        .assert_problem(410, "hold_expired");
    assert_eq!(app.balance("mallory").await, "5000", "nothing moved");
}

#[tokio::test]
async fn development_secrets_refuse_a_public_address() {
    // The binary itself, as `make run` would start it, but on 0.0.0.0.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BOXOFFICE_ADDR", "0.0.0.0:0")
        .env("REDIS_URL", redis_url())
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("exits at once")
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("BOXOFFICE_SERVICE_KEY"), "{stderr}");
    // user-token prints an assertion the service accepts.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_boxoffice"))
        .args(["user-token", "alice", "--ttl", "5m"])
        .env("BOXOFFICE_USER_JWT_SECRET", USER_JWT_SECRET)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let app = spawn_app().await;
    app.simple_event("e1", open_queue(), 10, 60, 4).await;
    let r = app.join_with("e1", bearer(&token), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["user_id"], "alice");
}

#[tokio::test]
async fn with_per_credential_limits_on_a_forged_assertion_is_still_refused() {
    // The rate limiter verifies assertions and hands the verified user to
    // the handler; what it did not verify, the handler checks itself.
    let app = spawn_with(Settings::new().set("BOXOFFICE_RATE_PER_TOKEN", "100")).await;
    app.simple_event("e1", open_queue(), 10, 60, 4).await;
    let forged = hs256(
        b"not-the-platform-secret-0123456789abcdef",
        &json!({"sub": "alice", "exp": now() + 600}),
    );
    app.join_with("e1", bearer(&forged), None)
        .await
        .assert_problem(401, "unauthorized");
    let r = app.join("e1", "alice").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["user_id"], "alice");
    app.get_as("/v1/users/bob/wallet", "alice")
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(app.joined_total("e1").await, 1);
}
