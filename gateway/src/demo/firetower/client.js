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
import { Backoff } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ConnectionClosedError, FiretowerError, TimeoutError, UnauthorizedError, errorFor, } from "./errors.js";
import { SUBPROTOCOL, advance, parseServerFrame, } from "./protocol.js";
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
export class FiretowerClient extends Emitter {
    urls;
    WS;
    tokenSource;
    refreshSource;
    refreshBeforeMs;
    reconnecting;
    backoff;
    requestTimeoutMs;
    connectTimeoutMs;
    pingIntervalMs;
    maxPending;
    currentState = "idle";
    conn;
    urlIndex = 0;
    nextId = 1;
    pending = new Map();
    userPending = 0;
    topics = new Map();
    token;
    /** A 4401 or an expired token: fetch a new one before the next auth. */
    needFreshToken = false;
    /** 4401 closes since the last accepted token: the first reconnects at once. */
    unauthorizedCloses = 0;
    everConnected = false;
    reconnectTimer;
    refreshTimer;
    stableTimer;
    connectTimer;
    connectWaiters = [];
    lastError;
    reportingHandlerError = false;
    constructor(options) {
        super();
        this.urls = [...(options.url !== undefined ? [options.url] : []), ...(options.urls ?? [])];
        if (this.urls.length === 0) {
            throw new FiretowerError("invalid_field", "FiretowerClient needs `url` or `urls`");
        }
        this.WS = options.WebSocket ?? globalThis.WebSocket;
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
    get state() {
        return this.currentState;
    }
    /** The user the gateway authenticated, once connected with a token. */
    get user() {
        return this.conn?.user;
    }
    /** The URL of the current (or next) connection. */
    get url() {
        return this.urls[this.urlIndex];
    }
    /**
     * Connect. Resolves once a connection is up, authenticated and resubscribed. Transient
     * failures are retried with backoff for `connectTimeoutMs`; it rejects after that, or at
     * once on a refusal that retrying cannot fix (4403), and the client is closed then.
     */
    connect() {
        if (this.currentState === "closed") {
            return Promise.reject(closedError());
        }
        if (this.currentState === "connected") {
            return Promise.resolve();
        }
        const waiting = new Promise((resolve, reject) => {
            this.connectWaiters.push({ resolve, reject });
        });
        if (this.currentState === "idle") {
            if (this.WS === undefined) {
                const e = new FiretowerError("no_websocket", "no WebSocket implementation: on Node before 22 pass one, e.g. `import WebSocket from \"ws\"` and `new FiretowerClient({ WebSocket, ... })`");
                this.fail(e);
                return waiting;
            }
            this.connectTimer = setTimeout(() => {
                if (!this.everConnected) {
                    const last = this.lastError ? `: ${this.lastError.message}` : "";
                    this.fail(new TimeoutError("timeout", `no connection to ${this.urls.join(", ")} within ${this.connectTimeoutMs} ms${last}`, {
                        cause: this.lastError,
                    }));
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
    subscribe(topic, options) {
        const refused = this.refusal();
        if (refused !== undefined) {
            return Promise.reject(refused);
        }
        if (this.topics.has(topic)) {
            return Promise.reject(new FiretowerError("already_subscribed", `this client already subscribes to ${JSON.stringify(topic)}; unsubscribe first or share the subscription`));
        }
        const subscription = new Subscription(topic, this);
        const entry = {
            topic,
            options: options,
            subscription: subscription,
            position: options.since,
            everAcked: false,
            sentOn: undefined,
            asked: undefined,
            first: undefined,
        };
        const acked = new Promise((resolve, reject) => {
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
    async publish(topic, data) {
        if (data === undefined) {
            throw new FiretowerError("invalid_field", "publish needs data: any JSON value (null included), not undefined");
        }
        const ack = (await this.call({ op: "publish", topic, data, id: 0 }, false));
        const out = { term: ack.term ?? 0, seq: ack.seq ?? 0 };
        if (typeof ack.offset === "number" && typeof ack.epoch === "string") {
            out.offset = ack.offset;
            out.epoch = ack.epoch;
        }
        return out;
    }
    /** The newest kept messages of a topic with history (`no_history` otherwise), oldest first. */
    async history(topic, options = {}) {
        const frame = options.limit === undefined ? { op: "history", topic, id: 0 } : { op: "history", topic, limit: options.limit, id: 0 };
        const reply = await this.call(frame, true);
        if (reply.op !== "history") {
            throw unexpected(reply, "history");
        }
        return { topic: reply.topic, epoch: reply.epoch, offset: reply.offset, messages: reply.messages };
    }
    /** Who is on a topic with presence (`presence_disabled` otherwise). */
    async presence(topic) {
        const reply = await this.call({ op: "presence", topic, id: 0 }, true);
        if (reply.op !== "presence") {
            throw unexpected(reply, "presence");
        }
        return { topic: reply.topic, users: reply.users };
    }
    /** Round trip to the gateway; resolves with the time it took, in milliseconds. */
    async ping() {
        const started = Date.now();
        await this.call({ op: "ping", id: 0 }, true);
        return Date.now() - started;
    }
    /** Close for good: pending requests fail with `client_closed`, no reconnect. */
    close() {
        this.fail(closedError(), false);
    }
    // ---- requests -------------------------------------------------------------------------
    /** The error a new request gets at once, if any. */
    refusal() {
        if (this.currentState === "closed") {
            return closedError();
        }
        if (this.currentState === "idle") {
            return new FiretowerError("not_connected", "call connect() first");
        }
        return undefined;
    }
    /** A user request: waits for a connection (within its timeout), then for its answer. */
    call(frame, retryable) {
        const refused = this.refusal();
        if (refused !== undefined) {
            return Promise.reject(refused);
        }
        if (this.userPending >= this.maxPending) {
            return Promise.reject(new FiretowerError("too_many_pending", `${this.maxPending} requests are already waiting or in flight (maxPending); wait for some to finish`));
        }
        const id = this.nextId++;
        frame.id = id;
        this.userPending++;
        return new Promise((resolve, reject) => {
            const p = { frame, resolve, reject, timer: undefined, sentOn: undefined, retryable, internal: false };
            p.timer = setTimeout(() => {
                this.settle(id);
                const where = p.sentOn ? "no answer" : "no connection";
                reject(new TimeoutError("timeout", `${frame.op}: ${where} within ${this.requestTimeoutMs} ms${frame.op === "publish" && p.sentOn ? "; the outcome is unknown" : ""}`));
            }, this.requestTimeoutMs);
            this.pending.set(id, p);
            if (this.conn?.ready) {
                this.send(this.conn, p);
            }
        });
    }
    /** One of the client's own requests on `conn`; fails when `conn` closes. */
    callOn(conn, frame) {
        const id = this.nextId++;
        frame.id = id;
        return new Promise((resolve, reject) => {
            const p = { frame, resolve, reject, timer: undefined, sentOn: undefined, retryable: false, internal: true };
            p.timer = setTimeout(() => {
                this.settle(id);
                reject(new TimeoutError("timeout", `${frame.op}: no answer within ${this.requestTimeoutMs} ms`));
            }, this.requestTimeoutMs);
            this.pending.set(id, p);
            this.send(conn, p);
        });
    }
    send(conn, p) {
        p.sentOn = conn;
        try {
            conn.ws.send(JSON.stringify(p.frame));
        }
        catch {
            // The socket is closing; its close event settles the request.
        }
    }
    /** Forget request `id`; the caller settles its promise. */
    settle(id) {
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
    setState(state) {
        const previous = this.currentState;
        if (previous !== state) {
            this.currentState = state;
            this.emit("state", state, previous);
        }
    }
    startAttempt() {
        this.reconnectTimer = undefined;
        if (this.currentState === "closed" || this.WS === undefined) {
            return;
        }
        this.setState(this.everConnected ? "reconnecting" : "connecting");
        const url = this.url;
        let ws;
        try {
            ws = new this.WS(url, SUBPROTOCOL);
        }
        catch (e) {
            this.lastError = new FiretowerError("connection_closed", `cannot open ${url}: ${String(e)}`, { cause: e });
            this.scheduleReconnect(url, 1006, "cannot open", this.lastError);
            return;
        }
        const conn = {
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
        ws.onmessage = (event) => this.onData(conn, event.data);
        ws.onclose = (event) => this.onClosed(conn, event.code ?? 1006, event.reason ?? "");
        ws.onerror = () => {
            // The close event that follows carries what we can know.
        };
    }
    /** The socket is open: authenticate, send what waited, resubscribe. */
    async handshake(conn) {
        try {
            if (this.tokenSource !== undefined) {
                const token = await this.freshToken();
                if (conn.closed) {
                    return;
                }
                try {
                    const ack = (await this.callOn(conn, { op: "auth", token, id: 0 }));
                    conn.user = ack.user;
                    this.acceptToken(token);
                }
                catch (e) {
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
        }
        catch (e) {
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
    async freshToken() {
        const stale = this.token === undefined ||
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
    acceptToken(token) {
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
    scheduleRefresh(delay) {
        clearTimeout(this.refreshTimer);
        this.refreshTimer = setTimeout(() => void this.refresh(), delay);
    }
    /** Refresh the token on the live connection (`auth` frame); retry while it is still valid. */
    async refresh() {
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
        }
        catch (e) {
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
    schedulePing(conn) {
        conn.pingTimer = setTimeout(async () => {
            if (conn.closed) {
                return;
            }
            try {
                await this.callOn(conn, { op: "ping", id: 0 });
                this.schedulePing(conn);
            }
            catch {
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
    async subscribeOn(conn, entries) {
        for (const batch of batches(entries)) {
            for (const e of batch) {
                e.sentOn = conn;
                e.asked = recoverFrom(e);
            }
            try {
                const ack = (await this.callOn(conn, subscribeFrame(batch)));
                for (const e of batch) {
                    this.subscribed(e, ack);
                }
            }
            catch (error) {
                if (conn.closed) {
                    return;
                }
                if (batch.length === 1) {
                    this.refused(batch[0], asFiretowerError(error));
                    continue;
                }
                for (const e of batch) {
                    try {
                        this.subscribed(e, (await this.callOn(conn, subscribeFrame([e]))));
                    }
                    catch (single) {
                        if (conn.closed) {
                            return;
                        }
                        this.refused(e, asFiretowerError(single));
                    }
                }
            }
        }
    }
    subscribed(entry, ack) {
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
            const event = { topic: entry.topic, recovered: asked !== undefined && ack.recovered?.[entry.topic] === true };
            if (asked !== undefined) {
                event.from = asked;
            }
            this.invoke(entry.options.onRecovered, event);
            this.emit("recovered", event);
        }
    }
    refused(entry, error) {
        if (this.topics.get(entry.topic) !== entry) {
            return;
        }
        this.dropTopic(entry, false);
        if (entry.first !== undefined) {
            clearTimeout(entry.first.timer);
            entry.first.reject(error);
            entry.first = undefined;
        }
        else {
            this.invoke(entry.options.onError, error);
            this.report(error);
        }
    }
    /** Forget a topic; tell the gateway when it may hold the subscription. */
    dropTopic(entry, tellGateway) {
        this.topics.delete(entry.topic);
        const conn = this.conn;
        if (tellGateway && conn?.ready && entry.sentOn === conn) {
            return this.callOn(conn, { op: "unsubscribe", topics: [entry.topic], id: 0 }).then(() => undefined, () => undefined);
        }
        return Promise.resolve();
    }
    /** @internal Called by {@link Subscription.unsubscribe}. */
    unsubscribeTopic(subscription) {
        const entry = this.topics.get(subscription.topic);
        if (entry === undefined || entry.subscription !== subscription) {
            return Promise.resolve();
        }
        return this.dropTopic(entry, true);
    }
    /** @internal Called by {@link Subscription.active}. */
    holds(subscription) {
        return this.topics.get(subscription.topic)?.subscription === subscription;
    }
    /** @internal Called by {@link Subscription.position}. */
    positionOf(subscription) {
        const entry = this.topics.get(subscription.topic);
        return entry?.subscription === subscription ? entry.position : undefined;
    }
    onData(conn, data) {
        if (conn.closed) {
            return;
        }
        if (typeof data !== "string") {
            this.report(new FiretowerError("protocol_error", "the gateway sent a binary message on firetower.json"));
            return;
        }
        let frame;
        try {
            frame = parseServerFrame(data);
        }
        catch (e) {
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
    drop(conn, code, reason, error) {
        try {
            conn.ws.close(4000, reason.slice(0, 100));
        }
        catch {
            // Already closing.
        }
        this.onClosed(conn, code, reason, error);
    }
    onClosed(conn, code, reason, cause) {
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
            p.reject(new ConnectionClosedError("connection_closed", `the connection closed before the answer came (${error.message})${p.frame.op === "publish" ? "; the outcome is unknown" : ""}`, { closeCode: code, cause: error }));
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
    scheduleReconnect(url, code, reason, error) {
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
    fail(error, report = true) {
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
            }
            catch {
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
    report(error) {
        this.emit("error", error);
    }
    /** Call an application handler; its exception goes to `error` listeners (or is rethrown). */
    invoke(handler, arg) {
        if (handler === undefined) {
            return;
        }
        try {
            handler(arg);
        }
        catch (e) {
            this.onListenerError(e);
        }
    }
    onListenerError(error) {
        // An `error` listener that throws is not fed its own exception again.
        if (this.reportingHandlerError || this.listenerCount("error") === 0) {
            super.onListenerError(error);
            return;
        }
        this.reportingHandlerError = true;
        try {
            this.emit("error", new FiretowerError("handler_error", `a handler threw: ${String(error)}`, { cause: error }));
        }
        finally {
            this.reportingHandlerError = false;
        }
    }
}
/** A subscription to one topic, returned by {@link FiretowerClient.subscribe}. */
export class Subscription {
    topic;
    client;
    /** @internal */
    constructor(topic, client) {
        this.topic = topic;
        this.client = client;
    }
    /** False once unsubscribed, refused on a resubscribe, or the client closed. */
    get active() {
        return this.client.holds(this);
    }
    /** The epoch and offset of the last message processed (topics with history). */
    get position() {
        return this.client.positionOf(this);
    }
    /** Stop receiving the topic. */
    unsubscribe() {
        return this.client.unsubscribeTopic(this);
    }
}
function subscribeFrame(entries) {
    const frame = { op: "subscribe", topics: entries.map((e) => e.topic), id: 0 };
    const recover = {};
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
function recoverFrom(entry) {
    if (entry.options.recover === false || entry.position === undefined) {
        return undefined;
    }
    return { epoch: entry.position.epoch, offset: entry.position.offset };
}
/** Group entries by `joinLeave`, and cut each group below the frame size limit. */
function batches(entries) {
    const out = [];
    for (const joinLeave of [false, true]) {
        let batch = [];
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
async function fetchToken(source) {
    if (typeof source === "string") {
        return source;
    }
    let token;
    try {
        token = await source();
    }
    catch (e) {
        throw new FiretowerError("token_error", `the token callback failed: ${String(e)}`, { cause: e });
    }
    if (typeof token !== "string" || token === "") {
        throw new FiretowerError("token_error", "the token callback returned no token (a non-empty string)");
    }
    return token;
}
/** The error a close code stands for, with the gateway's last words when it sent some. */
function closeError(code, reason, last) {
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
            return new ConnectionClosedError("connection_closed", `connection closed (${code}${reason ? ` ${reason}` : ""})`, details);
    }
}
function closedError() {
    return new ConnectionClosedError("client_closed", "the client is closed");
}
function asFiretowerError(e) {
    return e instanceof FiretowerError ? e : new FiretowerError("internal_error", String(e), { cause: e });
}
function unexpected(frame, wanted) {
    return new FiretowerError("protocol_error", `the gateway answered a ${wanted} request with ${frame.op}`);
}
