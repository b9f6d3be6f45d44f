#!/usr/bin/env python3
"""Presence churn: 1,000 joins and leaves a second across 3 pods, beside a
steady load, with presence on and off, in one sitting.

Starts three `herald serve` processes on 127.0.0.1-3 (the harness of
bench/run.py: its ports and its cleanup by PID). In each run herald-bench
holds 300 users on one topic at 200 msg/s (spread over the pods, publishing
on the first) while `--churn` opens 1,000 connections a second, spread over
the pods, each subscribing to `room:churn` and closing again. Variants: pods
with `--presence-topics=room:*` (every churn connection is an entry, a join
and a leave on every pod) and without. Reported, medians of `--repeats`
runs: the churn cycles done per second, each pod's CPU microseconds per
cycle, the presence cost per join (on minus off), and the steady users'
p50/p99 delivery latency. Writes bench/results/<UTC date>-churn-<commit>.md.
Python 3 standard library only; `make bench-churn` builds the binaries first.
"""

import argparse
import os
import statistics
import sys

import run as harness

VARIANTS = [("presence off", ()), ("presence on", ("--presence-topics=room:*",))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default=os.path.join(harness.ROOT, "target", "release"))
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "bench", "results"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--churn", type=float, default=1000.0, help="joins and leaves a second")
    parser.add_argument("--duration", default="10s")
    args = parser.parse_args()
    sitting = harness.Sitting(args.out, "churn")
    harness.IPS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]

    commit, now, stem = sitting.commit, sitting.now, sitting.stem
    log_dir, raw = sitting.log_dir, sitting.raw
    flags = ["--users=300", "--topics=shared", "--rate=200", "--payload-bytes=128",
             "--connect-rate=2000", f"--duration={args.duration}", f"--churn={args.churn:g}",
             "--churn-topic=room:churn"]
    results = {}
    command = ""
    for name, pod_flags in VARIANTS:
        pids = harness.start_pods(args.bin_dir, log_dir, name.replace(" ", "-"), flags=pod_flags)
        runs = []
        for n in range(args.repeats):
            r, command = harness.bench(args.bin_dir, pids, f"{name} #{n + 1}", flags, raw)
            churn = r["churn"]
            seconds = max(r["publish_seconds"], 1e-9)
            cycles = max(churn["cycles"], 1)
            runs.append({
                "cycles_per_sec": churn["cycles"] / seconds,
                "failed": churn["failed"] + churn["skipped"],
                "cpu_us": [c * 1e6 / cycles for c in r["server"]["cpu_seconds_each"]],
                "p50": r["latency_ms"]["p50"],
                "p99": r["latency_ms"]["p99"],
                "lost": r["lost"],
            })
        harness.stop_pods()
        results[name] = {
            "cycles_per_sec": statistics.median(x["cycles_per_sec"] for x in runs),
            "failed": statistics.median(x["failed"] for x in runs),
            "cpu_us": [statistics.median(x["cpu_us"][i] for x in runs) for i in range(3)],
            "p50": statistics.median(x["p50"] for x in runs),
            "p99": statistics.median(x["p99"] for x in runs),
            "p99_runs": [x["p99"] for x in runs],
            "lost": statistics.median(x["lost"] for x in runs),
        }

    off, on = results["presence off"], results["presence on"]
    md = [f"# Presence churn, {now:%Y-%m-%d %H:%M} UTC, commit {commit}\n",
          f"- Machine: {harness.machine()}; the load generator and the three pods share the cores.",
          f"- `{command}` against 3 pods (127.0.0.1-3, static discovery), "
          f"{args.repeats} runs per variant, medians; CPU per cycle is each pod's CPU over the "
          "publish window divided by the churn cycles (one join and one leave each) done in it, "
          "so it includes the steady load's share.",
          "",
          "| variant | cycles/s | failed or skipped | pod 1 µs/cycle | pod 2 µs/cycle | "
          "pod 3 µs/cycle | steady p50 ms | steady p99 ms (runs) | lost |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in results.items():
        runs = ", ".join(f"{p:.1f}" for p in m["p99_runs"])
        md.append(f"| {name} | {m['cycles_per_sec']:.0f} | {m['failed']:.0f} | "
                  + " | ".join(f"{c:.1f}" for c in m["cpu_us"])
                  + f" | {m['p50']:.2f} | {m['p99']:.2f} ({runs}) | {m['lost']:.0f} |")
    md.append("")
    md.append("Presence's cost per join and leave, on minus off: "
              + ", ".join(f"pod {i + 1} {on['cpu_us'][i] - off['cpu_us'][i]:.1f} µs"
                          for i in range(3)) + ".")
    harness.write_report(args.out, stem, md, show=True)


if __name__ == "__main__":
    sys.exit(main())
