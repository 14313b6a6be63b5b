pub mod executor;
pub mod readiness;
