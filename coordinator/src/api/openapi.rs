//! The OpenAPI 3.1 document served at `/openapi.json`, built from the shared API types
//! (their `ToSchema` and `IntoParams` derives) and one table of routes, so that the
//! routes, their schemas and the error shape cannot drift apart silently. Pure.
//!
//! The error statuses of an operation follow from the table: what the route reads (path,
//! query, JSON or raw body), who may call it and where it is mounted; `errors` adds the
//! ones its handler decides. `tests/openapi.rs` checks the document against the official
//! OpenAPI 3.1 schema and against the real router, both ways; `scripts/fuzz-api` fuzzes
//! the server from it.

use std::collections::BTreeSet;

use utoipa::IntoParams;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, Parameter, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ComponentsBuilder, ObjectBuilder, Ref, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Content, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, RefOr, Required,
};

use fleetwave_shared::dsse::{Envelope, Signature};
use fleetwave_shared::protocol::operator::*;
use fleetwave_shared::protocol::*;

use super::meta::ServiceStatus;

/// Who may call a route.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// Anyone: health, readiness, metrics, this document.
    Public,
    /// No bearer token: the body proves who is asking (enrollment token, device key).
    Enroll,
    Agent,
    Operator(&'static str),
    AgentOrOperator,
}

/// What a route reads besides its path.
#[derive(Clone, Copy)]
enum Input {
    Nothing,
    /// Query parameters, from the type the handler extracts.
    Query(fn() -> Vec<Parameter>),
    /// A JSON body with `Content-Type: application/json` (the schema's name).
    Json(&'static str),
    /// An optional JSON body: empty, or JSON whatever the Content-Type says.
    OptionalJson(&'static str),
    /// Raw bytes (an artifact).
    Bytes,
}

/// What a route answers on success.
#[derive(Clone, Copy)]
enum Output {
    Json(&'static str),
    /// Any JSON object (this document).
    JsonObject,
    /// No body (204).
    Empty,
    /// Artifact bytes.
    Bytes,
    /// A bundle file (a tar).
    Tar,
    /// Prometheus / OpenMetrics text.
    Metrics,
}

/// One documented route.
struct Route {
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    auth: Auth,
    input: Input,
    status: &'static str,
    output: Output,
    /// Statuses the handler itself decides, beyond those [`error_statuses`] derives.
    errors: &'static [&'static str],
}

/// `{id}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct IdPath {
    /// The id of the site, token, release or rollout.
    #[param(min_length = 1)]
    id: String,
}

/// `{sha256}` in a path: an artifact is named by its SHA-256.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct ArtifactPath {
    /// The artifact's SHA-256, 64 lowercase hex characters.
    #[param(pattern = "^[0-9a-f]{64}$")]
    sha256: String,
}

/// The query parameters of `T` (a type a handler extracts with `ApiQuery`).
fn query<T: IntoParams>() -> Vec<Parameter> {
    T::into_params(|| Some(ParameterIn::Query))
}

/// The parameters of a path template.
fn path_params(path: &str) -> Vec<Parameter> {
    let mut out = Vec::new();
    for segment in path.split('/') {
        match segment {
            "{id}" => out.extend(IdPath::into_params(|| None)),
            "{sha256}" => out.extend(ArtifactPath::into_params(|| None)),
            s if s.starts_with('{') => panic!("path parameter {s} of {path} has no type"),
            _ => {}
        }
    }
    out
}

use HttpMethod::{Delete, Get, Head, Post, Put};

/// A base to fill in: an operator GET of a JSON view, no handler-specific errors.
const VIEW: Route = Route {
    method: Get,
    path: "",
    summary: "",
    auth: Auth::Operator("viewer"),
    input: Input::Nothing,
    status: "200",
    output: Output::Json(""),
    errors: &[],
};

const ROUTES: &[Route] = &[
    Route {
        method: Post,
        path: "/v1/enroll",
        summary: "Enroll a box of a site (the site's first box creates it) with a one-time token and its device key; 409 site_exists, box_exists or box_unnamed",
        auth: Auth::Enroll,
        input: Input::Json("EnrollRequest"),
        output: Output::Json("EnrollResponse"),
        errors: &["409"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/agent/session",
        summary: "Open an agent session with a signed, replay-protected handshake",
        auth: Auth::Enroll,
        input: Input::Json("SessionRequest"),
        output: Output::Json("SessionResponse"),
        ..VIEW
    },
    Route {
        path: "/v1/agent/poll",
        summary: "The site's signed assignment and release, or nothing (ETag, long poll)",
        auth: Auth::Agent,
        input: Input::Query(query::<PollQuery>),
        output: Output::Json("PollResponse"),
        errors: &["304"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/agent/lease",
        summary: "Ask permission to start installing now",
        auth: Auth::Agent,
        input: Input::Json("LeaseRequest"),
        output: Output::Json("LeaseGrant"),
        errors: &["409"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/agent/reports",
        summary: "Deliver a batch of events (applied at most once each)",
        auth: Auth::Agent,
        input: Input::Json("ReportBatch"),
        output: Output::Json("ReportAck"),
        ..VIEW
    },
    Route {
        method: Put,
        path: "/v1/artifacts/{sha256}",
        summary: "Upload an artifact (raw bytes; name = SHA-256)",
        auth: Auth::Operator("release_manager"),
        input: Input::Bytes,
        status: "201",
        output: Output::Json("ArtifactInfo"),
        errors: &["422"],
    },
    Route {
        path: "/v1/artifacts/{sha256}",
        summary: "Download an artifact (Range supported; 307 to a presigned object-store URL when artifacts live in S3, unless `direct=1`)",
        auth: Auth::AgentOrOperator,
        input: Input::Query(query::<super::artifacts::DownloadQuery>),
        output: Output::Bytes,
        errors: &["206", "307", "416"],
        ..VIEW
    },
    Route {
        method: Head,
        path: "/v1/artifacts/{sha256}",
        summary: "Artifact length and ETag",
        auth: Auth::AgentOrOperator,
        output: Output::Bytes,
        errors: &["206", "416"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/enrollment-tokens",
        summary: "Create an enrollment token",
        auth: Auth::Operator("operator"),
        input: Input::Json("CreateEnrollmentToken"),
        status: "201",
        output: Output::Json("EnrollmentTokenCreated"),
        errors: &["409"],
    },
    Route {
        path: "/v1/enrollment-tokens",
        summary: "List enrollment tokens",
        output: Output::Json("EnrollmentTokenList"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/enrollment-tokens/{id}/revoke",
        summary: "Revoke an enrollment token",
        auth: Auth::Operator("operator"),
        status: "204",
        output: Output::Empty,
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/operator-tokens",
        summary: "Create an operator token",
        auth: Auth::Operator("admin"),
        input: Input::Json("CreateOperatorToken"),
        status: "201",
        output: Output::Json("OperatorTokenCreated"),
        ..VIEW
    },
    Route {
        path: "/v1/operator-tokens",
        summary: "List operator tokens",
        auth: Auth::Operator("admin"),
        output: Output::Json("OperatorTokenList"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/operator-tokens/{id}/revoke",
        summary: "Revoke an operator token",
        auth: Auth::Operator("admin"),
        status: "204",
        output: Output::Empty,
        errors: &["409"],
        ..VIEW
    },
    Route {
        path: "/v1/sites",
        summary: "List sites (filter by label, state, version; paginated)",
        input: Input::Query(query::<SiteListQuery>),
        output: Output::Json("SiteList"),
        ..VIEW
    },
    Route {
        path: "/v1/sites/{id}",
        summary: "One site (with `boxes[]` for a site of several boxes: each box's role, installed versions, phase, last report and state in the site's active rollout)",
        output: Output::Json("SiteInfo"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/sites/{id}/labels",
        summary: "Set and remove labels",
        auth: Auth::Operator("operator"),
        input: Input::Json("RelabelSite"),
        output: Output::Json("SiteInfo"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/sites/{id}/decommission",
        summary: "Decommission a site (refused at once)",
        auth: Auth::Operator("operator"),
        output: Output::Json("SiteInfo"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/sites/{id}/reenable",
        summary: "Re-enable a decommissioned site",
        auth: Auth::Operator("operator"),
        output: Output::Json("SiteInfo"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/sites/{id}/hold",
        summary: "Hold a site at what it runs: no rollout takes it until the hold is lifted",
        auth: Auth::Operator("operator"),
        input: Input::Json("HoldSite"),
        output: Output::Json("SiteInfo"),
        errors: &["422"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/sites/{id}/unhold",
        summary: "Lift a site's hold; it joins the active rollouts that select it",
        auth: Auth::Operator("operator"),
        output: Output::Json("SiteInfo"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/sites/import",
        summary: "Import sites from a CSV or JSON-lines file, all or nothing: keys or tokens",
        auth: Auth::Operator("operator"),
        input: Input::Json("SiteImport"),
        status: "201",
        output: Output::Json("SiteImportResult"),
        errors: &["422"],
    },
    Route {
        method: Post,
        path: "/v1/sites/{id}/reports/import",
        summary: "Import an air-gapped site's reports from the file `fleetwave-agent \
                  export-reports` wrote (a DSSE envelope signed with its device key); each \
                  event counts once, by file or online",
        auth: Auth::Operator("operator"),
        input: Input::Json("Envelope"),
        output: Output::Json("ReportImport"),
        errors: &["409", "413", "422"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/sites/{id}/rekey",
        summary: "One-use enrollment token bound to an enrolled site: a new device key for one of its boxes, or a new box",
        auth: Auth::Operator("operator"),
        input: Input::Json("RekeySite"),
        status: "201",
        output: Output::Json("EnrollmentTokenCreated"),
        errors: &["404", "409"],
    },
    Route {
        method: Post,
        path: "/v1/releases",
        summary: "Publish a signed release envelope",
        auth: Auth::Operator("release_manager"),
        input: Input::Json("Envelope"),
        status: "201",
        output: Output::Json("ReleaseInfo"),
        errors: &["409", "422"],
    },
    Route {
        path: "/v1/releases",
        summary: "List releases",
        output: Output::Json("ReleaseList"),
        ..VIEW
    },
    Route {
        path: "/v1/releases/{id}",
        summary: "One release",
        output: Output::Json("ReleaseInfo"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/roots",
        summary: "Publish the next root version (rotation)",
        auth: Auth::Operator("admin"),
        input: Input::Json("Envelope"),
        status: "201",
        output: Output::Json("RootInfo"),
        errors: &["409", "422"],
    },
    Route {
        path: "/v1/roots",
        summary: "List root versions",
        output: Output::Json("RootList"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/rollouts",
        summary: "Create a rollout from a plan (TOML or JSON)",
        auth: Auth::Operator("operator"),
        input: Input::Json("CreateRollout"),
        status: "201",
        output: Output::Json("RolloutView"),
        errors: &["409", "422"],
    },
    Route {
        method: Post,
        path: "/v1/rollouts/plan",
        summary: "Dry run of a plan (the same body and 422 invalid_plan answers as creating it): which sites each wave would take now, which are left out and why, and the earliest each wave could open (a lower bound: every gate passes as soon as it can). Stores nothing",
        auth: Auth::Operator("operator"),
        input: Input::Json("CreateRollout"),
        status: "200",
        output: Output::Json("PlanPreview"),
        errors: &["422"],
    },
    Route {
        path: "/v1/rollouts/{id}/plan",
        summary: "Dry run of a created rollout's plan over the fleet as it is now (its own sites are not counted as in another rollout). Stores nothing",
        output: Output::Json("PlanPreview"),
        ..VIEW
    },
    Route {
        path: "/v1/rollouts",
        summary: "List rollouts",
        output: Output::Json("RolloutList"),
        ..VIEW
    },
    Route {
        path: "/v1/rollouts/{id}",
        summary: "Rollout status: waves, tallies, gates, each wave's golden-signal analysis per signal (verdict, medians, sample sizes, effect, p-value, tolerance, minutes), the sites needing attention (at most 200), timeline",
        output: Output::Json("RolloutView"),
        ..VIEW
    },
    Route {
        path: "/v1/rollouts/{id}/export",
        summary: "A rollout for a post-incident review: status, timeline, release, failed, silent and rolled-back sites with their reports, audit, versions before and now",
        output: Output::Json("RolloutExport"),
        ..VIEW
    },
    Route {
        path: "/v1/rollouts/{id}/sites",
        summary: "Every site of a rollout by site id (filter by wave, state; paginated)",
        input: Input::Query(query::<RolloutSiteQuery>),
        output: Output::Json("RolloutSiteList"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/rollouts/{id}/start",
        summary: "Start a pending rollout (it waits as scheduled until its plan's start_at when that is later), or a scheduled one now, ahead of its start_at",
        auth: Auth::Operator("operator"),
        output: Output::Json("RolloutView"),
        errors: &["409"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/rollouts/{id}/pause",
        summary: "Pause a running rollout",
        auth: Auth::Operator("operator"),
        input: Input::OptionalJson("ActionReason"),
        output: Output::Json("RolloutView"),
        errors: &["409"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/rollouts/{id}/resume",
        summary: "Resume a paused or halted rollout",
        auth: Auth::Operator("operator"),
        output: Output::Json("RolloutView"),
        errors: &["409"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/rollouts/{id}/approve",
        summary: "Approve a wave",
        auth: Auth::Operator("operator"),
        input: Input::Json("ApproveWave"),
        output: Output::Json("RolloutView"),
        errors: &["409"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/rollouts/{id}/abort",
        summary: "Abort a rollout",
        auth: Auth::Operator("operator"),
        input: Input::OptionalJson("ActionReason"),
        output: Output::Json("RolloutView"),
        errors: &["409"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/rollouts/{id}/rollback",
        summary: "Send the rollout's sites back to their previous release",
        auth: Auth::Operator("operator"),
        input: Input::OptionalJson("ActionReason"),
        output: Output::Json("RolloutView"),
        errors: &["409"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/rollouts/{id}/skip",
        summary: "Skip a site (left out of its gate)",
        auth: Auth::Operator("operator"),
        input: Input::Json("SkipSite"),
        output: Output::Json("RolloutView"),
        errors: &["409"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/rollouts/{id}/retry",
        summary: "Install again on a failed site, or on every failed site of a wave (a new attempt)",
        auth: Auth::Operator("operator"),
        input: Input::Json("RetrySites"),
        output: Output::Json("RolloutView"),
        errors: &["409"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/bundles",
        summary: "Export a bundle for air-gapped sites: one site, or a rollout's opened wave \
                  (optionally filtered by labels); signs their assignments for the plan's \
                  bundle_validity and records it in the rollout's timeline",
        auth: Auth::Operator("operator"),
        input: Input::Json("ExportBundle"),
        output: Output::Tar,
        errors: &["404", "409", "422"],
        ..VIEW
    },
    Route {
        path: "/v1/freezes",
        summary: "Fleet freezes in force now and to come (the configuration file's too)",
        output: Output::Json("FreezeList"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/freezes",
        summary: "Create a fleet freeze (in force at once)",
        auth: Auth::Operator("operator"),
        input: Input::Json("CreateFreeze"),
        status: "201",
        output: Output::Json("FreezeInfo"),
        errors: &["422"],
    },
    Route {
        method: Post,
        path: "/v1/freezes/{id}/end",
        summary: "End a freeze now (not one from the configuration file: 409)",
        auth: Auth::Operator("operator"),
        output: Output::Json("FreezeInfo"),
        errors: &["409"],
        ..VIEW
    },
    Route {
        path: "/v1/webhooks",
        summary: "Webhook endpoints (secrets shown as a hint only)",
        auth: Auth::Operator("admin"),
        output: Output::Json("WebhookList"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/webhooks",
        summary: "Register a webhook endpoint; the answer carries its signing secret, shown this once. Deliveries are POSTs of a WebhookEvent (or {\"text\"} for format slack) signed per Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature)",
        auth: Auth::Operator("admin"),
        input: Input::Json("CreateWebhook"),
        status: "201",
        output: Output::Json("CreatedWebhook"),
        errors: &["422"],
    },
    Route {
        path: "/v1/webhooks/{id}",
        summary: "One webhook endpoint",
        auth: Auth::Operator("admin"),
        output: Output::Json("WebhookInfo"),
        errors: &["404"],
        ..VIEW
    },
    Route {
        method: Delete,
        path: "/v1/webhooks/{id}",
        summary: "Delete a webhook endpoint with its pending deliveries and delivery log",
        auth: Auth::Operator("admin"),
        status: "204",
        output: Output::Empty,
        errors: &["404"],
        ..VIEW
    },
    Route {
        path: "/v1/webhooks/{id}/deliveries",
        summary: "A webhook endpoint's newest deliveries and attempts (the delivery log)",
        auth: Auth::Operator("admin"),
        output: Output::Json("WebhookDeliveries"),
        errors: &["404"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/webhooks/{id}/test",
        summary: "Queue a webhook.test event to this endpoint (whatever its filter)",
        auth: Auth::Operator("admin"),
        status: "202",
        output: Output::Json("WebhookTestQueued"),
        errors: &["404"],
        ..VIEW
    },
    Route {
        path: "/v1/channels",
        summary: "Channels: the release each set of sites should run, with how many of their sites are off it",
        output: Output::Json("ChannelList"),
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/channels",
        summary: "Create a channel (a stream and selector that must not share sites with another channel of the stream)",
        auth: Auth::Operator("operator"),
        input: Input::Json("CreateChannel"),
        status: "201",
        output: Output::Json("ChannelDetail"),
        errors: &["409", "422"],
    },
    Route {
        path: "/v1/channels/{id}",
        summary: "A channel and a page of its sites off its release, each with why (held, in a rollout, converging, failed, paused...)",
        input: Input::Query(query::<fleetwave_shared::protocol::channels::ChannelQuery>),
        output: Output::Json("ChannelDetail"),
        errors: &["404"],
        ..VIEW
    },
    Route {
        method: Delete,
        path: "/v1/channels/{id}",
        summary: "Delete a channel; its convergence rollout ends (installs under way finish)",
        auth: Auth::Operator("operator"),
        status: "204",
        output: Output::Empty,
        errors: &["404"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/channels/{id}/set",
        summary: "Set a channel's release (a lower counter needs rollback: true) and/or its limits; audited",
        auth: Auth::Operator("operator"),
        input: Input::Json("ChangeChannel"),
        output: Output::Json("ChannelDetail"),
        errors: &["404", "422"],
        ..VIEW
    },
    Route {
        method: Post,
        path: "/v1/channels/{id}/resume",
        summary: "Resume a channel's paused convergence (a halted convergence rollout ends and a new one starts, failed sites included)",
        auth: Auth::Operator("operator"),
        output: Output::Json("ChannelResumed"),
        errors: &["404", "422"],
        ..VIEW
    },
    Route {
        path: "/v1/audit",
        summary: "The audit log, newest first",
        input: Input::Query(query::<AuditQuery>),
        output: Output::Json("AuditList"),
        ..VIEW
    },
    Route {
        path: "/healthz",
        summary: "Liveness: the process answers",
        auth: Auth::Public,
        output: Output::Json("ServiceStatus"),
        ..VIEW
    },
    Route {
        path: "/readyz",
        summary: "Readiness: the database answers (503 when it does not)",
        auth: Auth::Public,
        output: Output::Json("ServiceStatus"),
        errors: &["503"],
        ..VIEW
    },
    Route {
        path: "/metrics",
        summary: "Prometheus metrics (OpenMetrics text)",
        auth: Auth::Public,
        output: Output::Metrics,
        errors: &["503"],
        ..VIEW
    },
    Route {
        path: "/openapi.json",
        summary: "This document",
        auth: Auth::Public,
        output: Output::JsonObject,
        ..VIEW
    },
];

/// The error answers: status, response component, description. Each carries the JSON
/// error body.
const ERRORS: &[(&str, &str, &str)] = &[
    (
        "400",
        "BadRequest",
        "Malformed request (bad JSON, unknown field, invalid value, bad query or path); the message names it",
    ),
    (
        "401",
        "Unauthorized",
        "Missing, unknown or expired credentials",
    ),
    (
        "403",
        "Forbidden",
        "The role does not allow it, or the site is decommissioned",
    ),
    ("404", "NotFound", "No such object"),
    (
        "408",
        "RequestTimeout",
        "Cut off after `limits.request_timeout_secs` (artifacts: `limits.artifact_timeout_secs`)",
    ),
    (
        "409",
        "Conflict",
        "The state does not allow it (rollout state, counter not above the stream's, already revoked, freeze already ended or from the configuration file), or the lease is denied (Retry-After)",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The body is over `limits.max_body_bytes` (artifacts: `limits.max_artifact_bytes`; reports: too many events)",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "The body is not sent as `Content-Type: application/json`",
    ),
    (
        "416",
        "RangeNotSatisfiable",
        "The Range is not one byte range inside the artifact (Content-Range: bytes */LENGTH)",
    ),
    (
        "422",
        "Unprocessable",
        "Well-formed but refused (signature, plan validation, hash mismatch, freeze validation)",
    ),
    (
        "431",
        "HeadersTooLarge",
        "The request headers are over `limits.max_header_bytes`",
    ),
    (
        "503",
        "Unavailable",
        "Overloaded (`limits.max_concurrent_requests`, `limits.max_long_polls`) or storage unavailable; retry after Retry-After",
    ),
];

/// Every error status `route` can answer.
fn error_statuses(route: &Route) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::from(["431"]);
    if route.path.starts_with("/v1/") {
        // Timeout and load shedding on every API route.
        out.extend(["408", "503"]);
    }
    if route.auth != Auth::Public {
        out.extend(["401", "403"]);
    }
    if route.path.contains('{') {
        out.extend(["400", "404"]);
    }
    match route.input {
        Input::Nothing => {}
        Input::Query(_) => {
            out.insert("400");
        }
        Input::Json(_) => out.extend(["400", "413", "415"]),
        Input::OptionalJson(_) | Input::Bytes => out.extend(["400", "413"]),
    }
    out.extend(
        route
            .errors
            .iter()
            .filter(|s| s.starts_with('4') || s.starts_with('5')),
    );
    out
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

fn header(schema: Schema, description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(schema)
        .description(Some(description))
        .build()
}

fn string() -> Schema {
    ObjectBuilder::new().schema_type(Type::String).into()
}

fn integer() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .into()
}

/// The headers of a poll answer (200 and 304).
fn poll_headers(b: ResponseBuilder) -> ResponseBuilder {
    b.header(
        "ETag",
        header(
            string(),
            "The answer's version; send it back as If-None-Match",
        ),
    )
    .header(
        NEXT_POLL_HEADER,
        header(integer(), "Suggested seconds until the next poll"),
    )
}

/// The headers of an artifact answer (200 and 206).
fn artifact_headers(b: ResponseBuilder) -> ResponseBuilder {
    b.header("ETag", header(string(), "The artifact's SHA-256 in quotes"))
        .header("Content-Length", header(integer(), "Bytes in this answer"))
        .header("Accept-Ranges", header(string(), "`bytes`"))
}

fn bytes() -> Content {
    Content::new(Some(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream"),
    ))
}

/// The success answer of `route`.
fn success(route: &Route) -> Response {
    let b = ResponseBuilder::new().description("Success");
    let b = match route.output {
        Output::Json(s) => b.content("application/json", json(s)),
        Output::JsonObject => b.content(
            "application/json",
            Content::new(Some(ObjectBuilder::new().schema_type(Type::Object))),
        ),
        Output::Empty => b,
        Output::Bytes => artifact_headers(b).content("application/octet-stream", bytes()),
        Output::Tar => b.content("application/x-tar", bytes()),
        Output::Metrics => b.content("application/openmetrics-text", Content::new(Some(string()))),
    };
    let b = if route.path == "/v1/agent/poll" {
        poll_headers(b)
    } else {
        b
    };
    b.build()
}

/// The answers of `route` besides its success and its errors (304, 206).
fn other_answer(route: &Route, status: &str) -> Option<Response> {
    match status {
        "304" => Some(
            poll_headers(
                ResponseBuilder::new()
                    .description("Not modified: If-None-Match still matches; no body"),
            )
            .build(),
        ),
        "206" => Some(
            artifact_headers(ResponseBuilder::new().description("Partial content (Range)"))
                .header(
                    "Content-Range",
                    header(string(), "`bytes START-END/LENGTH`"),
                )
                .content("application/octet-stream", bytes())
                .build(),
        ),
        "307" => Some(
            ResponseBuilder::new()
                .description(
                    "Redirect to a short-lived presigned URL of the object store (no body); \
                     the artifact's signed length and SHA-256 are checked after download as \
                     for any source",
                )
                .header("Location", header(string(), "The presigned URL"))
                .build(),
        ),
        s if s.starts_with('4') || s.starts_with('5') => None,
        s => panic!(
            "{} {}: no answer for {s}",
            method_name(&route.method),
            route.path
        ),
    }
}

/// The whole document, as served.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(build()).expect("the document serializes");
    unsigned_integers(&mut doc);
    doc
}

/// utoipa 5 (`non_strict_integers`) writes the formats of unsigned integers as
/// `u-int32`, `u-int64`...: say `uint32`, `uint64` as the OpenAPI format registry does,
/// with the maximum serde accepts (without the feature, u32 would be `int32`, narrower
/// than what the server reads).
fn unsigned_integers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            let max: Option<u64> = match m.get("format").and_then(|f| f.as_str()) {
                Some("u-int8") => Some(u8::MAX.into()),
                Some("u-int16") => Some(u16::MAX.into()),
                Some("u-int32") => Some(u32::MAX.into()),
                Some("u-int64") => Some(u64::MAX),
                _ => None,
            };
            if let Some(max) = max {
                let format = m["format"].as_str().unwrap_or_default().replace('-', "");
                m.insert("format".into(), format.into());
                m.entry("maximum").or_insert(max.into());
            }
            m.values_mut().for_each(unsigned_integers);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(unsigned_integers),
        _ => {}
    }
}

fn build() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for route in ROUTES {
        let mut op = OperationBuilder::new()
            .summary(Some(route.summary))
            .operation_id(Some(format!(
                "{}_{}",
                method_name(&route.method).to_lowercase(),
                route
                    .path
                    .trim_start_matches('/')
                    .trim_start_matches("v1/")
                    .replace(['/', '{', '}', '-', '.'], "_")
            )))
            .response(route.status, success(route));
        for status in route.errors {
            if let Some(answer) = other_answer(route, status) {
                op = op.response(*status, answer);
            }
        }
        for status in error_statuses(route) {
            let (_, name, _) = ERRORS
                .iter()
                .find(|(s, _, _)| *s == status)
                .unwrap_or_else(|| panic!("no error response for {status}"));
            op = op.response(status, Ref::from_response_name(*name));
        }
        let body = |content_type: &str, content: Content, required: Required| {
            RequestBodyBuilder::new()
                .content(content_type, content)
                .required(Some(required))
                .build()
        };
        let mut params = path_params(route.path);
        match route.input {
            Input::Nothing => {}
            Input::Query(q) => params.extend(q()),
            Input::Json(s) => {
                op = op.request_body(Some(body("application/json", json(s), Required::True)))
            }
            Input::OptionalJson(s) => {
                op = op.request_body(Some(body("application/json", json(s), Required::False)))
            }
            Input::Bytes => {
                op = op.request_body(Some(body(
                    "application/octet-stream",
                    bytes(),
                    Required::True,
                )))
            }
        }
        for p in params {
            op = op.parameter(p);
        }
        let agent = || SecurityRequirement::new("agent_session", Vec::<String>::new());
        let operator = || SecurityRequirement::new("operator_token", Vec::<String>::new());
        op = match route.auth {
            Auth::Public | Auth::Enroll => op,
            Auth::Agent => op.security(agent()),
            Auth::Operator(role) => op.security(operator()).description(Some(format!(
                "Needs an operator token with role {role} (or admin)."
            ))),
            Auth::AgentOrOperator => op.security(agent()).security(operator()),
        };
        paths = paths.path(route.path, PathItem::new(route.method.clone(), op.build()));
    }
    let bearer = || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
    let mut components = ComponentsBuilder::new()
        .security_scheme("agent_session", bearer())
        .security_scheme("operator_token", bearer());
    for (status, name, description) in ERRORS {
        let mut b = ResponseBuilder::new()
            .description(*description)
            .content("application/json", json("ErrorBody"));
        if matches!(*status, "409" | "503") {
            b = b.header(
                "Retry-After",
                header(integer(), "Seconds to wait before retrying (when given)"),
            );
        }
        if *status == "416" {
            b = b.header("Content-Range", header(string(), "`bytes */LENGTH`"));
        }
        components = components.response(*name, RefOr::T(b.build()));
    }
    let components = components
        .schema_from::<ErrorBody>()
        .schema_from::<ErrorDetail>()
        .schema_from::<ServiceStatus>()
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
        .schema_from::<LeaseDenialReason>()
        .schema_from::<ReportBatch>()
        .schema_from::<fleetwave_shared::protocol::signals::SignalMinute>()
        .schema_from::<ReportAck>()
        .schema_from::<Event>()
        .schema_from::<EventBody>()
        .schema_from::<Phase>()
        .schema_from::<HealthSummary>()
        .schema_from::<OperatorRole>()
        .schema_from::<SiteState>()
        .schema_from::<RolloutStatus>()
        .schema_from::<fleetwave_shared::protocol::export::RolloutExport>()
        .schema_from::<fleetwave_shared::protocol::export::ExportSite>()
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
        .schema_from::<HoldSite>()
        .schema_from::<SiteHoldInfo>()
        .schema_from::<SiteSignals>()
        .schema_from::<SiteBoxInfo>()
        .schema_from::<RekeySite>()
        .schema_from::<SiteImportFormat>()
        .schema_from::<SiteImport>()
        .schema_from::<ImportedToken>()
        .schema_from::<SiteImportResult>()
        .schema_from::<ReleaseInfo>()
        .schema_from::<ReleaseList>()
        .schema_from::<ArtifactInfo>()
        .schema_from::<RootInfo>()
        .schema_from::<RootList>()
        .schema_from::<PlanFormat>()
        .schema_from::<CreateRollout>()
        .schema_from::<ApproveWave>()
        .schema_from::<SkipSite>()
        .schema_from::<RetrySites>()
        .schema_from::<ActionReason>()
        .schema_from::<WaveTally>()
        .schema_from::<WaveView>()
        .schema_from::<fleetwave_shared::protocol::analysis::SignalAnalysis>()
        .schema_from::<fleetwave_shared::protocol::analysis::GroupNumbers>()
        .schema_from::<fleetwave_shared::protocol::analysis::Spread>()
        .schema_from::<fleetwave_shared::protocol::analysis::Verdict>()
        .schema_from::<fleetwave_shared::protocol::analysis::Direction>()
        .schema_from::<fleetwave_shared::protocol::analysis::Tolerance>()
        .schema_from::<DecisionView>()
        .schema_from::<RolloutSiteView>()
        .schema_from::<RolloutView>()
        .schema_from::<StartAtView>()
        .schema_from::<PlanPreview>()
        .schema_from::<WavePreview>()
        .schema_from::<ExclusionReason>()
        .schema_from::<ExclusionGroup>()
        .schema_from::<ExcludedSite>()
        .schema_from::<RolloutSiteList>()
        .schema_from::<RolloutSummary>()
        .schema_from::<RolloutList>()
        .schema_from::<FreezeSource>()
        .schema_from::<FreezeInfo>()
        .schema_from::<FreezeList>()
        .schema_from::<CreateFreeze>()
        .schema_from::<WebhookFormat>()
        .schema_from::<CreateWebhook>()
        .schema_from::<WebhookInfo>()
        .schema_from::<CreatedWebhook>()
        .schema_from::<WebhookList>()
        .schema_from::<WebhookDeliveryView>()
        .schema_from::<WebhookAttemptView>()
        .schema_from::<WebhookDeliveries>()
        .schema_from::<WebhookTestQueued>()
        .schema_from::<crate::webhooks::EventKind>()
        .schema_from::<crate::webhooks::EventData>()
        .schema_from::<crate::webhooks::WebhookEvent>()
        .schema_from::<fleetwave_shared::protocol::channels::CreateChannel>()
        .schema_from::<fleetwave_shared::protocol::channels::ChangeChannel>()
        .schema_from::<fleetwave_shared::protocol::channels::ConvergenceInfo>()
        .schema_from::<fleetwave_shared::protocol::channels::ChannelInfo>()
        .schema_from::<fleetwave_shared::protocol::channels::ChannelList>()
        .schema_from::<fleetwave_shared::protocol::channels::OffChannelSite>()
        .schema_from::<fleetwave_shared::protocol::channels::ChannelDetail>()
        .schema_from::<fleetwave_shared::protocol::channels::ChannelResumed>()
        .schema_from::<AuditEntry>()
        .schema_from::<AuditList>()
        .schema_from::<fleetwave_shared::protocol::bundle::ExportBundle>()
        .schema_from::<fleetwave_shared::protocol::report_file::ReportImport>()
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
    ROUTES
        .iter()
        .map(|r| (method_name(&r.method).to_string(), r.path.to_string()))
        .collect()
}
