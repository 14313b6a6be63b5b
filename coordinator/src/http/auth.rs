//! Who is calling: operator tokens (hashed, with roles) and agent sessions (in memory).
//!
//! Extractors only authenticate and check roles; they never change anything.

use std::net::SocketAddr;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use fleetwave_shared::protocol::operator::{OperatorRole, Permission, SiteState};
use fleetwave_shared::sha256_hex;

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{AuditRecord, OperatorTokenRecord};

/// The client address, put into every request by the server's accept loop.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

pub fn remote(parts: &Parts) -> String {
    parts
        .extensions
        .get::<RemoteAddr>()
        .map(|r| r.0.to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// An authenticated operator.
#[derive(Debug, Clone)]
pub struct Operator {
    pub token: OperatorTokenRecord,
    pub remote: String,
}

impl Operator {
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.token.role.permits(permission) {
            return Ok(());
        }
        let needed = match permission {
            Permission::Read => "viewer",
            Permission::Operate => "operator or admin",
            Permission::Publish => "release_manager or admin",
            Permission::Admin => "admin",
        };
        Err(ApiError::forbidden(
            "forbidden",
            format!(
                "operator token {:?} has role {}; this action needs role {needed}",
                self.token.name,
                self.token.role.as_str()
            ),
        ))
    }

    pub fn actor(&self) -> String {
        format!(
            "{} ({}, {})",
            self.token.name,
            self.token.role.as_str(),
            self.token.id
        )
    }

    /// Writes an audit entry; the caller answers only after it committed.
    pub async fn audit(
        &self,
        app: &AppState,
        action: &str,
        target: &str,
        detail: impl Into<String>,
    ) -> Result<(), ApiError> {
        let entry = AuditRecord {
            id: 0,
            at: app.now(),
            actor: self.actor(),
            action: action.to_string(),
            target: target.to_string(),
            detail: detail.into(),
            remote: self.remote.clone(),
        };
        app.db.run(move |s| s.audit(&entry)).await?;
        Ok(())
    }
}

async fn operator_from(parts: &Parts, app: &AppState) -> Result<Operator, ApiError> {
    let token = bearer(parts).ok_or_else(|| {
        ApiError::unauthorized(
            "unauthorized",
            "send an operator token as `Authorization: Bearer <token>`",
        )
    })?;
    let hash = sha256_hex(token.as_bytes());
    let record = app
        .db
        .run(move |s| s.operator_token_by_hash(&hash))
        .await?
        .filter(|t| !t.revoked)
        .ok_or_else(|| {
            ApiError::unauthorized("unauthorized", "the operator token is unknown or revoked")
        })?;
    Ok(Operator {
        token: record,
        remote: remote(parts),
    })
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        operator_from(parts, app).await
    }
}

/// An agent with a live session.
#[derive(Debug, Clone)]
pub struct Agent {
    pub site_id: String,
    /// The box whose agent opened the session, when it names one (a site of several
    /// boxes); None: the site's first box, named by no agent.
    pub box_id: Option<String>,
}

fn agent_from(parts: &Parts, app: &AppState) -> Result<Agent, ApiError> {
    let token = bearer(parts).ok_or_else(|| {
        ApiError::unauthorized("unauthorized", "open a session (POST /v1/agent/session) and send its token as `Authorization: Bearer <token>`")
    })?;
    let session = app.sessions.lookup(token, app.now()).ok_or_else(|| {
        ApiError::unauthorized(
            "session_expired",
            "the session is unknown or expired; open a new one with POST /v1/agent/session",
        )
    })?;
    let (active, key_known) = app
        .engine
        .sites
        .get(&session.site_id)
        .map(|s| {
            let v = s.view.read().unwrap_or_else(|e| e.into_inner());
            (v.active, v.accepts_key(session.key_fingerprint))
        })
        .unwrap_or_default();
    if !active {
        return Err(decommissioned(&session.site_id));
    }
    if !key_known {
        return Err(ApiError::unauthorized(
            "session_expired",
            "the session was opened with another device key of this site's box (it enrolled \
             again); open a new one with POST /v1/agent/session",
        ));
    }
    Ok(Agent {
        site_id: session.site_id,
        box_id: session.box_id,
    })
}

pub fn decommissioned(site_id: &str) -> ApiError {
    ApiError::forbidden(
        "site_decommissioned",
        format!("site {site_id} is decommissioned; an operator must re-enable it"),
    )
}

impl FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        agent_from(parts, app)
    }
}

/// Either an agent session or an operator token with read permission (artifact downloads).
#[derive(Debug, Clone)]
pub enum Reader {
    Agent(Agent),
    Operator(Operator),
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        match agent_from(parts, app) {
            Ok(a) => Ok(Reader::Agent(a)),
            Err(e) if e.code == "site_decommissioned" => Err(e),
            Err(_) => {
                let op = operator_from(parts, app).await.map_err(|_| {
                    ApiError::unauthorized("unauthorized", "send an agent session token or an operator token as `Authorization: Bearer <token>`")
                })?;
                op.require(Permission::Read)?;
                Ok(Reader::Operator(op))
            }
        }
    }
}

/// Hash of a secret token as stored.
pub fn token_hash(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

pub fn is_active(state: SiteState) -> bool {
    state == SiteState::Active
}

pub fn role_name(r: OperatorRole) -> &'static str {
    r.as_str()
}
