//! Reference distributions: what "normal" looks like for a model version.
//! A [`Builder`] collects the first records of a version (warm-up) or a
//! streamed reference; [`Reference::compile`] turns the raw values into the
//! sorted arrays, bin edges and counts the detector compares against.
//!
//! Pure and synchronous. Persistence of the raw parts is the store's job.

use std::{collections::BTreeMap, num::NonZeroUsize};

use serde::Serialize;

use crate::{
    domain::{Batch, Kind, Role, Values},
    stats,
};

/// Where a reference came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The first `reference.warmup_samples` records of the version.
    Warmup,
    /// The SetReference RPC.
    SetReference,
}

impl Source {
    /// Stable name used in status, JSON and on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Warmup => "warmup",
            Source::SetReference => "set_reference",
        }
    }
}

/// The raw, persisted parts of one feature's reference.
#[derive(Debug, Clone, PartialEq)]
pub enum RawFeature {
    /// Finite values, sorted ascending, and the missing count.
    Numeric {
        /// Finite values, sorted.
        sorted: Vec<f64>,
        /// Non-finite values seen.
        missing: u64,
    },
    /// Category counts and the missing (empty string) count.
    Categorical {
        /// Count per category.
        counts: BTreeMap<String, u64>,
        /// Empty strings seen.
        missing: u64,
    },
}

/// A compiled reference for one model version.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// Where it came from.
    pub source: Source,
    /// Rows it was built from.
    pub records: u64,
    /// Per feature name.
    pub features: BTreeMap<String, FeatureReference>,
}

/// One feature's compiled reference.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureReference {
    /// Input or output.
    pub role: Role,
    /// The raw parts, as persisted.
    pub raw: RawFeature,
    /// PSI bin edges (numeric only; empty for categorical).
    pub edges: Vec<f64>,
    /// Reference counts per PSI bin (numeric only).
    pub bin_counts: Vec<u64>,
}

impl FeatureReference {
    /// The feature's kind.
    pub fn kind(&self) -> Kind {
        match self.raw {
            RawFeature::Numeric { .. } => Kind::Numeric,
            RawFeature::Categorical { .. } => Kind::Categorical,
        }
    }

    /// Non-missing values.
    pub fn n(&self) -> u64 {
        match &self.raw {
            RawFeature::Numeric { sorted, .. } => sorted.len() as u64,
            RawFeature::Categorical { counts, .. } => counts.values().sum(),
        }
    }
}

impl Reference {
    /// Compiles raw features: bin edges at the reference quantiles and the
    /// reference's own counts over them.
    pub fn compile(
        source: Source,
        records: u64,
        raw: BTreeMap<String, (Role, RawFeature)>,
        bins: NonZeroUsize,
    ) -> Self {
        let features = raw
            .into_iter()
            .map(|(name, (role, raw))| {
                let (edges, bin_counts) = match &raw {
                    RawFeature::Numeric { sorted, .. } => {
                        let edges = stats::quantile_edges(sorted, bins);
                        let counts = stats::bin_counts(&edges, sorted);
                        (edges, counts)
                    }
                    RawFeature::Categorical { .. } => (Vec::new(), Vec::new()),
                };
                (
                    name,
                    FeatureReference {
                        role,
                        raw,
                        edges,
                        bin_counts,
                    },
                )
            })
            .collect();
        Self {
            source,
            records,
            features,
        }
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
    pub fn build(self, source: Source, bins: NonZeroUsize) -> Reference {
        let raw = self
            .columns
            .into_iter()
            .map(|(name, (role, c))| {
                let raw = match c {
                    Collected::Numeric {
                        mut values,
                        missing,
                    } => {
                        values.sort_unstable_by(f64::total_cmp);
                        RawFeature::Numeric {
                            sorted: values,
                            missing,
                        }
                    }
                    Collected::Categorical { counts, missing } => {
                        RawFeature::Categorical { counts, missing }
                    }
                };
                (name, (role, raw))
            })
            .collect();
        Reference::compile(source, self.records, raw, bins)
    }
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

    #[test]
    fn builder_takes_only_the_requested_rows_and_sorts() {
        let batch = Batch {
            key: ModelKey {
                model: "m".into(),
                version: "v".into(),
            },
            columns: vec![Column {
                name: "x".into(),
                role: Role::Input,
                values: Values::Numeric(vec![3.0, f64::NAN, 1.0, 2.0]),
            }],
            n_rows: 4,
        };
        let mut b = Builder::default();
        b.push(&batch, 3);
        assert_eq!(b.records(), 3);
        let r = b.build(Source::Warmup, NonZeroUsize::new(10).unwrap());
        assert_eq!(
            r.features["x"].raw,
            RawFeature::Numeric {
                sorted: vec![1.0, 3.0],
                missing: 1
            }
        );
        assert_eq!(r.features["x"].bin_counts.iter().sum::<u64>(), 2);
    }
}
