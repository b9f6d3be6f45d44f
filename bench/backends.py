#!/usr/bin/env python3
"""Broadcast backends side by side, in one sitting: S1, S2 and S4 on
herald's mesh, on herald with its Redis backend, and on Socket.IO with its
Redis adapter (the reference: what users would otherwise deploy, on the same
redis-server), then scenario R (rolling restart) on the mesh and on Redis.

The servers are started by bench/run.py's harness (its ports, its cleanup by
PID): 2 herald pods with static discovery; 2 herald pods with
`--broadcast=redis` on one redis-server; 2 Socket.IO nodes
(bench/socketio/server.js) sharing one redis-server through
@socket.io/redis-adapter. Every scenario runs on the three servers in turn
(fresh processes, and a fresh redis-server, before each), so the machine's
noise falls on all of them alike. S1 and S4 run `--repeats` times, S2 as many
times per step, on one ladder of rates for all three (it stops after a step
with no clean run). R is benches/resume.rs (`cargo bench --bench resume`,
then with `-- redis`), built before the first scenario and run as that
executable, so nothing is compiled during the sitting. Writes bench/results/<UTC date>-redis-<commit>.md and
the raw JSON lines beside it. Python 3 standard library only; `make
bench-redis` builds and installs everything first.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

import run as harness

# The servers measured, in the report's column order.
SERVERS = ["herald", "herald-redis", "socketio-redis"]
COLUMNS = {"herald": "herald, mesh", "herald-redis": "herald on Redis",
           "socketio-redis": "Socket.IO + Redis adapter"}
# One ladder for every server: Socket.IO's clean rate is expected near its
# bottom (50 msg/s in the issue), herald's near its top.
S2_STEPS = [50, 100, 200, 500, 1000, 2000, 4000, 8000]
COMMON = ["--connect-rate=2000", "--payload-bytes=128"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default=os.path.join(harness.ROOT, "target", "release"))
    parser.add_argument("--out", default=os.path.join(harness.ROOT, "bench", "results"))
    parser.add_argument("--redis-server", default=harness.REDIS_SERVER)
    parser.add_argument("--node", default="node")
    parser.add_argument("--cargo", default=os.environ.get("CARGO", "cargo"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="1 run of 3 s per case, S2 runs of 2 s, to try the harness")
    parser.add_argument("--skip-resume", action="store_true", help="no scenario R")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    secs, s2_secs = ("3s", "2s") if args.quick else ("10s", "5s")
    resume_bin = None if args.skip_resume else build_resume(args.cargo)
    sitting = harness.Sitting(args.out, "redis")
    log_dir, raw = sitting.log_dir, sitting.raw
    dirty = bool(harness.git("status", "--porcelain", "--untracked-files=no", "--", "src",
                             "benches", "bench", "Cargo.toml", "Cargo.lock"))
    names = {server: harness.server_name(server, args) for server in SERVERS}

    def runs(server, label, extra, times):
        pids = harness.start_server(server, args, log_dir, f"b-{label.lower()}-{server}")
        return [harness.bench(args.bin_dir, pids, f"{label} {server} #{n + 1}", extra, raw,
                              server)[0] for n in range(times)]

    s1_flags = COMMON + ["--users=1000", "--topics=shared", "--rate=200", f"--duration={secs}"]
    s4_flags = COMMON + ["--users=5000", "--topics=per-user", "--rate=2000",
                         f"--duration={secs}"]
    s1 = {server: runs(server, "S1", s1_flags, repeats) for server in SERVERS}
    s2 = {}
    for server in SERVERS:
        pids = harness.start_server(server, args, log_dir, f"b-s2-{server}")
        s2[server] = []
        for rate in S2_STEPS:
            flags = COMMON + ["--users=1000", "--topics=shared", f"--rate={rate}",
                              f"--duration={s2_secs}"]
            step = [harness.bench(args.bin_dir, pids, f"S2 {server} {rate}/s #{n + 1}", flags,
                                  raw, server)[0] for n in range(repeats)]
            s2[server].append((rate, step))
            if not any(harness.clean(r) for r in step):
                break
    s4 = {server: runs(server, "S4", s4_flags, repeats) for server in SERVERS}
    harness.stop_pods()

    resume = {}
    if not args.skip_resume:
        for backend in ("mesh", "redis"):
            cmd = [resume_bin, "--bench"] + (["redis"] if backend == "redis" else [])
            print(f"\n== R on {backend}: {shlex.join(cmd)}", flush=True)
            env = {**os.environ, "REDIS_SERVER": args.redis_server}
            out = subprocess.run(cmd, cwd=harness.ROOT, stdout=subprocess.PIPE, text=True,
                                 check=True, env=env).stdout
            print(out, flush=True)
            resume[backend] = table_rows(out)

    md = [f"# Broadcast backends: mesh, Redis, and Socket.IO with its Redis adapter, "
          f"{sitting.now:%Y-%m-%d %H:%M} UTC, commit {sitting.commit}"
          f"{' (with uncommitted changes)' if dirty else ''}\n",
          f"- Machine: {harness.machine()}; the load generator shares the cores with the "
          "servers (and with Redis).",
          *[f"- {names[server]}: {harness.CLUSTERS[server]}" for server in SERVERS],
          f"- Mode: {'quick (1 run of 3 s per case; not comparable)' if args.quick else 'full'}"
          f"; medians of {repeats} run{'s' if repeats > 1 else ''}; each scenario on the three "
          "servers in turn, fresh processes and a fresh redis-server before each; produced by "
          "`make bench-redis` (`bench/backends.py`).\n",
          "## Side by side\n",
          "Latencies in ms from the publish call to the delivery parsed by the user; CPU-µs "
          "per delivery counts every server process of the column (both pods or nodes, and "
          "redis-server), with Redis's share of that CPU in brackets.\n",
          f"| scenario | {' | '.join(COLUMNS[s] for s in SERVERS)} |",
          f"|---|{'---|' * len(SERVERS)}"]
    md.append(f"| S1: 200 msg/s to 1,000 users on one topic, {secs} | "
              f"{' | '.join(cell(s1[s]) for s in SERVERS)} |")
    md.append(f"| S2: highest clean rate (all {repeats} runs: no loss, p99 < 100 ms) | "
              f"{' | '.join(best(s2[s]) for s in SERVERS)} |")
    for rate in S2_STEPS:
        steps = [dict(s2[s]).get(rate) for s in SERVERS]
        if any(steps):
            md.append(f"| S2 at {rate:,} msg/s ({rate * 1000:,} deliveries/s), {s2_secs} | "
                      f"{' | '.join(cell(r) if r else 'not run' for r in steps)} |")
    md.append(f"| S4: 5,000 users on own topics, 2,000 msg/s round robin, {secs} | "
              f"{' | '.join(cell(s4[s]) for s in SERVERS)} |\n")
    if resume:
        md.append("## Scenario R: rolling restart of 3 pods, 3,000 resuming users, 200 msg/s\n")
        md.append("benches/resume.rs on the mesh and on Redis (Socket.IO has no resume to "
                  "measure). One run each.\n")
        md.append("| measure | herald, mesh | herald on Redis |")
        md.append("|---|---|---|")
        for measure, value in resume["mesh"].items():
            md.append(f"| {measure} | {value} | {resume['redis'].get(measure, '')} |")
        md.append("")
    md.append("## Every run\n")
    md.append("| run | publish msg/s | deliveries/s | received/expected | dup | p50 | p90 | "
              "p99 | p99.9 | max | server CPU s | CPU-µs/deliv | bench CPU s | wake-up p99 |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for group in (s1, s2, s4):
        for server in SERVERS:
            reports = group[server]
            if group is s2:
                reports = [r for _, step in reports for r in step]
            for r in reports:
                mark = "" if group is not s2 or harness.clean(r) else " ✗"
                md.append(harness.row(r["label"] + mark, r))
    md.append("\n## Commands\n")
    for server in SERVERS:
        md.append(f"- {names[server]}: {harness.server_commands(server)}; herald-bench with "
                  f"`{' '.join(harness.target_args(server))} --pids=<the server's processes> "
                  "--json=-`.")
    md.append("\n```sh")
    md.append(f"herald-bench {shlex.join(s1_flags)}   # S1, x{repeats}")
    md.append(f"herald-bench {shlex.join(COMMON)} --users=1000 --topics=shared --rate=RATE "
              f"--duration={s2_secs}   # S2, x{repeats} per step of {S2_STEPS}")
    md.append(f"herald-bench {shlex.join(s4_flags)}   # S4, x{repeats}")
    if resume:
        md.append("cargo bench --bench resume            # R on the mesh")
        md.append("cargo bench --bench resume -- redis   # R on Redis")
    md.append("```")
    harness.write_report(args.out, sitting.stem, md, show=True)


def build_resume(cargo):
    """Builds benches/resume.rs (if it is not fresh) and returns its
    executable."""
    out = subprocess.run([cargo, "bench", "--bench", "resume", "--no-run",
                          "--message-format=json"], cwd=harness.ROOT, stdout=subprocess.PIPE,
                         text=True, check=True).stdout
    for line in out.splitlines():
        message = json.loads(line)
        if (message.get("reason") == "compiler-artifact" and message.get("executable")
                and message["target"]["name"] == "resume"):
            return message["executable"]
    raise SystemExit("cargo built no resume bench")


def cell(reports):
    """One side-by-side cell: medians over `reports`."""
    redis = ""
    if len(reports[0]["server"]["pids"]) > 2:
        # A Redis-backed cluster: its redis-server is the first PID.
        share = harness.median(reports, lambda r: r["server"]["cpu_seconds_each"][0]
                               / max(r["server"]["cpu_seconds"], 1e-9))
        redis = f" ({share:.0%} Redis)"
    return (f"{harness.median(reports, lambda r: r['deliveries_per_sec']):,.0f} deliveries/s, "
            f"lost {sum(r['lost'] for r in reports):,}, p50 {harness.median(reports, harness.p50):.2f}"
            f", p99 {harness.median(reports, harness.p99):.2f} ms, "
            f"{harness.median(reports, lambda r: r['server']['cpu_us_per_delivery'] or 0):.2f} "
            f"CPU-µs/deliv{redis}")


def best(steps):
    """The highest S2 rate clean in every run, with that step's p99."""
    clean = [(rate, runs) for rate, runs in steps if all(harness.clean(r) for r in runs)]
    if not clean:
        return f"none (from {steps[0][0]} msg/s)"
    rate, runs = clean[-1]
    return f"**{rate:,} msg/s** (median p99 {harness.median(runs, harness.p99):.1f} ms)"


def table_rows(markdown):
    """The `| measure | value |` rows of a benches/resume.rs report; a
    drain row's user count moves from its name to its value so the two
    backends' rows line up."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("measure", "---"):
            continue
        measure, value = cells
        users = re.search(r"its (\d+) users", measure)
        if users:
            measure = measure.replace(users.group(0), "its users")
            value = f"{value} ({users.group(1)} users)"
        rows[measure] = value
    return rows


if __name__ == "__main__":
    sys.exit(main())
