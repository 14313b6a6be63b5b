//! Signing in and out: an operator token in, a session cookie out.

use super::*;

#[derive(Template)]
#[template(path = "login.html")]
pub(super) struct LoginPage {
    csrf: String,
    error: String,
}

pub(super) fn login_page(status: StatusCode, error: &str) -> Response {
    let csrf = random_hex(32);
    let page = LoginPage {
        csrf: csrf.clone(),
        error: error.to_string(),
    };
    match page.render() {
        Ok(body) => {
            let mut res = (status, Html(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(LOGIN_COOKIE, &csrf, 600)) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => DashboardError::Template(e).into_response(),
    }
}

/// `GET /ui/login`
pub async fn login_form() -> Response {
    login_page(StatusCode::OK, "")
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: String,
}

/// `POST /ui/login`: an operator token in, a session cookie out.
pub async fn login(
    State(dash): State<DashState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    let expected = session::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !session::same_secret(&form.csrf, expected) {
        return Ok(login_page(
            StatusCode::FORBIDDEN,
            "The sign-in form expired or came from elsewhere; try again.",
        ));
    }
    let hash = crate::http::auth::token_hash(form.token.trim());
    let h = hash.clone();
    let token = dash
        .app
        .db
        .run(move |s| s.operator_token_by_hash(&h))
        .await?
        .filter(|t| !t.revoked);
    let Some(token) = token else {
        tracing::info!("dashboard sign-in refused: unknown or revoked operator token");
        return Ok(login_page(
            StatusCode::UNAUTHORIZED,
            "That operator token is unknown or revoked.",
        ));
    };
    let id = dash.sessions.open(hash, dash.app.now()).await?;
    tracing::info!(operator = %token.name, role = token.role.as_str(), "dashboard sign-in");
    let mut res = Redirect::to("/ui/").into_response();
    let h = res.headers_mut();
    for c in [
        session::set_cookie(SESSION_COOKIE, &id, session::SESSION_LIFETIME.as_secs()),
        session::set_cookie(LOGIN_COOKIE, "", 0),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    Ok(res)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub(super) csrf: String,
}

/// `POST /ui/logout`
pub async fn logout(
    State(dash): State<DashState>,
    who: SignedIn,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    who.check_csrf(&form.csrf)?;
    if let Some(id) = session::cookie(&headers, SESSION_COOKIE) {
        dash.sessions.close(id).await?;
    }
    let mut res = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(SESSION_COOKIE, "", 0)) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(res)
}
