#!/usr/bin/env python3
"""Golden data generator for driftd's `stats` module.

Every expected value written here comes from SciPy / NumPy, never from the
Rust code under test.  Pinned versions (install into a venv):

    python3 -m venv /tmp/goldenvenv
    /tmp/goldenvenv/bin/pip install scipy==1.17.1 numpy==2.4.6
    /tmp/goldenvenv/bin/python tests/golden/gen_golden.py

Output (next to this script):
    stats_golden.json   all cases; arrays longer than BIN_THRESHOLD are stored
                        as raw little-endian f64 files `bin/<name>.f64`.
Floats are written with Python repr (shortest round-trip); non-finite floats
are written as the strings "nan", "inf", "-inf"; "not defined" is null.
The script is deterministic (fixed seeds).
"""
import json
import math
import os
import sys
import warnings

import numpy as np
import scipy
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.stats import kstwo

assert scipy.__version__ == "1.17.1", scipy.__version__
assert np.__version__.startswith("2."), np.__version__

HERE = os.path.dirname(os.path.abspath(__file__))
BIN_DIR = os.path.join(HERE, "bin")
BIN_THRESHOLD = 5000
BINS = 10
EPS = 1e-4


def enc(x):
    """Encode a float for JSON (non-finite as strings)."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def enc_arr(name, which, arr):
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size > BIN_THRESHOLD:
        os.makedirs(BIN_DIR, exist_ok=True)
        fname = f"{name}.{which}.f64"
        arr.astype("<f8").tofile(os.path.join(BIN_DIR, fname))
        return {"bin": fname, "len": int(arr.size)}
    return [enc(v) for v in arr]


def quantile_edges(r, bins):
    # q defined as i/B computed in float64, exactly like the Rust side.
    q = np.array([float(i) / float(bins) for i in range(1, bins)], dtype=np.float64)
    edges = np.quantile(r, q)  # default method='linear'
    return np.unique(edges)


def counts(edges, x):
    idx = np.searchsorted(edges, x, side="left")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)


def props(c):
    return c / c.sum()


def psi_from_counts(rc, cc, eps=EPS):
    p = props(rc)
    q = props(cc)
    p = np.where(p == 0, eps, p)
    q = np.where(q == 0, eps, q)
    return float(np.sum((q - p) * np.log(q / p)))


def hellinger_from_counts(rc, cc):
    p = props(rc)
    q = props(cc)
    return float(np.sqrt(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)) / np.sqrt(2.0))


def binned_ks_from_counts(rc, cc):
    return float(np.max(np.abs(np.cumsum(rc) / rc.sum() - np.cumsum(cc) / cc.sum())))


def ks_case(r, c):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = stats.ks_2samp(r, c, alternative="two-sided", method="auto")
    method = "exact" if max(len(r), len(c)) <= 10000 else "asymptotic"
    if any("Exact calculation unsuccessful" in str(x.message) for x in w):
        method = "asymptotic"
    return {"statistic": enc(res.statistic), "pvalue": enc(res.pvalue), "method": method}


def cvm_case(r, c):
    if len(r) < 2 or len(c) < 2:
        return None
    res = stats.cramervonmises_2samp(r, c, method="auto")
    method = "exact" if max(len(r), len(c)) <= 20 else "asymptotic"
    return {"statistic": enc(res.statistic), "pvalue": enc(res.pvalue), "method": method}


def numeric_case(name, ref, cur):
    ref = np.asarray(ref, dtype=np.float64)
    cur = np.asarray(cur, dtype=np.float64)
    r = np.sort(ref[np.isfinite(ref)])
    c = np.sort(cur[np.isfinite(cur)])
    exp = {
        "n_ref_missing": int(ref.size - r.size),
        "n_cur_missing": int(cur.size - c.size),
        "missing_share_ref": enc((ref.size - r.size) / ref.size) if ref.size else None,
        "missing_share_cur": enc((cur.size - c.size) / cur.size) if cur.size else None,
    }
    both = r.size > 0 and c.size > 0
    exp["ks"] = ks_case(r, c) if both else None
    if r.size > 0:
        edges = quantile_edges(r, BINS)
        rc = counts(edges, r)
        cc = counts(edges, c)
        exp["edges"] = [enc(e) for e in edges]
        exp["ref_counts"] = rc.tolist()
        exp["cur_counts"] = cc.tolist()
    else:
        exp["edges"] = None
    if both:
        exp["psi"] = enc(psi_from_counts(rc, cc))
        exp["js"] = enc(jensenshannon(rc, cc, base=2))
        exp["hellinger"] = enc(hellinger_from_counts(rc, cc))
        exp["binned_ks"] = enc(binned_ks_from_counts(rc, cc))
        exp["wasserstein"] = enc(stats.wasserstein_distance(r, c))
        if r.size >= 2 and r[0] != r[-1]:
            exp["wasserstein_norm"] = enc(exp["wasserstein"] / np.std(r, ddof=1))
        else:
            exp["wasserstein_norm"] = None
        exp["cvm"] = cvm_case(r, c)
    else:
        for k in ("psi", "js", "hellinger", "binned_ks", "wasserstein", "wasserstein_norm", "cvm"):
            exp[k] = None
    return {
        "name": name,
        "kind": "numeric",
        "ref": enc_arr(name, "ref", ref),
        "cur": enc_arr(name, "cur", cur),
        "expected": exp,
    }


def categorical_case(name, ref, cur):
    """ref/cur: dict category -> count (counts > 0)."""
    cats = sorted(set(ref) | set(cur))
    rc = np.array([ref.get(k, 0) for k in cats], dtype=np.int64)
    cc = np.array([cur.get(k, 0) for k in cats], dtype=np.int64)
    exp = {"categories": cats, "ref_counts": rc.tolist(), "cur_counts": cc.tolist()}
    if rc.sum() > 0 and cc.sum() > 0:
        res = stats.chi2_contingency(np.array([rc, cc]), correction=False)
        exp["chi2"] = {"statistic": enc(res.statistic), "pvalue": enc(res.pvalue), "dof": int(res.dof)}
        exp["psi"] = enc(psi_from_counts(rc, cc))
        exp["js"] = enc(jensenshannon(rc, cc, base=2))
        exp["hellinger"] = enc(hellinger_from_counts(rc, cc))
    else:
        exp["chi2"] = exp["psi"] = exp["js"] = exp["hellinger"] = None
    return {"name": name, "kind": "categorical", "ref": ref, "cur": cur, "expected": exp}


def main():
    cases = []
    rng = np.random.default_rng(20240601)

    # 1. Small-sample grid (exact KS, exact CvM where both <= 20): continuous data.
    grid = [1, 2, 3, 4, 5, 7, 10, 13, 16, 20, 25, 30]
    for n in grid:
        for m in grid:
            shift = rng.choice([0.0, 0.3, 1.0, 3.0])
            cases.append(numeric_case(f"grid_cont_{n}x{m}", rng.normal(0, 1, n), rng.normal(shift, 1, m)))
    # 2. Same grid with heavy ties (small integers).
    for n in grid:
        for m in grid:
            hi = rng.choice([2, 3, 5])
            cases.append(numeric_case(f"grid_ties_{n}x{m}",
                                      rng.integers(0, hi, n).astype(float),
                                      rng.integers(0, hi + rng.integers(0, 2), m).astype(float)))
    # 3. Assorted shapes and sizes.
    sizes = [(1000, 37), (37, 1000), (500, 500), (2000, 3000), (120, 7), (64, 48)]
    for n, m in sizes:
        cases.append(numeric_case(f"normal_{n}x{m}", rng.normal(0, 1, n), rng.normal(0.1, 1.2, m)))
    # Around SciPy's exact/asymptotic switch (MAX_AUTO_N = 10000).
    cases.append(numeric_case("switch_10000x10000", rng.normal(0, 1, 10000), rng.normal(0.02, 1, 10000)))
    cases.append(numeric_case("switch_10001x500", rng.normal(0, 1, 10001), rng.normal(0.1, 1, 500)))
    cases.append(numeric_case("switch_9999x10000", rng.normal(0, 1, 9999), rng.normal(0.03, 1, 10000)))
    cases.append(numeric_case("switch_10001x10001", rng.normal(0, 1, 10001), rng.normal(0.03, 1, 10001)))
    cases.append(numeric_case("switch_10000x9000_shift", rng.normal(0, 1, 10000), rng.normal(0.5, 1, 9000)))
    cases.append(numeric_case("asymp_20000x3", rng.normal(0, 1, 20000), rng.normal(0.5, 1, 3)))
    cases.append(numeric_case("asymp_20000x1", rng.normal(0, 1, 20000), [0.25]))
    cases.append(numeric_case("asymp_12000x150", rng.normal(0, 1, 12000), rng.normal(0.8, 1, 150)))
    cases.append(numeric_case("asymp_12000x60_far", rng.normal(0, 1, 12000), rng.normal(3, 1, 60)))
    cases.append(numeric_case("asymp_15000x15000_small_shift", rng.normal(0, 1, 15000), rng.normal(0.01, 1, 15000)))
    cases.append(numeric_case("asymp_15000x15000_shift", rng.normal(0, 1, 15000), rng.normal(0.06, 1, 15000)))
    cases.append(numeric_case("asymp_11000x400_ties", rng.integers(0, 6, 11000).astype(float),
                              rng.integers(0, 7, 400).astype(float)))
    # Disjoint supports: extreme p-values.
    cases.append(numeric_case("disjoint_5000x5000", rng.normal(0, 1, 5000), rng.normal(100, 1, 5000)))
    cases.append(numeric_case("disjoint_300x200", rng.normal(0, 1, 300), rng.normal(100, 1, 200)))
    cases.append(numeric_case("disjoint_15x15", rng.normal(0, 1, 15), rng.normal(100, 1, 15)))
    cases.append(numeric_case("disjoint_11000x900", rng.normal(0, 1, 11000), rng.normal(100, 1, 900)))
    # Identical samples.
    x = rng.normal(0, 1, 777)
    cases.append(numeric_case("identical_777", x, x.copy()))
    x = rng.integers(0, 4, 50).astype(float)
    cases.append(numeric_case("identical_ties_50", x, rng.permutation(x)))
    # Constant columns.
    cases.append(numeric_case("constant_both_same", np.full(100, 3.5), np.full(80, 3.5)))
    cases.append(numeric_case("constant_both_diff", np.full(100, 3.5), np.full(80, 4.0)))
    cases.append(numeric_case("constant_ref", np.full(200, 0.1), rng.normal(0, 1, 150)))
    cases.append(numeric_case("constant_cur", rng.normal(0, 1, 150), np.full(200, 0.1)))
    cases.append(numeric_case("constant_ref_15", np.full(15, 0.1), rng.normal(0, 1, 12)))
    # Heavy tails.
    cases.append(numeric_case("cauchy_3000x2000", rng.standard_cauchy(3000), rng.standard_cauchy(2000) * 1.5))
    cases.append(numeric_case("pareto_4000x4000", rng.pareto(1.1, 4000), rng.pareto(1.3, 4000)))
    cases.append(numeric_case("pareto_20000x5000", rng.pareto(0.8, 20000), rng.pareto(0.8, 5000)))
    cases.append(numeric_case("lognormal_3000x800", rng.lognormal(0, 2, 3000), rng.lognormal(0.2, 2, 800)))
    # Mixtures.
    def mix(k, w):
        a = rng.normal(-2, 0.5, k)
        b = rng.normal(3, 1.0, k)
        return np.where(rng.random(k) < w, a, b)
    cases.append(numeric_case("mixture_5000x3000", mix(5000, 0.3), mix(3000, 0.5)))
    cases.append(numeric_case("mixture_ties_2000x2000",
                              np.round(mix(2000, 0.3), 1), np.round(mix(2000, 0.35), 1)))
    # Magnitudes.
    cases.append(numeric_case("tiny_1e-7", rng.normal(0, 1, 2000) * 1e-7, rng.normal(0.1, 1, 1500) * 1e-7))
    cases.append(numeric_case("huge_1e9", 1e9 + rng.normal(0, 1, 2000) * 1e9, 1e9 + rng.normal(0.1, 1, 1500) * 1e9))
    cases.append(numeric_case("offset_1e9_small_spread", 1e9 + rng.normal(0, 1, 1000), 1e9 + rng.normal(0.2, 1, 1000)))
    cases.append(numeric_case("mixed_magnitudes", np.concatenate([rng.normal(0, 1e-7, 500), rng.normal(0, 1e9, 500)]),
                              np.concatenate([rng.normal(0, 1e-7, 300), rng.normal(0, 1e9, 700)])))
    # Missing values (NaN, +-inf).
    def with_missing(a, frac):
        a = a.copy()
        k = int(len(a) * frac)
        idx = rng.choice(len(a), k, replace=False)
        a[idx] = rng.choice([np.nan, np.inf, -np.inf], k)
        return a
    cases.append(numeric_case("missing_1000x800", with_missing(rng.normal(0, 1, 1000), 0.1),
                              with_missing(rng.normal(0.2, 1, 800), 0.3)))
    cases.append(numeric_case("missing_small_12x9", with_missing(rng.normal(0, 1, 12), 0.25),
                              with_missing(rng.normal(0.5, 1, 9), 0.3)))
    cases.append(numeric_case("missing_all_cur", rng.normal(0, 1, 100), np.full(20, np.nan)))
    cases.append(numeric_case("missing_all_ref", np.array([np.nan, np.inf, -np.inf]), rng.normal(0, 1, 20)))
    cases.append(numeric_case("empty_cur", rng.normal(0, 1, 10), np.array([])))
    cases.append(numeric_case("one_finite_each", np.array([np.nan, 1.0]), np.array([2.0, np.inf])))
    # Large samples (binary files).
    cases.append(numeric_case("large_200k_x_200k", rng.normal(0, 1, 200000), rng.normal(0.01, 1, 200000)))
    cases.append(numeric_case("large_200k_x_10k", with_missing(rng.normal(0, 1, 200000), 0.01),
                              rng.standard_t(5, 10000)))
    cases.append(numeric_case("large_100k_ties_x_10k", rng.integers(0, 50, 100000).astype(float),
                              rng.integers(0, 52, 10000).astype(float)))
    # Very small p-values on the asymptotic branch.
    cases.append(numeric_case("asymp_30000x30000_shift", rng.normal(0, 1, 30000), rng.normal(0.15, 1, 30000)))
    cases.append(numeric_case("asymp_30000x2000_shift", rng.normal(0, 1, 30000), rng.normal(0.4, 1, 2000)))
    # Random small cases with assorted distributions.
    for i in range(30):
        n = int(rng.integers(2, 300))
        m = int(rng.integers(2, 300))
        cases.append(numeric_case(f"random_{i}_{n}x{m}", rng.gamma(2.0, 1.0, n), rng.gamma(2.0, 1.0 + 0.02 * i, m)))

    # Categorical cases.
    cat_cases = [
        ("cat_basic", {"a": 10, "b": 20, "c": 30}, {"a": 12, "b": 18, "c": 33}),
        ("cat_only_ref", {"a": 10, "b": 20, "x": 5}, {"a": 12, "b": 18}),
        ("cat_only_cur", {"a": 10, "b": 20}, {"a": 12, "b": 18, "y": 7}),
        ("cat_disjoint", {"a": 10, "b": 20}, {"c": 12, "d": 18}),
        ("cat_single", {"a": 10}, {"a": 25}),
        ("cat_single_only_cur_missing", {"a": 10}, {"b": 25}),
        ("cat_unicode", {"é": 5, "Z": 7, "a": 9, "ß": 1}, {"é": 6, "Z": 2, "a": 11, "ü": 4}),
        ("cat_big_drift", {"a": 100000, "b": 100000}, {"a": 150000, "b": 50000}),
        ("cat_huge_drift", {"a": 1000000, "b": 1000000, "c": 10}, {"a": 10, "b": 2000000, "c": 1000000}),
        ("cat_identical", {"a": 5, "b": 6, "c": 7}, {"a": 5, "b": 6, "c": 7}),
        ("cat_proportional", {"a": 5, "b": 6, "c": 7}, {"a": 50, "b": 60, "c": 70}),
        ("cat_empty_cur", {"a": 5, "b": 6}, {}),
    ]
    # Moderate-to-extreme drift with tiny but representable p-values
    # (exercises the far tail of the chi-square survival function).
    for i, d in enumerate([30, 60, 100, 150, 220, 300, 400, 520]):
        cat_cases.append((f"cat_tail_2_{i}", {"a": 1000, "b": 1000}, {"a": 1000 + d, "b": 1000 - d}))
    for i, d in enumerate([40, 90, 160, 250, 330]):
        cat_cases.append((f"cat_tail_5_{i}", {"a": 800, "b": 800, "c": 800, "d": 800, "e": 800},
                          {"a": 800 + d, "b": 800 - d, "c": 800 + d // 2, "d": 800 - d // 2, "e": 800}))
    for i, d in enumerate([2500, 3500, 4200, 4500, 4700, 4800]):
        cat_cases.append((f"cat_tail_far_{i}", {"a": 10000, "b": 10000}, {"a": 10000 + d, "b": 10000 - d}))
    for name, a, b in cat_cases:
        cases.append(categorical_case(name, a, b))
    for i in range(20):
        k = int(rng.integers(2, 40))
        keys = [f"k{j:02d}" for j in range(k)]
        pa = rng.dirichlet(np.ones(k))
        pb = 0.7 * pa + 0.3 * rng.dirichlet(np.ones(k))
        na = int(rng.integers(10, 100000))
        nb = int(rng.integers(10, 100000))
        ca = rng.multinomial(na, pa)
        cb = rng.multinomial(nb, pb)
        ra = {kk: int(v) for kk, v in zip(keys, ca) if v > 0}
        rb = {kk: int(v) for kk, v in zip(keys, cb) if v > 0}
        cases.append(categorical_case(f"cat_random_{i}_{k}", ra, rb))

    # Direct table of kstwo.sf (the asymptotic KS branch) over all of its regimes.
    kstwo_rows = []
    for n in [1, 2, 3, 5, 10, 50, 100, 140, 141, 200, 476, 1000, 5000, 7500, 15000, 100000, 100001, 250000, 1000000, 1500000]:
        xs = set()
        for x in [1e-4, 0.3 / n, 0.5 / n, 0.6 / n, 0.9 / n, 1.0 / n, 1.5 / n, 2.5 / n, 0.01, 0.02, 0.05, 0.1, 0.2,
                  0.3, 0.45, 0.5, 0.7, 0.9, 0.99, 1.0 - 1.0 / n, 1.0 - 0.5 / n, 1.0]:
            xs.add(float(x))
        for z in [0.2, 0.5, 0.8, 0.86, 0.9, 1.0, 1.2, 1.48, 1.6, 2.0, 2.5, 3.0, 5.0, 10.0, 19.0, 25.0]:
            xs.add(float(z / math.sqrt(n)))
        for x in sorted(xs):
            if 0 <= x <= 1:
                kstwo_rows.append({"n": n, "x": x, "sf": enc(kstwo.sf(x, n))})

    out = {
        "generator": "tests/golden/gen_golden.py",
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "bins": BINS,
        "epsilon": EPS,
        "cases": cases,
        "kstwo_sf": kstwo_rows,
    }
    with open(os.path.join(HERE, "stats_golden.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    print(f"{len(cases)} cases, {len(kstwo_rows)} kstwo rows", file=sys.stderr)


if __name__ == "__main__":
    main()
