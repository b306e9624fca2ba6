//! The OpenAPI 3.1 document, generated from the handlers' annotations,
//! served at `/openapi.json` with Swagger UI (vendored in the binary) at
//! `/docs`.

use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// An RFC 9457 problem: every error of the API has this shape.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    /// `urn:boxoffice:problem:<code>`
    #[schema(example = "urn:boxoffice:problem:seats_unavailable")]
    r#type: String,
    title: String,
    status: u16,
    detail: String,
    /// Stable machine-readable code: invalid_request, unauthorized,
    /// forbidden, not_found, already_exists, not_admitted,
    /// queue_token_expired, seats_unavailable, hold_limit_exceeded,
    /// hold_expired, hold_already_paid, insufficient_funds,
    /// idempotency_key_reused, request_in_progress, rate_limited,
    /// dependency_unavailable, sale_not_open, sale_closed,
    /// challenge_failed, sold_out, internal_error.
    #[schema(example = "seats_unavailable")]
    code: String,
}

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "queue_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Signed queue token returned by the join endpoint"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "service_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "boxoffice", description = "Flash-sale engine: waiting room, atomic seat holds, wallet payments."),
    paths(
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        super::ops::dashboard,
        super::queue::join,
        super::queue::status,
        super::queue::leave,
        super::stream::stream,
        super::fair::draw,
        super::fair::challenge,
        super::fair::draw_entries,
        super::fair::patch_event,
        super::catalog::list_events,
        super::admin::create_event,
        super::admin::get_event,
        super::admin::patch_queue,
        super::holds::list_schedules,
        super::holds::seats,
        super::holds::admin_seats,
        super::holds::place,
        super::holds::get,
        super::holds::release,
        super::wallet::balance,
        super::wallet::charge,
        super::wallet::transactions,
        super::payments::pay,
        super::payments::get_payment,
        super::payments::user_payments,
        super::payments::sales,
        super::payments::reconcile_now,
    ),
    components(schemas(Problem)),
    modifiers(&Security),
)]
pub struct ApiDoc;
