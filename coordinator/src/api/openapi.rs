//! The OpenAPI 3.1 document served at `/openapi.json`, built from the shared API types
//! (their `ToSchema` derives) and one table of routes, so that the routes, their schemas
//! and the error shape cannot drift apart silently. Pure.

use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ComponentsBuilder, Ref};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Required};

use fleetwave_shared::dsse::{Envelope, Signature};
use fleetwave_shared::protocol::operator::*;
use fleetwave_shared::protocol::*;

/// Who may call a route.
#[derive(Clone, Copy)]
enum Auth {
    Enroll,
    Agent,
    Operator(&'static str),
    AgentOrOperator,
}

/// One documented route: method, path, auth, request schema, success status and schema.
struct Route {
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    auth: Auth,
    request: Option<&'static str>,
    status: &'static str,
    response: Option<&'static str>,
    errors: &'static [&'static str],
}

#[allow(clippy::too_many_arguments)]
const fn r(
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    auth: Auth,
    request: Option<&'static str>,
    status: &'static str,
    response: Option<&'static str>,
    errors: &'static [&'static str],
) -> Route {
    Route {
        method,
        path,
        summary,
        auth,
        request,
        status,
        response,
        errors,
    }
}

use HttpMethod::{Get, Head, Post, Put};

const COMMON: &[&str] = &["400", "401", "403", "413", "429", "503"];

fn routes() -> Vec<Route> {
    vec![
        r(
            Post,
            "/v1/enroll",
            "Enroll a site with a one-time token and its device key",
            Auth::Enroll,
            Some("EnrollRequest"),
            "200",
            Some("EnrollResponse"),
            COMMON,
        ),
        r(
            Post,
            "/v1/agent/session",
            "Open an agent session with a signed, replay-protected handshake",
            Auth::Enroll,
            Some("SessionRequest"),
            "200",
            Some("SessionResponse"),
            COMMON,
        ),
        r(
            Get,
            "/v1/agent/poll",
            "The site's signed assignment and release, or nothing (ETag, long poll)",
            Auth::Agent,
            None,
            "200",
            Some("PollResponse"),
            &["304", "400", "401", "403", "429", "503"],
        ),
        r(
            Post,
            "/v1/agent/lease",
            "Ask permission to start installing now",
            Auth::Agent,
            Some("LeaseRequest"),
            "200",
            Some("LeaseGrant"),
            &["400", "401", "403", "409", "503"],
        ),
        r(
            Post,
            "/v1/agent/reports",
            "Deliver a batch of events (applied at most once each)",
            Auth::Agent,
            Some("ReportBatch"),
            "200",
            Some("ReportAck"),
            COMMON,
        ),
        r(
            Put,
            "/v1/artifacts/{sha256}",
            "Upload an artifact (raw bytes; name = SHA-256)",
            Auth::Operator("release_manager"),
            None,
            "201",
            Some("ArtifactInfo"),
            &["400", "401", "403", "413", "422", "503"],
        ),
        r(
            Get,
            "/v1/artifacts/{sha256}",
            "Download an artifact (Range supported)",
            Auth::AgentOrOperator,
            None,
            "200",
            None,
            &["400", "401", "403", "404", "416"],
        ),
        r(
            Head,
            "/v1/artifacts/{sha256}",
            "Artifact length and ETag",
            Auth::AgentOrOperator,
            None,
            "200",
            None,
            &["400", "401", "403", "404"],
        ),
        r(
            Post,
            "/v1/enrollment-tokens",
            "Create an enrollment token",
            Auth::Operator("operator"),
            Some("CreateEnrollmentToken"),
            "201",
            Some("EnrollmentTokenCreated"),
            COMMON,
        ),
        r(
            Get,
            "/v1/enrollment-tokens",
            "List enrollment tokens",
            Auth::Operator("viewer"),
            None,
            "200",
            Some("EnrollmentTokenList"),
            COMMON,
        ),
        r(
            Post,
            "/v1/enrollment-tokens/{id}/revoke",
            "Revoke an enrollment token",
            Auth::Operator("operator"),
            None,
            "204",
            None,
            &["401", "403", "404"],
        ),
        r(
            Post,
            "/v1/operator-tokens",
            "Create an operator token",
            Auth::Operator("admin"),
            Some("CreateOperatorToken"),
            "201",
            Some("OperatorTokenCreated"),
            COMMON,
        ),
        r(
            Get,
            "/v1/operator-tokens",
            "List operator tokens",
            Auth::Operator("admin"),
            None,
            "200",
            Some("OperatorTokenList"),
            COMMON,
        ),
        r(
            Post,
            "/v1/operator-tokens/{id}/revoke",
            "Revoke an operator token",
            Auth::Operator("admin"),
            None,
            "204",
            None,
            &["401", "403", "404", "409"],
        ),
        r(
            Get,
            "/v1/sites",
            "List sites (filter by label, state, version; paginated)",
            Auth::Operator("viewer"),
            None,
            "200",
            Some("SiteList"),
            COMMON,
        ),
        r(
            Get,
            "/v1/sites/{id}",
            "One site",
            Auth::Operator("viewer"),
            None,
            "200",
            Some("SiteInfo"),
            &["401", "403", "404"],
        ),
        r(
            Post,
            "/v1/sites/{id}/labels",
            "Set and remove labels",
            Auth::Operator("operator"),
            Some("RelabelSite"),
            "200",
            Some("SiteInfo"),
            &["400", "401", "403", "404"],
        ),
        r(
            Post,
            "/v1/sites/{id}/decommission",
            "Decommission a site (refused at once)",
            Auth::Operator("operator"),
            None,
            "200",
            Some("SiteInfo"),
            &["401", "403", "404"],
        ),
        r(
            Post,
            "/v1/sites/{id}/reenable",
            "Re-enable a decommissioned site",
            Auth::Operator("operator"),
            None,
            "200",
            Some("SiteInfo"),
            &["401", "403", "404"],
        ),
        r(
            Post,
            "/v1/sites/{id}/rekey",
            "One-use enrollment token bound to an enrolled site: its new device key",
            Auth::Operator("operator"),
            Some("RekeySite"),
            "201",
            Some("EnrollmentTokenCreated"),
            &["400", "401", "403", "404", "409"],
        ),
        r(
            Post,
            "/v1/releases",
            "Publish a signed release envelope",
            Auth::Operator("release_manager"),
            Some("Envelope"),
            "201",
            Some("ReleaseInfo"),
            &["400", "401", "403", "409", "422"],
        ),
        r(
            Get,
            "/v1/releases",
            "List releases",
            Auth::Operator("viewer"),
            None,
            "200",
            Some("ReleaseList"),
            COMMON,
        ),
        r(
            Get,
            "/v1/releases/{id}",
            "One release",
            Auth::Operator("viewer"),
            None,
            "200",
            Some("ReleaseInfo"),
            &["401", "403", "404"],
        ),
        r(
            Post,
            "/v1/roots",
            "Publish the next root version (rotation)",
            Auth::Operator("admin"),
            Some("Envelope"),
            "201",
            Some("RootInfo"),
            &["400", "401", "403", "409", "422"],
        ),
        r(
            Get,
            "/v1/roots",
            "List root versions",
            Auth::Operator("viewer"),
            None,
            "200",
            Some("RootList"),
            COMMON,
        ),
        r(
            Post,
            "/v1/rollouts",
            "Create a rollout from a plan (TOML or JSON)",
            Auth::Operator("operator"),
            Some("CreateRollout"),
            "201",
            Some("RolloutView"),
            &["400", "401", "403", "409", "422"],
        ),
        r(
            Get,
            "/v1/rollouts",
            "List rollouts",
            Auth::Operator("viewer"),
            None,
            "200",
            Some("RolloutList"),
            COMMON,
        ),
        r(
            Get,
            "/v1/rollouts/{id}",
            "Rollout status: waves, tallies, gates, the sites needing attention (at most 200), timeline",
            Auth::Operator("viewer"),
            None,
            "200",
            Some("RolloutView"),
            &["401", "403", "404"],
        ),
        r(
            Get,
            "/v1/rollouts/{id}/sites",
            "Every site of a rollout by site id (filter by wave, state; paginated)",
            Auth::Operator("viewer"),
            None,
            "200",
            Some("RolloutSiteList"),
            &["400", "401", "403", "404"],
        ),
        r(
            Post,
            "/v1/rollouts/{id}/start",
            "Start a pending rollout",
            Auth::Operator("operator"),
            None,
            "200",
            Some("RolloutView"),
            &["401", "403", "404", "409"],
        ),
        r(
            Post,
            "/v1/rollouts/{id}/pause",
            "Pause a running rollout",
            Auth::Operator("operator"),
            Some("ActionReason"),
            "200",
            Some("RolloutView"),
            &["401", "403", "404", "409"],
        ),
        r(
            Post,
            "/v1/rollouts/{id}/resume",
            "Resume a paused or halted rollout",
            Auth::Operator("operator"),
            None,
            "200",
            Some("RolloutView"),
            &["401", "403", "404", "409"],
        ),
        r(
            Post,
            "/v1/rollouts/{id}/approve",
            "Approve a wave",
            Auth::Operator("operator"),
            Some("ApproveWave"),
            "200",
            Some("RolloutView"),
            &["400", "401", "403", "404", "409"],
        ),
        r(
            Post,
            "/v1/rollouts/{id}/abort",
            "Abort a rollout",
            Auth::Operator("operator"),
            Some("ActionReason"),
            "200",
            Some("RolloutView"),
            &["401", "403", "404", "409"],
        ),
        r(
            Post,
            "/v1/rollouts/{id}/rollback",
            "Send the rollout's sites back to their previous release",
            Auth::Operator("operator"),
            Some("ActionReason"),
            "200",
            Some("RolloutView"),
            &["401", "403", "404", "409"],
        ),
        r(
            Post,
            "/v1/rollouts/{id}/skip",
            "Skip a site (left out of its gate)",
            Auth::Operator("operator"),
            Some("SkipSite"),
            "200",
            Some("RolloutView"),
            &["400", "401", "403", "404", "409"],
        ),
        r(
            Get,
            "/v1/audit",
            "The audit log, newest first",
            Auth::Operator("viewer"),
            None,
            "200",
            Some("AuditList"),
            COMMON,
        ),
    ]
}

fn method_name(m: &HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "GET",
        HttpMethod::Put => "PUT",
        HttpMethod::Post => "POST",
        HttpMethod::Head => "HEAD",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Trace => "TRACE",
    }
}

fn json(schema: &str) -> Content {
    Content::new(Some(Ref::from_schema_name(schema)))
}

fn error_text(status: &str) -> &'static str {
    match status {
        "304" => "Not modified: the ETag still matches (carries ETag and x-fleetwave-next-poll)",
        "400" => "Malformed request (bad JSON, unknown field, invalid value); the message names it",
        "401" => "Missing, unknown or expired credentials",
        "403" => "Role not allowed, or site decommissioned",
        "404" => "No such object",
        "409" => {
            "Conflict (state does not allow it, counter not above the stream's, lease denied with Retry-After)"
        }
        "413" => "Body over the size limit",
        "416" => "Range not satisfiable",
        "422" => "Well-formed but refused (signature, plan validation, hash mismatch)",
        "429" => "Too many requests (Retry-After)",
        "503" => "Overloaded or storage unavailable (Retry-After)",
        _ => "Error",
    }
}

/// The whole document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for route in routes() {
        let mut op = OperationBuilder::new()
            .summary(Some(route.summary))
            .operation_id(Some(format!(
                "{}_{}",
                method_name(&route.method).to_lowercase(),
                route
                    .path
                    .trim_start_matches("/v1/")
                    .replace(['/', '{', '}', '-'], "_")
            )));
        let ok = ResponseBuilder::new().description("Success");
        let ok = match route.response {
            Some(s) => ok.content("application/json", json(s)),
            None if route.path.starts_with("/v1/artifacts") && !matches!(route.method, Put) => {
                ok.content("application/octet-stream", Content::new(None::<Ref>))
            }
            None => ok,
        };
        op = op.response(route.status, ok.build());
        if route.path.starts_with("/v1/artifacts") && matches!(route.method, Get) {
            op = op.response(
                "206",
                ResponseBuilder::new()
                    .description("Partial content (Range)")
                    .build(),
            );
        }
        for status in route.errors {
            let b = ResponseBuilder::new().description(error_text(status));
            let b = if *status == "304" {
                b
            } else {
                b.content("application/json", json("ErrorBody"))
            };
            op = op.response(*status, b.build());
        }
        if let Some(req) = route.request {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json(req))
                    .required(Some(Required::True))
                    .build(),
            ));
        } else if matches!(route.method, Put) {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/octet-stream", Content::new(None::<Ref>))
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        for name in ["id", "sha256"] {
            if route.path.contains(&format!("{{{name}}}")) {
                op = op.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .build(),
                );
            }
        }
        let queries: &[&str] = match route.path {
            "/v1/agent/poll" => &["wait", "root_version"],
            "/v1/sites" => &["label", "state", "version", "after", "limit"],
            "/v1/rollouts/{id}/sites" => &["wave", "state", "after", "limit"],
            "/v1/audit" => &["before", "limit"],
            _ => &[],
        };
        for q in queries {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(*q)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .build(),
            );
        }
        match route.auth {
            Auth::Enroll => {}
            Auth::Agent => {
                op = op.security(SecurityRequirement::new(
                    "agent_session",
                    Vec::<String>::new(),
                ))
            }
            Auth::Operator(role) => {
                op = op.security(SecurityRequirement::new(
                    "operator_token",
                    Vec::<String>::new(),
                ));
                op = op.description(Some(format!(
                    "Needs an operator token with role {role} (or admin)."
                )));
            }
            Auth::AgentOrOperator => {
                op = op
                    .security(SecurityRequirement::new(
                        "agent_session",
                        Vec::<String>::new(),
                    ))
                    .security(SecurityRequirement::new(
                        "operator_token",
                        Vec::<String>::new(),
                    ));
            }
        }
        paths = paths.path(route.path, PathItem::new(route.method, op.build()));
    }
    let bearer = || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
    let components = ComponentsBuilder::new()
        .security_scheme("agent_session", bearer())
        .security_scheme("operator_token", bearer())
        .schema_from::<ErrorBody>()
        .schema_from::<ErrorDetail>()
        .schema_from::<Envelope>()
        .schema_from::<Signature>()
        .schema_from::<EnrollRequest>()
        .schema_from::<EnrollResponse>()
        .schema_from::<SessionRequest>()
        .schema_from::<SessionResponse>()
        .schema_from::<PollResponse>()
        .schema_from::<LeaseRequest>()
        .schema_from::<LeaseGrant>()
        .schema_from::<LeaseDenied>()
        .schema_from::<ReportBatch>()
        .schema_from::<ReportAck>()
        .schema_from::<Event>()
        .schema_from::<EventBody>()
        .schema_from::<Phase>()
        .schema_from::<HealthSummary>()
        .schema_from::<OperatorRole>()
        .schema_from::<SiteState>()
        .schema_from::<RolloutStatus>()
        .schema_from::<CreateEnrollmentToken>()
        .schema_from::<EnrollmentTokenCreated>()
        .schema_from::<EnrollmentTokenInfo>()
        .schema_from::<EnrollmentTokenList>()
        .schema_from::<CreateOperatorToken>()
        .schema_from::<OperatorTokenCreated>()
        .schema_from::<OperatorTokenInfo>()
        .schema_from::<OperatorTokenList>()
        .schema_from::<InstalledInfo>()
        .schema_from::<SiteInfo>()
        .schema_from::<SiteList>()
        .schema_from::<RelabelSite>()
        .schema_from::<RekeySite>()
        .schema_from::<ReleaseInfo>()
        .schema_from::<ReleaseList>()
        .schema_from::<ArtifactInfo>()
        .schema_from::<RootInfo>()
        .schema_from::<RootList>()
        .schema_from::<PlanFormat>()
        .schema_from::<CreateRollout>()
        .schema_from::<ApproveWave>()
        .schema_from::<SkipSite>()
        .schema_from::<ActionReason>()
        .schema_from::<WaveTally>()
        .schema_from::<WaveView>()
        .schema_from::<DecisionView>()
        .schema_from::<RolloutSiteView>()
        .schema_from::<RolloutView>()
        .schema_from::<RolloutSiteList>()
        .schema_from::<RolloutSummary>()
        .schema_from::<RolloutList>()
        .schema_from::<AuditEntry>()
        .schema_from::<AuditList>()
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("fleetwave coordinator API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Agent and operator API. Every error is {\"error\": {\"code\", \"message\"}}.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}

/// Every `(METHOD, path)` the document describes (for tests that compare with the router).
pub fn documented_routes() -> Vec<(String, String)> {
    routes()
        .into_iter()
        .map(|r| (method_name(&r.method).to_string(), r.path.to_string()))
        .collect()
}
