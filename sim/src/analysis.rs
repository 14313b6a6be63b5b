//! The golden-signal judge's cost: one wave of N upgraded sites against N control sites,
//! S signals each, judged by [`fleetwave_coordinator::analysis::judge`] in-process (what a
//! controller pass would add). The samples are generated once, outside the timing, from a
//! fixed seed (a small xorshift generator: the figures are reproducible); every third
//! signal is degraded on the upgraded group so that the run exercises Pass and Fail.
//! Nothing here asserts a time.

use std::time::{Duration, Instant};

use fleetwave_coordinator::analysis::{self, Direction, SignalConfig, Tolerance, Verdict};

/// xorshift64*: deterministic noise for the samples, not for anything secret.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Judges `signals` signals over `sites` upgraded and `sites` control samples, `passes`
/// times; prints the median, min and max time per pass. Returns the median.
pub fn run(sites: usize, signals: usize, passes: usize) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        sites > 0 && signals > 0 && passes > 0,
        "--sites, --signals and --passes must be at least 1"
    );
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut data = Vec::with_capacity(signals);
    for s in 0..signals {
        let config = SignalConfig::new(
            format!("signal_{s}"),
            Direction::IncreaseIsBad,
            Tolerance::Relative(0.1),
            20,
            analysis::DEFAULT_ALPHA,
        )?;
        let degrade = if s % 3 == 0 { 1.3 } else { 1.0 };
        let control: Vec<f64> = (0..sites).map(|_| 100.0 + 20.0 * noise.next()).collect();
        let upgraded: Vec<f64> = (0..sites)
            .map(|_| (100.0 + 20.0 * noise.next()) * degrade)
            .collect();
        data.push((config, upgraded, control));
    }
    let mut times = Vec::with_capacity(passes);
    let mut failed = 0;
    for _ in 0..passes {
        let started = Instant::now();
        failed = 0;
        for (config, upgraded, control) in &data {
            let j = analysis::judge(config, upgraded, control)?;
            failed += usize::from(j.verdict == Verdict::Fail);
        }
        times.push(started.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = times[times.len() / 2];
    println!(
        "analysis (pure judge, in-process): {sites} upgraded vs {sites} control sites, {signals} signals: median {:.1} ms, min {:.1} ms, max {:.1} ms over {passes} passes ({failed} of {signals} signals fail, as degraded)",
        ms(median),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
    Ok(median)
}
