// The client against real herald pods (processes of the built binary on
// 127.0.0.x, ephemeral ports, static discovery): the module a pod serves,
// publish and history across pods, error codes, reconnect and resume after a
// SIGKILL, and tokens refused with 401.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { WebSocket } from "ws";

import { Herald } from "../../../clients/js/herald.js";
import { ROOT, eventually, jwtSecret, sequencerOf, sleep, startCluster, tempDir } from "../lib/pods.js";

const fast = { WebSocket, backoffMin: 100, backoffMax: 1_000 };

/** A Herald that counts the objects in every frame it receives. */
function countingWebSocket(counts) {
  return class extends WebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => counts.push(String(event.data).split("\n").filter(Boolean).length));
    }
  };
}

const clients = [];
function connect(urls, options = {}) {
  const herald = new Herald(urls, { ...fast, ...options });
  clients.push(herald);
  return herald;
}
const connected = (herald) => eventually(`${herald.url} connected`, () => herald.state === "connected");

let cluster;
before(async () => {
  cluster = await startCluster({ count: 2, flags: ["--client-publish", "--client-publish-rate=10000", "--demo"] });
});
after(async () => {
  for (const herald of clients) herald.close();
  await cluster?.stop();
});

test("every pod serves GET /herald.js as text/javascript, cacheable, byte for byte clients/js/herald.js", async () => {
  const file = readFileSync(join(ROOT, "clients/js/herald.js"));
  for (const pod of cluster.pods) {
    const response = await fetch(`${pod.httpUrl}/herald.js`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type"), /^text\/javascript/);
    assert.match(response.headers.get("cache-control"), /max-age=\d+/);
    assert.ok(response.headers.get("etag"));
    assert.ok(Buffer.from(await response.arrayBuffer()).equals(file), "served module differs from clients/js/herald.js: rebuild herald");
  }
  const demo = await fetch(`${cluster.pods[0].httpUrl}/demo`);
  assert.equal(demo.status, 200);
  assert.ok((await demo.text()).includes('from "/herald.js"'));
});

test("a publish on one pod resolves with its id, offset and epoch, and reaches a subscriber on the other pod and the history", async () => {
  const [a, b] = cluster.pods;
  const reader = connect(a.wsUrl);
  const writer = connect(b.wsUrl);
  const got = [];
  const sub = reader.subscribe("room:across", (msg) => got.push(msg));
  const position = await sub.ready;
  assert.deepEqual(position, { epoch: "", offset: 0 });
  await connected(writer);
  const receipts = await Promise.all([1, 2, 3].map((n) => writer.publish("room:across", { n })));
  assert.deepEqual(receipts.map((r) => r.offset), [1, 2, 3]);
  assert.ok(receipts.every((r) => r.id.length === 26 && r.epoch.length === 10));
  await eventually("three messages on the other pod", () => got.length === 3);
  assert.deepEqual(
    got.map(({ id, offset, epoch, data }) => ({ id, offset, epoch, n: data.n })),
    receipts.map((r, i) => ({ ...r, n: i + 1 })),
  );
  const history = await writer.history("room:across", { limit: 2 });
  assert.deepEqual(history.messages.map((m) => m.data.n), [2, 3]);
  assert.equal(history.offset, 3);
  const since = await writer.history("room:across", { since: { epoch: receipts[0].epoch, offset: 1 } });
  assert.equal(since.recovered, true);
  assert.deepEqual(since.messages.map((m) => m.offset), [2, 3]);
});

test("the server's errors reach the caller as Errors carrying the protocol's code, and the connection stays usable", async () => {
  const herald = connect(cluster.pods[0].wsUrl);
  const bad = herald.subscribe("no spaces allowed", () => {});
  const errors = [];
  bad.on("error", (error) => errors.push(error.code));
  await assert.rejects(bad.ready, { code: "invalid_topic" });
  assert.deepEqual(errors, ["invalid_topic"]);
  await assert.rejects(herald.publish("no spaces", 1), { name: "HeraldError", code: "invalid_topic" });
  await assert.rejects(herald.history("room:x", { limit: 5_000 }), { code: "invalid_limit" });
  await assert.rejects(herald.history("room:x", { since: { epoch: "", offset: 99 } }), { code: "invalid_position" });
  assert.equal((await herald.publish("room:x", "still here")).offset, 1);
});

test("a resume replays what a subscriber missed, several messages to a frame, each offset once", async () => {
  const [a, b] = cluster.pods;
  const writer = connect(b.wsUrl);
  const counts = [];
  const reader = connect([a.wsUrl], { WebSocket: countingWebSocket(counts) });
  const offsets = [];
  const sub = reader.subscribe("room:replay", (msg) => offsets.push(msg.offset));
  await sub.ready;
  await writer.publish("room:replay", 0);
  await eventually("the first message", () => offsets.length === 1);
  // Publish 50 more while the reader is gone, then let it come back.
  reader.close();
  for (let n = 1; n <= 50; n += 1) await writer.publish("room:replay", n);
  const again = connect(a.wsUrl, { WebSocket: countingWebSocket(counts) });
  const resumes = [];
  again.subscribe("room:replay", (msg) => offsets.push(msg.offset), { since: sub.position }).on("resume", (r) => resumes.push(r));
  await eventually("the replay", () => offsets.length === 51);
  assert.deepEqual(offsets, Array.from({ length: 51 }, (_, i) => i + 1));
  assert.equal(resumes[0].recovered, true);
  assert.ok(Math.max(...counts) > 1, `every frame held one object: ${counts}`);
});

test("after a SIGKILL of its pod the client reconnects to the other pod and resumes, handing over every message exactly once while publishes go on", async (t) => {
  const own = await startCluster({ count: 2, flags: ["--client-publish", "--client-publish-rate=10000"] });
  t.after(() => own.stop());
  const topic = "room:kill";
  const publishers = new Map(own.pods.map((pod) => [pod, connect(pod.wsUrl)]));
  const sequencer = await sequencerOf(own, topic, (pod, topic) => publishers.get(pod).publish(topic, "probe"));
  // Kill the pod that does not number the topic: killing the sequencer
  // starts a new epoch and may lose what it had not yet relayed.
  const victim = own.pods.find((pod) => pod !== sequencer);
  const writer = publishers.get(sequencer);

  const reader = connect([victim.wsUrl, sequencer.wsUrl]);
  const states = [];
  reader.on("state", (state, { url }) => states.push({ state, url, at: performance.now() }));
  const seen = [];
  const resumes = [];
  const other = [];
  const sub = reader.subscribe(topic, (msg) => seen.push(msg));
  sub.on("resume", (r) => resumes.push({ ...r, at: performance.now() }));
  // A second topic, to resubscribe two in one frame; the victim may number
  // this one, so only its (epoch, offset) pairs must be unique.
  const otherResumes = [];
  reader.subscribe("room:kill-2", (msg) => other.push(`${msg.epoch}:${msg.offset}`)).on("resume", (r) => otherResumes.push(r));
  await sub.ready;

  const acked = [];
  let publishing = true;
  const backend = (async () => {
    for (let n = 1; publishing; n += 1) {
      acked.push(await writer.publish(topic, { n }));
      if (n % 10 === 0) await writer.publish("room:kill-2", { n });
      await sleep(5);
    }
  })();
  await eventually("some messages before the kill", () => seen.length >= 30);
  const killedAt = performance.now();
  await victim.kill();
  await eventually("a resume of both topics on the other pod", () => resumes.length >= 1 && otherResumes.length >= 1);
  await sleep(300);
  publishing = false;
  await backend;
  await eventually("every acknowledged message", () => seen.length >= acked.length, 5_000).catch(() => {});

  const offsets = seen.map((m) => m.offset);
  assert.equal(new Set(offsets).size, offsets.length, "an offset was handed over twice");
  assert.deepEqual(offsets, Array.from({ length: offsets.length }, (_, i) => offsets[0] + i), "offsets not consecutive");
  const ids = new Set(seen.map((m) => m.id));
  assert.deepEqual(acked.filter((r) => !ids.has(r.id)), [], "acknowledged messages never handed over");
  assert.equal(resumes.length, 1);
  assert.equal(resumes[0].recovered, true);
  assert.equal(new Set(other).size, other.length);
  assert.equal(reader.url, sequencer.wsUrl);
  const back = states.find((s) => s.state === "connected" && s.at > killedAt);
  assert.ok(back, JSON.stringify(states));
  const resumed = resumes.find((r) => r.at > killedAt);
  t.diagnostic(`SIGKILL → connected ${Math.round(back.at - killedAt)} ms, → resume ${Math.round(resumed.at - killedAt)} ms; ${acked.length} published, ${seen.length} handed over`);
});

test("a token refused with 401 makes the client ask getToken again, and after maxRefusals refusals in a row it closes with the reason", async (t) => {
  const dir = tempDir();
  const { file, mint } = jwtSecret(dir);
  const secured = await startCluster({ count: 1, flags: ["--auth=jwt", `--jwt-secret-file=${file}`] });
  t.after(() => secured.stop());
  const url = secured.pods[0].wsUrl;

  let calls = 0;
  const refreshed = connect(url, { getToken: async () => (++calls === 1 ? "not.a.token" : mint({ topics: "room:*" })) });
  await eventually("connected with the second token", () => refreshed.state === "connected");
  assert.equal(calls, 2);
  await refreshed.subscribe("room:auth", () => {}).ready;

  let refusedCalls = 0;
  const refused = connect(url, { getToken: async () => (++refusedCalls, "still.not.valid"), maxRefusals: 3 });
  let closed;
  refused.on("state", (state, info) => state === "closed" && (closed = info));
  await eventually("the state closed after three refusals", () => closed);
  assert.equal(refusedCalls, 3);
  assert.match(closed.reason, /unauthorized/);
  await assert.rejects(refused.publish("room:auth", 1), { code: "closed" });
});

test("before its token expires the client sends a fresh one from getToken and keeps its connection and subscriptions", async (t) => {
  const dir = tempDir();
  const { file, mint } = jwtSecret(dir);
  const secured = await startCluster({ count: 1, flags: ["--auth=jwt", `--jwt-secret-file=${file}`, "--jwt-leeway=0s", "--client-publish"] });
  t.after(() => secured.stop());
  let calls = 0;
  const herald = connect(secured.pods[0].wsUrl, { getToken: async () => (++calls, mint({ topics: "room:*", ttl: "3s" })) });
  const states = [];
  herald.on("state", (state) => states.push(state));
  const seen = [];
  await herald.subscribe("room:refresh", (m) => seen.push(m.data)).ready;
  // Past the first token's lifetime, twice over: refreshed, never dropped.
  await sleep(6500);
  assert.ok(calls >= 3, `getToken called ${calls} times`);
  assert.equal(herald.state, "connected");
  assert.ok(!states.includes("disconnected"), JSON.stringify(states));
  await herald.publish("room:refresh", "after");
  await eventually("the message after the refreshes", () => seen.includes("after"));
});
