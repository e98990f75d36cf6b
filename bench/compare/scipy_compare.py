#!/usr/bin/env python3
"""What `driftd compare` computes, done with pandas + SciPy (the baseline of
bench/compare/run.sh).

Usage: scipy_compare.py REF.csv CUR.csv

Reads both files with pandas.read_csv and, for every reference column,
computes what driftd reports: numeric columns get ks_2samp, PSI over NumPy
quantile edges (10 bins, epsilon 1e-4), jensenshannon, wasserstein_distance
(and normalised), Hellinger and cramervonmises_2samp; other columns get
chi2_contingency, PSI, Jensen-Shannon and Hellinger over the categories.
Prints a JSON report to stdout.
"""
import json
import sys

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

BINS, EPS = 10, 1e-4


def binned(rc, cc):
    p, q = rc / rc.sum(), cc / cc.sum()
    pe, qe = np.where(p == 0, EPS, p), np.where(q == 0, EPS, q)
    return {
        "psi": float(np.sum((qe - pe) * np.log(qe / pe))),
        "js": float(jensenshannon(p, q, base=2)),
        "hellinger": float(np.sqrt(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)) / np.sqrt(2)),
    }


def numeric(r, c):
    r, c = np.sort(r[np.isfinite(r)]), np.sort(c[np.isfinite(c)])
    edges = np.unique(np.quantile(r, np.arange(1, BINS) / BINS))
    rc = np.bincount(np.searchsorted(edges, r), minlength=len(edges) + 1)
    cc = np.bincount(np.searchsorted(edges, c), minlength=len(edges) + 1)
    ks = stats.ks_2samp(r, c)
    w = stats.wasserstein_distance(r, c)
    cvm = stats.cramervonmises_2samp(r, c)
    out = {
        "ks": {"statistic": float(ks.statistic), "pvalue": float(ks.pvalue)},
        "wasserstein": float(w),
        "wasserstein_norm": float(w / np.std(r, ddof=1)),
        "cvm": {"statistic": float(cvm.statistic), "pvalue": float(cvm.pvalue)},
    }
    out.update(binned(rc, cc))
    return out


def categorical(r, c):
    r, c = r.dropna().astype(str), c.dropna().astype(str)
    cats = sorted(set(r.unique()) | set(c.unique()))
    rc = r.value_counts().reindex(cats, fill_value=0).to_numpy()
    cc = c.value_counts().reindex(cats, fill_value=0).to_numpy()
    chi2 = stats.chi2_contingency(np.array([rc, cc]), correction=False)
    out = {"chi2": {"statistic": float(chi2.statistic), "pvalue": float(chi2.pvalue)}}
    out.update(binned(rc, cc))
    return out


def main():
    ref, cur = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2])
    features = {}
    for name in ref.columns:
        r, c = ref[name], cur[name]
        if pd.api.types.is_numeric_dtype(r) and pd.api.types.is_numeric_dtype(c):
            features[name] = numeric(r.to_numpy(float), c.to_numpy(float))
        else:
            features[name] = categorical(r, c)
    json.dump({"features": features}, sys.stdout)


if __name__ == "__main__":
    main()
