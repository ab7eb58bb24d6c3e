// The client against a real cluster: `firetower dev` plus gateways of our own (test/cluster.mjs).
// Needs the firetower binary (FIRETOWER_BIN, default ../../target/debug/firetower).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";

import { FiretowerClient, ForbiddenError, UnauthorizedError } from "../dist/index.js";
import { Cluster, eventually, httpPostJson, killHard, signHs256, sleep } from "./cluster.mjs";

const SECRET = "typescript-client-secret-0123456789";

let cluster;
let auth; // a gateway with [auth] HS256
const clients = [];

before(async () => {
  cluster = await Cluster.start();
  const secret = cluster.file("secret", SECRET);
  auth = await cluster.gateway(21, `[auth]\nhs256_secret_file = "${secret}"\naudience = "app"\n`);
});

after(async () => {
  for (const c of clients) {
    c.close();
  }
  await cluster?.stop();
});

function client(options) {
  const c = new FiretowerClient({
    WebSocket,
    reconnect: { initialMs: 100, maxMs: 1000 },
    requestTimeoutMs: 10_000,
    ...options,
  });
  clients.push(c);
  return c;
}

function token(sub, { ttl = 300, patterns = ["room.*"] } = {}) {
  return signHs256(
    { sub, exp: Math.floor(Date.now() / 1000) + ttl, aud: "app", firetower: { subscribe: patterns, publish: patterns } },
    SECRET,
  );
}

/** Collects a subscription's messages. */
function inbox() {
  const messages = [];
  return {
    messages,
    onMessage: (m) => messages.push(m),
    data: () => messages.map((m) => m.data),
    waitFor: (n, what = `${n} messages`) => eventually(() => messages.length >= n, what),
  };
}

test("connect, subscribe, publish and receive in order", async () => {
  const a = client({ url: Cluster.url(cluster.devGateway) });
  const b = client({ url: Cluster.url(cluster.devGateway) });
  await Promise.all([a.connect(), b.connect()]);
  assert.equal(a.state, "connected");
  const box = inbox();
  const sub = await b.subscribe("room.basic", box);
  assert.equal(sub.active, true);
  for (let i = 0; i < 20; i++) {
    const ack = await a.publish("room.basic", { i, text: `hello ${i}` });
    assert.equal(typeof ack.term, "number");
    assert.equal(typeof ack.seq, "number");
  }
  await box.waitFor(20);
  assert.deepEqual(box.data().map((d) => d.i), [...Array(20).keys()]);
  const seqs = box.messages.map((m) => m.seq);
  assert.deepEqual([...seqs].sort((x, y) => x - y), seqs, "seq grows");
  assert.ok(await a.ping() >= 0);
  await sub.unsubscribe();
  assert.equal(sub.active, false);
  await a.publish("room.basic", { i: 99 });
  await sleep(300);
  assert.equal(box.messages.length, 20, "nothing after unsubscribe");
});

test("a token limited to room.* is forbidden chat.1, typed", async () => {
  const c = client({ url: auth.url, token: token("u1") });
  await c.connect();
  assert.equal(c.user, "u1");
  await c.subscribe("room.1", { onMessage() {} });
  await assert.rejects(c.subscribe("chat.1", { onMessage() {} }), (e) => {
    assert.ok(e instanceof ForbiddenError, e);
    assert.equal(e.code, "forbidden");
    return true;
  });
  await assert.rejects(c.publish("chat.1", { no: 1 }), (e) => e instanceof ForbiddenError && e.code === "forbidden");
  assert.equal(c.state, "connected", "a refusal keeps the connection");
  await c.publish("room.1", { yes: 1 });
});

test("a bad token without a way to refresh it fails connect() with UnauthorizedError", async () => {
  const bad = signHs256({ sub: "u1", exp: Math.floor(Date.now() / 1000) + 60, aud: "app" }, "another-secret-0123456789abcdef");
  const c = client({ url: auth.url, token: bad });
  await assert.rejects(c.connect(), (e) => {
    assert.ok(e instanceof UnauthorizedError, e);
    assert.equal(e.closeCode, 4401);
    return true;
  });
  assert.equal(c.state, "closed");
  // Without a token the socket opens (the gateway waits for an auth frame), then the gateway
  // closes it with 4401 after its handshake timeout; with no token to get, the client stops.
  const anonymous = client({ url: auth.url });
  const errors = [];
  anonymous.on("error", (e) => errors.push(e));
  await anonymous.connect();
  await eventually(() => anonymous.state === "closed", "the 4401 close", 10_000);
  assert.ok(errors[0] instanceof UnauthorizedError && errors[0].closeCode === 4401, String(errors[0]));
});

test("a short token is refreshed on the live connection, before exp", async () => {
  let refreshes = 0;
  const c = client({
    url: auth.url,
    token: token("u2", { ttl: 3 }),
    refreshToken: async () => {
      refreshes++;
      return token("u2", { ttl: 3 });
    },
  });
  const disconnects = [];
  c.on("disconnected", (d) => disconnects.push(d.code));
  await c.connect();
  const box = inbox();
  await c.subscribe("room.refresh", box);
  await sleep(7000); // more than two lifetimes: the gateway closes at exp without a refresh
  assert.deepEqual(disconnects, [], "no close at exp");
  assert.ok(refreshes >= 2, `${refreshes} refreshes`);
  await c.publish("room.refresh", "still here");
  await box.waitFor(1);
});

test("a 4401 at exp (the refresh failed) gets a fresh token and reconnects", async () => {
  let calls = 0;
  const c = client({
    url: auth.url,
    token: token("u3", { ttl: 3 }),
    refreshToken: async () => {
      calls++;
      if (calls === 1) {
        throw new Error("auth server down");
      }
      return token("u3", { ttl: 300 });
    },
  });
  const errors = [];
  const closes = [];
  c.on("error", (e) => errors.push(e));
  c.on("disconnected", (d) => closes.push(d.code));
  await c.connect();
  const box = inbox();
  const recovered = [];
  await c.subscribe("room.expiry", { ...box, onRecovered: (e) => recovered.push(e) });
  await eventually(() => closes.includes(4401), "the close at exp", 10_000);
  await eventually(() => c.state === "connected" && recovered.length === 1, "reconnected with a fresh token", 10_000);
  assert.ok(errors.some((e) => e.code === "token_error"), "the failed refresh was reported");
  assert.equal(recovered[0].recovered, false, "room.* has no history: messages may be lost");
  await c.publish("room.expiry", "after");
  await box.waitFor(1);
});

test("a kicked user (4403) is not reconnected", async () => {
  const c = client({ url: auth.url, token: token("kicked-1") });
  await c.connect();
  const errors = [];
  c.on("error", (e) => errors.push(e));
  cluster.cli("kick", "--user", "kicked-1");
  await eventually(() => c.state === "closed", "closed by the kick", 10_000);
  assert.ok(errors[0] instanceof ForbiddenError);
  assert.equal(errors[0].closeCode, 4403);
  await assert.rejects(c.publish("room.1", 1), (e) => e.code === "client_closed");
});

test("kill -9 of the gateway: the client moves to the next URL and resubscribes", async () => {
  const g1 = await cluster.gateway(31);
  const g2 = await cluster.gateway(32);
  const c = client({ urls: [g1.url, g2.url] });
  const urls = [];
  c.on("connected", (i) => urls.push(i.url));
  await c.connect();
  const box = inbox();
  await c.subscribe("room.failover", box);
  const publisher = client({ url: Cluster.url(cluster.devGateway) });
  await publisher.connect();
  await publisher.publish("room.failover", "before");
  await box.waitFor(1);

  await killHard(g1.proc);
  await eventually(() => urls.length === 2, "a connection to the second gateway", 20_000);
  assert.equal(urls[1], g2.url);
  await eventually(() => c.state === "connected", "connected");
  // Until the managers drop the dead gateway (its lease), a publish to a topic it held may
  // time out (outcome unknown): retry until the message comes through the second gateway.
  await eventually(async () => {
    await publisher.publish("room.failover", "after").catch((e) => {
      if (e.code !== "timeout") throw e;
    });
    return box.data().includes("after");
  }, "a message through the second gateway", 30_000);
  assert.equal(box.data()[0], "before");
  assert.ok(box.data().slice(1).every((d) => d === "after"));
});

test("kill -9 and restart on the same address: the client comes back by itself", async () => {
  const g = await cluster.gateway(33);
  const c = client({ url: g.url, reconnect: { initialMs: 200, maxMs: 1000 } });
  await c.connect();
  const box = inbox();
  await c.subscribe("room.restart", box);
  await killHard(g.proc);
  await eventually(() => c.state === "reconnecting", "reconnecting");
  await g.restart();
  await eventually(() => c.state === "connected", "connected to the restarted gateway", 20_000);
  const publisher = client({ url: Cluster.url(cluster.devGateway) });
  await publisher.connect();
  await eventually(async () => {
    await publisher.publish("room.restart", "hello again");
    await sleep(100);
    return box.messages.length > 0;
  }, "a message through the restarted gateway");
});

test("firetower dev: anonymous clients and demo tokens side by side", async () => {
  const r = await httpPostJson(cluster.devGateway, "/demo/token", { user: "alice" });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.user, "alice");
  assert.equal(r.headers["cache-control"], "no-store");
  const named = client({ url: Cluster.url(cluster.devGateway), token: r.body.token });
  await named.connect();
  assert.equal(named.user, "alice");
  await named.subscribe("demo.lobby", { onMessage() {} });
  await assert.rejects(named.subscribe("room.1", { onMessage() {} }), (e) => e instanceof ForbiddenError);
  const anonymous = client({ url: Cluster.url(cluster.devGateway) });
  await anonymous.connect();
  assert.equal(anonymous.user, undefined);
  await anonymous.subscribe("room.anything", { onMessage() {} });

  const refused = await httpPostJson(cluster.devGateway, "/demo/token", { user: "<script>" });
  assert.equal(refused.status, 400);
  assert.equal(refused.body.code, "invalid_field");
  const off = await httpPostJson(auth.addr, "/demo/token", { user: "alice" });
  assert.equal(off.status, 404, "off unless [demo] tokens = true");
  assert.equal(off.body.code, "not_found");
});
