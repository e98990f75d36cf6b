//! Sliding windows of what a model version saw and produced, in memory that
//! does not grow with the traffic rate.
//!
//! A window is a run of *buckets*: time buckets (`5m/10s`: thirty buckets of
//! ten seconds, by arrival time) or record buckets (`count:5000`: buckets of
//! 500 records, by the version's record index). Each bucket holds
//! aggregates, never the raw records:
//!
//! - per numeric feature: non-missing count, sum, missing count and counts
//!   over the reference's PSI bins (exact PSI, JS, Hellinger, chi-square and
//!   binned KS);
//! - per categorical feature: counts of the reference's categories and of at
//!   most `max_categories` others per bucket (first come), the rest in one
//!   `__other__` count; a snapshot keeps the `max_categories` most frequent
//!   and folds the rest into `__other__`;
//! - a row sample for KS, Cramér-von Mises and Wasserstein.
//!
//! **Sampling.** Every record gets a priority, a 64-bit hash of the version
//! and the record's index (so the same record has the same priority after a
//! restart). A bucket keeps the rows whose priority is at most its
//! threshold `tau`. The window's sample is the `sample_size` rows of lowest
//! priority among its buckets' rows with priority at most the smallest
//! `tau` of those buckets: bottom-k sampling over a shared threshold. Since
//! priorities are independent of the values, the rows below a threshold are
//! a uniform sample of the window; a bucket leaving the window removes
//! exactly its own rows, so the sample stays uniform under expiry, and
//! buckets merge by concatenation. Memory is bounded by pruning: when a
//! window's buckets hold more than `sample_size * 11/10` rows, every
//! bucket's threshold drops to the priority that leaves about
//! `sample_size * 41/40` rows. A new bucket starts with the newest bucket's threshold, raised when
//! the window holds fewer than `sample_size` rows (traffic fell), so the
//! sample refills as old buckets expire.
//!
//! **Closed buckets keep their sampled values in the store, not in
//! memory.** A bucket is held as one or more *segments* (keys
//! `bucket << SEGMENT_BITS | n`): the open (newest) segment gives way to a
//! new one of the same bucket once it holds a sixteenth of `sample_size`
//! sampled rows, and to the next bucket's first segment when that bucket
//! begins. Segments are otherwise buckets, and "bucket" below means either.
//! When a newer bucket opens, the previous newest one closes:
//! [`Changes::closed`] carries its whole state (aggregates, priorities and
//! sampled values) for the store, and the window keeps only its aggregates
//! and priorities (what pruning and thresholds need). [`Window::snapshot`]
//! reads the values of closed buckets back through the caller's `stored`
//! function and drops the rows above each bucket's threshold since. The
//! samples are most of a window's memory (a 10,000-row sample of 50
//! features is 4 MB); only the open segment's rows stay in memory, at most
//! a sixteenth of the sample plus one batch, also in a new window whose
//! first bucket takes the whole sample. A closed bucket pruned to half the
//! rows it was stored with is stored again without them
//! ([`Changes::rewrite`]), so what an evaluation reads back stays under
//! twice the sample; at most [`REWRITES_PER_BATCH`] per batch, the rest
//! wait their turn (a window's first fill halves every closed bucket at
//! once, and rewriting them all in one commit made the daemon's largest
//! memory peak). Only the newest bucket takes records: a record whose
//! arrival time falls in an older bucket (the clock went back) joins the
//! newest one, so a closed bucket never changes again except by pruning.
//!
//! Pure and synchronous: no I/O, no clock (time is an argument), no logging.
//! The engine feeds batches in, persists the [`Changes`] they cause, and
//! takes [`Snapshot`]s out for the detector.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    domain::{Batch, Kind, Role, Values},
    stats,
};

/// The category that stands for every category beyond the limit.
pub const OTHER: &str = "__other__";

/// A threshold that keeps every row.
pub const KEEP_ALL: u64 = u64::MAX;

/// Low bits of a bucket's key that number its *segments*: a bucket of the
/// span (ten seconds, 500 records) is held as one or more segments, a new
/// one opening when the open segment holds a sixteenth of the sample in
/// memory. The key of segment `s` of span bucket `b` is `b << 16 | s`.
pub const SEGMENT_BITS: u32 = 16;

/// Closed buckets a window asks the store to rewrite per batch
/// ([`Changes::rewrite`]); others due wait for the next batches.
pub const REWRITES_PER_BATCH: usize = 2;

/// How a window is cut into buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The last `length_ms` by arrival time, in buckets of `bucket_ms`.
    Time {
        /// Window length.
        length_ms: u64,
        /// Bucket length; divides `length_ms`.
        bucket_ms: u64,
    },
    /// The last `records` records, in buckets of `bucket_records`: the
    /// window holds between `records` and `records + bucket_records - 1`
    /// records once that many arrived.
    Count {
        /// Records in the window.
        records: u64,
        /// Records per bucket.
        bucket_records: u64,
    },
}

/// One configured window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// The `window` label: `5m`, `1h`, `last_5000`.
    pub name: String,
    /// How it is cut.
    pub span: Span,
}

impl WindowSpec {
    /// Parses `"5m"`, `"5m/10s"` (length/bucket; the bucket defaults to a
    /// thirtieth of the length), `"count:5000"` or `"count:5000/500"`
    /// (records/bucket records; a tenth by default).
    ///
    /// # Errors
    /// A message saying what is wrong with `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("count:") {
            let (n, b) = match rest.split_once('/') {
                Some((n, b)) => (n, Some(b)),
                None => (rest, None),
            };
            let records: u64 = n
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: {n:?} is not a record count"))?;
            if records == 0 {
                return Err(format!("{s:?}: the record count must be at least 1"));
            }
            let bucket_records = match b {
                Some(b) => b
                    .trim()
                    .parse()
                    .map_err(|_| format!("{s:?}: {b:?} is not a record count"))?,
                None => (records / 10).max(1),
            };
            if bucket_records == 0 || bucket_records > records {
                return Err(format!(
                    "{s:?}: records per bucket must be between 1 and {records}"
                ));
            }
            return Ok(Self {
                name: format!("last_{records}"),
                span: Span::Count {
                    records,
                    bucket_records,
                },
            });
        }
        let (l, b) = match s.split_once('/') {
            Some((l, b)) => (l, Some(b)),
            None => (s, None),
        };
        let length = humantime::parse_duration(l.trim()).map_err(|e| {
            format!("{s:?}: {l:?} is not a duration like \"5m\" or \"count:5000\" ({e})")
        })?;
        let length_ms = length.as_millis() as u64;
        let bucket_ms = match b {
            Some(b) => humantime::parse_duration(b.trim())
                .map_err(|e| format!("{s:?}: {b:?} is not a duration ({e})"))?
                .as_millis() as u64,
            None => length_ms / 30,
        };
        if bucket_ms < 100 {
            return Err(format!("{s:?}: buckets must be at least 100ms"));
        }
        if length_ms % bucket_ms != 0 {
            return Err(format!(
                "{s:?}: the bucket length must divide the window length"
            ));
        }
        if length_ms / bucket_ms > 3600 {
            return Err(format!("{s:?}: at most 3600 buckets per window"));
        }
        let name = humantime::format_duration(Duration::from_millis(length_ms))
            .to_string()
            .replace(' ', "");
        Ok(Self {
            name,
            span: Span::Time {
                length_ms,
                bucket_ms,
            },
        })
    }

    /// The bucket of a record that arrived at `arrival_ms` with index `row`.
    fn bucket_of(&self, arrival_ms: i64, row: u64) -> u64 {
        match self.span {
            Span::Time { bucket_ms, .. } => arrival_ms.max(0) as u64 / bucket_ms,
            Span::Count { bucket_records, .. } => row / bucket_records,
        }
    }

    /// The oldest span bucket still in the window at `now_ms`, after
    /// `total` records of the version.
    pub fn first_live(&self, now_ms: i64, total: u64) -> u64 {
        match self.span {
            Span::Time {
                length_ms,
                bucket_ms,
            } => (now_ms.max(0) as u64 / bucket_ms + 1).saturating_sub(length_ms / bucket_ms),
            Span::Count {
                records,
                bucket_records,
            } => total.saturating_sub(records) / bucket_records,
        }
    }
}

/// Window size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Target rows in a window's sample.
    pub sample_size: usize,
    /// Categories kept per feature (per bucket beyond the reference's, and
    /// in a snapshot).
    pub max_categories: usize,
}

/// What the window bins against, from the reference in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Binning {
    /// Per numeric feature, the PSI bin edges.
    pub edges: BTreeMap<String, Vec<f64>>,
    /// Per categorical feature, the reference's categories (always counted
    /// exactly).
    pub categories: BTreeMap<String, BTreeSet<String>>,
}

/// Aggregates of one bucket (or of one batch's contribution to a bucket:
/// the same type, merged by [`Bucket::merge`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Records.
    pub rows: u64,
    /// Sampling threshold: rows with priority <= `tau` are kept.
    pub tau: u64,
    /// Per feature.
    pub features: BTreeMap<String, Agg>,
    /// Priorities of the kept rows, in arrival order.
    pub priorities: Vec<u64>,
    /// Per numeric feature, its value in each kept row (NaN when missing or
    /// absent from the row's batch). Empty in memory once the bucket is
    /// `spilled`.
    pub values: BTreeMap<String, Vec<f64>>,
    /// True for a closed bucket whose sampled values live only in the
    /// store ([`Window::snapshot`] reads them back).
    #[serde(skip)]
    pub spilled: bool,
}

/// One feature's aggregates in a bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    /// Input or output.
    pub role: Role,
    /// Missing values.
    pub missing: u64,
    /// Kind-specific counts.
    pub data: AggData,
}

/// Kind-specific aggregates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AggData {
    /// Numeric.
    Numeric {
        /// Non-missing values.
        n: u64,
        /// Their sum.
        sum: f64,
        /// Counts over the reference's bins; empty without a reference.
        bins: Vec<u64>,
    },
    /// Categorical.
    Categorical {
        /// Counts of admitted categories.
        counts: BTreeMap<String, u64>,
        /// Values of categories beyond the limit.
        other: u64,
    },
}

impl AggData {
    fn kind(&self) -> Kind {
        match self {
            AggData::Numeric { .. } => Kind::Numeric,
            AggData::Categorical { .. } => Kind::Categorical,
        }
    }
}

impl Bucket {
    fn empty(tau: u64) -> Self {
        Self {
            rows: 0,
            tau,
            features: BTreeMap::new(),
            priorities: Vec::new(),
            values: BTreeMap::new(),
            spilled: false,
        }
    }

    /// The whole state, for the store; `b` keeps only its aggregates and
    /// priorities (`spilled`). A live copy sharing the bucket keeps the
    /// whole one it holds.
    fn spill(b: &mut Arc<Bucket>) -> Bucket {
        let kept = Bucket {
            rows: b.rows,
            tau: b.tau,
            features: b.features.clone(),
            priorities: b.priorities.clone(),
            values: BTreeMap::new(),
            spilled: true,
        };
        let mut whole = match Arc::try_unwrap(std::mem::replace(b, Arc::new(kept))) {
            Ok(whole) => whole,
            Err(shared) => (*shared).clone(),
        };
        whole.spilled = false;
        whole
    }

    /// Adds `d`'s aggregates and rows (appended after this bucket's), then
    /// applies the lower of the two thresholds.
    pub fn merge(&mut self, d: &Bucket) {
        self.rows += d.rows;
        for (name, a) in &d.features {
            match self.features.get_mut(name) {
                None => {
                    self.features.insert(name.clone(), a.clone());
                }
                Some(mine) => {
                    mine.role = a.role;
                    mine.missing += a.missing;
                    match (&mut mine.data, &a.data) {
                        (
                            AggData::Numeric { n, sum, bins },
                            AggData::Numeric {
                                n: n2,
                                sum: s2,
                                bins: b2,
                            },
                        ) => {
                            *n += n2;
                            *sum += s2;
                            if bins.len() == b2.len() {
                                bins.iter_mut().zip(b2).for_each(|(x, y)| *x += y);
                            } else if bins.is_empty() {
                                bins.clone_from(b2);
                            }
                        }
                        (
                            AggData::Categorical { counts, other },
                            AggData::Categorical {
                                counts: c2,
                                other: o2,
                            },
                        ) => {
                            *other += o2;
                            for (k, v) in c2 {
                                *counts.entry(k.clone()).or_insert(0) += v;
                            }
                        }
                        // A feature never changes kind inside a window (the
                        // engine resets windows when a reference changes it).
                        _ => *mine = a.clone(),
                    }
                }
            }
        }
        let before = self.priorities.len();
        reserve_gently(&mut self.priorities, d.priorities.len());
        self.priorities.extend_from_slice(&d.priorities);
        let len = self.priorities.len();
        for col in self.values.values_mut() {
            col.resize(before, f64::NAN);
        }
        for (name, v) in &d.values {
            let col = self
                .values
                .entry(name.clone())
                .or_insert_with(|| vec![f64::NAN; before]);
            reserve_gently(col, len - before);
            col.extend_from_slice(v);
        }
        for col in self.values.values_mut() {
            reserve_gently(col, len - col.len());
            col.resize(len, f64::NAN);
        }
        // A delta kept its rows under its own threshold; the bucket's may
        // have dropped since.
        self.prune(d.tau.min(self.tau));
    }

    /// Rebuilds a bucket from its stored parts: the last whole state, if
    /// any, then the deltas written after it, in order, then the last
    /// threshold written for it.
    pub fn rebuild(
        whole: Option<Bucket>,
        deltas: impl IntoIterator<Item = Bucket>,
        tau: Option<u64>,
    ) -> Option<Bucket> {
        let mut out = whole;
        for d in deltas {
            match out.as_mut() {
                Some(b) => b.merge(&d),
                None => out = Some(d),
            }
        }
        if let (Some(b), Some(t)) = (out.as_mut(), tau) {
            b.prune(t);
        }
        out
    }

    /// Lowers the threshold to `tau` and drops rows above it.
    pub fn prune(&mut self, tau: u64) {
        self.tau = self.tau.min(tau);
        let tau = self.tau;
        if self.priorities.iter().all(|&p| p <= tau) {
            return;
        }
        let keep: Vec<bool> = self.priorities.iter().map(|&p| p <= tau).collect();
        let mut i = 0;
        self.priorities.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        for col in self.values.values_mut() {
            let mut i = 0;
            col.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
        // Pruning is how memory stays bounded: give the space back.
        let len = self.priorities.len();
        if self.priorities.capacity() > len + len / 8 + 8 {
            self.shrink();
        }
    }

    /// Gives back the vectors' unused capacity.
    fn shrink(&mut self) {
        self.priorities.shrink_to_fit();
        for col in self.values.values_mut() {
            col.shrink_to_fit();
        }
    }
}

/// Makes room for `additional` more elements, growing the capacity by at
/// least a quarter when it must grow: a sample's vectors then hold at most
/// ~25% unused space, where `Vec`'s doubling leaves up to 100% (that was
/// the peak at start-up, when a window's first bucket takes every row).
fn reserve_gently<T>(v: &mut Vec<T>, additional: usize) {
    if v.capacity() - v.len() < additional {
        v.reserve_exact(additional.max(v.len() / 4));
    }
}

/// The key of the first segment of span bucket `b`.
fn segment_key(b: u64) -> u64 {
    b.checked_shl(SEGMENT_BITS)
        .filter(|k| k >> SEGMENT_BITS == b)
        .unwrap_or(!((1 << SEGMENT_BITS) - 1))
}

/// The priority of record `row` of the version with seed `seed`
/// (splitmix64 of their combination).
pub fn priority(seed: u64, row: u64) -> u64 {
    let mut z = seed.wrapping_add(row.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for a version's priorities (FNV-1a of the key text): stable
/// across restarts and builds.
pub fn seed_of(model: &str, version: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in model.bytes().chain([0]).chain(version.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What applying a batch changed, for the store.
#[derive(Debug, Default)]
pub struct Changes {
    /// New contributions to buckets: (bucket, record index of the first
    /// row, delta).
    pub deltas: Vec<(u64, u64, Bucket)>,
    /// Buckets that closed, with their whole state (the only copy of their
    /// sampled values; the window keeps the rest): store it, replacing
    /// their deltas.
    pub closed: BTreeMap<u64, Bucket>,
    /// Buckets whose threshold dropped: (bucket, new threshold). Their
    /// stored rows above it are dropped when they are read back.
    pub pruned: BTreeMap<u64, u64>,
    /// Closed buckets pruned to half the rows last stored: (bucket, new
    /// threshold). The store reads the whole state back, drops the rows
    /// above the threshold and stores it again, so that what evaluations
    /// read back stays within twice the sample.
    pub rewrite: BTreeMap<u64, u64>,
    /// Buckets that left the window.
    pub removed: Vec<u64>,
}

/// One window of one model version.
#[derive(Debug, Clone)]
pub struct Window {
    spec: WindowSpec,
    limits: Limits,
    binning: Arc<Binning>,
    seed: u64,
    /// Shared with the evaluator's copies ([`Window::live_copy`]): the
    /// writer copies a bucket only when it changes one still shared. Every
    /// bucket but the newest is spilled.
    buckets: BTreeMap<u64, Arc<Bucket>>,
    /// Sampled rows of each closed bucket as last stored whole.
    written: BTreeMap<u64, usize>,
    /// Closed buckets pruned to half the rows last stored whole, waiting
    /// for their turn to be rewritten.
    due: BTreeSet<u64>,
}

/// A point-in-time copy of a window, prepared for the statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Records in the window.
    pub records: u64,
    /// Rows in the sample.
    pub sample_rows: u64,
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
    /// Non-missing values in the window.
    pub n: u64,
    /// What the statistics use.
    pub data: SampleData,
}

/// Non-missing window values in the form the statistics want.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleData {
    /// Numeric.
    Numeric {
        /// The sampled finite values, sorted ascending.
        sample: Vec<f64>,
        /// Exact counts over the reference's bins, when the whole window
        /// was binned against the reference in force.
        bins: Option<Vec<u64>>,
        /// Sum of all non-missing values.
        sum: f64,
    },
    /// Count per category (the most frequent `max_categories`, the rest
    /// under [`OTHER`]).
    Categorical(BTreeMap<String, u64>),
}

impl FeatureSample {
    /// The feature's kind.
    pub fn kind(&self) -> Kind {
        match self.data {
            SampleData::Numeric { .. } => Kind::Numeric,
            SampleData::Categorical(_) => Kind::Categorical,
        }
    }

    /// Values the sample-based statistics see.
    pub fn sample_len(&self) -> u64 {
        match &self.data {
            SampleData::Numeric { sample, .. } => sample.len() as u64,
            SampleData::Categorical(_) => self.n,
        }
    }
}

impl Window {
    /// An empty window.
    pub fn new(spec: WindowSpec, limits: Limits, binning: Arc<Binning>, seed: u64) -> Self {
        Self {
            spec,
            limits,
            binning,
            seed,
            buckets: BTreeMap::new(),
            written: BTreeMap::new(),
            due: BTreeSet::new(),
        }
    }

    /// A window from stored buckets, each already merged from its parts;
    /// every bucket but the newest gives its sampled values back (the
    /// store holds them).
    pub fn restore(
        spec: WindowSpec,
        limits: Limits,
        binning: Arc<Binning>,
        seed: u64,
        buckets: BTreeMap<u64, Bucket>,
    ) -> Self {
        let newest = buckets.keys().next_back().copied();
        let written = buckets
            .iter()
            .filter(|(id, _)| Some(**id) != newest)
            .map(|(id, b)| (*id, b.priorities.len()))
            .collect();
        let buckets = buckets
            .into_iter()
            .map(|(id, mut b)| {
                if Some(id) != newest {
                    b.values = BTreeMap::new();
                    b.spilled = true;
                }
                (id, Arc::new(b))
            })
            .collect();
        Self {
            spec,
            limits,
            binning,
            seed,
            buckets,
            written,
            due: BTreeSet::new(),
        }
    }

    /// The window's configuration.
    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// The key of the oldest segment that can be live at `now_ms` after
    /// `total` records.
    fn first_key(&self, now_ms: i64, total: u64) -> u64 {
        segment_key(self.spec.first_live(now_ms, total))
    }

    /// Sampled rows an open segment holds in memory before the next one
    /// opens.
    fn segment_rows(&self) -> usize {
        (self.limits.sample_size / 16).max(1)
    }

    /// A copy holding only the buckets live at `now_ms`, for evaluating off
    /// the lock. Cheap: it shares the buckets.
    pub fn live_copy(&self, now_ms: i64, total: u64) -> Window {
        let first = self.first_key(now_ms, total);
        Window {
            spec: self.spec.clone(),
            limits: self.limits,
            binning: self.binning.clone(),
            seed: self.seed,
            buckets: self
                .buckets
                .range(first..)
                .map(|(k, b)| (*k, Arc::clone(b)))
                .collect(),
            written: BTreeMap::new(),
            due: BTreeSet::new(),
        }
    }

    /// A bucket as held in memory (without its sampled values once
    /// spilled).
    pub fn bucket(&self, id: u64) -> Option<&Bucket> {
        self.buckets.get(&id).map(|b| &**b)
    }

    /// Buckets held, live or not yet removed.
    pub fn bucket_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.keys().copied()
    }

    /// Applies rows `skip..` of `batch`, which arrived at `arrival_ms` and
    /// whose row `skip` has record index `first_row`; then drops buckets
    /// that left the window and prunes the sample. Records what changed.
    pub fn apply(
        &mut self,
        batch: &Batch,
        skip: usize,
        arrival_ms: i64,
        first_row: u64,
        changes: &mut Changes,
    ) {
        self.apply_prepared(batch, skip, arrival_ms, first_row, None, changes);
    }

    /// Aggregates of rows `skip..` of `batch` over this window's bins, for
    /// [`Window::apply_prepared`]: the windows of a version bin against the
    /// same reference, so they can share them instead of each binning every
    /// value again.
    pub fn prepare(&self, batch: &Batch, skip: usize) -> Prepared {
        let columns = batch
            .columns
            .iter()
            .map(|col| match &col.values {
                Values::Numeric(v) => Some(numeric_agg(
                    &v[skip.min(v.len())..],
                    self.binning.edges.get(&col.name),
                )),
                Values::Categorical(_) => None,
            })
            .collect();
        Prepared {
            binning: self.binning.clone(),
            skip,
            columns,
        }
    }

    /// [`Window::apply`], using `prepared` (from [`Window::prepare`] of a
    /// window with the same binning, on the same batch and `skip`) for
    /// every bucket that takes all of those rows; anything else is
    /// computed here. The result is identical either way.
    pub fn apply_prepared(
        &mut self,
        batch: &Batch,
        skip: usize,
        arrival_ms: i64,
        first_row: u64,
        prepared: Option<&Prepared>,
        changes: &mut Changes,
    ) {
        let prepared = prepared.filter(|p| {
            p.skip == skip
                && p.columns.len() == batch.columns.len()
                && Arc::ptr_eq(&p.binning, &self.binning)
        });
        let mut closing = Vec::new();
        let mut lo = skip;
        while lo < batch.n_rows {
            let row = first_row + (lo - skip) as u64;
            // Records join the newest segment at the earliest: closed ones
            // never change (their values are in the store only). A segment
            // holding enough sampled rows gives way to a new one of the same
            // bucket, so that no bucket keeps much of the sample in memory
            // (a new window's first bucket takes all of it).
            let span_bucket = self.spec.bucket_of(arrival_ms, row);
            let id = match self.buckets.iter().next_back() {
                Some((&newest, b)) if span_bucket <= newest >> SEGMENT_BITS => {
                    let full = b.priorities.len() >= self.segment_rows();
                    let last = newest & ((1 << SEGMENT_BITS) - 1) == (1 << SEGMENT_BITS) - 1;
                    if full && !last {
                        newest + 1
                    } else {
                        newest
                    }
                }
                _ => segment_key(span_bucket),
            };
            let hi = match self.spec.span {
                Span::Time { .. } => batch.n_rows,
                Span::Count { bucket_records, .. } => {
                    let end = ((id >> SEGMENT_BITS) + 1) * bucket_records;
                    batch
                        .n_rows
                        .min(lo + end.saturating_sub(row).max(1) as usize)
                }
            };
            if !self.buckets.contains_key(&id) {
                // A newer segment closes the previous newest one: it is
                // stored whole, replacing its per-batch parts, once this
                // batch's pruning is done.
                if let Some(&last) = self.buckets.keys().next_back() {
                    closing.push(last);
                }
                let tau = self.new_tau();
                self.buckets.insert(id, Arc::new(Bucket::empty(tau)));
            }
            let Some(bucket) = self.buckets.get(&id) else {
                break;
            };
            let whole = prepared.filter(|_| lo == skip && hi == batch.n_rows);
            // Categories beyond the reference's are admitted per bucket of
            // the span, over all its segments.
            let segments: Vec<&Bucket> = self
                .buckets
                .range(segment_key(id >> SEGMENT_BITS)..id)
                .map(|(_, b)| &**b)
                .chain([&**bucket])
                .collect();
            let delta = make_delta(
                &segments,
                batch,
                lo..hi,
                row,
                self.seed,
                &self.binning,
                self.limits,
                whole,
            );
            if let Some(b) = self.buckets.get_mut(&id) {
                Arc::make_mut(b).merge(&delta);
            }
            changes.deltas.push((id, row, delta));
            lo = hi;
        }
        let total = first_row + (batch.n_rows - skip.min(batch.n_rows)) as u64;
        changes.removed.extend(self.expire(arrival_ms, total));
        self.enforce_cap(changes);
        for id in closing {
            if let Some(b) = self.buckets.get_mut(&id) {
                // The whole state includes this batch's pruning.
                changes.pruned.remove(&id);
                self.written.insert(id, b.priorities.len());
                changes.closed.insert(id, Bucket::spill(b));
            }
        }
        self.rewrite_due(changes);
    }

    /// Asks for the rewrite of at most [`REWRITES_PER_BATCH`] due buckets,
    /// oldest first, under their current thresholds.
    fn rewrite_due(&mut self, changes: &mut Changes) {
        while changes.rewrite.len() < REWRITES_PER_BATCH {
            let Some(id) = self.due.pop_first() else {
                break;
            };
            if let (Some(b), Some(w)) = (self.buckets.get(&id), self.written.get_mut(&id)) {
                *w = b.priorities.len();
                changes.pruned.remove(&id);
                changes.rewrite.insert(id, b.tau);
            }
        }
    }

    /// Drops buckets that left the window; returns their ids.
    pub fn expire(&mut self, now_ms: i64, total: u64) -> Vec<u64> {
        let first = self.first_key(now_ms, total);
        let keep = self.buckets.split_off(&first);
        let gone = std::mem::replace(&mut self.buckets, keep);
        self.written = self.written.split_off(&first);
        self.due = self.due.split_off(&first);
        gone.into_keys().collect()
    }

    /// The threshold of a new bucket: the newest bucket's, raised when the
    /// window holds fewer sampled rows than wanted.
    fn new_tau(&self) -> u64 {
        let Some(newest) = self.buckets.values().next_back() else {
            return KEEP_ALL;
        };
        let held: usize = self.buckets.values().map(|b| b.priorities.len()).sum();
        let want = self.limits.sample_size;
        if held >= want {
            return newest.tau;
        }
        let scale = want as f64 / held.max(1) as f64;
        let raised = newest.tau as f64 * scale;
        if raised >= KEEP_ALL as f64 {
            KEEP_ALL
        } else {
            (raised as u64).max(newest.tau)
        }
    }

    /// Keeps the rows held by the window's buckets near `sample_size`.
    fn enforce_cap(&mut self, changes: &mut Changes) {
        let k = self.limits.sample_size.max(1);
        let held: usize = self.buckets.values().map(|b| b.priorities.len()).sum();
        if held <= k + k / 10 {
            return;
        }
        let mut all: Vec<u64> = self
            .buckets
            .values()
            .flat_map(|b| b.priorities.iter().copied())
            .collect();
        let target = (k + k / 40).min(all.len() - 1);
        let (_, &mut tau, _) = all.select_nth_unstable(target);
        // Rows at exactly `tau` stay, so the threshold is one below the
        // (target+1)-th priority.
        let tau = tau.saturating_sub(1);
        for (&id, b) in &mut self.buckets {
            if b.tau > tau {
                let b = Arc::make_mut(b);
                b.prune(tau);
                changes.pruned.insert(id, tau);
                if self
                    .written
                    .get(&id)
                    .is_some_and(|&w| b.priorities.len() * 2 <= w)
                {
                    self.due.insert(id);
                }
            }
        }
    }

    /// The smallest threshold among the live buckets: the window's sample
    /// is drawn from rows with priority at most this.
    pub fn threshold(&self, now_ms: i64, total: u64) -> u64 {
        let first = self.first_key(now_ms, total);
        self.buckets
            .range(first..)
            .map(|(_, b)| b.tau)
            .min()
            .unwrap_or(KEEP_ALL)
    }

    /// Records in the window at `now_ms` after `total` records.
    pub fn records(&self, now_ms: i64, total: u64) -> u64 {
        let first = self.first_key(now_ms, total);
        self.buckets.range(first..).map(|(_, b)| b.rows).sum()
    }

    /// Per feature: (non-missing, missing, role) in the window.
    pub fn counts(&self, now_ms: i64, total: u64) -> BTreeMap<String, (u64, u64, Role)> {
        let first = self.first_key(now_ms, total);
        let mut out: BTreeMap<String, (u64, u64, Role)> = BTreeMap::new();
        for (_, b) in self.buckets.range(first..) {
            for (name, a) in &b.features {
                let e = out.entry(name.clone()).or_insert((0, 0, a.role));
                e.2 = a.role;
                e.0 += match &a.data {
                    AggData::Numeric { n, .. } => *n,
                    AggData::Categorical { counts, other } => counts.values().sum::<u64>() + other,
                };
                e.1 += a.missing;
            }
        }
        out
    }

    /// Copies the window into statistics-ready form: merged counts, the
    /// bottom-k sample, values sorted. `stored(id)` reads back the whole
    /// state a closed bucket was stored with (its rows above the bucket's
    /// threshold since are dropped here). When the writer has stored it
    /// again with a lower threshold since this copy was taken, the snapshot
    /// samples every bucket below that threshold (still a uniform sample,
    /// perhaps smaller). A closed bucket that `stored` cannot give back, or
    /// gives back with other rows than the window holds (it left the window
    /// and was deleted meanwhile), is left out whole, counts and rows: the
    /// snapshot then covers the other buckets exactly.
    pub fn snapshot(
        &self,
        now_ms: i64,
        total: u64,
        stored: &dyn Fn(u64) -> Option<Bucket>,
    ) -> Snapshot {
        let first = self.first_key(now_ms, total);
        // Each live bucket, with its rows and values read back when
        // spilled, and the threshold its rows are taken under: the lower of
        // the window's and the stored one's (rows above it are left to the
        // shared threshold below rather than pruned here).
        let mut read: Vec<(&Bucket, Option<Bucket>, u64)> = Vec::new();
        for (&id, b) in self.buckets.range(first..) {
            if !b.spilled {
                read.push((b, None, b.tau));
                continue;
            }
            let Some(whole) = stored(id) else {
                continue;
            };
            let t = b.tau.min(whole.tau);
            let same = whole
                .priorities
                .iter()
                .filter(|&&p| p <= t)
                .eq(b.priorities.iter().filter(|&&p| p <= t));
            if same {
                read.push((b, Some(whole), t));
            }
        }
        let live: Vec<&Bucket> = read.iter().map(|(b, ..)| *b).collect();
        // Rows and values: the bucket's own, or what was read back.
        let sampled: Vec<&Bucket> = read
            .iter()
            .map(|(b, whole, _)| whole.as_ref().unwrap_or(b))
            .collect();
        let values: Vec<&BTreeMap<String, Vec<f64>>> = sampled.iter().map(|b| &b.values).collect();
        let tau = read.iter().map(|r| r.2).min().unwrap_or(KEEP_ALL);
        // (priority, bucket index, row index) of every candidate row.
        let mut rows: Vec<(u64, usize, usize)> = sampled
            .iter()
            .enumerate()
            .flat_map(|(bi, b)| {
                b.priorities
                    .iter()
                    .enumerate()
                    .filter(move |(_, &p)| p <= tau)
                    .map(move |(ri, &p)| (p, bi, ri))
            })
            .collect();
        let k = self.limits.sample_size;
        if rows.len() > k {
            if k == 0 {
                rows.clear();
            } else {
                rows.select_nth_unstable(k - 1);
                rows.truncate(k);
            }
        }
        // Grouped by bucket, so each feature's column is looked up once per
        // bucket, not once per row.
        rows.sort_unstable_by_key(|&(_, bi, ri)| (bi, ri));
        let mut features: BTreeMap<String, FeatureSample> = BTreeMap::new();
        let mut partial_bins: BTreeSet<String> = BTreeSet::new();
        let mut others: BTreeMap<String, u64> = BTreeMap::new();
        let mut records = 0;
        for b in &live {
            records += b.rows;
            for (name, a) in &b.features {
                let f = features
                    .entry(name.clone())
                    .or_insert_with(|| FeatureSample {
                        role: a.role,
                        missing: 0,
                        n: 0,
                        data: match a.data.kind() {
                            Kind::Numeric => SampleData::Numeric {
                                sample: Vec::new(),
                                bins: None,
                                sum: 0.0,
                            },
                            Kind::Categorical => SampleData::Categorical(BTreeMap::new()),
                        },
                    });
                f.role = a.role;
                f.missing += a.missing;
                match (&mut f.data, &a.data) {
                    (
                        SampleData::Numeric { bins, sum, .. },
                        AggData::Numeric {
                            n,
                            sum: s,
                            bins: b2,
                        },
                    ) => {
                        f.n += n;
                        *sum += s;
                        if b2.is_empty() {
                            partial_bins.insert(name.clone());
                        } else {
                            match bins {
                                None => *bins = Some(b2.clone()),
                                Some(x) if x.len() == b2.len() => {
                                    x.iter_mut().zip(b2).for_each(|(x, y)| *x += y);
                                }
                                Some(_) => {
                                    partial_bins.insert(name.clone());
                                }
                            }
                        }
                    }
                    (SampleData::Categorical(c), AggData::Categorical { counts, other }) => {
                        f.n += counts.values().sum::<u64>() + other;
                        *others.entry(name.clone()).or_insert(0) += other;
                        for (k, v) in counts {
                            *c.entry(k.clone()).or_insert(0) += v;
                        }
                    }
                    _ => {}
                }
            }
        }
        for (name, f) in &mut features {
            match &mut f.data {
                SampleData::Numeric { sample, bins, .. } => {
                    if partial_bins.contains(name) {
                        *bins = None;
                    }
                    sample.reserve(rows.len());
                    for group in rows.chunk_by(|a, b| a.1 == b.1) {
                        let Some(column) = values[group[0].1].get(name) else {
                            continue;
                        };
                        sample.extend(
                            group
                                .iter()
                                .map(|&(_, _, ri)| column[ri])
                                .filter(|x| x.is_finite()),
                        );
                    }
                    stats::sort_total(sample);
                }
                SampleData::Categorical(c) => {
                    let mut other = others.get(name).copied().unwrap_or(0);
                    if c.len() > self.limits.max_categories {
                        let mut by_count: Vec<(String, u64)> =
                            std::mem::take(c).into_iter().collect();
                        by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                        for (i, (k, v)) in by_count.into_iter().enumerate() {
                            if i < self.limits.max_categories {
                                c.insert(k, v);
                            } else {
                                other += v;
                            }
                        }
                    }
                    if other > 0 {
                        *c.entry(OTHER.to_string()).or_insert(0) += other;
                    }
                }
            }
        }
        Snapshot {
            records,
            sample_rows: rows.len() as u64,
            features,
        }
    }
}

/// Whole-batch aggregates of a batch's numeric columns over one binning,
/// shared by the windows that bin against it (see [`Window::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    binning: Arc<Binning>,
    skip: usize,
    /// Per column of the batch: `(missing, aggregates)` when numeric.
    columns: Vec<Option<(u64, AggData)>>,
}

impl Prepared {
    /// Missing values of column `col` of the batch, when it is numeric and
    /// this was prepared from its first row (`skip` 0): the count the
    /// aggregation already made.
    pub fn missing(&self, col: usize) -> Option<u64> {
        match self.columns.get(col) {
            Some(Some((missing, _))) if self.skip == 0 => Some(*missing),
            _ => None,
        }
    }
}

/// Missing count and aggregates of numeric values over `edges`.
///
/// The writer calls this for every numeric column of every batch, so it is
/// written as loops the compiler vectorises rather than one loop over the
/// values: the count and sum of the finite values in eight interleaved
/// partial sums (one running sum is a chain of dependent additions), then,
/// for up to [`PER_EDGE_MAX`] edges, the number of values above each edge:
/// bin `b` holds the values above edge `b - 1` and not above edge `b`,
/// which is where [`stats::bin_index`] puts them. More edges are counted
/// value by value ([`stats::bin_counts`]).
fn numeric_agg(v: &[f64], edges: Option<&Vec<f64>>) -> (u64, AggData) {
    const LANES: usize = 8;
    let mut sums = [0.0f64; LANES];
    let mut finite = [0u64; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for chunk in &mut chunks {
        for ((s, f), &x) in sums.iter_mut().zip(&mut finite).zip(chunk) {
            let ok = x.is_finite();
            *f += u64::from(ok);
            *s += if ok { x } else { 0.0 };
        }
    }
    let mut sum = stats::pairwise_sum(&sums);
    let mut n: u64 = finite.iter().sum();
    for &x in chunks.remainder() {
        if x.is_finite() {
            n += 1;
            sum += x;
        }
    }
    let missing = v.len() as u64 - n;
    let bins = match edges {
        None => Vec::new(),
        Some(e) if e.len() <= PER_EDGE_MAX => {
            // +inf is above every edge but +inf; NaN and -inf above none.
            let inf = if missing == 0 {
                0
            } else {
                v.iter().filter(|&&x| x == f64::INFINITY).count() as u64
            };
            let mut bins = Vec::with_capacity(e.len() + 1);
            let mut above_prev = n;
            for &edge in e {
                let above = v.iter().map(|&x| u64::from(edge < x)).sum::<u64>()
                    - if edge < f64::INFINITY { inf } else { 0 };
                bins.push(above_prev - above);
                above_prev = above;
            }
            bins.push(above_prev);
            bins
        }
        Some(e) => stats::bin_counts(e, v),
    };
    (missing, AggData::Numeric { n, sum, bins })
}

/// Up to this many edges [`numeric_agg`] counts the values above each edge
/// in a pass of its own (the default 10 bins have 9 edges).
const PER_EDGE_MAX: usize = 16;

/// The contribution of `batch` rows `range` (the first with record index
/// `first_row`) to the last of `segments` (the segments of its span
/// bucket, in order); `whole`, when given, holds the numeric aggregates of
/// exactly those rows.
// One call site; the arguments are the bucket's context, a struct would
// only rename them.
#[allow(clippy::too_many_arguments)]
fn make_delta(
    segments: &[&Bucket],
    batch: &Batch,
    range: std::ops::Range<usize>,
    first_row: u64,
    seed: u64,
    binning: &Binning,
    limits: Limits,
    whole: Option<&Prepared>,
) -> Bucket {
    let tau = segments.last().map_or(KEEP_ALL, |b| b.tau);
    let mut d = Bucket::empty(tau);
    d.rows = range.len() as u64;
    // (row, priority) of the rows the bucket keeps.
    let kept: Vec<(usize, u64)> = range
        .clone()
        .map(|i| (i, priority(seed, first_row + (i - range.start) as u64)))
        .filter(|&(_, p)| p <= tau)
        .collect();
    d.priorities = kept.iter().map(|&(_, p)| p).collect();
    for (col_idx, col) in batch.columns.iter().enumerate() {
        let (missing, data) = match &col.values {
            Values::Numeric(v) => {
                let v = &v[range.clone()];
                d.values.insert(
                    col.name.clone(),
                    kept.iter().map(|&(i, _)| v[i - range.start]).collect(),
                );
                match whole.and_then(|p| p.columns[col_idx].as_ref()) {
                    Some(agg) => agg.clone(),
                    None => numeric_agg(v, binning.edges.get(&col.name)),
                }
            }
            Values::Categorical(v) => {
                let known = binning.categories.get(&col.name);
                let existing: Vec<&BTreeMap<String, u64>> = segments
                    .iter()
                    .filter_map(|b| match b.features.get(&col.name).map(|a| &a.data) {
                        Some(AggData::Categorical { counts, .. }) => Some(counts),
                        _ => None,
                    })
                    .collect();
                let is_ref = |c: &str| known.is_some_and(|k| k.contains(c));
                let admitted = |c: &str| existing.iter().any(|e| e.contains_key(c));
                let mut extra = match existing.as_slice() {
                    [] => 0,
                    [one] => one.keys().filter(|k| !is_ref(k)).count(),
                    many => many
                        .iter()
                        .flat_map(|e| e.keys())
                        .filter(|k| !is_ref(k))
                        .collect::<BTreeSet<_>>()
                        .len(),
                };
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                let (mut other, mut missing) = (0u64, 0u64);
                for s in &v[range.clone()] {
                    if s.is_empty() {
                        missing += 1;
                    } else if let Some(c) = counts.get_mut(s.as_str()) {
                        *c += 1;
                    } else if is_ref(s) || admitted(s) {
                        counts.insert(s.clone(), 1);
                    } else if extra < limits.max_categories {
                        extra += 1;
                        counts.insert(s.clone(), 1);
                    } else {
                        other += 1;
                    }
                }
                (missing, AggData::Categorical { counts, other })
            }
        };
        d.features.insert(
            col.name.clone(),
            Agg {
                role: col.role,
                missing,
                data,
            },
        );
    }
    d
}

#[cfg(test)]
mod tests;
