//! Operator API shapes (`/v1/` routes used by the `fleetwave` CLI and the dashboard).
//! Owned by the coordinator; the CLI deserializes the same types.
