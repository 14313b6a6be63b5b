//! Golden-signal analysis in the wave gate, against a real coordinator (TLS, SQLite,
//! controller task) with an adjustable clock: agents send their signal minutes with their
//! reports; while the canary wave bakes, its upgraded sites are compared with the sites
//! still on the previous release. A degraded release halts (and rolls back) with the
//! reason naming the signal, both medians, the effect and the p-value; a healthy one
//! passes; too few upgraded sites is inconclusive, never a halt.

mod common;

use std::time::Duration;

use common::analysis::{decisions, fleet, send_minutes};
use common::{Harness, eventually};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_wave_halts_and_rolls_back_naming_the_signal() {
    let h = Harness::new().await;
    let f = fleet(&h, 6, 5).await;
    // Error ratio 5 % on the new release against 1 % on the old: health checks pass.
    send_minutes(&h, &f, 10, 0.05).await;
    let halted = eventually("the analysis to halt the rollout", || async {
        let r = h.rollout(&f.rollout).await;
        (r["status"] == "rolled_back").then_some(r)
    })
    .await;
    let reason = halted["status_reason"].as_str().unwrap().to_string();
    for words in [
        "halted at wave 0 (\"canary\")",
        "golden-signal analysis failed",
        "error_ratio: fail",
        "upgraded median 0.05",
        "vs control 0.01",
        "p = ",
        "auto_rollback sends 6 site(s) back",
    ] {
        assert!(reason.contains(words), "{words:?} missing in: {reason}");
    }
    let timeline = decisions(&halted);
    assert!(
        timeline.iter().any(|(k, r)| k == "halt" && r == &reason),
        "{timeline:?}"
    );
    assert!(
        timeline.iter().filter(|(k, _)| k == "open_wave").count() == 1,
        "only the canary wave opened: {timeline:?}"
    );
    // The same numbers, one by one, in the status of the halted rollout.
    let a = &halted["waves"][0]["analysis"];
    assert_eq!(a.as_array().map(Vec::len), Some(1), "{a}");
    let a = &a[0];
    assert_eq!(a["signal"], "error_ratio");
    assert_eq!(a["verdict"], "fail");
    assert_eq!(a["direction"], "increase_is_bad");
    assert_eq!(a["tolerance"], json!({"absolute": 0.01}));
    let words = a["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("golden-signal analysis failed: {words}")),
        "{words} / {reason}"
    );
    for (group, median) in [("upgraded", 0.05), ("control", 0.01)] {
        let g = &a[group];
        // The judgement that halted may have come while the last sites' minutes were
        // still arriving: at least min_sites, each with its ten minutes.
        let sites = g["sites"].as_u64().unwrap();
        assert!((5..=6).contains(&sites), "{g}");
        // ...and the last site's minutes may be arriving too: at most ten a site.
        let samples = g["samples"].as_u64().unwrap();
        assert!((sites..=10 * sites).contains(&samples), "{g}");
        let m = g["median"].as_f64().unwrap();
        assert!((m - median).abs() < 0.004, "{group} median {m}");
        let s = &g["spread"];
        let q: Vec<f64> = ["min", "q1", "median", "q3", "max"]
            .iter()
            .map(|k| s[k].as_f64().unwrap())
            .collect();
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "{s}");
    }
    let from = format!(
        "from {} upgraded and {} control sites",
        a["upgraded"]["sites"], a["control"]["sites"]
    );
    assert!(reason.contains(&from), "{from:?} missing in: {reason}");
    let effect = a["effect"].as_f64().unwrap();
    assert!((effect - 0.04).abs() < 0.004, "effect {effect}");
    assert!(a["relative_effect"].as_f64().unwrap() > 3.0, "{a}");
    assert!(a["p_value"].as_f64().unwrap() < 0.05, "{a}");
    assert_eq!(a["minutes"], 10, "{a}");
    assert!(
        halted["waves"][1].get("analysis").is_none(),
        "wave 1 never opened"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_wave_passes_its_analysis_and_the_next_wave_opens() {
    let h = Harness::new().await;
    let mut f = fleet(&h, 6, 5).await;
    send_minutes(&h, &f, 10, 0.01).await;
    // Through the bake: the canaries report healthy after it.
    h.clock.advance(Duration::from_secs(30 * 60));
    for a in f.canary.iter_mut() {
        a.health(&h, true).await;
    }
    let opened = eventually("the next wave to open", || async {
        let r = h.rollout(&f.rollout).await;
        decisions(&r)
            .into_iter()
            .find(|(k, r)| k == "open_wave" && r.contains("opening wave 1"))
    })
    .await;
    let reason = opened.1;
    assert!(
        reason.contains("analysis passed: error_ratio: pass"),
        "{reason}"
    );
    let r = h.rollout(&f.rollout).await;
    assert_eq!(r["status"], "running");
    // The wave that passed keeps its last verdict in the status.
    let a = &r["waves"][0]["analysis"][0];
    assert_eq!(a["verdict"], "pass", "{a}");
    assert_eq!(a["upgraded"]["sites"], 6, "{a}");
    assert!(a["p_value"].as_f64().unwrap() > 0.05, "{a}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_upgraded_sites_is_inconclusive_never_a_halt() {
    let h = Harness::new().await;
    // Three canaries, five needed per group: even a 5 % error ratio cannot be judged.
    let mut f = fleet(&h, 3, 5).await;
    send_minutes(&h, &f, 10, 0.05).await;
    let waiting = eventually("the wait to name the inconclusive analysis", || async {
        let r = h.rollout(&f.rollout).await;
        let gate = r["waves"][0]["gate"].as_str()?.to_string();
        // The verdicts of the minute after the samples arrived (an earlier pass may have
        // judged before they did: then no site has samples yet).
        gate.contains("too few sites with samples yet: 3 upgraded and 6 control")
            .then_some(gate)
    })
    .await;
    assert!(
        waiting.contains("error_ratio: inconclusive, too few sites with samples yet: 3 upgraded and 6 control, min_sites 5"),
        "{waiting}"
    );
    assert_eq!(h.rollout(&f.rollout).await["status"], "running");
    // At the end of the bake, inconclusive no longer holds the wave: it passes, saying so.
    h.clock.advance(Duration::from_secs(30 * 60));
    for a in f.canary.iter_mut() {
        a.health(&h, true).await;
    }
    let opened = eventually("the next wave to open", || async {
        decisions(&h.rollout(&f.rollout).await)
            .into_iter()
            .find(|(k, r)| k == "open_wave" && r.contains("opening wave 1"))
    })
    .await;
    assert!(
        opened
            .1
            .contains("analysis inconclusive at the end of the bake"),
        "{}",
        opened.1
    );
    h.stop().await;
}
