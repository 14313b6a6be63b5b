//! Webhooks over real processes: a coordinator process delivers signed events of a real
//! rollout to receiver processes on loopback that verify every signature; a receiver
//! answering 500 then 200 gets the event again with the same webhook-id; a redirect is not
//! followed; a huge answer does not hurt; a receiver holding a request does not delay
//! another endpoint; and a coordinator killed (SIGKILL) while a receiver holds a delivery
//! sends that same event, same webhook-id, again after its restart.

use std::path::{Path, PathBuf};

use fleetwave_e2e::release::DemoRelease;
use fleetwave_e2e::{
    Fleet, FleetSpec, PlanSpec, Process, Spawn, WaveSpec, bins, eventually_default, free_port,
};
use fleetwave_shared::protocol::operator::{
    CreateFreeze, CreateWebhook, CreatedWebhook, FreezeInfo, RolloutStatus, WebhookDeliveries,
    WebhookFormat,
};
use serde_json::Value;

/// One line of a receiver's `events.jsonl`.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    webhook_id: String,
    event: Value,
}

fn received(dir: &Path) -> Vec<Received> {
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            Received {
                path: v["path"].as_str().unwrap().to_string(),
                webhook_id: v["webhook_id"].as_str().unwrap().to_string(),
                event: serde_json::from_str(v["body"].as_str().unwrap()).expect("a JSON body"),
            }
        })
        .collect()
}

fn types(events: &[Received], path: &str) -> Vec<String> {
    events
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.event["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn endpoint(fleet: &Fleet, url: String, events: &[&str]) -> anyhow::Result<CreatedWebhook> {
    Ok(fleet.operator.post(
        "/v1/webhooks",
        &CreateWebhook {
            url,
            events: events.iter().map(|e| e.to_string()).collect(),
            format: WebhookFormat::Json,
            allow_insecure_http: true,
            description: "e2e".into(),
        },
    )?)
}

fn start_receiver(
    fleet: &Fleet,
    name: &str,
    port: u16,
    secrets: &[&str],
) -> anyhow::Result<(Process, PathBuf)> {
    let dir = fleet.dirs.work.join(name);
    std::fs::create_dir_all(&dir)?;
    let mut spawn = Spawn::new(
        name,
        bins::binary(bins::WEBHOOK_RECEIVER)?,
        &fleet.dirs.logs,
    )
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .arg("--dir")
    .arg(&dir);
    for s in secrets {
        spawn = spawn.args(["--secret", s]);
    }
    let process = spawn.start()?;
    eventually_default(&format!("{name} to listen"), || {
        anyhow::ensure!(dir.join("ready").exists(), "not ready yet");
        Ok(())
    })?;
    Ok((process, dir))
}

fn log(fleet: &Fleet, id: &str) -> anyhow::Result<WebhookDeliveries> {
    Ok(fleet
        .operator
        .get(&format!("/v1/webhooks/{id}/deliveries"))?)
}

#[test]
fn signed_events_reach_real_receivers_and_survive_a_coordinator_crash() -> anyhow::Result<()> {
    let spec = FleetSpec::cohorts(1, 0, 1, 0);
    let mut fleet = Fleet::start(spec)?;
    let (port_a, port_b) = (free_port()?, free_port()?);
    let all = [
        "rollout.created",
        "rollout.started",
        "wave.opened",
        "rollout.completed",
        "freeze.added",
    ];
    // Receiver A (the one that will hold a delivery) and receiver B (everything else).
    let main = endpoint(&fleet, format!("http://127.0.0.1:{port_a}/events"), &all)?;
    let other = endpoint(&fleet, format!("http://127.0.0.1:{port_b}/other"), &all)?;
    let flaky = endpoint(
        &fleet,
        format!("http://127.0.0.1:{port_b}/flaky"),
        &["rollout.created"],
    )?;
    let redirect = endpoint(
        &fleet,
        format!("http://127.0.0.1:{port_b}/redirect"),
        &["rollout.created"],
    )?;
    let huge = endpoint(
        &fleet,
        format!("http://127.0.0.1:{port_b}/huge"),
        &["rollout.created"],
    )?;
    let (_a, dir_a) = start_receiver(&fleet, "receiver-a", port_a, &[&main.secret])?;
    let (_b, dir_b) = start_receiver(
        &fleet,
        "receiver-b",
        port_b,
        &[&other.secret, &flaky.secret, &redirect.secret, &huge.secret],
    )?;

    // The receiver refuses a request it cannot verify.
    let bad = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port_a}/events"))
        .header("webhook-id", "msg_forged")
        .header("webhook-timestamp", "1614265330")
        .header("webhook-signature", "v1,AAAA")
        .body("{}")
        .send()?;
    assert_eq!(bad.status().as_u16(), 401);

    // A rollout in two waves: its events arrive, signed, at both receivers.
    let release = DemoRelease::good("1.0.0", 1);
    fleet.publish(&release)?;
    let plan = PlanSpec::new(
        "webhooks",
        &release.id,
        vec![
            WaveSpec::new("pigs").only("cohort", "pig"),
            WaveSpec::new("the rest"),
        ],
    );
    let rollout = fleet.rollout(&plan)?;
    fleet.wait_rollout_status(&rollout, RolloutStatus::Completed)?;
    let want = [
        "rollout.created",
        "rollout.started",
        "wave.opened",
        "wave.opened",
        "rollout.completed",
    ];
    for (dir, path) in [(&dir_a, "/events"), (&dir_b, "/other")] {
        eventually_default(&format!("the rollout's events at {path}"), || {
            let got = types(&received(dir), path);
            anyhow::ensure!(got == want, "{got:?}");
            Ok(())
        })?;
    }
    let events = received(&dir_a);
    for r in &events {
        assert_eq!(r.event["data"]["rollout_id"], rollout.as_str(), "{r:?}");
        assert_eq!(r.event["data"]["release_id"], release.id.as_str(), "{r:?}");
        assert!(r.webhook_id.starts_with("msg_"), "{r:?}");
    }
    let waves: Vec<&Value> = events
        .iter()
        .filter(|r| r.event["type"] == "wave.opened")
        .map(|r| &r.event["data"]["wave"])
        .collect();
    assert_eq!(waves, [&Value::from(0), &Value::from(1)]);

    // 500 then 200: the same event again, with the same webhook-id.
    eventually_default("the /flaky retry to be delivered", || {
        let got: Vec<Received> = received(&dir_b)
            .into_iter()
            .filter(|r| r.path == "/flaky")
            .collect();
        anyhow::ensure!(got.len() == 2, "{got:?}");
        assert_eq!(got[0].webhook_id, got[1].webhook_id);
        let d = log(&fleet, &flaky.webhook.id)?;
        anyhow::ensure!(d.deliveries[0].state == "delivered", "{d:?}");
        Ok(())
    })?;
    // A redirect is a failed attempt, never followed.
    let d = eventually_default("the redirect to be logged", || {
        let d = log(&fleet, &redirect.webhook.id)?;
        anyhow::ensure!(!d.attempts.is_empty(), "{d:?}");
        Ok(d)
    })?;
    assert_eq!(d.attempts[0].status, Some(302), "{d:?}");
    assert_eq!(d.deliveries[0].state, "pending", "{d:?}");
    assert!(!received(&dir_b).iter().any(|r| r.path == "/redirected"));
    // A huge answer is delivered; the coordinator reads only its start.
    eventually_default("/huge to be delivered", || {
        let d = log(&fleet, &huge.webhook.id)?;
        anyhow::ensure!(
            d.deliveries.first().is_some_and(|d| d.state == "delivered"),
            "{d:?}"
        );
        Ok(())
    })?;

    // Receiver A now holds what it receives. A freeze is added: its event reaches A, which
    // holds it, and B, which is not delayed by A (B has it while A has not answered).
    std::fs::write(dir_a.join("hold"), b"")?;
    let freeze: FreezeInfo = fleet.operator.post(
        "/v1/freezes",
        &CreateFreeze {
            start: None,
            end: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
            reason: "webhook e2e".into(),
        },
    )?;
    let held = eventually_default("receiver A to hold the freeze event", || {
        let got: Vec<Received> = received(&dir_a)
            .into_iter()
            .filter(|r| r.event["type"] == "freeze.added")
            .collect();
        anyhow::ensure!(got.len() == 1, "{got:?}");
        anyhow::ensure!(
            dir_a
                .join(format!("received-{}", got[0].webhook_id))
                .exists()
        );
        Ok(got[0].clone())
    })?;
    assert_eq!(held.event["data"]["freeze_id"], freeze.id.as_str());
    eventually_default("receiver B to get the freeze event while A holds", || {
        anyhow::ensure!(
            types(&received(&dir_b), "/other").contains(&"freeze.added".to_string()),
            "not yet"
        );
        Ok(())
    })?;
    assert!(
        !dir_a.join(format!("answered-{}", held.webhook_id)).exists(),
        "receiver A answered while holding"
    );

    // The coordinator dies with the delivery in flight; A then answers into the void.
    fleet.coordinator.process.kill9()?;
    std::fs::remove_file(dir_a.join("hold"))?;
    eventually_default("receiver A to let the held request go", || {
        anyhow::ensure!(dir_a.join(format!("answered-{}", held.webhook_id)).exists());
        Ok(())
    })?;
    fleet.coordinator.process.restart()?;
    eventually_default("the coordinator to answer again", || {
        let status = fleet.operator.probe("/healthz")?;
        anyhow::ensure!(status == 200, "/healthz answered {status}");
        Ok(())
    })?;
    // Delivered again after the restart: the same event with the same webhook-id.
    eventually_default(
        "the freeze event to be delivered again after the restart",
        || {
            let again: Vec<Received> = received(&dir_a)
                .into_iter()
                .filter(|r| r.webhook_id == held.webhook_id)
                .collect();
            anyhow::ensure!(again.len() == 2, "{again:?}");
            assert_eq!(again[0].event, again[1].event);
            let d = log(&fleet, &main.webhook.id)?;
            let delivery = d
                .deliveries
                .iter()
                .find(|x| x.id == held.webhook_id)
                .ok_or_else(|| anyhow::anyhow!("{d:?}"))?;
            anyhow::ensure!(delivery.state == "delivered", "{delivery:?}");
            Ok(())
        },
    )?;
    Ok(())
}
