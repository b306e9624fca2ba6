//! Response bodies of the API as types, for `/openapi.json`.
//!
//! Handlers serialize the `Serialize` ones directly. A few bodies are still
//! assembled as JSON by the code that reads them (the admin event views and
//! the sales report, whose parts come from several queries); their types
//! here only describe that JSON and carry no `Serialize`. schemathesis
//! (`scripts/schemathesis.sh`) checks every answer against these.

use serde::Serialize;
use utoipa::ToSchema;

use crate::{catalog::QueueSettings, payments::Payment, queue::Figures, wallet::LedgerEntry};

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `GET /readyz`, with 200 and with 503.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    /// `ok` or `unavailable`.
    pub redis: &'static str,
    /// `ok` or `unavailable`.
    pub postgres: &'static str,
    /// `applied`, `pending` or `unknown`.
    pub migrations: &'static str,
}

/// `GET /v1/users/{user_id}/wallet`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Balance {
    pub user_id: String,
    /// Decimal string in the service currency.
    #[serde(with = "crate::money::serde_amount")]
    #[schema(value_type = String, example = "75000")]
    pub balance: rust_decimal::Decimal,
    /// ISO 4217 code of the service currency.
    #[schema(example = "KRW")]
    pub currency: String,
}

/// `GET /v1/users/{user_id}/wallet/transactions`: one page, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionsPage {
    pub transactions: Vec<LedgerEntry>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/users/{user_id}/payments`: newest first (at most 500).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPayments {
    pub payments: Vec<Payment>,
}

/// `PATCH /v1/admin/events/{event_id}/queue`: the new settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueSettingsBody {
    pub event_id: String,
    pub queue: QueueSettings,
}

/// One date of an event in the public catalog.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct PublicSchedule {
    pub schedule_id: String,
    /// RFC 3339.
    pub starts_at: String,
    #[schema(example = "50000")]
    pub price: String,
}

/// One event in the public catalog.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct PublicEvent {
    pub event_id: String,
    pub name: String,
    pub schedules: Vec<PublicSchedule>,
}

/// `GET /v1/events`: every event with its schedules and prices.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    /// Rendered when the event is loaded into Redis.
    #[schema(value_type = Vec<PublicEvent>)]
    pub events: Vec<serde_json::Value>,
}

/// One date of an event as configured.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ScheduleConfig {
    pub schedule_id: String,
    /// RFC 3339.
    pub starts_at: String,
    pub seats: u32,
    pub row_size: u32,
    #[schema(example = "50000")]
    pub price: String,
    pub hold_seconds: u32,
    pub max_per_user: u32,
}

/// `POST /v1/admin/events`: the event as stored.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct EventConfig {
    pub event_id: String,
    pub name: String,
    pub queue: QueueSettings,
    pub schedules: Vec<ScheduleConfig>,
}

/// One date of an event with its live figures.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ScheduleDetails {
    pub schedule_id: String,
    /// RFC 3339.
    pub starts_at: String,
    pub seats: u32,
    pub row_size: u32,
    #[schema(example = "50000")]
    pub price: String,
    pub hold_seconds: u32,
    pub max_per_user: u32,
    /// Seats in live holds (Redis).
    pub held: u32,
    /// Seats sold (Redis).
    pub sold: u32,
    pub available: u32,
    /// Sum of the payments that stand, refunds not counted (PostgreSQL).
    #[schema(example = "100000")]
    pub revenue: String,
    /// Payments that stand.
    pub payments: i64,
    /// Payments refunded.
    pub payments_refunded: i64,
}

/// `GET /v1/admin/events/{event_id}`: configuration and live figures.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct EventDetails {
    pub event_id: String,
    pub name: String,
    pub queue: QueueSettings,
    pub live: Figures,
    pub schedules: Vec<ScheduleDetails>,
}

/// Sales of one schedule.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ScheduleSales {
    pub schedule_id: String,
    pub payments: i64,
    pub seats_sold: i64,
    pub seats_refunded: i64,
    /// Net of refunds.
    #[schema(example = "100000")]
    pub revenue: String,
}

/// Sales of one hour.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct HourlySales {
    /// Start of the hour, RFC 3339.
    pub hour: String,
    pub payments: i64,
    pub seats_sold: i64,
    pub seats_refunded: i64,
    /// Net of refunds.
    #[schema(example = "100000")]
    pub revenue: String,
}

/// `GET /v1/admin/events/{event_id}/sales` (from PostgreSQL).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct SalesReport {
    pub event_id: String,
    /// ISO 4217 code of the service currency.
    pub currency: String,
    pub schedules: Vec<ScheduleSales>,
    pub hourly: Vec<HourlySales>,
}

/// `GET /v1/events/{event_id}/schedules`: schedules with live availability.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<super::holds::ScheduleAvailability>,
}

/// One page of a draw's entries, in draw order (`GET /v1/admin/events/{id}/draw/entries`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct DrawEntries {
    /// Entries in the draw.
    pub total: u64,
    pub offset: u64,
    /// User ids, in draw order.
    pub users: Vec<String>,
}

/// One Server-Sent Event of `GET /v1/queue/stream`: `event` is `status`,
/// `admitted` or `gone`; `data` is the queue entry's JSON (as from
/// `GET /v1/queue/status`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    pub event: Option<String>,
    /// The entry as JSON text.
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
}
