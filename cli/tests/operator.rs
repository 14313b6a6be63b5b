//! The online `fleetwave` commands against a real `fleetwave-coordinator` process (real TLS,
//! real SQLite file, in a temp dir on 127.0.0.1): every command group once, its human and
//! JSON output, and its error paths (a refusal by the server is exit 1 with one line naming
//! the status and code; a connection or usage problem is exit 2).
//!
//! The coordinator and agent binaries are taken from next to the `fleetwave` binary under
//! test: build them first with `cargo build --workspace --bins`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fleetwave");

fn sibling(name: &str) -> PathBuf {
    let p = Path::new(BIN).parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} not found: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A coordinator made by `init --dev-root`, serving on a free port; killed on drop.
struct Coordinator {
    dir: tempfile::TempDir,
    url: String,
    token: String,
    child: Child,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coordinator {
    fn start() -> Coordinator {
        Coordinator::start_with_config("")
    }

    /// As [`Coordinator::start`], with `extra` TOML appended to the configuration file.
    fn start_with_config(extra: &str) -> Coordinator {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cdir = dir.path().join("coordinator");
        let init = Command::new(sibling("fleetwave-coordinator"))
            .args([
                "init",
                "--dev-root",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--dir")
            .arg(&cdir)
            .output()
            .unwrap();
        assert!(init.status.success(), "init: {init:?}");
        let config = cdir.join("coordinator.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text + extra).unwrap();
        let log = std::fs::File::create(dir.path().join("coordinator.log")).unwrap();
        let child = Command::new(sibling("fleetwave-coordinator"))
            .arg("serve")
            .arg("--config")
            .arg(cdir.join("coordinator.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let token = std::fs::read_to_string(cdir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let c = Coordinator {
            dir,
            url: format!("https://127.0.0.1:{port}"),
            token,
            child,
        };
        let start = Instant::now();
        loop {
            let out = c.run(&["site", "list"]);
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "the coordinator did not answer: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    fn cdir(&self) -> PathBuf {
        self.dir.path().join("coordinator")
    }

    fn ca(&self) -> PathBuf {
        self.cdir().join("tls").join("ca.pem")
    }

    /// `fleetwave ARGS` with the URL, CA and admin token in the environment.
    fn run(&self, args: &[&str]) -> Output {
        self.run_as(&self.token, args)
    }

    fn run_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .current_dir(self.dir.path())
            .env("FLEETWAVE_URL", &self.url)
            .env("FLEETWAVE_CA", self.ca())
            .env("FLEETWAVE_TOKEN", token)
            .env("FLEETWAVE_PROFILE", self.dir.path().join("no-profile.toml"))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "fleetwave {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// Enrolls site `id` with `fleetwave-agent enroll` and a token made by the CLI.
    fn enroll(&self, id: &str, labels: &[&str]) {
        let mut args = vec!["token", "enroll", "create", "--site", id];
        for l in labels {
            args.push("--label");
            args.push(l);
        }
        let token = self.ok(&args).trim().to_string();
        assert!(token.starts_with("fwe_"), "{token}");
        let out = self.agent_enroll(id, id, &token);
        assert!(out.status.success(), "enroll {id}: {out:?}");
    }

    /// `fleetwave-agent enroll --token TOKEN` as site `id` from a fresh box whose state
    /// lives in `<temp>/<machine>`.
    fn agent_enroll(&self, id: &str, machine: &str, token: &str) -> Output {
        let site = self.dir.path().join(machine);
        std::fs::create_dir_all(&site).unwrap();
        let config = site.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[coordinator]\nurl = {:?}\nca_file = {:?}\n\n[agent]\nstate_dir = {:?}\nsite_id = {id:?}\nroot_file = {:?}\n",
                self.url,
                self.ca().display().to_string(),
                site.join("state").display().to_string(),
                self.cdir().join("root.1.json").display().to_string()
            ),
        )
        .unwrap();
        Command::new(sibling("fleetwave-agent"))
            .arg("--config")
            .arg(&config)
            .args(["enroll", "--token", token])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// Requires exit `code` and exactly one line on stderr; returns it.
fn fails(out: Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout {} stderr {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    err
}

#[test]
fn sites_tokens_and_audit() {
    let c = Coordinator::start();
    c.enroll("store-1", &["cohort=pig", "region=eu"]);
    c.enroll("store-2", &["cohort=dog", "region=us"]);

    // site list: a table for people, JSON for scripts, filters by label.
    let table = c.ok(&["site", "list"]);
    assert!(table.starts_with("SITE"), "{table}");
    assert!(
        table.contains("store-1") && table.contains("cohort=pig"),
        "{table}"
    );
    assert!(table.contains("2 site(s)"), "{table}");
    let pigs = c.json(&["site", "list", "--label", "cohort=pig"]);
    let ids: Vec<&str> = pigs
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["store-1"]);

    // site label / show / decommission / enable.
    c.ok(&["site", "label", "store-1", "city=lyon", "region-"]);
    let shown = c.json(&["site", "show", "store-1"]);
    assert_eq!(shown["labels"]["city"], "lyon");
    assert!(shown["labels"].get("region").is_none(), "{shown}");
    let text = c.ok(&["site", "show", "store-1"]);
    assert!(
        text.contains("site store-1") && text.contains("city=lyon"),
        "{text}"
    );
    let text = c.ok(&["site", "decommission", "store-2"]);
    assert!(text.contains("store-2 is now decommissioned"), "{text}");
    assert_eq!(
        c.json(&["site", "show", "store-2"])["state"],
        "decommissioned"
    );
    c.ok(&["site", "enable", "store-2"]);
    assert_eq!(c.json(&["site", "show", "store-2"])["state"], "active");
    let err = fails(c.run(&["site", "show", "no-such-site"]), 1);
    assert!(err.contains("404") && err.contains("not_found"), "{err}");
    let err = fails(c.run(&["site", "label", "store-1", "oops"]), 2);
    assert!(err.contains("KEY=VALUE"), "{err}");

    // token enroll create / list / revoke.
    let created = c.json(&[
        "token",
        "enroll",
        "create",
        "--uses",
        "3",
        "--expires-in",
        "2h",
    ]);
    let id = created["id"].as_str().unwrap().to_string();
    let list = c.ok(&["token", "enroll", "list"]);
    assert!(
        list.contains(&id) && list.contains("3/3") && list.contains("usable"),
        "{list}"
    );
    assert!(
        !list.contains(created["token"].as_str().unwrap()),
        "secrets are never listed"
    );
    c.ok(&["token", "enroll", "revoke", &id]);
    let list = c.json(&["token", "enroll", "list"]);
    let revoked = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap();
    assert_eq!(revoked["revoked"], true);

    // token operator create: a viewer may read but not change anything.
    let viewer = c.ok(&[
        "token", "operator", "create", "--name", "ci-read", "--role", "viewer",
    ]);
    let viewer = viewer.trim();
    assert!(viewer.starts_with("fwo_"), "{viewer}");
    assert!(c.run_as(viewer, &["site", "list"]).status.success());
    let err = fails(c.run_as(viewer, &["token", "enroll", "create"]), 1);
    assert!(err.starts_with("refused: ") && err.contains("403"), "{err}");
    let ops = c.ok(&["token", "operator", "list"]);
    assert!(ops.contains("ci-read") && ops.contains("viewer"), "{ops}");
    // A usage error is clap's (a few lines with a hint), exit 2.
    let out = c.run(&[
        "token", "operator", "create", "--name", "x", "--role", "god",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("release_manager"));

    // A wrong token and a wrong CA: a refusal (1) and a connection error (2).
    let err = fails(c.run_as("fwo_wrong", &["site", "list"]), 1);
    assert!(err.contains("401"), "{err}");
    let other_ca = tempfile::tempdir().unwrap();
    let init = Command::new(sibling("fleetwave-coordinator"))
        .args(["init", "--dev-root", "--dir"])
        .arg(other_ca.path().join("c"))
        .output()
        .unwrap();
    assert!(init.status.success());
    let out = Command::new(BIN)
        .args(["site", "list", "--url", &c.url, "--token", &c.token, "--ca"])
        .arg(other_ca.path().join("c/tls/ca.pem"))
        .env("FLEETWAVE_PROFILE", c.dir.path().join("no-profile.toml"))
        .output()
        .unwrap();
    let err = fails(out, 2);
    assert!(err.contains(&c.url), "{err}");
    let out = Command::new(BIN)
        .args(["site", "list"])
        .env_remove("FLEETWAVE_URL")
        .env("FLEETWAVE_PROFILE", c.dir.path().join("no-profile.toml"))
        .output()
        .unwrap();
    let err = fails(out, 2);
    assert!(err.contains("FLEETWAVE_URL"), "{err}");

    // The profile file works instead of flags and environment.
    let profile = c.dir.path().join("cli.toml");
    std::fs::write(
        &profile,
        format!(
            "url = {:?}\ntoken_file = \"coordinator/admin.token\"\nca = \"coordinator/tls/ca.pem\"\n",
            c.url
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["site", "list", "--json"])
        .env_remove("FLEETWAVE_URL")
        .env_remove("FLEETWAVE_TOKEN")
        .env_remove("FLEETWAVE_CA")
        .env("FLEETWAVE_PROFILE", &profile)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // audit: every change above, newest first, with who did it.
    let audit = c.json(&["audit", "--limit", "200"]);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "site.relabel",
        "site.decommission",
        "site.reenable",
        "enrollment_token.revoke",
        "operator_token.create",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let text = c.ok(&["audit"]);
    assert!(
        text.contains("site.decommission") && text.contains("store-2"),
        "{text}"
    );
}

/// A re-imaged box: a batch token cannot take the enrolled site over (and says to use
/// `site rekey`); `site rekey` prints a token bound to the site that enrolls the new box
/// once, and the audit log says who asked for it.
#[test]
fn site_rekey_is_the_only_way_to_replace_an_enrolled_sites_key() {
    let c = Coordinator::start();
    c.enroll("store-1", &["cohort=pig"]);
    let key_before = c.json(&["site", "show", "store-1"])["device_key"].clone();

    // An installer's batch token creates new sites only.
    let batch = c.ok(&["token", "enroll", "create", "--uses", "50"]);
    let out = c.agent_enroll("store-1", "intruder", batch.trim());
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("site_exists") && err.contains("fleetwave site rekey store-1"),
        "{err}"
    );
    assert_eq!(
        c.json(&["site", "show", "store-1"])["device_key"],
        key_before
    );
    // Nor does a token made for the site by `token enroll create --site`.
    let err = fails(
        c.run(&["token", "enroll", "create", "--site", "store-1"]),
        1,
    );
    assert!(
        err.contains("409") && err.contains("site_exists") && err.contains("site rekey"),
        "{err}"
    );

    // site rekey: the secret on stdout (one line), what to do with it on stderr.
    let out = c.run(&["site", "rekey", "store-1", "--expires-in", "1h"]);
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("fwe_"), "{token}");
    let hint = String::from_utf8_lossy(&out.stderr);
    assert!(
        hint.contains("fleetwave-agent enroll --site store-1"),
        "{hint}"
    );
    let out = c.agent_enroll("store-1", "reimaged", &token);
    assert!(out.status.success(), "{out:?}");
    let after = c.json(&["site", "show", "store-1"]);
    assert_ne!(after["device_key"], key_before);
    assert_eq!(after["labels"]["cohort"], "pig");
    // Once only.
    let out = c.agent_enroll("store-1", "again", &token);
    assert!(!out.status.success(), "{out:?}");
    // The token list shows it bound to the site and used up.
    let list = c.json(&["token", "enroll", "list"]);
    let bound: Vec<_> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["site_id"] == "store-1" && t["uses_total"] == 1)
        .collect();
    assert_eq!(
        bound.len(),
        2,
        "the first enrollment's and the rekey's: {list}"
    );
    assert!(bound.iter().all(|t| t["uses_left"] == 0), "{list}");
    // Audited.
    let audit = c.json(&["audit"]);
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "site.rekey")
        .unwrap_or_else(|| panic!("no site.rekey in {audit}"));
    assert_eq!(entry["target"], "store-1");
    // Unknown sites: 404, exit 1.
    let err = fails(c.run(&["site", "rekey", "store-404"]), 1);
    assert!(err.contains("404"), "{err}");
}

#[test]
fn releases_artifacts_roots_and_rollouts() {
    let c = Coordinator::start();
    c.enroll("store-1", &["cohort=pig"]);
    c.enroll("store-2", &["cohort=general"]);
    let work = c.dir.path();

    // artifact upload: prints the sha256 and the URL for a manifest.
    std::fs::write(work.join("app.tar.gz"), b"not really a tarball, but bytes").unwrap();
    let up = c.ok(&["artifact", "upload", "app.tar.gz"]);
    let sha = up
        .lines()
        .find_map(|l| l.strip_prefix("sha256 "))
        .unwrap()
        .to_string();
    assert_eq!(sha.len(), 64);
    assert!(up.contains(&format!("/v1/artifacts/{sha}")), "{up}");
    let err = fails(c.run(&["artifact", "upload", "missing.tar.gz"]), 2);
    assert!(err.contains("missing.tar.gz"), "{err}");

    // release sign (offline) then publish, list, show.
    sign_app_release(&c);
    let published = c.ok(&["release", "publish", "r.json"]);
    assert!(
        published.contains("published release app-1.0.0"),
        "{published}"
    );
    let err = fails(c.run(&["release", "publish", "r.json"]), 1);
    assert!(err.contains("409"), "publishing twice is a conflict: {err}");
    // Signed by a key the root does not list under release: refused, exit 1.
    let rogue = c.cdir().join("offline-keys/root.key");
    c.ok(&[
        "release",
        "sign",
        "--key",
        rogue.to_str().unwrap(),
        "release.toml",
        "--out",
        "rogue.json",
    ]);
    let err = fails(c.run(&["release", "publish", "rogue.json"]), 1);
    assert!(
        err.contains("422") && err.contains("release_refused"),
        "{err}"
    );
    let list = c.ok(&["release", "list"]);
    assert!(
        list.contains("app-1.0.0") && list.contains("1.0.0"),
        "{list}"
    );
    let show = c.ok(&["release", "show", "app-1.0.0"]);
    assert!(
        show.contains(&sha) && show.contains("counter:    1"),
        "{show}"
    );

    // root publish: version 2 of the root, signed by the version-1 root key.
    let keys = c.cdir().join("offline-keys");
    c.ok(&[
        "root",
        "init",
        "--root-key",
        keys.join("root.key.pub").to_str().unwrap(),
        "--release-key",
        keys.join("release.key.pub").to_str().unwrap(),
        "--coordinator-key",
        c.cdir().join("coordinator.key.pub").to_str().unwrap(),
        "--version",
        "2",
        "--out",
        "root2.json",
    ]);
    c.ok(&[
        "root",
        "sign",
        "--key",
        keys.join("root.key").to_str().unwrap(),
        "--out",
        "root2.env.json",
        "root2.json",
    ]);
    let out = c.ok(&["root", "publish", "root2.env.json"]);
    assert!(out.contains("published root version 2"), "{out}");
    let err = fails(c.run(&["root", "publish", "root2.env.json"]), 1);
    assert!(err.contains("root"), "{err}");
    let roots = c.json(&["root", "list"]);
    assert_eq!(roots["roots"].as_array().unwrap().len(), 2, "{roots}");

    // rollout create (a plan with a bad field names it), start, pause, resume, skip,
    // approve (error path), status, list, abort; then rollback of a second rollout.
    std::fs::write(
        work.join("bad-plan.toml"),
        "name = \"x\"\nrelease = \"app-1.0.0\"\n[[waves]]\nname = \"all\"\ngate = { sucess_ratio = 1.0 }\n",
    )
    .unwrap();
    let err = fails(c.run(&["rollout", "create", "bad-plan.toml"]), 1);
    assert!(err.contains("sucess_ratio"), "{err}");
    std::fs::write(
        work.join("plan.toml"),
        "name = \"app 1.0.0\"\nrelease = \"app-1.0.0\"\n\n[[waves]]\nname = \"pigs\"\nselector = { cohort = \"pig\" }\ngate = { bake = \"1h\" }\n\n[[waves]]\nname = \"rest\"\n",
    )
    .unwrap();
    let created = c.json(&["rollout", "create", "plan.toml"]);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["status"], "pending");
    assert_eq!(created["waves"].as_array().unwrap().len(), 2);
    let started = c.ok(&["rollout", "start", &id]);
    assert!(started.contains("RUNNING"), "{started}");
    assert!(
        started.contains("pigs") && started.contains("timeline:"),
        "{started}"
    );
    assert_eq!(
        c.json(&["rollout", "pause", &id, "--reason", "lunch"])["status"],
        "paused"
    );
    assert_eq!(c.json(&["rollout", "resume", &id])["status"], "running");
    let skipped = c.json(&["rollout", "skip", &id, "--site", "store-1"]);
    // A skipped site needs no attention: the view counts it but does not list it.
    assert!(
        skipped["sites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["site_id"] != "store-1"),
        "{skipped}"
    );
    assert!(skipped["sites_omitted"].as_u64().unwrap() >= 1, "{skipped}");
    let every = c.json(&["rollout", "status", &id, "--sites"]);
    assert_eq!(every["sites_omitted"], 0, "{every}");
    let store1 = every["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site_id"] == "store-1")
        .unwrap()
        .clone();
    assert_eq!(store1["state"], "skipped", "{every}");
    let brief = c.ok(&["rollout", "status", &id]);
    assert!(
        brief.contains("sites not listed; --sites lists every site"),
        "{brief}"
    );
    let err = fails(c.run(&["rollout", "approve", &id, "--wave", "7"]), 1);
    assert!(err.contains("wave 7"), "{err}");
    // Retry: the coordinator's refusal (nothing failed) is shown and exits 1; naming
    // neither a site nor a wave is a usage error (2).
    let err = fails(c.run(&["rollout", "retry", &id, "--site", "store-1"]), 1);
    assert!(
        err.contains("store-1") && err.contains("not retried"),
        "{err}"
    );
    let err = fails(c.run(&["rollout", "retry", &id, "--wave", "0"]), 1);
    assert!(err.contains("no failed site to retry"), "{err}");
    let usage = c.run(&["rollout", "retry", &id]);
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    assert!(
        String::from_utf8_lossy(&usage.stderr).contains("--site"),
        "{usage:?}"
    );
    let status = c.ok(&["rollout", "status", &id, "--sites"]);
    for word in ["WAVE", "GATE", "store-1", "skipped", "paused by", "started"] {
        assert!(status.contains(word), "{word} missing from:\n{status}");
    }
    let list = c.ok(&["rollout", "list"]);
    assert!(list.contains(&id), "{list}");
    let aborted = c.json(&["rollout", "abort", &id, "--reason", "demo over"]);
    assert_eq!(aborted["status"], "aborted");
    // Hold: shown by `site show` and `site list`, lifted by `site unhold`.
    let held = c.ok(&["site", "hold", "store-2", "--reason", "vendor visit"]);
    assert!(
        held.contains("HELD:") && held.contains("vendor visit"),
        "{held}"
    );
    assert!(c.ok(&["site", "list"]).contains("(held)"));
    let err = fails(c.run(&["site", "hold", "store-2", "--reason", ""]), 1);
    assert!(err.contains("reason"), "{err}");
    let lifted = c.ok(&["site", "unhold", "store-2"]);
    assert!(!lifted.contains("HELD:"), "{lifted}");

    // Channels: created, listed, shown with the sites off the release and why, changed,
    // deleted; an overlapping one is refused with the coordinator's reason.
    let made = c.ok(&[
        "channel",
        "create",
        "apps",
        "--stream",
        "app",
        "--release",
        "app-1.0.0",
    ]);
    assert!(
        made.contains("channel apps") && made.contains("app-1.0.0"),
        "{made}"
    );
    let shown = c.ok(&["channel", "show", "apps"]);
    assert!(
        shown.contains("Sites off the channel's release") && shown.contains("store-2"),
        "{shown}"
    );
    let listed = c.json(&["channel", "list"]);
    assert_eq!(listed["channels"][0]["name"], "apps", "{listed}");
    let err = fails(c.run(&["channel", "create", "more", "--stream", "app"]), 1);
    assert!(err.contains("matches both"), "{err}");
    let err = fails(
        c.run(&[
            "channel", "create", "x", "--stream", "app", "--label", "oops",
        ]),
        2,
    );
    assert!(err.contains("key=value"), "{err}");
    let changed = c.ok(&["channel", "set", "apps", "--max-concurrent", "3"]);
    assert!(changed.contains("3 at a time"), "{changed}");
    let changed = c.ok(&[
        "channel",
        "set",
        "apps",
        "--window",
        r#"{"start": "01:00", "end": "04:00"}"#,
    ]);
    assert!(changed.contains("01:00"), "{changed}");
    let err = fails(
        c.run(&[
            "channel",
            "set",
            "apps",
            "--window",
            r#"{"start": "25:00", "end": "04:00"}"#,
        ]),
        1,
    );
    assert!(err.contains("window:"), "{err}");
    assert!(c.ok(&["channel", "delete", "apps"]).contains("deleted"));

    // The rollout as one file for a review, as JSON and as Markdown.
    let x = c.json(&["rollout", "export", &id]);
    assert_eq!(x["rollout"]["status"], "aborted", "{x}");
    assert_eq!(x["release"]["id"], created["release_id"], "{x}");
    let audited: Vec<&str> = x["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for a in [
        "rollout.create",
        "rollout.start",
        "rollout.pause",
        "rollout.abort",
    ] {
        assert!(
            audited.contains(&a),
            "{a} missing from the export's audit: {audited:?}"
        );
    }
    c.ok(&["rollout", "export", &id, "--out", "review.md"]);
    let md = std::fs::read_to_string(c.dir.path().join("review.md")).unwrap();
    for word in [
        &format!("# Rollout {id} — aborted"),
        "## Waves",
        "## Timeline",
        "paused by",
        "## Audit",
        "`rollout.abort`",
        "## Versions",
        "## Plan",
        "```toml",
    ] {
        assert!(md.contains(word), "{word} missing from:\n{md}");
    }
    let err = fails(c.run(&["rollout", "export", "no-such-rollout"]), 1);
    assert!(err.contains("404"), "{err}");
    let err = fails(c.run(&["rollout", "resume", &id]), 1);
    assert!(
        err.contains("409"),
        "an aborted rollout cannot resume: {err}"
    );

    let second = c.json(&["rollout", "create", "plan.toml", "--start"]);
    let id2 = second["id"].as_str().unwrap().to_string();
    assert_eq!(second["status"], "running");
    let rolled = c.json(&["rollout", "rollback", &id2, "--reason", "changed our mind"]);
    assert_eq!(rolled["status"], "rolled_back", "{rolled}");

    let audit = c.ok(&["audit", "--limit", "100"]);
    for a in [
        "artifact.upload",
        "release.publish",
        "root.publish",
        "rollout.create",
        "rollout.start",
        "rollout.pause",
        "rollout.abort",
        "rollout.rollback",
    ] {
        assert!(audit.contains(a), "{a} missing from:\n{audit}");
    }
}

/// Signs and publishes release `app-1.0.0` (stream `app`) with the coordinator's offline
/// release key, as an operator would; returns its id.
fn publish_app_release(c: &Coordinator) -> String {
    std::fs::write(c.dir.path().join("app.tar.gz"), b"app 1.0.0 bytes").unwrap();
    c.ok(&["artifact", "upload", "app.tar.gz"]);
    sign_app_release(c);
    c.ok(&["release", "publish", "r.json"]);
    "app-1.0.0".to_string()
}

/// Writes the manifest of release `app-1.0.0` (artifact `app.tar.gz`, uploaded) and signs
/// it with the offline release key into `r.json`, as a release manager would.
fn sign_app_release(c: &Coordinator) {
    std::fs::write(
        c.dir.path().join("release.toml"),
        "id = \"app-1.0.0\"\nname = \"app\"\nversion = \"1.0.0\"\nkind = \"app\"\ncounter = 1\nexpires_in = \"30d\"\n\n[install]\nformat = \"tar.gz\"\n\n[[artifacts]]\nname = \"app.tar.gz\"\nurl = \"/v1/artifacts/{sha256}\"\nfile = \"app.tar.gz\"\n",
    )
    .unwrap();
    let key = c.cdir().join("offline-keys/release.key");
    c.ok(&[
        "release",
        "sign",
        "--key",
        key.to_str().unwrap(),
        "release.toml",
        "--out",
        "r.json",
    ]);
}

/// A one-wave plan for release `app-1.0.0` over the sites labelled `case=CASE`.
fn write_plan(c: &Coordinator, case: &str, gate: &str) -> String {
    let name = format!("plan-{case}.toml");
    std::fs::write(
        c.dir.path().join(&name),
        format!(
            "name = \"{case}\"\nrelease = \"app-1.0.0\"\nselector = {{ case = \"{case}\" }}\n\n[[waves]]\nname = \"all\"\ngate = {{ {gate} }}\n"
        ),
    )
    .unwrap();
    name
}

/// `rollout create PLAN --start`; returns the rollout id.
fn create_started(c: &Coordinator, plan: &str) -> String {
    let created = c.json(&["rollout", "create", plan, "--start"]);
    assert_eq!(created["status"], "running", "{created}");
    created["id"].as_str().unwrap().to_string()
}

/// The plain output of `status --watch` (stdout is a pipe here): lines, never a progress
/// bar's escape sequences.
fn plain(out: &Output) -> String {
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        !text.contains('\x1b'),
        "no escape sequences in a pipe: {text:?}"
    );
    text
}

/// A site that speaks the agent API itself (enroll, session, poll, lease, report), so a
/// test decides what the site reports.
struct FakeAgent {
    site: String,
    url: String,
    token: String,
    http: reqwest::blocking::Client,
    events: u32,
}

impl FakeAgent {
    /// Enrolls `site` labelled `case=CASE` with device key `[seed; 32]` and opens a session.
    fn enroll(c: &Coordinator, site: &str, case: &str, seed: u8) -> FakeAgent {
        use base64::Engine as _;
        use ed25519_dalek::Signer as _;
        use fleetwave_shared::protocol::{enroll_message, session_message};
        let b64 = base64::engine::general_purpose::STANDARD;
        let label = format!("case={case}");
        let enroll_token = c
            .ok(&[
                "token", "enroll", "create", "--site", site, "--label", &label,
            ])
            .trim()
            .to_string();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(&std::fs::read(c.ca()).unwrap()).unwrap();
        let http = reqwest::blocking::Client::builder()
            .tls_backend_rustls()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let device = hex::encode(key.verifying_key().as_bytes());
        let proof = b64.encode(
            key.sign(&enroll_message(site, &enroll_token, &device))
                .to_bytes(),
        );
        let res = http
            .post(format!("{}/v1/enroll", c.url))
            .json(&serde_json::json!({"token": enroll_token, "site_id": site, "device_key": device, "agent_version": "0.1.0", "proof": proof}))
            .send()
            .unwrap();
        assert!(res.status().is_success(), "enroll {site}: {:?}", res.text());
        let at = jiff::Timestamp::now();
        let nonce = format!("{:032x}", u128::from(seed));
        let signature = b64.encode(key.sign(&session_message(site, at, &nonce)).to_bytes());
        let res = http
            .post(format!("{}/v1/agent/session", c.url))
            .json(&serde_json::json!({"site_id": site, "timestamp": at, "nonce": nonce, "signature": signature}))
            .send()
            .unwrap();
        assert!(
            res.status().is_success(),
            "session {site}: {:?}",
            res.text()
        );
        let session: serde_json::Value = res.json().unwrap();
        FakeAgent {
            site: site.to_string(),
            url: c.url.clone(),
            token: session["token"].as_str().unwrap().to_string(),
            http,
            events: 0,
        }
    }

    fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let res = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .unwrap();
        let status = res.status();
        let text = res.text().unwrap();
        assert!(status.is_success(), "{} {path}: {status} {text}", self.site);
        serde_json::from_str(&text).unwrap()
    }

    /// Long-polls until the site is assigned; returns (rollout id, assignment sequence).
    fn assignment(&self) -> (String, u64) {
        use base64::Engine as _;
        let start = Instant::now();
        loop {
            let res = self
                .http
                .get(format!("{}/v1/agent/poll?wait=1&root_version=1", self.url))
                .bearer_auth(&self.token)
                .send()
                .unwrap();
            assert!(res.status().is_success(), "poll: {}", res.status());
            if res.status() == reqwest::StatusCode::OK {
                let body: fleetwave_shared::protocol::PollResponse = res.json().unwrap();
                if let Some(env) = body.assignment {
                    let payload: serde_json::Value = serde_json::from_slice(
                        &base64::engine::general_purpose::STANDARD
                            .decode(&env.payload)
                            .unwrap(),
                    )
                    .unwrap();
                    return (
                        payload["rollout_id"].as_str().unwrap().to_string(),
                        payload["sequence"].as_u64().unwrap(),
                    );
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "{} was never assigned",
                self.site
            );
        }
    }

    /// Asks for a lease and reports each of `phases` of the install of `release`.
    fn install(&mut self, release: &str, phases: &[&str]) -> String {
        let (rollout, sequence) = self.assignment();
        self.post(
            "/v1/agent/lease",
            serde_json::json!({"rollout_id": rollout, "sequence": sequence}),
        );
        for phase in phases {
            let mut event = serde_json::json!({"kind": "phase", "rollout_id": rollout, "release_id": release, "phase": phase});
            if *phase == "failed" {
                event["detail"] = "install failed: health check http:app: status 500".into();
            }
            self.report(event);
        }
        rollout
    }

    fn report(&mut self, mut event: serde_json::Value) {
        self.events += 1;
        event["id"] = format!("{}-e{}", self.site, self.events).into();
        event["at"] = serde_json::to_value(jiff::Timestamp::now()).unwrap();
        self.post(
            "/v1/agent/reports",
            serde_json::json!({ "events": [event] }),
        );
    }
}

/// `status --watch` follows a rollout to its end and exits 0 when it completed and 3 when
/// a site's failure halted it; piped, it prints plain lines.
#[test]
fn status_watch_exits_0_when_the_rollout_completes_and_3_when_the_fleet_halts_it() {
    let c = Coordinator::start();
    let release = publish_app_release(&c);

    // A site installs, commits and reports healthy: the wave passes, the rollout completes.
    let mut good = FakeAgent::enroll(&c, "store-good", "good", 7);
    let id = create_started(&c, &write_plan(&c, "good", "bake = \"0s\""));
    let rollout = good.install(
        &release,
        &[
            "leased",
            "downloading",
            "installing",
            "verifying",
            "committed",
        ],
    );
    assert_eq!(rollout, id);
    good.report(serde_json::json!({"kind": "installed", "name": "app", "release_id": release, "version": "1.0.0"}));
    good.report(serde_json::json!({"kind": "health", "healthy": true, "summary": {"passed": 1, "failed": 0}}));
    // A generous --timeout only keeps a broken coordinator from hanging the test.
    let out = c.run(&["rollout", "status", &id, "--watch", "--timeout", "10m"]);
    let text = plain(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with(&format!("rollout {id} is completed")),
        "{text}"
    );

    // On a terminal (here a pseudo-terminal by `script`, where it exists) the waves are
    // bars: sites done of the wave's sites, with the counts.
    if Command::new("script").arg("--version").output().is_ok() {
        let out = Command::new("script")
            .args(["-q", "-e", "-c"])
            .arg(format!("{BIN} rollout status {id} --watch"))
            .arg("/dev/null")
            .env("FLEETWAVE_URL", &c.url)
            .env("FLEETWAVE_CA", c.ca())
            .env("FLEETWAVE_TOKEN", &c.token)
            .env("FLEETWAVE_PROFILE", c.dir.path().join("no-profile.toml"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let screen = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{screen}");
        assert!(
            screen.contains('\x1b')
                && screen.contains("wave 0 all [")
                && screen.contains("1/1")
                && screen.contains("1 succeeded, 0 failed, 0 in progress  [passed]"),
            "{screen}"
        );
    }

    // A site reports a failed install: its wave's gate fails and the rollout halts.
    let mut bad = FakeAgent::enroll(&c, "store-bad", "bad", 9);
    let id = create_started(&c, &write_plan(&c, "bad", "bake = \"0s\""));
    bad.install(&release, &["leased", "downloading", "failed"]);
    let out = c.run(&["rollout", "status", &id, "--watch", "--timeout", "10m"]);
    let text = plain(&out);
    let err = fails(out, 3);
    assert!(
        err.contains(&format!("rollout {id} did not complete: it is halted")),
        "{err}"
    );
    assert!(
        text.contains(&format!("rollout {id} is halted: ")),
        "{text}"
    );
    // The failing site is named with the agent's words.
    assert!(
        text.contains("store-bad") && text.contains("status 500"),
        "{text}"
    );
}

/// The other ways a watch ends: `--timeout` (a paused rollout is still watched), an abort,
/// a rollback; and the usage and lookup errors keep their codes.
#[test]
fn status_watch_exit_codes_for_timeout_pause_abort_and_rollback() {
    let c = Coordinator::start();
    publish_app_release(&c);
    c.enroll("store-slow", &["case=slow"]);
    c.enroll("store-back", &["case=back"]);

    // The site never reports: the rollout cannot finish before its bake, so a tiny
    // --timeout ends the watch with 6.
    let id = create_started(&c, &write_plan(&c, "slow", "bake = \"1h\""));
    let out = c.run(&["rollout", "status", &id, "--watch", "--timeout", "1s"]);
    plain(&out);
    let err = fails(out, 6);
    assert!(
        err.contains(&format!("rollout {id} is still running after --timeout 1s")),
        "{err}"
    );
    // Paused is not an end: the watch goes on until its timeout.
    c.ok(&["rollout", "pause", &id, "--reason", "lunch"]);
    let err = fails(
        c.run(&["rollout", "status", &id, "--watch", "--timeout", "1s"]),
        6,
    );
    assert!(err.contains("is still paused"), "{err}");

    // Aborted while watched: exit 5.
    c.ok(&["rollout", "resume", &id]);
    let watcher = Command::new(BIN)
        .args(["rollout", "status", &id, "--watch", "--timeout", "10m"])
        .env("FLEETWAVE_URL", &c.url)
        .env("FLEETWAVE_CA", c.ca())
        .env("FLEETWAVE_TOKEN", &c.token)
        .env("FLEETWAVE_PROFILE", c.dir.path().join("no-profile.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.ok(&["rollout", "abort", &id, "--reason", "wrong build"]);
    let out = watcher.wait_with_output().unwrap();
    let text = plain(&out);
    let err = fails(out, 5);
    assert!(err.contains("it is aborted"), "{err}");
    assert!(
        text.contains(&format!("rollout {id} is aborted: ")),
        "{text}"
    );

    // Rolled back: exit 4.
    let id = create_started(&c, &write_plan(&c, "back", "bake = \"1h\""));
    c.ok(&["rollout", "rollback", &id, "--reason", "changed our mind"]);
    let out = c.run(&["rollout", "status", &id, "--watch"]);
    plain(&out);
    let err = fails(out, 4);
    assert!(err.contains("it is rolled_back"), "{err}");

    // Without --watch, status exits 0 whatever the rollout's status.
    c.ok(&["rollout", "status", &id]);
    // No such rollout: refused, 1. A --timeout without --watch, or of zero: usage, 2.
    fails(c.run(&["rollout", "status", "no-such", "--watch"]), 1);
    let out = c.run(&["rollout", "status", &id, "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = c.run(&["rollout", "status", &id, "--watch", "--timeout", "0s"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // `rollout status --help` documents the codes.
    let help = c.ok(&["rollout", "status", "--help"]);
    for line in [
        "0  completed",
        "3  halted",
        "4  rolled back",
        "5  aborted",
        "6  --timeout",
        "paused",
    ] {
        assert!(help.contains(line), "{line} missing from:\n{help}");
    }
}

#[test]
fn freezes_list_add_and_end() {
    let c = Coordinator::start_with_config(
        "\n[[freezes]]\nstart = \"2036-11-23T00:00:00Z\"\nend = \"2036-11-30T00:00:00Z\"\nreason = \"thanksgiving\"\n",
    );

    // The configuration file's freeze is listed; it cannot be ended from here.
    let table = c.ok(&["freeze", "list"]);
    assert!(
        table.contains("config-0") && table.contains("thanksgiving") && table.contains("config"),
        "{table}"
    );
    let err = fails(c.run(&["freeze", "end", "config-0"]), 1);
    assert!(
        err.contains("409") && err.contains("configuration file"),
        "{err}"
    );

    // add --for: in force at once; add --end with --start: scheduled.
    let added = c.json(&["freeze", "add", "--for", "2h", "--reason", "incident 42"]);
    let id = added["id"].as_str().unwrap().to_string();
    assert_eq!(added["active"], true, "{added}");
    assert_eq!(added["source"], "api");
    let later = c.ok(&[
        "freeze",
        "add",
        "--start",
        "2036-01-01T00:00:00Z",
        "--end",
        "2036-01-02T00:00:00Z",
        "--reason",
        "new year",
    ]);
    assert!(
        later.contains("scheduled") && later.contains("new year"),
        "{later}"
    );
    let list = c.json(&["freeze", "list"]);
    let ids: Vec<&str> = list["freezes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{list}");
    assert_eq!(ids[0], id, "earliest start first: {list}");

    // Refusals: the coordinator's validation (exit 1), a usage error (exit 2), a viewer.
    let err = fails(
        c.run(&["freeze", "add", "--for", "400d", "--reason", "typo"]),
        1,
    );
    assert!(err.contains("422") && err.contains("end"), "{err}");
    let out = c.run(&["freeze", "add", "--reason", "no end"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let viewer = c
        .ok(&[
            "token", "operator", "create", "--name", "vic", "--role", "viewer",
        ])
        .trim()
        .to_string();
    let viewed = c.run_as(&viewer, &["freeze", "list"]);
    assert!(viewed.status.success(), "{viewed:?}");
    let err = fails(c.run_as(&viewer, &["freeze", "end", &id]), 1);
    assert!(err.contains("403"), "{err}");

    // end: gone from the list, audited.
    let ended = c.ok(&["freeze", "end", &id]);
    assert!(ended.contains(&id) && ended.contains("ended"), "{ended}");
    assert!(!c.ok(&["freeze", "list"]).contains(&id));
    let err = fails(c.run(&["freeze", "end", &id]), 1);
    assert!(err.contains("409"), "{err}");
    let audit = c.ok(&["audit"]);
    assert!(
        audit.contains("freeze.create") && audit.contains("freeze.end"),
        "{audit}"
    );
}

#[test]
fn webhooks_add_list_show_remove_with_the_secret_shown_once() {
    let c = Coordinator::start();

    // add: the secret is printed once, in the answer to add.
    let added = c.ok(&[
        "webhook",
        "add",
        "https://hooks.example.com/fleet",
        "--event",
        "rollout.halted",
        "--event",
        "gate.awaiting_approval",
        "--description",
        "on-call",
    ]);
    let secret = added
        .lines()
        .find_map(|l| l.strip_prefix("signing secret (shown only now): "))
        .unwrap_or_else(|| panic!("no secret in: {added}"))
        .trim()
        .to_string();
    assert!(secret.starts_with("whsec_"), "{added}");
    let id = added
        .lines()
        .find_map(|l| l.strip_prefix("webhook "))
        .unwrap()
        .trim()
        .to_string();
    assert!(id.starts_with("wh-"), "{added}");

    // list and show never print it again.
    let table = c.ok(&["webhook", "list"]);
    assert!(
        table.contains(&id) && table.contains("rollout.halted") && !table.contains(&secret),
        "{table}"
    );
    let shown = c.ok(&["webhook", "show", &id]);
    assert!(
        shown.contains("on-call") && shown.contains("whsec_…") && !shown.contains(&secret),
        "{shown}"
    );
    let json = c.json(&["webhook", "list"]);
    assert!(!json.to_string().contains(&secret), "{json}");
    let log = c.ok(&["webhook", "deliveries", &id]);
    assert!(
        log.contains("Deliveries") && log.contains("Attempts"),
        "{log}"
    );

    // Refusals: plain http without --allow-insecure-http, an unknown event (exit 1, the
    // coordinator names the field), no --event (usage, exit 2), an operator (admin only).
    let err = fails(
        c.run(&[
            "webhook",
            "add",
            "http://hooks.example.com/",
            "--event",
            "rollout.halted",
        ]),
        1,
    );
    assert!(
        err.contains("422") && err.contains("allow_insecure_http"),
        "{err}"
    );
    let err = fails(
        c.run(&[
            "webhook",
            "add",
            "https://hooks.example.com/",
            "--event",
            "rollout.exploded",
        ]),
        1,
    );
    assert!(
        err.contains("422") && err.contains("rollout.exploded"),
        "{err}"
    );
    let out = c.run(&["webhook", "add", "https://hooks.example.com/"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let operator = c
        .ok(&[
            "token", "operator", "create", "--name", "olga", "--role", "operator",
        ])
        .trim()
        .to_string();
    let err = fails(c.run_as(&operator, &["webhook", "list"]), 1);
    assert!(err.contains("403"), "{err}");

    // remove: gone, audited.
    let removed = c.ok(&["webhook", "remove", &id]);
    assert!(
        removed.contains(&id) && removed.contains("removed"),
        "{removed}"
    );
    assert!(!c.ok(&["webhook", "list"]).contains(&id));
    let err = fails(c.run(&["webhook", "show", &id]), 1);
    assert!(err.contains("404"), "{err}");
    let audit = c.ok(&["audit"]);
    assert!(
        audit.contains("webhook.create") && audit.contains("webhook.delete"),
        "{audit}"
    );
    assert!(!audit.contains(&secret), "{audit}");
}

#[test]
fn rollout_plan_prints_the_wave_table_stores_nothing_and_fails_on_an_invalid_plan() {
    let c = Coordinator::start();
    publish_app_release(&c);
    c.enroll("pig-1", &["case=plan", "cohort=pig", "tz=Europe/Berlin"]);
    c.enroll("store-1", &["case=plan", "tz=America/New_York"]);
    c.enroll("kiosk-1", &["case=other"]);
    // Tomorrow at noon, as a local time in Berlin: outside the 02:00-05:00 window whatever
    // the time of day the test runs (a start inside it would not wait for the window).
    let start = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24))
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .date()
        .at(12, 0, 0, 0);
    let plan = format!(
        "name = \"checked\"\nrelease = \"app-1.0.0\"\nselector = {{ case = \"plan\" }}\n\
         start_at = \"{start}[Europe/Berlin]\"\nwindow = {{ start = \"02:00\", end = \"05:00\" }}\n\n\
         [[waves]]\nname = \"pigs\"\nselector = {{ cohort = \"pig\" }}\ngate = {{ bake = \"1h\" }}\n\n\
         [[waves]]\nname = \"rest\"\n"
    );
    std::fs::write(c.dir.path().join("checked.toml"), &plan).unwrap();

    let text = c.ok(&["rollout", "plan", "checked.toml"]);
    assert!(
        text.contains("plan \"checked\"  release app-1.0.0  2 of 3 site(s) selected"),
        "{text}"
    );
    assert!(
        text.contains("starts at ") && text.contains("(Europe/Berlin)"),
        "{text}"
    );
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for wave {name}: {text}"))
            .to_string()
    };
    assert!(
        row("pigs").contains(" 1 ") && row("pigs").ends_with("pig-1"),
        "{text}"
    );
    assert!(row("rest").ends_with("store-1"), "{text}");
    assert!(
        text.contains("1 no match: kiosk-1 (the rollout's selector is case=plan)"),
        "{text}"
    );
    assert!(
        text.contains("window 02:00-05:00 in Europe/Berlin"),
        "{text}"
    );
    assert!(text.contains("lower bound"), "{text}");

    let json = c.ok(&["rollout", "plan", "checked.toml", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["waves"][1]["sites"],
        serde_json::json!(["store-1"]),
        "{v}"
    );
    assert_eq!(v["start_at"]["zone"], "Europe/Berlin", "{v}");
    // Nothing was stored.
    assert_eq!(
        c.json(&["rollout", "list"])["rollouts"],
        serde_json::json!([])
    );

    // An invalid plan: exit 1, one line naming the field, as creation would.
    std::fs::write(
        c.dir.path().join("broken.toml"),
        plan.replace("bake = \"1h\"", "bake = \"forever\""),
    )
    .unwrap();
    let err = fails(c.run(&["rollout", "plan", "broken.toml"]), 1);
    assert!(
        err.contains("422 invalid_plan") && err.contains("waves[0].gate.bake"),
        "{err}"
    );
    let err = fails(c.run(&["rollout", "plan", "missing.toml"]), 2);
    assert!(err.contains("missing.toml"), "{err}");

    // Created and started, it waits for its start_at; status says when, in both zones.
    let created = c.json(&["rollout", "create", "checked.toml", "--start"]);
    assert_eq!(created["status"], "scheduled", "{created}");
    let id = created["id"].as_str().unwrap();
    let status = c.ok(&["rollout", "status", id]);
    assert!(status.contains("status SCHEDULED"), "{status}");
    assert!(
        status.contains("starts at ")
            && status.contains("UTC (")
            && status.contains("(Europe/Berlin)"),
        "{status}"
    );
}

#[test]
fn site_import_pre_registers_keys_and_writes_tokens_only_to_the_tokens_file() {
    let c = Coordinator::start();
    let dir = c.dir.path();
    let key = fleetwave_shared::keys::generate();
    let device: String = key
        .verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        dir.join("sites.csv"),
        format!(
            "site_id,label:region,label:tz,device_key\nstore-1,eu,Europe/Paris,{device}\n\
             store-2,eu,Europe/Berlin,\nstore-3,us,,\n"
        ),
    )
    .unwrap();
    let out = c.ok(&["site", "import", "sites.csv", "--tokens-out", "tokens.csv"]);
    assert!(
        out.starts_with("imported 3 site(s) (import imp-")
            && out.contains("1 pre-registered with their device keys, 2 enrollment token(s) written to tokens.csv (one use each, expire "),
        "{out}"
    );
    let tokens_file = dir.join("tokens.csv");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&tokens_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&tokens_file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "site_id,token");
    assert_eq!(lines.len(), 3, "{text}");
    let tokens: std::collections::BTreeMap<&str, &str> = lines[1..]
        .iter()
        .map(|l| l.split_once(',').unwrap())
        .collect();
    assert!(tokens["store-2"].starts_with("fwe_"), "{text}");
    assert!(!out.contains(tokens["store-2"]), "a token on stdout: {out}");

    // The pre-registered site is there with its key; the others once their boxes enroll.
    let site = c.json(&["site", "show", "store-1"]);
    assert_eq!(site["device_key"], device);
    assert_eq!(site["labels"]["tz"], "Europe/Paris");
    let enrolled = c.agent_enroll("store-2", "box-2", tokens["store-2"]);
    assert!(enrolled.status.success(), "{enrolled:?}");
    assert_eq!(
        c.json(&["site", "show", "store-2"])["labels"],
        serde_json::json!({"region": "eu", "tz": "Europe/Berlin"})
    );

    // The tokens file is never overwritten: refused before anything is sent (exit 2).
    std::fs::write(dir.join("more.jsonl"), "{\"site_id\": \"store-4\"}\n").unwrap();
    let err = fails(
        c.run(&["site", "import", "more.jsonl", "--tokens-out", "tokens.csv"]),
        2,
    );
    assert!(err.contains("never overwritten"), "{err}");
    assert_eq!(std::fs::read_to_string(&tokens_file).unwrap(), text);
    // A bad line: the server's refusal names it (exit 1), nothing is stored, no file left.
    std::fs::write(
        dir.join("bad.jsonl"),
        "{\"site_id\": \"store-5\"}\n{\"site_id\": \"Store 6\"}\n",
    )
    .unwrap();
    let err = fails(
        c.run(&[
            "site",
            "import",
            "bad.jsonl",
            "--tokens-out",
            "bad-tokens.csv",
        ]),
        1,
    );
    assert!(
        err.contains("422 invalid_import") && err.contains("line 2, site_id: \"Store 6\""),
        "{err}"
    );
    assert!(!dir.join("bad-tokens.csv").exists());
    let out = c.run(&["site", "show", "store-5"]);
    assert_eq!(out.status.code(), Some(1));
    // A file whose format its name does not tell.
    std::fs::write(dir.join("sites.txt"), "site_id\nstore-7\n").unwrap();
    let err = fails(
        c.run(&["site", "import", "sites.txt", "--tokens-out", "t.csv"]),
        2,
    );
    assert!(err.contains("--format csv"), "{err}");
    // One audit entry per import that was stored.
    let audit = c.json(&["audit"]);
    let imports = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "site.import")
        .count();
    assert_eq!(imports, 1, "{audit}");
}
