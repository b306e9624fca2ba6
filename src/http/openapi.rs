//! The OpenAPI 3.1 document, generated from the handlers' annotations,
//! served at `/openapi.json` with Swagger UI (vendored in the binary) at
//! `/docs`.

use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::{
        Content, HeaderBuilder, ObjectBuilder, Ref, RefOr, Response, ResponseBuilder, Type,
        path::Operation,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
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
    /// dependency_unavailable, sale_not_open, sale_closed, challenge_failed,
    /// sold_out, internal_error; and, from the HTTP layer before any handler
    /// runs, payload_too_large (413), request_timeout (408) and over_capacity
    /// (503, too many open connections).
    #[schema(example = "seats_unavailable")]
    code: String,
    /// not_admitted: the entry's place in line (null if unknown).
    position: Option<u64>,
    /// seats_unavailable: the requested seats that are taken.
    unavailable_seats: Option<Vec<u32>>,
    /// hold_limit_exceeded: the per-user limit of the schedule.
    max_per_user: Option<u32>,
    /// hold_limit_exceeded: seats the user holds in the schedule.
    held: Option<u32>,
    /// hold_limit_exceeded: seats the user bought in the schedule.
    bought: Option<u32>,
    /// hold_limit_exceeded: seats asked for.
    requested: Option<u32>,
    /// hold_already_paid: the payment (only to the hold's owner).
    payment_id: Option<String>,
    /// insufficient_funds: the wallet balance.
    balance: Option<String>,
    /// insufficient_funds: the amount due.
    amount: Option<String>,
    /// dependency_unavailable: `redis` or `postgres`.
    dependency: Option<String>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "user_assertion",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The platform's JWT for one user (`sub` = user id); `boxoffice user-token <user>` mints one for development",
                    ))
                    .build(),
            ),
        );
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
            "user_assertion",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT the platform's login issued for one user (sub = user id)",
                    ))
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
        super::payments::refund_payment,
        super::payments::cancel_schedule,
    ),
    // The admission figures are flattened into `Figures`, which utoipa
    // does not follow when collecting schemas.
    components(schemas(Problem, crate::queue::autopilot::Figures)),
    modifiers(&Security, &Problems),
)]
pub struct ApiDoc;

/// The media type of every refusal.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Makes every 4xx/5xx answer of the document a `Problem` in
/// `application/problem+json`, and adds the refusals that extractors and
/// middleware give on every route of a kind, so each handler's annotation
/// lists only its own: 401 on routes that need a credential, 400 and 413
/// on routes with a JSON body, 429 on the rate-limited public routes, 503
/// (with `Retry-After`) on every route that reaches Redis or PostgreSQL.
struct Problems;

fn problem(description: &str, retry_after: bool) -> Response {
    let mut resp = ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        Content::new(Some(Ref::from_schema_name("Problem"))),
    );
    if retry_after {
        resp = resp.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
    resp.build()
}

/// Whether a response is documented as a `Problem` (or has no body yet).
fn is_problem(resp: &Response) -> bool {
    resp.content.is_empty()
        || resp.content.values().any(|c| {
            matches!(c, RefOr::T(c) if matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem")))
        })
}

fn add_problems(path: &str, op: &mut Operation) {
    let responses = &mut op.responses.responses;
    for (status, resp) in responses.iter_mut() {
        if let (true, RefOr::T(resp)) = (status.starts_with(['4', '5']), resp)
            && is_problem(resp)
        {
            let retry = status == "503" || status == "429";
            *resp = problem(&resp.description, retry);
        }
    }
    let mut add = |status: &str, description: &str, retry: bool| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(problem(description, retry)));
    };
    if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
        add(
            "401",
            "unauthorized: the credential is missing, malformed, forged or expired",
            false,
        );
    }
    if op.request_body.is_some() {
        add(
            "400",
            "invalid_request: the body is not JSON, or Content-Type is not application/json",
            false,
        );
        add(
            "413",
            "payload_too_large: the body is over the size limit",
            false,
        );
    }
    let v1 = path.starts_with("/v1/");
    if v1 && !path.starts_with("/v1/admin/") {
        add(
            "429",
            "rate_limited: too many requests from this client; see Retry-After",
            true,
        );
    }
    if v1 {
        add(
            "503",
            "dependency_unavailable: Redis or PostgreSQL is unavailable; see Retry-After",
            true,
        );
    }
}

impl Modify for Problems {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut api.paths.paths {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_problems(path, op);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn operations() -> Vec<(String, Value)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("serializable");
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                ops.push((format!("{} {path}", method.to_uppercase()), op.clone()));
            }
        }
        assert!(ops.len() >= 25, "only {} operations", ops.len());
        ops
    }

    #[test]
    fn every_refusal_is_a_problem_and_every_success_body_has_a_schema() {
        for (name, op) in operations() {
            for (status, resp) in op["responses"].as_object().expect("responses") {
                let content = resp["content"].as_object();
                if status.starts_with(['4', '5']) && !(name == "GET /readyz" && status == "503") {
                    let schema = &resp["content"][PROBLEM_JSON]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/Problem",
                        "{name} {status} is not a problem+json Problem"
                    );
                    assert_eq!(content.map(|c| c.len()), Some(1), "{name} {status}");
                } else if status != "204" {
                    let content = content.unwrap_or_else(|| panic!("{name} {status} has no body"));
                    assert!(
                        content.values().all(|c| c["schema"].is_object()),
                        "{name} {status} has no schema"
                    );
                }
            }
        }
    }

    #[test]
    fn refusals_of_extractors_and_middleware_are_documented() {
        for (name, op) in operations() {
            let has = |s: &str| op["responses"].get(s).is_some();
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                assert!(has("401"), "{name} needs a credential but documents no 401");
            }
            if op.get("requestBody").is_some() {
                assert!(has("400") && has("413"), "{name} takes a body: 400 and 413");
            }
            if name.contains(" /v1/") {
                assert!(has("503"), "{name} reaches a store: 503");
                let retry = &op["responses"]["503"]["headers"]["Retry-After"];
                assert!(retry.is_object(), "{name}: 503 without Retry-After");
            }
            if name.contains(" /v1/") && !name.contains(" /v1/admin/") {
                assert!(has("429"), "{name} is rate limited: 429");
            }
        }
    }

    #[test]
    fn the_three_credentials_are_security_schemes() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("serializable");
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["user_assertion"]["scheme"], "bearer");
        assert_eq!(schemes["user_assertion"]["bearerFormat"], "JWT");
        assert_eq!(schemes["queue_token"]["scheme"], "bearer");
        assert_eq!(schemes["service_key"]["in"], "header");
        assert_eq!(schemes["service_key"]["name"], "X-Api-Key");
    }
}
