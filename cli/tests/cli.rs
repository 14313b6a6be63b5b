//! The `fleetwave` binary, run for real in temporary directories: keys, envelopes, the root
//! of trust and its rotation, release signing from a manifest, and `verify`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_fleetwave");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the fleetwave binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs and requires exit 0.
fn ok(dir: &Path, args: &[&str]) -> Output {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "fleetwave {args:?} failed ({:?}): {}",
        out.status.code(),
        stderr(&out)
    );
    out
}

/// Runs and requires exit `code`, with exactly one line on stderr.
fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let out = run(dir, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "fleetwave {args:?}: stdout {} stderr {}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
    err
}

fn keygen(dir: &Path, name: &str) -> String {
    let out = ok(dir, &["key", "generate", "--out", name]);
    stdout(&out).trim().to_string()
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/data")
}

#[test]
fn key_generate_writes_a_private_key_0600_and_a_public_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let keyid = keygen(dir.path(), "alice.key");
    assert_eq!(keyid.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("alice.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let public: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("alice.key.pub")).unwrap()).unwrap();
    assert_eq!(public["keytype"], "ed25519");
    assert_eq!(public["scheme"], "ed25519");
    assert_eq!(public["keyid"], keyid);
    let raw = hex::decode(public["keyval"]["public"].as_str().unwrap()).unwrap();
    assert_eq!(raw.len(), 32);
    assert_eq!(hex::encode(Sha256::digest(&raw)), keyid);
    assert_eq!(public.as_object().unwrap().len(), 4);

    let before = std::fs::read(dir.path().join("alice.key")).unwrap();
    let err = fails(dir.path(), &["key", "generate", "--out", "alice.key"], 2);
    assert!(
        err.contains("alice.key") && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.path().join("alice.key")).unwrap(), before);
}

#[test]
fn envelope_sign_and_verify_round_trip_with_a_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(d, "alice.key");
    keygen(d, "bob.key");
    std::fs::write(d.join("doc.json"), b"{\"hello\":\"world\"}").unwrap();
    let out = ok(
        d,
        &[
            "envelope",
            "sign",
            "--key",
            "alice.key",
            "--key",
            "bob.key",
            "--payload-type",
            "application/vnd.example+json",
            "doc.json",
        ],
    );
    let envelope: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(envelope["payloadType"], "application/vnd.example+json");
    assert_eq!(envelope["signatures"].as_array().unwrap().len(), 2);
    std::fs::write(d.join("doc.envelope.json"), &out.stdout).unwrap();

    let out = ok(
        d,
        &[
            "envelope",
            "verify",
            "--key",
            "alice.key.pub",
            "--key",
            "bob.key.pub",
            "--threshold",
            "2",
            "--payload-type",
            "application/vnd.example+json",
            "doc.envelope.json",
        ],
    );
    assert_eq!(out.stdout, b"{\"hello\":\"world\"}");
    // One of the two keys is enough for the default threshold of 1.
    ok(
        d,
        &[
            "envelope",
            "verify",
            "--key",
            "bob.key.pub",
            "--payload-type",
            "application/vnd.example+json",
            "doc.envelope.json",
        ],
    );
}

#[test]
fn envelope_verify_refuses_with_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(d, "alice.key");
    keygen(d, "bob.key");
    keygen(d, "mallory.key");
    std::fs::write(d.join("doc.txt"), b"pay 10").unwrap();
    let out = ok(
        d,
        &[
            "envelope",
            "sign",
            "--key",
            "alice.key",
            "--payload-type",
            "text/plain",
            "doc.txt",
        ],
    );
    std::fs::write(d.join("doc.env"), &out.stdout).unwrap();
    let verify = |keys: &[&str], threshold: &str, file: &str| {
        let mut args = vec!["envelope", "verify"];
        for key in keys {
            args.extend(["--key", key]);
        }
        args.extend([
            "--threshold",
            threshold,
            "--payload-type",
            "text/plain",
            file,
        ]);
        run(d, &args)
    };
    // Signed by a key that is not trusted.
    let out = verify(&["mallory.key.pub"], "1", "doc.env");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        "refused: doc.env: signed by 0 distinct trusted key(s), 1 needed\n"
    );
    // Threshold 2 with one signer.
    let out = verify(&["alice.key.pub", "bob.key.pub"], "2", "doc.env");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("signed by 1 distinct trusted key(s), 2 needed"));
    // Tampered payload.
    let mut env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("doc.env")).unwrap()).unwrap();
    env["payload"] = serde_json::json!("cGF5IDEwMDA="); // "pay 1000"
    std::fs::write(d.join("tampered.env"), env.to_string()).unwrap();
    let out = verify(&["alice.key.pub"], "1", "tampered.env");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).starts_with("refused: tampered.env: "));
    // A threshold that can never be met is a usage error.
    let err = fails(
        d,
        &[
            "envelope",
            "verify",
            "--key",
            "alice.key.pub",
            "--key",
            "alice.key.pub",
            "--threshold",
            "2",
            "--payload-type",
            "text/plain",
            "doc.env",
        ],
        2,
    );
    assert!(err.contains("only 1 distinct key"), "{err}");
    // Threshold 0 is refused by the argument parser.
    let out = verify(&["alice.key.pub"], "0", "doc.env");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn root_init_sign_by_two_people_and_rotation_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["alice", "bob", "carol", "release", "coordinator"] {
        keygen(d, &format!("{name}.key"));
    }
    ok(
        d,
        &[
            "root",
            "init",
            "--root-key",
            "alice.key.pub",
            "--root-key",
            "bob.key.pub",
            "--root-threshold",
            "2",
            "--release-key",
            "release.key.pub",
            "--coordinator-key",
            "coordinator.key.pub",
            "--expires",
            "365d",
            "--out",
            "root.json",
        ],
    );
    let root: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("root.json")).unwrap()).unwrap();
    assert_eq!(root["version"], 1);
    assert_eq!(root["roles"]["root"]["threshold"], 2);
    assert_eq!(root["keys"].as_object().unwrap().len(), 4);

    // Alice signs first: the threshold of 2 is not met yet.
    ok(
        d,
        &[
            "root",
            "sign",
            "--key",
            "alice.key",
            "--out",
            "root-v1.json",
            "root.json",
        ],
    );
    let err = fails(d, &["root", "verify", "root-v1.json"], 1);
    assert!(err.contains("root-v1.json") && err.contains("1 distinct trusted key(s), 2 needed"));
    // Bob adds his signature to the same envelope.
    let out = ok(
        d,
        &[
            "root",
            "sign",
            "--key",
            "bob.key",
            "--envelope",
            "root-v1.json",
            "--out",
            "root-v1.json",
            "root.json",
        ],
    );
    assert!(stderr(&out).contains("threshold of its root keys met"));
    let out = ok(d, &["root", "verify", "root-v1.json"]);
    assert!(stdout(&out).starts_with("valid: root version 1"));

    // Rotation: carol replaces alice in version 2.
    ok(
        d,
        &[
            "root",
            "init",
            "--version",
            "2",
            "--root-key",
            "bob.key.pub",
            "--root-key",
            "carol.key.pub",
            "--root-threshold",
            "2",
            "--release-key",
            "release.key.pub",
            "--coordinator-key",
            "coordinator.key.pub",
            "--expires",
            "2099-01-01T00:00:00Z",
            "--out",
            "root2.json",
        ],
    );
    // Signed only by the new keys: a valid root on its own, not a rotation of version 1.
    ok(
        d,
        &[
            "root",
            "sign",
            "--key",
            "bob.key",
            "--key",
            "carol.key",
            "--out",
            "root-v2-new-only.json",
            "root2.json",
        ],
    );
    ok(d, &["root", "verify", "root-v2-new-only.json"]);
    let err = fails(
        d,
        &[
            "root",
            "verify",
            "--previous",
            "root-v1.json",
            "root-v2-new-only.json",
        ],
        1,
    );
    assert!(err.contains("root-v2-new-only.json"), "{err}");
    // Alice (old) adds her signature: now old and new thresholds are met.
    ok(
        d,
        &[
            "root",
            "sign",
            "--key",
            "alice.key",
            "--envelope",
            "root-v2-new-only.json",
            "--out",
            "root-v2.json",
            "root2.json",
        ],
    );
    let out = ok(
        d,
        &[
            "root",
            "verify",
            "--previous",
            "root-v1.json",
            "root-v2.json",
        ],
    );
    assert!(stdout(&out).starts_with("valid: root version 2"));
    // Adding a signature to an envelope of another document is refused.
    let err = fails(
        d,
        &[
            "root",
            "sign",
            "--key",
            "carol.key",
            "--envelope",
            "root-v1.json",
            "root2.json",
        ],
        2,
    );
    assert!(err.contains("different document"), "{err}");
}

const MANIFEST: &str = r#"
id = "pos-2.4.0"
name = "pos"
version = "2.4.0"
kind = "app"
counter = 42
expires_in = "90d"
min_agent_version = "0.1.0"

[install]
format = "tar.gz"
restart_command = "systemctl restart pos"

[[artifacts]]
name = "pos-2.4.0.tar.gz"
url = "/v1/artifacts/{sha256}"
file = "dist/pos-2.4.0.tar.gz"
"#;

/// A fleet with one root key, one release key and one coordinator key, signed root v1.
fn small_fleet(d: &Path) {
    for name in ["root", "release", "coordinator"] {
        keygen(d, &format!("{name}.key"));
    }
    ok(
        d,
        &[
            "root",
            "init",
            "--root-key",
            "root.key.pub",
            "--release-key",
            "release.key.pub",
            "--coordinator-key",
            "coordinator.key.pub",
            "--out",
            "root.json",
        ],
    );
    ok(
        d,
        &[
            "root",
            "sign",
            "--key",
            "root.key",
            "--out",
            "root-v1.json",
            "root.json",
        ],
    );
}

#[test]
fn release_sign_from_a_toml_manifest_with_a_file_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    small_fleet(d);
    std::fs::create_dir(d.join("dist")).unwrap();
    let artifact: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.join("dist/pos-2.4.0.tar.gz"), &artifact).unwrap();
    std::fs::write(d.join("release.toml"), MANIFEST).unwrap();
    let out = ok(
        d,
        &[
            "release",
            "sign",
            "--key",
            "release.key",
            "release.toml",
            "--out",
            "pos.json",
        ],
    );
    let envelope: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("pos.json")).unwrap()).unwrap();
    assert_eq!(
        envelope["payloadType"],
        "application/vnd.fleetwave.release+json"
    );
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    let release: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let sha = hex::encode(Sha256::digest(&artifact));
    assert_eq!(release["counter"], 42);
    assert_eq!(release["kind"], "app");
    assert_eq!(release["artifacts"][0]["length"], 70_000);
    assert_eq!(release["artifacts"][0]["sha256"], sha);
    assert_eq!(
        release["artifacts"][0]["url"],
        format!("/v1/artifacts/{sha}")
    );
    assert_eq!(
        release["install"]["restart_command"],
        "systemctl restart pos"
    );
    assert_eq!(release["min_agent_version"], "0.1.0");
    assert!(stderr(&out).contains("envelope sha256"));

    // It verifies against the root...
    let out = ok(
        d,
        &["verify", "--root", "root-v1.json", "--release", "pos.json"],
    );
    assert!(
        stdout(&out).starts_with("valid: release pos-2.4.0"),
        "{}",
        stdout(&out)
    );
    let out = ok(
        d,
        &[
            "verify",
            "--root",
            "root-v1.json",
            "--release",
            "pos.json",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["release"]["document"]["id"], "pos-2.4.0");
    // ...but not when signed by a key outside the release role.
    ok(
        d,
        &[
            "release",
            "sign",
            "--key",
            "coordinator.key",
            "release.toml",
            "--out",
            "rogue.json",
        ],
    );
    let err = fails(
        d,
        &[
            "verify",
            "--root",
            "root-v1.json",
            "--release",
            "rogue.json",
        ],
        1,
    );
    assert!(
        err.starts_with("refused: rogue.json: release envelope not signed by enough release keys"),
        "{err}"
    );
    // ...nor after it expired.
    let err = fails(
        d,
        &[
            "verify",
            "--root",
            "root-v1.json",
            "--release",
            "pos.json",
            "--at",
            "2099-01-01T00:00:00Z",
        ],
        1,
    );
    assert!(err.contains("expired"), "{err}");
}

#[test]
fn manifest_errors_name_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(d, "release.key");
    let bad = MANIFEST.replace(
        "file = \"dist/pos-2.4.0.tar.gz\"",
        "length = 10\nsha256 = \"not-a-digest\"",
    );
    std::fs::write(d.join("release.toml"), bad).unwrap();
    let err = fails(
        d,
        &["release", "sign", "--key", "release.key", "release.toml"],
        2,
    );
    assert_eq!(
        err,
        "error: release.toml:18:10: artifacts[0].sha256: \"not-a-digest\" must be 64 lowercase hex characters\n"
    );
    // A missing artifact file names the field and the path.
    std::fs::write(d.join("release.toml"), MANIFEST).unwrap();
    let err = fails(
        d,
        &["release", "sign", "--key", "release.key", "release.toml"],
        2,
    );
    assert!(
        err.contains("release.toml:17:8: artifacts[0].file: cannot read"),
        "{err}"
    );
    // A wrong type names the field.
    std::fs::write(
        d.join("release.toml"),
        MANIFEST.replace("kind = \"app\"", "kind = \"apt\""),
    )
    .unwrap();
    let err = fails(
        d,
        &["release", "sign", "--key", "release.key", "release.toml"],
        2,
    );
    assert!(
        err.contains("release.toml:5:8: kind: unknown variant `apt`"),
        "{err}"
    );
}

#[test]
fn verify_checks_assignments_against_the_fixtures() {
    let data = fixtures();
    let d = data.as_path();
    let at = "2026-06-01T00:00:00Z";
    let args = |assignment: &str| -> Vec<String> {
        [
            "verify",
            "--root",
            "root-v1.json",
            "--chain",
            "root-v2.json",
            "--assignment",
            assignment,
            "--release",
            "release-pos-2.json",
            "--site",
            "store-0042",
            "--at",
            at,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run_args = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(d, &refs)
    };
    let out = run_args(args("assignment-store-0042-pos-2.json"));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("valid: assignment of release pos-1.2.0 to site store-0042"),
        "{text}"
    );
    assert!(text.contains("root         version 2"), "{text}");

    for (file, code, names) in [
        (
            "assignment-other-site.json",
            "wrong_site",
            "assignment-other-site.json",
        ),
        (
            "assignment-other-release.json",
            "release_mismatch",
            "assignment-other-release.json",
        ),
        (
            "assignment-expired.json",
            "expired",
            "assignment-expired.json",
        ),
    ] {
        let mut a = args(file);
        a.push("--json".into());
        let out = run_args(a);
        assert_eq!(out.status.code(), Some(1), "{file}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["valid"], false);
        assert_eq!(report["code"], code, "{file}");
        assert_eq!(report["file"], names);
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1);
        assert!(err.starts_with(&format!("refused: {names}: ")), "{err}");
    }
    // A bad release behind a good assignment names the release file.
    let err = fails(
        d,
        &[
            "verify",
            "--root",
            "root-v1.json",
            "--release",
            "release-tampered-payload.json",
            "--at",
            at,
        ],
        1,
    );
    assert!(
        err.starts_with("refused: release-tampered-payload.json: "),
        "{err}"
    );
    // A chain that skips a version names the chain file.
    let err = fails(
        d,
        &[
            "verify",
            "--root",
            "root-v1.json",
            "--chain",
            "root-v3-skips-v2.json",
            "--release",
            "release-pos-2.json",
            "--at",
            at,
        ],
        1,
    );
    assert!(
        err.starts_with("refused: root-v3-skips-v2.json: root version 3 cannot follow version 1"),
        "{err}"
    );
    // A file that does not exist is an I/O error: exit 2.
    fails(
        d,
        &[
            "verify",
            "--root",
            "root-v1.json",
            "--release",
            "no-such-file.json",
        ],
        2,
    );
    // --site without --assignment is a usage error.
    let out = run(
        d,
        &[
            "verify",
            "--root",
            "root-v1.json",
            "--release",
            "release-pos-2.json",
            "--site",
            "x",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_teaches_with_examples() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(dir.path(), &["--help"]);
    let text = stdout(&out);
    for word in [
        "key",
        "envelope",
        "root",
        "release",
        "verify",
        "Exit codes",
        "Examples",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    let out = ok(dir.path(), &["release", "sign", "--help"]);
    let text = stdout(&out);
    assert!(text.contains("Example manifest"), "{text}");
    assert!(text.contains("[[artifacts]]"), "{text}");
    let out = ok(dir.path(), &["root", "sign", "--help"]);
    assert!(stdout(&out).contains("--envelope root-v1.envelope.json"));
}

/// `fleetwave man DIR --extra FILE` (hidden; the Debian package installs its output) writes
/// a page per command and subcommand, the top one with the hand-written sections; a missing
/// extra file is named.
#[test]
fn man_writes_a_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra.roff");
    std::fs::write(&extra, "Read the docs.\n.SH FILES\n.I /etc/fleetwave\n").unwrap();
    let pages = dir.path().join("man");
    let out = ok(
        dir.path(),
        &[
            "man",
            pages.to_str().unwrap(),
            "--extra",
            extra.to_str().unwrap(),
        ],
    );
    let listed = stdout(&out);
    for page in [
        "fleetwave.1",
        "fleetwave-rollout.1",
        "fleetwave-rollout-status.1",
        "fleetwave-freeze-add.1",
    ] {
        assert!(
            pages.join(page).is_file(),
            "{page} missing; written:\n{listed}"
        );
    }
    assert!(
        !pages.join("fleetwave-man.1").exists(),
        "hidden commands have no page"
    );
    let top = std::fs::read_to_string(pages.join("fleetwave.1")).unwrap();
    assert!(
        top.contains(".SH FILES") && top.contains("Read the docs."),
        "{top}"
    );
    let status = std::fs::read_to_string(pages.join("fleetwave-rollout-status.1")).unwrap();
    assert!(
        status.contains("\\-\\-watch") && status.contains("\\-\\-timeout"),
        "{status}"
    );
    let out = run(
        dir.path(),
        &[
            "man",
            pages.to_str().unwrap(),
            "--extra",
            "/nonexistent/extra.roff",
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("/nonexistent/extra.roff"),
        "{}",
        stderr(&out)
    );
}

/// `fleetwave completions SHELL` (hidden; the Debian package installs its output) prints a
/// completion script that knows the areas and their commands.
#[test]
fn completions_for_each_shell_name_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&ok(dir.path(), &["completions", shell]));
        for word in ["rollout", "release", "approve", "site"] {
            assert!(
                script.contains(word),
                "{shell} completion lacks {word}:\n{script}"
            );
        }
    }
    assert!(
        stdout(&ok(dir.path(), &["completions", "bash"])).contains("complete -F"),
        "not a bash completion script"
    );
    // Not listed in the help: it is for packagers (docs/cli.md).
    assert!(!stdout(&ok(dir.path(), &["--help"])).contains("completions"));
    let out = run(dir.path(), &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
