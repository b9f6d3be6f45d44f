// herald pods as real processes of the built binary for the JavaScript
// tests: each pod on its own loopback address (127.0.0.1, 127.0.0.2, …) with
// the same ephemeral ports, static discovery of each other, its log in a temp
// file. Every pod a test starts is SIGKILLed by PID in teardown.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** The herald binary: `HERALD_BIN`, or the debug build. */
export const HERALD_BIN = process.env.HERALD_BIN ?? join(ROOT, "target/debug/herald");

/** How long any single expectation may take. */
export const PATIENCE_MS = 10_000;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns something truthy; fails after `within` ms with `what`. */
export async function eventually(what, check, within = PATIENCE_MS) {
  const deadline = Date.now() + within;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

function canBind(host, port) {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen({ host, port, exclusive: true }, () => {
      const bound = server.address().port;
      server.close(() => resolve(bound));
    });
  });
}

/** `count` ports free on every one of `ips` right now. */
async function freePorts(ips, count) {
  const ports = [];
  while (ports.length < count) {
    const port = await canBind(ips[0], 0);
    const free = await Promise.all(ips.map((ip) => canBind(ip, port)));
    if (free.every(Boolean) && !ports.includes(port)) ports.push(port);
  }
  return ports;
}

/** One herald process. */
class Pod {
  constructor(ip, ports, args, dir) {
    this.ip = ip;
    this.ports = ports;
    this.logFile = join(dir, `herald-${ip}.log`);
    const log = openSync(this.logFile, "w");
    this.child = spawn(
      HERALD_BIN,
      [
        "serve",
        `--http-addr=${ip}:${ports.http}`,
        `--grpc-addr=${ip}:${ports.grpc}`,
        `--peer-addr=${ip}:${ports.peer}`,
        ...args,
      ],
      { stdio: ["ignore", "ignore", log], env: { ...process.env, RUST_LOG: "info,herald=debug", KUBECONFIG: "" } },
    );
    this.exited = new Promise((resolve) => this.child.once("exit", resolve));
  }

  /** `ws://ip:port/ws`. */
  get wsUrl() {
    return `ws://${this.ip}:${this.ports.http}/ws`;
  }

  /** `http://ip:port`. */
  get httpUrl() {
    return `http://${this.ip}:${this.ports.http}`;
  }

  /** Everything the pod logged so far. */
  logs() {
    return readFileSync(this.logFile, "utf8");
  }

  async waitReady() {
    await eventually(`pod ${this.ip} ready`, async () => {
      if (this.child.exitCode !== null) throw new Error(`pod ${this.ip} exited:\n${this.logs()}`);
      try {
        return (await fetch(`${this.httpUrl}/readyz`)).status === 200;
      } catch {
        return false;
      }
    });
  }

  /** SIGKILL, and wait until the process is gone. */
  async kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.exited;
  }
}

/**
 * Starts `count` pods with static discovery of each other and extra `flags`;
 * resolves once every one is ready. `cluster.stop()` kills them all.
 */
export async function startCluster({ count = 2, flags = [] } = {}) {
  const ips = Array.from({ length: count }, (_, i) => `127.0.0.${i + 1}`);
  const [http, grpc, peer] = await freePorts(ips, 3);
  const ports = { http, grpc, peer };
  const dir = mkdtempSync(join(tmpdir(), "herald-js-"));
  const args = [
    "--discovery=static",
    `--peers=${ips.map((ip) => `${ip}:${peer}`).join(",")}`,
    "--drain-window=1s",
    "--peer-ready-timeout=3s",
    ...flags,
  ];
  const pods = ips.map((ip) => new Pod(ip, ports, args, dir));
  const cluster = {
    pods,
    dir,
    async stop() {
      await Promise.all(pods.map((pod) => pod.kill()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await Promise.all(pods.map((pod) => pod.waitReady()));
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  return cluster;
}

/**
 * Which pod of `cluster` numbers `topic` (its sequencer), found by
 * `publish(pod, topic)` through each pod in turn: the sequencer logs (at
 * debug) that it numbered a draft forwarded from a peer. A test that kills a
 * pod and expects nothing lost kills one that is not the sequencer: killing
 * the sequencer starts a new epoch (docs/continuity.md).
 */
export async function sequencerOf(cluster, topic, publish) {
  const needle = "numbered and delivered a message forwarded from a peer";
  const named = new RegExp(`topic=${topic.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}(\\s|$)`);
  const numbered = (pod) => pod.logs().split("\n").some((line) => line.includes(needle) && named.test(line));
  for (const pod of cluster.pods) {
    await publish(pod, topic);
    const others = cluster.pods.filter((other) => other !== pod);
    const found = await eventually(`a log line naming ${topic}'s sequencer`, () => others.find(numbered), 1_000).catch(() => null);
    if (found) return found;
  }
  throw new Error(`no pod logged numbering ${topic} for another`);
}

/** A JWT secret file in `dir` and a function that mints tokens with it. */
export function jwtSecret(dir) {
  const file = join(dir, "jwt-secret");
  writeFileSync(file, "a secret for the JavaScript tests only\n");
  const mint = ({ sub = "tester", topics = "room:*", publish = "room:*", ttl = "1h" } = {}) =>
    execFileSync(HERALD_BIN, ["token", `--jwt-secret-file=${file}`, `--sub=${sub}`, `--topics=${topics}`, `--publish=${publish}`, `--ttl=${ttl}`], {
      encoding: "utf8",
    }).trim();
  return { file, mint };
}

/** A temp dir for files a test needs before its pods start. */
export function tempDir() {
  return mkdtempSync(join(tmpdir(), "herald-js-"));
}
