//! What the demo fleet is made of, as data and files: the sites and their labels, the demo
//! app's artifacts and release manifests, and the two rollout plans (each site's files and
//! agent configuration come from `fleetwave_launch`, shared with the e2e harness). Pure builders: this module writes files when asked and starts nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// The release stream (release `name`) of the demo app.
pub const STREAM: &str = fleetwave_launch::DEMO_STREAM;

/// The city whose sites form the canary wave.
pub const CANARY_CITY: &str = "lyon";

/// Where non-canary sites are: (region, city, IANA zone), round robin.
const PLACES: &[(&str, &str, &str)] = &[
    ("us-east", "boston", "America/New_York"),
    ("us-central", "tulsa", "America/Chicago"),
    ("us-west", "portland", "America/Los_Angeles"),
    ("eu-west", "dublin", "Europe/Dublin"),
    ("ap-northeast", "osaka", "Asia/Tokyo"),
];

/// One demo site.
#[derive(Debug, Clone)]
pub struct SiteSpec {
    pub id: String,
    pub labels: BTreeMap<String, String>,
}

/// How many pigs, canaries, generals and dogs `n` sites get: about a sixth each of pigs,
/// canary-city sites and dogs, the rest general (at least one of each).
pub fn cohort_counts(n: usize) -> [(&'static str, usize); 4] {
    let pigs = (n / 6).max(1);
    let dogs = (n / 6).max(1);
    let canary = (n / 6).max(1);
    let general = n.saturating_sub(pigs + dogs + canary).max(1);
    [
        ("pig", pigs),
        ("canary", canary),
        ("general", general),
        ("dog", dogs),
    ]
}

/// The sites of an `n`-site demo (n >= 4): `pig-1`, `canary-1`, `general-1`, ... `dog-1`.
pub fn sites(n: usize) -> Vec<SiteSpec> {
    let mut out = Vec::new();
    let mut spread = 0usize;
    for (cohort, count) in cohort_counts(n) {
        for i in 1..=count {
            let (region, city, tz) = if cohort == "canary" {
                ("eu-west", CANARY_CITY, "Europe/Paris")
            } else {
                let p = PLACES[spread % PLACES.len()];
                spread += 1;
                p
            };
            let labels = BTreeMap::from([
                ("cohort".to_string(), cohort.to_string()),
                ("region".to_string(), region.to_string()),
                ("city".to_string(), city.to_string()),
                ("tz".to_string(), tz.to_string()),
                ("format".to_string(), "store".to_string()),
            ]);
            out.push(SiteSpec {
                id: format!("{cohort}-{i}"),
                labels,
            });
        }
    }
    out
}

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn q_path(p: &Path) -> String {
    q(&p.display().to_string())
}

/// One version of the demo app.
#[derive(Debug, Clone)]
pub struct DemoVersion {
    pub version: &'static str,
    pub counter: u64,
    pub healthy: bool,
    /// The traffic its app simulates on `/metrics`: the share of failed requests and the
    /// mean latency in seconds (None: the app's defaults, 1 % and 0.05 s).
    pub metrics: Option<(f64, f64)>,
}

impl DemoVersion {
    pub fn release_id(&self) -> String {
        format!("{STREAM}-{}", self.version)
    }

    /// The `app.toml` the demo app reads.
    pub fn app_toml(&self) -> String {
        let mut out = format!(
            "version = {}\nhealthy = {}\n",
            q(self.version),
            self.healthy
        );
        if let Some((error_ratio, latency)) = self.metrics {
            let _ = write!(
                out,
                "\n[metrics]\nerror_ratio = {error_ratio:?}\nlatency_seconds = {latency:?}\n"
            );
        }
        out
    }

    /// How the demo names the version's app in its lines.
    pub fn words(&self) -> &'static str {
        match (self.healthy, self.metrics) {
            (false, _) => "FAILS its health check",
            (true, Some(_)) => "healthy, but slower and failing more requests",
            (true, None) => "healthy",
        }
    }

    /// Writes `<dir>/demo-<version>.tar.gz` holding `app.toml`.
    pub fn write_artifact(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(format!("{}.tar.gz", self.release_id()));
        let file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let body = self.app_toml();
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, "app.toml", body.as_bytes())?;
        tar.into_inner()?.finish()?.sync_all()?;
        Ok(path)
    }

    /// The release manifest, as an operator would write it for `fleetwave release sign`.
    pub fn manifest(&self, artifact: &Path) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "id = {}", q(&self.release_id()));
        let _ = writeln!(out, "name = {}", q(STREAM));
        let _ = writeln!(out, "version = {}", q(self.version));
        let _ = writeln!(out, "kind = \"app\"");
        let _ = writeln!(out, "counter = {}", self.counter);
        let _ = writeln!(out, "expires_in = \"30d\"");
        let _ = writeln!(out, "\n[install]\nformat = \"tar.gz\"");
        let _ = writeln!(out, "\n[[artifacts]]");
        let _ = writeln!(out, "name = \"app.tar.gz\"");
        let _ = writeln!(out, "url = \"/v1/artifacts/{{sha256}}\"");
        let _ = writeln!(out, "file = {}", q_path(artifact));
        out
    }
}

/// 1.0.0 (what the sites run at the start), 1.1.0 (good), 1.2.0 (fails its health check),
/// 1.3.0 (answers its health check, but 15 % of its requests fail instead of 1 % and it
/// answers three times slower).
pub fn versions() -> [DemoVersion; 4] {
    [
        DemoVersion {
            version: "1.0.0",
            counter: 1,
            healthy: true,
            metrics: None,
        },
        DemoVersion {
            version: "1.1.0",
            counter: 2,
            healthy: true,
            metrics: None,
        },
        DemoVersion {
            version: "1.2.0",
            counter: 3,
            healthy: false,
            metrics: None,
        },
        DemoVersion {
            version: "1.3.0",
            counter: 4,
            healthy: true,
            metrics: Some((0.15, 0.15)),
        },
    ]
}

/// The golden signals every demo agent scrapes from its app (`[signals.demo]`, appended
/// to the agent's configuration): the error ratio and the p95 latency, every 5 s.
pub fn signals_config(app: std::net::SocketAddr) -> String {
    format!(
        r#"
# Golden signals from the demo app, summarized per minute (docs/agent.md).
[signals.{STREAM}]
scrape_url = "http://{app}/metrics"
interval_secs = 5
timeout_secs = 2

[[signals.{STREAM}.signal]]
name = "error_ratio"
kind = "ratio"
numerator = "http_errors_total"
denominator = "http_requests_total"

[[signals.{STREAM}.signal]]
name = "latency_p95_seconds"
kind = "quantile"
metric = "http_request_duration_seconds"
quantile = 0.95
"#
    )
}

/// The plan of the third act: a first wave of the pigs and the canary city, judged on
/// both golden signals against the sites still on the previous release; its bake is long
/// enough that only the analysis can end it.
pub fn analysis_plan(release_id: &str, title: &str) -> String {
    let gate = "{ success_ratio = 1.0, failure_budget = 0, bake = \"30m\", report_deadline = \"10m\", on_silent = \"fail\" }";
    format!(
        r#"# Rollout plan written by `fleetwave demo`; the format is in docs/waves.md.
name = {title}
release = {release}
selector = {{ format = "store" }}
auto_rollback = true
assignment_ttl = "1h"

[[waves]]
name = "pigs and canary city"
selector = {{ cohort = ["pig", "canary"] }}
gate = {gate}

[[waves]]
name = "the rest"
gate = {gate}

[[analysis]]
signal = "error_ratio"
direction = "increase_is_bad"
tolerance = {{ absolute = 0.03 }}
min_sites = 2
min_samples = 5

[[analysis]]
signal = "latency_p95_seconds"
direction = "increase_is_bad"
tolerance = {{ relative = 0.3 }}
min_sites = 2
min_samples = 5
"#,
        title = q(title),
        release = q(release_id),
    )
}

/// The wave plan: pigs, the canary city, 25% of the rest, the rest, dogs last. Bake times
/// of a few seconds so the demo finishes in a minute or two.
pub fn plan(release_id: &str, title: &str) -> String {
    let gate = "{ success_ratio = 1.0, failure_budget = 0, bake = \"3s\", report_deadline = \"2m\", on_silent = \"fail\" }";
    format!(
        r#"# Rollout plan written by `fleetwave demo`; the format is in docs/waves.md.
name = {title}
release = {release}
selector = {{ format = "store" }}
auto_rollback = true
assignment_ttl = "1h"

[[waves]]
name = "pigs"
selector = {{ cohort = "pig" }}
gate = {gate}

[[waves]]
name = "canary city"
selector = {{ city = {city}, cohort = {{ not = ["dog", "pig"] }} }}
gate = {gate}

[[waves]]
name = "25%"
share = 25
selector = {{ cohort = {{ not = "dog" }} }}
gate = {gate}

[[waves]]
name = "the rest"
selector = {{ cohort = {{ not = "dog" }} }}
gate = {gate}

# The last wave takes every site left: the dogs.
[[waves]]
name = "dogs"
gate = {gate}
"#,
        title = q(title),
        release = q(release_id),
        city = q(CANARY_CITY),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dozen_sites_spread_over_every_cohort() {
        let s = sites(12);
        assert_eq!(s.len(), 12);
        let count = |c: &str| s.iter().filter(|x| x.labels["cohort"] == c).count();
        assert_eq!(
            (
                count("pig"),
                count("canary"),
                count("general"),
                count("dog")
            ),
            (2, 2, 6, 2)
        );
        assert!(
            s.iter()
                .filter(|x| x.labels["cohort"] == "canary")
                .all(|x| x.labels["city"] == CANARY_CITY)
        );
        for site in &s {
            jiff::tz::TimeZone::get(&site.labels["tz"]).expect("a real IANA zone");
        }
        let small = sites(4);
        assert_eq!(small.len(), 4);
        assert_eq!(sites(6).len(), 6);
    }

    #[test]
    fn the_plan_is_valid_toml_with_five_waves_and_the_dogs_last() {
        let text = plan("demo-1.1.0", "demo 1.1.0");
        let v: toml::Value = toml::from_str(&text).expect(&text);
        let waves = v["waves"].as_array().unwrap();
        assert_eq!(waves.len(), 5);
        assert_eq!(waves[4]["name"].as_str(), Some("dogs"));
        assert!(waves[4].get("selector").is_none());
        assert_eq!(v["release"].as_str(), Some("demo-1.1.0"));
    }

    #[test]
    fn the_slower_release_and_its_plan_say_what_the_analysis_needs() {
        let slow = &versions()[3];
        let app: toml::Value = toml::from_str(&slow.app_toml()).unwrap();
        assert_eq!(app["healthy"].as_bool(), Some(true));
        assert_eq!(app["metrics"]["error_ratio"].as_float(), Some(0.15));
        assert_eq!(app["metrics"]["latency_seconds"].as_float(), Some(0.15));
        assert!(!versions()[1].app_toml().contains("[metrics]"));
        let text = analysis_plan(&slow.release_id(), "t");
        let plan: toml::Value = toml::from_str(&text).expect(&text);
        assert_eq!(plan["waves"].as_array().map(Vec::len), Some(2));
        let signals: Vec<&str> = plan["analysis"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["signal"].as_str().unwrap())
            .collect();
        assert_eq!(signals, ["error_ratio", "latency_p95_seconds"]);
        let agent: toml::Value =
            toml::from_str(&signals_config("127.0.0.1:4100".parse().unwrap())).unwrap();
        let names: Vec<&str> = agent["signals"][STREAM]["signal"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, signals, "the agents scrape what the plan judges");
    }

    #[test]
    fn the_manifest_names_the_artifact_file() {
        let m = versions()[2].manifest(Path::new("/x/demo-1.2.0.tar.gz"));
        let v: toml::Value = toml::from_str(&m).expect(&m);
        assert_eq!(v["id"].as_str(), Some("demo-1.2.0"));
        assert_eq!(v["counter"].as_integer(), Some(3));
    }
}
