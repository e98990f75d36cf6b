//! Golden tests against SciPy (values produced by
//! `tests/golden/gen_golden.py`, never by this crate) plus property tests.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}

fn load_golden() -> Value {
    let path = golden_dir().join("stats_golden.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON parses")
}

/// Decodes a float written by the generator ("nan"/"inf"/"-inf" as strings).
fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("f64"),
        Value::String(s) if s == "nan" => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        other => panic!("not a float: {other}"),
    }
}

/// Reads a sample: inline JSON array or a raw little-endian f64 file.
fn sample(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().map(num).collect(),
        Value::Object(o) => {
            let file = o["bin"].as_str().expect("bin name");
            let bytes = std::fs::read(golden_dir().join("bin").join(file)).expect("bin file");
            let out: Vec<f64> = bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            assert_eq!(out.len() as u64, o["len"].as_u64().expect("len"), "{file}");
            out
        }
        other => panic!("bad sample {other}"),
    }
}

fn counts(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("counts")
        .iter()
        .map(|x| x.as_u64().expect("u64"))
        .collect()
}

/// Collects comparison failures for one case.
struct Checker<'a> {
    case: &'a str,
    failures: Vec<String>,
    /// Largest relative error seen per field (diagnostics only).
    worst: BTreeMap<String, f64>,
}

#[derive(Clone, Copy)]
enum Tol {
    /// `|got - want| <= abs`
    Abs(f64),
    /// relative tolerance; expected exact zeros must come out <= 1e-15
    Rel(f64),
    /// p-values: relative, but absolute 1e-15 below 1e-300
    PValue,
    /// p-values of the form `1 - cdf` (CvM asymptotic): relative 1e-9, or
    /// an absolute error of a few ulp of 1.0. SciPy computes `1 - cdf` with
    /// a cdf that is itself only accurate to a few ulp, so below ~1e-6 its
    /// own value carries that absolute noise and no reimplementation that
    /// does not reproduce AMOS's `kv` bit for bit can match it relatively.
    OneMinusCdf,
}

impl Checker<'_> {
    fn float(&mut self, field: &str, got: f64, want: f64, tol: Tol) {
        let ok = if want.is_nan() {
            got.is_nan()
        } else if want.is_infinite() || got.is_infinite() {
            got == want
        } else {
            let diff = (got - want).abs();
            match tol {
                Tol::Abs(a) => diff <= a,
                Tol::Rel(r) => {
                    if want == 0.0 {
                        got.abs() <= 1e-15
                    } else {
                        diff <= r * want.abs()
                    }
                }
                Tol::PValue => {
                    if want.abs() < 1e-300 {
                        diff <= 1e-15
                    } else {
                        diff <= 1e-9 * want.abs()
                    }
                }
                Tol::OneMinusCdf => diff <= 1e-9 * want.abs() || diff <= CVM_ABS_TOL,
            }
        };
        if want.is_finite() && want != 0.0 {
            let rel = ((got - want) / want).abs();
            let w = self.worst.entry(field.to_owned()).or_insert(0.0);
            *w = w.max(rel);
        }
        if !ok {
            let rel = ((got - want) / want).abs();
            self.failures.push(format!(
                "{}: {field}: got {got:e}, want {want:e} (rel err {rel:e})",
                self.case
            ));
        }
    }

    fn opt_float(&mut self, field: &str, got: Option<f64>, want: &Value, tol: Tol) {
        match (got, want) {
            (None, Value::Null) => {}
            (Some(g), w) if !w.is_null() => self.float(field, g, num(w), tol),
            (g, w) => self
                .failures
                .push(format!("{}: {field}: got {g:?}, want {w}", self.case)),
        }
    }

    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, field: &str, got: T, want: T) {
        if got != want {
            self.failures.push(format!(
                "{}: {field}: got {got:?}, want {want:?}",
                self.case
            ));
        }
    }
}

const REL: Tol = Tol::Rel(1e-9);

/// Absolute tolerance for `1 - cdf` p-values: 4e-15 is ~18 ulp of 1.0.
const CVM_ABS_TOL: f64 = 4e-15;

/// Checks one golden case; returns the failure messages (empty = pass)
/// and the largest relative error per field.
fn check(case: &Value) -> (Vec<String>, BTreeMap<String, f64>) {
    let name = case["name"].as_str().expect("name");
    let exp = &case["expected"];
    let mut c = Checker {
        case: name,
        failures: Vec::new(),
        worst: BTreeMap::new(),
    };
    match case["kind"].as_str() {
        Some("numeric") => check_numeric(&mut c, case, exp),
        Some("categorical") => check_categorical(&mut c, case, exp),
        other => c.failures.push(format!("{name}: unknown kind {other:?}")),
    }
    (c.failures, c.worst)
}

fn check_numeric(c: &mut Checker<'_>, case: &Value, exp: &Value) {
    let raw_ref = sample(&case["ref"]);
    let raw_cur = sample(&case["cur"]);
    let (r, r_missing) = finite_sorted(&raw_ref);
    let (q, q_missing) = finite_sorted(&raw_cur);
    c.eq(
        "n_ref_missing",
        r_missing as u64,
        exp["n_ref_missing"].as_u64().expect("u64"),
    );
    c.eq(
        "n_cur_missing",
        q_missing as u64,
        exp["n_cur_missing"].as_u64().expect("u64"),
    );
    c.opt_float(
        "missing_share_ref",
        missing_share(r_missing, r.len()),
        &exp["missing_share_ref"],
        REL,
    );
    c.opt_float(
        "missing_share_cur",
        missing_share(q_missing, q.len()),
        &exp["missing_share_cur"],
        REL,
    );

    let ks = ks_2samp(&r, &q);
    match (ks, &exp["ks"]) {
        (None, Value::Null) => {}
        (Some(ks), w) if !w.is_null() => {
            c.float(
                "ks.statistic",
                ks.statistic,
                num(&w["statistic"]),
                Tol::Abs(1e-12),
            );
            c.float("ks.pvalue", ks.pvalue, num(&w["pvalue"]), Tol::PValue);
            let want = if w["method"] == "exact" {
                KsMethod::Exact
            } else {
                KsMethod::Asymptotic
            };
            c.eq("ks.method", ks.method, want);
        }
        (g, w) => c
            .failures
            .push(format!("{}: ks: got {g:?}, want {w}", c.case)),
    }

    if let Err(e) = fused_matches_separate(&r, &q) {
        c.failures.push(format!("{}: {e}", c.case));
    }

    if exp["edges"].is_null() {
        c.eq("edges", r.is_empty(), true);
        return;
    }
    let bins = NonZeroUsize::new(DEFAULT_BINS).expect("nonzero");
    let edges = quantile_edges(&r, bins);
    let want_edges: Vec<f64> = exp["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(num)
        .collect();
    // Bit for bit.
    c.eq(
        "edges",
        edges.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        want_edges.iter().map(|x| x.to_bits()).collect(),
    );
    let rc = bin_counts(&edges, &r);
    let cc = bin_counts(&edges, &q);
    c.eq("ref_counts", rc.clone(), counts(&exp["ref_counts"]));
    c.eq("cur_counts", cc.clone(), counts(&exp["cur_counts"]));
    if q.is_empty() {
        c.eq("psi(null)", exp["psi"].is_null(), true);
        return;
    }
    c.float("psi", psi(&rc, &cc, DEFAULT_EPSILON), num(&exp["psi"]), REL);
    c.float("js", js_distance(&rc, &cc), num(&exp["js"]), REL);
    c.float(
        "hellinger",
        hellinger(&rc, &cc),
        num(&exp["hellinger"]),
        REL,
    );
    c.float(
        "binned_ks",
        binned_ks(&rc, &cc),
        num(&exp["binned_ks"]),
        REL,
    );
    c.float(
        "wasserstein",
        wasserstein(&r, &q),
        num(&exp["wasserstein"]),
        REL,
    );
    c.float(
        "fused.wasserstein",
        sample_stats(&r, &q).wasserstein,
        num(&exp["wasserstein"]),
        REL,
    );
    c.opt_float(
        "wasserstein_norm",
        wasserstein_norm(&r, &q),
        &exp["wasserstein_norm"],
        REL,
    );
    match (cvm_2samp(&r, &q), &exp["cvm"]) {
        (None, Value::Null) => {}
        (Some(g), w) if !w.is_null() => {
            c.float("cvm.statistic", g.statistic, num(&w["statistic"]), REL);
            let want = if w["method"] == "exact" {
                CvmMethod::Exact
            } else {
                CvmMethod::Asymptotic
            };
            let tol = if want == CvmMethod::Exact {
                Tol::PValue
            } else {
                Tol::OneMinusCdf
            };
            c.float("cvm.pvalue", g.pvalue, num(&w["pvalue"]), tol);
            c.eq("cvm.method", g.method, want);
        }
        (g, w) => c
            .failures
            .push(format!("{}: cvm: got {g:?}, want {w}", c.case)),
    }
}

fn check_categorical(c: &mut Checker<'_>, case: &Value, exp: &Value) {
    let to_map = |v: &Value| -> BTreeMap<String, u64> {
        v.as_object()
            .expect("category map")
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().expect("count")))
            .collect()
    };
    let (ra, ca) = (to_map(&case["ref"]), to_map(&case["cur"]));
    let (cats, rc, cc) = align_categories(&ra, &ca);
    let want_cats: Vec<String> = exp["categories"]
        .as_array()
        .expect("cats")
        .iter()
        .map(|s| s.as_str().expect("str").to_owned())
        .collect();
    c.eq("categories", cats, want_cats);
    c.eq("ref_counts", rc.clone(), counts(&exp["ref_counts"]));
    c.eq("cur_counts", cc.clone(), counts(&exp["cur_counts"]));
    match (chi2_contingency(&rc, &cc), &exp["chi2"]) {
        (None, Value::Null) => {}
        (Some(g), w) if !w.is_null() => {
            c.float("chi2.statistic", g.statistic, num(&w["statistic"]), REL);
            c.float("chi2.pvalue", g.pvalue, num(&w["pvalue"]), Tol::PValue);
            c.eq("chi2.dof", g.dof as u64, w["dof"].as_u64().expect("dof"));
        }
        (g, w) => c
            .failures
            .push(format!("{}: chi2: got {g:?}, want {w}", c.case)),
    }
    if exp["psi"].is_null() {
        c.eq("psi", psi(&rc, &cc, DEFAULT_EPSILON).is_nan(), true);
        return;
    }
    c.float("psi", psi(&rc, &cc, DEFAULT_EPSILON), num(&exp["psi"]), REL);
    c.float("js", js_distance(&rc, &cc), num(&exp["js"]), REL);
    c.float(
        "hellinger",
        hellinger(&rc, &cc),
        num(&exp["hellinger"]),
        REL,
    );
}

/// `sample_stats` against the separate functions: KS and CvM bit for bit,
/// Wasserstein within 1e-12 relative plus the rounding of SciPy's CDF
/// differences (a few ulp of 1 times the range of the values).
fn fused_matches_separate(r: &[f64], q: &[f64]) -> Result<(), String> {
    let fused = sample_stats(r, q);
    let ks_bits =
        |k: Option<KsResult>| k.map(|k| (k.statistic.to_bits(), k.pvalue.to_bits(), k.method));
    if ks_bits(fused.ks) != ks_bits(ks_2samp(r, q)) {
        return Err(format!(
            "fused ks {:?} != ks_2samp {:?}",
            fused.ks,
            ks_2samp(r, q)
        ));
    }
    let cvm_bits =
        |k: Option<CvmResult>| k.map(|k| (k.statistic.to_bits(), k.pvalue.to_bits(), k.method));
    if cvm_bits(fused.cvm) != cvm_bits(cvm_2samp(r, q)) {
        return Err(format!(
            "fused cvm {:?} != cvm_2samp {:?}",
            fused.cvm,
            cvm_2samp(r, q)
        ));
    }
    let want = wasserstein(r, q);
    let got = fused.wasserstein;
    if want.is_nan() || got.is_nan() {
        return if want.is_nan() && got.is_nan() {
            Ok(())
        } else {
            Err(format!("fused wasserstein {got:e} != {want:e}"))
        };
    }
    let lo = r[0].min(q[0]);
    let hi = r[r.len() - 1].max(q[q.len() - 1]);
    let tol = 1e-12 * want.abs() + 4.0 * f64::EPSILON * (hi - lo);
    if (got - want).abs() > tol {
        return Err(format!(
            "fused wasserstein {got:e} != {want:e} (diff {:e}, tol {tol:e})",
            (got - want).abs()
        ));
    }
    Ok(())
}

#[test]
fn golden_cases_match_scipy() {
    let golden = load_golden();
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 300, "only {} golden cases", cases.len());
    let mut failures = Vec::new();
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    let mut passed = 0;
    for case in cases {
        let (f, w) = check(case);
        passed += usize::from(f.is_empty());
        failures.extend(f);
        for (k, v) in w {
            let e = worst.entry(k).or_insert(0.0);
            *e = e.max(v);
        }
    }
    eprintln!(
        "golden: {passed}/{} cases pass; worst relative error per field:",
        cases.len()
    );
    for (k, v) in &worst {
        eprintln!("  {k:<20} {v:e}");
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn kstwo_sf_matches_scipy() {
    let golden = load_golden();
    let rows = golden["kstwo_sf"].as_array().expect("kstwo_sf");
    let mut failures = Vec::new();
    let mut worst = 0.0f64;
    for row in rows {
        let n = row["n"].as_f64().expect("n");
        let x = num(&row["x"]);
        let want = num(&row["sf"]);
        let mut c = Checker {
            case: &format!("kstwo n={n} x={x:e}"),
            failures: Vec::new(),
            worst: BTreeMap::new(),
        };
        c.float("sf", kstwo_sf(x, n), want, Tol::PValue);
        failures.extend(c.failures);
        let w = c.worst.values().copied().fold(0.0, f64::max);
        if w > 1e-11 && std::env::var_os("KSTWO_VERBOSE").is_some() {
            eprintln!("  n={n} x={x:e} sf={want:e} rel={w:e}");
        }
        worst = worst.max(w);
    }
    eprintln!(
        "kstwo.sf: {} rows, worst relative error {worst:e}",
        rows.len()
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn empty_inputs_are_none_or_nan() {
    assert!(ks_2samp(&[], &[1.0]).is_none());
    assert!(cvm_2samp(&[1.0], &[1.0, 2.0]).is_none());
    assert!(psi(&[0, 0], &[1, 2], DEFAULT_EPSILON).is_nan());
    assert!(psi(&[1], &[1, 2], DEFAULT_EPSILON).is_nan());
    assert!(wasserstein(&[], &[1.0]).is_nan());
    assert_eq!(wasserstein_norm(&[1.0, 1.0], &[2.0]), None);
    assert_eq!(missing_share(0, 0), None);
    assert!(quantile_edges(&[], NonZeroUsize::new(10).expect("nonzero")).is_empty());
    assert!(chi2_contingency(&[], &[]).is_none());
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn counts_for(r: &[f64], c: &[f64]) -> (Vec<u64>, Vec<u64>) {
    let edges = quantile_edges(r, NonZeroUsize::new(DEFAULT_BINS).expect("nonzero"));
    (bin_counts(&edges, r), bin_counts(&edges, c))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn psi_nonnegative_and_zero_on_identical(
        r in prop::collection::vec(-1e6f64..1e6, 1..200),
        c in prop::collection::vec(-1e6f64..1e6, 1..200),
    ) {
        let (r, c) = (sorted(r), sorted(c));
        let (rc, cc) = counts_for(&r, &c);
        let p = psi(&rc, &cc, DEFAULT_EPSILON);
        prop_assert!(p >= 0.0, "psi {p}");
        let (rr, rr2) = counts_for(&r, &r);
        prop_assert_eq!(psi(&rr, &rr2, DEFAULT_EPSILON), 0.0);
    }

    #[test]
    fn ks_statistic_bounds_identity_and_invariance(
        r in prop::collection::vec(-1000i32..1000, 1..150),
        c in prop::collection::vec(-1000i32..1000, 1..150),
        offset in -1000i32..1000,
    ) {
        let rf = sorted(r.iter().map(|&x| x as f64).collect());
        let cf = sorted(c.iter().map(|&x| x as f64).collect());
        let base = ks_2samp(&rf, &cf).expect("non-empty");
        prop_assert!((0.0..=1.0).contains(&base.statistic));
        prop_assert!((0.0..=1.0).contains(&base.pvalue));
        let same = ks_2samp(&rf, &rf).expect("non-empty");
        prop_assert_eq!(same.statistic, 0.0);
        prop_assert_eq!(same.pvalue, 1.0);
        // x -> 2x + offset is exact (and strictly increasing) on these integers.
        let map = |v: &[f64]| v.iter().map(|&x| 2.0 * x + offset as f64).collect::<Vec<_>>();
        let moved = ks_2samp(&map(&rf), &map(&cf)).expect("non-empty");
        prop_assert_eq!(moved.statistic, base.statistic);
        prop_assert_eq!(moved.pvalue, base.pvalue);
    }

    #[test]
    fn js_symmetric_and_bounded(
        a in prop::collection::vec(0u64..1000, 1..20),
        b in prop::collection::vec(0u64..1000, 1..20),
    ) {
        let k = a.len().min(b.len());
        let (mut a, mut b) = (a[..k].to_vec(), b[..k].to_vec());
        a[0] += 1;
        b[0] += 1;
        let ab = js_distance(&a, &b);
        let ba = js_distance(&b, &a);
        prop_assert!((ab - ba).abs() <= 1e-15, "{ab} vs {ba}");
        prop_assert!((0.0..=1.0).contains(&ab));
        let h = hellinger(&a, &b);
        prop_assert!((0.0..=1.0 + 1e-15).contains(&h));
    }

    #[test]
    fn pvalues_in_unit_interval(
        r in prop::collection::vec(-50.0f64..50.0, 2..60),
        c in prop::collection::vec(-50.0f64..50.0, 2..60),
        cats in prop::collection::vec((1u64..500, 0u64..500), 1..12),
    ) {
        let (r, c) = (sorted(r), sorted(c));
        let cv = cvm_2samp(&r, &c).expect("n >= 2");
        prop_assert!((0.0..=1.0).contains(&cv.pvalue));
        let ks = ks_2samp(&r, &c).expect("non-empty");
        prop_assert!((0.0..=1.0).contains(&ks.pvalue));
        let (a, b): (Vec<u64>, Vec<u64>) = cats.into_iter().unzip();
        if let Some(ch) = chi2_contingency(&a, &b) {
            prop_assert!((0.0..=1.0).contains(&ch.pvalue));
        }
    }
}

#[test]
fn streamed_pairwise_sum_groups_like_the_slice_version() {
    for n in [0usize, 1, 7, 8, 9, 127, 128, 129, 300, 1000, 4099] {
        let xs: Vec<f64> = (0..n).map(|i| 1.0 / (i as f64 + 0.3)).collect();
        let mut it = xs.iter();
        let streamed = super::wasserstein::pairwise_sum_from(n, &mut || {
            it.next().copied().unwrap_or(f64::NAN)
        });
        assert_eq!(
            streamed.to_bits(),
            super::pairwise_sum(&xs).to_bits(),
            "{n}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `bin_index` counts edges below `x` for short edge lists and searches
    /// longer ones; both must be `numpy.searchsorted(edges, x, 'left')`.
    #[test]
    fn bin_index_is_the_left_partition_point(
        mut edges in prop::collection::vec(-5.0f64..5.0, 0..48),
        xs in prop::collection::vec(prop_oneof![-6.0f64..6.0, Just(f64::NAN), Just(0.0)], 1..32),
    ) {
        edges.sort_unstable_by(f64::total_cmp);
        edges.dedup();
        // Values equal to an edge fall into the bin below it.
        let on_edges: Vec<f64> = edges.iter().copied().take(4).collect();
        for &x in xs.iter().chain(&on_edges) {
            prop_assert_eq!(bin_index(&edges, x), edges.partition_point(|&e| e < x));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The fused pass gives what the three separate merges give, with ties
    /// inside and across the samples (small integers) and without them.
    #[test]
    fn fused_pass_equals_separate_functions(
        r in prop::collection::vec(-20i32..20, 1..300),
        q in prop::collection::vec(-20i32..20, 1..120),
        scale in prop_oneof![Just(1.0f64), Just(0.37), Just(1e-3)],
        jitter in prop::collection::vec(-0.5f64..0.5, 300),
        continuous in any::<bool>(),
    ) {
        let to_f = |v: &[i32], off: usize| -> Vec<f64> {
            sorted(v.iter().enumerate().map(|(k, &x)| {
                let x = x as f64 * scale;
                if continuous { x + jitter[(k + off) % jitter.len()] } else { x }
            }).collect())
        };
        let (rf, qf) = (to_f(&r, 0), to_f(&q, 7));
        prop_assert_eq!(fused_matches_separate(&rf, &qf), Ok(()));
        prop_assert_eq!(fused_matches_separate(&qf, &rf), Ok(()));
        prop_assert_eq!(fused_matches_separate(&rf, &rf), Ok(()));
    }
}

#[test]
fn fused_pass_equals_separate_functions_at_the_detectors_sizes() {
    // 100,000 reference values against 10,000 current ones, shifted and
    // with a block of ties on both sides.
    let normalish = |k: usize, n: usize, shift: f64| {
        let u = (k as f64 + 0.5) / n as f64;
        (u / (1.0 - u)).ln() * 0.55 + shift
    };
    let mut r: Vec<f64> = (0..100_000).map(|k| normalish(k, 100_000, 0.0)).collect();
    let mut q: Vec<f64> = (0..10_000).map(|k| normalish(k, 10_000, 0.05)).collect();
    for (k, v) in r.iter_mut().enumerate().skip(40_000).take(300) {
        *v = if k % 3 == 0 { 0.0 } else { 0.25 };
    }
    for v in q.iter_mut().skip(4_000).take(40) {
        *v = 0.0;
    }
    let (r, q) = (sorted(r), sorted(q));
    assert_eq!(fused_matches_separate(&r, &q), Ok(()));
    assert_eq!(fused_matches_separate(&q, &r), Ok(()));
}

/// `sort_total` leaves `v` with the same bits in the same order as
/// `sort_unstable_by(f64::total_cmp)`.
fn assert_sorts_like_total_cmp(mut v: Vec<f64>) {
    let mut want = v.clone();
    want.sort_unstable_by(f64::total_cmp);
    sort_total(&mut v);
    assert_eq!(
        v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn sort_total_orders_like_total_cmp() {
    let v = vec![
        3.5,
        -0.0,
        0.0,
        -1e300,
        1e-300,
        -2.5,
        7.0,
        -7.0,
        0.0,
        f64::MIN_POSITIVE,
    ];
    assert_sorts_like_total_cmp(v);
}

#[test]
fn radix_sort_orders_like_total_cmp() {
    // Long enough for the radix path, with duplicates, both zeros and both
    // signs.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let v: Vec<f64> = (0..3 * RADIX_MIN)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match i % 7 {
                0 => 0.0,
                1 => -0.0,
                2 => (seed % 50) as f64 - 25.0,
                _ => f64::from_bits(seed >> 2) * if seed & 1 == 0 { 1.0 } else { -1.0 },
            }
        })
        .collect();
    assert_sorts_like_total_cmp(v);
}
