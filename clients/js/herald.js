// herald's JavaScript client: one dependency-free ES module for browsers and
// Node 20+, speaking the WebSocket protocol v1 (docs/protocol.md).
//
// A `Herald` owns at most one socket at a time. It connects to the URLs it
// was given in turn, and after every drop it waits a backoff with full jitter
// and tries the next one. Subscriptions live in the client, not the socket:
// each keeps the (epoch, offset) of the last message it handed the
// application, and every new socket subscribes them again with `since` set to
// that position, so a reconnect to any pod replays what was missed. A message
// at or before a subscription's position is never handed over again.
//
//   app ── subscribe/publish/history ──▶ Herald ── one frame, "\n"-joined ──▶ pod
//   app ◀── handler(msg), "resume", "gap" ── Subscription ◀── reply/message/gap/pong ──

/** The defaults of every option (times in milliseconds). */
export const DEFAULTS = Object.freeze({
  /** Backoff base: attempt n waits a random time in [0, min(backoffMax, backoffMin·2ⁿ)]. */
  backoffMin: 500,
  /** Backoff ceiling. */
  backoffMax: 10_000,
  /** How often a connected client sends `ping`. */
  pingInterval: 15_000,
  /** A `ping` not answered within this drops the socket and reconnects. */
  pingTimeout: 5_000,
  /** A request (`publish`, `history`) not answered within this, counted from the call, fails with `timeout`. */
  requestTimeout: 10_000,
  /** Requests made while disconnected wait for the next socket, at most this many; more fail with `queue_full`. */
  maxQueued: 100,
  /** Upgrades refused with 401 in a row before the client gives up (state `closed`). */
  maxRefusals: 3,
});

/** An error the server or the client reports; `code` is the protocol's error code or one of the client's own. */
export class HeraldError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "HeraldError";
    this.code = code;
  }
}

/**
 * The delay before reconnect attempt `attempt` (0 for the first): full jitter,
 * uniformly random in [0, min(max, min·2^attempt)].
 */
export function backoff(attempt, min = DEFAULTS.backoffMin, max = DEFAULTS.backoffMax, random = Math.random) {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return random() * ceiling;
}

/** Splits a frame into its JSON objects; blank lines are skipped. */
export function parseFrame(text) {
  const objects = [];
  for (const line of String(text).split("\n")) {
    if (line.trim() !== "") objects.push(JSON.parse(line));
  }
  return objects;
}

/** A tiny event emitter: `on` returns a function that removes the listener. */
class Emitter {
  #listeners = new Map();

  /** Calls `listener` on every `event`; returns a function that stops it. */
  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  /** Stops `listener`. */
  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  /** @internal */
  emit(event, ...args) {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        listener(...args);
      } catch (error) {
        report(error);
      }
    }
  }
}

// An exception thrown by application code must not break the client, nor be
// swallowed: it surfaces like an uncaught one, on a later turn.
function report(error) {
  setTimeout(() => {
    throw error;
  });
}

/**
 * One topic the application listens to. Events: `resume` ({ recovered,
 * epoch, offset }) after each subscribe with `since` is answered, `gap`
 * ({ epoch, offset }) when the server says messages may be missing, `error`
 * (HeraldError) when the server refuses the subscription. With `joinLeave`:
 * `join` and `leave` (an entry { conn, sub, node, info }) as connections
 * come into and leave the topic, and `presence_reset` ({}) when the picture
 * the application holds may be wrong (the server said so, or the socket was
 * replaced): ask `presence` again.
 */
export class Subscription extends Emitter {
  /** @internal */
  constructor(herald, topic, handler, since, joinLeave) {
    super();
    this.topic = topic;
    /** Whether the subscription asks for join and leave events. */
    this.joinLeave = joinLeave === true;
    // Answered once: every later subscribe reply is on a new socket.
    this.answered = false;
    this.handler = handler;
    /** The (epoch, offset) of the last message handed over, or of the subscribe reply; null before it. */
    this.position = since ? { epoch: since.epoch, offset: since.offset } : null;
    /** Whether the server holds this subscription on the current socket. */
    this.active = false;
    this.herald = herald;
    // Set when a resume had to start over without `since`: that resume is not recovered.
    this.resumeLost = false;
    this.ready = new Promise((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // `ready` is there to be awaited, not required: no unhandled rejection.
    this.ready.catch(() => {});
  }

  /** Stops the subscription; no message is handed over after this. */
  unsubscribe() {
    this.herald.unsubscribeTopic(this);
  }

  /** @internal a message of this topic: handed over unless already seen. */
  deliver(frame) {
    const { epoch, offset } = frame;
    if (this.position && this.position.epoch === epoch && offset <= this.position.offset) return;
    this.position = { epoch, offset };
    const message = { topic: frame.topic, id: frame.id, offset, epoch, data: frame.data };
    try {
      this.handler(message);
    } catch (error) {
      report(error);
    }
  }

  /** @internal a `join`, `leave` or `presence_reset` of this topic. */
  presence(frame) {
    if (!this.joinLeave) return;
    if (frame.op === "presence_reset") {
      this.emit("presence_reset", {});
      return;
    }
    const { conn, sub, node, info } = frame;
    this.emit(frame.op, info === undefined ? { conn, sub, node } : { conn, sub, node, info });
  }

  /** @internal the server's `gap`: continue from its position and tell the application. */
  gap({ epoch, offset }) {
    this.position = { epoch, offset };
    this.emit("gap", { epoch, offset });
  }
}

/**
 * A connection to a herald cluster that survives pods coming and going.
 * Events: `state` (state, { url, reason }) with state "connecting" |
 * "connected" | "disconnected" | "closed"; `error` (HeraldError) for frames
 * the client cannot read.
 */
export class Herald extends Emitter {
  #urls;
  #options;
  #WebSocket;
  #socket = null;
  #state = "disconnected";
  #url = null;
  #next = 0; // index of the next URL to try
  #attempt = 0; // reconnect attempts since the last socket opened
  #refusals = 0; // 401s in a row
  #timer = null; // the pending reconnect or ping
  #ref = 0;
  #pending = new Map(); // ref → { resolve, reject, timer, sub? }
  #queue = []; // requests waiting for a socket
  #subs = new Map(); // topic → Subscription

  /**
   * @param urls one `ws://…/ws` URL or a list, tried in turn
   * @param options `token` (string) or `getToken` (async, called before every connect), `WebSocket`
   *   (the constructor; required where there is no global one, e.g. `ws` in Node 20), and the
   *   tunables in DEFAULTS
   */
  constructor(urls, options = {}) {
    super();
    this.#urls = Array.isArray(urls) ? [...urls] : [urls];
    if (this.#urls.length === 0) throw new HeraldError("invalid_option", "herald: no URL to connect to");
    this.#options = { ...DEFAULTS, ...options };
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new HeraldError("invalid_option", "herald: no WebSocket here; pass one, e.g. { WebSocket } from the ws package");
    }
    this.#connect();
  }

  /** "connecting" | "connected" | "disconnected" | "closed". */
  get state() {
    return this.#state;
  }

  /** The URL of the socket in use, or of the last one tried. */
  get url() {
    return this.#url;
  }

  /**
   * Calls `handler({ topic, id, offset, epoch, data })` for every message of
   * `topic`, across reconnects, each offset once. `options.since` ({ epoch,
   * offset }) starts after a position the application already holds;
   * `options.joinLeave` (true) adds the topic's `join` and `leave` events
   * (the topic must keep presence on the server).
   */
  subscribe(topic, handler, options = {}) {
    if (this.#state === "closed") throw new HeraldError("closed", "herald: the client is closed");
    if (this.#subs.has(topic)) throw new HeraldError("already_subscribed", `herald: already subscribed to ${topic}`);
    const sub = new Subscription(this, topic, handler, options.since, options.joinLeave);
    this.#subs.set(topic, sub);
    if (this.#state === "connected") this.#send([this.#subscribeRequest(sub)]);
    return sub;
  }

  /** Publishes `data` (any JSON value) to `topic`: resolves { id, offset, epoch }. Needs `--client-publish`. */
  async publish(topic, data) {
    const { id, offset, epoch } = await this.#request({ op: "publish", topic, data });
    return { id, offset, epoch };
  }

  /**
   * The topic's position and kept messages: the last `limit`, or the first
   * `limit` after `since`. Resolves { epoch, offset, recovered?, messages }.
   */
  async history(topic, { limit, since } = {}) {
    const reply = await this.#request({ op: "history", topic, limit, since });
    const messages = (reply.messages ?? []).map(({ topic, id, offset, epoch, data }) => ({ topic, id, offset, epoch, data }));
    return { epoch: reply.epoch, offset: reply.offset, recovered: reply.recovered, messages };
  }

  /**
   * Who is in `topic` across the cluster: resolves { entries, cursor } with up
   * to `limit` entries ({ conn, sub, node, info }) after `cursor`; `cursor`
   * is set when more follow.
   */
  async presence(topic, { limit, cursor } = {}) {
    const reply = await this.#request({ op: "presence", topic, limit, cursor });
    return { entries: reply.entries ?? [], cursor: reply.cursor };
  }

  /** How many are in `topic` across the cluster: resolves { connections, users }. */
  async presenceStats(topic) {
    const { connections, users } = await this.#request({ op: "presence_stats", topic });
    return { connections, users };
  }

  /** Closes the socket for good: pending requests fail with `closed`, no reconnect. */
  close() {
    this.#closeWith("closed by the application");
  }

  /** @internal */
  unsubscribeTopic(sub) {
    if (this.#subs.get(sub.topic) !== sub) return;
    this.#subs.delete(sub.topic);
    // Also when its subscribe is still unanswered: the server would hold it.
    if (this.#state === "connected") this.#request({ op: "unsubscribe", topic: sub.topic }).catch(() => {});
    sub.active = false;
  }

  /**
   * Sends a fresh token for the open connection (`token`, or one from
   * `getToken`), so it outlives the current one; resolves with `{ exp }`,
   * when the connection would now close (Unix seconds). The client does this
   * by itself when the server says the token is expiring.
   */
  async refresh(token) {
    const fresh = token ?? (this.#options.getToken ? await this.#options.getToken() : this.#options.token);
    const reply = await this.#request({ op: "refresh", token: fresh });
    return { exp: reply.exp };
  }

  #setState(state, reason) {
    if (state === this.#state && reason === undefined) return;
    this.#state = state;
    this.emit("state", state, { url: this.#url, reason });
  }

  async #connect() {
    this.#timer = null;
    const url = this.#urls[this.#next++ % this.#urls.length];
    this.#url = url;
    this.#setState("connecting");
    let token = this.#options.token;
    if (this.#options.getToken) {
      try {
        token = await this.#options.getToken();
      } catch (error) {
        this.#retry(`getToken failed: ${error?.message ?? error}`);
        return;
      }
    }
    if (this.#state === "closed") return;
    const protocols = token ? ["herald.v1", `bearer.${token}`] : ["herald.v1"];
    let socket;
    try {
      socket = new this.#WebSocket(url, protocols);
    } catch (error) {
      this.#retry(`cannot open ${url}: ${error?.message ?? error}`);
      return;
    }
    this.#socket = socket;
    let opened = false;
    let status = 0; // the HTTP status of a refused upgrade, where it can be seen
    socket.onopen = () => {
      opened = true;
      this.#opened();
    };
    socket.onmessage = (event) => this.#receive(event.data);
    socket.onerror = (event) => {
      // Node's `ws` says "Unexpected server response: 401"; a browser shows
      // no status at all (see README: "Refused upgrades").
      const match = /server response: (\d{3})/.exec(event?.message ?? "");
      if (match) status = Number(match[1]);
    };
    socket.onclose = (event) => {
      if (this.#socket !== socket) return;
      if (opened) this.#dropped(`closed with ${event.code}${event.reason ? ` (${event.reason})` : ""}`);
      else this.#refused(status);
    };
  }

  // The socket is up: subscribe everything again, then send what waited.
  #opened() {
    this.#attempt = 0;
    this.#refusals = 0;
    this.#setState("connected");
    const requests = [...this.#subs.values()].map((sub) => this.#subscribeRequest(sub));
    for (const queued of this.#queue.splice(0)) {
      this.#pending.set(queued.request.ref, queued);
      requests.push(queued.request);
    }
    this.#send(requests);
    this.#schedulePing();
  }

  #refused(status) {
    this.#socket = null;
    if (status === 401) {
      this.#refusals += 1;
      if (this.#refusals >= this.#options.maxRefusals) {
        this.#closeWith(`unauthorized: ${this.#refusals} upgrades refused with 401 in a row`);
        return;
      }
      this.#retry("unauthorized (401): asking for a new token");
    } else if (status === 403) {
      this.#closeWith("forbidden (403): this page's origin is not allowed");
    } else {
      this.#retry(status ? `upgrade refused with ${status}` : `cannot connect to ${this.#url}`);
    }
  }

  // An open socket ended: every request on it fails (a publish may or may
  // not have happened), and a new socket is made after a backoff.
  #dropped(reason) {
    const socket = this.#socket;
    this.#socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onerror = socket.onclose = null;
      // A dead peer never answers a close handshake; do not wait for one.
      try {
        socket.close();
      } catch {}
    }
    for (const sub of this.#subs.values()) sub.active = false;
    this.#failPending("disconnected", `herald: the connection dropped (${reason}) before the reply`);
    this.#retry(reason);
  }

  #retry(reason) {
    if (this.#state === "closed") return;
    clearTimeout(this.#timer);
    this.#setState("disconnected", reason);
    const delay = backoff(this.#attempt++, this.#options.backoffMin, this.#options.backoffMax);
    this.#timer = setTimeout(() => this.#connect(), delay);
  }

  #closeWith(reason) {
    if (this.#state === "closed") return;
    clearTimeout(this.#timer);
    const socket = this.#socket;
    this.#socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onerror = socket.onclose = null;
      try {
        socket.close(1000);
      } catch {}
    }
    this.#setState("closed", reason);
    this.#failPending("closed", `herald: the client is closed (${reason})`);
    for (const queued of this.#queue.splice(0)) {
      clearTimeout(queued.timer);
      queued.reject(new HeraldError("closed", `herald: the client is closed (${reason})`));
    }
  }

  #failPending(code, message) {
    for (const [ref, pending] of this.#pending) {
      this.#pending.delete(ref);
      clearTimeout(pending.timer);
      if (!pending.sub) pending.reject(new HeraldError(code, message));
    }
  }

  #schedulePing() {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      const socket = this.#socket;
      this.#request({ op: "ping" }, this.#options.pingTimeout).then(
        () => this.#schedulePing(),
        (error) => {
          if (error.code === "timeout" && this.#socket === socket) this.#dropped("no pong within pingTimeout");
        },
      );
    }, this.#options.pingInterval);
  }

  // A request with a fresh ref; it waits in the queue while disconnected.
  #request(fields, timeout = this.#options.requestTimeout) {
    if (this.#state === "closed") return Promise.reject(new HeraldError("closed", "herald: the client is closed"));
    return new Promise((resolve, reject) => {
      const request = { ...fields, ref: String(++this.#ref) };
      const entry = { request, resolve, reject, timer: null };
      entry.timer = setTimeout(() => {
        this.#pending.delete(request.ref);
        const waiting = this.#queue.indexOf(entry);
        if (waiting >= 0) this.#queue.splice(waiting, 1);
        reject(new HeraldError("timeout", `herald: no reply to ${fields.op} within ${timeout} ms`));
      }, timeout);
      if (this.#state === "connected") {
        this.#pending.set(request.ref, entry);
        this.#send([request]);
      } else if (this.#queue.length < this.#options.maxQueued) {
        this.#queue.push(entry);
      } else {
        clearTimeout(entry.timer);
        reject(new HeraldError("queue_full", `herald: disconnected, and ${this.#options.maxQueued} requests already wait`));
      }
    });
  }

  #subscribeRequest(sub) {
    const request = { op: "subscribe", topic: sub.topic, ref: String(++this.#ref) };
    if (sub.position) request.since = sub.position;
    if (sub.joinLeave) request.join_leave = true;
    this.#pending.set(request.ref, { request, sub, timer: null });
    return request;
  }

  #send(requests) {
    if (requests.length === 0) return;
    this.#socket.send(requests.map((r) => JSON.stringify(r)).join("\n"));
  }

  #receive(data) {
    let frames;
    try {
      frames = parseFrame(data);
    } catch (error) {
      this.emit("error", new HeraldError("invalid_json", `herald: unreadable frame: ${error.message}`));
      return;
    }
    for (const frame of frames) {
      switch (frame.op) {
        case "message":
          this.#subs.get(frame.topic)?.deliver(frame);
          break;
        case "gap":
          this.#subs.get(frame.topic)?.gap(frame);
          break;
        case "join":
        case "leave":
        case "presence_reset":
          this.#subs.get(frame.topic)?.presence(frame);
          break;
        case "expiring":
          // The server closes with 4001 at frame.exp unless a fresh token
          // comes first; with a fixed `token` there is none to send.
          if (this.#options.getToken) this.refresh().catch((error) => this.emit("error", error));
          break;
        case "unsubscribed": {
          // A refreshed token no longer allows the topic.
          const sub = this.#subs.get(frame.topic);
          if (sub) {
            this.#subs.delete(frame.topic);
            sub.active = false;
            sub.emit("unsubscribed", { reason: frame.reason });
          }
          break;
        }
        case "reply":
        case "pong":
          this.#answer(frame);
          break;
        default: // a newer server's frame: ignored, as the protocol asks
      }
    }
  }

  #answer(frame) {
    const pending = this.#pending.get(frame.ref);
    if (!pending) return;
    this.#pending.delete(frame.ref);
    clearTimeout(pending.timer);
    if (pending.sub) {
      this.#subscribed(pending.sub, pending.request, frame);
    } else if (frame.op === "pong" || frame.ok) {
      pending.resolve(frame);
    } else {
      pending.reject(new HeraldError(frame.error?.code ?? "unknown", frame.error?.message));
    }
  }

  // The answer to a subscribe this socket sent for `sub`.
  #subscribed(sub, request, reply) {
    if (this.#subs.get(sub.topic) !== sub) return; // unsubscribed meanwhile
    if (!reply.ok) {
      const code = reply.error?.code;
      if (code === "invalid_position" && request.since) {
        // The position means nothing here (e.g. past this pod's head after
        // a sequencer died): start over from the topic's position now.
        sub.position = null;
        this.#send([this.#subscribeRequest(sub)]);
        sub.resumeLost = true;
        return;
      }
      this.#subs.delete(sub.topic);
      const error = new HeraldError(code ?? "unknown", reply.error?.message);
      sub.settle.reject(error);
      sub.emit("error", error);
      return;
    }
    sub.active = true;
    // On a new socket, events of the time between were never sent.
    if (sub.answered && sub.joinLeave) sub.emit("presence_reset", {});
    sub.answered = true;
    const head = { epoch: reply.epoch, offset: reply.offset };
    const recovered = request.since ? reply.recovered === true : !sub.resumeLost;
    // Recovered: the replay after our position follows. Otherwise go on
    // from the topic's position now.
    if (!request.since || !recovered) sub.position = head;
    sub.settle.resolve(head);
    if (request.since || sub.resumeLost) {
      sub.resumeLost = false;
      sub.emit("resume", { recovered, ...head });
    }
  }
}
