//! The wave controller: pure decision logic for rollouts.
