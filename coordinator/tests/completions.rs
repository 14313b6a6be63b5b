//! `fleetwave-coordinator completions SHELL` (hidden; the Debian package installs its
//! output, docs/cli.md) prints a completion script that knows the subcommands.

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
