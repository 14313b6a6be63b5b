//! Rollout plans: the wave plan file (TOML or JSON), parsed and validated.
