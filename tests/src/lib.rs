//! fleetwave's end-to-end test harness: real binaries, real sockets on 127.0.0.1, temp
//! directories, and faults on purpose.
//!
//! - [`bins`]: where the built `fleetwave-*` binaries are (`FLEETWAVE_BIN_DIR`, else
//!   `target/debug`).
//! - [`cluster`]: [`Fleet`], a running coordinator and agents, with publish and rollout.
//! - [`process`]: [`Process`], a child process with captured output, killed on drop.
//! - [`eventually`](mod@eventually): polling with generous deadlines instead of sleeps.
//! - [`ports`]: free loopback ports.
//! - [`proxy`]: [`FaultProxy`], a TCP proxy that can cut, blackhole or slow a link.
//! - [`mitm`]: [`Mitm`], a compromised coordinator: a TLS man in the middle that can
//!   replace or record an agent's poll answers, and [`Forger`](mitm::Forger) to sign with
//!   the coordinator's key.
//! - [`fleet`]: the data-driven description and directory layout of a test fleet.
//! - [`inspect`]: read-only looks into the coordinator's and agents' SQLite files.
//! - [`operator`]: the coordinator's operator API over HTTPS, for acting and observing.
//! - [`release`]: demo app releases (artifact and manifest) for `fleetwave release sign`.
//! - [`plan`]: rollout plans with short bake times, rendered as plan TOML.
//! - [`stand_in_k3s`]: STAND-IN k3s nodes (scripts, not a real k3s) for boxes that use the
//!   agent's `kubernetes` executor, and releases of the stand-in k3s.
//!
//! The scenarios themselves are in `tests/`. This crate never mocks a fleetwave part: if a
//! scenario needs a binary, it spawns the real one.

pub mod bins;
pub mod cluster;
pub mod error;
pub mod eventually;
pub mod fleet;
pub mod inspect;
pub mod logs;
pub mod mitm;
pub mod operator;
pub mod plan;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod release;
pub mod stand_in_k3s;

pub use cluster::{BoxOf, Fleet, FleetOptions};
pub use error::{HarnessError, Result};
pub use eventually::{DEFAULT_DEADLINE, eventually, eventually_default, patience};
pub use fleet::{Cohort, FleetDirs, FleetSpec, SiteSpec};
pub use mitm::Mitm;
pub use plan::{GateSpec, PlanSpec, WaveSpec};
pub use ports::{free_addr, free_port};
pub use process::{Process, Spawn};
pub use proxy::{Fault, FaultProxy};
