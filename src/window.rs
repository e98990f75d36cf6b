//! Sliding windows of what a model version saw and produced. The window
//! here is count-based: per feature, the last N values received (missing
//! ones included, so missing shares are windowed too).
//!
//! Pure and synchronous: no I/O, no clock, no logging. The engine feeds
//! batches in and takes [`Snapshot`]s out for the detector.

use std::{
    collections::{BTreeMap, VecDeque},
    num::NonZeroUsize,
};

use crate::domain::{Batch, Kind, Role, Values};

/// Per feature, the last `capacity` values.
#[derive(Debug, Clone)]
pub struct CountWindow {
    capacity: NonZeroUsize,
    features: BTreeMap<String, FeatureWindow>,
}

#[derive(Debug, Clone)]
struct FeatureWindow {
    role: Role,
    ring: Ring,
    /// Missing values currently in `ring`, kept incrementally so the status
    /// never has to scan the ring.
    missing: u64,
}

#[derive(Debug, Clone)]
enum Ring {
    Numeric(VecDeque<f64>),
    Categorical(VecDeque<String>),
}

/// A point-in-time copy of a window, prepared for the statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Per feature name.
    pub features: BTreeMap<String, FeatureSample>,
}

/// The window contents of one feature.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSample {
    /// Input or output.
    pub role: Role,
    /// Missing values in the window.
    pub missing: u64,
    /// The non-missing values.
    pub data: SampleData,
}

/// Non-missing window values in the form the statistics want.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleData {
    /// Finite values, sorted ascending.
    Numeric(Vec<f64>),
    /// Count per non-empty category.
    Categorical(BTreeMap<String, u64>),
}

impl FeatureSample {
    /// Non-missing values.
    pub fn n(&self) -> u64 {
        match &self.data {
            SampleData::Numeric(v) => v.len() as u64,
            SampleData::Categorical(c) => c.values().sum(),
        }
    }

    /// The feature's kind.
    pub fn kind(&self) -> Kind {
        match self.data {
            SampleData::Numeric(_) => Kind::Numeric,
            SampleData::Categorical(_) => Kind::Categorical,
        }
    }
}

impl CountWindow {
    /// An empty window keeping the last `capacity` values per feature.
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            capacity,
            features: BTreeMap::new(),
        }
    }

    /// Appends a batch, evicting the oldest values beyond capacity. A column
    /// whose kind differs from the feature's window replaces that window
    /// (the engine rejects such batches before they get here).
    pub fn push(&mut self, batch: &Batch) {
        let cap = self.capacity.get();
        for col in &batch.columns {
            let fw = self
                .features
                .entry(col.name.clone())
                .or_insert_with(|| FeatureWindow::new(col.role, col.values.kind()));
            if fw.kind() != col.values.kind() {
                *fw = FeatureWindow::new(col.role, col.values.kind());
            }
            fw.role = col.role;
            match (&mut fw.ring, &col.values) {
                (Ring::Numeric(ring), Values::Numeric(v)) => {
                    // Only the last `cap` values of a large batch can stay.
                    let v = &v[v.len().saturating_sub(cap)..];
                    for &x in v {
                        if ring.len() == cap {
                            if let Some(old) = ring.pop_front() {
                                fw.missing -= u64::from(!old.is_finite());
                            }
                        }
                        fw.missing += u64::from(!x.is_finite());
                        ring.push_back(x);
                    }
                }
                (Ring::Categorical(ring), Values::Categorical(v)) => {
                    let v = &v[v.len().saturating_sub(cap)..];
                    for s in v {
                        if ring.len() == cap {
                            if let Some(old) = ring.pop_front() {
                                fw.missing -= u64::from(old.is_empty());
                            }
                        }
                        fw.missing += u64::from(s.is_empty());
                        ring.push_back(s.clone());
                    }
                }
                // Kinds were aligned just above.
                _ => {}
            }
        }
    }

    /// Rows in the window: the longest feature ring.
    pub fn records(&self) -> u64 {
        self.features.values().map(|f| f.len()).max().unwrap_or(0) as u64
    }

    /// Per feature: (non-missing values, missing values) currently held.
    pub fn counts(&self) -> BTreeMap<&str, (u64, u64)> {
        self.features
            .iter()
            .map(|(k, f)| (k.as_str(), (f.len() as u64 - f.missing, f.missing)))
            .collect()
    }

    /// Role of every feature in the window.
    pub fn roles(&self) -> BTreeMap<&str, Role> {
        self.features
            .iter()
            .map(|(k, f)| (k.as_str(), f.role))
            .collect()
    }

    /// Copies the window into sorted, statistics-ready form.
    pub fn snapshot(&self) -> Snapshot {
        let features = self
            .features
            .iter()
            .map(|(name, fw)| {
                let data = match &fw.ring {
                    Ring::Numeric(ring) => {
                        let mut v: Vec<f64> =
                            ring.iter().copied().filter(|x| x.is_finite()).collect();
                        v.sort_unstable_by(f64::total_cmp);
                        SampleData::Numeric(v)
                    }
                    Ring::Categorical(ring) => {
                        let mut counts = BTreeMap::new();
                        for s in ring.iter().filter(|s| !s.is_empty()) {
                            *counts.entry(s.clone()).or_insert(0) += 1;
                        }
                        SampleData::Categorical(counts)
                    }
                };
                (
                    name.clone(),
                    FeatureSample {
                        role: fw.role,
                        missing: fw.missing,
                        data,
                    },
                )
            })
            .collect();
        Snapshot { features }
    }
}

impl FeatureWindow {
    fn new(role: Role, kind: Kind) -> Self {
        let ring = match kind {
            Kind::Numeric => Ring::Numeric(VecDeque::new()),
            Kind::Categorical => Ring::Categorical(VecDeque::new()),
        };
        Self {
            role,
            ring,
            missing: 0,
        }
    }

    fn kind(&self) -> Kind {
        match self.ring {
            Ring::Numeric(_) => Kind::Numeric,
            Ring::Categorical(_) => Kind::Categorical,
        }
    }

    fn len(&self) -> usize {
        match &self.ring {
            Ring::Numeric(r) => r.len(),
            Ring::Categorical(r) => r.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Column, ModelKey};
    use proptest::prelude::*;

    fn batch(xs: Vec<f64>, cats: Vec<String>) -> Batch {
        let n_rows = xs.len();
        Batch {
            key: ModelKey {
                model: "m".into(),
                version: "v".into(),
            },
            columns: vec![
                Column {
                    name: "x".into(),
                    role: Role::Input,
                    values: Values::Numeric(xs),
                },
                Column {
                    name: "c".into(),
                    role: Role::Output,
                    values: Values::Categorical(cats),
                },
            ],
            n_rows,
        }
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            8 => (-100i32..100).prop_map(f64::from),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
        ]
    }

    proptest! {
        /// The incremental window equals a from-scratch computation over the
        /// last `cap` values of the same event log.
        #[test]
        fn incremental_equals_recomputation(
            cap in 1usize..40,
            batches in prop::collection::vec(prop::collection::vec((value(), 0u8..4), 1..25), 1..12),
        ) {
            let mut w = CountWindow::new(NonZeroUsize::new(cap).unwrap());
            let mut log_x = Vec::new();
            let mut log_c = Vec::new();
            for rows in &batches {
                let xs: Vec<f64> = rows.iter().map(|r| r.0).collect();
                let cs: Vec<String> = rows.iter().map(|r| if r.1 == 0 { String::new() } else { format!("k{}", r.1) }).collect();
                log_x.extend(xs.iter().copied());
                log_c.extend(cs.iter().cloned());
                w.push(&batch(xs, cs));
            }
            let tail_x = &log_x[log_x.len().saturating_sub(cap)..];
            let tail_c = &log_c[log_c.len().saturating_sub(cap)..];
            let mut sorted: Vec<f64> = tail_x.iter().copied().filter(|x| x.is_finite()).collect();
            sorted.sort_by(f64::total_cmp);
            let mut counts = BTreeMap::new();
            for c in tail_c.iter().filter(|c| !c.is_empty()) {
                *counts.entry(c.clone()).or_insert(0u64) += 1;
            }
            let snap = w.snapshot();
            let fx = &snap.features["x"];
            prop_assert_eq!(&fx.data, &SampleData::Numeric(sorted));
            prop_assert_eq!(fx.missing, tail_x.iter().filter(|x| !x.is_finite()).count() as u64);
            let fc = &snap.features["c"];
            prop_assert_eq!(&fc.data, &SampleData::Categorical(counts));
            prop_assert_eq!(fc.missing, tail_c.iter().filter(|c| c.is_empty()).count() as u64);
            prop_assert_eq!(w.records(), tail_x.len() as u64);
        }
    }
}
