//! The dashboard's security and pages over plain HTTP requests (no browser): sign-in,
//! cookies, headers, CSRF refusals, role refusals, sign-out and revocation, server-side
//! filtering and pagination, and the live stream.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::json;

const PLAN: &str = r#"
name = "pos 2.5"
release = "pos-2.5.0"

[[waves]]
name = "all"
gate = { bake = "10m" }
"#;

#[tokio::test]
async fn sign_in_sessions_headers_csrf_and_roles() {
    let h = Harness::new().await;
    let alice = h.token("alice", "operator").await;
    let victor = h.token("victor", "viewer").await;
    h.publish("2.5.0", 25).await;
    Agent::enroll(&h, "store-1", json!({"region": "eu"})).await;
    let id = h.create_rollout(PLAN).await;
    let (s, _) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);

    // Not signed in: pages send to the sign-in page, streams too; headers everywhere.
    let mut web = WebClient::new(&h);
    for path in [
        "/ui/",
        &format!("/ui/rollouts/{id}"),
        "/ui/live/overview",
        "/ui/sites",
    ] {
        let (s, headers, _) = web.get(path).await;
        assert_eq!(s, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(headers["location"], "/ui/login", "{path}");
    }
    let (s, headers, page) = web.get("/ui/login").await;
    assert_eq!(s, StatusCode::OK);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(!page.contains("<script>") && !page.contains("style=\""));

    // A wrong token is refused; the login form's own CSRF token is checked too.
    let csrf = hidden(&page, "csrf");
    let (s, _, page) = web
        .post(
            "/ui/login",
            &[("token", "fwo_not-a-token"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(page.contains("unknown or revoked") && !page.contains("fwo_not-a-token"));
    let mut stranger = WebClient::new(&h);
    let (s, _, _) = stranger
        .post("/ui/login", &[("token", &alice), ("csrf", "forged")])
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a login without the form's cookie"
    );
    assert!(!stranger.cookies.contains_key("__Host-fleetwave-session"));

    // Sign in: the session cookie is HttpOnly, Secure, SameSite=Strict, host-only.
    let (_, _, page) = web.get("/ui/login").await;
    let csrf = hidden(&page, "csrf");
    let (s, headers, _) = web
        .post("/ui/login", &[("token", &alice), ("csrf", &csrf)])
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let set: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("__Host-fleetwave-session="))
        .expect("a session cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(flag), "{session} lacks {flag}");
    }
    assert!(!session.contains(&alice) && !session.contains("Domain"));
    let (s, _, page) = web.get("/ui/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !page.contains(&alice),
        "the token must never appear in a page"
    );
    let csrf = hidden(&page, "csrf");

    // CSRF: an action without the token, or with another one, is refused and changes nothing.
    let pause = format!("/ui/rollouts/{id}/actions/pause");
    let (s, _, page) = web.post(&pause, &[("reason", "x")]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(page.contains("CSRF"));
    let (s, _, _) = web
        .post(&pause, &[("csrf", &"0".repeat(64)), ("reason", "x")])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(h.rollout(&id).await["status"], "running");

    // A viewer's session with its own valid CSRF token is refused by role.
    let mut viewer = WebClient::new(&h);
    let viewer_csrf = viewer.login(&victor).await;
    let (s, _, page) = viewer
        .post(&pause, &[("csrf", &viewer_csrf), ("reason", "x")])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(page.contains("has role viewer"), "{page}");
    let (s, _, _) = viewer
        .get(&format!("/ui/rollouts/{id}/confirm/pause"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, _, page) = viewer.get(&format!("/ui/rollouts/{id}")).await;
    assert!(page.contains("id=\"read-only\"") && !page.contains("id=\"control-pause\""));
    assert_eq!(h.rollout(&id).await["status"], "running");
    // One session's token does not work for another session.
    let (s, _, _) = web
        .post(&pause, &[("csrf", &viewer_csrf), ("reason", "x")])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // The operator with the right token pauses it: through the engine and the audit log.
    let (s, headers, _) = web
        .post(&pause, &[("csrf", &csrf), ("reason", "lunch rush")])
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], format!("/ui/rollouts/{id}"));
    let r = h.rollout(&id).await;
    assert_eq!(r["status"], "paused");
    assert!(r["status_reason"].as_str().unwrap().contains("lunch rush"));
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    let entry = &audit["entries"][0];
    assert_eq!(entry["action"], "rollout.pause");
    assert!(
        entry["actor"]
            .as_str()
            .unwrap()
            .starts_with("alice (operator")
    );
    // An action the status does not allow answers the engine's own refusal.
    let (s, _, page) = web
        .post(&pause, &[("csrf", &csrf), ("reason", "again")])
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(page.contains("cannot pause"), "{page}");

    // The live stream: an event-stream whose first message carries the page's numbers.
    let res = web
        .http
        .get(format!("{}/ui/live/rollouts/{id}", h.base))
        .header(
            "cookie",
            format!(
                "__Host-fleetwave-session={}",
                web.cookies["__Host-fleetwave-session"]
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = res.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("a first live message within 10 s")
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(first.starts_with("event: update"), "{first}");
    assert!(first.contains("\"w0.pending\"") && first.contains("\"status\":\"paused\""));
    drop(body);

    // Revoking the token signs its sessions out; signing out ends the session.
    let (_, tokens) = h.get("/v1/operator-tokens", &h.admin).await;
    let victor_id = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "victor")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = h
        .post(
            &format!("/v1/operator-tokens/{victor_id}/revoke"),
            &h.admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = viewer.get("/ui/").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (s, _, _) = web.post("/ui/logout", &[("csrf", "wrong")]).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "sign-out needs the CSRF token too"
    );
    let (s, _, _) = web.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (s, _, _) = web.get("/ui/").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    h.stop().await;
}

#[tokio::test]
async fn sites_filter_paginate_and_grid_on_the_server_without_scripts() {
    let h = Harness::new().await;
    let mut agents = Vec::new();
    for i in 0..60 {
        let region = ["eu", "us", "apac"][i % 3];
        let mut a = Agent::enroll(&h, &format!("site-{i:03}"), json!({"region": region})).await;
        let version = if i < 10 { "2.5.0" } else { "2.4.0" };
        a.installed(&h, &format!("pos-{version}"), version).await;
        a.health(&h, i % 7 != 0).await;
        agents.push(a);
    }
    let mut web = WebClient::new(&h);
    web.login(&h.admin).await;
    // Last-contact times are written in batches about once a second.
    let web = std::sync::Arc::new(tokio::sync::Mutex::new(web));
    eventually("every site's last contact to be stored", || {
        let web = web.clone();
        async move {
            let (_, _, page) = web.lock().await.get("/ui/").await;
            page.contains("data-live=\"fleet.stale\">0<").then_some(())
        }
    })
    .await;
    let mut web = std::sync::Arc::try_unwrap(web).ok().unwrap().into_inner();
    let (s, _, page) = web.get("/ui/sites").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("1–50 of <b>60</b> sites"),
        "server-side pages of 50"
    );
    assert!(page.contains("rel=\"next\""));
    let (_, _, page) = web.get("/ui/sites?page=2").await;
    assert!(page.contains("51–60 of <b>60</b>") && page.contains("site-059"));
    let (_, _, page) = web.get("/ui/sites?label=region%3Deu").await;
    assert!(page.contains("of <b>20</b> sites"));
    let (_, _, page) = web.get("/ui/sites?label=region%3Deu&version=2.5.0").await;
    assert!(
        page.contains("of <b>4</b> sites"),
        "eu sites on 2.5.0: 0,3,6,9"
    );
    let (_, _, page) = web.get("/ui/sites?q=site-05").await;
    assert!(page.contains("of <b>10</b> sites"));
    let (s, _, page) = web.get("/ui/sites?label=nonsense").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(page.contains("must be key=value"));
    let (_, _, page) = web.get("/ui/sites/grid?label=region%3Dus").await;
    assert_eq!(page.matches("href=\"site-").count(), 20);
    let (_, _, page) = web.get("/ui/sites/grid").await;
    assert_eq!(
        page.matches("class=k-bad ").count(),
        9,
        "sites 0,7,..,56 unhealthy"
    );
    let (_, _, page) = web.get("/ui/").await;
    assert!(page.contains("data-live=\"fleet.unhealthy\">9<"));
    assert!(page.contains("data-live=\"version.pos.2.5.0\">10<"));
    let (s, _, page) = web.get("/ui/sites/site-013").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("region=us") && page.contains("2.4.0 (pos-2.4.0)"),
        "{page}"
    );
    let (s, _, _) = web.get("/ui/sites/no-such-site").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, headers, js) = web.get("/ui/assets/dashboard.js").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.contains("EventSource") && !js.contains("innerHTML"));
    h.stop().await;
}

/// Browsers ask for `/favicon.ico` on every page: it answers with the dashboard's icon
/// without a sign-in, and the pages link the same icon (an SVG, allowed by `img-src 'self'`).
#[tokio::test]
async fn the_favicon_is_served_without_sign_in_and_linked_from_the_pages() {
    let h = Harness::new().await;
    let mut web = WebClient::new(&h);
    for path in ["/favicon.ico", "/ui/assets/favicon.svg"] {
        let (s, headers, body) = web.get(path).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        let ctype = headers["content-type"].to_str().unwrap();
        assert!(ctype.starts_with("image/"), "{path}: {ctype}");
        assert!(
            body.starts_with("<svg") && body.contains("</svg>"),
            "{path}: {body}"
        );
    }
    let (s, headers, page) = web.get("/ui/login").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains(r#"<link rel="icon" href="/ui/assets/favicon.svg" type="image/svg+xml">"#),
        "{page}"
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("img-src 'self'"), "{csp}");
    h.stop().await;
}

/// The dashboard's filters read `site_labels` and `site_versions`, which only the store's
/// triggers maintain: a relabel through the API, an Installed report through the agent
/// API and a decommission must move a site between the dashboard's filters at once.
#[tokio::test]
async fn relabel_installed_reports_and_decommission_move_sites_between_filters() {
    let h = Harness::new().await;
    let mut agents = Vec::new();
    for i in 0..3 {
        let mut a = Agent::enroll(
            &h,
            &format!("site-{i:03}"),
            json!({"region": "eu", "shop": format!("shop-{i}")}),
        )
        .await;
        a.installed(&h, "pos-2.4.0", "2.4.0").await;
        agents.push(a);
    }
    let mut web = WebClient::new(&h);
    web.login(&h.admin).await;
    let total = |page: &str| {
        let at = page.find(" of <b>").expect("the site count");
        let rest = &page[at + 7..];
        rest[..rest.find('<').unwrap()].parse::<u64>().unwrap()
    };
    let (_, _, page) = web.get("/ui/sites?label=region%3Deu").await;
    assert_eq!(total(&page), 3);

    // Relabel site-001 through the operator API: found under the new value only.
    let (s, v) = h
        .post(
            "/v1/sites/site-001/labels",
            &h.admin,
            json!({"set": {"region": "us"}, "remove": ["shop"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, _, page) = web.get("/ui/sites?label=region%3Dus").await;
    assert_eq!(total(&page), 1);
    assert!(page.contains("href=\"/ui/sites/site-001\""));
    let (_, _, page) = web.get("/ui/sites?label=region%3Deu").await;
    assert_eq!(total(&page), 2);
    assert!(!page.contains("href=\"/ui/sites/site-001\""));
    let (_, _, page) = web.get("/ui/sites?label=shop%3Dshop-1").await;
    assert_eq!(total(&page), 0, "the removed label is gone");
    // Search over label values follows too (the old value no longer finds it).
    let (_, _, page) = web.get("/ui/sites?q=shop-1").await;
    assert_eq!(total(&page), 0);
    let (_, _, page) = web.get("/ui/sites?q=shop-2").await;
    assert_eq!(total(&page), 1);
    assert!(page.contains("href=\"/ui/sites/site-002\""));

    // An Installed report replaces the version the site had for that stream.
    agents[0].installed(&h, "pos-2.5.0", "2.5.0").await;
    let (_, _, page) = web.get("/ui/sites?version=2.5.0").await;
    assert_eq!(total(&page), 1);
    assert!(page.contains("href=\"/ui/sites/site-000\""));
    let (_, _, page) = web.get("/ui/sites?version=2.4.0").await;
    assert_eq!(total(&page), 2);
    assert!(!page.contains("href=\"/ui/sites/site-000\""));
    let (_, _, page) = web.get("/ui/sites?version=2.5.0&label=region%3Deu").await;
    assert_eq!(total(&page), 1);
    // The grid coloured by version: one colour per version of the stream, most common
    // first; without scripts, through the query string.
    let (s, _, page) = web.get("/ui/sites/grid?colour=version&stream=pos").await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("coloured by version of pos"));
    assert_eq!(
        page.matches("class=v0 ").count(),
        2,
        "2.4.0: site-001, site-002"
    );
    assert_eq!(page.matches("class=v1 ").count(), 1, "2.5.0: site-000");
    let (s, _, page) = web.get("/ui/sites/grid?colour=rollout").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(page.contains("no rollout to colour the grid by"));
    let (s, _, page) = web.get("/ui/sites/grid?colour=nonsense").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(page.contains("must be health, version or rollout"));

    // Decommissioned sites leave the overview's version counts and the active filter.
    let (s, v) = h
        .post("/v1/sites/site-002/decommission", &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, _, page) = web.get("/ui/sites?state=decommissioned").await;
    assert_eq!(total(&page), 1);
    assert!(page.contains("href=\"/ui/sites/site-002\""));
    let (_, _, page) = web.get("/ui/sites?state=active&label=region%3Deu").await;
    assert_eq!(total(&page), 1, "site-000 only");
    let (_, _, page) = web.get("/ui/sites?state=active&q=shop").await;
    assert_eq!(
        total(&page),
        1,
        "site-000 only: site-001 lost its shop label"
    );
    // The overview is cached for a second (of the coordinator's clock).
    h.clock.advance(std::time::Duration::from_millis(1100));
    let (_, _, page) = web.get("/ui/").await;
    assert!(
        page.contains("data-live=\"version.pos.2.5.0\">1<"),
        "{page}"
    );
    assert!(
        page.contains("data-live=\"version.pos.2.4.0\">1<"),
        "site-001 only: site-002 is decommissioned"
    );
    assert!(page.contains("data-live=\"fleet.decommissioned\">1<"));
    h.stop().await;
}

/// Decommission and re-enable from a site's page: a confirmation step, the CSRF token and
/// the role are checked, and the change goes through the operator API's own handler (the
/// store, the agent's sessions, the audit log).
#[tokio::test]
async fn site_decommission_and_reenable_with_confirmation_csrf_and_role() {
    let h = Harness::new().await;
    let victor = h.token("victor", "viewer").await;
    let _agent = Agent::enroll(&h, "site-000", json!({"region": "eu"})).await;
    async fn state(h: &Harness) -> String {
        let (s, v) = h.get("/v1/sites/site-000", &h.admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["state"].as_str().unwrap().to_string()
    }

    // A viewer sees no control and is refused the confirmation and the action.
    let mut viewer = WebClient::new(&h);
    let viewer_csrf = viewer.login(&victor).await;
    let (s, _, page) = viewer.get("/ui/sites/site-000").await;
    assert_eq!(s, StatusCode::OK);
    assert!(!page.contains("control-decommission"));
    let (s, _, _) = viewer.get("/ui/sites/site-000/confirm/decommission").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = viewer
        .post(
            "/ui/sites/site-000/actions/decommission",
            &[("csrf", &viewer_csrf)],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(state(&h).await, "active");

    let mut web = WebClient::new(&h);
    web.login(&h.admin).await;
    let (_, _, page) = web.get("/ui/sites/site-000").await;
    assert!(page.contains("href=\"/ui/sites/site-000/confirm/decommission\""));
    let (s, _, page) = web.get("/ui/sites/site-000/confirm/decommission").await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("Decommission site site-000?"), "{page}");
    assert!(page.contains("action=\"/ui/sites/site-000/actions/decommission\""));
    let csrf = hidden(&page, "csrf");
    // Without the session's CSRF token, nothing changes.
    let (s, _, _) = web
        .post("/ui/sites/site-000/actions/decommission", &[])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = web
        .post(
            "/ui/sites/site-000/actions/decommission",
            &[("csrf", &viewer_csrf)],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another session's token");
    assert_eq!(state(&h).await, "active");
    let (s, headers, _) = web
        .post(
            "/ui/sites/site-000/actions/decommission",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/ui/sites/site-000");
    assert_eq!(state(&h).await, "decommissioned");
    let (_, _, page) = web.get("/ui/sites/site-000").await;
    assert!(page.contains("href=\"/ui/sites/site-000/confirm/reenable\""));
    let (_, _, page) = web.get("/ui/sites?state=decommissioned").await;
    assert!(page.contains("href=\"/ui/sites/site-000\""));
    let (s, v) = h.get("/v1/audit", &h.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.to_string().contains("site.decommission"), "{v}");

    let (s, _, page) = web.get("/ui/sites/site-000/confirm/reenable").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = web
        .post(
            "/ui/sites/site-000/actions/reenable",
            &[("csrf", &hidden(&page, "csrf"))],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(state(&h).await, "active");
    let (s, v) = h.get("/v1/audit", &h.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.to_string().contains("site.reenable"), "{v}");
    let (s, _, _) = web.get("/ui/sites/site-000/confirm/explode").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    h.stop().await;
}

/// A site whose agent gave up rolling back (phase `rollback_failed`) is shown for what it
/// is: an alert with the agent's words on its page, a failed site whose rollback failed on
/// the rollout page, and one more in `fleetwave_sites_rollback_failed`.
#[tokio::test]
async fn a_rollback_the_agent_gave_up_on_is_shown_on_the_site_and_rollout_pages_and_counted() {
    let h = Harness::new().await;
    h.publish("2.5.0", 25).await;
    let mut agent = Agent::enroll(&h, "store-1", json!({"region": "eu"})).await;
    let id = h.create_rollout(PLAN).await;
    let (s, _) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let metric = |text: &str| -> String {
        text.lines()
            .find(|l| l.starts_with("fleetwave_sites_rollback_failed "))
            .unwrap_or_else(|| panic!("no fleetwave_sites_rollback_failed in:\n{text}"))
            .to_string()
    };
    let metrics = |h: &Harness| {
        let http = h.http.clone();
        let url = h.url("/metrics");
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(
        metric(&metrics(&h).await),
        "fleetwave_sites_rollback_failed 0"
    );

    agent
        .failed(&h, &id, "pos-2.5.0", "unhealthy: http:pos: status 500")
        .await;
    agent
        .report(
            &h,
            json!({"kind": "phase", "rollout_id": id, "release_id": "pos-2.5.0", "phase": "rollback_failed",
                   "detail": "command_failed: rollback failed 8 times, giving up: restart exited 1; output: port 8080 in use"}),
        )
        .await;

    let mut web = WebClient::new(&h);
    web.login(&h.admin).await;
    let (s, _, page) = web.get("/ui/sites/store-1").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("id=\"rollback-failed\"")
            && page.contains("The agent gave up rolling back pos-2.5.0")
            && page.contains("port 8080 in use"),
        "{page}"
    );
    // The browser stand-in keeps its cookie jar behind `&mut`: one attempt at a time.
    let browser = tokio::sync::Mutex::new(&mut web);
    let page = common::eventually("the rollout page to show the failed rollback", || async {
        let (_, _, page) = browser
            .lock()
            .await
            .get(&format!("/ui/rollouts/{id}"))
            .await;
        page.contains("its rollback failed").then_some(page)
    })
    .await;
    assert!(page.contains("port 8080 in use"), "{page}");
    assert_eq!(
        metric(&metrics(&h).await),
        "fleetwave_sites_rollback_failed 1"
    );
    h.stop().await;
}

/// Freezes on the dashboard: every role sees the list (the configuration file's freeze
/// too); operators add one through a form and end one, each after a confirmation step,
/// with the session's CSRF token; viewers get neither control and are refused both.
#[tokio::test]
async fn freezes_page_lists_and_operators_add_and_end_them() {
    let h = Harness::with_config(
        "\n[[freezes]]\nstart = \"2036-11-23T00:00:00Z\"\nend = \"2036-11-30T00:00:00Z\"\nreason = \"thanksgiving\"\n",
    )
    .await;
    let alice = h.token("alice", "operator").await;
    let victor = h.token("victor", "viewer").await;
    let end = (h.clock.now() + jiff::SignedDuration::from_hours(1)).to_string();
    let (s, v) = h
        .post(
            "/v1/freezes",
            &alice,
            json!({"end": end, "reason": "incident 42"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let fid = v["id"].as_str().unwrap().to_string();
    async fn listed(h: &Harness) -> String {
        let (s, v) = h.get("/v1/freezes", &h.admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v.to_string()
    }
    let confirm_end = format!("/ui/freezes/{fid}/confirm/end");
    let act_end = format!("/ui/freezes/{fid}/actions/end");

    // A viewer sees the list only, and is refused the controls.
    let mut viewer = WebClient::new(&h);
    let viewer_csrf = viewer.login(&victor).await;
    let (s, _, page) = viewer.get("/ui/freezes").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains(&fid) && page.contains("incident 42") && page.contains("in force"),
        "{page}"
    );
    assert!(page.contains("config-0") && page.contains("thanksgiving"));
    assert!(!page.contains("add-freeze") && !page.contains(&confirm_end));
    let (s, _, _) = viewer.get(&confirm_end).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = viewer.post(&act_end, &[("csrf", &viewer_csrf)]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = viewer
        .post(
            "/ui/freezes/add",
            &[("csrf", &viewer_csrf), ("end", &end), ("reason", "nope")],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(listed(&h).await.contains(&fid));
    assert!(!listed(&h).await.contains("nope"));

    // An operator ends it after confirming, with the session's CSRF token.
    let mut web = WebClient::new(&h);
    web.login(&alice).await;
    let (_, _, page) = web.get("/ui/freezes").await;
    assert!(page.contains(&format!("href=\"{confirm_end}\"")), "{page}");
    assert!(
        !page.contains("/ui/freezes/config-0/confirm/end"),
        "no end control for the configuration file's freeze"
    );
    let (s, _, page) = web.get("/ui/freezes/config-0/confirm/end").await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(page.contains("configuration file"), "{page}");
    let (s, _, page) = web.get(&confirm_end).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains(&format!("End freeze {fid}")), "{page}");
    assert!(page.contains(&format!("action=\"{act_end}\"")));
    let csrf = hidden(&page, "csrf");
    let (s, _, _) = web.post(&act_end, &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF token");
    let (s, _, _) = web.post(&act_end, &[("csrf", &viewer_csrf)]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another session's token");
    assert!(listed(&h).await.contains(&fid));
    let (s, headers, _) = web.post(&act_end, &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/ui/freezes");
    assert!(!listed(&h).await.contains(&fid));
    let (_, _, page) = web.get("/ui/freezes").await;
    assert!(!page.contains(&fid));

    // And adds one: the form asks for confirmation with the times worked out.
    let query = form_body(&[
        ("reason", "store opening"),
        ("start", ""),
        ("end", ""),
        ("duration", "2h"),
    ]);
    let (s, _, page) = web.get(&format!("/ui/freezes/confirm-add?{query}")).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(
        page.contains("Add a fleet freeze from now to") && page.contains("store opening"),
        "{page}"
    );
    let (csrf, end) = (hidden(&page, "csrf"), hidden(&page, "end"));
    let (s, _, page) = web
        .get(&format!(
            "/ui/freezes/confirm-add?{}",
            form_body(&[("reason", "x"), ("end", "tomorrow")])
        ))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("end:"), "{page}");
    let (s, _, _) = web
        .post(
            "/ui/freezes/add",
            &[("end", &end), ("reason", "store opening")],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF token");
    let (s, headers, _) = web
        .post(
            "/ui/freezes/add",
            &[
                ("csrf", &csrf),
                ("start", ""),
                ("end", &end),
                ("reason", "store opening"),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/ui/freezes");
    assert!(listed(&h).await.contains("store opening"));
    let (_, _, page) = web.get("/ui/freezes").await;
    assert!(page.contains("store opening"), "{page}");
    let (_, v) = h.get("/v1/audit", &h.admin).await;
    let audit = v.to_string();
    assert!(
        audit.contains("freeze.end") && audit.contains("freeze.create"),
        "{v}"
    );
}

/// Retrying from the dashboard: a failed site has a retry link beside it and its wave a
/// "retry the failed sites" control; each asks for confirmation, needs the session's CSRF
/// token, and starts a new attempt the timeline names.
#[tokio::test]
async fn a_failed_site_is_retried_from_the_rollout_page() {
    let h = Harness::new().await;
    h.publish("2.5.0", 25).await;
    let mut agent = Agent::enroll(&h, "store-1", json!({"region": "eu"})).await;
    let id = h.create_rollout(PLAN).await;
    let (s, _) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    agent
        .failed(&h, &id, "pos-2.5.0", "prepare: no space left on device")
        .await;

    let mut web = WebClient::new(&h);
    web.login(&h.admin).await;
    let browser = tokio::sync::Mutex::new(&mut web);
    let page = common::eventually("the rollout page to offer a retry", || async {
        let (_, _, page) = browser
            .lock()
            .await
            .get(&format!("/ui/rollouts/{id}"))
            .await;
        page.contains("confirm/retry?site=store-1").then_some(page)
    })
    .await;
    assert!(page.contains("id=\"retry-wave-0\""), "{page}");
    let web = browser.into_inner();
    let (s, _, page) = web
        .get(&format!("/ui/rollouts/{id}/confirm/retry?site=store-1"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("Retry site store-1"), "{page}");
    let csrf = hidden(&page, "csrf");
    let act = format!("/ui/rollouts/{id}/actions/retry");
    let (s, _, _) = web.post(&act, &[("site", "store-1")]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF token");
    let (s, headers, _) = web
        .post(&act, &[("csrf", &csrf), ("site", "store-1")])
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], format!("/ui/rollouts/{id}").as_str());
    let timeline = h.rollout(&id).await["decisions"].to_string();
    assert!(
        timeline.contains("site store-1 (attempt 2) retried by"),
        "{timeline}"
    );
    // Nothing failed any more: the wave's retry is refused with the reason.
    let (s, _, page) = web.post(&act, &[("csrf", &csrf), ("wave", "0")]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{page}");
    assert!(page.contains("no failed site to retry"), "{page}");
    h.stop().await;
}

#[tokio::test]
async fn webhooks_page_is_for_admins_shows_the_secret_once_and_removes_after_confirming() {
    let h = Harness::new().await;
    let alice = h.token("alice", "operator").await;

    // Not an admin: no link, no page, no form.
    let mut op = WebClient::new(&h);
    let op_csrf = op.login(&alice).await;
    let (_, _, page) = op.get("/ui/").await;
    assert!(!page.contains("/ui/webhooks"), "{page}");
    let (s, _, _) = op.get("/ui/webhooks").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = op
        .post(
            "/ui/webhooks/add",
            &[
                ("csrf", &op_csrf),
                ("url", "https://hooks.example.com/x"),
                ("event", "rollout.halted"),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // An admin registers one: the answer shows the secret, this once.
    let mut web = WebClient::new(&h);
    web.login(&h.admin).await;
    let (s, headers, page) = web.get("/ui/webhooks").await;
    assert_eq!(s, StatusCode::OK);
    assert!(headers.contains_key("content-security-policy"));
    assert!(
        page.contains("no-webhooks") && page.contains("gate.awaiting_approval"),
        "{page}"
    );
    let csrf = hidden(&page, "csrf");
    let form = [
        ("url", "https://hooks.example.com/fleet"),
        ("event", "rollout.halted"),
        ("event", "wave.opened"),
        ("format", "json"),
        ("description", "on-call <pager>"),
    ];
    let (s, _, _) = web.post("/ui/webhooks/add", &form).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF token");
    let mut with_csrf = vec![("csrf", csrf.as_str())];
    with_csrf.extend(form);
    let bad: Vec<(&str, &str)> = with_csrf
        .iter()
        .map(|(k, v)| {
            if *k == "url" {
                (*k, "http://hooks.example.com/")
            } else {
                (*k, *v)
            }
        })
        .collect();
    let (s, _, page) = web.post("/ui/webhooks/add", &bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("allow_insecure_http"), "{page}");
    let (s, _, page) = web.post("/ui/webhooks/add", &with_csrf).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let secret = page
        .split("<code id=\"secret\">")
        .nth(1)
        .and_then(|r| r.split("</code>").next())
        .unwrap()
        .to_string();
    assert!(secret.starts_with("whsec_"), "{page}");
    let (_, v) = h.get("/v1/webhooks", &h.admin).await;
    let id = v["webhooks"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        v["webhooks"][0]["events"],
        json!(["rollout.halted", "wave.opened"])
    );

    // Listed and shown without it; the description is escaped.
    let (_, _, page) = web.get("/ui/webhooks").await;
    assert!(page.contains(&id) && !page.contains(&secret), "{page}");
    let (s, _, page) = web.get(&format!("/ui/webhooks/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("on-call &#60;pager&#62;") && !page.contains(&secret),
        "{page}"
    );
    assert!(
        page.contains("deliveries") && page.contains("attempts"),
        "{page}"
    );

    // Removed after confirming, audited with (dashboard).
    let confirm = format!("/ui/webhooks/{id}/confirm/remove");
    let act = format!("/ui/webhooks/{id}/actions/remove");
    let (s, _, page) = web.get(&confirm).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains(&format!("Remove webhook {id}")), "{page}");
    let csrf = hidden(&page, "csrf");
    let (s, _, _) = op.post(&act, &[("csrf", &op_csrf)]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, headers, _) = web.post(&act, &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/ui/webhooks");
    let (s, _) = h.get(&format!("/v1/webhooks/{id}"), &h.admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = h.get("/v1/audit", &h.admin).await;
    let audit = v.to_string();
    assert!(
        audit.contains("webhook.create")
            && audit.contains("webhook.delete")
            && audit.contains("(dashboard)"),
        "{v}"
    );
    assert!(!audit.contains(&secret));
}

#[tokio::test]
async fn a_created_rollout_page_previews_its_plan_and_shows_when_it_starts() {
    let h = Harness::new().await;
    let victor = h.token("victor", "viewer").await;
    h.publish("2.5.0", 25).await;
    Agent::enroll(&h, "pig-1", json!({"cohort": "pig", "tz": "Europe/Berlin"})).await;
    Agent::enroll(&h, "store-1", json!({})).await;
    Agent::enroll(&h, "store-old", json!({})).await;
    let (s, _) = h
        .post("/v1/sites/store-old/decommission", &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let start = (h.clock.now() + jiff::SignedDuration::from_hours(3))
        .round(jiff::Unit::Second)
        .unwrap();
    let local = start
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .datetime();
    let plan = format!(
        "name = \"pos 2.5\"\nrelease = \"pos-2.5.0\"\nstart_at = \"{local}[Europe/Berlin]\"\n\
         [[waves]]\nname = \"pigs\"\nselector = {{ cohort = \"pig\" }}\ngate = {{ bake = \"1h\" }}\n\
         [[waves]]\nname = \"rest\"\n"
    );
    let id = h.create_rollout(&plan).await;
    let mut web = WebClient::new(&h);
    web.login(&victor).await;
    let page_of = |page: &str, id: &str| -> String {
        let from = page
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id}: {page}"));
        let rest = &page[from..];
        rest[..rest.find("</").unwrap()].to_string()
    };

    let (s, _, page) = web.get(&format!("/ui/rollouts/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("id=\"preview\""), "{page}");
    let wave0 = &page[page.find("id=\"preview-wave-0\"").unwrap()..];
    let wave0 = &wave0[..wave0.find("</tr>").unwrap()];
    assert!(
        wave0.contains("<td>pigs</td><td>1</td>") && wave0.contains("pig-1"),
        "{wave0}"
    );
    let opens = model_when(start);
    assert!(
        wave0.contains(&opens),
        "wave 0 opens at the start_at {opens}: {wave0}"
    );
    let wave1 = &page[page.find("id=\"preview-wave-1\"").unwrap()..];
    let wave1 = &wave1[..wave1.find("</tr>").unwrap()];
    assert!(wave1.contains("store-1"), "{wave1}");
    assert!(
        wave1.contains(&model_when(start + jiff::SignedDuration::from_hours(1))),
        "wave 1 one bake later: {wave1}"
    );
    let excluded = &page[page.find("id=\"preview-excluded\"").unwrap()..];
    assert!(
        excluded[..excluded.find("</ul>").unwrap()].contains("1 decommissioned</b>: store-old"),
        "{excluded}"
    );
    assert!(page.contains("lower bound"), "{page}");
    let starts = page_of(&page, "starts-at");
    assert!(
        starts.contains(&model_when(start)) && starts.contains("(Europe/Berlin)"),
        "{starts}"
    );

    // Scheduled: still previewed, with when it starts; running: no preview any more.
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("scheduled"))
    );
    let (_, _, page) = web.get(&format!("/ui/rollouts/{id}")).await;
    assert!(page.contains("id=\"preview\"") && page.contains("id=\"starts-at\""));
    h.post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    // Past the page model's freshness (the coordinator's clock, moved).
    h.clock.advance(Duration::from_secs(2));
    let (_, _, page) = web.get(&format!("/ui/rollouts/{id}")).await;
    assert!(page.contains("status-running"), "{page}");
    assert!(!page.contains("id=\"preview\"") && !page.contains("id=\"starts-at\""));
    h.stop().await;
}

/// A time as the dashboard writes it.
fn model_when(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[tokio::test]
async fn operators_check_a_pasted_plan_on_the_rollouts_page_without_storing_it() {
    let h = Harness::new().await;
    let alice = h.token("alice", "operator").await;
    let victor = h.token("victor", "viewer").await;
    h.publish("2.5.0", 25).await;
    Agent::enroll(&h, "store-1", json!({"region": "eu"})).await;
    Agent::enroll(&h, "store-2", json!({"region": "us"})).await;
    let plan = "name = \"eu first\"\nrelease = \"pos-2.5.0\"\n[[waves]]\nname = \"eu\"\n\
                selector = { region = \"eu\" }\n[[waves]]\nname = \"rest\"\n";

    // A viewer has no form and is refused the check.
    let mut viewer = WebClient::new(&h);
    let viewer_csrf = viewer.login(&victor).await;
    let (_, _, page) = viewer.get("/ui/rollouts").await;
    assert!(!page.contains("id=\"check-plan\""), "{page}");
    let (s, _, _) = viewer
        .post(
            "/ui/rollouts/preview",
            &[("csrf", &viewer_csrf), ("plan", plan), ("format", "toml")],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let mut web = WebClient::new(&h);
    let csrf = web.login(&alice).await;
    let (_, _, page) = web.get("/ui/rollouts").await;
    assert!(page.contains("id=\"check-plan\""), "{page}");
    // Without the CSRF token: refused.
    let (s, _, _) = web
        .post(
            "/ui/rollouts/preview",
            &[("plan", plan), ("format", "toml")],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, _, page) = web
        .post(
            "/ui/rollouts/preview",
            &[("csrf", &csrf), ("plan", plan), ("format", "toml")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let wave0 = &page[page.find("id=\"preview-wave-0\"").unwrap()..];
    assert!(
        wave0[..wave0.find("</tr>").unwrap()].contains("<td>eu</td><td>1</td>")
            && wave0.contains("store-1"),
        "{page}"
    );
    // The form comes back with the plan in it, to change and check again.
    assert!(page.contains("name = &#34;eu first&#34;"), "{page}");

    // An invalid plan: the coordinator's message, naming the field, and the plan kept.
    let broken = plan.replace(
        "[[waves]]\nname = \"eu\"",
        "[[waves]]\nname = \"eu\"\nshare = 0",
    );
    let (s, _, page) = web
        .post(
            "/ui/rollouts/preview",
            &[("csrf", &csrf), ("plan", &broken), ("format", "toml")],
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let error = &page[page.find("id=\"plan-error\"").unwrap()..];
    assert!(
        error[..error.find("</p>").unwrap()].contains("waves[0].share"),
        "{page}"
    );
    assert!(page.contains("share = 0"), "{page}");

    // Nothing was created.
    let (_, v) = h.get("/v1/rollouts", &h.admin).await;
    assert_eq!(v["rollouts"], json!([]), "{v}");
    h.stop().await;
}

/// Holding a site from its page: a Hold control that asks for a reason (required), the
/// hold shown on the page, and a control to lift it; CSRF and role as for every control.
#[tokio::test]
async fn a_site_is_held_and_released_from_its_page() {
    let h = Harness::new().await;
    Agent::enroll(&h, "store-1", json!({"region": "eu"})).await;
    let mut web = WebClient::new(&h);
    web.login(&h.admin).await;
    let (_, _, page) = web.get("/ui/sites/store-1").await;
    assert!(page.contains("id=\"control-hold\""), "{page}");
    let (s, _, page) = web.get("/ui/sites/store-1/confirm/hold").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("Hold site store-1") && page.contains("name=\"reason\""),
        "{page}"
    );
    let csrf = hidden(&page, "csrf");
    let act = "/ui/sites/store-1/actions/hold";
    let (s, _, _) = web.post(act, &[("reason", "flooded")]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF token");
    let (s, _, page) = web.post(act, &[("csrf", &csrf), ("reason", " ")]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    assert!(page.contains("reason:"), "{page}");
    let (s, headers, _) = web
        .post(act, &[("csrf", &csrf), ("reason", "flooded")])
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/ui/sites/store-1");
    let (_, _, page) = web.get("/ui/sites/store-1").await;
    assert!(
        page.contains("id=\"hold\"")
            && page.contains("flooded")
            && page.contains("id=\"control-unhold\""),
        "{page}"
    );
    let (s, _, _) = web
        .post("/ui/sites/store-1/actions/unhold", &[("csrf", &csrf)])
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (_, v) = h.get("/v1/sites/store-1", &h.admin).await;
    assert!(v["hold"].is_null(), "{v}");
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    assert!(audit.to_string().contains("flooded (dashboard)"), "{audit}");
    h.stop().await;
}

#[tokio::test]
async fn the_rollout_page_lists_the_sites_served_by_bundle_and_until_when() {
    let h = Harness::new().await;
    let artifact = b"pos 2.5.0".to_vec();
    let sha = fleetwave_shared::sha256_hex(&artifact);
    let res = h
        .http
        .put(h.url(&format!("/v1/artifacts/{sha}")))
        .bearer_auth(&h.admin)
        .body(artifact)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    h.publish("2.5.0", 25).await;
    let courier = Agent::enroll(&h, "store-1", json!({"region": "eu"})).await;
    let online = Agent::enroll(&h, "store-2", json!({"region": "eu"})).await;
    let id = h.create_rollout(PLAN).await;
    let (s, _) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    courier.assignment(&h).await;
    online.assignment(&h).await;

    let mut web = WebClient::new(&h);
    web.login(&h.admin).await;
    let (s, _, page) = web.get(&format!("/ui/rollouts/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!page.contains("id=\"bundled\""), "no bundle yet: {page}");

    let res = h
        .http
        .post(h.url("/v1/bundles"))
        .bearer_auth(&h.admin)
        .json(&json!({"site": "store-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.bytes().await.unwrap();
    let (_, v) = h.get(&format!("/v1/rollouts/{id}/sites"), &h.admin).await;
    let until: jiff::Timestamp = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site_id"] == "store-1")
        .and_then(|s| s["bundle_until"].as_str())
        .unwrap_or_else(|| panic!("store-1 has no bundle_until: {v}"))
        .parse()
        .unwrap();

    // Past the page's one-second cache.
    h.clock.advance(std::time::Duration::from_secs(2));
    let (s, _, page) = web.get(&format!("/ui/rollouts/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("Sites served by bundle"), "{page}");
    let row = page
        .split("id=\"bundled-store-1\"")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for store-1: {page}"));
    assert!(row.contains(&model_when(until)), "{row}");
    assert!(!row.contains("expired"), "{row}");
    assert!(!page.contains("bundled-store-2"), "store-2 polls: {page}");

    // Once the bundle's validity has passed, the page says so.
    h.clock
        .advance(std::time::Duration::from_secs(8 * 24 * 3600));
    web.login(&h.admin).await; // the dashboard session did not last the week
    let (_, _, page) = web.get(&format!("/ui/rollouts/{id}")).await;
    let row = page
        .split("id=\"bundled-store-1\"")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap();
    assert!(row.contains("(expired)"), "{row}");
    h.stop().await;
}

/// The rollout page draws each wave's golden-signal analysis: a degraded canary wave
/// halts, and its page shows the signal, the verdict and the numbers, with one box per
/// group and one dot per site, as inline SVG under the same CSP (no script, no style
/// attribute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_page_draws_each_signals_groups_with_the_verdict_and_numbers() {
    use common::analysis::{fleet, send_minutes};
    let h = Harness::new().await;
    let f = fleet(&h, 6, 5).await;
    send_minutes(&h, &f, 10, 0.05).await;
    let halted = common::eventually("the analysis to halt the rollout", || async {
        let r = h.rollout(&f.rollout).await;
        (r["status"] == "rolled_back").then_some(r)
    })
    .await;
    let numbers = &halted["waves"][0]["analysis"][0];
    let mut web = WebClient::new(&h);
    web.login(&h.admin).await;
    let (s, headers, page) = web.get(&format!("/ui/rollouts/{}", f.rollout)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("unsafe-inline")
    );
    let start = page
        .find("id=\"analysis-wave-0\"")
        .unwrap_or_else(|| panic!("no analysis for wave 0 in:\n{page}"));
    let section = &page[start..start + page[start..].find("</div>").unwrap()];
    assert!(
        section.contains("data-signal=\"error_ratio\" data-verdict=\"fail\""),
        "{section}"
    );
    let median = |g: &str| {
        fleetwave_shared::protocol::analysis::number(numbers[g]["median"].as_f64().unwrap())
    };
    let size = |g: &str| {
        (
            numbers[g]["sites"].as_u64().unwrap(),
            numbers[g]["samples"].as_u64().unwrap(),
        )
    };
    let ((us, un), (cs, cn)) = (size("upgraded"), size("control"));
    assert!(us >= 5 && cs >= 5, "{numbers}");
    for words in [
        format!(
            "upgraded median {} ({us} sites, {un} samples) vs control {} ({cs} sites, {cn} samples)",
            median("upgraded"),
            median("control")
        ),
        "tolerance 0.01 (an increase is bad); 10 minutes".to_string(),
        format!("data-median=\"{}\"", median("upgraded")),
        format!("data-median=\"{}\"", median("control")),
    ] {
        assert!(section.contains(&words), "{words:?} missing in {section}");
    }
    assert_eq!(section.matches("<svg class=\"analysis-plot\"").count(), 1);
    assert_eq!(section.matches("class=\"an-box\"").count(), 2);
    assert_eq!(
        section.matches("<circle").count() as u64,
        us + cs,
        "one dot per site"
    );
    assert!(!section.contains("style=") && !page.contains("<script>"));
    // Wave 1 never opened: nothing to draw.
    assert!(!page.contains("id=\"analysis-wave-1\""));
    h.stop().await;
}
