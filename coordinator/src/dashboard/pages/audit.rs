//! The audit log.

use super::*;

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    before: Option<i64>,
}

pub(super) struct AuditRow {
    id: i64,
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
    remote: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub(super) struct AuditPage {
    nav: Nav,
    rows: Vec<AuditRow>,
    older: String,
}

/// `GET /ui/audit`: newest first, 100 a page.
pub async fn audit(
    State(dash): State<DashState>,
    who: SignedIn,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    let before = q.before;
    let entries = dash.app.db.run(move |s| s.list_audit(before, 100)).await?;
    let older = match (entries.len(), entries.last()) {
        (100, Some(e)) => format!("/ui/audit?before={}", e.id),
        _ => String::new(),
    };
    html(AuditPage {
        nav: nav(&who, "audit"),
        rows: entries
            .into_iter()
            .map(|e| AuditRow {
                id: e.id,
                at: when(Some(e.at)),
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: e.detail,
                remote: e.remote,
            })
            .collect(),
        older,
    })
}
