//! Golden-signal analysis: is the upgraded group of a wave worse than a control group of
//! sites still on the previous release, signal by signal?
//!
//! - [`verdict`]: the judge, one signal to Pass | Inconclusive | Fail with every number
//!   kept and a reason naming the signal (its module docs state the semantics exactly);
//! - [`mann_whitney`]: the one-sided Mann–Whitney U test it uses.
//!
//! Pure decision code, like [`crate::controller`]: samples and settings in, verdicts out.
//! It never reads a clock, a store or the network, and it never halts a wave itself.
//! docs/analysis.md explains the statistics for an operator.

pub mod mann_whitney;
pub mod verdict;

pub use mann_whitney::MannWhitney;
pub use verdict::{
    AnalysisError, DEFAULT_ALPHA, Direction, Effect, Group, GroupSummary, Judgement, SignalConfig,
    Spread, Tolerance, Verdict, judge, median, spread,
};
