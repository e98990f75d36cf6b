#!/usr/bin/env bash
# Ingest side by side: the decode-only baseline and driftd (durable
# acknowledgements, default configuration, a fresh store each round), in
# interleaved rounds under the same load, then unary acknowledgement
# latency against driftd at a tenth of its unary peak. Prints a
# markdown table; the raw JSON reports go to $OUT.
#
#   CARGO_TARGET_DIR=... cargo build --release --bin driftd --bin driftd-loadgen
#   bench/ingest/run.sh
#
# Environment: BIN (directory of the two binaries), ROUNDS (3), DURATION
# (20s per round), WARMUP (5s), LOAD (loadgen flags of the throughput
# runs), UNARY_ROWS (rows per unary batch, 100), UNARY_WARMUP (150s: the
# warm-up of driftd's run at a tenth of the unary peak), UNARY_FILL (a
# span such as 1h: that run starts on a store `driftd-loadgen fill` has
# just written with that much traffic at the same rate, so both windows
# are full and the run measures true steady state; unset: a fresh store),
# OUT (JSON lines file).
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-5s}
LOAD=${LOAD:---streams 4 --stream-batches 100 --rows 1000 --features 50 --models 1}
OUT=${OUT:-$(mktemp /tmp/driftd-ingest.XXXXXX.jsonl)}
GRPC=127.0.0.1:7790
HTTP=127.0.0.1:9790
LOADGEN="$BIN/driftd-loadgen"

daemon() { # store dir
    echo env DRIFTD_STORE__PATH="$1" DRIFTD_SERVER__GRPC_ADDR=$GRPC \
        DRIFTD_SERVER__HTTP_ADDR=$HTTP DRIFTD_LOG=warn "$BIN/driftd"
}

echo "load: $LOAD; $ROUNDS rounds of $DURATION (+$WARMUP warm-up); reports in $OUT" >&2
echo "uptime before: $(uptime)" >&2
for round in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    "$LOADGEN" run --addr "http://$GRPC" $LOAD --warmup "$WARMUP" --duration "$DURATION" \
        --json --label "baseline-$round" -- "$LOADGEN" baseline --addr $GRPC >>"$OUT"
    store=$(mktemp -d /tmp/driftd-bench-store.XXXXXX)
    # shellcheck disable=SC2086,SC2046
    "$LOADGEN" run --addr "http://$GRPC" $LOAD --warmup "$WARMUP" --duration "$DURATION" \
        --ready-url "http://$HTTP/readyz" --json --label "driftd-$round" -- $(daemon "$store") >>"$OUT"
    rm -rf "$store"
done

# Unary latency at a tenth of the peak of the same request shape: 100-row
# IngestBatch calls (as a model server sends per request), first at full
# speed from 64 concurrent callers, then at a tenth of the records/s that
# reached, from 4, against the decode-only baseline and against driftd.
# (A tenth of the streaming peak above, in 1000-row batches, is as many
# batches per second as that peak: the writer's cost per batch is then the
# load, not a tenth of it.)
store=$(mktemp -d /tmp/driftd-bench-store.XXXXXX)
# shellcheck disable=SC2046
"$LOADGEN" run --addr "http://$GRPC" --mode unary --streams 64 --rows "${UNARY_ROWS:-100}" --features 50 \
    --warmup "$WARMUP" --duration "$DURATION" --ready-url "http://$HTTP/readyz" \
    --json --label "unary-peak" -- $(daemon "$store") >>"$OUT"
rm -rf "$store"
peak=$(python3 - "$OUT" <<'PY'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
print([r["records_per_s"] for r in rs if r["label"] == "unary-peak"][-1])
PY
)
rate=$(python3 -c "print(round($peak / 10))")
# The decode-only baseline under the same unary load: the latency floor of
# the client, HTTP/2 and decoding on this machine.
"$LOADGEN" run --addr "http://$GRPC" --mode unary --streams 4 --rows "${UNARY_ROWS:-100}" --features 50 \
    --rate "$rate" --warmup "$WARMUP" --duration "$DURATION" \
    --json --label "unary-10pct-baseline" -- "$LOADGEN" baseline --addr $GRPC >>"$OUT"
# driftd's latency in steady state: while a fresh daemon's windows fill
# their samples, the writer stores and rewrites closed segments many times
# as often (at 47,000 records/s: 164 stored and 384 rewritten in the first
# 10 s, 3 and ~40 per 10 s after two minutes; BENCHMARKS.md, "Unary
# latency in steady state").
store=$(mktemp -d /tmp/driftd-bench-store.XXXXXX)
if [ -n "${UNARY_FILL:-}" ]; then
    "$LOADGEN" fill --store "$store" --span "$UNARY_FILL" --rate "$rate" --rows 1000 --features 50 --models 1 >&2
fi
# shellcheck disable=SC2046
"$LOADGEN" run --addr "http://$GRPC" --mode unary --streams 4 --rows "${UNARY_ROWS:-100}" --features 50 \
    --rate "$rate" --warmup "${UNARY_WARMUP:-150s}" --duration "$DURATION" --ready-url "http://$HTTP/readyz" \
    --json --label "unary-10pct" -- $(daemon "$store") >>"$OUT"
rm -rf "$store"
echo "uptime after: $(uptime)" >&2
python3 bench/ingest/summarize.py "$OUT"
