//! Turns a reference and a window snapshot into per-feature statistics and
//! verdicts, and tracks the drift rule's state across evaluations.
//!
//! Pure and synchronous: time is an argument, nothing here logs, sleeps or
//! touches metrics.

use serde::Serialize;

use crate::{
    config::EngineConfig,
    domain::{Kind, Role, Verdict},
    reference::{FeatureReference, RawFeature, Reference},
    stats::{self, Chi2Result, KsResult},
    window::{SampleData, Snapshot},
};

/// Name of the PSI rule, as used in webhooks and status.
pub const PSI_RULE: &str = "psi_threshold";

/// The evaluation of one feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureReport {
    /// Feature name.
    pub name: String,
    /// Input or output.
    pub role: Role,
    /// Numeric or categorical.
    pub kind: Kind,
    /// Non-missing values in the window.
    pub window_samples: u64,
    /// Missing values in the window.
    pub window_missing: u64,
    /// Non-missing values in the reference (0 when the reference lacks the
    /// feature).
    pub reference_samples: u64,
    /// PSI of window against reference.
    pub psi: Option<f64>,
    /// Two-sample KS (numeric).
    pub ks: Option<KsResult>,
    /// Chi-square on the 2 x k table (categorical).
    pub chi2: Option<Chi2Result>,
    /// The feature's verdict under the PSI rule.
    pub verdict: Verdict,
}

/// The evaluation of a model version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Per feature, sorted by name.
    pub features: Vec<FeatureReport>,
    /// Drift if any feature drifts; ok if at least one feature is ok;
    /// otherwise insufficient_data.
    pub verdict: Verdict,
}

/// Evaluates every feature of the window. Features that the reference lacks,
/// or whose kind differs from it, are `insufficient_data`.
pub fn evaluate(reference: Option<&Reference>, window: &Snapshot, cfg: &EngineConfig) -> Report {
    let features: Vec<FeatureReport> = window
        .features
        .iter()
        .map(|(name, sample)| {
            let mut rep = FeatureReport {
                name: name.clone(),
                role: sample.role,
                kind: sample.kind(),
                window_samples: sample.n(),
                window_missing: sample.missing,
                reference_samples: 0,
                psi: None,
                ks: None,
                chi2: None,
                verdict: Verdict::InsufficientData,
            };
            let Some(fr) = reference.and_then(|r| r.features.get(name)) else {
                return rep;
            };
            rep.reference_samples = fr.n();
            if fr.kind() != sample.kind()
                || rep.window_samples < cfg.min_samples as u64
                || rep.window_samples == 0
                || rep.reference_samples == 0
            {
                return rep;
            }
            compare(fr, &sample.data, cfg, &mut rep);
            rep.verdict = match rep.psi {
                Some(psi) if psi > cfg.psi_threshold => Verdict::Drift,
                Some(_) => Verdict::Ok,
                None => Verdict::InsufficientData,
            };
            rep
        })
        .collect();
    let verdict = if features.iter().any(|f| f.verdict == Verdict::Drift) {
        Verdict::Drift
    } else if features.iter().any(|f| f.verdict == Verdict::Ok) {
        Verdict::Ok
    } else {
        Verdict::InsufficientData
    };
    Report { features, verdict }
}

fn compare(fr: &FeatureReference, data: &SampleData, cfg: &EngineConfig, rep: &mut FeatureReport) {
    match (&fr.raw, data) {
        (RawFeature::Numeric { sorted: r, .. }, SampleData::Numeric(c)) => {
            let cur_counts = stats::bin_counts(&fr.edges, c);
            rep.psi = Some(stats::psi(&fr.bin_counts, &cur_counts, cfg.psi_epsilon));
            rep.ks = stats::ks_2samp(r, c);
        }
        (RawFeature::Categorical { counts: rc, .. }, SampleData::Categorical(cc)) => {
            // One bin per category of the sorted union of both samples.
            let mut keys: Vec<&String> = rc.keys().chain(cc.keys()).collect();
            keys.sort();
            keys.dedup();
            let r: Vec<u64> = keys
                .iter()
                .map(|k| rc.get(*k).copied().unwrap_or(0))
                .collect();
            let c: Vec<u64> = keys
                .iter()
                .map(|k| cc.get(*k).copied().unwrap_or(0))
                .collect();
            rep.psi = Some(stats::psi(&r, &c, cfg.psi_epsilon));
            rep.chi2 = stats::chi2_contingency(&r, &c);
        }
        // Kind mismatches were filtered by the caller.
        _ => {}
    }
}

/// Where a rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleState {
    /// The condition does not hold.
    Inactive,
    /// The condition holds, for fewer than `for_evaluations` evaluations.
    Pending,
    /// The condition has held for `for_evaluations` evaluations.
    Firing,
}

impl RuleState {
    /// Stable name for JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleState::Inactive => "inactive",
            RuleState::Pending => "pending",
            RuleState::Firing => "firing",
        }
    }
}

/// The persisted state of the PSI rule of one model version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RuleTracker {
    /// Consecutive evaluations with verdict drift.
    pub consecutive: u32,
    /// When the rule started firing, in ms since the epoch.
    pub firing_since_ms: Option<i64>,
}

/// What an evaluation changed about a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing worth telling anyone.
    None,
    /// The rule started firing.
    Fired,
    /// A firing rule stopped holding.
    Resolved,
}

impl RuleTracker {
    /// The rule's state.
    pub fn state(&self) -> RuleState {
        if self.firing_since_ms.is_some() {
            RuleState::Firing
        } else if self.consecutive > 0 {
            RuleState::Pending
        } else {
            RuleState::Inactive
        }
    }

    /// Feeds one evaluation's verdict. Drift advances the count and fires
    /// after `for_evaluations`; ok resets it and resolves a firing rule;
    /// insufficient data resets the count but does not resolve, because
    /// missing evidence is not evidence that the drift is gone.
    pub fn observe(&mut self, verdict: Verdict, now_ms: i64, for_evaluations: u32) -> Transition {
        match verdict {
            Verdict::Drift => {
                self.consecutive = self.consecutive.saturating_add(1);
                if self.firing_since_ms.is_none() && self.consecutive >= for_evaluations {
                    self.firing_since_ms = Some(now_ms);
                    return Transition::Fired;
                }
                Transition::None
            }
            Verdict::Ok => {
                self.consecutive = 0;
                if self.firing_since_ms.take().is_some() {
                    return Transition::Resolved;
                }
                Transition::None
            }
            Verdict::InsufficientData => {
                self.consecutive = 0;
                Transition::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_fires_after_for_evaluations_and_resolves_once() {
        let mut t = RuleTracker::default();
        assert_eq!(t.observe(Verdict::Drift, 1, 3), Transition::None);
        assert_eq!(t.state(), RuleState::Pending);
        assert_eq!(t.observe(Verdict::Drift, 2, 3), Transition::None);
        assert_eq!(t.observe(Verdict::Drift, 3, 3), Transition::Fired);
        assert_eq!(t.state(), RuleState::Firing);
        assert_eq!(t.firing_since_ms, Some(3));
        assert_eq!(t.observe(Verdict::Drift, 4, 3), Transition::None);
        assert_eq!(t.observe(Verdict::InsufficientData, 5, 3), Transition::None);
        assert_eq!(t.state(), RuleState::Firing);
        assert_eq!(t.observe(Verdict::Ok, 6, 3), Transition::Resolved);
        assert_eq!(t.observe(Verdict::Ok, 7, 3), Transition::None);
        assert_eq!(t.state(), RuleState::Inactive);
    }

    #[test]
    fn interrupted_drift_does_not_fire() {
        let mut t = RuleTracker::default();
        for v in [
            Verdict::Drift,
            Verdict::Drift,
            Verdict::Ok,
            Verdict::Drift,
            Verdict::Drift,
        ] {
            assert_eq!(t.observe(v, 0, 3), Transition::None);
        }
    }
}
