//! The agent against a real coordinator over TLS on 127.0.0.1: enrollment, session and
//! poll; a full install of the demo app; a failing health check that rolls back; a
//! tampered artifact refused and reported; back-off when the long-poll limit is full.
//!
//! Needs `fleetwave-demo-app` built: `cargo build -p fleetwave-e2e --bin fleetwave-demo-app`.

mod common;

use common::{Coordinator, Site, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_opens_a_session_polls_and_reports() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("store-1", &coordinator);
    site.enroll(&coordinator).await;
    let key = site.dir.path().join("state/device.key");
    let mode = std::fs::metadata(&key).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let status = site.status().await;
    assert_eq!(status["site_id"], "store-1");
    assert_eq!(status["root_version"], 1);

    // Enrolling again is refused and says why.
    let (code, _, err) = site
        .cli(&["enroll", "--token", "x", "--site", "store-1"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("already enrolled"), "{err}");

    let mut agent = site.run(&[]);
    // The coordinator sees the site poll and receives its health heartbeat.
    eventually(
        "the coordinator records a poll and a health report",
        || async {
            let info = coordinator.site("store-1").await;
            (info.last_seen.is_some() && info.healthy.is_some()).then_some(())
        },
    )
    .await;
    eventually("the outbox drains", || async {
        let s = site.status().await;
        (s["last_contact"].is_string() && s["queued_reports"]["total"] == 0).then_some(())
    })
    .await;
    // SIGTERM (what systemd sends) stops it cleanly, even in the middle of a long poll.
    let pid = agent.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let exit = agent.wait().await.unwrap();
    assert!(exit.success(), "{exit:?}\n{}", site.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_the_demo_app_then_rolls_back_an_unhealthy_release() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("store-2", &coordinator);
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[]);

    coordinator
        .publish_demo("1.0.0", 1, true, false, &site)
        .await;
    let first = coordinator.rollout("demo-1.0.0").await;
    eventually("demo 1.0.0 committed", || async {
        let s = site.status().await;
        let ok = s["installed"]
            .as_array()
            .is_some_and(|i| i.iter().any(|r| r["release_id"] == "demo-1.0.0"));
        ok.then_some(())
    })
    .await;
    assert_eq!(
        site.app_version().await.as_deref(),
        Some("1.0.0"),
        "{}",
        site.logs()
    );
    eventually("the coordinator knows demo 1.0.0 is installed", || async {
        let info = coordinator.site("store-2").await;
        info.installed
            .get("demo")
            .is_some_and(|i| i.release_id.as_deref() == Some("demo-1.0.0"))
            .then_some(())
    })
    .await;

    assert_eq!(
        coordinator.rollout_finished(&first).await,
        fleetwave_shared::protocol::operator::RolloutStatus::Completed
    );

    // 2.0.0 fails its health check after the switch: the agent switches back.
    coordinator
        .publish_demo("2.0.0", 2, false, false, &site)
        .await;
    coordinator.rollout("demo-2.0.0").await;
    let last = eventually("the 2.0.0 install ends", || async {
        let s = site.status().await;
        let last = s["last_install"].clone();
        (last["release_id"] == "demo-2.0.0" && last["outcome"].is_string()).then_some(last)
    })
    .await;
    assert_eq!(last["outcome"], "rolled_back", "{}", site.logs());
    let s = site.status().await;
    assert_eq!(s["installed"][0]["release_id"], "demo-1.0.0");
    eventually("the old version runs again", || async {
        (site.app_version().await.as_deref() == Some("1.0.0")).then_some(())
    })
    .await;
    agent.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_artifact_is_refused_and_reported() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("store-3", &coordinator);
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[]);
    coordinator
        .publish_demo("1.0.0", 1, true, true, &site)
        .await;
    coordinator.rollout("demo-1.0.0").await;
    let last = eventually("the install attempt ends", || async {
        let s = site.status().await;
        let last = s["last_install"].clone();
        last["outcome"].is_string().then_some(last)
    })
    .await;
    assert_eq!(last["outcome"], "abandoned", "{}", site.logs());
    assert!(
        last["detail"].as_str().unwrap_or("").contains("artifact"),
        "{last}"
    );
    let s = site.status().await;
    assert_eq!(
        s["installed"],
        serde_json::json!([]),
        "nothing was installed"
    );
    // Nothing was unpacked.
    assert!(!site.dir.path().join("apps/demo/1.0.0").exists());
    // The refusal reached the coordinator (the outbox drained after it was queued).
    eventually("reports delivered", || async {
        (site.status().await["queued_reports"]["total"] == 0).then_some(())
    })
    .await;
    agent.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_assignment_switches_back_to_the_previous_release() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("store-4", &coordinator);
    site.enroll(&coordinator).await;
    let mut agent = site.run(&[]);
    let committed = |release: &'static str| {
        let site = &site;
        async move {
            eventually(&format!("{release} committed"), || async {
                let s = site.status().await;
                s["installed"]
                    .as_array()
                    .is_some_and(|i| i.iter().any(|r| r["release_id"] == release))
                    .then_some(s)
            })
            .await
        }
    };
    coordinator
        .publish_demo("1.0.0", 1, true, false, &site)
        .await;
    let first = coordinator.rollout("demo-1.0.0").await;
    committed("demo-1.0.0").await;
    coordinator.rollout_finished(&first).await;
    coordinator
        .publish_demo("2.0.0", 2, true, false, &site)
        .await;
    let second = coordinator.rollout("demo-2.0.0").await;
    committed("demo-2.0.0").await;

    // The operator rolls the rollout back: a signed rollback assignment to 1.0.0.
    let _: serde_json::Value = coordinator
        .post(
            &format!("/v1/rollouts/{second}/rollback"),
            &serde_json::json!({"reason": "test"}),
        )
        .await;
    let status = committed("demo-1.0.0").await;
    assert_eq!(status["installed"][0]["previous_release_id"], "demo-2.0.0");
    assert_eq!(status["assignment"]["rollback"], true, "{status}");
    eventually("demo 1.0.0 answers again", || async {
        (site.app_version().await.as_deref() == Some("1.0.0")).then_some(())
    })
    .await;
    agent.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_uses_etags_reopens_expired_sessions_and_pins_the_fleet_ca() {
    use fleetwave_agent::client::{PollAnswer, Session, http_client};
    use fleetwave_agent::config::Config;
    use std::time::Duration;

    let mut coordinator = Coordinator::start().await;
    let site = Site::new("store-5", &coordinator);
    site.enroll(&coordinator).await;
    let config = Config::load(&site.config).unwrap();
    let key = fleetwave_shared::keys::read_private_key(&site.dir.path().join("state/device.key"))
        .unwrap();
    let session = Session::new(
        http_client(&config.coordinator).unwrap(),
        &coordinator.url,
        "store-5",
        key.clone(),
    );
    let timeout = Duration::from_secs(10);
    let PollAnswer::Changed { response, etag, .. } =
        session.poll(0, 1, None, timeout).await.unwrap()
    else {
        panic!("the first poll has no ETag to match");
    };
    assert!(response.assignment.is_none());
    let etag = etag.expect("the coordinator sends an ETag");
    assert!(matches!(
        session.poll(0, 1, Some(&etag), timeout).await.unwrap(),
        PollAnswer::NotModified { .. }
    ));

    // Sessions live in the coordinator's memory: after a restart the old token gets 401
    // and the client opens a new session by itself.
    coordinator.restart().await;
    session.poll(0, 1, None, timeout).await.unwrap();

    // A CA other than the fleet's is not trusted, even for the right server.
    let other = Coordinator::start().await;
    let mut pinned_elsewhere = config.coordinator.clone();
    pinned_elsewhere.ca_file = other.ca.clone();
    let stranger = Session::new(
        http_client(&pinned_elsewhere).unwrap(),
        &coordinator.url,
        "store-5",
        key,
    );
    let err = stranger.poll(0, 1, None, timeout).await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

/// The `retry_in_secs` values of the agent's "poll failed" log lines that name `code`.
fn poll_retry_delays(logs: &str, code: &str) -> Vec<f64> {
    logs.lines()
        .filter(|l| l.contains("poll failed") && l.contains(code))
        .filter_map(|l| {
            let rest = &l[l.find("retry_in_secs=")? + "retry_in_secs=".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}

/// The coordinator's long-poll limit is full: it answers `503 overloaded` with
/// `Retry-After: 1`. The agent honours that as the least delay but keeps backing off
/// (2 s, 4 s, 8 s... with jitter) instead of coming back every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_long_poll_limit_makes_the_agent_back_off_not_hammer() {
    use fleetwave_agent::client::{ClientError, PollAnswer, Session, http_client};
    use fleetwave_agent::config::Config;
    use std::time::Duration;

    let coordinator = Coordinator::start_tuned(|c| c.limits.max_long_polls = 1).await;
    let session_for = |site: &Site| {
        let config = Config::load(&site.config).unwrap();
        let key =
            fleetwave_shared::keys::read_private_key(&site.dir.path().join("state/device.key"))
                .unwrap();
        Session::new(
            http_client(&config.coordinator).unwrap(),
            &coordinator.url,
            &site.id,
            key,
        )
    };
    let timeout = Duration::from_secs(10);

    // Another box holds the only long-poll slot, polling again as soon as it is answered.
    let holder = Site::new("holder", &coordinator);
    holder.enroll(&coordinator).await;
    let held = session_for(&holder);
    let PollAnswer::Changed { etag, .. } = held.poll(0, 1, None, timeout).await.unwrap() else {
        panic!("the first poll has no ETag to match");
    };
    let etag = etag.expect("an ETag");
    let holding = tokio::spawn(async move {
        loop {
            let _ = held.poll(60, 1, Some(&etag), timeout).await;
        }
    });

    let site = Site::new("store-6", &coordinator);
    site.enroll(&coordinator).await;
    let probe = session_for(&site);
    eventually("the long-poll limit is full", || async {
        match probe.poll(0, 1, None, timeout).await {
            Err(ClientError::Status {
                status: 503,
                retry_after,
                ref code,
                ..
            }) => {
                assert_eq!(code, "overloaded");
                assert_eq!(retry_after, Some(Duration::from_secs(1)));
                Some(())
            }
            _ => None,
        }
    })
    .await;

    let config = std::fs::read_to_string(&site.config).unwrap().replace(
        "backoff_min_secs = 1\nbackoff_max_secs = 2",
        "backoff_min_secs = 2\nbackoff_max_secs = 60",
    );
    std::fs::write(&site.config, config).unwrap();
    let mut agent = site.run(&[]);
    let delays = eventually("three polls refused as overloaded", || async {
        let d = poll_retry_delays(&site.logs(), "overloaded");
        (d.len() >= 3).then_some(d)
    })
    .await;
    // Never back after Retry-After's 1 s alone: the back-off (from 2 s) is the floor ...
    assert!(delays.iter().all(|d| *d >= 2.0), "{delays:?}");
    // ... and it grows with every refusal (2-4 s, 4-8 s, 8-16 s).
    assert!(delays[1] >= 4.0 && delays[2] >= 8.0, "{delays:?}");
    agent.kill().await.unwrap();
    holding.abort();
}

/// A TCP relay on 127.0.0.1 in front of `to` that counts the connections it accepted.
async fn counting_relay(
    to: std::net::SocketAddr,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (url, count)
}

/// Sessions that expire every few seconds (some while a long poll is parked): each `401`
/// opens exactly one new session, and the agent keeps using its kept-alive TLS
/// connection for polls, reports and handshakes instead of opening one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_sessions_reopen_once_each_and_requests_reuse_connections() {
    use std::sync::atomic::Ordering;

    let coordinator = Coordinator::start_tuned(|c| c.sessions.ttl_secs = 3).await;
    let site = Site::new("store-7", &coordinator);
    site.enroll(&coordinator).await;
    let (relay_url, connections) = counting_relay(coordinator.addr).await;
    let config = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace(&coordinator.url, &relay_url);
    std::fs::write(&site.config, config).unwrap();

    let mut agent = site.run(&[]);
    let count = |logs: &str, what: &str| logs.matches(what).count();
    let logs = eventually("four sessions expired and were reopened", || async {
        let logs = site.logs();
        (count(&logs, "session no longer valid; opening a new one") >= 4
            && count(&logs, "round done") >= 6)
            .then_some(logs)
    })
    .await;
    let expired = count(&logs, "session no longer valid; opening a new one");
    let opened = count(&logs, "session opened");
    // One handshake at start, then exactly one per 401 (the last may still be under way).
    assert!(
        opened >= expired && opened <= expired + 1,
        "{expired} expired, {opened} opened\n{logs}"
    );
    assert!(!logs.contains("poll failed"), "{logs}");
    // Over 16 requests (6 polls, 6 report batches, 4 handshakes, 4 repeated requests) went
    // over kept-alive connections. The HTTP pool may open a second one now and then (a
    // request that starts before the previous connection is back in the pool races a new
    // connect); without reuse there would be one per request.
    let opened_connections = connections.load(Ordering::SeqCst);
    assert!(opened_connections <= 3, "{opened_connections}\n{logs}");
    agent.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_coordinator_when_the_first_cannot_be_reached() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("store-1", &coordinator);
    // The first coordinator listed is down (nothing listens there); the second is up.
    let dead = format!("https://{}", common::free_addr());
    let text = std::fs::read_to_string(&site.config).unwrap().replacen(
        &format!("url = \"{}\"", coordinator.url),
        &format!("url = \"{dead}\"\nalso = [\"{}\"]", coordinator.url),
        1,
    );
    std::fs::write(&site.config, text).unwrap();
    // Enrollment goes to the second.
    site.enroll(&coordinator).await;
    let _agent = site.run(&[]);
    eventually(
        "the site is seen and healthy through the second coordinator",
        || async {
            let info = coordinator.site("store-1").await;
            (info.last_seen.is_some() && info.healthy.is_some()).then_some(())
        },
    )
    .await;
    eventually("the outbox drains", || async {
        let s = site.status().await;
        (s["queued_reports"]["total"] == 0 && s["last_contact"].is_string()).then_some(())
    })
    .await;
    assert!(
        site.logs().contains("failing over"),
        "no failover logged:\n{}",
        site.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_fallback_coordinator_is_refused_with_its_key() {
    let coordinator = Coordinator::start().await;
    let site = Site::new("store-1", &coordinator);
    site.configure("");
    let text = std::fs::read_to_string(&site.config).unwrap().replacen(
        &format!("url = \"{}\"", coordinator.url),
        &format!(
            "url = \"{}\"\nalso = [\"http://10.0.0.9:8443\"]",
            coordinator.url
        ),
        1,
    );
    std::fs::write(&site.config, text).unwrap();
    let (code, _, err) = site.cli(&["config", "check"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("coordinator.also"), "{err}");
}
