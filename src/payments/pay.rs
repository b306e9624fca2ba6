//! Paying a hold: held → paying → sold, exactly once. This is where money
//! moves for a payment — the state machine ([`Payments::pay`]) and its one
//! PostgreSQL statement ([`record`]).
//!
//! [`Payments::pay`] runs under the request's `Idempotency-Key`
//! ([`idempotency::once`]): a [`Refusal`] is this payment's answer for
//! good and is kept for replays; every other [`PayError`] is passing (the
//! claim is given back and a retry runs again). Errors are domain reasons;
//! the HTTP layer maps them to problems.

use std::{sync::LazyLock, time::Duration};

use chrono::{SubsecRound, Utc};
use rust_decimal::Decimal;

use super::{Payment, Payments, get};
use crate::{
    holds::{self, Aborted, Bar, HoldError},
    idempotency::{self, Answered, KeyRefused, Saved, Scope},
    ids::{HoldId, IdempotencyKey, PaymentId, UserId},
    later::{self, Later, Step},
    money::{SLOT, cut_slots},
    store::{StoreError, pg::Pg, pg::constraint_of, redis::Redis},
    token::QueueClaims,
};

/// Why a payment was refused for good: each is *the* answer to this
/// payment, stored for the key's replays.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// No such hold was ever minted (or its schedule is unknown).
    #[error("no such hold")]
    NoSuchHold,
    /// The hold expired (or was released) before it was paid.
    #[error("the hold has expired")]
    HoldExpired,
    /// The hold belongs to another user.
    #[error("the hold belongs to another user")]
    NotYours,
    /// The hold was paid before, by this payment.
    #[error("the hold is already paid")]
    AlreadyPaid { payment_id: PaymentId },
    /// The wallet is short; the hold stays until its deadline.
    #[error("the wallet balance is lower than the amount")]
    InsufficientFunds { balance: Decimal, amount: Decimal },
    /// The schedule was cancelled: nothing of it is sold any more.
    #[error("the schedule was cancelled")]
    Cancelled,
    /// A seat is sold already (PostgreSQL knows it, Redis lost it).
    #[error("seats unavailable")]
    SeatsUnavailable { seats: Vec<u32> },
}

/// Why a payment did not go through.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    /// Refused for good (kept for the key's replays).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Refused for now by the hold script (the buyer not admitted yet or
    /// gone, the hold being paid by another request, the event being
    /// restored ...): a retry may succeed.
    #[error(transparent)]
    Hold(HoldError),
    /// The `Idempotency-Key` refused the request; nothing ran.
    #[error(transparent)]
    Key(#[from] KeyRefused),
    /// A store failed and nothing was written (the hold was given back).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The payment statement was sent but its answer was lost, and asking
    /// again failed too: it may have committed. The hold stays *paying*
    /// until PostgreSQL answers: then it goes back to *held* if unpaid
    /// (`abort_later`), or the reconciler finishes a payment that did
    /// commit.
    #[error("the payment's outcome is unknown: {0}")]
    Unknown(StoreError),
}

impl PayError {
    /// The refusal for good, if this is one: the payment's answer.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }
}

impl From<HoldError> for PayError {
    /// The hold script's refusals that are final for this payment become a
    /// [`Refusal`]; the others stay passing.
    fn from(e: HoldError) -> Self {
        match e {
            HoldError::NoSchedule => Refusal::NoSuchHold.into(),
            HoldError::Forbidden => Refusal::NotYours.into(),
            HoldError::Cancelled => Refusal::Cancelled.into(),
            HoldError::Unavailable(seats) => Refusal::SeatsUnavailable { seats }.into(),
            HoldError::Store(e) => Self::Store(e),
            other => Self::Hold(other),
        }
    }
}

impl Payments<'_> {
    /// `POST /v1/payments`: pays `hold` for `buyer` from the wallet, at
    /// most once per `key`. Returns the payment's body (as stored for
    /// replays), or the key's stored answer; `answer` writes a
    /// [`Refusal`] the way the caller answers it, to be stored as the key's
    /// answer.
    ///
    /// # Errors
    /// See [`PayError`].
    pub async fn pay(
        &self,
        buyer: &QueueClaims,
        hold: &HoldId,
        key: Option<&IdempotencyKey>,
        answer: impl FnOnce(&Refusal) -> Saved,
    ) -> Result<Answered<String>, PayError> {
        // A replay must work even after the queue token is gone, so the key
        // is looked up before anything else is checked.
        let scope = key.map(|key| Scope::new(&buyer.user, key, &["payment", &hold.to_string()]));
        let work = self.pay_once(buyer, hold, key);
        idempotency::once(self.pg, scope, work, |e| e.refusal().map(answer)).await
    }

    async fn pay_once(
        &self,
        buyer: &QueueClaims,
        hold: &HoldId,
        key: Option<&IdempotencyKey>,
    ) -> Result<String, PayError> {
        // Step 1: held -> paying; the script checks that the buyer is still
        // admitted, the owner and the deadline, atomically.
        let paying_ms = self.paying_timeout.as_millis() as u64;
        let attempt = uuid::Uuid::new_v4().simple().to_string();
        let begun = holds::begin_payment(self.redis, hold, buyer, paying_ms, &attempt).await;
        let paying = match begun {
            Ok(p) => p,
            Err(HoldError::Gone) => {
                return Err(why_gone(self.pg, self.redis, &buyer.user, hold)
                    .await?
                    .into());
            }
            // The call may still run: it may be on its way to Redis or
            // waiting there (a hung or partitioned server), and make the
            // hold *paying* after we gave up, with nobody paying it. No
            // money moved for this attempt, so its hold is given back.
            Err(HoldError::Store(e)) => {
                self.abort_later(hold, buyer, attempt, Lost::Begin);
                return Err(PayError::Store(e));
            }
            Err(e) => return Err(e.into()),
        };
        self.failpoint("crash_before_commit").await;
        // Step 2: the PostgreSQL transaction.
        let recorded = record(self.pg, &buyer.user, hold, &paying.seats, key).await;
        let refused = match recorded {
            Ok(Recorded::Paid { payment, body }) => {
                self.failpoint("crash_after_commit").await;
                self.confirm(buyer, hold, &payment).await;
                return Ok(body);
            }
            // Paid before: the hold is not ours to give back.
            Ok(Recorded::AlreadyPaid { payment_id }) => {
                return Err(Refusal::AlreadyPaid { payment_id }.into());
            }
            // PostgreSQL could not say whether the statement committed. If
            // it did not, the hold would stay *paying* with nobody paying
            // it until its paying deadline, and the seat be lost: asked
            // again once PostgreSQL answers, and given back if unpaid.
            Ok(Recorded::Unknown(e)) => {
                self.abort_later(hold, buyer, attempt, Lost::Record(self.pg.clone()));
                return Err(PayError::Unknown(e));
            }
            Ok(Recorded::InsufficientFunds { balance, amount }) => {
                PayError::from(Refusal::InsufficientFunds { balance, amount })
            }
            Ok(Recorded::Cancelled) => Refusal::Cancelled.into(),
            Ok(Recorded::SeatTaken) => Refusal::SeatsUnavailable {
                seats: paying.seats,
            }
            .into(),
            Err(e) => e.into(),
        };
        // Nothing was written: the hold goes back to *held*.
        if let Err(e) = holds::abort_payment(self.redis, hold, &buyer.user, &attempt, Bar::No).await
        {
            tracing::warn!(%hold, error = %e, "could not return the hold to held yet; trying again in the background");
            self.abort_later(hold, buyer, attempt, Lost::Abort);
        }
        Err(refused)
    }

    /// Step 3: seats sold, hold dropped, queue entry ended. If Redis fails
    /// now the money has moved and the seats are sold in PostgreSQL; the
    /// reconciler finishes this step.
    async fn confirm(&self, buyer: &QueueClaims, hold: &HoldId, payment: &Payment) {
        let sale = holds::Sale {
            event: &hold.event,
            schedule: &hold.schedule,
            hold_n: hold.n,
            user: buyer.user.as_str(),
            payment_id: payment.payment_id,
            seats: &payment.seats,
            end_queue: true,
        };
        match holds::confirm_sale(self.redis, sale).await {
            // The answer does not wait for this bookkeeping; if it is lost
            // the reconciler replays the (idempotent) step.
            Ok(_) => self.confirmations.push(payment.payment_id),
            Err(e) => {
                tracing::warn!(%hold, error = %e, "confirm_sale failed; the reconciler will finish it");
            }
        }
    }

    /// [`abort_later`] for this payment's `attempt` on `hold`, within the
    /// paying timeout.
    fn abort_later(&self, hold: &HoldId, buyer: &QueueClaims, attempt: String, lost: Lost) {
        abort_later(
            self.redis,
            hold,
            &buyer.user,
            attempt,
            lost,
            self.paying_timeout,
        );
    }

    /// Test-only crash point, effective only with the `failpoints` feature
    /// (the test build): when `BOXOFFICE_FAILPOINT` names it, the request
    /// stops here for good and the process says so on stderr, so a test can
    /// kill the process (SIGKILL) at exactly this point, skipping every
    /// clean-up a process that really died would skip.
    async fn failpoint(&self, name: &str) {
        #[cfg(feature = "failpoints")]
        if self.failpoint == Some(name) {
            eprintln!("boxoffice: failpoint {name} reached");
            std::future::pending::<()>().await;
        }
        #[cfg(not(feature = "failpoints"))]
        let _ = name;
    }
}

/// Late aborts ([`abort_later`]), at most 10,000 at once; past that a hold
/// left *paying* by a lost call frees at its paying deadline.
static LATE_ABORTS: Later = Later::new(10_000);

/// Which step of a payment attempt lost its answer ([`abort_later`]).
enum Lost {
    /// `begin_payment`: the call may yet reach Redis and make the hold
    /// *paying*; the abort bars the attempt ([`Bar::Attempt`]).
    Begin,
    /// `abort_payment` after a payment that moved no money: the hold is
    /// *paying* for the attempt until one answers.
    Abort,
    /// The PostgreSQL statement, with no PostgreSQL to ask whether it
    /// committed: the hold is *paying*, paid or not.
    Record(Pg),
}

/// Gives back, in the background, the hold of a payment attempt that lost
/// its answer ([`Lost`]) and moved no money, so that the buyer's retry
/// meets `409 request_in_progress` for seconds instead of the whole paying
/// timeout, after which the hold would be dropped and the seat lost:
/// `abort_payment` by that attempt (after [`Lost::Record`], only once
/// PostgreSQL says the hold was not paid; a paid one is the reconciler's),
/// tried ([`later::retry`], at most every 4 s: about a dozen tries) for
/// `window` (the paying timeout), until it finds the hold paying for the
/// attempt (held again), done with (paid, gone, expired, someone else's),
/// or, after [`Lost::Begin`], not paying for it: the attempt is then
/// barred on the hold, so its `begin_payment`, still on its way, is
/// refused whenever it arrives. Only a `begin_payment` call that arrives
/// after a whole window in which Redis answered none of these tries is not
/// caught: its hold frees at its paying deadline. Another attempt's
/// payment is never touched.
fn abort_later(
    redis: &Redis,
    hold: &HoldId,
    user: &UserId,
    attempt: String,
    lost: Lost,
    window: Duration,
) {
    let Some(slot) = LATE_ABORTS.slot() else {
        return;
    };
    let (redis, hold, user) = (redis.clone(), hold.clone(), user.clone());
    tokio::spawn(async move {
        let found = later::retry(window, Duration::from_secs(4), || async {
            let unpaid = match &lost {
                Lost::Begin | Lost::Abort => Ok(true),
                Lost::Record(pg) => payment_of_hold(pg, &hold).await.map(|p| p.is_none()),
            };
            let bar = match lost {
                Lost::Begin => Bar::Attempt,
                Lost::Abort | Lost::Record(_) => Bar::No,
            };
            let aborted = match unpaid {
                Ok(true) => holds::abort_payment(&redis, &hold, &user, &attempt, bar).await,
                Ok(false) => return Step::Done("paid"),
                Err(e) => Err(e),
            };
            match aborted {
                Ok(Aborted::Restored { .. }) => Step::Done("restored"),
                Ok(Aborted::Expired) => Step::Done("expired"),
                // The lost call had not arrived; it never will take effect.
                Ok(Aborted::Barred) => Step::Done("barred"),
                Ok(Aborted::Gone | Aborted::Forbidden | Aborted::NoSchedule) => Step::Done("gone"),
                // Not (yet) paying for this attempt, or no answer: the
                // lost call may still arrive, the stores answer later.
                Ok(Aborted::NotPaying) => Step::Again("never_paying"),
                Err(_) => Step::Again("unanswered"),
            }
        })
        .await;
        drop(slot);
        if !matches!(found, "never_paying" | "barred") {
            tracing::info!(%hold, found, "settled the hold of a payment attempt that lost its answer");
        }
        metrics::counter!("boxoffice_payment_late_aborts_total", "found" => found).increment(1);
    });
}

/// What the payment transaction decided.
#[derive(Debug)]
pub enum Recorded {
    Paid {
        payment: Payment,
        body: String,
    },
    InsufficientFunds {
        balance: Decimal,
        amount: Decimal,
    },
    /// This hold was paid before.
    AlreadyPaid {
        payment_id: PaymentId,
    },
    /// A seat is already sold in PostgreSQL (Redis lost it): refused.
    SeatTaken,
    /// The schedule was cancelled: nothing of it is sold any more.
    Cancelled,
    /// The statement was sent but its answer was lost (a timeout, a
    /// connection gone), and asking again failed too: it may have
    /// committed. Nothing may be undone before PostgreSQL has been asked
    /// again.
    Unknown(StoreError),
}

/// The payment id of a hold, if it was paid.
///
/// # Errors
/// PostgreSQL unavailable.
pub async fn payment_of_hold(pg: &Pg, hold: &HoldId) -> Result<Option<PaymentId>, StoreError> {
    Ok(paid_hold(pg, hold).await?.map(|(id, _)| id))
}

/// The payment of a hold with the user who paid it, if it was paid.
///
/// # Errors
/// PostgreSQL unavailable.
/// A hold gone from Redis, as `user` may be told: paid (naming the payment
/// only to its own buyer), someone else's paid hold, expired or released,
/// or never minted. The payment route and the hold routes answer from it
/// alike.
///
/// # Errors
/// PostgreSQL or Redis unavailable.
pub async fn why_gone(
    pg: &Pg,
    redis: &Redis,
    user: &UserId,
    hold: &HoldId,
) -> Result<Refusal, StoreError> {
    Ok(match paid_hold(pg, hold).await? {
        Some((payment_id, owner)) if owner == user.as_str() => Refusal::AlreadyPaid { payment_id },
        Some(_) => Refusal::NotYours,
        None if holds::ever_minted(redis, hold).await? => Refusal::HoldExpired,
        None => Refusal::NoSuchHold,
    })
}

pub async fn paid_hold(pg: &Pg, hold: &HoldId) -> Result<Option<(PaymentId, String)>, StoreError> {
    pg.guard(
        sqlx::query_as(r"select payment_id, user_id from payments where hold_id = $1")
            .bind(hold.to_string())
            .fetch_optional(pg.pool()),
    )
    .await
}

/// Step 2 as one statement, so one round trip and one commit: price from
/// the catalog, conditional debit (none for a free schedule), payment, sold
/// seats (unique per seat), ledger row, outbox message and the idempotent
/// response, all or nothing. Data-modifying CTEs run exactly once each on
/// one snapshot; a constraint violation anywhere undoes the whole
/// statement. A step that finds no row writes nothing, and every later
/// step reads from it, so a short wallet or a cancelled schedule writes
/// nothing at all; the final select says which ([`RecordRow`]).
///
/// Parameters: `$1` payment id, `$2` user, `$3` event, `$4` schedule,
/// `$5` hold id, `$6` seats, `$7` paid at, `$8` ledger transaction id,
/// `$9 $10 $11` the response body cut around its amount and balance
/// (`money::cut_slots`), `$12` the `Idempotency-Key` (or null).
static RECORD: LazyLock<idempotency::Gated> =
    LazyLock::new(|| idempotency::Gated::new(RECORD_EFFECT, "$2", "$12"));
const RECORD_EFFECT: &str = r"
-- 0. Under a key, nothing is settled unless the request's claim is still
--    unanswered (`claimed`, idempotency::Gated): a claim given back
--    after our timeout cannot be followed by the debit.
price as (
    -- 1. The price, from the catalog (never from the client); no row
    --    when the schedule is cancelled.
    select price * cardinality($6::int[]) as amount
    from schedules where event_id = $3 and schedule_id = $4 and cancelled_at is null
), debit as (
    -- 2a. The conditional debit: no row when the balance is short.
    update wallets w set balance = w.balance - p.amount, updated_at = now()
    from price p, claimed
    where w.user_id = $2 and p.amount > 0 and w.balance >= p.amount
    returning w.balance, p.amount
), free as (
    -- 2b. A free schedule: no wallet row is written (or created), no ledger
    --     row; the zero-amount payment is the registration.
    select coalesce((select balance from wallets where user_id = $2), 0) as balance, p.amount
    from price p, claimed where p.amount = 0
), settled as (
    -- 2. The money settled (balance after, amount): one row or none.
    select balance, amount from debit union all select balance, amount from free
), paid as (
    -- 3. The payment (unique per hold: a hold is paid once).
    insert into payments (payment_id, user_id, event_id, schedule_id, hold_id, amount, seats, paid_at)
    select $1, $2, $3, $4, $5, d.amount, $6, $7 from settled d
    returning payment_id
), owed as (
    -- 3b. The work the payment still owes, each row deleted when it is
    --     done: its Redis side confirmed, its sums rolled up.
    insert into payments_unconfirmed (payment_id, paid_at) select payment_id, $7 from paid
), tail as (
    insert into payments_not_rolled_up (event_id, payment_id) select $3, payment_id from paid
), sold as (
    -- 4. The sold seats (unique per seat: the last line against a double sale).
    insert into sold_seats (event_id, schedule_id, seat_no, payment_id)
    select $3, $4, unnest($6::int[]), p.payment_id from paid p
), entry as (
    -- 5. The ledger row of a debit.
    insert into ledger (transaction_id, user_id, kind, amount, balance_after, payment_id)
    select $8, $2, 'payment', -d.amount, d.balance, $1 from debit d
), body as (
    -- 6. The response body: the pieces joined with the settled values,
    --    in the same text as `format_amount`.
    select $9 || trim_scale(d.amount)::text || $10 || trim_scale(d.balance)::text || $11 as text
    from settled d
), message as (
    -- 7. The outbox message.
    insert into outbox (topic, user_id, payload)
    select 'payment.confirmed', $2, b.text::jsonb from body b
), answer as (
    -- 8. The key's answer, in the same commit as the effect.
    update idempotency i set status = 201, response = b.text
    from body b where i.user_id = $2 and i.key = $12
)
-- 9. One row whatever happened (see RecordRow).
select p.amount, d.balance as balance_after, b.text as body,
       (select balance from wallets where user_id = $2) as balance_before,
       (select payment_id from payments where hold_id = $5) as paid_before,
       exists (select 1 from claimed) as claimed
from (select) one left join price p on true left join settled d on true left join body b on true";

/// What [`RECORD`] returns. The snapshot is the statement's own, so
/// `balance_before` and `paid_before` do not see its writes.
#[derive(Debug, sqlx::FromRow)]
struct RecordRow {
    /// The price; none when the schedule is cancelled.
    amount: Option<Decimal>,
    /// The balance after the payment; none when nothing was settled.
    balance_after: Option<Decimal>,
    /// The stored response body; none when nothing was settled.
    body: Option<String>,
    /// The balance before (none for a user without a wallet).
    balance_before: Option<Decimal>,
    /// The payment of this hold, if it was paid before.
    paid_before: Option<PaymentId>,
    /// False when the request's claim was no longer open: nothing was
    /// settled.
    claimed: bool,
}

/// Step 2: the one PostgreSQL transaction of a payment ([`RECORD`]). When
/// the statement's answer is lost, the outcome is settled by asking again:
/// paid after all, not paid (an error), or [`Recorded::Unknown`].
///
/// # Errors
/// PostgreSQL unavailable and nothing was written.
pub async fn record(
    pg: &Pg,
    user: &UserId,
    hold: &HoldId,
    seats: &[u32],
    key: Option<&IdempotencyKey>,
) -> Result<Recorded, StoreError> {
    let seats: Vec<i32> = seats.iter().map(|&s| s as i32).collect();
    let mut payment = Payment {
        payment_id: PaymentId::mint(),
        hold_id: hold.to_string(),
        event_id: hold.event.to_string(),
        schedule_id: hold.schedule.to_string(),
        seats,
        amount: SLOT,
        balance_after: SLOT,
        paid_at: Utc::now().trunc_subsecs(6),
        refunded_at: None,
    };
    let template = serde_json::to_string(&payment).expect("serializes");
    let pieces = cut_slots(&template, &["amount", "balance_after"]);
    let result = pg
        .guard(async {
            let mut conn = pg.payment_conn().await?;
            let row = sqlx::query_as::<_, RecordRow>(RECORD.sql(key.is_some()))
                .bind(payment.payment_id)
                .bind(user.as_str())
                .bind(hold.event.as_str())
                .bind(hold.schedule.as_str())
                .bind(&payment.hold_id)
                .bind(&payment.seats)
                .bind(payment.paid_at)
                .bind(uuid::Uuid::now_v7())
                .bind(&pieces[0])
                .bind(&pieces[1])
                .bind(&pieces[2])
                .bind(key.map(IdempotencyKey::as_str))
                .fetch_one(&mut *conn)
                .await;
            // Only the test-only `slow_pg_ms` failpoint holds it longer.
            pg.give_back_payment_conn(conn, &row).await;
            row
        })
        .await;
    match result {
        // The claim was given back or answered by another request with the
        // key (`idempotency::once` finds out which).
        Ok(RecordRow { claimed: false, .. }) => Err(idempotency::claim_closed()),
        Ok(RecordRow {
            amount: Some(amount),
            balance_after: Some(balance_after),
            body: Some(body),
            ..
        }) => {
            payment.amount = amount.normalize();
            payment.balance_after = balance_after.normalize();
            debug_assert_eq!(body, serde_json::to_string(&payment).expect("serializes"));
            Ok(Recorded::Paid { payment, body })
        }
        // Not settled because this hold was paid before (whatever the
        // balance now), because the schedule is cancelled, or because the
        // balance is short.
        Ok(RecordRow {
            paid_before: Some(payment_id),
            ..
        }) => Ok(Recorded::AlreadyPaid { payment_id }),
        Ok(RecordRow { amount: None, .. }) => Ok(Recorded::Cancelled),
        Ok(RecordRow {
            amount: Some(amount),
            balance_before,
            ..
        }) => Ok(Recorded::InsufficientFunds {
            balance: balance_before.unwrap_or_default().normalize(),
            amount: amount.normalize(),
        }),
        Err(e @ StoreError::Unavailable { .. }) => settle(pg, user, hold, key, e).await,
        Err(e) => match constraint_of(&e).as_deref() {
            Some("sold_seats_once") => Ok(Recorded::SeatTaken),
            // A hold paid before.
            Some("payments_hold_once") => match payment_of_hold(pg, hold).await? {
                Some(payment_id) => Ok(Recorded::AlreadyPaid { payment_id }),
                None => Err(e),
            },
            _ => Err(e),
        },
    }
}

/// After an outage error the statement may still have committed (sent,
/// then the answer lost), or still be running on the server: asks
/// PostgreSQL whether this hold was paid. Under a key the claim is given
/// back first ([`idempotency::release`]), which waits for a statement
/// still holding it; after that none can commit, so "not paid" stays true
/// and the hold may go back to *held*.
///
/// # Errors
/// `e` itself when the hold was not paid (nothing was written).
pub async fn settle(
    pg: &Pg,
    user: &UserId,
    hold: &HoldId,
    key: Option<&IdempotencyKey>,
    e: StoreError,
) -> Result<Recorded, StoreError> {
    if let Some(key) = key
        && idempotency::release(pg, user, key).await.is_err()
    {
        // Whether a statement is still running is not known: neither
        // "paid" nor "not paid" may be answered yet.
        return Ok(Recorded::Unknown(e));
    }
    let paid = match payment_of_hold(pg, hold).await {
        Ok(Some(id)) => get(pg, id).await,
        Ok(None) => return Err(e),
        Err(again) => Err(again),
    };
    match paid {
        Ok(Some((_, payment))) => {
            let body = serde_json::to_string(&payment).expect("serializes");
            Ok(Recorded::Paid { payment, body })
        }
        _ => Ok(Recorded::Unknown(e)),
    }
}
