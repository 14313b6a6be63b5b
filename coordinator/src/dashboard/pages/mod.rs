//! The dashboard's pages and forms, one file per page: each handler reads through the
//! store, the read model or the rollout engine, fills an askama template and answers HTML.
//!
//! Every form that changes something checks the session's CSRF token and the operator's
//! role, then calls the same engine function and writes the same audit entry as the API.
//! Handlers never build HTML by hand except the bars, grid cells and analysis pictures,
//! whose every value is escaped here.

mod analysis;
mod assets;
mod audit;
mod channels;
mod freezes;
mod grid;
mod login;
mod overview;
mod releases;
mod rollouts;
mod site;
mod sites;
mod webhooks;

pub use assets::*;
pub use audit::*;
pub use channels::*;
pub use freezes::*;
pub use grid::*;
pub use login::*;
pub use overview::*;
pub use releases::*;
pub use rollouts::*;
pub use site::*;
pub use sites::*;
pub use webhooks::*;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use fleetwave_shared::protocol::operator::Permission;
use fleetwave_shared::protocol::{Event, EventBody};
use jiff::Timestamp;
use serde::Deserialize;

use super::live::STALE_AFTER;
use super::model::{self, Segment, ago, when};
use super::read::{FleetCounts, SiteQuery};
use super::session::{self, LOGIN_COOKIE, SESSION_COOKIE};
use super::{DashState, DashboardError, SignedIn};
use crate::controller::gate::human;
use crate::engine::{Action, RetryTarget};
use crate::error::ApiError;
use crate::http::auth::Operator;
use crate::state::random_hex;
use crate::store::ReportKind;

type PageResult = Result<Response, DashboardError>;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A stacked progress bar as inline SVG (attributes, not inline styles: the CSP forbids
/// those). `key` names it for live updates.
pub fn bar_svg(key: &str, segs: &[Segment]) -> String {
    let total: u32 = segs.iter().map(|s| s.count).sum();
    let mut out = format!(
        "<svg class=\"bar\" data-bar=\"{}\" viewBox=\"0 0 1000 20\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{} sites\">",
        esc(key),
        total
    );
    for s in segs {
        let _ = write!(
            out,
            "<rect class=\"seg-{}\" data-seg=\"{}\" x=\"{}\" y=\"0\" width=\"{}\" height=\"20\"><title>{}: {}</title></rect>",
            s.state, s.state, s.x, s.width, s.label, s.count
        );
    }
    out.push_str("</svg>");
    out
}

fn html(t: impl Template) -> PageResult {
    Ok(Html(t.render()?).into_response())
}

/// What every signed-in page shows in its header.
pub struct Nav {
    pub user: String,
    pub role: String,
    pub csrf: String,
    pub section: &'static str,
    /// Why the wave controller is not running (a banner on every page), or None.
    pub controller_problem: Option<String>,
}

fn nav(who: &SignedIn, section: &'static str) -> Nav {
    Nav {
        user: who.op.token.name.clone(),
        role: who.op.token.role.as_str().to_string(),
        csrf: who.csrf.clone(),
        section,
        controller_problem: who.controller_problem.clone(),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    reason: String,
    message: String,
}

/// An error as a page (no secrets: messages come from the API's errors).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("error").to_string(),
        message: message.to_string(),
    };
    match page.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(_) => (status, message.to_string()).into_response(),
    }
}

#[derive(Template)]
#[template(path = "confirm.html")]
/// The confirmation step before any control (rollouts and sites).
pub(super) struct ConfirmPage {
    pub(super) nav: Nav,
    /// Where the form posts, and where Cancel goes.
    pub(super) post_to: String,
    pub(super) cancel: String,
    pub(super) label: String,
    pub(super) question: String,
    pub(super) wave: String,
    pub(super) site: String,
    pub(super) takes_reason: bool,
    pub(super) danger: bool,
}
