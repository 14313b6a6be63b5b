//! fleetwave coordinator: the operators' single point of control.
//!
//! - [`config`]: the TOML configuration.
//! - [`store`]: storage behind the [`store::Store`] trait (SQLite today).
//! - [`plan`] and [`controller`]: rollout plans and the pure wave controller.
pub mod config;
pub mod controller;
pub mod plan;
pub mod store;
