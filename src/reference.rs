//! Reference distributions: what "normal" looks like for a model version,
//! compiled once into what the detector compares against.
//!
//! A [`Builder`] collects raw values (warm-up, SetReference, a CSV file);
//! [`Builder::build`] compiles them: per numeric feature the PSI bin edges
//! and bin counts over *all* values, count, mean, standard deviation and a
//! sorted uniform sample of at most `sample_size` values (all of them when
//! fewer) for KS, Cramér-von Mises and Wasserstein; per categorical feature
//! the `max_categories` most frequent categories and an `__other__` count.
//! [`Reference::from_snapshot`] compiles a *live* reference from another
//! version's window. Every reference carries a content hash (SHA-256 of its
//! compiled form) so dashboards can show which one is in force.
//!
//! Pure and synchronous. Persistence is the store's job.

use std::{collections::BTreeMap, num::NonZeroUsize};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    domain::{Batch, Kind, Role, Values},
    stats,
    window::{self, Binning, SampleData, Snapshot, OTHER},
};

/// Where a reference came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The first `reference.warmup_samples` records of the version.
    Warmup,
    /// The SetReference RPC (also `driftd reference import`).
    SetReference,
    /// A CSV file named in the configuration.
    File,
    /// Another version's live window.
    Live,
}

impl Source {
    /// Stable name used in status, JSON, metrics and on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Warmup => "warmup",
            Source::SetReference => "set_reference",
            Source::File => "file",
            Source::Live => "live",
        }
    }
}

/// How references are compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// PSI bins.
    pub bins: NonZeroUsize,
    /// Largest sorted sample kept per numeric feature.
    pub sample_size: usize,
    /// Categories kept per categorical feature.
    pub max_categories: usize,
}

/// A compiled reference for one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Where it came from.
    pub source: Source,
    /// Rows it was built from.
    pub records: u64,
    /// First 16 hex digits of the SHA-256 of the compiled features.
    pub hash: String,
    /// Per feature name.
    pub features: BTreeMap<String, FeatureReference>,
}

/// One feature's compiled reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureReference {
    /// Input or output.
    pub role: Role,
    /// Missing values seen.
    pub missing: u64,
    /// Kind-specific parts.
    pub data: RefData,
}

/// Kind-specific parts of a compiled feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RefData {
    /// Numeric.
    Numeric {
        /// Non-missing values.
        n: u64,
        /// Their mean.
        mean: f64,
        /// Their standard deviation (ddof = 1); None below 2 values.
        std: Option<f64>,
        /// Sorted uniform sample (every value when there are few enough).
        sample: Vec<f64>,
        /// PSI bin edges at the quantiles of all values.
        edges: Vec<f64>,
        /// Counts of all values over those bins.
        bin_counts: Vec<u64>,
    },
    /// Categorical: count per category, the rest under `__other__`.
    Categorical {
        /// Counts.
        counts: BTreeMap<String, u64>,
    },
}

impl FeatureReference {
    /// The feature's kind.
    pub fn kind(&self) -> Kind {
        match self.data {
            RefData::Numeric { .. } => Kind::Numeric,
            RefData::Categorical { .. } => Kind::Categorical,
        }
    }

    /// Non-missing values.
    pub fn n(&self) -> u64 {
        match &self.data {
            RefData::Numeric { n, .. } => *n,
            RefData::Categorical { counts } => counts.values().sum(),
        }
    }

    /// Values in the sorted sample (numeric), or `n` (categorical).
    pub fn sample_len(&self) -> u64 {
        match &self.data {
            RefData::Numeric { sample, .. } => sample.len() as u64,
            RefData::Categorical { .. } => self.n(),
        }
    }
}

impl Reference {
    fn new(source: Source, records: u64, features: BTreeMap<String, FeatureReference>) -> Self {
        let mut h = Sha256::new();
        // postcard of plain data cannot fail; an empty hash would still be
        // a valid (if uninformative) label.
        h.update(postcard::to_stdvec(&features).unwrap_or_default());
        let digest = h.finalize();
        let hash = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            source,
            records,
            hash,
            features,
        }
    }

    /// What windows bin against while this reference is in force.
    pub fn binning(&self) -> Binning {
        let mut b = Binning::default();
        for (name, f) in &self.features {
            match &f.data {
                RefData::Numeric { edges, .. } => {
                    b.edges.insert(name.clone(), edges.clone());
                }
                RefData::Categorical { counts } => {
                    b.categories.insert(
                        name.clone(),
                        counts.keys().filter(|k| *k != OTHER).cloned().collect(),
                    );
                }
            }
        }
        b
    }

    /// A live reference: another version's window. Numeric features use the
    /// window's sample for everything (edges, bin counts, mean, spread).
    pub fn from_snapshot(snap: &Snapshot, settings: Settings) -> Self {
        let features = snap
            .features
            .iter()
            .map(|(name, f)| {
                let data = match &f.data {
                    SampleData::Numeric { sample, .. } => numeric(sample.clone(), settings),
                    SampleData::Categorical(c) => RefData::Categorical { counts: c.clone() },
                };
                (
                    name.clone(),
                    FeatureReference {
                        role: f.role,
                        missing: f.missing,
                        data,
                    },
                )
            })
            .collect();
        Self::new(Source::Live, snap.records, features)
    }
}

/// Compiles sorted finite values (the whole sample: counts and bins come
/// from all of them, the kept sample is a uniform subset).
fn numeric(sorted: Vec<f64>, settings: Settings) -> RefData {
    let n = sorted.len() as u64;
    let edges = stats::quantile_edges(&sorted, settings.bins);
    let bin_counts = stats::bin_counts(&edges, &sorted);
    let mean = if sorted.is_empty() {
        f64::NAN
    } else {
        stats::pairwise_sum(&sorted) / sorted.len() as f64
    };
    let std = (sorted.len() >= 2).then(|| stats::std_ddof1(&sorted));
    let sample = if sorted.len() <= settings.sample_size {
        // Collected by pushes: give back the growth slack, the sample is
        // kept for the reference's lifetime.
        let mut sorted = sorted;
        sorted.shrink_to_fit();
        sorted
    } else {
        // Bottom-k by a hash of the position: uniform and reproducible.
        let mut idx: Vec<(u64, usize)> = (0..sorted.len())
            .map(|i| (window::priority(0x7265_6665_7265_6e63, i as u64), i))
            .collect();
        idx.select_nth_unstable(settings.sample_size.max(1) - 1);
        idx.truncate(settings.sample_size);
        let mut keep: Vec<usize> = idx.into_iter().map(|(_, i)| i).collect();
        keep.sort_unstable();
        keep.into_iter().map(|i| sorted[i]).collect()
    };
    RefData::Numeric {
        n,
        mean,
        std,
        sample,
        edges,
        bin_counts,
    }
}

/// Collects raw reference values batch by batch.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    records: u64,
    columns: BTreeMap<String, (Role, Collected)>,
}

#[derive(Debug, Clone)]
enum Collected {
    Numeric {
        values: Vec<f64>,
        missing: u64,
    },
    Categorical {
        counts: BTreeMap<String, u64>,
        missing: u64,
    },
}

impl Builder {
    /// Rows collected so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Adds the first `take` rows of `batch` (all rows if `take` exceeds
    /// them). A column whose kind differs from what was collected for the
    /// feature restarts that feature (callers validate kinds first).
    pub fn push(&mut self, batch: &Batch, take: usize) {
        let take = take.min(batch.n_rows);
        for col in &batch.columns {
            let entry = self
                .columns
                .entry(col.name.clone())
                .or_insert_with(|| (col.role, Collected::new(col.values.kind())));
            if entry.1.kind() != col.values.kind() {
                entry.1 = Collected::new(col.values.kind());
            }
            entry.0 = col.role;
            match (&mut entry.1, &col.values) {
                (Collected::Numeric { values, missing }, Values::Numeric(v)) => {
                    for &x in &v[..take] {
                        if x.is_finite() {
                            values.push(x);
                        } else {
                            *missing += 1;
                        }
                    }
                }
                (Collected::Categorical { counts, missing }, Values::Categorical(v)) => {
                    for s in &v[..take] {
                        if s.is_empty() {
                            *missing += 1;
                        } else {
                            *counts.entry(s.clone()).or_insert(0) += 1;
                        }
                    }
                }
                // Kinds were aligned just above.
                _ => {}
            }
        }
        self.records += take as u64;
    }

    /// Compiles what was collected.
    pub fn build(self, source: Source, settings: Settings) -> Reference {
        let features = self
            .columns
            .into_iter()
            .map(|(name, (role, c))| {
                let (missing, data) = match c {
                    Collected::Numeric {
                        mut values,
                        missing,
                    } => {
                        values.sort_unstable_by(f64::total_cmp);
                        (missing, numeric(values, settings))
                    }
                    Collected::Categorical { counts, missing } => {
                        (missing, categorical(counts, settings.max_categories))
                    }
                };
                (
                    name,
                    FeatureReference {
                        role,
                        missing,
                        data,
                    },
                )
            })
            .collect();
        Reference::new(source, self.records, features)
    }
}

/// The `max` most frequent categories, the rest under `__other__`.
fn categorical(counts: BTreeMap<String, u64>, max: usize) -> RefData {
    if counts.len() <= max {
        return RefData::Categorical { counts };
    }
    let mut by: Vec<(String, u64)> = counts.into_iter().collect();
    by.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = BTreeMap::new();
    let mut other = 0;
    for (i, (k, v)) in by.into_iter().enumerate() {
        if i < max {
            out.insert(k, v);
        } else {
            other += v;
        }
    }
    *out.entry(OTHER.to_string()).or_insert(0) += other;
    RefData::Categorical { counts: out }
}

impl Collected {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Numeric => Collected::Numeric {
                values: Vec::new(),
                missing: 0,
            },
            Kind::Categorical => Collected::Categorical {
                counts: BTreeMap::new(),
                missing: 0,
            },
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Collected::Numeric { .. } => Kind::Numeric,
            Collected::Categorical { .. } => Kind::Categorical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Column, ModelKey};

    fn settings(sample_size: usize) -> Settings {
        Settings {
            bins: NonZeroUsize::new(10).unwrap(),
            sample_size,
            max_categories: 2,
        }
    }

    fn batch(values: Values) -> Batch {
        let n_rows = values.len();
        Batch {
            key: ModelKey {
                model: "m".into(),
                version: "v".into(),
            },
            columns: vec![Column {
                name: "x".into(),
                role: Role::Input,
                values,
            }],
            n_rows,
        }
    }

    #[test]
    fn builder_takes_only_the_requested_rows_and_sorts() {
        let mut b = Builder::default();
        b.push(&batch(Values::Numeric(vec![3.0, f64::NAN, 1.0, 2.0])), 3);
        assert_eq!(b.records(), 3);
        let r = b.build(Source::Warmup, settings(10));
        let f = &r.features["x"];
        assert_eq!(f.missing, 1);
        match &f.data {
            RefData::Numeric {
                n,
                sample,
                bin_counts,
                mean,
                std,
                ..
            } => {
                assert_eq!(*n, 2);
                assert_eq!(sample, &[1.0, 3.0]);
                assert_eq!(bin_counts.iter().sum::<u64>(), 2);
                assert_eq!(*mean, 2.0);
                assert_eq!(*std, Some(2f64.sqrt()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn large_references_keep_exact_bins_and_a_capped_uniform_sample() {
        let values: Vec<f64> = (0..10_000).map(f64::from).collect();
        let mut b = Builder::default();
        b.push(&batch(Values::Numeric(values.clone())), usize::MAX);
        let r = b.build(Source::SetReference, settings(1000));
        let RefData::Numeric {
            n,
            sample,
            bin_counts,
            edges,
            ..
        } = &r.features["x"].data
        else {
            panic!("not numeric");
        };
        assert_eq!(*n, 10_000);
        assert_eq!(sample.len(), 1000);
        assert!(sample.windows(2).all(|w| w[0] <= w[1]));
        // Bins come from every value, not the sample.
        assert_eq!(bin_counts, &stats::bin_counts(edges, &values));
        // A uniform sample of 0..10000 has a mean near 5000 (sd of the
        // mean ~ 91); a biased pick (say the first 1000) would not.
        let mean = sample.iter().sum::<f64>() / 1000.0;
        assert!((mean - 4999.5).abs() < 450.0, "sample mean {mean}");
    }

    #[test]
    fn categories_beyond_the_limit_fold_into_other_and_hashes_track_content() {
        let cats = |v: &[&str]| Values::Categorical(v.iter().map(|s| s.to_string()).collect());
        let mut b = Builder::default();
        b.push(
            &batch(cats(&["a", "a", "a", "b", "b", "c", "d"])),
            usize::MAX,
        );
        let r = b.clone().build(Source::Warmup, settings(10));
        assert_eq!(
            r.features["x"].data,
            RefData::Categorical {
                counts: [("a".into(), 3), ("b".into(), 2), (OTHER.into(), 2)].into()
            }
        );
        let again = b.clone().build(Source::Warmup, settings(10));
        assert_eq!(r.hash, again.hash);
        assert_eq!(r.hash.len(), 16);
        b.push(&batch(cats(&["a"])), usize::MAX);
        assert_ne!(b.build(Source::Warmup, settings(10)).hash, r.hash);
        assert_eq!(
            r.binning().categories["x"],
            ["a".to_string(), "b".to_string()].into()
        );
    }
}
