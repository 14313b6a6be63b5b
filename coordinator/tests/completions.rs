//! `fleetwave-coordinator completions SHELL` and `man DIR` (hidden; the Debian package
//! installs their output, docs/cli.md): a completion script that knows the subcommands,
//! and a manual page per subcommand.

use std::process::Command;

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_fleetwave-coordinator"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["serve", "backup", "restore", "init", "config"] {
            assert!(
                script.contains(word),
                "{shell} completion lacks {word}:\n{script}"
            );
        }
    }
}

#[test]
fn man_writes_a_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetwave-coordinator"))
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for page in [
        "fleetwave-coordinator.1",
        "fleetwave-coordinator-serve.1",
        "fleetwave-coordinator-config-check.1",
        "fleetwave-coordinator-backup.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") && text.contains(".SH SYNOPSIS"),
            "{page}: {text}"
        );
    }
}
