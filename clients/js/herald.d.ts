// Type declarations of herald.js, the herald WebSocket protocol v1 client.

/** A topic's place: the epoch and the last offset in it. */
export interface Position {
  epoch: string;
  offset: number;
}

/** A message as the application receives it. */
export interface Message<T = unknown> extends Position {
  topic: string;
  /** A 26-character ULID, unique across the cluster. */
  id: string;
  /** The JSON value that was published. */
  data: T;
}

/** What `publish` resolves with. */
export interface Receipt extends Position {
  id: string;
}

/** What `history` resolves with. */
export interface History<T = unknown> extends Position {
  /** Set when `since` was given: whether every message after it is still kept. */
  recovered?: boolean;
  messages: Message<T>[];
}

/** One connection in a topic that keeps presence. */
export interface PresenceEntry<I = unknown> {
  /** The connection's id, unique in the cluster. */
  conn: string;
  /** Its user (`sub`); null on a server without auth. */
  sub: string | null;
  /** The node id of the pod holding the connection. */
  node: string;
  /** The user's info from their token, when the server is configured for it. */
  info?: I;
}

/** A page of a topic's presence. */
export interface PresencePage<I = unknown> {
  entries: PresenceEntry<I>[];
  /** Set when more follow: pass it back as `cursor` for the next page. */
  cursor?: string;
}

/** A subscribe with `since` was answered. */
export interface Resume extends Position {
  /** false: some messages after the subscription's position are gone; reload your state. */
  recovered: boolean;
}

export type State = "connecting" | "connected" | "disconnected" | "closed";

/** Why the state changed. */
export interface StateInfo {
  /** The URL in use, or the one last tried. */
  url: string | null;
  /** Why the socket dropped, the connect failed, or the client closed. */
  reason?: string;
}

/** The smallest WebSocket the client needs: the browser's, or Node's `ws`. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
}

export interface Options {
  /** A JWT, offered as the subprotocol `bearer.<token>`. */
  token?: string;
  /** Called before every (re)connect; its result replaces `token`. */
  getToken?: () => string | undefined | Promise<string | undefined>;
  /** The WebSocket constructor; required where there is no global one (Node 20: `ws`). */
  WebSocket?: new (url: string, protocols: string[]) => WebSocketLike;
  /** Backoff base in ms (default 500): attempt n waits a random time in [0, min(backoffMax, backoffMin·2ⁿ)]. */
  backoffMin?: number;
  /** Backoff ceiling in ms (default 10,000). */
  backoffMax?: number;
  /** How often to send `ping`, in ms (default 15,000). */
  pingInterval?: number;
  /** A `ping` unanswered for this long drops the socket, in ms (default 5,000). */
  pingTimeout?: number;
  /** A request unanswered for this long, counted from the call, fails with `timeout` (default 10,000 ms). */
  requestTimeout?: number;
  /** Requests that may wait while disconnected (default 100); more fail with `queue_full`. */
  maxQueued?: number;
  /** 401 refusals in a row before the state becomes `closed` (default 3; only where the status is visible, see README). */
  maxRefusals?: number;
}

export declare const DEFAULTS: Readonly<Required<Omit<Options, "token" | "getToken" | "WebSocket">>>;

/**
 * An error from the server (`code` is the protocol's error code) or from the
 * client: `timeout`, `disconnected`, `queue_full`, `closed`,
 * `already_subscribed`, `invalid_option`.
 */
export declare class HeraldError extends Error {
  readonly code: string;
  constructor(code: string, message?: string);
}

/** The delay before reconnect attempt `attempt` (0 for the first), in ms. */
export declare function backoff(attempt: number, min?: number, max?: number, random?: () => number): number;

/** The JSON objects of one frame (newline-separated; blank lines skipped). */
export declare function parseFrame(text: string): unknown[];

export declare class Subscription<T = unknown> {
  readonly topic: string;
  /** The last message handed over, or the subscribe reply's position; null before it. */
  readonly position: Position | null;
  /** Whether the server holds the subscription on the current socket. */
  readonly active: boolean;
  /** Resolves with the topic's position when first subscribed; rejects with a HeraldError if refused. */
  readonly ready: Promise<Position>;
  on(event: "resume", listener: (resume: Resume) => void): () => void;
  on(event: "gap", listener: (gap: Position) => void): () => void;
  /** A refreshed token no longer allows this topic: the subscription has ended. */
  on(event: "unsubscribed", listener: (info: { reason: string }) => void): () => void;
  on(event: "error", listener: (error: HeraldError) => void): () => void;
  /** With `joinLeave`: a connection came into the topic (never this one). */
  on(event: "join", listener: (entry: PresenceEntry) => void): () => void;
  /** With `joinLeave`: a connection left the topic. */
  on(event: "leave", listener: (entry: PresenceEntry) => void): () => void;
  /** With `joinLeave`: the picture held of the topic may be wrong (too many changes, a slow reader, a new socket); ask `presence` again. */
  on(event: "presence_reset", listener: (info: Record<string, never>) => void): () => void;
  off(event: string, listener: (...args: any[]) => void): void;
  unsubscribe(): void;
}

export declare class Herald {
  constructor(urls: string | string[], options?: Options);
  readonly state: State;
  readonly url: string | null;
  on(event: "state", listener: (state: State, info: StateInfo) => void): () => void;
  on(event: "error", listener: (error: HeraldError) => void): () => void;
  off(event: string, listener: (...args: any[]) => void): void;
  subscribe<T = unknown>(topic: string, handler: (message: Message<T>) => void, options?: { since?: Position; joinLeave?: boolean }): Subscription<T>;
  publish(topic: string, data: unknown): Promise<Receipt>;
  history<T = unknown>(topic: string, options?: { limit?: number; since?: Position }): Promise<History<T>>;
  /** Who is in `topic` across the cluster: up to `limit` (1 to 1,000, default 100) entries after `cursor`. */
  presence<I = unknown>(topic: string, options?: { limit?: number; cursor?: string }): Promise<PresencePage<I>>;
  /** How many connections and distinct users are in `topic` across the cluster. */
  presenceStats(topic: string): Promise<{ connections: number; users: number }>;
  /** Sends a fresh token (`token`, or one from `getToken`) so the connection outlives the current one; done by itself when the server says the token expires soon. */
  refresh(token?: string): Promise<{ exp: number }>;
  close(): void;
}
