#!/usr/bin/env bash
# Memory and start-up on a full store, as BENCHMARKS.md's targets put them:
# a store written by `driftd-loadgen fill` with SPAN (1h) of the sizing
# load (10 models x 50 features at 20,000 records/s, the default windows
# 5m and 1h), then a daemon started on it under that load for DURATION.
# Each run fills its own store just before (the fill ends at the present,
# so both windows are full when the daemon starts). Prints, per run, the
# time to /readyz, resident memory over the run (sampled every second) and
# the high-water mark (VmHWM: the start-up's peak included); the raw JSON
# reports go to $OUT.
#
#   CARGO_TARGET_DIR=... cargo build --release --bin driftd --bin driftd-loadgen
#   bench/memory/run.sh
#
# Environment: BIN (directory of the two binaries), RUNS (2), SPAN (1h),
# DURATION (180s), RATE (20000), OUT (JSON lines file).
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
RUNS=${RUNS:-2}
SPAN=${SPAN:-1h}
DURATION=${DURATION:-180s}
RATE=${RATE:-20000}
OUT=${OUT:-$(mktemp /tmp/driftd-memory.XXXXXX.jsonl)}
GRPC=127.0.0.1:7790
HTTP=127.0.0.1:9790
LOADGEN="$BIN/driftd-loadgen"

echo "$RUNS runs of $DURATION on a store filled with $SPAN at $RATE records/s; reports in $OUT" >&2
echo "uptime before: $(uptime)" >&2
for run in $(seq "$RUNS"); do
    store=$(mktemp -d /tmp/driftd-full-store.XXXXXX)
    "$LOADGEN" fill --store "$store" --span "$SPAN" --rate "$RATE" --rows 1000 --features 50 --models 10 >&2
    echo "store: $(du -sm "$store" | cut -f1) MB" >&2
    "$LOADGEN" run --addr "http://$GRPC" --ready-url "http://$HTTP/readyz" \
        --mode stream --streams 4 --stream-batches 50 --rows 100 --features 50 --models 10 \
        --rate "$RATE" --warmup 0s --duration "$DURATION" --report-every 10s \
        --json --label "full-store-$run" \
        -- env DRIFTD_SERVER__GRPC_ADDR=$GRPC DRIFTD_SERVER__HTTP_ADDR=$HTTP \
        DRIFTD_STORE__PATH="$store" DRIFTD_LOG=warn "$BIN/driftd" >>"$OUT"
    rm -rf "$store"
done
echo "uptime after: $(uptime)" >&2
python3 - "$OUT" <<'PY'
import json, sys
print("| run | ready after | RSS at ready | RSS min / max over the run | peak (VmHWM) | records/s | errors |")
print("|---|---:|---:|---:|---:|---:|---|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    d = r["daemon"]
    print(
        f"| {r['label']} | {r['ready_ms'] / 1000:.2f} s | {d['rss_mib_start']:.1f} MiB "
        f"| {d['rss_mib_min']:.1f} / {d['rss_mib_max']:.1f} MiB | {d['rss_mib_peak']:.1f} MiB "
        f"| {r['records_per_s']:.0f} | {r['errors'] or 'none'} |"
    )
PY
