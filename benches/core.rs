//! Criterion benchmarks of driftd's pure core: every statistic at growing
//! sample sizes (and KS, CvM and Wasserstein from one pass, as the detector
//! computes them), the window update path (`Window::apply` of one 1000-row,
//! 50-feature batch) and one full evaluation (100 features x 2 windows of
//! 10,000-value samples against a 100,000-value reference), beside a
//! calibration: sorting 100,000 doubles, the operation issue #7 timed on
//! its machine (3-4 ms), so figures from machines of different speed can be
//! read against one another.
//!
//! `cargo bench --bench core -- --warm-up-time 1 --measurement-time 3`;
//! BENCHMARKS.md has the figures. Nothing here asserts a time.

use std::{collections::BTreeMap, hint::black_box, num::NonZeroUsize, sync::Arc};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use driftd::{
    config::Config,
    detector,
    domain::{Batch, Column, ModelKey, Role, Values},
    reference::{self, Reference},
    stats,
    store::{Commit, Store},
    window::{Bucket, Changes, FeatureSample, Limits, SampleData, Snapshot, Window, WindowSpec},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A standard normal deviate (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn sorted_normal(rng: &mut StdRng, n: usize, shift: f64) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n).map(|_| normal(rng) + shift).collect();
    v.sort_unstable_by(f64::total_cmp);
    v
}

const SIZES: [(usize, &str); 4] = [
    (1_000, "1k"),
    (10_000, "10k"),
    (100_000, "100k"),
    (1_000_000, "1M"),
];

fn bins() -> NonZeroUsize {
    NonZeroUsize::new(stats::DEFAULT_BINS).unwrap_or(NonZeroUsize::MIN)
}

/// Each sample-based statistic on two samples of n values each (the
/// reference and a window shifted by 0.05 standard deviations), plus the
/// daemon's own shape: a 10,000-value window against a 100,000-value
/// reference.
fn statistics(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let samples: Vec<(usize, &str, Vec<f64>, Vec<f64>)> = SIZES
        .iter()
        .map(|&(n, name)| {
            (
                n,
                name,
                sorted_normal(&mut rng, n, 0.0),
                sorted_normal(&mut rng, n, 0.05),
            )
        })
        .collect();
    let reference = sorted_normal(&mut rng, 100_000, 0.0);
    let window = sorted_normal(&mut rng, 10_000, 0.05);

    let mut g = c.benchmark_group("ks_2samp");
    for (n, name, r, w) in &samples {
        // Equal sizes up to 10,000 take SciPy's exact path (O(n) for equal
        // sizes), larger ones the asymptotic Kolmogorov distribution.
        g.throughput(Throughput::Elements(2 * *n as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| stats::ks_2samp(black_box(r), black_box(w)))
        });
    }
    // Unequal sizes under 10,000 take the exact lattice-path p-value, whose
    // cost grows with n*m/gcd: measured at 5000 x 8000, not above.
    let (r5, w8) = (&samples[1].2[..5000], &samples[1].3[..8000]);
    g.throughput(Throughput::Elements(13_000));
    g.bench_function("exact_5k_vs_8k", |b| {
        b.iter(|| stats::ks_2samp(black_box(r5), black_box(w8)))
    });
    g.throughput(Throughput::Elements(110_000));
    g.bench_function("window_10k_vs_ref_100k", |b| {
        b.iter(|| stats::ks_2samp(black_box(&reference), black_box(&window)))
    });
    g.finish();

    let mut g = c.benchmark_group("cvm_2samp");
    for (n, name, r, w) in &samples {
        g.throughput(Throughput::Elements(2 * *n as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| stats::cvm_2samp(black_box(r), black_box(w)))
        });
    }
    g.throughput(Throughput::Elements(110_000));
    g.bench_function("window_10k_vs_ref_100k", |b| {
        b.iter(|| stats::cvm_2samp(black_box(&reference), black_box(&window)))
    });
    g.finish();

    let mut g = c.benchmark_group("wasserstein");
    for (n, name, r, w) in &samples {
        g.throughput(Throughput::Elements(2 * *n as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| stats::wasserstein(black_box(r), black_box(w)))
        });
    }
    g.throughput(Throughput::Elements(110_000));
    g.bench_function("window_10k_vs_ref_100k", |b| {
        b.iter(|| stats::wasserstein(black_box(&reference), black_box(&window)))
    });
    g.finish();

    // The three together from one pass (what the detector runs).
    let mut g = c.benchmark_group("sample_stats");
    for (n, name, r, w) in &samples {
        g.throughput(Throughput::Elements(2 * *n as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| stats::sample_stats(black_box(r), black_box(w)))
        });
    }
    g.throughput(Throughput::Elements(110_000));
    g.bench_function("window_10k_vs_ref_100k", |b| {
        b.iter(|| stats::sample_stats(black_box(&reference), black_box(&window)))
    });
    // Without the shift, D is small enough for the cheap Pelz-Good
    // p-value: what remains is the pass itself.
    let unshifted = sorted_normal(&mut rng, 10_000, 0.0);
    g.bench_function("window_10k_vs_ref_100k_unshifted", |b| {
        b.iter(|| stats::sample_stats(black_box(&reference), black_box(&unshifted)))
    });
    g.finish();

    // The KS p-value alone at the detector's effective size
    // (round(10000 * 100000 / 110000) = 9091): D = 0.012 takes the
    // Pelz-Good expansion, 0.02 and 0.04 (n D^2 >= 2.2) the Smirnov sum.
    let mut g = c.benchmark_group("kstwo_sf");
    for d in [0.012, 0.02, 0.04] {
        g.bench_function(BenchmarkId::new("n9091", d), |b| {
            b.iter(|| stats::kstwo_sf(black_box(d), 9091.0))
        });
    }
    g.finish();

    // PSI proper works on 10 bin counts; what grows with n is counting the
    // values into the reference's bins (the window does it at ingest, the
    // detector only for a live reference).
    let mut g = c.benchmark_group("psi_bin_counts");
    for (n, name, r, w) in &samples {
        let edges = stats::quantile_edges(r, bins());
        let ref_counts = stats::bin_counts(&edges, r);
        g.throughput(Throughput::Elements(*n as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let cur = stats::bin_counts(black_box(&edges), black_box(w));
                stats::psi(&ref_counts, &cur, stats::DEFAULT_EPSILON)
            })
        });
    }
    let edges = stats::quantile_edges(&reference, bins());
    let ref_counts = stats::bin_counts(&edges, &reference);
    let cur = stats::bin_counts(&edges, &window);
    g.throughput(Throughput::Elements(10));
    g.bench_function("psi_only_10_bins", |b| {
        b.iter(|| stats::psi(black_box(&ref_counts), black_box(&cur), 1e-4))
    });
    g.finish();

    // Chi-square works on category counts: its cost follows the number of
    // categories, not of values. Values are counted at ingest; here n
    // values spread over 100 categories are counted, aligned and tested.
    let mut g = c.benchmark_group("chi2");
    for &(n, name) in &SIZES {
        let cats: Vec<String> = (0..100).map(|i| format!("v{i}")).collect();
        let values: Vec<&str> = (0..n)
            .map(|_| {
                let u: f64 = rng.random();
                cats[((100f64).powf(u) - 1.0) as usize % 100].as_str()
            })
            .collect();
        let ref_counts: BTreeMap<String, u64> = cats
            .iter()
            .map(|c| (c.clone(), 1000 + c.len() as u64))
            .collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("count_align_test", name), |b| {
            b.iter(|| {
                let mut cur: BTreeMap<&str, u64> = BTreeMap::new();
                for v in black_box(&values) {
                    *cur.entry(v).or_insert(0) += 1;
                }
                let cur: BTreeMap<String, u64> =
                    cur.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                let (_, r, c) = stats::align_categories(&ref_counts, &cur);
                stats::chi2_contingency(&r, &c)
            })
        });
    }
    for k in [10usize, 100, 1000] {
        let r: Vec<u64> = (0..k as u64).map(|i| 1000 + i).collect();
        let w: Vec<u64> = (0..k as u64).map(|i| 900 + 2 * i).collect();
        g.throughput(Throughput::Elements(k as u64));
        g.bench_function(BenchmarkId::new("test_only_categories", k), |b| {
            b.iter(|| stats::chi2_contingency(black_box(&r), black_box(&w)))
        });
    }
    g.finish();
}

fn feature_name(j: usize) -> String {
    format!("f{j:03}")
}

/// A batch of `rows` rows and `features` numeric input features.
fn batch(rng: &mut StdRng, rows: usize, features: usize) -> Batch {
    Batch {
        key: ModelKey {
            model: "bench".into(),
            version: "v1".into(),
        },
        columns: (0..features)
            .map(|j| Column {
                name: feature_name(j),
                role: Role::Input,
                values: Values::Numeric((0..rows).map(|_| normal(rng) + j as f64).collect()),
            })
            .collect(),
        n_rows: rows,
    }
}

/// A compiled reference of `rows` rows over `features` features.
fn compiled_reference(rng: &mut StdRng, rows: usize, features: usize) -> Reference {
    let cfg = Config::default().engine;
    let mut b = reference::Builder::default();
    let chunk = 10_000.min(rows);
    for _ in 0..rows / chunk {
        b.push(&batch(rng, chunk, features), chunk);
    }
    b.build(reference::Source::SetReference, cfg.reference)
}

/// `Window::apply` of one 1000-row, 50-feature batch in steady state: the
/// window binned against a reference, its sample already at the default
/// limits (sample_size 10000, max_categories 100) after 5 simulated
/// minutes at 40,000 records/s, then 25 ms of arrival time per batch.
fn window_apply(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(11);
    let reference = compiled_reference(&mut rng, 100_000, 50);
    let binning = Arc::new(reference.binning());
    let limits = Limits {
        sample_size: 10_000,
        max_categories: 100,
    };
    let batches: Vec<Batch> = (0..8).map(|_| batch(&mut rng, 1000, 50)).collect();
    let mut g = c.benchmark_group("window_apply");
    g.throughput(Throughput::Elements(50_000));
    for spec in ["5m/10s", "1h/1m"] {
        let spec = WindowSpec::parse(spec).unwrap_or_else(|e| panic!("{e}"));
        let mut w = Window::new(spec.clone(), limits, binning.clone(), 42);
        let mut now: i64 = 1_700_000_000_000;
        let mut row = 0u64;
        // 5 simulated minutes at 40 batches per second.
        for i in 0..12_000 {
            let mut ch = Changes::default();
            w.apply(&batches[i % batches.len()], 0, now, row, &mut ch);
            now += 25;
            row += 1000;
        }
        let mut i = 0;
        g.bench_function(BenchmarkId::new("1000x50", &spec.name), |b| {
            b.iter(|| {
                let mut ch = Changes::default();
                w.apply(black_box(&batches[i % batches.len()]), 0, now, row, &mut ch);
                now += 25;
                row += 1000;
                i += 1;
                ch
            })
        });
    }
    g.finish();
}

/// A snapshot like a full window's: per feature a sorted 10,000-value
/// sample and exact counts over the reference's bins.
fn snapshot(rng: &mut StdRng, reference: &Reference, features: usize, shift: f64) -> Snapshot {
    let mut out = BTreeMap::new();
    for j in 0..features {
        let name = feature_name(j);
        let sample = sorted_normal(rng, 10_000, j as f64 + shift);
        let edges = match reference.features.get(&name).map(|f| &f.data) {
            Some(reference::RefData::Numeric { edges, .. }) => edges.clone(),
            _ => Vec::new(),
        };
        let bins = stats::bin_counts(&edges, &sample);
        let n = 1_200_000;
        out.insert(
            name,
            FeatureSample {
                role: Role::Input,
                missing: 0,
                n,
                data: SampleData::Numeric {
                    sum: sample.iter().sum::<f64>() * 120.0,
                    sample,
                    bins: Some(bins.iter().map(|b| b * 120).collect()),
                },
            },
        );
    }
    Snapshot {
        records: 1_200_000,
        sample_rows: 10_000,
        features: out,
    }
}

/// One evaluation as the engine's evaluator runs it per version:
/// `detector::evaluate` of two windows' snapshots, 100 numeric features
/// each, 10,000-value samples against a 100,000-value reference.
fn evaluation(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(13);
    let reference = compiled_reference(&mut rng, 100_000, 100);
    let cfg = Config::default().engine;
    let snaps = [
        snapshot(&mut rng, &reference, 100, 0.0),
        snapshot(&mut rng, &reference, 100, 0.1),
    ];
    let mut g = c.benchmark_group("evaluation");
    g.sample_size(20);
    g.bench_function("100_features_x_2_windows", |b| {
        b.iter(|| {
            snaps
                .iter()
                .map(|s| detector::evaluate(Some(black_box(&reference)), black_box(s), &cfg))
                .collect::<Vec<_>>()
        })
    });
    // What the evaluator does before that, per window: copy the live
    // buckets, read the closed buckets' sampled values back from the store,
    // merge them and sort the sample (a 5m window at 40,000 records/s, 100
    // features). The store is sled in a temporary directory, holding what
    // the writer stores when a bucket closes, is pruned or leaves.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut store_cfg = Config::default().store;
    store_cfg.path = dir.path().join("data");
    let store = Store::open(&store_cfg).unwrap_or_else(|e| panic!("{e}"));
    let key = ModelKey {
        model: "m".into(),
        version: "v".into(),
    };
    let mut in_memory: BTreeMap<u64, Bucket> = BTreeMap::new();
    let binning = Arc::new(reference.binning());
    let limits = Limits {
        sample_size: 10_000,
        max_categories: 100,
    };
    let spec = WindowSpec::parse("5m/10s").unwrap_or_else(|e| panic!("{e}"));
    let mut w = Window::new(spec, limits, binning, 42);
    let batches: Vec<Batch> = (0..4).map(|_| batch(&mut rng, 1000, 100)).collect();
    let mut now: i64 = 1_700_000_000_000;
    let mut row = 0u64;
    for i in 0..12_000 {
        let mut ch = Changes::default();
        w.apply(&batches[i % batches.len()], 0, now, row, &mut ch);
        now += 25;
        row += 1000;
        let name = &w.spec().name;
        let commit = Commit {
            wholes: ch
                .closed
                .iter()
                .map(|(id, b)| (name.clone(), *id, b.clone()))
                .collect(),
            taus: ch
                .pruned
                .iter()
                .map(|(id, t)| (name.clone(), *id, *t))
                .collect(),
            rewrites: ch
                .rewrite
                .iter()
                .map(|(id, t)| (name.clone(), *id, *t))
                .collect(),
            removed: ch.removed.iter().map(|id| (name.clone(), *id)).collect(),
            ..Commit::default()
        };
        if !(commit.wholes.is_empty()
            && commit.taus.is_empty()
            && commit.rewrites.is_empty()
            && commit.removed.is_empty())
        {
            store
                .commit(&key, &commit)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for (id, tau) in &ch.rewrite {
            if let Some(b) = in_memory.get_mut(id) {
                b.prune(*tau);
            }
        }
        in_memory.extend(ch.closed);
        for id in ch.removed {
            in_memory.remove(&id);
        }
    }
    let name = w.spec().name.clone();
    let from_store = |id| {
        store
            .read_whole(&key, &name, id)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // What the evaluator does under the engine's lock.
    g.bench_function("live_copy_5m_100_features", |b| {
        b.iter(|| w.live_copy(now, row))
    });
    g.bench_function("live_copy_and_snapshot_5m_100_features", |b| {
        b.iter_batched(
            || (),
            |()| w.live_copy(now, row).snapshot(now, row, &from_store),
            BatchSize::SmallInput,
        )
    });
    // The same with the closed buckets' values in memory: what reading
    // them back from sled costs is the difference.
    g.bench_function(
        "live_copy_and_snapshot_5m_100_features_values_in_memory",
        |b| {
            b.iter_batched(
                || (),
                |()| {
                    w.live_copy(now, row)
                        .snapshot(now, row, &|id| in_memory.get(&id).cloned())
                },
                BatchSize::SmallInput,
            )
        },
    );
    g.finish();
}

/// The machine's speed in one number: `sort_unstable_by(f64::total_cmp)`
/// of 100,000 standard normal doubles (a fresh unsorted copy each time).
fn calibration(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(17);
    let values: Vec<f64> = (0..100_000).map(|_| normal(&mut rng)).collect();
    let mut g = c.benchmark_group("calibration");
    g.bench_function("sort_100k_doubles", |b| {
        b.iter_batched(
            || values.clone(),
            |mut v| {
                v.sort_unstable_by(f64::total_cmp);
                v
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, statistics, window_apply, evaluation, calibration);
criterion_main!(benches);
