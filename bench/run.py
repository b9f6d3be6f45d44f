#!/usr/bin/env python3
"""Run herald's standard benchmark scenarios S1-S4 on a local 2-pod cluster.

Besides the issue's four, L (100 users on one topic, 100 msg/s: every user
busy, the pods mostly idle) shows what the write delay costs where there is
nothing to gain; S1 and L run with the default and with `--write-delay=0ms`.

Starts two `herald serve` processes with static discovery on 127.0.0.1 and
127.0.0.2, runs `herald-bench` for each scenario (users spread over both
pods, publishing on the first), and writes a markdown report to
bench/results/<UTC date>-<short commit>.md plus the raw JSON lines beside it
(bench/results/*.json, not committed). The pods are stopped by PID on exit,
whatever the exit path (normal, exception, SIGINT, SIGTERM).

With `--server=nats` the same scenarios run against a 2-node NATS cluster
(routes between 127.0.0.1 and 127.0.0.2, WebSocket listeners, publishing
over NATS's TCP port on the first) driven by the same herald-bench, and the
report is bench/results/<UTC date>-nats-<version>-<short commit>.md.

With `--server=herald-redis` the pods use the Redis broadcast backend
(`--broadcast=redis`, one redis-server on 127.0.0.1 that the script starts,
no discovery) instead of the mesh; with `--server=socketio-redis` the same
scenarios run against two Socket.IO nodes (bench/socketio/server.js, `node`)
on 127.0.0.1 and 127.0.0.2 sharing that redis-server through the Redis
adapter, users joining a room per topic and the publisher emitting to the
first node. Their reports are bench/results/<UTC date>-<server>-<short
commit>.md; the redis-server is restarted with the pods or nodes, stopped by
PID like them, and its CPU is counted in the server's.

Python 3 standard library only. `make bench` builds the binaries first.
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

# S1 and L run on pods started with each of these extra flag sets: the
# default (`--write-delay=auto`), and no write delay at all.
VARIANTS = [(), ("--write-delay=0ms",)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IPS = ["127.0.0.1", "127.0.0.2"]
# Fixed ports away from herald's defaults, so a `make run` or `make cluster`
# on the same machine does not collide with the bench.
HTTP_PORT, GRPC_PORT, PEER_PORT = 28080, 29090, 27070
# The NATS nodes' client, WebSocket, route and monitoring ports.
NATS_PORT, NATS_WS_PORT, NATS_ROUTE_PORT, NATS_HTTP_PORT = 24222, 28222, 26222, 28223
# The redis-server of the Redis broadcast backend and of the Socket.IO
# adapter, and the Socket.IO nodes' port.
REDIS_PORT = 26379
SOCKETIO_PORT = 23000
SOCKETIO_DIR = os.path.join(ROOT, "bench", "socketio")
NATS_CONFIG = """listen: {ip}:{client}
http: {ip}:{http}
websocket {{ listen: "{ip}:{ws}", no_tls: true }}
cluster {{ name: bench, listen: "{ip}:{route}", routes: [{routes}] }}
"""

PODS = []  # running Popen objects; stopped by stop_pods()


def stop_pods():
    """Stops every pod this script started, by PID."""
    while PODS:
        pod = PODS.pop()
        if pod.poll() is None:
            pod.terminate()
            try:
                pod.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pod.kill()
                pod.wait()


def on_signal(signum, _frame):
    stop_pods()
    sys.exit(128 + signum)


def wait_for(url, ready, log_dir):
    """Polls `url` until `ready(body)` holds, for up to 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200 and ready(r.read()):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} not ready; see {log_dir}")
        time.sleep(0.1)


def start_nats(nats_server, log_dir, name):
    """Starts the 2-node NATS cluster and waits until both nodes are routed
    to each other."""
    stop_pods()
    for i, ip in enumerate(IPS):
        routes = ", ".join(f'"nats://{other}:{NATS_ROUTE_PORT}"' for other in IPS if other != ip)
        config = os.path.join(log_dir, f"{name}-nats{i + 1}.conf")
        with open(config, "w") as f:
            f.write(NATS_CONFIG.format(ip=ip, client=NATS_PORT, http=NATS_HTTP_PORT,
                                       ws=NATS_WS_PORT, route=NATS_ROUTE_PORT, routes=routes))
        log = open(os.path.join(log_dir, f"{name}-nats{i + 1}.log"), "w")
        PODS.append(subprocess.Popen([nats_server, "-c", config], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL))
    for ip in IPS:
        wait_for(f"http://{ip}:{NATS_HTTP_PORT}/routez",
                 lambda body: json.loads(body).get("num_routes", 0) >= len(IPS) - 1, log_dir)
    return [p.pid for p in PODS]


def redis_url():
    return f"redis://{IPS[0]}:{REDIS_PORT}"


def start_redis(redis_server, log_dir, name):
    """Starts an empty redis-server on the first address (no persistence)
    and waits until it answers PING; returns its PID."""
    log = open(os.path.join(log_dir, f"{name}-redis.log"), "w")
    PODS.append(subprocess.Popen(
        [redis_server, "--bind", IPS[0], "--port", str(REDIS_PORT), "--save", "",
         "--appendonly", "no", "--dir", log_dir],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL))
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection((IPS[0], REDIS_PORT), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return PODS[-1].pid
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"redis-server not answering; see {log_dir}")
        time.sleep(0.1)


def start_pods(bin_dir, log_dir, name, env=None, flags=(), redis_server=None):
    """Starts the 2-pod cluster (with extra environment `env` and extra
    `herald serve` flags) and waits until both pods are ready. With
    `redis_server`, the pods broadcast through a fresh redis-server (also
    started here, its PID last) instead of the mesh."""
    stop_pods()
    if redis_server:
        start_redis(redis_server, log_dir, name)
        cluster = ["--broadcast=redis", f"--redis-url={redis_url()}"]
    else:
        cluster = ["--discovery=static", f"--peers={','.join(f'{ip}:{PEER_PORT}' for ip in IPS)}"]
    for i, ip in enumerate(IPS):
        log = open(os.path.join(log_dir, f"{name}-pod{i + 1}.log"), "w")
        cmd = [
            os.path.join(bin_dir, "herald"), "serve",
            f"--http-addr={ip}:{HTTP_PORT}", f"--grpc-addr={ip}:{GRPC_PORT}",
            f"--peer-addr={ip}:{PEER_PORT}", *cluster,
            # One load generator on one address stands for thousands of users.
            "--max-connection-rate-per-ip=0",
            *flags,
        ]
        PODS.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}))
    for ip in IPS:
        wait_for(f"http://{ip}:{HTTP_PORT}/readyz", lambda _body: True, log_dir)
    return [p.pid for p in PODS]


def start_socketio(node, redis_server, log_dir, name):
    """Starts a fresh redis-server and the 2 Socket.IO nodes sharing it
    through the Redis adapter; waits until both nodes listen (they listen
    only once their Redis connections are up)."""
    stop_pods()
    start_redis(redis_server, log_dir, name)
    for i, ip in enumerate(IPS):
        log = open(os.path.join(log_dir, f"{name}-socketio{i + 1}.log"), "w")
        PODS.append(subprocess.Popen(
            [node, os.path.join(SOCKETIO_DIR, "server.js"), "--host", ip,
             "--port", str(SOCKETIO_PORT), "--redis-url", redis_url()],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL))
    deadline = time.monotonic() + 30
    for ip in IPS:
        while True:
            try:
                socket.create_connection((ip, SOCKETIO_PORT), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"Socket.IO node on {ip} not listening; see {log_dir}")
                time.sleep(0.1)
    return [p.pid for p in PODS]


def socketio_version():
    """The installed socket.io and its Redis adapter's versions."""
    def version(package):
        path = os.path.join(SOCKETIO_DIR, "node_modules", *package.split("/"), "package.json")
        with open(path) as f:
            return json.load(f)["version"]
    return version("socket.io"), version("@socket.io/redis-adapter")


def redis_version(redis_server):
    out = subprocess.run([redis_server, "--version"], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), "unknown")


def target_args(server):
    """herald-bench's flags naming the cluster's users' and publisher's ends."""
    if server == "nats":
        ws = ",".join(f"ws://{ip}:{NATS_WS_PORT}/" for ip in IPS)
        return [f"--ws={ws}", "--server=nats", f"--nats={IPS[0]}:{NATS_PORT}"]
    if server == "socketio-redis":
        urls = [f"ws://{ip}:{SOCKETIO_PORT}/socket.io/?EIO=4&transport=websocket" for ip in IPS]
        return [f"--ws={','.join(urls)}", "--server=socketio", f"--socketio={urls[0]}"]
    ws = ",".join(f"ws://{ip}:{HTTP_PORT}/ws" for ip in IPS)
    return [f"--ws={ws}", f"--grpc=http://{IPS[0]}:{GRPC_PORT}"]


SERVERS = ["herald", "herald-redis", "nats", "socketio-redis"]
REDIS_SERVER = os.path.join(ROOT, "target", "tools", "redis", "redis-server")

# How each server's cluster is laid out, for the reports.
CLUSTERS = {
    "herald": "2 pods, static discovery, 127.0.0.1 and 127.0.0.2; users spread round-robin over "
              "both, publishing through gRPC on 127.0.0.1; 128-byte payloads.",
    "herald-redis": "2 pods on the Redis backend (`--broadcast=redis`, one redis-server on "
                    "127.0.0.1, no discovery), 127.0.0.1 and 127.0.0.2; users spread round-robin "
                    "over both, publishing through gRPC on 127.0.0.1; 128-byte payloads; server "
                    "CPU counts redis-server's.",
    "nats": "2 NATS nodes routed to each other, 127.0.0.1 and 127.0.0.2, WebSocket listeners; "
            "users spread round-robin over both, publishing over NATS's client port on "
            "127.0.0.1; 128-byte payloads.",
    "socketio-redis": "2 Socket.IO nodes (bench/socketio/server.js, WebSocket transport only) "
                      "on 127.0.0.1 and 127.0.0.2 sharing one redis-server through "
                      "@socket.io/redis-adapter; users spread round-robin over both, each "
                      "joining a room per topic; the publisher emits `publish` events on one "
                      "WebSocket to 127.0.0.1, which emits to the room; 128-byte payloads; "
                      "server CPU counts redis-server's.",
}


def start_server(server, args, log_dir, name, flags=()):
    """Starts `server`'s cluster afresh (`args`: the binaries' flags);
    returns the PIDs to sample."""
    if server == "nats":
        return start_nats(args.nats_server, log_dir, name)
    if server == "socketio-redis":
        return start_socketio(args.node, args.redis_server, log_dir, name)
    redis = args.redis_server if server == "herald-redis" else None
    return start_pods(args.bin_dir, log_dir, name, flags=flags, redis_server=redis)


def server_name(server, args):
    """The server's name with its versions, for the reports."""
    if server == "herald-redis":
        return f"herald on Redis {redis_version(args.redis_server)}"
    if server == "socketio-redis":
        sio, adapter = socketio_version()
        return (f"Socket.IO {sio} + Redis adapter {adapter} on Redis "
                f"{redis_version(args.redis_server)}")
    return "herald (mesh)" if server == "herald" else server


def server_commands(server):
    """How the server's processes are started, for the reports."""
    if server == "socketio-redis":
        return (f"`redis-server --bind 127.0.0.1 --port {REDIS_PORT} --save '' --appendonly no`"
                f", then on each IP `node bench/socketio/server.js --host IP --port "
                f"{SOCKETIO_PORT} --redis-url redis://127.0.0.1:{REDIS_PORT}`")
    if server == "herald-redis":
        return (f"`redis-server --bind 127.0.0.1 --port {REDIS_PORT} --save '' --appendonly no`"
                f", then on each IP `herald serve --http-addr=IP:{HTTP_PORT} "
                f"--grpc-addr=IP:{GRPC_PORT} --peer-addr=IP:{PEER_PORT} --broadcast=redis "
                f"--redis-url=redis://127.0.0.1:{REDIS_PORT} --max-connection-rate-per-ip=0`")
    peers = ",".join(f"127.0.0.{i + 1}:{PEER_PORT}" for i in range(len(IPS)))
    return (f"on each IP `herald serve --http-addr=IP:{HTTP_PORT} --grpc-addr=IP:{GRPC_PORT} "
            f"--peer-addr=IP:{PEER_PORT} --discovery=static --peers={peers} "
            f"--max-connection-rate-per-ip=0`")


def bench(bin_dir, pids, label, extra, raw, server="herald", target=None):
    """Runs herald-bench once against `target` (flags naming the users' and
    the publisher's ends; by default `target_args(server)`); returns its
    JSON report and the command."""
    cmd = [
        os.path.join(bin_dir, "herald-bench"), *(target_args(server) if target is None else target),
        f"--pids={','.join(map(str, pids))}", f"--label={label}", "--json=-",
    ] + extra
    print(f"\n== {label}: herald-bench {' '.join(extra)}", flush=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True, text=True).stdout
    line = out.strip().splitlines()[-1]
    raw.write(line + "\n")
    raw.flush()
    return json.loads(line), shlex.join(["herald-bench"] + extra)


def median(runs, pick):
    """The median of `pick(run)` over `runs`."""
    return statistics.median(pick(r) for r in runs)


def p99(r):
    return r["latency_ms"]["p99"]


def p50(r):
    return r["latency_ms"]["p50"]


def clean(r):
    return r["lost"] == 0 and r["duplicates"] == 0 and r["latency_ms"]["p99"] < 100.0


class Sitting:
    """One run of a bench script: its commit and time, the stem of its
    report (`<UTC date>-<kind>-<commit>`), the pods' log directory and the
    raw JSON lines file; stops the pods on SIGINT, SIGTERM and exit."""

    def __init__(self, out, kind):
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        atexit.register(stop_pods)
        self.commit = git("rev-parse", "--short", "HEAD") or "unknown"
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self.stem = f"{self.now:%Y-%m-%d}-{kind}-{self.commit}"
        os.makedirs(out, exist_ok=True)
        self.log_dir = os.path.join(ROOT, "target", "bench")
        os.makedirs(self.log_dir, exist_ok=True)
        self.raw = open(os.path.join(out, f"{self.stem}.json"), "w")


def write_report(out, stem, md, show=False):
    """Writes the markdown lines `md` to <out>/<stem>.md (and prints them
    with `show`), then says where."""
    path = os.path.join(out, f"{stem}.md")
    with open(path, "w") as f:
        f.write("\n".join(md) + "\n")
    if show:
        print("\n".join(md))
    print(f"\nwrote {path}")


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return f"{os.cpu_count()} CPUs ({model}), {mem_kib / 1024 / 1024:.1f} GiB RAM, " \
           f"Linux {platform.release()}"


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True, check=False).stdout.strip()


def row(name, r):
    lat = r["latency_ms"]
    srv = r["server"]
    cpu = srv["cpu_us_per_delivery"]
    return (f"| {name} | {r['publish_rate']:.0f} | {r['deliveries_per_sec']:.0f} | "
            f"{r['received']}/{r['expected']} | {r['duplicates']} | {lat['p50']:.2f} | "
            f"{lat['p90']:.2f} | {lat['p99']:.2f} | {lat['p999']:.2f} | {lat['max']:.2f} | "
            f"{srv['cpu_seconds']:.2f} | {'' if cpu is None else f'{cpu:.2f}'} | "
            f"{r['bench_cpu_seconds']:.2f} | {r['wakeup_late_ms']['p99']:.2f} |")


def metrics(ip):
    """The pod's Prometheus samples, name (with labels) -> value."""
    with urllib.request.urlopen(f"http://{ip}:{HTTP_PORT}/metrics", timeout=5) as r:
        body = r.read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def history_cost(args, log_dir, raw, commit, now):
    """S1, S2 and S4 with history on (the default) and off
    (`--history-messages=0`), in one sitting, variants interleaved per
    scenario; returns the report's lines."""
    variants = [(), ("--history-messages=0",)]
    names = {(): "history on", ("--history-messages=0",): "history off"}
    secs, s2_secs = ("3s", "2s") if args.quick else ("10s", "5s")
    repeats = 1 if args.quick else 3
    s2_steps = [500, 1000] if args.quick else [500, 1000, 2000, 4000, 8000]
    common = ["--connect-rate=2000", "--payload-bytes=128"]

    def run(pids, label, extra):
        return bench(args.bin_dir, pids, label, extra, raw)

    s1, s2, s4, kept = {}, {}, {}, {}
    for flags in variants:
        pids = start_pods(args.bin_dir, log_dir, "h-s1", flags=flags)
        s1[flags] = [run(pids, f"S1 {names[flags]} #{n + 1}",
                         common + ["--users=1000", "--topics=shared", "--rate=200",
                                   f"--duration={secs}"])[0] for n in range(repeats)]
        m = metrics(IPS[0])
        kept[flags] = (m.get("herald_history_bytes", 0), m.get("herald_history_messages", 0))
    for flags in variants:
        pids = start_pods(args.bin_dir, log_dir, "h-s2", flags=flags)
        s2[flags] = []
        for rate in s2_steps:
            runs = [run(pids, f"S2 {names[flags]} {rate}/s #{n + 1}",
                        common + ["--users=1000", "--topics=shared", f"--rate={rate}",
                                  f"--duration={s2_secs}"])[0] for n in range(repeats)]
            s2[flags].append((rate, runs))
            if not any(clean(r) for r in runs):
                break
    for flags in variants:
        pids = start_pods(args.bin_dir, log_dir, "h-s4", flags=flags)
        s4[flags] = [run(pids, f"S4 {names[flags]} #{n + 1}",
                         common + ["--users=5000", "--topics=per-user", "--rate=2000",
                                   f"--duration={secs}"])[0] for n in range(repeats)]
    stop_pods()

    md = [f"# herald: the cost of history, {now:%Y-%m-%d %H:%M} UTC, commit {commit}\n",
          f"- Machine: {machine()}; the load generator shares the cores with both pods.",
          "- Cluster: 2 pods, static discovery, 127.0.0.1-2; users round-robin over both, "
          "publishing through gRPC on 127.0.0.1; 128-byte payloads.",
          f"- History on: the defaults (1,000 messages per topic, 5 min, 256 MiB); off: "
          f"`--history-messages=0`. Medians of {repeats}; produced by "
          f"`bench/run.py --history-cost`.\n",
          "| scenario | history on | history off |", "|---|---|---|"]

    def cell(rs):
        return (f"{median(rs, lambda r: r['deliveries_per_sec']):.0f} deliv/s, lost "
                f"{sum(r['lost'] for r in rs)}, p50 {median(rs, p50):.2f} ms, p99 "
                f"{median(rs, p99):.2f} ms, "
                f"{median(rs, lambda r: r['server']['cpu_us_per_delivery'] or 0):.2f} CPU-µs/deliv")

    on, off = variants
    md.append(f"| S1: 200 msg/s to 1,000 users | {cell(s1[on])} | {cell(s1[off])} |")

    def best(steps):
        ok = [rate for rate, runs in steps if all(clean(r) for r in runs)]
        return max(ok, default=0)
    md.append(f"| S2: highest clean rate (all runs: no loss, p99 < 100 ms) | {best(s2[on])} msg/s "
              f"| {best(s2[off])} msg/s |")
    for rate in sorted({rate for f in variants for rate, _ in s2[f]}):
        row_ = []
        for f in variants:
            runs = dict(s2[f]).get(rate)
            row_.append(cell(runs) if runs else "not run")
        md.append(f"| S2 at {rate} msg/s | {row_[0]} | {row_[1]} |")
    md.append(f"| S4: 5,000 users on own topics, 2,000 msg/s | {cell(s4[on])} | {cell(s4[off])} |")
    size, count = kept[on]
    per = size / count if count else 0
    md.append(f"\nKept after S1 with history on, pod 1: {count:.0f} messages in {size:.0f} bytes "
              f"({per:.0f} bytes per kept message of a 128-byte payload).\n")
    md.append("## Every run\n")
    md.append("| run | publish msg/s | deliveries/s | received/expected | dup | p50 | p90 | "
              "p99 | p99.9 | max | server CPU s | CPU-µs/deliv | bench CPU s | wake-up p99 |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for group in (s1, s4):
        for rs in group.values():
            for r in rs:
                md.append(row(r["label"], r))
    for steps in s2.values():
        for _, runs in steps:
            for r in runs:
                md.append(row(r["label"], r))
    return md


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--quick", action="store_true",
                        help="shorter runs and fewer S2 steps, to try the harness")
    parser.add_argument("--server", choices=SERVERS, default="herald",
                        help="what to measure: herald's pods on the mesh or on Redis, or a NATS "
                             "cluster or Socket.IO with its Redis adapter for comparison")
    parser.add_argument("--nats-server", default="nats-server",
                        help="the nats-server binary, with --server=nats")
    parser.add_argument("--redis-server", default=REDIS_SERVER,
                        help="the redis-server binary, with --server=herald-redis or "
                             "socketio-redis")
    parser.add_argument("--node", default="node",
                        help="the Node.js binary, with --server=socketio-redis")
    parser.add_argument("--history-cost", action="store_true",
                        help="only S1, S2 and S4, each with history on and off")
    args = parser.parse_args()
    server = args.server

    def start(name, flags=()):
        return start_server(server, args, log_dir, name, flags)

    def run(pids, label, extra):
        return bench(args.bin_dir, pids, label, extra, raw, server)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(stop_pods)

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "src", "Cargo.toml",
                     "Cargo.lock"))
    now = datetime.datetime.now(datetime.timezone.utc)
    if server == "nats":
        version = subprocess.run([args.nats_server, "--version"], stdout=subprocess.PIPE,
                                 text=True, check=True).stdout.split()[-1]
        name = f"NATS {version.lstrip('v')}"
        stem = f"{now:%Y-%m-%d}-nats-{version}-{commit}"
    elif server in ("herald-redis", "socketio-redis"):
        name = server_name(server, args)
        stem = f"{now:%Y-%m-%d}-{server}-{commit}"
    else:
        name = "herald"
        stem = f"{now:%Y-%m-%d}-{commit}"
    os.makedirs(args.out, exist_ok=True)
    log_dir = os.path.join(ROOT, "target", "bench")
    os.makedirs(log_dir, exist_ok=True)
    if args.history_cost:
        stem = f"{now:%Y-%m-%d}-history-{commit}"
    raw = open(os.path.join(args.out, f"{stem}.json"), "w")
    if args.history_cost:
        write_report(args.out, stem, history_cost(args, log_dir, raw, commit, now))
        return

    secs = "3s" if args.quick else "10s"
    s2_secs = "2s" if args.quick else "5s"
    s2_steps = [500, 1000] if args.quick else [500, 1000, 2000, 4000, 8000]
    s2_runs = 1 if args.quick else 3
    repeats = 1 if args.quick else 3  # runs of S1 and S4
    idle_users = 2000 if args.quick else 10000
    per_user = 1000 if args.quick else 5000
    common = ["--connect-rate=2000", "--payload-bytes=128"]
    results, commands = {}, []

    def per_variant(scenario, extra, duration):
        """Runs a scenario `repeats` times on fresh pods for each of
        VARIANTS; returns {pod flags: [reports]}."""
        reports = {}
        for flags in VARIANTS if server.startswith("herald") else [()]:
            pids = start(scenario.lower(), flags)
            reports[flags] = []
            for n in range(repeats):
                label = f"{scenario}{' ' + ' '.join(flags) if flags else ''} #{n + 1}"
                r, c = run(pids, label, common + extra + [f"--duration={duration}"])
                reports[flags].append(r)
            if not flags:
                commands.append(c + f"   # x{repeats}")
        return reports

    s1 = per_variant("S1", ["--users=1000", "--topics=shared", "--rate=200"], secs)
    light = per_variant("L", ["--users=100", "--topics=shared", "--rate=100"], s2_secs)

    pids = start("s2")
    s2 = []  # (rate, [reports])
    for rate in s2_steps:
        runs = []
        for n in range(s2_runs):
            r, c = run(pids, f"S2 {rate}/s #{n + 1}",
                       common + ["--users=1000", "--topics=shared", f"--rate={rate}",
                                 f"--duration={s2_secs}"])
            runs.append(r)
            if n == 0:
                commands.append(c + f"   # x{s2_runs} per step")
        s2.append((rate, runs))
        if not any(clean(r) for r in runs):
            break

    pids = start("s3")
    r, c = run(pids, "S3", ["--connect-rate=2000", f"--users={idle_users}", "--idle",
                            "--settle=5s"])
    results["S3"] = r
    commands.append(c)

    pids = start("s4")
    s4 = []
    for n in range(repeats):
        r, c = run(pids, f"S4 #{n + 1}",
                   common + [f"--users={per_user}", "--topics=per-user", "--rate=2000",
                             f"--duration={secs}"])
        s4.append(r)
    commands.append(c + f"   # x{repeats}")
    stop_pods()

    clean_steps = [rate for rate, runs in s2 if all(clean(r) for r in runs)]
    best = max(clean_steps, default=None)
    md = []
    md.append(f"# {name} benchmark {now:%Y-%m-%d %H:%M} UTC, herald-bench at commit {commit}"
              f"{' (with uncommitted changes in src/)' if dirty else ''}\n")
    md.append(f"- Machine: {machine()}; the load generator shares the cores with both pods.")
    md.append(f"- Cluster: {CLUSTERS[server]}")
    md.append(f"- Mode: {'quick (not comparable)' if args.quick else 'full'}; "
              "produced by `make bench` (`bench/run.py`).\n")
    md.append("## Headline\n")
    md.append(f"| scenario | {name} |")
    md.append("|---|---|")
    for scenario, reports in [("S1: 200 msg/s to 1,000 users, one topic", s1),
                              ("L: 100 msg/s to 100 users, one topic (busy users, idle pods)",
                               light)]:
        for flags, rs in reports.items():
            how = f" (pods with `{' '.join(flags)}`)" if flags else ""
            md.append(f"| {scenario}{how}; median of {len(rs)} | "
                      f"{median(rs, lambda r: r['deliveries_per_sec']):.0f} deliveries/s, lost "
                      f"{sum(r['lost'] for r in rs)}, p50 {median(rs, p50):.2f} ms, "
                      f"p99 {median(rs, p99):.2f} ms, "
                      f"{median(rs, lambda r: r['server']['cpu_us_per_delivery'] or 0):.2f} "
                      f"server CPU-µs per delivery |")
    if best is None:
        md.append("| S2: highest clean rate (3 of 3 runs) | none of the steps was clean |")
    else:
        runs = dict(s2)[best]
        md.append(f"| S2: highest clean rate (all {s2_runs} runs: zero loss, p99 < 100 ms) | "
                  f"{best} msg/s (≈ {best * 1000:,} deliveries/s); median p99 "
                  f"{median(runs, p99):.1f} ms, median "
                  f"{median(runs, lambda r: r['server']['cpu_us_per_delivery'] or 0):.2f}"
                  f" server CPU-µs per delivery |")
    s3 = results["S3"]
    per_conn = s3["server"]["rss_per_connection_bytes"] or 0
    md.append(f"| S3: {s3['connect']['ok']:,} idle subscribed connections | "
              f"{per_conn / 1024:.1f} KiB resident per connection "
              f"({s3['server']['rss_before_bytes'] / 2**20:.1f} → "
              f"{s3['server']['rss_after_bytes'] / 2**20:.1f} MiB, both pods) |")
    md.append(f"| S4: {s4[0]['users']:,} users on own topics, 2,000 msg/s round robin; median "
              f"of {len(s4)} | lost {sum(r['lost'] for r in s4)}, p50 {median(s4, p50):.2f} ms, "
              f"p99 {median(s4, p99):.2f} ms |\n")
    md.append("## Every run\n")
    md.append("Latencies in ms (publish call → delivery parsed by the user); CPU in seconds "
              "over the publish+drain window, both pods; CPU-µs per distinct delivery; "
              "wake-up p99: how late a thread sleeping 5 ms at a time woke over the same "
              "window (the machine's scheduling noise).\n")
    md.append("| run | publish msg/s | deliveries/s | received/expected | dup | p50 | p90 | "
              "p99 | p99.9 | max | server CPU s | CPU-µs/deliv | bench CPU s | wake-up p99 |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for rs in [*s1.values(), *light.values()]:
        for r in rs:
            md.append(row(r["label"], r))
    for rate, runs in s2:
        for n, r in enumerate(runs):
            md.append(row(f"S2 {rate}/s #{n + 1}{'' if clean(r) else ' ✗'}", r))
    for r in s4:
        md.append(row(r["label"], r))
    md.append(f"\nS3: {s3['connect']['ok']} subscribed ({s3['connect']['failed']} failed) in "
              f"{s3['connect']['seconds']:.1f} s, connect p99 "
              f"{s3['connect']['time_ms']['p99']:.1f} ms; RSS "
              f"{s3['server']['rss_before_bytes']} → {s3['server']['rss_after_bytes']} bytes.\n")
    md.append("## Commands\n")
    if server in ("herald-redis", "socketio-redis"):
        md.append(f"Each with `{' '.join(target_args(server))} --pids=<both, and redis-server> "
                  f"--json=-`; {server_commands(server)}, restarted before each run group.\n")
    elif server == "nats":
        md.append(f"Each with `{' '.join(target_args(server))} --pids=<both nodes> --json=-`; "
                  "nodes run `nats-server -c` with this configuration (IP and the route "
                  "to the other node filled in), restarted before S1, L, S2, S3 and S4:\n")
        md.append("```")
        md.append(NATS_CONFIG.format(ip="IP", client=NATS_PORT, http=NATS_HTTP_PORT,
                                     ws=NATS_WS_PORT, route=NATS_ROUTE_PORT,
                                     routes=f'"nats://OTHER_IP:{NATS_ROUTE_PORT}"').strip())
        md.append("```\n")
    else:
        md.append(f"Each with `{' '.join(target_args(server))} --pids=<both pods> --json=-`; "
                  "pods run `herald serve --http-addr=IP:28080 --grpc-addr=IP:29090 "
                  "--peer-addr=IP:27070 --discovery=static "
                  "--peers=127.0.0.1:27070,127.0.0.2:27070` (plus the flags named in a run's "
                  "label), restarted before each S1 and L variant, S2, S3 and S4.\n")
    md.append("```sh")
    md.extend(commands)
    md.append("```")
    write_report(args.out, stem, md)


if __name__ == "__main__":
    main()
