//! The Goose scenarios: one transaction loop each (flash-sale and
//! poll-storm live in their own modules).

use std::sync::atomic::{AtomicU64, Ordering};

use goose::prelude::*;
use serde_json::{Map, Value, json};

use crate::{
    common::{Auth, Ctx, Scenario as Kind, call, ctx, fail, fresh_user, join_admitted},
    flash_sale::buyer,
    pay::pay,
    poll_storm::poll,
    setup::MAX_PER_USER,
};

pub fn build(kind: Kind) -> Result<Scenario, GooseError> {
    let s = scenario!("boxoffice");
    Ok(match kind {
        Kind::Ceiling => s.register_transaction(transaction!(ceiling).set_name("ceiling")),
        Kind::Join => s.register_transaction(transaction!(join).set_name("join")),
        Kind::Status => s
            .register_transaction(transaction!(start_admitted).set_on_start())
            .register_transaction(transaction!(status).set_name("status")),
        Kind::Holds => s
            .register_transaction(transaction!(start_admitted).set_on_start())
            .register_transaction(transaction!(hold).set_name("hold")),
        Kind::HotSeat => s
            .register_transaction(transaction!(start_admitted).set_on_start())
            .register_transaction(transaction!(hot_seat).set_name("hot-seat")),
        Kind::Payment => s
            .register_transaction(transaction!(start_buyer).set_on_start())
            .register_transaction(transaction!(payment).set_name("payment")),
        Kind::Pay => s.register_transaction(transaction!(pay).set_name("pay")),
        Kind::FlashSale => s.register_transaction(transaction!(buyer).set_name("buyer")),
        Kind::PollStorm => s.register_transaction(transaction!(poll).set_name("poll")),
    })
}

/// Per Goose user: who it is, its queue token, and where it holds or buys.
#[derive(Debug, Clone, Default)]
struct Session {
    user: String,
    token: Option<String>,
    /// Index into the schedules of the event.
    schedule: usize,
    /// Seats held or bought by this user in `schedule`.
    taken: u64,
    /// Schedules this user has filled up to its per-user limit.
    filled: usize,
}

static HOLDS_OK: AtomicU64 = AtomicU64::new(0);
static HOT_WON: AtomicU64 = AtomicU64::new(0);
static HOT_LOST: AtomicU64 = AtomicU64::new(0);
static PAID: AtomicU64 = AtomicU64::new(0);

async fn ceiling(user: &mut GooseUser) -> TransactionResult {
    call(
        user,
        GooseMethod::Get,
        "/ceiling",
        "ceiling",
        Auth::None,
        None,
        &[200],
    )
    .await?;
    Ok(())
}

async fn join(user: &mut GooseUser) -> TransactionResult {
    let id = fresh_user("j");
    let path = format!("/v1/events/{}/queue", ctx().event);
    let jwt = crate::common::assertion(&id)?;
    let r = call(
        user,
        GooseMethod::Post,
        &path,
        "join",
        Auth::Bearer(&jwt),
        None,
        &[201],
    )
    .await?;
    if r.status == 201 && r.str("status") != Some("admitted") {
        return Err(fail(format!(
            "join: the open queue did not admit at once: {}",
            r.body()
        )));
    }
    Ok(())
}

/// on_start: a fresh user, admitted at once (open queue).
async fn start_admitted(user: &mut GooseUser) -> TransactionResult {
    let id = fresh_user("u");
    let token = join_admitted(user, &id, "join(setup)").await?;
    let first = user.weighted_users_index % ctx().schedules.len().max(1);
    user.set_session_data(Session {
        user: id,
        token: Some(token),
        schedule: first,
        ..Session::default()
    });
    Ok(())
}

fn session(user: &GooseUser) -> Session {
    user.get_session_data::<Session>()
        .cloned()
        .unwrap_or_default()
}

async fn status(user: &mut GooseUser) -> TransactionResult {
    let s = session(user);
    let token = s.token.as_deref().ok_or_else(|| fail("status: no token"))?;
    let r = call(
        user,
        GooseMethod::Get,
        "/v1/queue/status",
        "status",
        Auth::Bearer(token),
        None,
        &[200],
    )
    .await?;
    if r.status == 200 && r.str("status") != Some("admitted") {
        return Err(fail(format!("status: expected admitted, got {}", r.body())));
    }
    Ok(())
}

/// Moves a session to its next schedule once it reached the per-user
/// limit; after the last schedule the caller switches to a new user.
fn next_schedule(s: &mut Session, c: &Ctx) -> bool {
    s.taken = 0;
    s.filled += 1;
    s.schedule = (s.schedule + 1) % c.schedules.len();
    s.filled >= c.schedules.len()
}

async fn hold(user: &mut GooseUser) -> TransactionResult {
    let c = ctx();
    let mut s = session(user);
    if s.token.is_none() || (s.taken >= MAX_PER_USER && next_schedule(&mut s, c)) {
        // Every schedule is at this user's limit: carry on as a new user.
        s.user = fresh_user("u");
        s.token = Some(join_admitted(user, &s.user, "join(rotate)").await?);
        s.filled = 0;
        s.taken = 0;
    }
    let token = s.token.clone().unwrap_or_default();
    let body = json!({ "schedule_id": c.schedules[s.schedule], "count": 1 });
    let r = call(
        user,
        GooseMethod::Post,
        "/v1/holds",
        "hold",
        Auth::Bearer(&token),
        Some(&body),
        &[201],
    )
    .await?;
    if r.status == 201 {
        s.taken += 1;
        HOLDS_OK.fetch_add(1, Ordering::Relaxed);
    } else if r.str("code") == Some("hold_limit_exceeded") {
        s.taken = MAX_PER_USER;
    }
    user.set_session_data(s);
    Ok(())
}

async fn hot_seat(user: &mut GooseUser) -> TransactionResult {
    let c = ctx();
    let s = session(user);
    let token = s
        .token
        .as_deref()
        .ok_or_else(|| fail("hot-seat: no token"))?;
    let seat: u32 = rand::random_range(1..=3);
    let body = json!({ "schedule_id": c.schedules[0], "seats": [seat] });
    let r = call(
        user,
        GooseMethod::Post,
        "/v1/holds",
        "hold(hot)",
        Auth::Bearer(token),
        Some(&body),
        &[201, 409],
    )
    .await?;
    match r.status {
        201 => HOT_WON.fetch_add(1, Ordering::Relaxed),
        409 => HOT_LOST.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
    Ok(())
}

/// on_start for payment: a user with a well-filled wallet.
async fn start_buyer(user: &mut GooseUser) -> TransactionResult {
    let id = fresh_user("b");
    charge(user, &id, "charge(setup)").await?;
    let first = user.weighted_users_index % ctx().schedules.len().max(1);
    user.set_session_data(Session {
        user: id,
        token: None,
        schedule: first,
        ..Session::default()
    });
    Ok(())
}

/// Enough for every seat the user may buy in every schedule.
async fn charge(user: &mut GooseUser, id: &str, name: &str) -> TransactionResult {
    let c = ctx();
    let amount = c.price * MAX_PER_USER * c.schedules.len() as u64;
    let path = format!("/v1/users/{id}/wallet/charges");
    let body = json!({ "amount": amount.to_string() });
    let r = call(
        user,
        GooseMethod::Post,
        &path,
        name,
        Auth::ServiceKey,
        Some(&body),
        &[201],
    )
    .await?;
    if r.status != 201 {
        return Err(fail(format!("{name}: {} {}", r.status, r.body())));
    }
    Ok(())
}

/// One purchase: join (a paid entry is gone), hold one seat, pay.
async fn payment(user: &mut GooseUser) -> TransactionResult {
    let c = ctx();
    let mut s = session(user);
    if s.taken >= MAX_PER_USER && next_schedule(&mut s, c) {
        s.user = fresh_user("b");
        charge(user, &s.user, "charge(rotate)").await?;
        s.filled = 0;
        s.taken = 0;
    }
    let token = join_admitted(user, &s.user, "join").await?;
    let body = json!({ "schedule_id": c.schedules[s.schedule], "count": 1 });
    let r = call(
        user,
        GooseMethod::Post,
        "/v1/holds",
        "hold",
        Auth::Bearer(&token),
        Some(&body),
        &[201],
    )
    .await?;
    if r.status != 201 {
        if r.str("code") == Some("hold_limit_exceeded") {
            s.taken = MAX_PER_USER;
        }
        user.set_session_data(s);
        return Ok(());
    }
    let hold_id = r.str("hold_id").unwrap_or_default().to_owned();
    let body = json!({ "hold_id": hold_id });
    let r = call(
        user,
        GooseMethod::Post,
        "/v1/payments",
        "pay",
        Auth::Bearer(&token),
        Some(&body),
        &[201],
    )
    .await?;
    if r.status == 201 {
        s.taken += 1;
        PAID.fetch_add(1, Ordering::Relaxed);
    }
    user.set_session_data(s);
    Ok(())
}

/// Scenario figures beside Goose's own.
pub async fn finish(c: &Ctx, extra: &mut Map<String, Value>) {
    match c.scenario {
        Kind::Holds => {
            extra.insert(
                "holds_placed".into(),
                HOLDS_OK.load(Ordering::Relaxed).into(),
            );
        }
        Kind::HotSeat => {
            extra.insert("hot_won".into(), HOT_WON.load(Ordering::Relaxed).into());
            extra.insert(
                "hot_conflicts".into(),
                HOT_LOST.load(Ordering::Relaxed).into(),
            );
        }
        Kind::Payment => {
            extra.insert("payments".into(), PAID.load(Ordering::Relaxed).into());
        }
        Kind::Pay => crate::pay::finish(extra),
        _ => {}
    }
}
