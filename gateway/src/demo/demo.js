// The demo chat page's logic, on @firetower/client (served next to it as /firetower/*.js).
//
//   join ─▶ POST /demo/token {"user"} ─▶ connect ─▶ history(demo.ROOM) ─▶ subscribe(since the
//   history's last offset, joinLeave) ─▶ presence(demo.ROOM); a reconnect that could not
//   recover every message (recovered: false) fetches the history again.
//
// Everything the page shows is set as text (textContent), never as HTML.

import { FiretowerClient } from "/firetower/index.js";

const HISTORY_LIMIT = 100;
const $ = (id) => document.getElementById(id);

let client;
let subscription;
let topic;
let me;

/** A token for `user` from the gateway's demo endpoint ([demo] tokens = true). */
async function demoToken(user) {
  const r = await fetch("/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    throw new Error(body.message ?? `POST /demo/token answered ${r.status}`);
  }
  return body.token;
}

function notice(text) {
  $("notice").textContent = text;
}

function setStatus(state) {
  const s = $("status");
  s.textContent = state;
  s.dataset.state = state;
}

function line(cls, parts) {
  const li = document.createElement("li");
  li.className = cls;
  for (const [c, text] of parts) {
    const span = document.createElement("span");
    span.className = c;
    span.textContent = text;
    li.append(span);
  }
  const list = $("messages");
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

function showMessage(m) {
  const d = m.data !== null && typeof m.data === "object" ? m.data : { text: String(m.data) };
  const when = typeof d.at === "number" ? new Date(d.at).toLocaleTimeString() : "";
  line("message", [
    ["who", String(d.user ?? "?")],
    ["text", String(d.text ?? "")],
    ["when", when],
  ]);
}

function system(text) {
  line("system", [["text", text]]);
}

async function showPresence() {
  try {
    const { users } = await client.presence(topic);
    const list = $("online");
    list.replaceChildren(
      ...users.map((u) => {
        const li = document.createElement("li");
        li.textContent = u.connections > 1 ? `${u.user} (${u.connections})` : u.user;
        return li;
      }),
    );
  } catch (e) {
    $("online").replaceChildren();
    notice(`Presence: ${e.message} (enable it with: firetower cluster presence enable 'demo.*')`);
  }
}

/** Show the topic's history; returns where it ends, to subscribe from there. */
async function showHistory() {
  $("messages").replaceChildren();
  try {
    const h = await client.history(topic, { limit: HISTORY_LIMIT });
    for (const m of h.messages) {
      showMessage(m);
    }
    return h.offset > 0 ? { epoch: h.epoch, offset: h.offset } : undefined;
  } catch (e) {
    notice(`History: ${e.message} (keep some with: firetower cluster history set 'demo.*' --size 1000 --ttl 1h)`);
    return undefined;
  }
}

async function join(name, room) {
  me = name;
  topic = `demo.${room}`;
  localStorage.setItem("firetower-demo", JSON.stringify({ name, room }));
  $("join").hidden = true;
  $("chat").hidden = false;
  $("room-name").textContent = room;
  $("me").textContent = name;
  notice("");
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  let token;
  try {
    token = await demoToken(name);
  } catch (e) {
    notice(`No demo token (${e.message}); joining anonymously, so you are not listed as online.`);
  }
  client = new FiretowerClient({
    url: wsUrl,
    ...(token ? { token, refreshToken: () => demoToken(name) } : {}),
    reconnect: { initialMs: 500, maxMs: 10_000 },
  });
  client.on("state", setStatus);
  client.on("error", (e) => notice(e.message));
  await client.connect();
  const since = await showHistory();
  subscription = await client.subscribe(topic, {
    since,
    joinLeave: true,
    onMessage: showMessage,
    onJoin: (e) => {
      system(`${e.user} joined`);
      void showPresence();
    },
    onLeave: (e) => {
      system(`${e.user} left`);
      void showPresence();
    },
    onGap: (e) => system(`${e.dropped} messages were dropped for this slow connection`),
    onRecovered: async (e) => {
      if (!e.recovered && since !== undefined) {
        // Messages may be lost for good: the history is the state of this chat, reload it.
        await showHistory();
      }
      void showPresence();
    },
  });
  await showPresence();
  $("text").focus();
}

async function leave() {
  localStorage.removeItem("firetower-demo");
  await subscription?.unsubscribe().catch(() => undefined);
  client?.close();
  client = subscription = undefined;
  $("chat").hidden = true;
  $("join").hidden = false;
  setStatus("idle");
}

$("join").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("name").value.trim();
  const room = $("room").value.trim().replace(/[^A-Za-z0-9_-]/g, "-") || "lobby";
  join(name, room).catch((e) => notice(e.message));
});

$("send").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text || !client) {
    return;
  }
  input.value = "";
  client.publish(topic, { user: me, text, at: Date.now() }).catch((e) => notice(`Not sent: ${e.message}`));
});

$("leave").addEventListener("click", () => void leave());

const saved = JSON.parse(localStorage.getItem("firetower-demo") ?? "null");
if (saved?.name && saved?.room) {
  $("name").value = saved.name;
  $("room").value = saved.room;
  join(saved.name, saved.room).catch((e) => notice(e.message));
}
