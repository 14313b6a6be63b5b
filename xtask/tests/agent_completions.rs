//! `cargo run -p xtask -- agent-completions SHELL`: the agent's completion scripts, made
//! outside the agent binary (which does not link clap_complete).

use std::process::Command;

#[test]
fn agent_completions_for_each_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["agent-completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains("fleetwave-agent"), "{shell}:\n{script}");
        for word in ["run", "enroll", "import-bundle", "defer", "config"] {
            assert!(
                script.contains(word),
                "{shell} completion lacks {word}:\n{script}"
            );
        }
    }
}
