//! Turns a reference and a window snapshot into per-feature statistics.
//! Which of them count as drift is the business of `rules`.
//!
//! Pure and synchronous: nothing here logs, sleeps, reads a clock or
//! touches metrics.

use serde::Serialize;

use crate::{
    config::EngineConfig,
    domain::{Kind, Role, Verdict},
    reference::{FeatureReference, RefData, Reference},
    stats::{self, Chi2Result, CvmResult, KsResult},
    window::{SampleData, Snapshot},
};

/// The statistics of one feature at one evaluation.
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
    /// Values the sample-based statistics (KS, CvM, Wasserstein) used from
    /// the window; for categorical features, `window_samples`.
    pub window_sample_size: u64,
    /// Non-missing values in the reference (0 when the reference lacks the
    /// feature).
    pub reference_samples: u64,
    /// True when the window has at least `evaluation.min_samples` values and
    /// the reference has the feature with the same kind: only then are the
    /// statistics below computed.
    pub sufficient: bool,
    /// PSI of window against reference.
    pub psi: Option<f64>,
    /// Two-sample KS (numeric).
    pub ks: Option<KsResult>,
    /// Chi-square on the 2 x k table (categorical).
    pub chi2: Option<Chi2Result>,
    /// Jensen-Shannon distance over the PSI bins.
    pub js: Option<f64>,
    /// Hellinger distance over the PSI bins.
    pub hellinger: Option<f64>,
    /// Wasserstein-1 over the reference's standard deviation (numeric).
    pub wasserstein_norm: Option<f64>,
    /// Cramér-von Mises two-sample test (numeric).
    pub cvm: Option<CvmResult>,
    /// Window counts over the reference's PSI bins (numeric).
    pub cur_bin_counts: Vec<u64>,
    /// Sum of the window's values when `cur_bin_counts` is set, else 0
    /// (the `_sum` of `driftd_window_values`).
    pub cur_sum: f64,
    /// Verdict under the rules, filled in by the engine after the rules ran:
    /// drift when any rule's condition holds for this feature.
    pub verdict: Verdict,
}

/// The statistics of a model version at one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Per feature, sorted by name.
    pub features: Vec<FeatureReport>,
    /// Rows in the window's sample.
    pub sample_rows: u64,
}

/// Computes every applicable statistic for every feature of the window.
pub fn evaluate(reference: Option<&Reference>, window: &Snapshot, cfg: &EngineConfig) -> Report {
    let features = window
        .features
        .iter()
        .map(|(name, sample)| {
            let mut rep = FeatureReport {
                name: name.clone(),
                role: sample.role,
                kind: sample.kind(),
                window_samples: sample.n,
                window_missing: sample.missing,
                window_sample_size: sample.sample_len(),
                reference_samples: 0,
                sufficient: false,
                psi: None,
                ks: None,
                chi2: None,
                js: None,
                hellinger: None,
                wasserstein_norm: None,
                cvm: None,
                cur_bin_counts: Vec::new(),
                cur_sum: 0.0,
                verdict: Verdict::InsufficientData,
            };
            let Some(fr) = reference.and_then(|r| r.features.get(name)) else {
                return rep;
            };
            rep.reference_samples = fr.n();
            rep.sufficient = fr.kind() == sample.kind()
                && rep.window_samples >= (cfg.min_samples as u64).max(1)
                && rep.reference_samples > 0;
            if rep.sufficient {
                compare(fr, &sample.data, cfg, &mut rep);
            }
            rep
        })
        .collect();
    Report {
        features,
        sample_rows: window.sample_rows,
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn compare(fr: &FeatureReference, data: &SampleData, cfg: &EngineConfig, rep: &mut FeatureReport) {
    match (&fr.data, data) {
        (
            RefData::Numeric {
                sample: r,
                std,
                edges,
                bin_counts: ref_bins,
                ..
            },
            SampleData::Numeric {
                sample: c,
                bins,
                sum,
            },
        ) => {
            // Exact window counts when the window was binned against this
            // reference; a live reference has no fixed edges, so its
            // window is binned from the sample.
            let cur = match bins {
                Some(b) if b.len() == edges.len() + 1 => b.clone(),
                _ => stats::bin_counts(edges, c),
            };
            rep.psi = finite(stats::psi(ref_bins, &cur, cfg.psi_epsilon));
            rep.js = finite(stats::js_distance(ref_bins, &cur));
            rep.hellinger = finite(stats::hellinger(ref_bins, &cur));
            if !c.is_empty() {
                // One pass over both samples for the three statistics;
                // the window's sample is already sorted by its snapshot.
                let s = stats::sample_stats(r, c);
                rep.ks = s.ks;
                rep.cvm = s.cvm;
                rep.wasserstein_norm = std
                    .filter(|sd| *sd > 0.0)
                    .map(|sd| s.wasserstein / sd)
                    .and_then(finite);
            }
            rep.cur_bin_counts = cur;
            rep.cur_sum = *sum;
        }
        (RefData::Categorical { counts: rc }, SampleData::Categorical(cc)) => {
            // One bin per category of the sorted union of both samples.
            let (_, r, c) = stats::align_categories(rc, cc);
            rep.psi = finite(stats::psi(&r, &c, cfg.psi_epsilon));
            rep.js = finite(stats::js_distance(&r, &c));
            rep.hellinger = finite(stats::hellinger(&r, &c));
            rep.chi2 = stats::chi2_contingency(&r, &c);
        }
        // Kind mismatches were filtered by the caller.
        _ => {}
    }
}
