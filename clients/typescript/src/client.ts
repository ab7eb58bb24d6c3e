/**
 * The client: one WebSocket to a gateway at a time, requests matched to answers by id,
 * subscriptions that survive reconnects, and tokens refreshed before they lapse.
 *
 * ```text
 *   idle ─connect()─▶ connecting ─open+auth+resubscribe─▶ connected
 *                         ▲  │ fail                          │ lost (not 4403)
 *                         │  ▼                               ▼
 *                     reconnecting ◀── backoff (full jitter), next URL, fresh token on 4401
 *   any ─close(), 4403, connect() timeout─▶ closed
 * ```
 *
 * Requests made while no connection is up wait for one, until their own timeout: nothing
 * waits longer than `requestTimeoutMs`, and at most `maxPending` requests wait or fly at once
 * (past that a request fails at once with `too_many_pending`). A publish in flight when the
 * connection drops fails with `connection_closed` (its outcome is unknown); history and
 * presence reads are sent again on the next connection.
 */

import { Backoff, type ReconnectOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import {
  ConnectionClosedError,
  FiretowerError,
  TimeoutError,
  UnauthorizedError,
  errorFor,
} from "./errors.js";
import {
  SUBPROTOCOL,
  advance,
  parseServerFrame,
  type AckFrame,
  type ClientFrame,
  type Message,
  type Position,
  type PresenceUser,
  type ServerFrame,
} from "./protocol.js";
import { DEFAULT_REFRESH_BEFORE_MS, refreshDelay, tokenExpiry } from "./token.js";

/** Default deadline of one request (publish, subscribe, history, presence), waiting included. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
/** Default time `connect()` keeps trying before it gives up. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;
/** Default ping interval: below the 60 s after which a gateway pings a silent client, and
 * often enough to notice a dead path (no FIN, no RST) within a minute. */
export const DEFAULT_PING_INTERVAL_MS = 25_000;
/** Default bound on requests waiting or in flight. */
export const DEFAULT_MAX_PENDING = 1_000;
/** A resubscribe frame stays well below the gateway's 64 KiB frame limit. */
const MAX_SUBSCRIBE_FRAME_BYTES = 32 * 1024;

/** The WebSocket interface the client uses: the browser's, Node 22's, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onopen: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onmessage: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onclose: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onerror: ((event: any) => void) | null;
}

/** A WebSocket class: `new WebSocket(url, protocols)`. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** A token, or a function that fetches one (called on every connect). */
export type TokenSource = string | (() => string | Promise<string>);

/** The client's settings. */
export interface FiretowerClientOptions {
  /** The gateway's WebSocket URL, e.g. `wss://gateway.example.com/ws`. */
  url?: string;
  /**
   * Several gateways' URLs: the client uses one at a time and moves to the next after a
   * failed attempt or a lost connection. Given with `url`, `url` comes first.
   */
  urls?: string[];
  /** The JWT, or a function returning one. Absent: connect anonymously. */
  token?: TokenSource;
  /**
   * Fetch a new token: called `refreshBeforeMs` before the current one's `exp` (sent on the
   * live connection as an `auth` frame) and after a 4401 close. Defaults to `token` when
   * that is a function.
   */
  refreshToken?: () => string | Promise<string>;
  /** How long before `exp` to refresh (never later than half the remaining lifetime). Default 30 s. */
  refreshBeforeMs?: number;
  /** Backoff between reconnects; `false`: do not reconnect. */
  reconnect?: ReconnectOptions | false;
  /** Deadline of each request, time spent waiting for a connection included. Default 10 s. */
  requestTimeoutMs?: number;
  /** How long `connect()` keeps trying. Default 30 s. */
  connectTimeoutMs?: number;
  /** Ping the gateway this often and drop the connection if no pong comes. 0: never. Default 25 s. */
  pingIntervalMs?: number;
  /** Most requests waiting or in flight at once. Default 1,000. */
  maxPending?: number;
  /** The WebSocket class; default `globalThis.WebSocket` (browsers, Node 22+). */
  WebSocket?: WebSocketConstructor;
}

/** Where the client is. */
export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

/** What a subscription learns when it is subscribed again after a reconnect. */
export interface RecoveredEvent {
  topic: string;
  /**
   * `true`: every message published while the client was away follows (from the topic's
   * history), in order and without duplicates. `false`: some may be lost for good (no
   * history, the window passed, the epoch changed); refetch the state from the application.
   */
  recovered: boolean;
  /** The position sent in `recover`, if any. */
  from?: Position;
}

/** The gateway dropped messages for this (slow) connection. */
export interface GapEvent {
  topic: string;
  dropped: number;
}

/** A user's first connection subscribed (`join`) or its last one left (`leave`). */
export interface PresenceEvent {
  topic: string;
  user: string;
}

/** Handlers and settings of one subscription. */
export interface SubscribeOptions<T = unknown> {
  /** Each new message of the topic, in order, duplicates removed. */
  onMessage: (message: Message<T>) => void;
  /** The gateway dropped messages for this connection (it was too slow to read them). */
  onGap?: (event: GapEvent) => void;
  /** With `joinLeave`: a user joined. */
  onJoin?: (event: PresenceEvent) => void;
  /** With `joinLeave`: a user left. */
  onLeave?: (event: PresenceEvent) => void;
  /** After each resubscribe (and after a first subscribe with `since`). */
  onRecovered?: (event: RecoveredEvent) => void;
  /** The subscription ended without `unsubscribe()`: a resubscribe was refused. */
  onError?: (error: FiretowerError) => void;
  /** Ask for missed messages on resubscribe (topics with history). Default true. */
  recover?: boolean;
  /** Also deliver join and leave events (topics with presence). Default false. */
  joinLeave?: boolean;
  /**
   * Start from this position (e.g. the `epoch`/`offset` of a `history()` answer, or one the
   * application stored): the messages after it follow the ack, if the history still has them.
   */
  since?: Position;
}

/** A publish's acknowledgement: where the topic's leader ordered the message. */
export interface PublishAck {
  term: number;
  seq: number;
  /** Topics with history only. */
  offset?: number;
  epoch?: string;
}

/** A history read: the newest kept messages, oldest first. */
export interface HistoryResult<T = unknown> {
  topic: string;
  epoch: string;
  /** The latest offset of the topic (0 if none): subscribe with `since` this to follow on. */
  offset: number;
  messages: Message<T>[];
}

/** Who is on a topic now. */
export interface PresenceResult {
  topic: string;
  users: PresenceUser[];
}

/** The client's events. */
export interface ClientEvents {
  /** The connection state changed. */
  state: (state: ConnectionState, previous: ConnectionState) => void;
  /** A connection is up, authenticated, and every subscription is subscribed again. */
  connected: (info: { url: string; user: string | undefined }) => void;
  /** The connection was lost; `reconnectInMs` is undefined when the client will not retry. */
  disconnected: (info: { url: string; code: number; reason: string; error: FiretowerError; reconnectInMs: number | undefined }) => void;
  /** Something failed that no promise reports: a token refresh, a dropped subscription, a handler. */
  error: (error: FiretowerError) => void;
  /** Per topic after a resubscribe: see {@link RecoveredEvent}. */
  recovered: (event: RecoveredEvent) => void;
  /** A new token is in use (connect or refresh). */
  token: (info: { expiresAt: number | undefined }) => void;
}

type Timer = ReturnType<typeof setTimeout>;

interface Pending {
  frame: ClientFrame;
  resolve: (frame: ServerFrame) => void;
  reject: (error: FiretowerError) => void;
  timer: Timer | undefined;
  /** The connection it was sent on; undefined while it waits for one. */
  sentOn: Connection | undefined;
  /** Sent again after a reconnect (reads); otherwise failed when its connection drops. */
  retryable: boolean;
  /** The client's own frames (auth, resubscribe, ping): bound to one connection, not counted. */
  internal: boolean;
}

interface Connection {
  ws: WebSocketLike;
  url: string;
  /** Authenticated: requests may go out. */
  ready: boolean;
  closed: boolean;
  user: string | undefined;
  /** The last error frame without id: it explains the close that follows. */
  lastServerError: { code: string; message: string } | undefined;
  /** Gives up on an attempt that does not get ready in time. */
  openTimer: Timer | undefined;
  /** The next ping. */
  pingTimer: Timer | undefined;
}

interface TopicEntry {
  topic: string;
  options: SubscribeOptions<unknown>;
  subscription: Subscription;
  position: Position | undefined;
  /** Acked on some connection at least once (the user's `subscribe()` resolved). */
  everAcked: boolean;
  /** The connection a subscribe for it was sent on. */
  sentOn: Connection | undefined;
  /** The position that subscribe asked to recover from. */
  asked: Position | undefined;
  /** While the user's `subscribe()` waits. */
  first: { resolve: () => void; reject: (e: FiretowerError) => void; timer: Timer } | undefined;
}

/**
 * A Firetower client.
 *
 * ```ts
 * const client = new FiretowerClient({ url: "wss://gw.example.com/ws", token: fetchToken });
 * await client.connect();
 * const sub = await client.subscribe("room.1", { onMessage: (m) => render(m.data) });
 * await client.publish("room.1", { text: "hi" });
 * ```
 */
export class FiretowerClient extends Emitter<ClientEvents> {
  private readonly urls: string[];
  private readonly WS: WebSocketConstructor | undefined;
  private readonly tokenSource: TokenSource | undefined;
  private readonly refreshSource: (() => string | Promise<string>) | undefined;
  private readonly refreshBeforeMs: number;
  private readonly reconnecting: boolean;
  private readonly backoff: Backoff;
  private readonly requestTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly pingIntervalMs: number;
  private readonly maxPending: number;

  private currentState: ConnectionState = "idle";
  private conn: Connection | undefined;
  private urlIndex = 0;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private userPending = 0;
  private readonly topics = new Map<string, TopicEntry>();
  private token: string | undefined;
  /** A 4401 or an expired token: fetch a new one before the next auth. */
  private needFreshToken = false;
  /** 4401 closes since the last accepted token: the first reconnects at once. */
  private unauthorizedCloses = 0;
  private everConnected = false;
  private reconnectTimer: Timer | undefined;
  private refreshTimer: Timer | undefined;
  private stableTimer: Timer | undefined;
  private connectTimer: Timer | undefined;
  private connectWaiters: { resolve: () => void; reject: (e: FiretowerError) => void }[] = [];
  private lastError: FiretowerError | undefined;
  private reportingHandlerError = false;

  constructor(options: FiretowerClientOptions) {
    super();
    this.urls = [...(options.url !== undefined ? [options.url] : []), ...(options.urls ?? [])];
    if (this.urls.length === 0) {
      throw new FiretowerError("invalid_field", "FiretowerClient needs `url` or `urls`");
    }
    this.WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.tokenSource = options.token;
    this.refreshSource =
      options.refreshToken ?? (typeof options.token === "function" ? options.token : undefined);
    this.refreshBeforeMs = options.refreshBeforeMs ?? DEFAULT_REFRESH_BEFORE_MS;
    this.reconnecting = options.reconnect !== false;
    this.backoff = new Backoff(options.reconnect === false ? {} : options.reconnect);
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.pingIntervalMs = options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS;
    this.maxPending = options.maxPending ?? DEFAULT_MAX_PENDING;
  }

  /** Where the client is. */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** The user the gateway authenticated, once connected with a token. */
  get user(): string | undefined {
    return this.conn?.user;
  }

  /** The URL of the current (or next) connection. */
  get url(): string {
    return this.urls[this.urlIndex] as string;
  }

  /**
   * Connect. Resolves once a connection is up, authenticated and resubscribed. Transient
   * failures are retried with backoff for `connectTimeoutMs`; it rejects after that, or at
   * once on a refusal that retrying cannot fix (4403), and the client is closed then.
   */
  connect(): Promise<void> {
    if (this.currentState === "closed") {
      return Promise.reject(closedError());
    }
    if (this.currentState === "connected") {
      return Promise.resolve();
    }
    const waiting = new Promise<void>((resolve, reject) => {
      this.connectWaiters.push({ resolve, reject });
    });
    if (this.currentState === "idle") {
      if (this.WS === undefined) {
        const e = new FiretowerError(
          "no_websocket",
          "no WebSocket implementation: on Node before 22 pass one, e.g. `import WebSocket from \"ws\"` and `new FiretowerClient({ WebSocket, ... })`",
        );
        this.fail(e);
        return waiting;
      }
      this.connectTimer = setTimeout(() => {
        if (!this.everConnected) {
          const last = this.lastError ? `: ${this.lastError.message}` : "";
          this.fail(
            new TimeoutError("timeout", `no connection to ${this.urls.join(", ")} within ${this.connectTimeoutMs} ms${last}`, {
              cause: this.lastError,
            }),
          );
        }
      }, this.connectTimeoutMs);
      this.startAttempt();
    }
    return waiting;
  }

  /**
   * Subscribe to `topic`. Resolves once the subscription is committed in the cluster: every
   * message published after that reaches `onMessage`. One subscription per topic per client.
   */
  subscribe<T = unknown>(topic: string, options: SubscribeOptions<T>): Promise<Subscription> {
    const refused = this.refusal();
    if (refused !== undefined) {
      return Promise.reject(refused);
    }
    if (this.topics.has(topic)) {
      return Promise.reject(
        new FiretowerError("already_subscribed", `this client already subscribes to ${JSON.stringify(topic)}; unsubscribe first or share the subscription`),
      );
    }
    const subscription = new Subscription(topic, this);
    const entry: TopicEntry = {
      topic,
      options: options as SubscribeOptions<unknown>,
      subscription: subscription as Subscription,
      position: options.since,
      everAcked: false,
      sentOn: undefined,
      asked: undefined,
      first: undefined,
    };
    const acked = new Promise<Subscription>((resolve, reject) => {
      entry.first = {
        resolve: () => resolve(subscription),
        reject,
        timer: setTimeout(() => {
          if (this.topics.get(topic) === entry) {
            this.dropTopic(entry, true);
          }
          reject(new TimeoutError("timeout", `subscribe to ${JSON.stringify(topic)} not acknowledged within ${this.requestTimeoutMs} ms`));
        }, this.requestTimeoutMs),
      };
    });
    this.topics.set(topic, entry);
    const conn = this.conn;
    if (conn?.ready) {
      void this.subscribeOn(conn, [entry]);
    }
    return acked;
  }

  /** Publish `data` (any JSON value) to `topic`; resolves with the leader's stamp. */
  async publish(topic: string, data: unknown): Promise<PublishAck> {
    if (data === undefined) {
      throw new FiretowerError("invalid_field", "publish needs data: any JSON value (null included), not undefined");
    }
    const ack = (await this.call({ op: "publish", topic, data, id: 0 }, false)) as AckFrame;
    const out: PublishAck = { term: ack.term ?? 0, seq: ack.seq ?? 0 };
    if (typeof ack.offset === "number" && typeof ack.epoch === "string") {
      out.offset = ack.offset;
      out.epoch = ack.epoch;
    }
    return out;
  }

  /** The newest kept messages of a topic with history (`no_history` otherwise), oldest first. */
  async history<T = unknown>(topic: string, options: { limit?: number } = {}): Promise<HistoryResult<T>> {
    const frame: ClientFrame =
      options.limit === undefined ? { op: "history", topic, id: 0 } : { op: "history", topic, limit: options.limit, id: 0 };
    const reply = await this.call(frame, true);
    if (reply.op !== "history") {
      throw unexpected(reply, "history");
    }
    return { topic: reply.topic, epoch: reply.epoch, offset: reply.offset, messages: reply.messages as Message<T>[] };
  }

  /** Who is on a topic with presence (`presence_disabled` otherwise). */
  async presence(topic: string): Promise<PresenceResult> {
    const reply = await this.call({ op: "presence", topic, id: 0 }, true);
    if (reply.op !== "presence") {
      throw unexpected(reply, "presence");
    }
    return { topic: reply.topic, users: reply.users };
  }

  /** Round trip to the gateway; resolves with the time it took, in milliseconds. */
  async ping(): Promise<number> {
    const started = Date.now();
    await this.call({ op: "ping", id: 0 }, true);
    return Date.now() - started;
  }

  /** Close for good: pending requests fail with `client_closed`, no reconnect. */
  close(): void {
    this.fail(closedError(), false);
  }

  // ---- requests -------------------------------------------------------------------------

  /** The error a new request gets at once, if any. */
  private refusal(): FiretowerError | undefined {
    if (this.currentState === "closed") {
      return closedError();
    }
    if (this.currentState === "idle") {
      return new FiretowerError("not_connected", "call connect() first");
    }
    return undefined;
  }

  /** A user request: waits for a connection (within its timeout), then for its answer. */
  private call(frame: ClientFrame, retryable: boolean): Promise<ServerFrame> {
    const refused = this.refusal();
    if (refused !== undefined) {
      return Promise.reject(refused);
    }
    if (this.userPending >= this.maxPending) {
      return Promise.reject(
        new FiretowerError("too_many_pending", `${this.maxPending} requests are already waiting or in flight (maxPending); wait for some to finish`),
      );
    }
    const id = this.nextId++;
    frame.id = id;
    this.userPending++;
    return new Promise<ServerFrame>((resolve, reject) => {
      const p: Pending = { frame, resolve, reject, timer: undefined, sentOn: undefined, retryable, internal: false };
      p.timer = setTimeout(() => {
        this.settle(id);
        const where = p.sentOn ? "no answer" : "no connection";
        reject(
          new TimeoutError(
            "timeout",
            `${frame.op}: ${where} within ${this.requestTimeoutMs} ms${frame.op === "publish" && p.sentOn ? "; the outcome is unknown" : ""}`,
          ),
        );
      }, this.requestTimeoutMs);
      this.pending.set(id, p);
      if (this.conn?.ready) {
        this.send(this.conn, p);
      }
    });
  }

  /** One of the client's own requests on `conn`; fails when `conn` closes. */
  private callOn(conn: Connection, frame: ClientFrame): Promise<ServerFrame> {
    const id = this.nextId++;
    frame.id = id;
    return new Promise<ServerFrame>((resolve, reject) => {
      const p: Pending = { frame, resolve, reject, timer: undefined, sentOn: undefined, retryable: false, internal: true };
      p.timer = setTimeout(() => {
        this.settle(id);
        reject(new TimeoutError("timeout", `${frame.op}: no answer within ${this.requestTimeoutMs} ms`));
      }, this.requestTimeoutMs);
      this.pending.set(id, p);
      this.send(conn, p);
    });
  }

  private send(conn: Connection, p: Pending): void {
    p.sentOn = conn;
    try {
      conn.ws.send(JSON.stringify(p.frame));
    } catch {
      // The socket is closing; its close event settles the request.
    }
  }

  /** Forget request `id`; the caller settles its promise. */
  private settle(id: number): Pending | undefined {
    const p = this.pending.get(id);
    if (p === undefined) {
      return undefined;
    }
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (!p.internal) {
      this.userPending--;
    }
    return p;
  }

  // ---- connections ----------------------------------------------------------------------

  private setState(state: ConnectionState): void {
    const previous = this.currentState;
    if (previous !== state) {
      this.currentState = state;
      this.emit("state", state, previous);
    }
  }

  private startAttempt(): void {
    this.reconnectTimer = undefined;
    if (this.currentState === "closed" || this.WS === undefined) {
      return;
    }
    this.setState(this.everConnected ? "reconnecting" : "connecting");
    const url = this.url;
    let ws: WebSocketLike;
    try {
      ws = new this.WS(url, SUBPROTOCOL);
    } catch (e) {
      this.lastError = new FiretowerError("connection_closed", `cannot open ${url}: ${String(e)}`, { cause: e });
      this.scheduleReconnect(url, 1006, "cannot open", this.lastError);
      return;
    }
    const conn: Connection = {
      ws,
      url,
      ready: false,
      closed: false,
      user: undefined,
      lastServerError: undefined,
      openTimer: undefined,
      pingTimer: undefined,
    };
    this.conn = conn;
    // A gateway that accepts TCP but never answers the upgrade must not hold the attempt.
    conn.openTimer = setTimeout(() => {
      if (!conn.ready) {
        this.drop(conn, 1006, `no connection within ${this.requestTimeoutMs} ms`);
      }
    }, this.requestTimeoutMs);
    ws.onopen = () => void this.handshake(conn);
    ws.onmessage = (event: { data: unknown }) => this.onData(conn, event.data);
    ws.onclose = (event: { code?: number; reason?: string }) =>
      this.onClosed(conn, event.code ?? 1006, event.reason ?? "");
    ws.onerror = () => {
      // The close event that follows carries what we can know.
    };
  }

  /** The socket is open: authenticate, send what waited, resubscribe. */
  private async handshake(conn: Connection): Promise<void> {
    try {
      if (this.tokenSource !== undefined) {
        const token = await this.freshToken();
        if (conn.closed) {
          return;
        }
        try {
          const ack = (await this.callOn(conn, { op: "auth", token, id: 0 })) as AckFrame;
          conn.user = ack.user;
          this.acceptToken(token);
        } catch (e) {
          // A token for a gateway that verifies none: go on anonymously, but say so.
          if (conn.closed || !(e instanceof FiretowerError) || e.code !== "not_configured") {
            throw e;
          }
          this.report(e);
        }
      }
      if (conn.closed) {
        return;
      }
      conn.ready = true;
      for (const p of this.pending.values()) {
        if (p.sentOn === undefined && !p.internal) {
          this.send(conn, p);
        }
      }
      await this.subscribeOn(conn, [...this.topics.values()].filter((e) => e.sentOn !== conn));
      if (conn.closed) {
        return;
      }
      this.everConnected = true;
      clearTimeout(this.connectTimer);
      this.setState("connected");
      this.stableTimer = setTimeout(() => this.backoff.reset(), this.backoff.stableMs);
      if (this.pingIntervalMs > 0) {
        this.schedulePing(conn);
      }
      this.emit("connected", { url: conn.url, user: conn.user });
      for (const w of this.connectWaiters.splice(0)) {
        w.resolve();
      }
    } catch (e) {
      if (conn.closed) {
        return;
      }
      const error = asFiretowerError(e);
      this.lastError = error;
      if (error.code === "token_error") {
        this.report(error);
      }
      this.drop(conn, 1006, error.message, error);
    }
  }

  /** The token for the next auth: the current one, or a new one when it is stale. */
  private async freshToken(): Promise<string> {
    const stale =
      this.token === undefined ||
      this.needFreshToken ||
      (tokenExpiry(this.token) ?? Infinity) <= Date.now() + 1_000;
    if (!stale && this.token !== undefined) {
      return this.token;
    }
    const source = this.token === undefined ? this.tokenSource : (this.refreshSource ?? this.tokenSource);
    if (typeof source === "string") {
      return source;
    }
    if (source === undefined) {
      throw new UnauthorizedError("unauthorized", "no token: pass `token` or `refreshToken`");
    }
    return fetchToken(source);
  }

  /** `token` was accepted by the gateway: use it from now on and schedule its refresh. */
  private acceptToken(token: string | undefined): void {
    this.token = token;
    this.needFreshToken = false;
    this.unauthorizedCloses = 0;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    if (token === undefined) {
      return;
    }
    const expiresAt = tokenExpiry(token);
    this.emit("token", { expiresAt });
    if (expiresAt !== undefined && this.refreshSource !== undefined) {
      this.scheduleRefresh(refreshDelay(expiresAt, Date.now(), this.refreshBeforeMs));
    }
  }

  private scheduleRefresh(delay: number): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => void this.refresh(), delay);
  }

  /** Refresh the token on the live connection (`auth` frame); retry while it is still valid. */
  private async refresh(): Promise<void> {
    const conn = this.conn;
    const source = this.refreshSource;
    if (conn === undefined || !conn.ready || source === undefined) {
      // No live connection: the next connect fetches a new token if this one is stale.
      return;
    }
    try {
      const token = await fetchToken(source);
      if (conn.closed) {
        return;
      }
      await this.callOn(conn, { op: "auth", token, id: 0 });
      this.acceptToken(token);
    } catch (e) {
      if (conn.closed) {
        return;
      }
      this.report(asFiretowerError(e));
      const expiresAt = this.token === undefined ? undefined : tokenExpiry(this.token);
      const left = expiresAt === undefined ? 0 : expiresAt - Date.now();
      if (left > 2_000) {
        this.scheduleRefresh(Math.min(5_000, left / 2));
      }
    }
  }

  private schedulePing(conn: Connection): void {
    conn.pingTimer = setTimeout(async () => {
      if (conn.closed) {
        return;
      }
      try {
        await this.callOn(conn, { op: "ping", id: 0 });
        this.schedulePing(conn);
      } catch {
        if (!conn.closed) {
          this.drop(conn, 1006, `no pong within ${this.requestTimeoutMs} ms`);
        }
      }
    }, this.pingIntervalMs);
  }

  /**
   * Subscribe `entries` on `conn`, in as few frames as the frame limit allows (one per
   * `joinLeave` setting), each topic with its last position in `recover`. A refused frame is
   * retried topic by topic, so one forbidden topic does not take the others down.
   */
  private async subscribeOn(conn: Connection, entries: TopicEntry[]): Promise<void> {
    for (const batch of batches(entries)) {
      for (const e of batch) {
        e.sentOn = conn;
        e.asked = recoverFrom(e);
      }
      try {
        const ack = (await this.callOn(conn, subscribeFrame(batch))) as AckFrame;
        for (const e of batch) {
          this.subscribed(e, ack);
        }
      } catch (error) {
        if (conn.closed) {
          return;
        }
        if (batch.length === 1) {
          this.refused(batch[0] as TopicEntry, asFiretowerError(error));
          continue;
        }
        for (const e of batch) {
          try {
            this.subscribed(e, (await this.callOn(conn, subscribeFrame([e]))) as AckFrame);
          } catch (single) {
            if (conn.closed) {
              return;
            }
            this.refused(e, asFiretowerError(single));
          }
        }
      }
    }
  }

  private subscribed(entry: TopicEntry, ack: AckFrame): void {
    if (this.topics.get(entry.topic) !== entry) {
      return;
    }
    const asked = entry.asked;
    const again = entry.everAcked;
    entry.everAcked = true;
    if (entry.first !== undefined) {
      clearTimeout(entry.first.timer);
      entry.first.resolve();
      entry.first = undefined;
    }
    if (again || asked !== undefined) {
      const event: RecoveredEvent = { topic: entry.topic, recovered: asked !== undefined && ack.recovered?.[entry.topic] === true };
      if (asked !== undefined) {
        event.from = asked;
      }
      this.invoke(entry.options.onRecovered, event);
      this.emit("recovered", event);
    }
  }

  private refused(entry: TopicEntry, error: FiretowerError): void {
    if (this.topics.get(entry.topic) !== entry) {
      return;
    }
    this.dropTopic(entry, false);
    if (entry.first !== undefined) {
      clearTimeout(entry.first.timer);
      entry.first.reject(error);
      entry.first = undefined;
    } else {
      this.invoke(entry.options.onError, error);
      this.report(error);
    }
  }

  /** Forget a topic; tell the gateway when it may hold the subscription. */
  private dropTopic(entry: TopicEntry, tellGateway: boolean): Promise<void> {
    this.topics.delete(entry.topic);
    const conn = this.conn;
    if (tellGateway && conn?.ready && entry.sentOn === conn) {
      return this.callOn(conn, { op: "unsubscribe", topics: [entry.topic], id: 0 }).then(
        () => undefined,
        () => undefined,
      );
    }
    return Promise.resolve();
  }

  /** @internal Called by {@link Subscription.unsubscribe}. */
  unsubscribeTopic(subscription: Subscription): Promise<void> {
    const entry = this.topics.get(subscription.topic);
    if (entry === undefined || entry.subscription !== subscription) {
      return Promise.resolve();
    }
    return this.dropTopic(entry, true);
  }

  /** @internal Called by {@link Subscription.active}. */
  holds(subscription: Subscription): boolean {
    return this.topics.get(subscription.topic)?.subscription === subscription;
  }

  /** @internal Called by {@link Subscription.position}. */
  positionOf(subscription: Subscription): Position | undefined {
    const entry = this.topics.get(subscription.topic);
    return entry?.subscription === subscription ? entry.position : undefined;
  }

  private onData(conn: Connection, data: unknown): void {
    if (conn.closed) {
      return;
    }
    if (typeof data !== "string") {
      this.report(new FiretowerError("protocol_error", "the gateway sent a binary message on firetower.json"));
      return;
    }
    let frame: ServerFrame;
    try {
      frame = parseServerFrame(data);
    } catch (e) {
      this.report(asFiretowerError(e));
      return;
    }
    switch (frame.op) {
      case "ack":
      case "pong":
      case "history":
      case "presence": {
        const p = this.settle(frame.id);
        p?.resolve(frame);
        return;
      }
      case "error": {
        if (frame.id !== undefined && frame.id !== 0) {
          const p = this.settle(frame.id);
          if (p !== undefined) {
            p.reject(errorFor(frame.code, frame.message));
            return;
          }
        }
        conn.lastServerError = { code: frame.code, message: frame.message };
        if (frame.code !== "unauthorized" && frame.code !== "banned" && frame.code !== "too_many_connections") {
          this.report(errorFor(frame.code, frame.message));
        }
        return;
      }
      case "message": {
        const entry = this.topics.get(frame.message.topic);
        if (entry === undefined) {
          return;
        }
        const { fresh, position } = advance(entry.position, frame.message);
        if (!fresh) {
          return;
        }
        entry.position = position;
        this.invoke(entry.options.onMessage, frame.message);
        return;
      }
      case "gap": {
        const entry = this.topics.get(frame.topic);
        this.invoke(entry?.options.onGap, { topic: frame.topic, dropped: frame.dropped });
        return;
      }
      case "join":
      case "leave": {
        const entry = this.topics.get(frame.topic);
        const handler = frame.op === "join" ? entry?.options.onJoin : entry?.options.onLeave;
        this.invoke(handler, { topic: frame.topic, user: frame.user });
        return;
      }
    }
  }

  /** Close `conn` from our side (a timeout) and handle it as lost. */
  private drop(conn: Connection, code: number, reason: string, error?: FiretowerError): void {
    try {
      conn.ws.close(4000, reason.slice(0, 100));
    } catch {
      // Already closing.
    }
    this.onClosed(conn, code, reason, error);
  }

  private onClosed(conn: Connection, code: number, reason: string, cause?: FiretowerError): void {
    if (conn.closed) {
      return;
    }
    conn.closed = true;
    conn.ready = false;
    conn.ws.onopen = conn.ws.onmessage = conn.ws.onclose = conn.ws.onerror = null;
    clearTimeout(conn.openTimer);
    clearTimeout(conn.pingTimer);
    clearTimeout(this.stableTimer);
    if (this.conn === conn) {
      this.conn = undefined;
    }
    const error = cause ?? closeError(code, reason, conn.lastServerError);
    this.lastError = error;
    for (const [id, p] of this.pending) {
      if (p.sentOn !== conn) {
        continue;
      }
      if (p.retryable) {
        p.sentOn = undefined;
        continue;
      }
      this.settle(id);
      p.reject(
        new ConnectionClosedError(
          "connection_closed",
          `the connection closed before the answer came (${error.message})${p.frame.op === "publish" ? "; the outcome is unknown" : ""}`,
          { closeCode: code, cause: error },
        ),
      );
    }
    for (const e of this.topics.values()) {
      if (e.sentOn === conn) {
        e.sentOn = undefined;
      }
    }
    if (this.currentState === "closed") {
      return;
    }
    if (code === 4403) {
      this.emit("disconnected", { url: conn.url, code, reason, error, reconnectInMs: undefined });
      this.fail(error);
      return;
    }
    if (code === 4401) {
      if (this.refreshSource === undefined && typeof this.tokenSource !== "function") {
        this.emit("disconnected", { url: conn.url, code, reason, error, reconnectInMs: undefined });
        this.fail(error);
        return;
      }
      this.needFreshToken = true;
    }
    this.scheduleReconnect(conn.url, code, reason, error);
  }

  private scheduleReconnect(url: string, code: number, reason: string, error: FiretowerError): void {
    if (!this.reconnecting) {
      this.emit("disconnected", { url, code, reason, error, reconnectInMs: undefined });
      this.fail(error);
      return;
    }
    // An expired token is fixed by a new one: the first reconnect after a 4401 goes at once.
    const delay = code === 4401 && this.unauthorizedCloses++ === 0 ? 0 : this.backoff.next();
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    this.setState(this.everConnected ? "reconnecting" : "connecting");
    this.emit("disconnected", { url, code, reason, error, reconnectInMs: delay });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.startAttempt(), delay);
  }

  /** Stop for good with `error`: every waiting promise fails, timers stop, the socket closes. */
  private fail(error: FiretowerError, report = true): void {
    if (this.currentState === "closed") {
      return;
    }
    this.setState("closed");
    for (const t of [this.reconnectTimer, this.refreshTimer, this.stableTimer, this.connectTimer]) {
      clearTimeout(t);
    }
    const conn = this.conn;
    this.conn = undefined;
    if (conn !== undefined && !conn.closed) {
      conn.closed = true;
      conn.ws.onopen = conn.ws.onmessage = conn.ws.onclose = conn.ws.onerror = null;
      clearTimeout(conn.openTimer);
      clearTimeout(conn.pingTimer);
      try {
        conn.ws.close(1000, "client closed");
      } catch {
        // Already closing.
      }
    }
    const requestError = error.code === "client_closed" ? error : new ConnectionClosedError("client_closed", `the client stopped: ${error.message}`, { closeCode: error.closeCode, cause: error });
    for (const id of [...this.pending.keys()]) {
      this.settle(id)?.reject(requestError);
    }
    for (const e of this.topics.values()) {
      if (e.first !== undefined) {
        clearTimeout(e.first.timer);
        e.first.reject(requestError);
        e.first = undefined;
      }
    }
    this.topics.clear();
    for (const w of this.connectWaiters.splice(0)) {
      w.reject(error);
    }
    if (report && error.code !== "client_closed") {
      this.report(error);
    }
  }

  /** Report an error no promise carries: to `error` listeners. */
  private report(error: FiretowerError): void {
    this.emit("error", error);
  }

  /** Call an application handler; its exception goes to `error` listeners (or is rethrown). */
  private invoke<A>(handler: ((arg: A) => void) | undefined, arg: A): void {
    if (handler === undefined) {
      return;
    }
    try {
      handler(arg);
    } catch (e) {
      this.onListenerError(e);
    }
  }

  protected override onListenerError(error: unknown): void {
    // An `error` listener that throws is not fed its own exception again.
    if (this.reportingHandlerError || this.listenerCount("error") === 0) {
      super.onListenerError(error);
      return;
    }
    this.reportingHandlerError = true;
    try {
      this.emit("error", new FiretowerError("handler_error", `a handler threw: ${String(error)}`, { cause: error }));
    } finally {
      this.reportingHandlerError = false;
    }
  }

}

/** A subscription to one topic, returned by {@link FiretowerClient.subscribe}. */
export class Subscription {
  /** @internal */
  constructor(
    readonly topic: string,
    private readonly client: FiretowerClient,
  ) {}

  /** False once unsubscribed, refused on a resubscribe, or the client closed. */
  get active(): boolean {
    return this.client.holds(this);
  }

  /** The epoch and offset of the last message processed (topics with history). */
  get position(): Position | undefined {
    return this.client.positionOf(this);
  }

  /** Stop receiving the topic. */
  unsubscribe(): Promise<void> {
    return this.client.unsubscribeTopic(this);
  }
}

function subscribeFrame(entries: TopicEntry[]): ClientFrame {
  const frame: ClientFrame = { op: "subscribe", topics: entries.map((e) => e.topic), id: 0 };
  const recover: Record<string, Position> = {};
  let any = false;
  for (const e of entries) {
    if (e.asked !== undefined) {
      recover[e.topic] = e.asked;
      any = true;
    }
  }
  if (any) {
    frame.recover = recover;
  }
  if (entries.some((e) => e.options.joinLeave === true)) {
    frame.join_leave = true;
  }
  return frame;
}

/** The position a subscribe of `entry` asks to recover from, if any. */
function recoverFrom(entry: TopicEntry): Position | undefined {
  if (entry.options.recover === false || entry.position === undefined) {
    return undefined;
  }
  return { epoch: entry.position.epoch, offset: entry.position.offset };
}

/** Group entries by `joinLeave`, and cut each group below the frame size limit. */
function batches(entries: TopicEntry[]): TopicEntry[][] {
  const out: TopicEntry[][] = [];
  for (const joinLeave of [false, true]) {
    let batch: TopicEntry[] = [];
    let bytes = 0;
    for (const e of entries) {
      if ((e.options.joinLeave === true) !== joinLeave) {
        continue;
      }
      const size = 2 * e.topic.length + 64;
      if (batch.length > 0 && bytes + size > MAX_SUBSCRIBE_FRAME_BYTES) {
        out.push(batch);
        batch = [];
        bytes = 0;
      }
      batch.push(e);
      bytes += size;
    }
    if (batch.length > 0) {
      out.push(batch);
    }
  }
  return out;
}

async function fetchToken(source: TokenSource): Promise<string> {
  if (typeof source === "string") {
    return source;
  }
  let token: unknown;
  try {
    token = await source();
  } catch (e) {
    throw new FiretowerError("token_error", `the token callback failed: ${String(e)}`, { cause: e });
  }
  if (typeof token !== "string" || token === "") {
    throw new FiretowerError("token_error", "the token callback returned no token (a non-empty string)");
  }
  return token;
}

/** The error a close code stands for, with the gateway's last words when it sent some. */
function closeError(code: number, reason: string, last: { code: string; message: string } | undefined): FiretowerError {
  const details = { closeCode: code };
  const said = last?.message ?? reason;
  switch (code) {
    case 4401:
      return errorFor("unauthorized", said || "the gateway refused the token (4401)", details);
    case 4403:
      return errorFor(last?.code ?? "banned", said || "banned or kicked (4403): not reconnecting", details);
    case 4429:
      return errorFor("too_many_connections", said || "too many connections for this user (4429)", details);
    case 4503:
      return errorFor("hook_unavailable", said || "the gateway's connect hook is unavailable (4503)", details);
    default:
      return new ConnectionClosedError(
        "connection_closed",
        `connection closed (${code}${reason ? ` ${reason}` : ""})`,
        details,
      );
  }
}

function closedError(): FiretowerError {
  return new ConnectionClosedError("client_closed", "the client is closed");
}

function asFiretowerError(e: unknown): FiretowerError {
  return e instanceof FiretowerError ? e : new FiretowerError("internal_error", String(e), { cause: e });
}

function unexpected(frame: ServerFrame, wanted: string): FiretowerError {
  return new FiretowerError("protocol_error", `the gateway answered a ${wanted} request with ${frame.op}`);
}
