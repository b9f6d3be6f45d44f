#!/usr/bin/env python3
"""What a publish costs against the number of pods: 2, 4, 8 and 16 pods.

Starts N `herald serve` processes with static discovery on 127.0.0.1 to
127.0.0.N (the harness of bench/run.py, its ports and its cleanup by PID),
and runs three load shapes with herald-bench, publishing on the first pod:

- (a) `everywhere`: one topic, its users spread over every pod;
- (b) `one pod`: one topic, all its users on the last pod;
- (c) `user topics`: 10,000 users, one `user:`-like topic each, spread over
  every pod, messages round robin over the topics.

Each shape runs once unmeasured first, on the same pods and topics: it
creates the topics (a topic's first message goes to every pod, so that
every pod knows who numbers it; in (c) each topic gets about one message a
run, so without it every message measured would be a first one). Every pod count runs under each
`--routing` (`--peer-routing interest`, the default, and `all`, every
message to every pod), in one sitting.

For each: the CPU microseconds of the origin pod and of all pods together
per message published (herald-bench samples /proc/PID/stat over the publish
window), the peer-wire bytes all pods
sent per message (`herald_peer_bytes_sent_total`), deliveries per second,
and the p99 delivery latency; medians of `--repeats` runs. Writes
bench/results/<UTC date>-scale-<short commit>.md (and the raw JSON lines
beside it). Python 3 standard library only; `make bench-scale` builds the
binaries first.
"""

import argparse
import os
import statistics
import sys
import time

import run as harness

POD_COUNTS = [2, 4, 8, 16]


def peer_bytes(ips):
    """herald_peer_bytes_sent_total summed over the pods on `ips`."""
    total = 0.0
    for ip in ips:
        total += harness.metrics(ip).get("herald_peer_bytes_sent_total", 0.0)
    return total


def cpu_seconds(pids):
    """User and system CPU seconds the processes `pids` used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def idle_cpu(pids, seconds):
    """CPU seconds a second the pods use with no load: keepalives, sweeps."""
    before = cpu_seconds(pids)
    time.sleep(seconds)
    return (cpu_seconds(pids) - before) / seconds


def shapes(ips, quick):
    """The three load shapes on the pods at `ips`: (label, herald-bench's
    target flags, its other flags)."""
    ws = lambda hosts: "--ws=" + ",".join(f"ws://{ip}:{harness.HTTP_PORT}/ws" for ip in hosts)
    duration = "3s" if quick else "5s"
    users = 1000 if quick else 10000
    common = ["--connect-rate=2000", "--payload-bytes=128", f"--duration={duration}"]
    # The same topics in the warm-up and the measured runs of a shape.
    prefix = lambda shape: f"--topic-prefix=scale.{shape}"
    grpc = f"--grpc=http://{ips[0]}:{harness.GRPC_PORT}"
    return [
        ("(a) everywhere", [ws(ips), grpc],
         ["--users=100", "--topics=shared", "--rate=500", *common, prefix("a")]),
        ("(b) one pod", [ws(ips[-1:]), grpc],
         ["--users=100", "--topics=shared", "--rate=500", *common, prefix("b")]),
        ("(c) user topics", [ws(ips), grpc],
         [f"--users={users}", "--topics=per-user", "--rate=2000", *common, prefix("c")]),
    ]


def measure(args, log_dir, raw, count, routing):
    """Every shape on `count` fresh pods routing by `routing`; {label: [row
    values]} of medians."""
    ips = [f"127.0.0.{n}" for n in range(1, count + 1)]
    harness.IPS = ips
    pids = harness.start_pods(args.bin_dir, log_dir, f"scale{count}-{routing}",
                              flags=[f"--peer-routing={routing}"])
    out = {}
    # What the pods cost doing nothing, per second: the same in every shape.
    idle = idle_cpu(pids, 10)
    for label, target, flags in shapes(ips, args.quick):
        harness.bench(args.bin_dir, pids, f"{count} pods {label} {routing} warm-up",
                      flags, raw, target=target)
        runs = []
        for n in range(args.repeats):
            before = peer_bytes(ips)
            r, command = harness.bench(args.bin_dir, pids,
                                       f"{count} pods {label} {routing} #{n + 1}",
                                       flags, raw, target=target)
            published = max(r["published"], 1)
            server = r["server"]
            busy = server["cpu_seconds"] - idle * r["publish_seconds"]
            runs.append({
                "origin_us": server["cpu_seconds_each"][0] * 1e6 / published,
                "all_us": server["cpu_seconds"] * 1e6 / published,
                "busy_us": busy * 1e6 / published,
                "bytes": (peer_bytes(ips) - before) / published,
                "deliveries": r["deliveries_per_sec"],
                "p99": r["latency_ms"]["p99"],
                "lost": r["lost"],
            })
        out[label] = ({k: statistics.median(run[k] for run in runs) for k in runs[0]}, command)
    harness.stop_pods()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default=os.path.join(harness.ROOT, "target", "release"))
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "bench", "results"))
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer users")
    parser.add_argument("--repeats", type=int, default=3, help="runs per shape and pod count")
    parser.add_argument("--pods", default=",".join(map(str, POD_COUNTS)),
                        help="the pod counts, comma-separated")
    parser.add_argument("--routing", default="interest,all",
                        help="the --peer-routing modes, comma-separated")
    args = parser.parse_args()
    sitting = harness.Sitting(args.out, "scale")

    commit, now, stem = sitting.commit, sitting.now, sitting.stem
    log_dir, raw = sitting.log_dir, sitting.raw
    counts = [int(c) for c in args.pods.split(",")]
    routings = args.routing.split(",")
    results = {(routing, count): measure(args, log_dir, raw, count, routing)
               for routing in routings for count in counts}

    md = [f"# Cost against pod count, {now:%Y-%m-%d %H:%M} UTC, commit {commit}\n",
          f"- Machine: {harness.machine()}; the load generator and every pod share the cores.",
          f"- Pods on 127.0.0.1-N with static discovery, publishing on the first; medians of "
          f"{args.repeats} runs per cell, one sitting.",
          "- origin / all: CPU microseconds per message published, on the first pod / summed "
          "over every pod; less idle: the same, less what the pods use doing nothing (measured "
          "for 10 s before the shapes) over the publish window; bytes: peer-wire bytes all pods "
          "sent per message published.",
          ""]
    for label, (_, command) in results[(routings[0], counts[0])].items():
        md.append(f"## {label}\n")
        md.append(f"`{command}`, users on {'the last pod' if 'one pod' in label else 'every pod'}\n")
        md.append("| routing | pods | origin µs/msg | all pods µs/msg | all pods less idle "
                  "µs/msg | peer bytes/msg | deliveries/s | p99 ms | lost |")
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for routing in routings:
            for count in counts:
                m, _ = results[(routing, count)][label]
                md.append(f"| {routing} | {count} | {m['origin_us']:.1f} | {m['all_us']:.1f} | "
                          f"{m['busy_us']:.1f} | "
                          f"{m['bytes']:.0f} | {m['deliveries']:.0f} | {m['p99']:.2f} | "
                          f"{m['lost']:.0f} |")
        md.append("")
    harness.write_report(args.out, stem, md, show=True)


if __name__ == "__main__":
    sys.exit(main())
