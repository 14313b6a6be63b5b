//! Finding the fleetwave binaries the scenarios spawn.
//!
//! `FLEETWAVE_BIN_DIR` wins; otherwise `$CARGO_TARGET_DIR/debug`, otherwise
//! `<workspace>/target/debug`. This module never builds anything: a missing binary is a
//! clear error telling the operator to run `cargo build --workspace --bins`.

use std::path::{Path, PathBuf};

use crate::error::{HarnessError, Result};

/// The coordinator server.
pub const COORDINATOR: &str = "fleetwave-coordinator";
/// The agent daemon and its local CLI.
pub const AGENT: &str = "fleetwave-agent";
/// The operator CLI.
pub const CLI: &str = "fleetwave";
/// The small demo application the agent's `app` executor manages in tests.
pub const DEMO_APP: &str = "fleetwave-demo-app";
/// The webhook receiver of the webhook scenario.
pub const WEBHOOK_RECEIVER: &str = "fleetwave-webhook-receiver";

/// The directory the binaries are taken from.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLEETWAVE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        let dir = if dir.is_relative() {
            workspace_root().join(dir)
        } else {
            dir
        };
        return dir.join("debug");
    }
    workspace_root().join("target").join("debug")
}

/// The cargo workspace this crate lives in.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// The coordinator, agent and demo app, for the launch recipe shared with `fleetwave demo`.
pub fn local_bins() -> Result<fleetwave_launch::Bins> {
    Ok(fleetwave_launch::Bins {
        coordinator: binary(COORDINATOR)?,
        agent: binary(AGENT)?,
        demo_app: binary(DEMO_APP)?,
    })
}

/// The path of binary `name`, or [`HarnessError::MissingBinary`].
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::MissingBinary {
            name: name.to_string(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = binary("fleetwave-no-such-binary").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("run `cargo build --workspace --bins` first"),
            "{text}"
        );
        assert!(text.contains("fleetwave-no-such-binary"), "{text}");
    }

    #[test]
    fn the_default_bin_dir_is_inside_the_workspace_target() {
        if std::env::var_os("FLEETWAVE_BIN_DIR").is_none()
            && std::env::var_os("CARGO_TARGET_DIR").is_none()
        {
            assert_eq!(bin_dir(), workspace_root().join("target").join("debug"));
        }
    }
}
