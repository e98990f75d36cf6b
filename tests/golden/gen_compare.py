#!/usr/bin/env python3
"""Golden data generator for `driftd compare` (tests/it/compare.rs).

Writes two small CSV files and the report SciPy / NumPy compute for them;
every expected value comes from SciPy, never from driftd.  Pinned versions,
as for gen_golden.py:

    python3 -m venv /tmp/goldenvenv
    /tmp/goldenvenv/bin/pip install scipy==1.17.1 numpy==2.4.6
    /tmp/goldenvenv/bin/python tests/golden/gen_compare.py

Output (tests/golden/compare/):
    reference.csv, current.csv   the inputs (deterministic, fixed seed)
    expected.json                {"args": [...], "features": {...}} with the
                                 command-line arguments to pass and the report
                                 in driftd's JSON shape; null = not computable.

The CSV text is read back with Python's float() (correctly rounded, like
Rust's str::parse), so both sides see the same float64 values.
"""
import csv
import io
import json
import os
import re

import numpy as np
import scipy
from scipy import stats
from scipy.spatial.distance import jensenshannon

assert scipy.__version__ == "1.17.1", scipy.__version__
assert np.__version__.startswith("2."), np.__version__

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare")
BINS = 8
EPS = 1e-3
MIN_SAMPLES = 500
PSI_THRESHOLD = 0.2
ALPHA = 0.01
FORCED = ["code"]
PLAIN = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

rng = np.random.default_rng(20240611)


def maybe_missing(values, share):
    return ["" if rng.random() < share else v for v in values]


def num_text(x, decimals):
    return repr(round(float(x), decimals))


def make_side(n, shift, cat_p, extra_cat):
    cols = {}
    cols["age"] = maybe_missing([num_text(v, 2) for v in rng.normal(40 + shift, 10, n)], 0.03)
    cols["income"] = maybe_missing([num_text(v, 1) for v in rng.lognormal(10, 0.5, n)], 0.0)
    cats = ["red", "green", "blue", "with, comma", 'quote "q"']
    if extra_cat:
        cats = cats + ["violet"]
    p = np.array(cat_p[: len(cats)], dtype=float)
    cols["colour"] = maybe_missing(list(rng.choice(cats, n, p=p / p.sum())), 0.05)
    cols["code"] = [str(v) for v in rng.integers(1, 6, n)]
    small = [num_text(v, 3) for v in rng.normal(shift, 1, 15)]
    cols["small"] = small + [""] * (n - len(small))
    cols["flag"] = [str(v) for v in rng.choice(["1", "0", "nan"], n, p=[0.45, 0.45, 0.1])]
    return cols


ref = make_side(800, 0.0, [5, 3, 2, 1, 1], False)
cur = make_side(900, 3.0, [4, 3, 2, 1, 1, 1], True)
# Every spelling the numeric pattern admits, in a numeric column.
for i, text in enumerate(["4.2e1", ".5e2", "39.", "+41", "-3.5E+1", "0038.25", "4e+01"]):
    ref["age"][i] = text
assert all(PLAIN.fullmatch(t) for t in ref["age"] + cur["age"] if t)


def write_csv(path, cols, order):
    rows = zip(*(cols[c] for c in order))
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(order)
        w.writerows(rows)


REF_ORDER = ["age", "colour", "income", "code", "small", "flag"]
# The current file orders columns differently and has an extra one.
CUR_ORDER = ["flag", "small", "code", "extra", "income", "colour", "age"]
cur["extra"] = ["x"] * 900
os.makedirs(OUT, exist_ok=True)
write_csv(os.path.join(OUT, "reference.csv"), ref, REF_ORDER)
write_csv(os.path.join(OUT, "current.csv"), cur, CUR_ORDER)


def read_back(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    return {name: [r[i] for r in body] for i, name in enumerate(header)}


R = read_back(os.path.join(OUT, "reference.csv"))
C = read_back(os.path.join(OUT, "current.csv"))


def f(x):
    x = float(x)
    return None if np.isnan(x) else x


def binned(rc, cc):
    p, q = rc / rc.sum(), cc / cc.sum()
    pe, qe = np.where(p == 0, EPS, p), np.where(q == 0, EPS, q)
    return {
        "psi": f(np.sum((qe - pe) * np.log(qe / pe))),
        "js": f(jensenshannon(p, q, base=2)),
        "hellinger": f(np.sqrt(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)) / np.sqrt(2.0)),
    }


def numeric(rt, ct):
    r = np.sort(np.array([float(t) for t in rt if t], dtype=np.float64))
    c = np.sort(np.array([float(t) for t in ct if t], dtype=np.float64))
    q = np.array([float(i) / float(BINS) for i in range(1, BINS)])
    edges = np.unique(np.quantile(r, q))
    rc = np.bincount(np.searchsorted(edges, r, side="left"), minlength=len(edges) + 1)
    cc = np.bincount(np.searchsorted(edges, c, side="left"), minlength=len(edges) + 1)
    ks = stats.ks_2samp(r, c, alternative="two-sided", method="auto")
    assert max(len(r), len(c)) <= 10000  # SciPy's exact branch
    w = stats.wasserstein_distance(r, c)
    cvm = stats.cramervonmises_2samp(r, c, method="auto")
    out = {
        "n_ref": len(r), "n_cur": len(c),
        "n_missing_ref": len(rt) - len(r), "n_missing_cur": len(ct) - len(c),
        "kind": "numeric",
        "ks": {"statistic": f(ks.statistic), "pvalue": f(ks.pvalue), "method": "exact"},
        "wasserstein": f(w),
        "wasserstein_norm": f(w / np.std(r, ddof=1)),
        "cvm": {"statistic": f(cvm.statistic), "pvalue": f(cvm.pvalue)},
    }
    out.update(binned(rc, cc))
    return out, out["ks"]["pvalue"]


def categorical(rt, ct):
    rv, cv = [t for t in rt if t], [t for t in ct if t]
    # Python sorts str by code point, which is UTF-8 byte order.
    cats = sorted(set(rv) | set(cv))
    rc = np.array([rv.count(k) for k in cats])
    cc = np.array([cv.count(k) for k in cats])
    chi2 = stats.chi2_contingency(np.array([rc, cc]), correction=False)
    out = {
        "n_ref": len(rv), "n_cur": len(cv),
        "n_missing_ref": len(rt) - len(rv), "n_missing_cur": len(ct) - len(cv),
        "kind": "categorical",
        "chi2": {"statistic": f(chi2.statistic), "pvalue": f(chi2.pvalue), "dof": int(chi2.dof)},
    }
    out.update(binned(rc, cc))
    return out, out["chi2"]["pvalue"]


features, pvalues = {}, {}
for name in REF_ORDER:
    rt, ct = R[name], C[name]
    is_num = name not in FORCED and all(PLAIN.fullmatch(t) for t in rt + ct if t)
    features[name], pvalues[name] = (numeric if is_num else categorical)(rt, ct)

k = sum(p is not None for p in pvalues.values())
for name, feat in features.items():
    if feat["n_ref"] < MIN_SAMPLES or feat["n_cur"] < MIN_SAMPLES:
        verdict = "insufficient_data"
    elif (feat["psi"] is not None and feat["psi"] > PSI_THRESHOLD) or (
        pvalues[name] is not None and pvalues[name] < ALPHA / k
    ):
        verdict = "drift"
    else:
        verdict = "ok"
    feat["verdict"] = verdict

args = ["--bins", str(BINS), "--epsilon", repr(EPS)]
for c in FORCED:
    args += ["--categorical", c]
with open(os.path.join(OUT, "expected.json"), "w") as fh:
    json.dump({"args": args, "features": features}, fh, indent=1)
    fh.write("\n")
print({n: (f_["kind"], f_["verdict"]) for n, f_ in features.items()})
