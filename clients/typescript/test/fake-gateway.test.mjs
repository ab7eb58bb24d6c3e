// The client against a scripted gateway (the `ws` package's server on 127.0.0.1): what it
// sends on reconnect, how it deduplicates, and how it reacts to each close code. These pin
// the contract of docs/clients.md without depending on the cluster's history features; the
// same behaviour against a real cluster is in client.test.mjs.

import assert from "node:assert/strict";
import { after, test } from "node:test";
import WebSocket, { WebSocketServer } from "ws";

import { FiretowerClient, ForbiddenError } from "../dist/index.js";
import { eventually, signHs256 } from "./cluster.mjs";

/** A gateway that records frames and lets the test answer them. */
class FakeGateway {
  static async start() {
    const g = new FakeGateway();
    await new Promise((ok) => g.server.once("listening", ok));
    return g;
  }

  constructor() {
    this.server = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => "firetower.json" });
    this.sockets = [];
    this.frames = [];
    /** Answer a frame: return an object to send, or undefined; default: ack everything. */
    this.answer = (f) => (f.op === "ping" ? { op: "pong", id: f.id } : { op: "ack", id: f.id, ...(f.op === "auth" ? { user: "u1" } : {}) });
    this.server.on("connection", (ws) => {
      this.sockets.push(ws);
      ws.on("message", (data) => {
        const f = JSON.parse(String(data));
        this.frames.push(f);
        const reply = this.answer(f, ws);
        if (reply !== undefined) {
          ws.send(JSON.stringify(reply));
        }
      });
    });
  }

  get url() {
    return `ws://127.0.0.1:${this.server.address().port}/ws`;
  }

  get latest() {
    return this.sockets[this.sockets.length - 1];
  }

  send(frame, ws = this.latest) {
    ws.send(JSON.stringify(frame));
  }

  ops(op) {
    return this.frames.filter((f) => f.op === op);
  }

  close() {
    for (const s of this.sockets) {
      s.terminate();
    }
    return new Promise((ok) => this.server.close(ok));
  }
}

const clients = [];
const gateways = [];
after(async () => {
  for (const c of clients) {
    c.close();
  }
  for (const g of gateways) {
    await g.close();
  }
});

async function setup(options = {}) {
  const gateway = await FakeGateway.start();
  gateways.push(gateway);
  const client = new FiretowerClient({
    url: gateway.url,
    WebSocket,
    reconnect: { initialMs: 20, maxMs: 50 },
    requestTimeoutMs: 2000,
    ...options,
  });
  clients.push(client);
  return { gateway, client };
}

const msg = (topic, offset, epoch = "E1") => ({ op: "message", topic, data: { n: offset }, term: 1, seq: offset, offset, epoch });

test("a reconnect resubscribes every topic in one frame with the last position of each", async () => {
  const { gateway, client } = await setup();
  await client.connect();
  const got = { a: [], b: [], c: [] };
  const recovered = [];
  client.on("recovered", (e) => recovered.push(e));
  for (const t of ["a", "b", "c"]) {
    await client.subscribe(t, { onMessage: (m) => got[t].push(m.offset ?? m.seq) });
  }
  gateway.send(msg("a", 41));
  gateway.send(msg("b", 7, "E9"));
  gateway.send({ op: "message", topic: "c", data: 1, term: 1, seq: 3 }); // no history
  await eventually(() => got.a.length && got.b.length && got.c.length, "three messages");
  assert.deepEqual(gateway.ops("subscribe").map((f) => f.topics), [["a"], ["b"], ["c"]]);

  gateway.answer = (f) =>
    f.op === "subscribe" ? { op: "ack", id: f.id, recovered: { a: true, b: false } } : { op: "ack", id: f.id };
  gateway.latest.close(1001, "going away");
  await eventually(() => gateway.ops("subscribe").length === 4, "the resubscribe");
  const again = gateway.ops("subscribe")[3];
  assert.deepEqual(again.topics.sort(), ["a", "b", "c"]);
  assert.deepEqual(again.recover, { a: { epoch: "E1", offset: 41 }, b: { epoch: "E9", offset: 7 } });
  assert.equal(again.join_leave, undefined);
  await eventually(() => recovered.length === 3, "three recovered events");
  const byTopic = Object.fromEntries(recovered.map((e) => [e.topic, e]));
  assert.equal(byTopic.a.recovered, true);
  assert.deepEqual(byTopic.a.from, { epoch: "E1", offset: 41 });
  assert.equal(byTopic.b.recovered, false, "the gateway said the window passed");
  assert.equal(byTopic.c.recovered, false, "no position: messages may be lost");
  await eventually(() => client.state === "connected", "connected again");
});

test("duplicates by offset are dropped; a new epoch starts over; replay arrives in order", async () => {
  const { gateway, client } = await setup();
  await client.connect();
  const got = [];
  const sub = await client.subscribe("d", { onMessage: (m) => got.push(`${m.epoch}:${m.offset}`) });
  for (const o of [1, 2, 2, 3, 1, 4]) {
    gateway.send(msg("d", o));
  }
  gateway.send(msg("d", 1, "E2"));
  gateway.send(msg("d", 1, "E2"));
  await eventually(() => got.length === 5, "five distinct messages");
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(got, ["E1:1", "E1:2", "E1:3", "E1:4", "E2:1"]);
  assert.deepEqual(sub.position, { epoch: "E2", offset: 1 });
});

test("since= on a first subscribe asks to recover from there and reports the answer", async () => {
  const { gateway, client } = await setup();
  gateway.answer = (f) =>
    f.op === "subscribe" ? { op: "ack", id: f.id, recovered: { s: true } } : { op: "ack", id: f.id, user: "u1" };
  await client.connect();
  let recovered;
  await client.subscribe("s", { since: { epoch: "E", offset: 9 }, onMessage() {}, onRecovered: (e) => (recovered = e) });
  assert.deepEqual(gateway.ops("subscribe")[0].recover, { s: { epoch: "E", offset: 9 } });
  assert.deepEqual(recovered, { topic: "s", recovered: true, from: { epoch: "E", offset: 9 } });
});

test("recover: false and joinLeave shape the subscribe frames", async () => {
  const { gateway, client } = await setup();
  await client.connect();
  const joins = [];
  await client.subscribe("p", { joinLeave: true, onMessage() {}, onJoin: (e) => joins.push(e.user), onLeave: (e) => joins.push(`-${e.user}`) });
  await client.subscribe("q", { recover: false, onMessage() {} });
  gateway.send(msg("q", 5));
  gateway.send({ op: "join", topic: "p", user: "bob" });
  gateway.send({ op: "leave", topic: "p", user: "bob" });
  await eventually(() => joins.length === 2, "join and leave");
  assert.deepEqual(joins, ["bob", "-bob"]);
  assert.equal(gateway.ops("subscribe")[0].join_leave, true);
  gateway.latest.close(1001);
  await eventually(() => gateway.ops("subscribe").length === 4, "two resubscribe frames (one per joinLeave)");
  const [plain, withJoins] = gateway.ops("subscribe").slice(2);
  assert.deepEqual(plain.topics, ["q"]);
  assert.equal(plain.recover, undefined, "recover: false sends no position");
  assert.deepEqual(withJoins.topics, ["p"]);
  assert.equal(withJoins.join_leave, true);
});

test("a refused resubscribe is retried topic by topic and only the refused one ends", async () => {
  const { gateway, client } = await setup();
  await client.connect();
  const errors = [];
  await client.subscribe("ok.1", { onMessage() {} });
  await client.subscribe("gone.1", { onMessage() {}, onError: (e) => errors.push(e) });
  let refusing = false;
  gateway.answer = (f) => {
    if (f.op === "subscribe" && refusing && f.topics.includes("gone.1")) {
      return { op: "error", id: f.id, code: "forbidden", message: 'topic "gone.1" is banned' };
    }
    return { op: "ack", id: f.id };
  };
  refusing = true;
  gateway.latest.close(1001);
  await eventually(() => errors.length === 1, "the subscription's error");
  assert.ok(errors[0] instanceof ForbiddenError);
  await eventually(() => client.state === "connected", "connected");
  const subs = gateway.ops("subscribe");
  assert.deepEqual(subs.slice(2).map((f) => f.topics.sort().join(",")), ["gone.1,ok.1", "ok.1", "gone.1"]);
});

test("a publish waits for the connection while it is down, within the request timeout", async () => {
  const { gateway, client } = await setup({ reconnect: { initialMs: 300, maxMs: 300 } });
  await client.connect();
  gateway.answer = (f) => (f.op === "publish" ? { op: "ack", id: f.id, term: 2, seq: 5 } : { op: "ack", id: f.id });
  const waited = new Promise((ok) =>
    client.on("state", (s) => {
      if (s === "reconnecting") {
        ok({ ack: client.publish("t", { x: 1 }) });
      }
    }),
  );
  gateway.latest.close(1001);
  const { ack } = await waited;
  assert.deepEqual(await ack, { term: 2, seq: 5 });
  assert.equal(gateway.sockets.length, 2, "sent on the new connection");
});

test("a publish in flight when the connection drops fails with connection_closed", async () => {
  const { gateway, client } = await setup();
  await client.connect();
  gateway.answer = (f, ws) => {
    if (f.op === "publish") {
      ws.close(1001);
      return undefined;
    }
    return { op: "ack", id: f.id };
  };
  await assert.rejects(client.publish("t", 1), (e) => e.code === "connection_closed" && /outcome is unknown/.test(e.message));
});

test("maxPending bounds the requests waiting for a connection", async () => {
  const { gateway, client } = await setup({ maxPending: 2, requestTimeoutMs: 300 });
  await client.connect();
  gateway.answer = () => undefined;
  const a = client.publish("t", 1);
  const b = client.publish("t", 2);
  await assert.rejects(client.publish("t", 3), (e) => e.code === "too_many_pending");
  await assert.rejects(a, (e) => e.code === "timeout" && /outcome is unknown/.test(e.message));
  await assert.rejects(b, (e) => e.code === "timeout");
});

test("4403 closes the client for good; no reconnect", async () => {
  const { gateway, client } = await setup();
  await client.connect();
  const errors = [];
  client.on("error", (e) => errors.push(e));
  gateway.send({ op: "error", code: "banned", message: "banned by an operator: spam" });
  gateway.latest.close(4403, "banned");
  await eventually(() => client.state === "closed", "closed");
  assert.ok(errors[0] instanceof ForbiddenError);
  assert.equal(errors[0].code, "banned");
  assert.equal(errors[0].closeCode, 4403);
  assert.match(errors[0].message, /spam/);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(gateway.sockets.length, 1, "no second connection");
  await assert.rejects(client.publish("t", 1), (e) => e.code === "client_closed");
});

test("4401 gets a fresh token from the refresh callback before reconnecting", async () => {
  let n = 0;
  const { gateway, client } = await setup({
    token: signHs256({ sub: "u1", exp: Math.floor(Date.now() / 1000) + 3600 }, "k"),
    refreshToken: async () => `fresh-${++n}`,
  });
  await client.connect();
  assert.equal(client.user, "u1");
  gateway.latest.close(4401, "token expired");
  await eventually(() => gateway.ops("auth").length === 2, "a second auth");
  assert.equal(gateway.ops("auth")[1].token, "fresh-1");
  assert.equal(n, 1);
});

test("the token is refreshed on the live connection before exp", async () => {
  let n = 0;
  const token = (ttl) => signHs256({ sub: "u1", exp: Math.floor(Date.now() / 1000) + ttl }, "k");
  const { gateway, client } = await setup({ token: token(3), refreshToken: async () => (n++, token(3)), refreshBeforeMs: 30_000 });
  const refreshed = [];
  client.on("token", (t) => refreshed.push(t));
  await client.connect();
  await eventually(() => gateway.ops("auth").length >= 2, "a refresh auth frame", 5_000);
  assert.equal(gateway.sockets.length, 1, "on the same connection");
  assert.ok(n >= 1);
  assert.ok(refreshed.length >= 2);
});

test("the client rotates through its URLs", async () => {
  const a = await FakeGateway.start();
  const b = await FakeGateway.start();
  gateways.push(a, b);
  const client = new FiretowerClient({ urls: [a.url, b.url], WebSocket, reconnect: { initialMs: 10, maxMs: 20 } });
  clients.push(client);
  const urls = [];
  client.on("connected", (i) => urls.push(i.url));
  await client.connect();
  a.latest.close(1001);
  await eventually(() => urls.length === 2, "a second connection");
  b.latest.close(1001);
  await eventually(() => urls.length === 3, "a third connection");
  assert.deepEqual(urls, [a.url, b.url, a.url]);
});

test("connect() gives up after connectTimeoutMs when nothing listens", async () => {
  const client = new FiretowerClient({
    url: "ws://127.0.0.1:9/ws",
    WebSocket,
    connectTimeoutMs: 300,
    reconnect: { initialMs: 10, maxMs: 50 },
  });
  const states = [];
  client.on("state", (s) => states.push(s));
  await assert.rejects(client.connect(), (e) => e.code === "timeout" && /127\.0\.0\.1:9/.test(e.message));
  assert.equal(client.state, "closed");
  assert.equal(states[0], "connecting");
});

test("a handler that throws is reported as handler_error and the next message still comes", async () => {
  const { gateway, client } = await setup();
  await client.connect();
  const errors = [];
  client.on("error", (e) => errors.push(e));
  const got = [];
  await client.subscribe("h", {
    onMessage: (m) => {
      got.push(m.offset);
      if (m.offset === 1) {
        throw new Error("render failed");
      }
    },
  });
  gateway.send(msg("h", 1));
  gateway.send(msg("h", 2));
  await eventually(() => got.length === 2, "both messages");
  assert.equal(errors[0].code, "handler_error");
  assert.match(errors[0].message, /render failed/);
  assert.equal(client.state, "connected");
});
