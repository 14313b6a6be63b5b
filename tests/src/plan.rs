//! Rollout plans for scenarios, written as the TOML an operator would keep in Git.
//!
//! [`PlanSpec`] is plain data with short (seconds) bake times and deadlines so that the
//! suite stays fast; [`PlanSpec::to_toml`] renders it in the plan format documented in
//! docs/waves.md. This module never validates a plan: the coordinator does that, and a
//! scenario that writes a bad plan must see the coordinator's refusal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One selector entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Is(String),
    AnyOf(Vec<String>),
    Not(Vec<String>),
}

impl Match {
    fn toml(&self) -> String {
        let list = |vs: &[String]| {
            let items: Vec<String> = vs.iter().map(|v| quote(v)).collect();
            format!("[{}]", items.join(", "))
        };
        match self {
            Match::Is(v) => quote(v),
            Match::AnyOf(vs) => list(vs),
            Match::Not(vs) => format!("{{ not = {} }}", list(vs)),
        }
    }
}

/// When a wave counts as done. Durations in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct GateSpec {
    pub success_ratio: f64,
    pub failure_budget: Option<u32>,
    pub min_sample: u32,
    pub bake_secs: u64,
    pub report_deadline_secs: u64,
    /// `fail` or `exclude`.
    pub on_silent: &'static str,
    pub approval: bool,
}

impl Default for GateSpec {
    /// Every site must succeed, no failure tolerated, a 2 s bake, a 60 s report deadline.
    fn default() -> Self {
        GateSpec {
            success_ratio: 1.0,
            failure_budget: Some(0),
            min_sample: 1,
            bake_secs: 2,
            report_deadline_secs: 60,
            on_silent: "fail",
            approval: false,
        }
    }
}

/// One wave.
#[derive(Debug, Clone, PartialEq)]
pub struct WaveSpec {
    pub name: String,
    pub selector: BTreeMap<String, Match>,
    pub share: Option<f64>,
    pub max_concurrent: Option<u32>,
    pub gate: GateSpec,
}

impl WaveSpec {
    pub fn new(name: &str) -> WaveSpec {
        WaveSpec {
            name: name.to_string(),
            selector: BTreeMap::new(),
            share: None,
            max_concurrent: None,
            gate: GateSpec::default(),
        }
    }

    /// Only sites whose `label` is `value`.
    pub fn only(mut self, label: &str, value: &str) -> WaveSpec {
        self.selector
            .insert(label.to_string(), Match::Is(value.to_string()));
        self
    }

    /// Only sites whose `label` is none of `values`.
    pub fn except(mut self, label: &str, values: &[&str]) -> WaveSpec {
        self.selector.insert(
            label.to_string(),
            Match::Not(values.iter().map(|v| v.to_string()).collect()),
        );
        self
    }

    pub fn share(mut self, percent: f64) -> WaveSpec {
        self.share = Some(percent);
        self
    }

    pub fn gate(mut self, change: impl FnOnce(&mut GateSpec)) -> WaveSpec {
        change(&mut self.gate);
        self
    }
}

/// A maintenance window in site-local time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub days: Vec<&'static str>,
    pub start: String,
    pub end: String,
}

/// The plan's `[retry]` policy. Durations in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySpec {
    pub max_attempts: u32,
    pub backoff_secs: u64,
    pub max_backoff_secs: u64,
}

/// A whole plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSpec {
    pub name: String,
    pub release: String,
    pub selector: BTreeMap<String, Match>,
    pub auto_rollback: bool,
    pub window: Option<WindowSpec>,
    pub assignment_ttl_secs: u64,
    /// When the rollout starts itself (`start_at`, RFC 3339 or a local time with a zone).
    pub start_at: Option<String>,
    pub retry: Option<RetrySpec>,
    /// Inside a site of several boxes: the plan's `box_order` (empty: left out).
    pub box_order: Vec<String>,
    /// `max_unavailable_per_site` (None: left out, the default 1).
    pub max_unavailable_per_site: Option<u32>,
    pub waves: Vec<WaveSpec>,
}

impl PlanSpec {
    pub fn new(name: &str, release: &str, waves: Vec<WaveSpec>) -> PlanSpec {
        PlanSpec {
            name: name.to_string(),
            release: release.to_string(),
            selector: BTreeMap::new(),
            auto_rollback: false,
            window: None,
            assignment_ttl_secs: 3600,
            start_at: None,
            retry: None,
            box_order: Vec::new(),
            max_unavailable_per_site: None,
            waves,
        }
    }

    /// Orders a site's boxes (`box_order`, e.g. `["role=server", "role=agent"]`).
    pub fn box_order(mut self, order: &[&str]) -> PlanSpec {
        self.box_order = order.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The four-wave plan of the product brief, scaled down: pigs, the canary city (not
    /// dogs), half of the remaining non-dogs, then everything left (the dogs last).
    pub fn four_waves(release: &str, canary_city: &str) -> PlanSpec {
        PlanSpec::new(
            &format!("{release} in four waves"),
            release,
            vec![
                WaveSpec::new("pigs").only("cohort", "pig"),
                WaveSpec::new("canary city")
                    .only("city", canary_city)
                    .except("cohort", &["dog"]),
                WaveSpec::new("half of the rest")
                    .except("cohort", &["dog"])
                    .share(50.0),
                WaveSpec::new("the rest, dogs last"),
            ],
        )
    }

    /// Installs that fail are tried again, up to `max_attempts` attempts in all, the first
    /// after `backoff_secs` (doubling, at most a minute).
    pub fn retry(mut self, max_attempts: u32, backoff_secs: u64) -> PlanSpec {
        self.retry = Some(RetrySpec {
            max_attempts,
            backoff_secs,
            max_backoff_secs: backoff_secs.max(60),
        });
        self
    }

    pub fn start_at(mut self, at: &str) -> PlanSpec {
        self.start_at = Some(at.to_string());
        self
    }

    pub fn auto_rollback(mut self, on: bool) -> PlanSpec {
        self.auto_rollback = on;
        self
    }

    /// Changes the gate of every wave.
    pub fn every_gate(mut self, change: impl Fn(&mut GateSpec)) -> PlanSpec {
        for wave in &mut self.waves {
            change(&mut wave.gate);
        }
        self
    }

    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "name = {}", quote(&self.name));
        let _ = writeln!(out, "release = {}", quote(&self.release));
        if !self.selector.is_empty() {
            let _ = writeln!(out, "selector = {}", selector(&self.selector));
        }
        let _ = writeln!(out, "auto_rollback = {}", self.auto_rollback);
        let _ = writeln!(
            out,
            "assignment_ttl = {}",
            quote(&format!("{}s", self.assignment_ttl_secs))
        );
        if let Some(at) = &self.start_at {
            let _ = writeln!(out, "start_at = {}", quote(at));
        }
        if !self.box_order.is_empty() {
            let order: Vec<String> = self.box_order.iter().map(|s| quote(s)).collect();
            let _ = writeln!(out, "box_order = [{}]", order.join(", "));
        }
        if let Some(n) = self.max_unavailable_per_site {
            let _ = writeln!(out, "max_unavailable_per_site = {n}");
        }
        if let Some(r) = &self.retry {
            let _ = writeln!(
                out,
                "\n[retry]\nmax_attempts = {}\nbackoff = {}\nmax_backoff = {}",
                r.max_attempts,
                quote(&format!("{}s", r.backoff_secs)),
                quote(&format!("{}s", r.max_backoff_secs))
            );
        }
        if let Some(w) = &self.window {
            let days: Vec<String> = w.days.iter().map(|d| quote(d)).collect();
            let _ = writeln!(
                out,
                "\n[window]\ndays = [{}]\nstart = {}\nend = {}",
                days.join(", "),
                quote(&w.start),
                quote(&w.end)
            );
        }
        for wave in &self.waves {
            let _ = writeln!(out, "\n[[waves]]\nname = {}", quote(&wave.name));
            if !wave.selector.is_empty() {
                let _ = writeln!(out, "selector = {}", selector(&wave.selector));
            }
            if let Some(share) = wave.share {
                let _ = writeln!(out, "share = {share:?}");
            }
            if let Some(max) = wave.max_concurrent {
                let _ = writeln!(out, "max_concurrent = {max}");
            }
            let g = &wave.gate;
            let _ = writeln!(out, "[waves.gate]");
            let _ = writeln!(out, "success_ratio = {:?}", g.success_ratio);
            if let Some(budget) = g.failure_budget {
                let _ = writeln!(out, "failure_budget = {budget}");
            }
            let _ = writeln!(out, "min_sample = {}", g.min_sample);
            let _ = writeln!(out, "bake = {}", quote(&format!("{}s", g.bake_secs)));
            let _ = writeln!(
                out,
                "report_deadline = {}",
                quote(&format!("{}s", g.report_deadline_secs))
            );
            let _ = writeln!(out, "on_silent = {}", quote(g.on_silent));
            let _ = writeln!(out, "approval = {}", g.approval);
        }
        out
    }
}

fn selector(entries: &BTreeMap<String, Match>) -> String {
    let parts: Vec<String> = entries
        .iter()
        .map(|(k, m)| format!("{} = {}", quote(k), m.toml()))
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_waves_renders_valid_toml_with_short_durations() {
        let plan = PlanSpec::four_waves("demo-2", "tulsa").auto_rollback(true);
        let text = plan.to_toml();
        let value: toml::Value = toml::from_str(&text).expect(&text);
        let waves = value["waves"].as_array().unwrap();
        assert_eq!(waves.len(), 4);
        assert_eq!(waves[0]["selector"]["cohort"].as_str(), Some("pig"));
        assert_eq!(
            waves[1]["selector"]["cohort"]["not"].as_array().unwrap()[0].as_str(),
            Some("dog")
        );
        assert_eq!(waves[2]["share"].as_float(), Some(50.0));
        assert_eq!(waves[3]["gate"]["bake"].as_str(), Some("2s"));
        assert_eq!(value["auto_rollback"].as_bool(), Some(true));
        assert_eq!(value["release"].as_str(), Some("demo-2"));
        assert!(value.get("retry").is_none() && value.get("start_at").is_none());

        let text = plan.retry(3, 1).start_at("2030-01-01T00:00:00Z").to_toml();
        let value: toml::Value = toml::from_str(&text).expect(&text);
        assert_eq!(value["retry"]["max_attempts"].as_integer(), Some(3));
        assert_eq!(value["retry"]["backoff"].as_str(), Some("1s"));
        assert_eq!(value["start_at"].as_str(), Some("2030-01-01T00:00:00Z"));
        assert_eq!(value["waves"].as_array().unwrap().len(), 4);
    }
}
