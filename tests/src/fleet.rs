//! The fleet fixture: one coordinator and N sites laid out in a temp directory, described
//! as data so that a scenario reads as "these sites, this plan, this fault".
//!
//! [`FleetSpec`] says which sites exist and their labels (cohort, region, city, time zone);
//! [`FleetDirs`] lays out the directories (coordinator dir, one state/app/log dir per site).
//! Starting the real processes builds on this layout. This
//! module never talks to the network and never decides what a scenario asserts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{HarnessError, Result};

/// The four cohorts, in the order waves normally reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cohort {
    Pig,
    Canary,
    General,
    Dog,
}

impl Cohort {
    pub fn as_str(self) -> &'static str {
        match self {
            Cohort::Pig => "pig",
            Cohort::Canary => "canary",
            Cohort::General => "general",
            Cohort::Dog => "dog",
        }
    }
}

/// Where a site is: region, city and IANA time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub region: &'static str,
    pub city: &'static str,
    pub tz: &'static str,
}

/// The places test sites are spread over, round robin. The first is the canary city.
pub const PLACES: &[Place] = &[
    Place {
        region: "us-central",
        city: "tulsa",
        tz: "America/Chicago",
    },
    Place {
        region: "us-east",
        city: "boston",
        tz: "America/New_York",
    },
    Place {
        region: "us-west",
        city: "portland",
        tz: "America/Los_Angeles",
    },
    Place {
        region: "eu-west",
        city: "dublin",
        tz: "Europe/Dublin",
    },
];

/// One site: its id and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSpec {
    pub id: String,
    pub cohort: Cohort,
    pub labels: BTreeMap<String, String>,
}

impl SiteSpec {
    /// A site with the standard labels (`cohort`, `region`, `city`, `tz`).
    pub fn new(id: impl Into<String>, cohort: Cohort, place: &Place) -> SiteSpec {
        let mut labels = BTreeMap::new();
        labels.insert("cohort".to_string(), cohort.as_str().to_string());
        labels.insert("region".to_string(), place.region.to_string());
        labels.insert("city".to_string(), place.city.to_string());
        labels.insert("tz".to_string(), place.tz.to_string());
        SiteSpec {
            id: id.into(),
            cohort,
            labels,
        }
    }

    /// Adds or replaces a label.
    pub fn label(mut self, key: &str, value: &str) -> SiteSpec {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn tz(&self) -> &str {
        self.labels.get("tz").map(String::as_str).unwrap_or("UTC")
    }

    /// `key=value` pairs, sorted by key.
    pub fn label_pairs(&self) -> Vec<String> {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

/// Which sites a scenario runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSpec {
    pub sites: Vec<SiteSpec>,
}

impl FleetSpec {
    /// `pigs` pig sites, `canaries` canary sites (all in the canary city), `general`
    /// general sites and `dogs` dog sites; ids say the cohort (`pig-1`, `canary-1`, ...).
    /// Non-canary sites are spread round robin over [`PLACES`].
    pub fn cohorts(pigs: usize, canaries: usize, general: usize, dogs: usize) -> FleetSpec {
        let mut sites = Vec::new();
        let mut spread = 0usize;
        for (cohort, count) in [
            (Cohort::Pig, pigs),
            (Cohort::Canary, canaries),
            (Cohort::General, general),
            (Cohort::Dog, dogs),
        ] {
            for i in 1..=count {
                let place = if cohort == Cohort::Canary {
                    &PLACES[0]
                } else {
                    spread += 1;
                    &PLACES[spread % PLACES.len()]
                };
                sites.push(SiteSpec::new(
                    format!("{}-{i}", cohort.as_str()),
                    cohort,
                    place,
                ));
            }
        }
        FleetSpec { sites }
    }

    /// The smallest fleet that exercises four waves: one pig, one canary, two general,
    /// one dog.
    pub fn small() -> FleetSpec {
        FleetSpec::cohorts(1, 1, 2, 1)
    }

    pub fn site(&self, id: &str) -> Option<&SiteSpec> {
        self.sites.iter().find(|s| s.id == id)
    }

    pub fn in_cohort(&self, cohort: Cohort) -> impl Iterator<Item = &SiteSpec> {
        self.sites.iter().filter(move |s| s.cohort == cohort)
    }

    /// Changes one site (e.g. to give it a window or a different zone).
    pub fn with_site(mut self, id: &str, change: impl FnOnce(SiteSpec) -> SiteSpec) -> FleetSpec {
        if let Some(pos) = self.sites.iter().position(|s| s.id == id) {
            let site = self.sites.remove(pos);
            self.sites.insert(pos, change(site));
        }
        self
    }
}

/// The directories of one site.
#[derive(Debug, Clone)]
pub struct SiteDirs {
    /// `sites/<id>`: everything of this site.
    pub root: PathBuf,
    /// The agent's state directory (its SQLite database, device key, trust state).
    pub state: PathBuf,
    /// Where the `app` executor keeps versions and the `current` symlink.
    pub app: PathBuf,
    /// The agent's configuration file.
    pub config: PathBuf,
}

/// The directory layout of a whole test fleet, under one temp dir removed on drop
/// (kept when `FLEETWAVE_E2E_KEEP` is set, for reading a failure afterwards).
#[derive(Debug)]
pub struct FleetDirs {
    temp: Option<tempfile::TempDir>,
    root: PathBuf,
    /// The coordinator's directory (`coordinator init --dir`).
    pub coordinator: PathBuf,
    /// Captured output of every process.
    pub logs: PathBuf,
    /// Scratch space for releases, plans and artifacts the scenario builds.
    pub work: PathBuf,
    pub sites: BTreeMap<String, SiteDirs>,
}

impl FleetDirs {
    pub fn create(spec: &FleetSpec) -> Result<FleetDirs> {
        let temp = tempfile::Builder::new()
            .prefix("fleetwave-e2e-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the fleet's temp dir", e))?;
        let root = temp.path().to_path_buf();
        let mkdir = |p: &Path| {
            std::fs::create_dir_all(p)
                .map_err(|e| HarnessError::io(format!("creating {}", p.display()), e))
        };
        let coordinator = root.join("coordinator");
        let logs = root.join("logs");
        let work = root.join("work");
        for dir in [&logs, &work] {
            mkdir(dir)?;
        }
        let mut sites = BTreeMap::new();
        for site in &spec.sites {
            if sites.contains_key(&site.id) {
                return Err(HarnessError::Fleet(format!(
                    "site id {:?} appears twice in the fleet spec",
                    site.id
                )));
            }
            let site_root = root.join("sites").join(&site.id);
            let dirs = SiteDirs {
                state: site_root.join("state"),
                app: site_root.join("apps"),
                config: site_root.join("agent.toml"),
                root: site_root,
            };
            mkdir(&dirs.state)?;
            mkdir(&dirs.app)?;
            sites.insert(site.id.clone(), dirs);
        }
        let keep = std::env::var_os("FLEETWAVE_E2E_KEEP").is_some();
        let temp = if keep {
            eprintln!("fleet kept at {}", root.display());
            let _ = temp.keep();
            None
        } else {
            Some(temp)
        };
        Ok(FleetDirs {
            temp,
            root,
            coordinator,
            logs,
            work,
            sites,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn site(&self, id: &str) -> Result<&SiteDirs> {
        self.sites
            .get(id)
            .ok_or_else(|| HarnessError::Fleet(format!("no site {id:?} in this fleet")))
    }

    /// Whether the temp dir is removed on drop.
    pub fn is_temporary(&self) -> bool {
        self.temp.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohorts_give_every_site_the_standard_labels() {
        let spec = FleetSpec::cohorts(1, 2, 3, 1);
        assert_eq!(spec.sites.len(), 7);
        let ids: Vec<_> = spec.sites.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "pig-1",
                "canary-1",
                "canary-2",
                "general-1",
                "general-2",
                "general-3",
                "dog-1"
            ]
        );
        for site in &spec.sites {
            for key in ["cohort", "region", "city", "tz"] {
                assert!(site.labels.contains_key(key), "{} lacks {key}", site.id);
            }
            assert_eq!(site.labels["cohort"], site.cohort.as_str());
            jiff::tz::TimeZone::get(site.tz()).expect("a real IANA zone");
        }
        // Every canary is in the canary city.
        assert!(
            spec.in_cohort(Cohort::Canary)
                .all(|s| s.labels["city"] == "tulsa")
        );
        // The general sites are spread over more than one region.
        let regions: std::collections::BTreeSet<_> = spec
            .in_cohort(Cohort::General)
            .map(|s| s.labels["region"].clone())
            .collect();
        assert!(regions.len() > 1);
    }

    #[test]
    fn with_site_changes_one_site_in_place() {
        let spec = FleetSpec::small().with_site("general-1", |s| s.label("tz", "Asia/Tokyo"));
        assert_eq!(spec.site("general-1").unwrap().tz(), "Asia/Tokyo");
        assert_eq!(spec.sites[2].id, "general-1");
    }

    #[test]
    fn dirs_are_created_per_site_and_removed_on_drop() {
        let spec = FleetSpec::small();
        let dirs = FleetDirs::create(&spec).unwrap();
        let root = dirs.root().to_path_buf();
        for site in &spec.sites {
            let d = dirs.site(&site.id).unwrap();
            assert!(d.state.is_dir());
            assert!(d.app.is_dir());
        }
        assert!(dirs.site("nope").is_err());
        if dirs.is_temporary() {
            drop(dirs);
            assert!(!root.exists());
        }
    }

    #[test]
    fn duplicate_site_ids_are_refused() {
        let mut spec = FleetSpec::small();
        spec.sites.push(spec.sites[0].clone());
        let err = FleetDirs::create(&spec).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
    }
}
