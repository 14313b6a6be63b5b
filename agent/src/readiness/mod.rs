//! Readiness and health checks.
