// The client against a scripted stand-in pod (real WebSocket handshakes, the
// answers written here) and its pure parts: framing, refs, dedupe, liveness,
// the queue while disconnected, backoff bounds.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { WebSocket } from "ws";

import { Herald, HeraldError, backoff, parseFrame, DEFAULTS } from "../../../clients/js/herald.js";
import { fakePod, sendFrame, message } from "../lib/fake.js";
import { eventually } from "../lib/pods.js";

const fast = { WebSocket, backoffMin: 20, backoffMax: 100 };

// A URL where nothing listens.
async function deadUrl() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return `ws://127.0.0.1:${port}/ws`;
}

const ok = (request, fields = {}) => ({ op: "reply", ref: request.ref, ok: true, ...fields });

test("every backoff delay lies between zero and the smaller of the maximum and the minimum doubled per attempt", () => {
  for (let attempt = 0; attempt < 64; attempt += 1) {
    const ceiling = Math.min(10_000, 500 * 2 ** attempt);
    assert.equal(backoff(attempt, 500, 10_000, () => 0), 0);
    assert.equal(backoff(attempt, 500, 10_000, () => 0.999999), ceiling * 0.999999);
    for (let i = 0; i < 100; i += 1) {
      const delay = backoff(attempt, 500, 10_000);
      assert.ok(delay >= 0 && delay < ceiling, `attempt ${attempt}: ${delay}`);
    }
  }
  assert.equal(backoff(0, undefined, undefined, () => 0.5), DEFAULTS.backoffMin / 2);
});

test("a frame splits into its objects on newlines and blank lines are skipped", () => {
  assert.deepEqual(parseFrame('{"op":"pong","ref":"1"}\n\n{"op":"gap","topic":"t","epoch":"e","offset":3}\n'), [
    { op: "pong", ref: "1" },
    { op: "gap", topic: "t", epoch: "e", offset: 3 },
  ]);
});

test("several objects in one frame each reach their place: the reply, every message and the gap", async (t) => {
  const pod = await fakePod((request, socket) => {
    if (request.op !== "subscribe") return;
    sendFrame(socket, ok(request, { epoch: "aaaaaaaaaa", offset: 0 }), message("room:1", "aaaaaaaaaa", 1), message("room:1", "aaaaaaaaaa", 2));
    socket.send(`\n${JSON.stringify({ op: "gap", topic: "room:1", epoch: "aaaaaaaaaa", offset: 5 })}\n\n${JSON.stringify(message("room:1", "aaaaaaaaaa", 6))}\n`);
  });
  t.after(() => pod.close());
  const herald = new Herald(pod.url, fast);
  t.after(() => herald.close());
  const offsets = [];
  const gaps = [];
  const sub = herald.subscribe("room:1", (msg) => offsets.push(msg.offset));
  sub.on("gap", (gap) => gaps.push(gap));
  await eventually("three messages", () => offsets.length === 3);
  assert.deepEqual(offsets, [1, 2, 6]);
  assert.deepEqual(gaps, [{ epoch: "aaaaaaaaaa", offset: 5 }]);
  assert.deepEqual(sub.position, { epoch: "aaaaaaaaaa", offset: 6 });
});

test("replies are matched to their requests by ref whatever order they come in, and an error reply rejects with its code", async (t) => {
  const held = [];
  const pod = await fakePod((request, socket) => {
    if (request.op !== "publish") return;
    held.push(request);
    if (held.length < 3) return;
    // Answer the last first.
    sendFrame(
      socket,
      { op: "reply", ref: held[2].ref, ok: false, error: { code: "forbidden", message: "not yours" } },
      ok(held[1], { id: "B", offset: 2, epoch: "e" }),
      ok(held[0], { id: "A", offset: 1, epoch: "e" }),
    );
  });
  t.after(() => pod.close());
  const herald = new Herald(pod.url, fast);
  t.after(() => herald.close());
  const first = herald.publish("room:1", { n: 1 });
  const second = herald.publish("room:1", { n: 2 });
  const third = herald.publish("room:2", { n: 3 });
  assert.deepEqual(await first, { id: "A", offset: 1, epoch: "e" });
  assert.deepEqual(await second, { id: "B", offset: 2, epoch: "e" });
  await assert.rejects(third, (error) => error instanceof HeraldError && error.code === "forbidden" && error.message === "not yours");
  assert.equal(new Set(held.map((r) => r.ref)).size, 3);
});

test("an offset already handed over is never handed over again, on the same socket or after a reconnect", async (t) => {
  const E = "eeeeeeeeee";
  const pod = await fakePod((request, socket) => {
    if (request.op !== "subscribe") return;
    if (!request.since) {
      sendFrame(socket, ok(request, { epoch: E, offset: 0 }), message("room:1", E, 1), message("room:1", E, 2), message("room:1", E, 2));
      sendFrame(socket, message("room:1", E, 1), message("room:1", E, 3));
      setTimeout(() => socket.terminate(), 50);
    } else {
      // A replay that overlaps what the client already has.
      sendFrame(socket, ok(request, { epoch: E, offset: 4, recovered: true }), message("room:1", E, 2), message("room:1", E, 3), message("room:1", E, 4));
    }
  });
  t.after(() => pod.close());
  const herald = new Herald(pod.url, fast);
  t.after(() => herald.close());
  const offsets = [];
  const resumes = [];
  const sub = herald.subscribe("room:1", (msg) => offsets.push(msg.offset));
  sub.on("resume", (resume) => resumes.push(resume));
  await eventually("the resume", () => resumes.length === 1 && offsets.at(-1) === 4);
  assert.deepEqual(offsets, [1, 2, 3, 4]);
  assert.deepEqual(pod.sockets[1].requests[0].since, { epoch: E, offset: 3 });
  assert.equal(resumes[0].recovered, true);
});

test("a resume the server cannot recover tells the subscription recovered false and continues from the topic's position", async (t) => {
  const pod = await fakePod((request, socket) => {
    if (request.op !== "subscribe") return;
    if (!request.since) {
      sendFrame(socket, ok(request, { epoch: "oldoldoldo", offset: 7 }), message("room:1", "oldoldoldo", 8));
      setTimeout(() => socket.terminate(), 50);
    } else {
      sendFrame(socket, ok(request, { epoch: "newnewnewn", offset: 2, recovered: false }), message("room:1", "newnewnewn", 3));
    }
  });
  t.after(() => pod.close());
  const herald = new Herald(pod.url, fast);
  t.after(() => herald.close());
  const seen = [];
  const resumes = [];
  herald.subscribe("room:1", (msg) => seen.push(`${msg.epoch}:${msg.offset}`)).on("resume", (r) => resumes.push(r));
  await eventually("the message after the resume", () => seen.length === 2);
  assert.deepEqual(seen, ["oldoldoldo:8", "newnewnewn:3"]);
  assert.deepEqual(resumes, [{ recovered: false, epoch: "newnewnewn", offset: 2 }]);
});

test("a resume position the new pod rejects is retried without since and reported as recovered false", async (t) => {
  const pod = await fakePod((request, socket) => {
    if (request.op !== "subscribe") return;
    if (pod.sockets.length === 1) {
      sendFrame(socket, ok(request, { epoch: "aaaaaaaaaa", offset: 4 }), message("room:1", "aaaaaaaaaa", 5));
      setTimeout(() => socket.terminate(), 50);
    } else if (request.since) {
      sendFrame(socket, { op: "reply", ref: request.ref, ok: false, error: { code: "invalid_position", message: "past the head" } });
    } else {
      sendFrame(socket, ok(request, { epoch: "bbbbbbbbbb", offset: 1 }), message("room:1", "bbbbbbbbbb", 2));
    }
  });
  t.after(() => pod.close());
  const herald = new Herald(pod.url, fast);
  t.after(() => herald.close());
  const seen = [];
  const resumes = [];
  const errors = [];
  const sub = herald.subscribe("room:1", (msg) => seen.push(msg.offset));
  sub.on("resume", (r) => resumes.push(r));
  sub.on("error", (e) => errors.push(e));
  await eventually("the message after the fresh subscribe", () => seen.length === 2);
  assert.deepEqual(seen, [5, 2]);
  assert.deepEqual(resumes, [{ recovered: false, epoch: "bbbbbbbbbb", offset: 1 }]);
  assert.deepEqual(errors, []);
  assert.deepEqual(pod.sockets[1].requests.map((r) => r.since), [{ epoch: "aaaaaaaaaa", offset: 5 }, undefined]);
});

test("a subscription with joinLeave asks for it, hears join, leave and presence_reset, and a new socket is a presence_reset too", async (t) => {
  const entry = { conn: "ab-1", sub: "42", node: "ab", info: { name: "Ada" } };
  const pod = await fakePod((request, socket) => {
    if (request.op === "subscribe") {
      sendFrame(socket, ok(request, { epoch: "aaaaaaaaaa", offset: 0 }));
      if (pod.sockets.length === 1) {
        sendFrame(socket, { op: "join", topic: "room:1", ...entry }, { op: "leave", topic: "room:1", ...entry }, { op: "presence_reset", topic: "room:1" });
        setTimeout(() => socket.terminate(), 50);
      }
    } else if (request.op === "presence") {
      sendFrame(socket, ok(request, { entries: [entry], cursor: request.cursor ? undefined : "ab-1" }));
    } else if (request.op === "presence_stats") {
      sendFrame(socket, ok(request, { connections: 2, users: 1 }));
    }
  });
  t.after(() => pod.close());
  const herald = new Herald(pod.url, fast);
  t.after(() => herald.close());
  const heard = [];
  const sub = herald.subscribe("room:1", () => {}, { joinLeave: true });
  for (const event of ["join", "leave", "presence_reset"]) sub.on(event, (what) => heard.push([event, what]));
  await eventually("two sockets' events", () => heard.length === 4);
  assert.deepEqual(heard, [
    ["join", entry],
    ["leave", entry],
    ["presence_reset", {}],
    ["presence_reset", {}],
  ]);
  assert.equal(pod.sockets[0].requests[0].join_leave, true);
  assert.equal(pod.sockets[1].requests[0].join_leave, true);
  assert.deepEqual(await herald.presence("room:1", { limit: 1 }), { entries: [entry], cursor: "ab-1" });
  const next = await herald.presence("room:1", { cursor: "ab-1" });
  assert.equal(next.cursor, undefined);
  const asked = pod.sockets[1].requests.filter((r) => r.op === "presence");
  assert.deepEqual(asked.map((r) => [r.limit, r.cursor]), [[1, undefined], [undefined, "ab-1"]]);
  assert.deepEqual(await herald.presenceStats("room:1"), { connections: 2, users: 1 });
});

test("a socket that does not answer ping within the timeout is dropped and replaced", async (t) => {
  const pod = await fakePod(); // never answers anything
  t.after(() => pod.close());
  const herald = new Herald(pod.url, { ...fast, pingInterval: 100, pingTimeout: 150 });
  t.after(() => herald.close());
  const reasons = [];
  herald.on("state", (state, { reason }) => state === "disconnected" && reasons.push(reason));
  await eventually("a second socket", () => pod.sockets.length >= 2, 3_000);
  assert.equal(pod.sockets[0].requests[0].op, "ping");
  assert.match(reasons[0], /no pong/);
});

test("requests made while disconnected wait for the next socket, up to maxQueued, then fail with queue_full", async (t) => {
  const pod = await fakePod((request, socket) => {
    if (request.op === "history") sendFrame(socket, ok(request, { epoch: "e", offset: 0, messages: [] }));
  });
  t.after(() => pod.close());
  // The first URL is dead, so the client is disconnected for a backoff.
  const herald = new Herald([await deadUrl(), pod.url], { ...fast, backoffMin: 300, maxQueued: 2 });
  t.after(() => herald.close());
  const waiting = [herald.history("room:1"), herald.history("room:2")];
  await assert.rejects(herald.history("room:3"), { code: "queue_full" });
  const replies = await Promise.all(waiting);
  assert.deepEqual(replies[0], { epoch: "e", offset: 0, recovered: undefined, messages: [] });
  // Both waited requests went out together, in one frame.
  assert.equal(pod.sockets[0].frames.length, 1);
  assert.deepEqual(pod.sockets[0].requests.map((r) => r.topic), ["room:1", "room:2"]);
});

test("a request with no reply within requestTimeout fails with timeout, and close fails the rest with closed", async (t) => {
  const pod = await fakePod();
  t.after(() => pod.close());
  const herald = new Herald(pod.url, { ...fast, requestTimeout: 200 });
  await assert.rejects(herald.publish("room:1", 1), { code: "timeout" });
  const states = [];
  herald.on("state", (state) => states.push(state));
  const pending = herald.publish("room:1", 2);
  herald.close();
  await assert.rejects(pending, { code: "closed" });
  await assert.rejects(herald.publish("room:1", 3), { code: "closed" });
  assert.deepEqual(states, ["closed"]);
});

test("the npm package's version is the crate's, and it has no runtime dependencies", async () => {
  const { readFileSync } = await import("node:fs");
  const { ROOT } = await import("../lib/pods.js");
  const pkg = JSON.parse(readFileSync(`${ROOT}/clients/js/package.json`, "utf8"));
  const crate = /^version = "([^"]+)"/m.exec(readFileSync(`${ROOT}/Cargo.toml`, "utf8"))[1];
  assert.equal(pkg.version, crate);
  assert.equal(pkg.dependencies, undefined);
});
