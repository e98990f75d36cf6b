//! Drift rules: which statistic, on which features, compared how, combined
//! how across features, with which multiple-testing correction; and the
//! per-rule state machine (inactive → pending → firing, and back through a
//! resolution) with `for` and `keep_firing_for`.
//!
//! Pure: a rule is evaluated against a [`Report`] of one evaluation; time is
//! an argument of [`Tracker::observe`].

use serde::Serialize;

use crate::{
    detector::{FeatureReport, Report},
    domain::{Role, Verdict},
};

/// The statistic a rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// Population stability index.
    Psi,
    /// Two-sample KS p-value (numeric).
    KsPvalue,
    /// Two-sample KS statistic D (numeric).
    KsStatistic,
    /// Jensen-Shannon distance over the PSI bins.
    Js,
    /// Wasserstein-1 divided by the reference's standard deviation (numeric).
    WassersteinNorm,
    /// Hellinger distance over the PSI bins.
    Hellinger,
    /// Chi-square p-value (categorical).
    Chi2Pvalue,
    /// Cramér-von Mises p-value (numeric).
    CvmPvalue,
    /// Share of missing values in the window.
    MissingShare,
}

impl Statistic {
    /// Stable name for config, JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Statistic::Psi => "psi",
            Statistic::KsPvalue => "ks_pvalue",
            Statistic::KsStatistic => "ks_statistic",
            Statistic::Js => "js",
            Statistic::WassersteinNorm => "wasserstein_norm",
            Statistic::Hellinger => "hellinger",
            Statistic::Chi2Pvalue => "chi2_pvalue",
            Statistic::CvmPvalue => "cvm_pvalue",
            Statistic::MissingShare => "missing_share",
        }
    }

    /// P-value statistics, to which multiple-testing corrections apply.
    pub fn is_pvalue(self) -> bool {
        matches!(
            self,
            Statistic::KsPvalue | Statistic::Chi2Pvalue | Statistic::CvmPvalue
        )
    }

    /// The statistic's value for a feature, when it applies and was computed.
    pub fn of(self, f: &FeatureReport) -> Option<f64> {
        let v = match self {
            Statistic::Psi => f.psi,
            Statistic::KsPvalue => f.ks.map(|k| k.pvalue),
            Statistic::KsStatistic => f.ks.map(|k| k.statistic),
            Statistic::Js => f.js,
            Statistic::WassersteinNorm => f.wasserstein_norm,
            Statistic::Hellinger => f.hellinger,
            Statistic::Chi2Pvalue => f.chi2.map(|c| c.pvalue),
            Statistic::CvmPvalue => f.cvm.map(|c| c.pvalue),
            Statistic::MissingShare => {
                let total = f.window_samples + f.window_missing;
                (total > 0).then(|| f.window_missing as f64 / total as f64)
            }
        };
        v.filter(|x| x.is_finite())
    }
}

/// How a value is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Op {
    /// value > threshold.
    #[serde(rename = ">")]
    Gt,
    /// value >= threshold.
    #[serde(rename = ">=")]
    Ge,
    /// value < threshold.
    #[serde(rename = "<")]
    Lt,
    /// value <= threshold.
    #[serde(rename = "<=")]
    Le,
}

impl Op {
    fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
        }
    }

    /// The operator as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }
}

/// How per-feature results combine into the rule's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Drift when any evaluated feature trips.
    Any,
    /// Drift when at least this share (0-1) of the evaluated features trips,
    /// as Evidently's dataset drift.
    Share(f64),
    /// Drift when at least this many features trip.
    Count(u32),
}

/// Multiple-testing correction across the rule's features (p-value rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// Compare each p-value with the threshold as is.
    None,
    /// p < alpha / m.
    Bonferroni,
    /// Benjamini-Hochberg false discovery rate at level alpha.
    #[serde(rename = "benjamini_hochberg")]
    BenjaminiHochberg,
}

/// Which columns a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleFilter {
    /// Input features only.
    Input,
    /// Model outputs only (prediction drift).
    Output,
    /// Both.
    Any,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// Models it applies to (globs with `*` and `?`).
    pub models: Vec<String>,
    /// The statistic.
    pub statistic: Statistic,
    /// Feature names or globs.
    pub features: Vec<String>,
    /// Inputs, outputs or both.
    pub role: RoleFilter,
    /// Comparison.
    pub op: Op,
    /// Threshold (alpha for p-value rules).
    pub threshold: f64,
    /// Combination across features.
    pub combine: Combine,
    /// Correction for p-value rules.
    pub correction: Correction,
    /// Features with fewer window samples are not evaluated.
    pub min_samples: u64,
    /// Consecutive drifting evaluations before firing.
    pub for_evaluations: u32,
    /// Evaluations a firing rule keeps firing after its condition clears.
    pub keep_firing_for: u32,
    /// Free-form severity, passed to webhooks.
    pub severity: String,
    /// Webhook target names; empty: all targets.
    pub webhooks: Vec<String>,
    /// The window it judges; None: the model's first window.
    pub window: Option<String>,
}

/// One feature's value under a rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureValue {
    /// Feature name.
    pub feature: String,
    /// The statistic's value.
    pub value: f64,
    /// The threshold it was compared with, after correction.
    pub threshold: f64,
    /// Whether the condition holds for this feature.
    pub tripped: bool,
}

/// A rule's result at one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// Rule name.
    pub rule: String,
    /// ok, drift or insufficient_data.
    pub verdict: Verdict,
    /// Features evaluated (enough samples, statistic applicable).
    pub evaluated: usize,
    /// Per evaluated feature, sorted by name.
    pub values: Vec<FeatureValue>,
}

impl Outcome {
    /// The features that tripped.
    pub fn tripped(&self) -> impl Iterator<Item = &FeatureValue> {
        self.values.iter().filter(|v| v.tripped)
    }
}

/// Matches `name` against a glob with `*` (any run) and `?` (one char).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

impl Rule {
    /// Whether the rule applies to `model`.
    pub fn applies_to(&self, model: &str) -> bool {
        self.models.iter().any(|p| glob_match(p, model))
    }

    fn selects(&self, f: &FeatureReport) -> bool {
        let role_ok = match self.role {
            RoleFilter::Any => true,
            RoleFilter::Input => f.role == Role::Input,
            RoleFilter::Output => f.role == Role::Output,
        };
        role_ok && self.features.iter().any(|p| glob_match(p, &f.name))
    }

    /// Evaluates the rule on one evaluation's report.
    pub fn evaluate(&self, report: &Report) -> Outcome {
        let mut vals: Vec<(String, f64)> = report
            .features
            .iter()
            .filter(|f| self.selects(f))
            .filter(|f| {
                let n = match self.statistic {
                    // The missing share is about all rows, missing included.
                    Statistic::MissingShare => f.window_samples + f.window_missing,
                    _ => f.window_samples,
                };
                n >= self.min_samples
                    && (self.statistic == Statistic::MissingShare || f.reference_samples > 0)
            })
            .filter_map(|f| self.statistic.of(f).map(|v| (f.name.clone(), v)))
            .collect();
        vals.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vals.len();
        let thresholds: Vec<f64> = if self.statistic.is_pvalue() {
            match self.correction {
                Correction::None => vec![self.threshold; m],
                Correction::Bonferroni => vec![self.threshold / m.max(1) as f64; m],
                Correction::BenjaminiHochberg => bh_thresholds(&vals, self.threshold),
            }
        } else {
            vec![self.threshold; m]
        };
        let values: Vec<FeatureValue> = vals
            .into_iter()
            .zip(thresholds)
            .map(|((feature, value), threshold)| FeatureValue {
                tripped: self.op.holds(value, threshold),
                feature,
                value,
                threshold,
            })
            .collect();
        let n_tripped = values.iter().filter(|v| v.tripped).count();
        let verdict = if m == 0 {
            Verdict::InsufficientData
        } else {
            let drift = match self.combine {
                Combine::Any => n_tripped >= 1,
                Combine::Share(x) => n_tripped as f64 / m as f64 >= x,
                Combine::Count(k) => n_tripped >= k as usize,
            };
            if drift {
                Verdict::Drift
            } else {
                Verdict::Ok
            }
        };
        Outcome {
            rule: self.name.clone(),
            verdict,
            evaluated: m,
            values,
        }
    }
}

/// Benjamini-Hochberg: with p-values sorted ascending, the largest k with
/// p_(k) <= k/m * alpha; every p <= p_(k) is a discovery. Returned as a
/// per-feature threshold p_(k) (or a threshold no p-value reaches), so that
/// `p <= threshold` marks the discoveries.
fn bh_thresholds(vals: &[(String, f64)], alpha: f64) -> Vec<f64> {
    let m = vals.len();
    let mut sorted: Vec<f64> = vals.iter().map(|v| v.1).collect();
    sorted.sort_by(f64::total_cmp);
    let cutoff = (1..=m)
        .rev()
        .find(|&k| sorted[k - 1] <= k as f64 / m as f64 * alpha)
        .map(|k| sorted[k - 1]);
    // With `Op::Lt`, p < next_up(cutoff) is p <= cutoff.
    let t = cutoff.map(next_up).unwrap_or(0.0);
    vec![t; m]
}

fn next_up(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let bits = x.to_bits();
    f64::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

/// Where a rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The condition does not hold.
    Inactive,
    /// The condition holds, for fewer than `for_evaluations` evaluations.
    Pending,
    /// Fired, not yet resolved.
    Firing,
}

impl State {
    /// Stable name for JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Pending => "pending",
            State::Firing => "firing",
        }
    }
}

/// The persisted state of one rule for one model version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tracker {
    /// Consecutive evaluations with verdict drift.
    pub consecutive: u32,
    /// Consecutive evaluations with verdict ok while firing.
    pub clear: u32,
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
    /// A firing rule resolved.
    Resolved,
}

impl Tracker {
    /// The rule's state.
    pub fn state(&self) -> State {
        if self.firing_since_ms.is_some() {
            State::Firing
        } else if self.consecutive > 0 {
            State::Pending
        } else {
            State::Inactive
        }
    }

    /// Feeds one evaluation's verdict. Drift advances the count and fires
    /// after `for_evaluations`; ok resets it and, once it has held for more
    /// than `keep_firing_for` evaluations, resolves a firing rule; insufficient
    /// data resets the count but neither fires nor resolves, because missing
    /// evidence is not evidence that the drift is gone.
    pub fn observe(
        &mut self,
        verdict: Verdict,
        now_ms: i64,
        for_evaluations: u32,
        keep_firing_for: u32,
    ) -> Transition {
        match verdict {
            Verdict::Drift => {
                self.consecutive = self.consecutive.saturating_add(1);
                self.clear = 0;
                if self.firing_since_ms.is_none() && self.consecutive >= for_evaluations {
                    self.firing_since_ms = Some(now_ms);
                    return Transition::Fired;
                }
                Transition::None
            }
            Verdict::Ok => {
                self.consecutive = 0;
                if self.firing_since_ms.is_some() {
                    self.clear = self.clear.saturating_add(1);
                    if self.clear > keep_firing_for {
                        self.clear = 0;
                        self.firing_since_ms = None;
                        return Transition::Resolved;
                    }
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
mod tests;
