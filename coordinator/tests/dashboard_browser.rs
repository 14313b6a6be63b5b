//! The dashboard in a real headless Chromium (Debian's chromium and chromium-driver),
//! driven from Rust with fantoccini, against a coordinator in-process over TLS with a
//! temp SQLite file. Agents are simulated through the real agent API.
//!
//! With FLEETWAVE_SCREENSHOTS=1 the test also writes docs/screenshots/*.png.

mod common;

use std::time::Duration;

use common::*;
use fantoccini::Locator;
use serde_json::json;

const PLAN: &str = r#"
name = "pos 2.5 to the fleet"
release = "pos-2.5.0"

[[waves]]
name = "pigs"
selector = { cohort = "pig" }
gate = { bake = "1s", min_sample = 2, success_ratio = 1.0, approval = true }

[[waves]]
name = "general"
gate = { bake = "30m", success_ratio = 0.75, failure_budget = 1 }
"#;

async fn text(c: &fantoccini::Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until the element's text satisfies `ok` (the page patches itself; no reload).
async fn wait_text(c: &fantoccini::Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) {
    let waited = fleetwave_testkit::wait(
        fleetwave_testkit::patience(Duration::from_secs(30)),
        || async {
            let t = match c.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if ok(&t) { Ok(()) } else { Err(t) }
        },
    )
    .await;
    if let Err(t) = waited {
        panic!("timed out waiting for {what}: {css} shows {:?}", t.last);
    }
}

async fn login(c: &fantoccini::Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/")).await.unwrap();
    // Not signed in: the dashboard sends the browser to the sign-in page.
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    c.find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "h1", "the overview", |t| t == "Fleet overview").await;
}

/// The page has not been reloaded since `mark` was set (live patches only).
async fn not_reloaded(c: &fantoccini::Client) -> bool {
    c.execute("return window.__fleetwaveMark === 42;", vec![])
        .await
        .unwrap()
        .as_bool()
        .unwrap()
}

async fn mark(c: &fantoccini::Client) {
    c.execute("window.__fleetwaveMark = 42;", vec![])
        .await
        .unwrap();
}

async fn click(c: &fantoccini::Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_watches_steers_and_filters_a_rollout_in_chromium() {
    let h = Harness::new().await;
    let alice = h.token("alice", "operator").await;
    let victor = h.token("victor", "viewer").await;
    let release = h.publish("2.5.0", 25).await;
    let mut pigs = Vec::new();
    for i in 1..=2 {
        pigs.push(
            Agent::enroll(
                &h,
                &format!("pig-{i}"),
                json!({"cohort": "pig", "region": "eu"}),
            )
            .await,
        );
    }
    let mut stores = Vec::new();
    for i in 1..=4 {
        let region = if i % 2 == 0 { "us" } else { "eu" };
        stores.push(
            Agent::enroll(
                &h,
                &format!("store-{i}"),
                json!({"cohort": "general", "region": region}),
            )
            .await,
        );
    }
    for a in pigs.iter_mut().chain(stores.iter_mut()) {
        a.installed(&h, "pos-2.4.0", "2.4.0").await;
        a.health(&h, true).await;
    }
    let id = h.create_rollout(PLAN).await;

    let driver = chromedriver().await;
    let c = browser(&driver).await;
    c.goto(&format!("{}/ui/login", h.base)).await.unwrap();
    screenshot(&c, "login").await;
    login(&c, &h.base, &alice).await;
    // The overview shows the fleet and the pending rollout.
    assert_eq!(text(&c, "[data-live='fleet.active']").await, "6");
    assert_eq!(text(&c, "[data-live='fleet.healthy']").await, "6");
    assert!(text(&c, "main").await.contains("pos 2.5 to the fleet"));

    // Start from the dashboard: control, confirmation page, then the rollout page.
    c.goto(&format!("{}/ui/rollouts/{id}", h.base))
        .await
        .unwrap();
    assert_eq!(text(&c, "#status").await, "pending");
    click(&c, "#control-start").await;
    wait_text(&c, "#question", "the confirmation", |t| {
        t.contains("Start rollout")
    })
    .await;
    click(&c, "#confirm").await;
    wait_text(&c, "#status", "running", |t| t == "running").await;

    // Watch it progress live as the pigs install and report.
    mark(&c).await;
    for a in pigs.iter_mut() {
        a.install(&h, &release).await;
    }
    wait_text(&c, "[data-live='w0.in_progress']", "2 baking", |t| t == "2").await;
    // Past the bake time, on the coordinator's clock.
    h.clock.advance(Duration::from_millis(1100));
    for a in pigs.iter_mut() {
        a.health(&h, true).await;
    }
    wait_text(&c, "[data-live='w0.succeeded']", "2 succeeded", |t| {
        t == "2"
    })
    .await;
    wait_text(
        &c,
        "[data-live='w0.standing']",
        "waiting for approval",
        |t| t.contains("waiting for approval"),
    )
    .await;
    assert!(
        text(&c, "[data-live='w0.numbers']")
            .await
            .contains("succeeded 2 of 2 needed")
    );
    // The approve control appeared without a reload; the bar's succeeded part fills it.
    let width = c
        .find(Locator::Css(
            "svg[data-bar$='.w0'] rect[data-seg='succeeded']",
        ))
        .await
        .unwrap()
        .attr("width")
        .await
        .unwrap();
    assert_eq!(width.as_deref(), Some("1000"));
    wait_text(&c, "#control-approve", "the approve control", |t| {
        t == "Approve wave"
    })
    .await;
    assert!(
        not_reloaded(&c).await,
        "the page reloaded instead of patching itself"
    );
    screenshot(&c, "rollout-approval").await;

    // Approve the wave: the next wave opens.
    click(&c, "#control-approve").await;
    wait_text(&c, "#question", "the approval question", |t| {
        t.contains("Approve wave 0")
    })
    .await;
    screenshot(&c, "confirm-approve").await;
    click(&c, "#confirm").await;
    wait_text(&c, "[data-live='w1.phase']", "wave 1 open", |t| t == "open").await;
    assert!(text(&c, "#timeline").await.contains("approved by alice"));

    // Pause with a reason, then resume.
    mark(&c).await;
    click(&c, "#control-pause").await;
    c.find(Locator::Css("#reason"))
        .await
        .unwrap()
        .send_keys("store opening hours")
        .await
        .unwrap();
    click(&c, "#confirm").await;
    wait_text(&c, "#status", "paused", |t| t == "paused").await;
    assert!(
        text(&c, "#status-reason")
            .await
            .contains("store opening hours")
    );
    click(&c, "#control-resume").await;
    click(&c, "#confirm").await;
    wait_text(&c, "#status", "running again", |t| t == "running").await;

    // Two stores fail: the failure budget (1) is crossed and the rollout halts; the halt
    // reason appears live, without a reload.
    mark(&c).await;
    let (r1, s1) = stores[0].assignment(&h).await;
    stores[0].lease(&h, &r1, s1).await;
    stores[0]
        .failed(&h, &r1, &release, "migration 42 failed")
        .await;
    let (r2, s2) = stores[1].assignment(&h).await;
    stores[1].lease(&h, &r2, s2).await;
    stores[1].failed(&h, &r2, &release, "disk full").await;
    wait_text(&c, "#status", "halted", |t| t == "halted").await;
    wait_text(&c, "#status-reason", "the halt reason", |t| {
        t.contains("failure budget crossed")
    })
    .await;
    assert!(not_reloaded(&c).await, "the halt was shown by a reload");
    assert!(text(&c, "#timeline").await.contains("halted at wave 1"));
    assert_eq!(text(&c, "[data-live='w1.failed']").await, "2");
    c.refresh().await.unwrap();
    assert!(text(&c, "main").await.contains("migration 42 failed"));
    c.set_window_size(1360, 1900).await.unwrap();
    screenshot(&c, "rollout-halted").await;
    c.set_window_size(1360, 1000).await.unwrap();

    c.goto(&format!("{}/ui/audit", h.base)).await.unwrap();
    let audit = text(&c, "#audit").await;
    for action in [
        "rollout.start",
        "rollout.approve",
        "rollout.pause",
        "rollout.resume",
    ] {
        assert!(
            audit.contains(action),
            "{action} missing from the audit log"
        );
    }
    screenshot(&c, "audit").await;

    // Filter sites by label, then by state and version; the grid shows each site.
    c.goto(&format!("{}/ui/sites", h.base)).await.unwrap();
    assert!(text(&c, "#site-count").await.contains("of 6 sites"));
    c.find(Locator::Css("#f-label"))
        .await
        .unwrap()
        .send_keys("cohort=pig")
        .await
        .unwrap();
    click(&c, "#f-apply").await;
    wait_text(&c, "#site-count", "2 pig sites", |t| {
        t.contains("of 2 sites")
    })
    .await;
    let rows = c
        .find_all(Locator::Css("#site-table tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(text(&c, "#site-table").await.contains("pig-1"));
    assert!(!text(&c, "#site-table").await.contains("store-1"));
    c.find(Locator::Css("#f-version"))
        .await
        .unwrap()
        .select_by_value("2.5.0")
        .await
        .unwrap();
    click(&c, "#f-apply").await;
    wait_text(&c, "#site-count", "pigs on 2.5.0", |t| {
        t.contains("of 2 sites")
    })
    .await;
    c.goto(&format!("{}/ui/sites?label=region%3Dus", h.base))
        .await
        .unwrap();
    assert!(text(&c, "#site-count").await.contains("of 2 sites"));
    c.goto(&format!("{}/ui/sites", h.base)).await.unwrap();
    screenshot(&c, "sites").await;
    c.goto(&format!("{}/ui/sites/grid", h.base)).await.unwrap();
    let cells = c.find_all(Locator::Css("#grid a")).await.unwrap();
    assert_eq!(cells.len(), 6);
    if screenshots() {
        // A fuller fleet for the pictures: healthy, unhealthy, deferred, silent sites.
        for i in 0..400 {
            let mut a = Agent::enroll(&h, &format!("shop-{i:04}"), json!({"cohort": "dog"})).await;
            match i % 23 {
                0 | 7 => a.health(&h, false).await,
                3 => {
                    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(6);
                    a.report(
                        &h,
                        json!({"kind": "deferral", "until": until, "reason": "sales day"}),
                    )
                    .await
                }
                5 => {}
                _ => a.health(&h, true).await,
            }
        }
        // Real time, for the pictures only: the 400 sites' last-seen times reach SQLite
        // through the flusher, which runs on a one-second timer, not on the clock.
        h.clock.advance(Duration::from_millis(1100));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.goto(&format!("{}/ui/sites/grid", h.base)).await.unwrap();
    }
    screenshot(&c, "grid").await;
    // Colour the grid by version, then by state in the rollout: a plain form (it works
    // with scripts blocked), the legend counts each colour.
    c.find(Locator::Css("#g-colour"))
        .await
        .unwrap()
        .select_by_value("version")
        .await
        .unwrap();
    click(&c, "#g-apply").await;
    wait_text(&c, "#grid-coloured-by", "colours by version", |t| {
        t.contains("version of pos")
    })
    .await;
    let legend = text(&c, "#grid-legend").await;
    assert!(
        legend.contains("2.4.0 4") && legend.contains("2.5.0 2"),
        "{legend}"
    );
    let class = |c: &fantoccini::Client, site: &'static str| {
        let c = c.clone();
        async move {
            c.find(Locator::Css(&format!("#grid a[href='{site}']")))
                .await
                .unwrap()
                .attr("class")
                .await
                .unwrap()
                .unwrap_or_default()
        }
    };
    assert_eq!(class(&c, "pig-1").await, "v1", "2.5.0, the less common");
    assert_eq!(class(&c, "store-1").await, "v0", "2.4.0, the most common");
    c.find(Locator::Css("#g-colour"))
        .await
        .unwrap()
        .select_by_value("rollout")
        .await
        .unwrap();
    click(&c, "#g-apply").await;
    wait_text(&c, "#grid-coloured-by", "colours by rollout state", |t| {
        t.contains(&format!("state in rollout {id}"))
    })
    .await;
    let legend = text(&c, "#grid-legend").await;
    assert!(legend.contains("failed 2"), "{legend}");
    assert_eq!(class(&c, "store-1").await, "r-failed");
    assert_eq!(class(&c, "store-2").await, "r-failed");
    screenshot(&c, "grid-rollout").await;
    c.goto(&format!("{}/ui/sites/store-1", h.base))
        .await
        .unwrap();
    let page = text(&c, "main").await;
    assert!(page.contains("migration 42 failed"), "{page}");
    assert!(page.contains("cohort=general"));
    screenshot(&c, "site").await;
    c.goto(&format!("{}/ui/", h.base)).await.unwrap();
    screenshot(&c, "overview").await;
    c.goto(&format!("{}/ui/releases", h.base)).await.unwrap();
    assert!(text(&c, "main").await.contains("pos-2.5.0"));

    // Sign out: the session is gone.
    click(&c, ".who button").await;
    wait_text(&c, "#sign-in", "the sign-in page", |t| t == "Sign in").await;
    c.goto(&format!("{}/ui/rollouts/{id}", h.base))
        .await
        .unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));

    // A viewer reads but has no controls; the server refuses the action anyway.
    login(&c, &h.base, &victor).await;
    c.goto(&format!("{}/ui/rollouts/{id}", h.base))
        .await
        .unwrap();
    assert!(text(&c, "#read-only").await.contains("viewer"));
    assert!(c.find(Locator::Css("#control-resume")).await.is_err());
    c.goto(&format!("{}/ui/rollouts/{id}/confirm/resume", h.base))
        .await
        .unwrap();
    assert!(
        text(&c, "#error-message")
            .await
            .contains("needs role operator")
    );
    assert_eq!(h.rollout(&id).await["status"], "halted");

    c.close().await.unwrap();
    drop(driver);
    h.stop().await;
}

/// A degraded canary wave's golden-signal picture in a real browser, under the
/// dashboard's CSP: the SVG takes room on the page and the stylesheet colours it (no
/// inline style is needed, none is allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analysis_picture_renders_with_the_stylesheet_in_chromium() {
    use common::analysis::{fleet, send_minutes};
    let h = Harness::new().await;
    let f = fleet(&h, 6, 5).await;
    send_minutes(&h, &f, 10, 0.05).await;
    let halted = eventually("the analysis to halt the rollout", || async {
        let r = h.rollout(&f.rollout).await;
        (r["status"] == "rolled_back").then_some(r)
    })
    .await;
    let numbers = &halted["waves"][0]["analysis"][0];
    let dots = numbers["upgraded"]["sites"].as_u64().unwrap()
        + numbers["control"]["sites"].as_u64().unwrap();
    let driver = chromedriver().await;
    let c = browser(&driver).await;
    login(&c, &h.base, &h.admin).await;
    c.goto(&format!("{}/ui/rollouts/{}", h.base, f.rollout))
        .await
        .unwrap();
    let figure = text(&c, "#analysis-0-0 figcaption").await;
    assert!(
        figure.starts_with("error_ratio fail upgraded median"),
        "{figure}"
    );
    let drawn = c
        .execute(
            "const svg = document.querySelector('#analysis-0-0 svg.analysis-plot');
             const box = document.querySelector('#analysis-0-0 .an-upgraded .an-box');
             return [svg.getBoundingClientRect().width, getComputedStyle(box).fill,
                     document.querySelectorAll('#analysis-0-0 circle').length];",
            vec![],
        )
        .await
        .unwrap();
    let width = drawn[0].as_f64().unwrap();
    assert!(width > 300.0, "the picture is {width} px wide");
    assert_eq!(
        drawn[1], "rgb(239, 123, 45)",
        "the stylesheet's upgraded colour"
    );
    assert_eq!(drawn[2].as_u64(), Some(dots), "one dot per site");
    screenshot(&c, "rollout-analysis").await;
    c.close().await.unwrap();
    drop(driver);
    h.stop().await;
}
