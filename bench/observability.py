#!/usr/bin/env python3
"""Measures what trace export costs: the same fan-out scenario with tracing off and on.

Runs S2's 1,000 users on one topic at 1,000 msg/s for 5 s, alternating tracing off and on
(three runs each, a fresh 2-pod cluster per run), and prints the medians side by side. With
tracing on, the pods export to an OTLP endpoint on a closed port: every span is built, sampled
and batched as in production, but the network write fails fast, so the figure is herald's own
cost, not a collector's. Metrics are always on in both modes.
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the harness beside this file)

MODES = {
    "tracing off": {},
    "tracing on (ratio 1.0)": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_BSP_SCHEDULE_DELAY": "200"},
}
RUNS = 3
ARGS = ["--connect-rate=2000", "--payload-bytes=128", "--users=1000", "--topics=shared",
        "--rate=1000", "--duration=5s"]


def main():
    bin_dir = os.path.join(run.ROOT, "target", "release")
    log_dir = os.path.join(run.ROOT, "target", "bench")
    os.makedirs(log_dir, exist_ok=True)
    results = {mode: [] for mode in MODES}
    with open(os.path.join(log_dir, "observability.json"), "w") as raw:
        for n in range(RUNS):
            for mode, env in MODES.items():
                pids = run.start_pods(bin_dir, log_dir, f"obs-{n}", env)
                report, _ = run.bench(bin_dir, pids, f"{mode} #{n + 1}", ARGS, raw)
                results[mode].append(report)
        run.stop_pods()
    print("\n| mode | p50 ms | p99 ms | server CPU-µs per delivery | lost |")
    print("|---|---|---|---|---|")
    for mode, reports in results.items():
        p50 = statistics.median(r["latency_ms"]["p50"] for r in reports)
        p99 = statistics.median(r["latency_ms"]["p99"] for r in reports)
        cpu = statistics.median(r["server"]["cpu_us_per_delivery"] or 0 for r in reports)
        lost = sum(r["lost"] for r in reports)
        print(f"| {mode} | {p50:.2f} | {p99:.2f} | {cpu:.3f} | {lost} |")
    print(json.dumps({m: [r["label"] for r in rs] for m, rs in results.items()}))


if __name__ == "__main__":
    main()
