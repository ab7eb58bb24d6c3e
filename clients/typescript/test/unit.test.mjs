// The client's pure parts: backoff, token expiry, dedupe, frame parsing, error classes.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Backoff,
  ConnectionClosedError,
  FiretowerClient,
  FiretowerError,
  ForbiddenError,
  RateLimitedError,
  TimeoutError,
  UnauthorizedError,
  UnavailableError,
  advance,
  errorFor,
  parseServerFrame,
  refreshDelay,
  tokenExpiry,
} from "../dist/index.js";
import { signHs256 } from "./cluster.mjs";

test("backoff windows double up to the maximum and delays are full jitter within them", () => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000 }, () => 0.999999);
  const windows = [];
  for (let i = 0; i < 7; i++) {
    windows.push(b.window());
    const d = b.next();
    assert.ok(d >= 0 && d < windows[i], `delay ${d} outside [0, ${windows[i]})`);
  }
  assert.deepEqual(windows, [100, 200, 400, 800, 1000, 1000, 1000]);
  b.reset();
  assert.equal(b.window(), 100);
  assert.equal(new Backoff({ initialMs: 100, maxMs: 1000 }, () => 0).next(), 0, "full jitter reaches 0");
  const many = new Backoff({ initialMs: 1, maxMs: 5 });
  for (let i = 0; i < 500; i++) {
    assert.ok(Number.isFinite(many.next()));
  }
});

test("jittered delays spread over the whole window", () => {
  const seen = new Set();
  for (let i = 0; i < 200; i++) {
    const b = new Backoff({ initialMs: 1000, maxMs: 1000 });
    seen.add(Math.floor(b.next() / 100));
  }
  assert.ok(seen.size >= 8, `delays fell in only ${seen.size} of 10 deciles`);
});

test("token expiry is read from the payload and refreshes come before it", () => {
  const exp = Math.floor(Date.now() / 1000) + 600;
  const token = signHs256({ sub: "u1", exp, name: "Zoë ✓" }, "secret-0123456789abcdef");
  assert.equal(tokenExpiry(token), exp * 1000);
  assert.equal(tokenExpiry("not a jwt"), undefined);
  assert.equal(tokenExpiry("a.b.c"), undefined);
  assert.equal(tokenExpiry(signHs256({ sub: "u1" }, "s")), undefined);
  const now = 1_000_000;
  assert.equal(refreshDelay(now + 600_000, now, 30_000), 570_000);
  assert.equal(refreshDelay(now + 4_000, now, 30_000), 2_000, "half the lifetime for short tokens");
  assert.equal(refreshDelay(now - 5_000, now, 30_000), 1_000, "a stale token is refreshed soon, not in a loop");
});

test("offsets of the same epoch at or below the last are duplicates; a new epoch starts over", () => {
  const m = (offset, epoch = "e1") => ({ topic: "t", data: 1, term: 1, seq: offset, offset, epoch });
  let r = advance(undefined, m(5));
  assert.deepEqual(r, { fresh: true, position: { epoch: "e1", offset: 5 } });
  assert.equal(advance(r.position, m(5)).fresh, false);
  assert.equal(advance(r.position, m(3)).fresh, false);
  assert.deepEqual(advance(r.position, m(6)).position, { epoch: "e1", offset: 6 });
  assert.deepEqual(advance(r.position, m(1, "e2")), { fresh: true, position: { epoch: "e2", offset: 1 } });
  const plain = { topic: "t", data: 1, term: 1, seq: 9 };
  assert.deepEqual(advance(r.position, plain), { fresh: true, position: r.position });
});

test("server frames parse into typed frames; garbage is a protocol_error", () => {
  assert.deepEqual(parseServerFrame('{"op":"ack","id":3,"term":2,"seq":7}'), { op: "ack", id: 3, term: 2, seq: 7 });
  assert.deepEqual(parseServerFrame('{"op":"message","topic":"a","data":{"x":1},"term":1,"seq":2,"offset":4,"epoch":"E"}'), {
    op: "message",
    message: { topic: "a", data: { x: 1 }, term: 1, seq: 2, offset: 4, epoch: "E" },
  });
  assert.deepEqual(parseServerFrame('{"op":"error","code":"forbidden","message":"no"}'), {
    op: "error",
    code: "forbidden",
    message: "no",
  });
  const h = parseServerFrame(
    '{"op":"history","id":6,"topic":"c","epoch":"E","offset":2,"messages":[{"topic":"c","data":1,"term":1,"seq":1,"offset":1,"epoch":"E"}]}',
  );
  assert.equal(h.messages[0].offset, 1);
  assert.deepEqual(parseServerFrame('{"op":"presence","id":7,"topic":"r","users":[{"user":"u1","connections":2}]}').users, [
    { user: "u1", connections: 2 },
  ]);
  assert.deepEqual(parseServerFrame('{"op":"gap","topic":"r","dropped":3}'), { op: "gap", topic: "r", dropped: 3 });
  assert.deepEqual(parseServerFrame('{"op":"join","topic":"r","user":"u"}'), { op: "join", topic: "r", user: "u" });
  for (const bad of ["nope", "[1]", "null", '{"op":"mystery"}', '{"op":"ack"}', '{"op":"message","data":1}']) {
    assert.throws(() => parseServerFrame(bad), (e) => e instanceof FiretowerError && e.code === "protocol_error", bad);
  }
});

test("protocol codes map to error classes that keep the code", () => {
  const cases = [
    ["unauthorized", UnauthorizedError],
    ["forbidden", ForbiddenError],
    ["banned", ForbiddenError],
    ["timeout", TimeoutError],
    ["unavailable", UnavailableError],
    ["hook_unavailable", UnavailableError],
    ["rate_limited", RateLimitedError],
    ["too_many_connections", RateLimitedError],
    ["connection_closed", ConnectionClosedError],
    ["no_history", FiretowerError],
  ];
  for (const [code, cls] of cases) {
    const e = errorFor(code, "m", { closeCode: 4401 });
    assert.ok(e instanceof cls && e instanceof FiretowerError && e instanceof Error, code);
    assert.equal(e.code, code);
    assert.equal(e.closeCode, 4401);
    assert.equal(e.name, cls.name);
  }
});

test("requests before connect() fail with not_connected; a client without url is refused", async () => {
  assert.throws(() => new FiretowerClient({}), (e) => e.code === "invalid_field");
  const c = new FiretowerClient({ url: "ws://127.0.0.1:1/ws", WebSocket: class {} });
  await assert.rejects(c.publish("t", 1), (e) => e.code === "not_connected");
  await assert.rejects(c.subscribe("t", { onMessage() {} }), (e) => e.code === "not_connected");
  c.close();
  await assert.rejects(c.publish("t", 1), (e) => e instanceof ConnectionClosedError && e.code === "client_closed");
  await assert.rejects(c.connect(), (e) => e.code === "client_closed");
});

test("without a WebSocket implementation connect() says what to pass", async () => {
  if (globalThis.WebSocket !== undefined) {
    return; // Node 22+: the global one is used.
  }
  const c = new FiretowerClient({ url: "ws://127.0.0.1:1/ws" });
  await assert.rejects(c.connect(), (e) => e.code === "no_websocket" && /ws/.test(e.message));
});
