#!/usr/bin/env node
// A tiny Node.js `ws` broadcast server: the "one process, no cluster" baseline of
// scripts/bench/compare.sh. It speaks just enough of Firetower's JSON client protocol
// (docs/gateway.md) for `firetower bench fanout|latency|idle --system node-ws` to drive it
// with the same scenarios as a gateway:
//
//   {"op":"subscribe","topics":[...],"id":N}    -> {"op":"ack","id":N}
//   {"op":"unsubscribe","topics":[...],"id":N}  -> {"op":"ack","id":N}
//   {"op":"publish","topic":T,"data":D,"id":N}  -> {"op":"message","topic":T,"data":D,"term":1,"seq":S}
//                                                  to every subscriber of T, then {"op":"ack","id":N}
//   {"op":"ping","id":N}                        -> {"op":"pong","id":N}
//
// Nothing is replicated or persisted. A subscriber whose socket has more than 1 MiB queued
// misses messages (like the gateway's bounded send queue); each message is encoded once and
// the same buffer is sent to every subscriber.
//
//   NODE_PATH=/usr/share/nodejs node ws-broadcast.js 127.0.0.1 7320
'use strict';

const { WebSocketServer } = require('ws');

const host = process.argv[2] || '127.0.0.1';
const port = Number(process.argv[3] || 7320);
if (!host.startsWith('127.')) {
  console.error(`refusing to listen on ${host}: loopback (127.0.0.0/8) only`);
  process.exit(2);
}

const MAX_QUEUED = 1 << 20;
const topics = new Map(); // topic -> { subs: Set<WebSocket>, seq: number }
let dropped = 0;

const wss = new WebSocketServer({
  host,
  port,
  perMessageDeflate: false,
  maxPayload: 64 * 1024,
  clientTracking: false,
  handleProtocols: (protocols) => (protocols.has('firetower.json') ? 'firetower.json' : false),
});

function reply(ws, text) {
  ws.send(text);
}

function error(ws, id, code, message) {
  reply(ws, JSON.stringify({ op: 'error', id: id || 0, code, message }));
}

wss.on('connection', (ws) => {
  const mine = new Set();
  ws.on('message', (raw, isBinary) => {
    if (isBinary) {
      ws.close(1003, 'binary on json');
      return;
    }
    let m;
    try {
      m = JSON.parse(raw);
    } catch (e) {
      error(ws, 0, 'invalid_json', 'not JSON');
      return;
    }
    if (m === null || typeof m !== 'object') {
      error(ws, 0, 'invalid_json', 'not an object');
      return;
    }
    const id = Number.isInteger(m.id) && m.id >= 0 ? m.id : 0;
    switch (m.op) {
      case 'subscribe':
      case 'unsubscribe': {
        if (!Array.isArray(m.topics) || m.topics.length === 0 || !m.topics.every((t) => typeof t === 'string' && t.length > 0 && t.length <= 256)) {
          error(ws, id, 'invalid_field', 'topics');
          return;
        }
        for (const t of m.topics) {
          if (m.op === 'subscribe') {
            let entry = topics.get(t);
            if (!entry) {
              entry = { subs: new Set(), seq: 0 };
              topics.set(t, entry);
            }
            entry.subs.add(ws);
            mine.add(t);
          } else {
            const entry = topics.get(t);
            if (entry) {
              entry.subs.delete(ws);
              if (entry.subs.size === 0) topics.delete(t);
            }
            mine.delete(t);
          }
        }
        reply(ws, `{"op":"ack","id":${id}}`);
        return;
      }
      case 'publish': {
        if (typeof m.topic !== 'string' || !('data' in m)) {
          error(ws, id, 'missing_field', 'topic or data');
          return;
        }
        const entry = topics.get(m.topic);
        if (entry) {
          entry.seq += 1;
          const text = `{"op":"message","topic":${JSON.stringify(m.topic)},"data":${JSON.stringify(m.data)},"term":1,"seq":${entry.seq}}`;
          const frame = Buffer.from(text);
          for (const sub of entry.subs) {
            if (sub.bufferedAmount > MAX_QUEUED) {
              dropped += 1;
              continue;
            }
            sub.send(frame, { binary: false });
          }
        }
        reply(ws, `{"op":"ack","id":${id}}`);
        return;
      }
      case 'ping':
        reply(ws, `{"op":"pong","id":${id}}`);
        return;
      default:
        error(ws, id, 'unknown_op', String(m.op));
    }
  });
  ws.on('close', () => {
    for (const t of mine) {
      const entry = topics.get(t);
      if (entry) {
        entry.subs.delete(ws);
        if (entry.subs.size === 0) topics.delete(t);
      }
    }
  });
  ws.on('error', () => {});
});

wss.on('listening', () => {
  console.log(`ws-broadcast listening on ws://${host}:${port}/ws (node ${process.version})`);
});
wss.on('error', (e) => {
  console.error(`ws-broadcast: ${e.message}`);
  process.exit(1);
});

function stop() {
  console.log(`ws-broadcast stopping; ${dropped} deliveries dropped for slow subscribers`);
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
