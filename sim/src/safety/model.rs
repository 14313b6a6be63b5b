//! The safety benchmark's world, pure: a seeded random generator, each simulated site's
//! profile (baseline signals, timings, whether its link flaps or it goes dark), the
//! per-minute golden signals of a site on the old or the new release, and the classes of
//! release the benchmark rolls out.
//!
//! No I/O and no clock: every value is a function of the seed, the site and the minute,
//! so a run is reproducible from `--seed`.

/// SplitMix64: small, seedable, good enough for simulated noise (never for secrets).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for one purpose, derived from the run's seed and a few numbers (run,
    /// site, stream of draws), so that changing one site's draws moves no other site's.
    pub fn derive(seed: u64, parts: &[u64]) -> Rng {
        let mut r = Rng(seed ^ 0x6a09_e667_f3bc_c909);
        for &p in parts {
            r.0 ^= p.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            r.next_u64();
        }
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform whole number in `lo..=hi`.
    pub fn between(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

/// One class of release, one per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Class {
    /// Installs, stays healthy, signals unchanged: any halt is a false halt.
    Healthy,
    /// The install fails: the application exits on start; the agent rolls back.
    CrashOnStart,
    /// Installs and commits; its health check fails 5 to 20 minutes later.
    FailsHealthCheck,
    /// Installs, health checks pass; error ratio +3 points, p95 latency +30 %.
    SlowDegradation,
    /// 10 % of the sites never report again once they hold the assignment (a release that
    /// cuts boxes off looks like this); the others are healthy.
    Silent,
    /// A healthy release over flapping links: a quarter of the sites are cut off for 5
    /// to 45 minutes at a time, then deliver what they queued in a burst, and a batch
    /// whose answer was lost is sent again (duplicates).
    Flapping,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Healthy,
        Class::CrashOnStart,
        Class::FailsHealthCheck,
        Class::SlowDegradation,
        Class::Silent,
        Class::Flapping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Healthy => "healthy",
            Class::CrashOnStart => "crash on start",
            Class::FailsHealthCheck => "fails health check",
            Class::SlowDegradation => "slow degradation",
            Class::Silent => "10 % silent",
            Class::Flapping => "flapping links",
        }
    }

    /// Whether the release itself is bad, so that the rollout should halt.
    pub fn should_halt(self) -> bool {
        !matches!(self, Class::Healthy | Class::Flapping)
    }
}

/// Share of the sites that go dark after the assignment in [`Class::Silent`].
pub const SILENT_SHARE: f64 = 0.10;
/// Share of the sites behind a flapping link in [`Class::Flapping`].
pub const FLAPPING_SHARE: f64 = 0.25;
/// How much worse the slow degradation makes a site: error ratio plus this, absolute.
pub const DEGRADED_ERROR_POINTS: f64 = 0.03;
/// ...and p95 latency times this.
pub const DEGRADED_LATENCY_FACTOR: f64 = 1.3;
/// Probability that the coordinator's answer to a batch over a flapping link is lost, so
/// that the agent sends the batch again.
pub const LOST_ACK: f64 = 0.3;

/// What makes one site itself: its healthy baselines and its timings.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Error ratio on a healthy release at average traffic (median about 1 %).
    pub error_ratio: f64,
    /// Requests per minute at average traffic (median about 200): fewer requests make
    /// a noisier ratio.
    pub requests_per_minute: f64,
    /// p95 latency in seconds on a healthy release at average traffic (median 0.25 s).
    pub latency_p95: f64,
    /// Minute (0..5) within each five at which the site sends its heartbeat.
    pub heartbeat_offset: u32,
    /// Minutes an install takes, from the lease to the commit (or the failure).
    pub install_minutes: u32,
    /// Minutes after the commit at which the health check fails ([`Class::FailsHealthCheck`]).
    pub unhealthy_after: u32,
    /// Goes dark once it holds the assignment ([`Class::Silent`]).
    pub goes_silent: bool,
    /// Sits behind a flapping link ([`Class::Flapping`]).
    pub flapping: bool,
}

impl Profile {
    pub fn draw(seed: u64, run: u64, site: usize, class: Class) -> Profile {
        let mut r = Rng::derive(seed, &[run, site as u64, 1]);
        Profile {
            error_ratio: 0.01 * (0.3 * r.normal()).exp(),
            requests_per_minute: 200.0 * (0.5 * r.normal()).exp(),
            latency_p95: 0.25 * (0.15 * r.normal()).exp(),
            heartbeat_offset: r.between(0, 4),
            install_minutes: r.between(2, 8),
            unhealthy_after: r.between(5, 20),
            goes_silent: class == Class::Silent && r.chance(SILENT_SHARE),
            flapping: class == Class::Flapping && r.chance(FLAPPING_SHARE),
        }
    }
}

/// The traffic pattern every site shares: a day-long swing of ±20 % around the average
/// (both groups of an analysis see it at the same minutes, which is why the control is
/// compared over the same minutes). `phase` places the run's start within the day.
pub fn daily_load(minute: i64, phase: f64) -> f64 {
    1.0 + 0.2 * (std::f64::consts::TAU * (minute as f64 / 1440.0 + phase)).sin()
}

/// One site's values of the two signals for one minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinuteValues {
    pub error_ratio: f64,
    pub latency_p95: f64,
}

/// A site's signals in `minute` (minutes since the run's start): its baseline times the
/// shared daily load, with per-minute noise (binomial for the error ratio, log-normal
/// 10 % for the latency), worse by the slow degradation when `degraded`.
pub fn minute_values(p: &Profile, load: f64, degraded: bool, noise: &mut Rng) -> MinuteValues {
    let ratio = p.error_ratio * load;
    let requests = p.requests_per_minute * load;
    let binomial_sd = (ratio * (1.0 - ratio) / requests).sqrt();
    let mut error_ratio = (ratio + binomial_sd * noise.normal()).max(0.0);
    let mut latency_p95 = p.latency_p95 * load.sqrt() * (0.1 * noise.normal()).exp();
    if degraded {
        error_ratio += DEGRADED_ERROR_POINTS;
        latency_p95 *= DEGRADED_LATENCY_FACTOR;
    }
    MinuteValues {
        error_ratio: error_ratio.min(1.0),
        latency_p95,
    }
}

/// A flapping link: up and down in turns (up 5 to 30 minutes, down 5 to 45), starting
/// up at a random point of its first turn.
#[derive(Debug, Clone)]
pub struct Link {
    up: bool,
    /// The minute the current turn ends.
    until: i64,
    rng: Rng,
}

impl Link {
    pub fn new(seed: u64, run: u64, site: usize) -> Link {
        let mut rng = Rng::derive(seed, &[run, site as u64, 2]);
        let until = i64::from(rng.between(0, 30));
        Link {
            up: true,
            until,
            rng,
        }
    }

    /// Whether the link is up in `minute` (called with minutes in increasing order).
    pub fn up_at(&mut self, minute: i64) -> bool {
        while minute >= self.until {
            self.up = !self.up;
            let turn = if self.up {
                self.rng.between(5, 30)
            } else {
                self.rng.between(5, 45)
            };
            self.until += i64::from(turn);
        }
        self.up
    }
}

/// Minimum, median and maximum of `v` (None when empty).
pub fn min_median_max(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((s[0], median, s[n - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn median(v: &mut [f64]) -> f64 {
        min_median_max(v).unwrap().1
    }

    #[test]
    fn the_same_seed_gives_the_same_fleet_and_another_seed_another() {
        let a = Profile::draw(7, 0, 3, Class::Healthy);
        let b = Profile::draw(7, 0, 3, Class::Healthy);
        let c = Profile::draw(8, 0, 3, Class::Healthy);
        assert_eq!(a.error_ratio, b.error_ratio);
        assert_ne!(a.error_ratio, c.error_ratio);
    }

    /// Healthy sites scatter around their baselines; the degradation moves the medians
    /// by what the class says (3 points, +30 %), well beyond the noise between sites.
    #[test]
    fn the_degradation_shifts_the_medians_by_what_the_class_says() {
        let mut noise = Rng::derive(1, &[9]);
        let (mut healthy, mut worse) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for site in 0..200 {
            let p = Profile::draw(1, 0, site, Class::SlowDegradation);
            for m in 0..30 {
                let load = daily_load(m, 0.3);
                let h = minute_values(&p, load, false, &mut noise);
                let d = minute_values(&p, load, true, &mut noise);
                healthy.0.push(h.error_ratio);
                healthy.1.push(h.latency_p95);
                worse.0.push(d.error_ratio);
                worse.1.push(d.latency_p95);
            }
        }
        let (he, hl) = (median(&mut healthy.0), median(&mut healthy.1));
        let (we, wl) = (median(&mut worse.0), median(&mut worse.1));
        assert!((0.007..0.014).contains(&he), "healthy error ratio {he}");
        assert!((0.2..0.32).contains(&hl), "healthy p95 {hl}");
        assert!((we - he - 0.03).abs() < 0.003, "{he} -> {we}");
        assert!((wl / hl - 1.3).abs() < 0.03, "{hl} -> {wl}");
        // Every value stays a ratio.
        assert!(
            healthy
                .0
                .iter()
                .chain(&worse.0)
                .all(|v| (0.0..=1.0).contains(v))
        );
    }

    #[test]
    fn the_shares_of_silent_and_flapping_sites_are_about_as_configured() {
        let silent = (0..2000)
            .filter(|&s| Profile::draw(3, 1, s, Class::Silent).goes_silent)
            .count();
        let flapping = (0..2000)
            .filter(|&s| Profile::draw(3, 1, s, Class::Flapping).flapping)
            .count();
        assert!((150..250).contains(&silent), "{silent} of 2000 silent");
        assert!(
            (400..600).contains(&flapping),
            "{flapping} of 2000 flapping"
        );
        assert!(!(0..2000).any(|s| Profile::draw(3, 1, s, Class::Healthy).goes_silent));
    }

    #[test]
    fn a_flapping_link_goes_down_and_up_within_its_bounds() {
        let mut link = Link::new(5, 0, 1);
        let states: Vec<bool> = (0..600).map(|m| link.up_at(m)).collect();
        let mut runs = Vec::new();
        let mut start = 0;
        for m in 1..states.len() {
            if states[m] != states[m - 1] {
                runs.push((states[m - 1], m - start));
                start = m;
            }
        }
        assert!(runs.iter().any(|r| !r.0), "the link went down");
        // The first turn may be cut short; the others keep to their bounds.
        for &(up, len) in &runs[1..] {
            let (lo, hi) = if up { (5, 30) } else { (5, 45) };
            assert!(
                (lo..=hi).contains(&len),
                "{} for {len} minutes",
                if up { "up" } else { "down" }
            );
        }
    }

    #[test]
    fn the_daily_load_swings_by_a_fifth() {
        let loads: Vec<f64> = (0..1440).map(|m| daily_load(m, 0.0)).collect();
        let (lo, _, hi) = min_median_max(&loads).unwrap();
        assert!(
            (lo - 0.8).abs() < 1e-3 && (hi - 1.2).abs() < 1e-3,
            "{lo}..{hi}"
        );
    }
}
