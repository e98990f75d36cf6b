#!/usr/bin/env python3
"""Benchmark inputs for `driftd compare` (bench/compare/run.sh).

Usage: gen_data.py OUT_DIR

Writes, with a fixed seed (the files are not committed):
    wide_ref.csv, wide_cur.csv   20 numeric columns x 100,000 rows per side;
                                 half the current columns are shifted/scaled
    tall_ref.csv, tall_cur.csv   1 numeric column x 200,000 rows per side
Values carry 8 significant digits ("%.8g"), so they read back identically
everywhere.
"""
import os
import sys

import numpy as np


def write(path, header, cols):
    data = np.column_stack(cols)
    np.savetxt(path, data, fmt="%.8g", delimiter=",", header=",".join(header), comments="")


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    names = [f"f{i:02d}" for i in range(20)]
    ref = [rng.normal(10 * i, 1 + i, 100_000) for i in range(20)]
    cur = [
        rng.normal(10 * i + (0.1 * (1 + i) if i % 2 else 0), (1 + i) * (1.05 if i % 4 == 1 else 1), 100_000)
        for i in range(20)
    ]
    write(os.path.join(out, "wide_ref.csv"), names, ref)
    write(os.path.join(out, "wide_cur.csv"), names, cur)
    write(os.path.join(out, "tall_ref.csv"), ["x"], [rng.lognormal(3, 1, 200_000)])
    write(os.path.join(out, "tall_cur.csv"), ["x"], [rng.lognormal(3.02, 1, 200_000)])


if __name__ == "__main__":
    main()
