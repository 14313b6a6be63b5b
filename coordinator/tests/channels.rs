//! Channels and convergence against a real coordinator (its controller loop runs): a
//! rollout that completes sets its channel; a site that enrolls later, a relabelled site
//! and a re-keyed box converge to the channel's release by themselves through the
//! channel's convergence rollout; a held site does not and says why; a convergence whose
//! first site fails pauses and says why, and resumes; overlapping channels, backwards
//! moves without `rollback` and bad fields are refused with the reason; an operator's
//! rollout supersedes convergence.

mod common;

use std::time::Duration;

use common::{Agent, Harness, WebClient, eventually, hidden};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PLAN: &str = r#"
name = "pos 2.5"
release = "pos-2.5.0"
selector = { format = "store" }

[[waves]]
name = "stores"
gate = { bake = "1s" }
"#;

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

async fn channel(h: &Harness, name: &str) -> Value {
    let (s, v) = h.get(&format!("/v1/channels/{name}"), &h.admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// The reason the channel gives for `site` being off its release (None: it is on it).
async fn off_reason(h: &Harness, name: &str, site: &str) -> Option<(String, String)> {
    let v = channel(h, name).await;
    v["off"].as_array().unwrap().iter().find_map(|o| {
        (o["site_id"] == site).then(|| {
            (
                o["reason"].as_str().unwrap().to_string(),
                o["detail"].as_str().unwrap().to_string(),
            )
        })
    })
}

/// Runs the rollout to completion with `agents` installing and baking healthy.
async fn complete(h: &Harness, id: &str, agents: &mut [Agent], release: &str) {
    let (s, v) = h
        .post(&format!("/v1/rollouts/{id}/start"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for a in agents.iter_mut() {
        a.install(h, release).await;
    }
    h.clock.advance(Duration::from_millis(1100));
    for a in agents.iter_mut() {
        a.health(h, true).await;
    }
    eventually("the rollout to complete", || async {
        (h.rollout(id).await["status"] == "completed").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_that_come_later_converge_to_the_channel_a_rollout_set() {
    let h = Harness::new().await;
    h.publish("2.4.0", 24).await;
    let release = h.publish("2.5.0", 25).await;
    let mut first = vec![Agent::enroll(&h, "store-1", json!({"format": "store"})).await];
    first[0].installed(&h, "pos-2.4.0", "2.4.0").await;
    let id = h.create_rollout(PLAN).await;
    complete(&h, &id, &mut first, &release).await;

    // The completed rollout made the channel of its stream and selector.
    let v = eventually("the channel the rollout set", || async {
        let (_, v) = h.get("/v1/channels", &h.admin).await;
        v["channels"]
            .as_array()
            .and_then(|c| c.first().cloned())
            .filter(|c| c["release_id"] == release.as_str())
    })
    .await;
    assert_eq!(v["name"], "pos-format-store", "{v}");
    assert_eq!(v["stream"], "pos");
    assert_eq!(v["selector_text"], "format=store");
    assert_eq!(v["set_by"], format!("rollout {id}"));
    assert_eq!(v["off_release"], 0);
    let timeline = h.rollout(&id).await["decisions"].to_string();
    assert!(
        timeline.contains("channel pos-format-store now names release pos-2.5.0"),
        "{timeline}"
    );

    // A store that opens after the rollout completed converges by itself.
    let mut late = Agent::enroll(&h, "store-2", json!({"format": "store"})).await;
    late.installed(&h, "pos-2.4.0", "2.4.0").await;
    let (conv, seq) = late.assignment(&h).await;
    assert!(conv.starts_with("converge-pos-format-store-"), "{conv}");
    let (reason, detail) = off_reason(&h, "pos-format-store", "store-2").await.unwrap();
    assert_eq!(reason, "converging", "{detail}");
    late.lease(&h, &conv, seq).await;
    late.install(&h, &release).await;
    eventually("store-2 on the channel's release", || async {
        off_reason(&h, "pos-format-store", "store-2")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let ch = channel(&h, "pos-format-store").await;
    assert_eq!(ch["channel"]["convergence"]["rollout_id"], conv.as_str());
    assert_eq!(ch["channel"]["convergence"]["status"], "running");
    assert_eq!(ch["channel"]["paused"], false);

    // A held site stays where it is, and the channel says why.
    let alice = h.token("alice", "operator").await;
    // It enrolls outside the channel and is held before it joins it, so no convergence
    // pass can reach it first (a pass runs every few seconds).
    let held = Agent::enroll(&h, "store-3", json!({"format": "depot"})).await;
    let (s, v) = h
        .post(
            "/v1/sites/store-3/hold",
            &alice,
            json!({"reason": "vendor swap on Friday"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .post(
            "/v1/sites/store-3/labels",
            &h.admin,
            json!({"set": {"format": "store"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // A site relabelled into the channel converges.
    let mut kiosk = Agent::enroll(&h, "kiosk-1", json!({"format": "kiosk"})).await;
    kiosk.installed(&h, "pos-2.4.0", "2.4.0").await;
    assert!(
        off_reason(&h, "pos-format-store", "kiosk-1")
            .await
            .is_none()
    );
    let (s, v) = h
        .post(
            "/v1/sites/kiosk-1/labels",
            &h.admin,
            json!({"set": {"format": "store"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (conv2, _) = kiosk.assignment(&h).await;
    assert_eq!(conv2, conv, "it joins the running convergence rollout");

    let (reason, detail) = off_reason(&h, "pos-format-store", "store-3").await.unwrap();
    assert_eq!(reason, "held");
    assert!(detail.contains("vendor swap on Friday"), "{detail}");
    assert!(held.poll(&h).await.is_none(), "a held site gets nothing");
    let ch = channel(&h, "pos-format-store").await;
    assert_eq!(ch["off_by_reason"]["held"], 1, "{ch}");

    // A re-keyed box with an empty state directory runs nothing anyone knows of: it
    // converges again.
    let (s, v) = h.post("/v1/sites/store-1/rekey", &h.admin, json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let mut rekeyed = Agent::enroll_with(&h, "store-1", &token).await;
    eventually("the re-keyed box to count as off the release", || async {
        off_reason(&h, "pos-format-store", "store-1").await
    })
    .await;
    // It still holds its completed rollout's assignment to the channel's release, which it
    // may act on: it installs through it (no convergence assignment replaces it).
    let (rollout, seq) = rekeyed.assignment(&h).await;
    assert_eq!(rollout, id, "the completed rollout's assignment");
    rekeyed.lease(&h, &rollout, seq).await;
    rekeyed.install(&h, &release).await;
    eventually("the re-keyed box on the channel's release", || async {
        off_reason(&h, "pos-format-store", "store-1")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // Rolling back the rollout that set the channel moves the channel back with it, so
    // convergence does not install again what the operator just took back.
    let (s, v) = h
        .post(
            &format!("/v1/rollouts/{id}/rollback"),
            &h.admin,
            json!({"reason": "receipts"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ch = channel(&h, "pos-format-store").await;
    assert_eq!(ch["channel"]["release_id"], "pos-2.4.0", "{ch}");
    assert!(
        h.rollout(&id).await["status_reason"]
            .as_str()
            .unwrap()
            .contains("channel pos-format-store moved back to pos-2.4.0"),
    );
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    assert!(audit.to_string().contains("channel.rollback"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_first_site_fails_pauses_says_why_and_resumes() {
    let h = Harness::new().await;
    h.publish("2.4.0", 24).await;
    let release = h.publish("2.5.0", 25).await;
    let mut a = Agent::enroll(&h, "store-1", json!({"format": "store"})).await;
    a.installed(&h, "pos-2.4.0", "2.4.0").await;
    let (s, v) = h
        .post(
            "/v1/channels",
            &h.admin,
            json!({"name": "stores", "stream": "pos", "selector": {"format": "store"},
                   "release": release, "max_concurrent": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (conv, seq) = a.assignment(&h).await;
    a.lease(&h, &conv, seq).await;
    a.failed(&h, &conv, &release, "prepare: no space left on device")
        .await;
    let ch = eventually("the channel's convergence to pause", || async {
        let v = channel(&h, "stores").await;
        (v["channel"]["paused"] == true).then_some(v)
    })
    .await;
    let why = ch["channel"]["convergence"]["reason"].as_str().unwrap();
    assert!(
        why.contains("convergence of channel stores paused")
            && why.contains("store-1")
            && why.contains("no space left on device"),
        "{why}"
    );
    let (reason, detail) = off_reason(&h, "stores", "store-1").await.unwrap();
    assert_eq!(reason, "failed", "{detail}");
    assert!(detail.contains("no space left"), "{detail}");

    // The dashboard shows it paused, with why, and resumes it from the channel's page.
    let mut web = WebClient::new(&h);
    web.login(&h.admin).await;
    let (s, _, page) = web.get("/ui/channels").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("id=\"channel-stores\"") && page.contains("paused"),
        "{page}"
    );
    let (_, _, page) = web.get("/ui/").await;
    assert!(
        page.contains("id=\"overview-channels\"") && page.contains("paused"),
        "{page}"
    );
    let (_, _, page) = web.get("/ui/channels/stores").await;
    assert!(
        page.contains("id=\"channel-paused\"")
            && page.contains("id=\"off-store-1\"")
            && page.contains("no space left on device"),
        "{page}"
    );
    let csrf = hidden(&page, "csrf");

    // An operator cannot abort a convergence rollout (the next pass would make another).
    let (s, v) = h
        .post(&format!("/v1/rollouts/{conv}/abort"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("pause it"));

    // Resume (from the dashboard): a new convergence rollout, the failed site tries again
    // and succeeds.
    let act = "/ui/channels/stores/actions/resume";
    let (s, _, _) = web.post(act, &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF token");
    let (s, headers, _) = web.post(act, &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/ui/channels/stores");
    let (conv2, _) = eventually("a new convergence assignment", || async {
        a.poll(&h).await.filter(|(r, _)| *r != conv)
    })
    .await;
    assert!(conv2.starts_with("converge-stores-"), "{conv2}");
    a.install(&h, &release).await;
    eventually("store-1 on the channel's release", || async {
        off_reason(&h, "stores", "store-1")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let (s, v) = h
        .post("/v1/channels/stores/resume", &h.admin, json!({}))
        .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_channel"),
        "{v}"
    );
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    assert!(audit.to_string().contains("channel.resume"), "{audit}");

    // Backwards only as a rollback, which the audit log names.
    let (s, v) = h
        .post(
            "/v1/channels/stores/set",
            &h.admin,
            json!({"release": "pos-2.4.0"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("rollback"),
        "{v}"
    );
    let (s, v) = h
        .post(
            "/v1/channels/stores/set",
            &h.admin,
            json!({"release": "pos-2.4.0", "rollback": true, "reason": "2.5 breaks printers"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["channel"]["release_id"], "pos-2.4.0");
    let (_, audit) = h.get("/v1/audit", &h.admin).await;
    let audit = audit.to_string();
    assert!(
        audit.contains("channel.rollback") && audit.contains("2.5 breaks printers"),
        "{audit}"
    );
    // The convergence of the old release ended; store-1 is sent to 2.4.0.
    let (conv3, _) = eventually("a convergence assignment to 2.4.0", || async {
        a.poll(&h).await.filter(|(r, _)| *r != conv2)
    })
    .await;
    assert!(conv3.starts_with("converge-stores-"), "{conv3}");
    assert_eq!(h.rollout(&conv2).await["status"], "aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_channels_are_refused_with_the_reason() {
    let h = Harness::new().await;
    let release = h.publish("2.5.0", 25).await;
    Agent::enroll(
        &h,
        "store-emea-1",
        json!({"format": "store", "region": "emea"}),
    )
    .await;
    let victor = h.token("victor", "viewer").await;
    let create = |body: Value| {
        let h = &h;
        async move { h.post("/v1/channels", &h.admin, body).await }
    };
    let (s, v) = create(json!({"name": "emea", "stream": "pos", "selector": {"region": "emea"}, "release": release})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    for (body, status, want, words) in [
        (
            json!({"name": "stores", "stream": "pos", "selector": {"format": "store"}}),
            StatusCode::CONFLICT,
            "channel_conflict",
            "site store-emea-1 matches both",
        ),
        (
            json!({"name": "emea", "stream": "pos", "selector": {"region": "apac"}}),
            StatusCode::CONFLICT,
            "channel_conflict",
            "already exists",
        ),
        (
            json!({"name": "Bad Name", "stream": "pos"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_channel",
            "name:",
        ),
        (
            json!({"name": "apac", "stream": "pos", "selector": {"region": "apac"}, "release": "pos-9"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_channel",
            "not published",
        ),
        (
            json!({"name": "k3s", "stream": "k3s", "release": release}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_channel",
            "is of stream \"pos\"",
        ),
        (
            json!({"name": "apac", "stream": "pos", "selector": {"region": "apac"}, "max_concurrent": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_channel",
            "max_concurrent",
        ),
        (
            json!({"name": "apac", "stream": "pos", "selector": {"region": 7}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_channel",
            "selector",
        ),
    ] {
        let (s, v) = create(body.clone()).await;
        assert_eq!((s, code(&v)), (status, want), "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(words),
            "{body}: {v}"
        );
    }
    let (s, _) = h
        .post(
            "/v1/channels",
            &victor,
            json!({"name": "apac", "stream": "pos", "selector": {"region": "apac"}}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h.get("/v1/channels/nowhere", &victor).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A plan may not make itself a convergence rollout.
    let (s, v) = h
        .post(
            "/v1/rollouts",
            &h.admin,
            json!({"plan": format!("converge = \"emea\"\n{PLAN}"), "format": "toml"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("converge"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_an_operator_creates_supersedes_convergence() {
    let h = Harness::new().await;
    let release = h.publish("2.5.0", 25).await;
    let a = Agent::enroll(&h, "store-1", json!({"format": "store"})).await;
    let (s, v) = h
        .post(
            "/v1/channels",
            &h.admin,
            json!({"name": "stores", "stream": "pos", "selector": {"format": "store"}, "release": release}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (conv, _) = a.assignment(&h).await;
    h.publish("2.6.0", 26).await;
    let id = h
        .create_rollout(&PLAN.replace("2.5.0", "2.6.0").replace("pos 2.5", "pos 2.6"))
        .await;
    assert_eq!(h.rollout(&conv).await["status"], "aborted");
    let created = h.rollout(&id).await["decisions"].to_string();
    assert!(
        created.contains(&format!("{conv} (channel stores)")),
        "{created}"
    );
    let (reason, detail) = off_reason(&h, "stores", "store-1").await.unwrap();
    assert_eq!(reason, "in_rollout", "{detail}");
    assert!(detail.contains(&id), "{detail}");
    assert!(
        a.poll(&h).await.is_none(),
        "nothing until the rollout starts"
    );
}
