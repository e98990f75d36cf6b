#!/usr/bin/env bash
# Times `driftd compare` against pandas+SciPy (scipy_compare.py) and
# Evidently's DataDriftPreset (evidently_compare.py) on the inputs of
# gen_data.py, whole processes side by side, with hyperfine.
#
# Usage: bench/compare/run.sh [RESULTS.md]
# Environment:
#   PYTHON   interpreter with numpy, scipy, pandas<3 and evidently
#            (default /tmp/benchvenv/bin/python)
#   DRIFTD   driftd binary to time; when unset, `cargo build --release
#            --bin driftd` is run and target/release/driftd is used
#   RUNS     timed runs per command (default 5; hyperfine reports the median)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-/tmp/benchvenv/bin/python}"
runs="${RUNS:-5}"
out="${1:-/dev/stdout}"

if [[ -z "${DRIFTD:-}" ]]; then
    (cd "$root" && cargo build --release --bin driftd)
    DRIFTD="$root/target/release/driftd"
fi
command -v hyperfine >/dev/null || { echo "hyperfine is required (apt-get install -y hyperfine)" >&2; exit 1; }

data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT
"$python" "$here/gen_data.py" "$data"

{
    echo "machine: $(nproc) cores, $(uname -sr); $("$DRIFTD" --version)"
    "$python" -c 'import numpy, scipy, pandas, evidently; print(f"numpy {numpy.__version__}, scipy {scipy.__version__}, pandas {pandas.__version__}, evidently {evidently.__version__}")'
} >&2

for set in wide tall; do
    ref="$data/${set}_ref.csv"
    cur="$data/${set}_cur.csv"
    echo "### $set ($(head -1 "$ref" | tr ',' '\n' | wc -l) columns x $(($(wc -l <"$ref") - 1)) rows per side)" >>"$out"
    echo >>"$out"
    hyperfine --style basic --runs "$runs" --warmup 1 \
        --export-markdown "$data/$set.md" \
        -n "driftd compare" "$DRIFTD compare --reference $ref --current $cur --format json > /dev/null" \
        -n "pandas+SciPy" "$python $here/scipy_compare.py $ref $cur > /dev/null" \
        -n "Evidently" "$python $here/evidently_compare.py $ref $cur > /dev/null" >&2
    cat "$data/$set.md" >>"$out"
    echo >>"$out"
done
