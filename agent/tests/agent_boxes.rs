//! Boxes within a site, with real agent processes against a real coordinator over TLS on
//! 127.0.0.1: two boxes of one site (a server and an agent node) enroll under the same
//! site id with their own device keys and roles, each opens its own sessions and polls;
//! a third box reusing a box id is refused and told what to do.

mod common;

use common::{Coordinator, Site, eventually};
use fleetwave_shared::protocol::operator as api;

async fn enroll(site: &Site, token: &str) -> (i32, String, String) {
    site.cli(&["enroll", "--token", token, "--site", "store-1"])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_boxes_of_one_site_enroll_with_their_own_keys_and_both_poll() {
    let coordinator = Coordinator::start().await;
    // One token for the store's boxes: bound to the site, a use per box.
    let created: api::EnrollmentTokenCreated = coordinator
        .post(
            api::paths::ENROLLMENT_TOKENS,
            &api::CreateEnrollmentToken {
                labels: [("cohort".to_string(), "pig".to_string())].into(),
                site_id: Some("store-1".into()),
                expires_in_secs: None,
                uses: Some(3),
            },
        )
        .await;
    let token = created.token;
    let server = Site::new("store-1", &coordinator);
    server.configure("[box]\nid = \"node-1\"\nrole = \"server\"\n");
    let agent = Site::new("store-1", &coordinator);
    agent.configure("[box]\nid = \"node-2\"\nrole = \"agent\"\n");
    for (site, said) in [
        (
            &server,
            "enrolled as box node-1 (role server) of site store-1",
        ),
        (
            &agent,
            "enrolled as box node-2 (role agent) of site store-1",
        ),
    ] {
        let (code, out, err) = enroll(site, &token).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(said), "{out}");
    }

    // A re-imaged node-2 that did not get a rekey token: refused, naming box and remedy.
    let again = Site::new("store-1", &coordinator);
    again.configure("[box]\nid = \"node-2\"\nrole = \"agent\"\n");
    let (code, out, err) = enroll(&again, &token).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("already has a box node-2") && err.contains("fleetwave site rekey store-1"),
        "{err}"
    );

    // Both daemons open sessions with their own keys and get poll answers.
    let enrolled_at = |site: &Site| {
        site.state()
            .meta("last_contact")
            .unwrap()
            .expect("enrollment records the contact")
    };
    let before = [enrolled_at(&server), enrolled_at(&agent)];
    let _server_daemon = server.run(&[]);
    let _agent_daemon = agent.run(&[]);
    for (site, before) in [(&server, &before[0]), (&agent, &before[1])] {
        eventually(
            "each box polls the coordinator with its own session",
            || async {
                let s = site.status().await;
                (s["site_id"] == "store-1" && s["last_contact"].as_str() != Some(before.as_str()))
                    .then_some(())
            },
        )
        .await;
        assert!(!site.logs().contains("bad_signature"), "{}", site.logs());
    }
    eventually("the coordinator sees the site", || async {
        coordinator.site("store-1").await.last_seen.map(|_| ())
    })
    .await;
}
