//! The picture of a wave's golden-signal analysis on the rollout page: per signal, the
//! upgraded and control groups' distributions over the compared minutes (a box from the
//! first to the third quartile of the samples, the median, whiskers to the extremes, and
//! one dot per site at its own median), the tolerance line, the verdict and every number.
//!
//! Inline SVG built here, like the bars: no script, no `style` attribute (the CSP allows
//! neither inline script nor inline style; colours come from the stylesheet's classes),
//! and every label and number goes through [`esc`]. It only draws what the engine judged
//! ([`crate::engine::Engine::analyses`]); it never judges anything itself.

use fleetwave_shared::protocol::analysis::{
    Direction, GroupNumbers, SignalAnalysis, Spread, Tolerance, number, p_value, signed,
};

use super::*;
use crate::controller::analysis::AnalysisFact;

/// Width and height of one signal's picture, in SVG units.
const W: f64 = 640.0;
const H: f64 = 120.0;
/// Left margin (the group names) and right margin.
const LEFT: f64 = 90.0;
const RIGHT: f64 = 20.0;

/// One wave's analysis as HTML: a figure per signal (empty when the wave has none).
pub(super) fn wave_analysis_html(wave: u32, facts: &[AnalysisFact]) -> String {
    let mut out = String::new();
    for (i, f) in facts.iter().enumerate() {
        let _ = write!(
            out,
            "<figure class=\"analysis verdict-{v}\" id=\"analysis-{wave}-{i}\" data-signal=\"{s}\" data-verdict=\"{v}\"><figcaption><b>{s}</b> <span class=\"badge verdict-{v}\">{v}</span> {numbers}</figcaption>",
            v = f.verdict.as_str(),
            s = esc(&f.signal),
            numbers = match &f.numbers {
                Some(n) => esc(&numbers_line(n)),
                None => esc(&f.reason),
            },
        );
        if let Some(n) = &f.numbers {
            out.push_str(&svg(
                &format!("{wave}-{i}"),
                n,
                &f.site_medians.upgraded,
                &f.site_medians.control,
            ));
        }
        let _ = write!(
            out,
            "<p class=\"why small\">{}</p></figure>",
            esc(&f.reason)
        );
    }
    out
}

/// The numbers in one line: medians, sizes, effect, p-value, tolerance, minutes.
fn numbers_line(n: &SignalAnalysis) -> String {
    let median = |g: &GroupNumbers| g.median.map(number).unwrap_or_else(|| "-".into());
    let effect = match (n.effect, n.relative_effect) {
        (Some(e), Some(r)) => format!("effect {} ({:+.1} %)", signed(e), r * 100.0),
        (Some(e), None) => format!("effect {}", signed(e)),
        _ => "no effect yet".into(),
    };
    format!(
        "upgraded median {} ({} sites, {} samples) vs control {} ({} sites, {} samples); {effect}; p = {}; tolerance {} ({}); {} minutes",
        median(&n.upgraded),
        n.upgraded.sites,
        n.upgraded.samples,
        median(&n.control),
        n.control.sites,
        n.control.samples,
        n.p_value.map(p_value).unwrap_or_else(|| "-".into()),
        n.tolerance,
        match n.direction {
            Direction::IncreaseIsBad => "an increase is bad",
            Direction::DecreaseIsBad => "a decrease is bad",
        },
        n.minutes,
    )
}

/// Where the tolerance puts the limit of an acceptable upgraded median: past it, the
/// change matters. None without a control median.
fn tolerance_limit(n: &SignalAnalysis) -> Option<f64> {
    let mc = n.control.median?;
    let room = match n.tolerance {
        Tolerance::Absolute(a) => a,
        Tolerance::Relative(r) => r * mc.abs(),
    };
    Some(match n.direction {
        Direction::IncreaseIsBad => mc + room,
        Direction::DecreaseIsBad => mc - room,
    })
}

/// The value range drawn: every extreme, median, site median and the tolerance limit,
/// padded by 5 % (a flat range gets room around it). None when nothing finite is there.
fn range(n: &SignalAnalysis, up: &[f64], ctl: &[f64]) -> Option<(f64, f64)> {
    let spreads = [n.upgraded.spread, n.control.spread];
    let values = spreads
        .iter()
        .flatten()
        .flat_map(|s| [s.min, s.max])
        .chain(up.iter().chain(ctl).copied())
        .chain(tolerance_limit(n))
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold(None, |acc: Option<(f64, f64)>, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })?;
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.1
    };
    Some((lo - pad, hi + pad))
}

fn svg(key: &str, n: &SignalAnalysis, up: &[f64], ctl: &[f64]) -> String {
    let label = format!("{}: upgraded vs control, {}", n.signal, n.verdict.as_str());
    let mut out = format!(
        "<svg class=\"analysis-plot\" data-plot=\"{}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">",
        esc(key),
        esc(&label)
    );
    let Some((lo, hi)) = range(n, up, ctl) else {
        let _ = write!(
            out,
            "<text class=\"an-label\" x=\"{LEFT}\" y=\"60\">no samples to draw yet</text></svg>"
        );
        return out;
    };
    let x = |v: f64| LEFT + (v - lo) / (hi - lo) * (W - LEFT - RIGHT);
    // The tolerance limit, across both rows.
    if let Some(limit) = tolerance_limit(n) {
        let lx = x(limit);
        let _ = write!(
            out,
            "<line class=\"an-tolerance\" x1=\"{lx:.1}\" y1=\"8\" x2=\"{lx:.1}\" y2=\"92\"><title>{}</title></line>",
            esc(&format!(
                "tolerance limit {}: an upgraded median past it is a change that matters",
                number(limit)
            ))
        );
    }
    for (name, class, g, sites, y) in [
        ("upgraded", "upgraded", &n.upgraded, up, 30.0),
        ("control", "control", &n.control, ctl, 70.0),
    ] {
        let _ = write!(
            out,
            "<text class=\"an-label\" x=\"4\" y=\"{:.1}\">{name}</text>",
            y + 4.0
        );
        match g.spread {
            Some(s)
                if [s.min, s.q1, s.median, s.q3, s.max]
                    .iter()
                    .all(|v| v.is_finite()) =>
            {
                out.push_str(&box_plot(class, name, &s, g, y, &x));
            }
            _ => {
                let _ = write!(
                    out,
                    "<text class=\"an-label\" x=\"{LEFT}\" y=\"{:.1}\">no samples yet</text>",
                    y + 4.0
                );
            }
        }
        for (i, v) in sites.iter().filter(|v| v.is_finite()).enumerate() {
            // A fixed jitter so that equal medians stay visible as several dots.
            let dy = ((i * 7) % 11) as f64 - 5.0;
            let _ = write!(
                out,
                "<circle class=\"an-dot an-{class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\"><title>a {name} site's median: {}</title></circle>",
                x(*v),
                y + dy,
                esc(&number(*v))
            );
        }
    }
    // The axis: its ends.
    let _ = write!(
        out,
        "<line class=\"an-axis\" x1=\"{LEFT}\" y1=\"96\" x2=\"{:.1}\" y2=\"96\"/><text class=\"an-tick\" x=\"{LEFT}\" y=\"112\">{}</text><text class=\"an-tick an-end\" x=\"{:.1}\" y=\"112\">{}</text></svg>",
        W - RIGHT,
        esc(&number(lo)),
        W - RIGHT,
        esc(&number(hi)),
    );
    out
}

/// Whiskers from the smallest to the largest sample, a box over the quartiles, a bar at
/// the median.
fn box_plot(
    class: &str,
    name: &str,
    s: &Spread,
    g: &GroupNumbers,
    y: f64,
    x: &impl Fn(f64) -> f64,
) -> String {
    let (x0, x1, xq1, xq3, xm) = (x(s.min), x(s.max), x(s.q1), x(s.q3), x(s.median));
    format!(
        "<g class=\"an-group an-{class}\"><title>{}</title>\
         <line class=\"an-whisker\" x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\"/>\
         <rect class=\"an-box\" x=\"{xq1:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"20\"/>\
         <line class=\"an-median\" data-median=\"{}\" x1=\"{xm:.1}\" y1=\"{:.1}\" x2=\"{xm:.1}\" y2=\"{:.1}\"/></g>",
        esc(&format!(
            "{name}: {} sites, {} samples; min {}, first quartile {}, median {}, third quartile {}, max {}",
            g.sites,
            g.samples,
            number(s.min),
            number(s.q1),
            number(s.median),
            number(s.q3),
            number(s.max)
        )),
        y - 10.0,
        (xq3 - xq1).max(1.0),
        esc(&number(s.median)),
        y - 13.0,
        y + 13.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Verdict;
    use crate::controller::analysis::SiteMedians;

    fn fact(signal: &str, up: Option<Spread>) -> AnalysisFact {
        let group = |spread: Option<Spread>| GroupNumbers {
            sites: 3,
            samples: 30,
            median: spread.map(|s| s.median),
            spread,
        };
        let ctl = Spread {
            min: 9.0,
            q1: 10.0,
            median: 10.5,
            q3: 11.0,
            max: 12.0,
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        AnalysisFact {
            signal: signal.into(),
            verdict: Verdict::Fail,
            reason: format!("{signal}: fail"),
            numbers: Some(SignalAnalysis {
                signal: signal.into(),
                verdict: Verdict::Fail,
                reason: format!("{signal}: fail"),
                direction: Direction::IncreaseIsBad,
                tolerance: Tolerance::Relative(0.1),
                alpha: 0.05,
                min_sites: 3,
                min_samples: 20,
                upgraded: group(up),
                control: group(Some(ctl)),
                effect: up.map(|s| s.median - 10.5),
                relative_effect: up.map(|s| (s.median - 10.5) / 10.5),
                p_value: Some(0.001),
                from: now,
                judged_at: now,
                minutes: 10,
            }),
            site_medians: SiteMedians {
                upgraded: up.map(|s| vec![s.q1, s.median, s.q3]).unwrap_or_default(),
                control: vec![10.0, 10.5, 11.0],
            },
        }
    }

    #[test]
    fn labels_are_escaped_and_no_style_or_script_is_written() {
        let up = Spread {
            min: 12.0,
            q1: 13.0,
            median: 13.5,
            q3: 14.0,
            max: 15.0,
        };
        let html = wave_analysis_html(0, &[fact("<script>alert(1)</script>\"", Some(up))]);
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;"));
        assert!(!html.contains("style="), "{html}");
        // Two boxes, six dots, the tolerance line at 10.5 + 10 % = 11.55.
        assert_eq!(html.matches("class=\"an-box\"").count(), 2);
        assert_eq!(html.matches("<circle").count(), 6);
        assert!(html.contains("tolerance limit 11.55"), "{html}");
        assert!(html.contains("data-median=\"13.5\""), "{html}");
    }

    #[test]
    fn a_group_without_samples_is_said_not_drawn() {
        let html = wave_analysis_html(1, &[fact("error_ratio", None)]);
        assert_eq!(html.matches("class=\"an-box\"").count(), 1);
        assert!(html.contains("no samples yet"), "{html}");
        assert!(html.contains("id=\"analysis-1-0\""));
    }

    #[test]
    fn positions_follow_the_values() {
        let up = Spread {
            min: 12.0,
            q1: 13.0,
            median: 13.5,
            q3: 14.0,
            max: 15.0,
        };
        let f = fact("latency", Some(up));
        let n = f.numbers.as_ref().unwrap();
        let (lo, hi) = range(n, &f.site_medians.upgraded, &f.site_medians.control).unwrap();
        // 9 to 15, padded by 5 % of 6.
        assert!(
            (lo - 8.7).abs() < 1e-9 && (hi - 15.3).abs() < 1e-9,
            "{lo} {hi}"
        );
        // A flat range still has room.
        let flat = Spread {
            min: 2.0,
            q1: 2.0,
            median: 2.0,
            q3: 2.0,
            max: 2.0,
        };
        let mut g = f.clone();
        let nn = g.numbers.as_mut().unwrap();
        nn.upgraded.spread = Some(flat);
        nn.control.spread = Some(flat);
        nn.control.median = Some(2.0);
        nn.tolerance = Tolerance::Absolute(0.0);
        let (lo, hi) = range(nn, &[2.0], &[2.0]).unwrap();
        assert!(lo < 2.0 && hi > 2.0);
    }
}
