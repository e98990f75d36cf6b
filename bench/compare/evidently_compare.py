#!/usr/bin/env python3
"""Evidently's DataDriftPreset on the same files (bench/compare/run.sh).

Usage: evidently_compare.py REF.csv CUR.csv

Reads both files with pandas.read_csv, runs Evidently's default data-drift
preset (its own per-column test choice: KS / chi-square below 1000 rows,
Wasserstein / Jensen-Shannon above) and prints the result as JSON.
Tested with evidently 0.7.23 and pandas 2.3 (evidently does not import
with pandas 3).
"""
import json
import sys

import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset


def main():
    ref, cur = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2])
    result = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    json.dump(result.dict(), sys.stdout, default=str)


if __name__ == "__main__":
    main()
