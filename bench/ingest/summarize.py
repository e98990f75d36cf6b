"""Markdown tables from driftd-loadgen JSON reports (one per line)."""
import json
import statistics
import sys


def main(path):
    reports = [json.loads(line) for line in open(path) if line.strip()]
    base = [r for r in reports if r["label"].startswith("baseline-")]
    daemon = [r for r in reports if r["label"].startswith("driftd-")]
    print("| round | baseline values/s | driftd values/s | driftd / baseline | driftd CPU (cores) | baseline CPU (cores) | driftd ack p50 / p99 (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for b, d in zip(base, daemon):
        ratio = d["values_per_s"] / b["values_per_s"] if b["values_per_s"] else float("nan")
        ratios.append(ratio)
        print(
            f"| {b['label'].split('-')[1]} | {b['values_per_s'] / 1e6:.1f} M | {d['values_per_s'] / 1e6:.1f} M "
            f"| {ratio:.2f} | {d['daemon']['cpu_cores']:.2f} | {b['daemon']['cpu_cores']:.2f} "
            f"| {d['latency']['p50_ms']:.1f} / {d['latency']['p99_ms']:.1f} |"
        )
    if ratios:
        print(
            f"| median | {statistics.median(r['values_per_s'] for r in base) / 1e6:.1f} M "
            f"| {statistics.median(r['values_per_s'] for r in daemon) / 1e6:.1f} M "
            f"| {statistics.median(ratios):.2f} | | | |"
        )
    for r in reports:
        if r["label"].startswith("unary"):
            lat = r["latency"]
            print()
            target = r.get("target_records_per_s")
            at = f"{target:.0f} records/s" if target else "full speed"
            print(
                f"unary IngestBatch ({r['label']}) at {at} "
                f"({r['records_per_s']:.0f} achieved, {r['rows']} rows x {r['features']} features): "
                f"p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, p99.9 {lat['p999_ms']:.3f} ms, "
                f"max {lat['max_ms']:.3f} ms over {lat['count']} acknowledgements; errors {r['errors'] or 'none'}; "
                f"server CPU {r['daemon']['cpu_cores']:.2f} cores"
            )
    for r in reports:
        if r.get("errors"):
            print(f"\n{r['label']}: errors {r['errors']}")


if __name__ == "__main__":
    main(sys.argv[1])
