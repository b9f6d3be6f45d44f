// The reference for `make bench-redis`: what users would otherwise deploy
// for herald's job, Socket.IO with its Redis adapter, written the way its
// documentation shows and kept as small.
//
// One process is one node: a Socket.IO server on --host:--port (WebSocket
// transport only, as herald-bench speaks it) whose rooms are shared with the
// other nodes through @socket.io/redis-adapter on --redis-url.
//
//   subscriber ── "subscribe" topic (acked) ──▶ node: socket.join(topic)
//   publisher ─── "publish" {topic, data} ────▶ node 1: io.to(topic).emit("message", data)
//                                                 │ local room members
//                                                 └─ Redis PUBLISH ─▶ node 2: its room members
//   publisher ─── "flush" (acked) ────────────▶ node 1 answers once every earlier publish was emitted
//
// Usage: node server.js --host 127.0.0.1 --port 23000 --redis-url redis://127.0.0.1:26379

"use strict";

const http = require("node:http");
const { parseArgs } = require("node:util");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { Redis } = require("ioredis");

const { values: args } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "3000" },
    "redis-url": { type: "string", default: "redis://127.0.0.1:6379" },
  },
});

// The adapter needs two connections: one publishes, the other only
// subscribes (a subscribed Redis connection can send nothing else).
const pub = new Redis(args["redis-url"]);
const sub = pub.duplicate();

const httpServer = http.createServer();
const io = new Server(httpServer, {
  // herald-bench's users open a WebSocket at once; no HTTP long-polling.
  transports: ["websocket"],
  serveClient: false,
  adapter: createAdapter(pub, sub),
});

io.on("connection", (socket) => {
  socket.on("subscribe", (topic, ack) => {
    if (typeof topic !== "string") return;
    socket.join(topic);
    if (typeof ack === "function") ack("ok");
  });
  socket.on("publish", (message) => {
    if (!message || typeof message.topic !== "string") return;
    io.to(message.topic).emit("message", message.data);
  });
  socket.on("flush", (ack) => {
    if (typeof ack === "function") ack();
  });
});

// Listen only once both Redis connections are up, so a node that accepts
// users also reaches the other node's.
Promise.all([once(pub, "ready"), once(sub, "ready")]).then(() => {
  httpServer.listen(Number(args.port), args.host, () => {
    console.error(`socket.io node on ${args.host}:${args.port}, Redis ${args["redis-url"]}`);
  });
});

function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, resolve));
}

function stop() {
  io.close();
  pub.disconnect();
  sub.disconnect();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
