//! The HTTP edge every route shares, the API's and the dashboard's: who is calling
//! ([`auth`]: operator tokens, agent sessions, the dashboard's session cookie via
//! [`cookie`]) and the limits, timeouts, load shedding, latency metrics and error answers
//! of [`edge`]. [`crate::server`] assembles the API and the dashboard behind it; neither
//! of them imports the other.

pub mod auth;
pub mod cookie;
pub mod edge;
