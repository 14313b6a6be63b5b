//! Counting what the simulated fleet did: request latencies (exact percentiles from every
//! sample), successes and errors by kind. Shared by every task of a run.
//!
//! Recording must stay cheap (one short lock per request) and never fail a request.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latencies of one kind of request.
#[derive(Default)]
pub struct Latencies {
    micros: Mutex<Vec<u32>>,
}

impl Latencies {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        self.micros
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(us);
    }

    pub fn count(&self) -> usize {
        self.micros.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Forgets every sample (after a warm-up).
    pub fn reset(&self) {
        self.micros
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Percentiles (0..=100) in milliseconds; None without samples.
    pub fn percentiles(&self, ps: &[f64]) -> Option<Vec<f64>> {
        let mut v = self
            .micros
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(
            ps.iter()
                .map(|p| {
                    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
                    v[i.min(v.len() - 1)] as f64 / 1000.0
                })
                .collect(),
        )
    }

    /// `p50 X ms, p99 Y ms, max Z ms (n samples)`.
    pub fn summary(&self) -> String {
        match self.percentiles(&[50.0, 99.0, 100.0]) {
            Some(p) => format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
                p[0],
                p[1],
                p[2],
                self.count()
            ),
            None => "no samples".into(),
        }
    }
}

/// Error counts by kind (e.g. `poll: 503 overloaded`).
#[derive(Default)]
pub struct Errors {
    by_kind: Mutex<BTreeMap<String, u64>>,
    total: AtomicU64,
}

impl Errors {
    pub fn add(&self, kind: impl Into<String>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        *self
            .by_kind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind.into())
            .or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        self.total.store(0, Ordering::Relaxed);
        self.by_kind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// `0` or `N (kind: n, kind: n)`, the first few kinds.
    pub fn summary(&self) -> String {
        let map = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            return "0".into();
        }
        let kinds: Vec<String> = map
            .iter()
            .take(6)
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        format!("{} ({})", self.total(), kinds.join("; "))
    }
}

/// A plain counter.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_samples() {
        let l = Latencies::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        let p = l.percentiles(&[50.0, 99.0]).unwrap();
        assert!((p[0] - 50.0).abs() <= 1.0, "{p:?}");
        assert!((p[1] - 99.0).abs() <= 1.0, "{p:?}");
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let e = Errors::default();
        e.add("poll: 503");
        e.add("poll: 503");
        e.add("lease: timeout");
        assert_eq!(e.total(), 3);
        assert_eq!(e.summary(), "3 (lease: timeout: 1; poll: 503: 2)");
    }
}
