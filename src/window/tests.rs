use super::*;
use crate::domain::{Column, ModelKey};
use proptest::prelude::*;

const SEED: u64 = 0x5eed;

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

fn binning() -> Binning {
    Binning {
        edges: [("x".to_string(), vec![-50.0, 0.0, 50.0])].into(),
        categories: [("c".to_string(), ["k1".to_string()].into())].into(),
    }
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => (-100i32..100).prop_map(f64::from),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
    ]
}

fn spec() -> impl Strategy<Value = WindowSpec> {
    prop_oneof![
        (1u64..8).prop_map(|n| WindowSpec {
            name: "t".into(),
            span: Span::Time {
                length_ms: n * 1000,
                bucket_ms: 1000
            },
        }),
        (1u64..60, 1u64..20).prop_map(|(r, b)| WindowSpec {
            name: "c".into(),
            span: Span::Count {
                records: r.max(b),
                bucket_records: b
            },
        }),
    ]
}

/// One record as the test log keeps it.
struct Rec {
    arrival: i64,
    index: u64,
    x: f64,
    c: String,
}

/// The per-bucket admission rule, applied from scratch: reference
/// categories always, then the first `max` others, the rest to `other`.
fn categories_from_scratch(
    recs: &[&Rec],
    spec: &WindowSpec,
    max: usize,
) -> (BTreeMap<String, u64>, u64) {
    let known: BTreeSet<String> = ["k1".to_string()].into();
    let mut per_bucket: BTreeMap<u64, (BTreeMap<String, u64>, u64)> = BTreeMap::new();
    for r in recs.iter().filter(|r| !r.c.is_empty()) {
        let (counts, other) = per_bucket
            .entry(spec.bucket_of(r.arrival, r.index))
            .or_default();
        let extra = counts.keys().filter(|k| !known.contains(*k)).count();
        if counts.contains_key(&r.c) || known.contains(&r.c) || extra < max {
            *counts.entry(r.c.clone()).or_insert(0) += 1;
        } else {
            *other += 1;
        }
    }
    let mut counts = BTreeMap::new();
    let mut other = 0;
    for (c, o) in per_bucket.into_values() {
        other += o;
        for (k, v) in c {
            *counts.entry(k).or_insert(0) += v;
        }
    }
    if counts.len() > max {
        let mut by: Vec<(String, u64)> = counts.into_iter().collect();
        by.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts = BTreeMap::new();
        for (i, (k, v)) in by.into_iter().enumerate() {
            if i < max {
                counts.insert(k, v);
            } else {
                other += v;
            }
        }
    }
    if other > 0 {
        *counts.entry(OTHER.to_string()).or_insert(0) += other;
    }
    (counts, other)
}

/// What the store would hold: per bucket the last whole state, the
/// deltas written after it and the last threshold.
#[derive(Default)]
struct FakeStore {
    buckets: BTreeMap<u64, FakeBucket>,
}

/// (whole state, deltas after it, threshold).
type FakeBucket = (Option<Bucket>, Vec<Bucket>, Option<u64>);

impl FakeStore {
    fn write(&mut self, changes: Changes) {
        for (id, _, d) in changes.deltas {
            self.buckets.entry(id).or_default().1.push(d);
        }
        for (id, tau) in changes.pruned {
            self.buckets.entry(id).or_default().2 = Some(tau);
        }
        for (id, tau) in changes.rewrite {
            let b = self.buckets.entry(id).or_default();
            match b.0.as_mut() {
                Some(whole) => {
                    whole.prune(tau);
                    b.2 = None;
                }
                None => b.2 = Some(tau),
            }
        }
        for (id, whole) in changes.closed {
            self.buckets.insert(id, (Some(whole), Vec::new(), None));
        }
        for id in changes.removed {
            self.buckets.remove(&id);
        }
    }

    /// What `Store::read_whole` gives back: a bucket's whole state as
    /// stored, before later thresholds.
    fn whole(&self, id: u64) -> Option<Bucket> {
        self.buckets.get(&id).and_then(|b| b.0.clone())
    }

    /// Applies `batch` and stores what changed; returns how many rewrites
    /// it asked for.
    fn apply(&mut self, w: &mut Window, batch: &Batch, now: i64, first_row: u64) -> usize {
        let mut changes = Changes::default();
        w.apply(batch, 0, now, first_row, &mut changes);
        let rewrites = changes.rewrite.len();
        self.write(changes);
        rewrites
    }

    fn restore(&self, spec: WindowSpec, limits: Limits) -> Window {
        let buckets = self
            .buckets
            .iter()
            .filter_map(|(&id, (whole, deltas, tau))| {
                Bucket::rebuild(whole.clone(), deltas.iter().cloned(), *tau).map(|b| (id, b))
            })
            .collect();
        Window::restore(spec, limits, Arc::new(binning()), SEED, buckets)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The incremental window equals a from-scratch computation over the
    /// records that fall in it: counts, bins, categories and the bottom-k
    /// sample below the window's threshold. A window rebuilt from what it
    /// asked the store to write equals the live one.
    #[test]
    fn incremental_equals_recomputation(
        spec in spec(),
        k in 1usize..30,
        max_categories in 1usize..4,
        batches in prop::collection::vec(
            (0i64..1500, prop::collection::vec((value(), 0u8..6), 1..25)),
            1..14,
        ),
        later in 0i64..4000,
    ) {
        let limits = Limits { sample_size: k, max_categories };
        let mut w = Window::new(spec.clone(), limits, Arc::new(binning()), SEED);
        let mut store = FakeStore::default();
        let mut log: Vec<Rec> = Vec::new();
        let mut now = 1_000_000i64;
        let mut total = 0u64;
        let mut most_held = 0;
        for (dt, rows) in &batches {
            now += dt;
            let xs: Vec<f64> = rows.iter().map(|r| r.0).collect();
            let cs: Vec<String> = rows
                .iter()
                .map(|r| if r.1 == 0 { String::new() } else { format!("k{}", r.1) })
                .collect();
            for (i, (x, c)) in xs.iter().zip(&cs).enumerate() {
                log.push(Rec { arrival: now, index: total + i as u64, x: *x, c: c.clone() });
            }
            let rewrites = store.apply(&mut w, &batch(xs, cs), now, total);
            total += rows.len() as u64;
            // Buckets due for a rewrite wait only while others are
            // rewritten.
            prop_assert!(w.due.is_empty() || rewrites == REWRITES_PER_BATCH);
            let held: usize = w.buckets.values().map(|b| b.priorities.len()).sum();
            most_held = most_held.max(held);
            // Only the open (newest) segment keeps sampled values in memory,
            // at most a sixteenth of the sample and one batch.
            let newest = w.buckets.keys().next_back().copied();
            for (id, b) in &w.buckets {
                prop_assert_eq!(b.spilled, Some(*id) != newest);
                prop_assert!(!b.spilled || b.values.is_empty());
                prop_assert!(b.spilled || b.priorities.len() <= (k / 16).max(1) + rows.len());
                // What the store holds of a closed bucket is under twice
                // what the window still samples from it, unless the bucket
                // waits for its rewrite.
                if let Some(whole) = store.whole(*id).filter(|_| b.spilled) {
                    let (stored, held) = (whole.priorities.len(), b.priorities.len());
                    prop_assert!(
                        stored == held || stored < 2 * held || w.due.contains(id),
                        "{stored} stored for {held}"
                    );
                }
            }
        }
        // Memory stays bounded by the cap plus one batch.
        prop_assert!(most_held <= k + k / 10 + 25, "held {most_held} rows for k = {k}");

        let now = now + later;
        let first = spec.first_live(now, total);
        let inside: Vec<&Rec> = log
            .iter()
            .filter(|r| spec.bucket_of(r.arrival, r.index) >= first)
            .collect();
        let snap = w.snapshot(now, total, &|id| store.whole(id));
        prop_assert_eq!(snap.records, inside.len() as u64);
        prop_assert_eq!(w.records(now, total), inside.len() as u64);

        // Numeric: exact counts and bins; the sample is the bottom-k below
        // the window's threshold.
        let finite: Vec<f64> = inside.iter().map(|r| r.x).filter(|x| x.is_finite()).collect();
        let edges = [-50.0, 0.0, 50.0];
        if inside.is_empty() {
            prop_assert!(snap.features.is_empty());
        } else {
            let fx = &snap.features["x"];
            prop_assert_eq!(fx.missing, (inside.len() - finite.len()) as u64);
            prop_assert_eq!(fx.n, finite.len() as u64);
            let tau = w.threshold(now, total);
            let mut below: Vec<&&Rec> = inside
                .iter()
                .filter(|r| priority(SEED, r.index) <= tau)
                .collect();
            below.sort_by_key(|r| priority(SEED, r.index));
            below.truncate(k);
            let mut expected: Vec<f64> = below.iter().map(|r| r.x).filter(|x| x.is_finite()).collect();
            expected.sort_by(f64::total_cmp);
            match &fx.data {
                SampleData::Numeric { sample, bins, sum } => {
                    prop_assert_eq!(sample, &expected);
                    prop_assert_eq!(bins.as_ref(), Some(&stats::bin_counts(&edges, &finite)));
                    prop_assert_eq!(*sum, finite.iter().sum::<f64>());
                }
                other => prop_assert!(false, "x is {other:?}"),
            }
            prop_assert_eq!(snap.sample_rows, below.len() as u64);

            let fc = &snap.features["c"];
            let (counts, _) = categories_from_scratch(&inside, &spec, max_categories);
            prop_assert_eq!(&fc.data, &SampleData::Categorical(counts));
            prop_assert_eq!(fc.missing, inside.iter().filter(|r| r.c.is_empty()).count() as u64);
        }

        // What the store holds rebuilds the same window.
        let restored = store.restore(spec.clone(), limits);
        prop_assert_eq!(restored.snapshot(now, total, &|id| store.whole(id)), snap);
        prop_assert_eq!(restored.threshold(now, total), w.threshold(now, total));
    }
}

#[test]
fn specs_parse_with_defaults_and_names() {
    let s = WindowSpec::parse("5m").unwrap();
    assert_eq!(s.name, "5m");
    assert_eq!(
        s.span,
        Span::Time {
            length_ms: 300_000,
            bucket_ms: 10_000
        }
    );
    let s = WindowSpec::parse("1h/1m").unwrap();
    assert_eq!(s.name, "1h");
    let s = WindowSpec::parse("count:5000").unwrap();
    assert_eq!(s.name, "last_5000");
    assert_eq!(
        s.span,
        Span::Count {
            records: 5000,
            bucket_records: 500
        }
    );
    for bad in [
        "",
        "5x",
        "5m/7s",
        "count:0",
        "count:10/11",
        "1s/10ms",
        "count:x",
    ] {
        assert!(WindowSpec::parse(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn a_steady_stream_keeps_about_k_rows_and_a_full_sample() {
    // 600 one-second batches of 200 rows into a 5-minute window.
    let spec = WindowSpec::parse("5m/10s").unwrap();
    let limits = Limits {
        sample_size: 1000,
        max_categories: 10,
    };
    let mut w = Window::new(spec, limits, Arc::new(binning()), SEED);
    let mut store = FakeStore::default();
    let mut total = 0;
    for s in 0..600i64 {
        let xs: Vec<f64> = (0..200).map(|i| f64::from(i % 100)).collect();
        let cs = vec!["k1".to_string(); 200];
        store.apply(&mut w, &batch(xs, cs), s * 1000, total);
        total += 200;
    }
    let now = 599 * 1000;
    let snap = w.snapshot(now, total, &|id| store.whole(id));
    assert_eq!(snap.records, 300 * 200);
    let held: usize = w.buckets.values().map(|b| b.priorities.len()).sum();
    assert!(held <= 1100, "held {held}");
    assert!(
        snap.sample_rows >= 900,
        "sample of {} rows",
        snap.sample_rows
    );
}

#[test]
fn a_growing_bucket_holds_at_most_a_quarter_more_space_than_rows() {
    // Every row is kept (the sample is larger than the stream), all into
    // one bucket, a few rows at a time: the case where `Vec`'s doubling
    // would leave up to twice the space the rows need.
    let spec = WindowSpec::parse("1h/1m").unwrap();
    let limits = Limits {
        sample_size: 100_000,
        max_categories: 10,
    };
    let mut w = Window::new(spec, limits, Arc::new(binning()), SEED);
    let mut total = 0;
    for step in 0..400u64 {
        let xs: Vec<f64> = (0..7).map(|i| (step * 7 + i) as f64).collect();
        w.apply(
            &batch(xs, vec!["k1".to_string(); 7]),
            0,
            1_000,
            total,
            &mut Changes::default(),
        );
        total += 7;
        for b in w.buckets.values() {
            let len = b.priorities.len();
            let bound = len + len / 4 + 8;
            assert!(
                b.priorities.capacity() <= bound,
                "priorities: {} for {len} rows",
                b.priorities.capacity()
            );
            for (name, col) in &b.values {
                assert_eq!(col.len(), len, "{name}");
                assert!(
                    col.capacity() <= bound,
                    "{name}: {} for {len} rows",
                    col.capacity()
                );
            }
        }
    }
    assert_eq!(
        w.buckets
            .values()
            .map(|b| b.priorities.len())
            .sum::<usize>(),
        2800
    );
}

#[test]
fn a_live_copy_is_a_point_in_time_copy_that_shares_unchanged_buckets() {
    let spec = WindowSpec::parse("1m/10s").unwrap();
    let limits = Limits {
        sample_size: 50,
        max_categories: 10,
    };
    let mut w = Window::new(spec, limits, Arc::new(binning()), SEED);
    let mut store = FakeStore::default();
    let mut total = 0;
    let feed = |w: &mut Window, store: &mut FakeStore, s: i64, total: &mut u64| {
        let xs: Vec<f64> = (0..40).map(|i| f64::from(i % 100) + s as f64).collect();
        let cs = vec!["k1".to_string(); 40];
        store.apply(w, &batch(xs, cs), s * 1000, *total);
        *total += 40;
    };
    for s in 0..30 {
        feed(&mut w, &mut store, s, &mut total);
    }
    let now = 29_000;
    let copy = w.live_copy(now, total);
    let before = copy.snapshot(now, total, &|id| store.whole(id));
    assert_eq!(before, w.snapshot(now, total, &|id| store.whole(id)));
    // Closed buckets are shared, not copied.
    let closed = w.buckets.keys().next().copied().unwrap();
    assert!(Arc::ptr_eq(&w.buckets[&closed], &copy.buckets[&closed]));
    // The writer goes on (the open bucket grows and closes, the sample is
    // pruned, closed buckets pruned to half are stored again); the copy's
    // counts do not move, and its sample can only lose rows: the bottom of
    // the same rows under the lower threshold the store now has.
    for s in 30..45 {
        feed(&mut w, &mut store, s, &mut total);
    }
    let after = copy.snapshot(now, total - 15 * 40, &|id| store.whole(id));
    let sample = |s: &Snapshot| match &s.features["x"].data {
        SampleData::Numeric { sample, bins, sum } => (sample.clone(), bins.clone(), *sum),
        other => panic!("x is {other:?}"),
    };
    let ((xs_before, bins_before, sum_before), (xs_after, bins_after, sum_after)) =
        (sample(&before), sample(&after));
    assert_eq!(after.records, before.records);
    assert_eq!(after.features["c"], before.features["c"]);
    assert_eq!((bins_after, sum_after), (bins_before, sum_before));
    assert!(after.sample_rows > 0 && after.sample_rows <= before.sample_rows);
    let mut left = xs_before.clone();
    for x in &xs_after {
        let at = left.iter().position(|y| y == x);
        assert!(
            at.is_some(),
            "{x} is not in the copy's sample {xs_before:?}"
        );
        left.remove(at.unwrap_or_default());
    }
    assert_ne!(w.snapshot(44_000, total, &|id| store.whole(id)), before);
}

/// A closed bucket's values live in the store only, so it never changes
/// again: a batch whose arrival time falls in it (the clock went back)
/// joins the newest bucket.
#[test]
fn a_record_from_the_past_joins_the_newest_bucket() {
    let spec = WindowSpec::parse("5m/10s").unwrap();
    let limits = Limits {
        sample_size: 1000,
        max_categories: 10,
    };
    let mut w = Window::new(spec, limits, Arc::new(binning()), SEED);
    let one = || batch(vec![1.0; 10], vec!["k1".to_string(); 10]);
    let mut ch = Changes::default();
    w.apply(&one(), 0, 20_000, 0, &mut ch);
    assert!(ch.closed.is_empty(), "the newest bucket takes deltas");
    let mut ch = Changes::default();
    w.apply(&one(), 0, 30_000, 10, &mut ch);
    let two = 2 << SEGMENT_BITS;
    let three = 3 << SEGMENT_BITS;
    assert_eq!(
        ch.closed.keys().copied().collect::<Vec<_>>(),
        [two],
        "bucket 2 closes"
    );
    let whole = &ch.closed[&two];
    assert_eq!((whole.rows, whole.priorities.len()), (10, 10));
    assert_eq!(
        whole.values["x"],
        vec![1.0; 10],
        "the store gets the values"
    );
    let kept = w.bucket(two).unwrap();
    assert!(kept.spilled && kept.values.is_empty(), "memory does not");
    assert_eq!(kept.priorities, whole.priorities);
    let mut ch = Changes::default();
    w.apply(&one(), 0, 25_000, 20, &mut ch);
    assert_eq!(ch.deltas.len(), 1);
    assert_eq!(ch.deltas[0].0, three);
    assert!(ch.closed.is_empty());
    assert_eq!(w.bucket(two).map(|b| b.rows), Some(10));
    assert_eq!(w.bucket(three).map(|b| b.rows), Some(20));
}

/// A window's first fill halves every closed segment's sample at once when
/// its records pass twice the sample size; their rewrites go a few per
/// batch, oldest first, until none is stored with twice the rows it holds.
#[test]
fn closed_buckets_due_for_a_rewrite_take_turns() {
    let spec = WindowSpec::parse("5m/10s").unwrap();
    let limits = Limits {
        sample_size: 320,
        max_categories: 10,
    };
    let mut w = Window::new(spec, limits, Arc::new(binning()), SEED);
    let mut store = FakeStore::default();
    let ten = || batch(vec![1.0; 10], vec!["k1".to_string(); 10]);
    let mut most_at_once = 0;
    let mut rewritten = BTreeSet::new();
    let mut total = 0;
    // Every batch fills a segment (320 / 16 = 20 rows: two batches); from
    // 320 records on, the threshold falls as the window keeps ~320 rows.
    for _ in 0..200 {
        let mut ch = Changes::default();
        w.apply(&ten(), 0, 1_000_000, total, &mut ch);
        total += 10;
        most_at_once = most_at_once.max(ch.rewrite.len());
        rewritten.extend(ch.rewrite.keys().copied());
        store.write(ch);
    }
    assert!(
        rewritten.len() >= 10,
        "{} rewrites: the scenario must rewrite many buckets",
        rewritten.len()
    );
    assert_eq!(most_at_once, REWRITES_PER_BATCH, "a few per batch");
    let due = w.due.len();
    for _ in 0..due.div_ceil(REWRITES_PER_BATCH) + 1 {
        let mut ch = Changes::default();
        w.apply(&ten(), 0, 1_000_000, total, &mut ch);
        total += 10;
        store.write(ch);
    }
    let newest = w.buckets.keys().next_back().copied();
    for (id, b) in w.buckets.iter().filter(|(id, _)| Some(**id) != newest) {
        let stored = store.whole(*id).map_or(0, |s| s.priorities.len());
        let held = b.priorities.len();
        assert!(
            stored < 2 * held || stored == held,
            "bucket {id}: {stored} stored for {held}"
        );
    }
}

/// A closed bucket the store cannot give back (it left the window and was
/// deleted after the copy was taken), or gives back with other rows, is
/// left out of the snapshot whole: counts and sample then cover the other
/// buckets exactly.
#[test]
fn a_snapshot_leaves_out_a_closed_bucket_it_cannot_read_back() {
    let spec = WindowSpec::parse("30s/10s").unwrap();
    let limits = Limits {
        sample_size: 1000,
        max_categories: 10,
    };
    let mut w = Window::new(spec, limits, Arc::new(binning()), SEED);
    let mut store = FakeStore::default();
    // Bucket 0 holds 1.0s, bucket 1 holds 2.0s, bucket 2 (open) 3.0s.
    for (i, t) in [1_000i64, 11_000, 21_000].into_iter().enumerate() {
        let x = (i + 1) as f64;
        let rows = 10 * (i + 1);
        store.apply(
            &mut w,
            &batch(vec![x; rows], vec!["k1".to_string(); rows]),
            t,
            (10 * i * (i + 1) / 2) as u64,
        );
    }
    let total = 60;
    let now = 21_000;
    let sample = |snap: &Snapshot| match &snap.features["x"].data {
        SampleData::Numeric { sample, .. } => sample.clone(),
        other => panic!("x is {other:?}"),
    };
    let all = w.snapshot(now, total, &|id| store.whole(id));
    assert_eq!(all.records, 60);
    assert_eq!(
        sample(&all),
        [vec![1.0; 10], vec![2.0; 20], vec![3.0; 30]].concat()
    );

    // Bucket 1 is gone from the store.
    let gone = w.snapshot(now, total, &|id| {
        if id >> SEGMENT_BITS == 1 {
            None
        } else {
            store.whole(id)
        }
    });
    assert_eq!(gone.records, 40);
    assert_eq!(gone.features["x"].n, 40);
    assert_eq!(
        gone.features["c"].data,
        SampleData::Categorical([("k1".to_string(), 40)].into())
    );
    assert_eq!(sample(&gone), [vec![1.0; 10], vec![3.0; 30]].concat());

    // Bucket 0 comes back with other rows than the window holds.
    let other = w.snapshot(now, total, &|id| {
        let mut b = store.whole(id)?;
        if id >> SEGMENT_BITS == 0 {
            b.priorities.pop();
            b.values.values_mut().for_each(|v| {
                v.pop();
            });
        }
        Some(b)
    });
    assert_eq!(other.records, 50);
    assert_eq!(sample(&other), [vec![2.0; 20], vec![3.0; 30]].concat());
}

/// Values for [`numeric_agg_counts_like_bin_index`]: small integers (so
/// that any order of summation is exact), often equal to an edge, and the
/// non-finite values that count as missing.
fn agg_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => (-6i32..7).prop_map(f64::from),
        1 => Just(-0.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// `numeric_agg`'s per-edge counting (up to 16 edges) and its fallback
    /// (more) give every finite value the bin `stats::bin_index` gives it,
    /// whatever the batch length (the eight partial sums' remainder
    /// included), with duplicate and infinite edges; non-finite values are
    /// missing, and the sum is the finite values' sum.
    #[test]
    fn numeric_agg_counts_like_bin_index(
        values in prop::collection::vec(agg_value(), 0..70),
        edges in prop::collection::vec(
            prop_oneof![
                8 => (-5i32..6).prop_map(f64::from),
                1 => Just(f64::NEG_INFINITY),
                1 => Just(f64::INFINITY),
            ],
            0..24,
        ),
    ) {
        let mut edges = edges;
        edges.sort_by(f64::total_cmp);
        let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        let (missing, data) = numeric_agg(&values, Some(&edges));
        prop_assert_eq!(missing, (values.len() - finite.len()) as u64);
        let want_bins: Vec<u64> = {
            let mut bins = vec![0u64; edges.len() + 1];
            for &x in &finite {
                bins[stats::bin_index(&edges, x)] += 1;
            }
            bins
        };
        prop_assert_eq!(
            data,
            AggData::Numeric {
                n: finite.len() as u64,
                sum: finite.iter().sum::<f64>(),
                bins: want_bins,
            }
        );
        let (_, unbinned) = numeric_agg(&values, None);
        prop_assert!(
            matches!(unbinned, AggData::Numeric { ref bins, .. } if bins.is_empty()),
            "{unbinned:?}"
        );
    }
}
