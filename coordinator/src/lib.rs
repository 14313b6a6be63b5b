//! fleetwave coordinator: the operators' single point of control.
//!
//! - [`config`]: the TOML configuration; [`artifact_store`]: artifact bytes in files or S3.
//! - [`store`]: storage behind the [`store::Store`] trait (SQLite today).
//! - [`plan`] and [`controller`]: rollout plans and the pure wave controller; [`analysis`]:
//!   the pure golden-signal judge (upgraded vs control, Mann–Whitney U).
//! - [`engine`]: applies the controller's decisions ([`clock`]: where "now" is read); [`api`]: the HTTP API;
//!   [`server`]: TLS, start-up and shutdown; [`init`]: a ready-to-run local setup;
//!   [`backup`]: consistent backups and safe restores; [`retention`]: pruning old reports;
//!   [`time`]: checked time arithmetic; [`supervisor`]: keeps the wave controller running.
pub mod analysis;
pub mod api;
pub mod artifact_store;
pub mod backup;
pub mod clock;
pub mod coherence;
pub mod config;
pub mod controller;
pub mod dashboard;
pub mod engine;
pub mod error;
pub mod group_commit;
pub mod http;
pub mod ids;
pub mod init;
pub mod leadership;
pub mod liveness;
pub mod memory;
pub mod metrics;
pub mod plan;
pub mod plan_preview;
pub mod poll_cache;
pub mod retention;
pub mod server;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod time;
pub mod webhooks;
