// A scripted stand-in for a pod: a real WebSocket server (the `ws` package)
// on 127.0.0.1 whose answers each test writes, for what a real pod does only
// under conditions a test cannot cause at will (replies out of order, a
// repeated offset, a pong that never comes).

import { WebSocketServer } from "ws";

/**
 * Starts a server; `onRequest(request, socket)` sees every object a client
 * sends. Resolves { url, sockets, close() }; `sockets` are the connections so
 * far, each with `.requests` (every object it received).
 */
export async function fakePod(onRequest = () => {}) {
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: (offered) => (offered.has("herald.v1") ? "herald.v1" : false) });
  await new Promise((resolve) => server.once("listening", resolve));
  const sockets = [];
  server.on("connection", (socket) => {
    socket.requests = [];
    socket.frames = [];
    sockets.push(socket);
    socket.on("message", (data) => {
      const text = data.toString();
      socket.frames.push(text);
      for (const line of text.split("\n").filter(Boolean)) {
        const request = JSON.parse(line);
        socket.requests.push(request);
        onRequest(request, socket);
      }
    });
  });
  return {
    url: `ws://127.0.0.1:${server.address().port}/ws`,
    sockets,
    close: () =>
      new Promise((resolve) => {
        for (const socket of server.clients) socket.terminate();
        server.close(resolve);
      }),
  };
}

/** Sends `objects` to `socket` as one frame, newline-separated. */
export function sendFrame(socket, ...objects) {
  socket.send(objects.map((o) => JSON.stringify(o)).join("\n"));
}

/** A `message` frame object. */
export const message = (topic, epoch, offset, data = { n: offset }) => ({
  op: "message",
  topic,
  id: `01JD3R6Q4M${String(offset).padStart(16, "0")}`,
  offset,
  epoch,
  data,
});
