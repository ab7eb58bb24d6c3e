// The demo page (served by the gateway at GET /) in headless Chromium: two people chat in a
// room, see each other online, and a reload shows the history.
//
// Needs /usr/bin/chromium (or CHROMIUM=path) and playwright-core (a devDependency).
// NEEDS THE SERVER'S HISTORY AND PRESENCE (issue 15) for the "online" and "after a reload"
// assertions: until `cluster history` and `cluster presence` exist those fail; the chat
// itself works without them.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

import { Cluster, httpGet } from "../test/cluster.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let cluster;
let browser;
const setup = {};

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)`);
  }
  cluster = await Cluster.start();
  for (const [what, args] of [
    ["history", ["history", "set", "demo.*", "--size", "1000", "--ttl", "1h"]],
    ["presence", ["presence", "enable", "demo.*"]],
  ]) {
    try {
      cluster.cli(...args);
      setup[what] = "on";
    } catch (e) {
      setup[what] = `not available: ${String(e.message).split("\n")[1] ?? e.message}`;
    }
  }
  // Playwright gives the browser a fresh temporary --user-data-dir and removes it on close.
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

/** A page of its own (own storage), with its console errors collected. */
async function person() {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") {
      problems.push(`console: ${m.text()}`);
    }
  });
  return { page, problems };
}

async function join(page, name, room) {
  await page.goto(`http://${cluster.devGateway}/`);
  await page.fill("#name", name);
  await page.fill("#room", room);
  await page.click("#join-button");
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 20_000 });
  assert.equal(await page.isVisible("#join"), false, "the join form is gone once joined");
  assert.equal(await page.isVisible("#chat"), true);
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send-button");
}

const messages = (page) => page.locator("#messages li.message .text").allTextContents();

test("the page is served with its content type and a strict CSP", async () => {
  const r = await httpGet(cluster.devGateway, "/");
  assert.equal(r.status, 200);
  assert.equal(r.headers["content-type"], "text/html; charset=utf-8");
  assert.match(r.headers["content-security-policy"], /default-src 'none'/);
  assert.match(r.headers["content-security-policy"], /script-src 'self'/);
  assert.equal(r.headers["x-content-type-options"], "nosniff");
  const js = await httpGet(cluster.devGateway, "/firetower/index.js");
  assert.equal(js.headers["content-type"], "text/javascript; charset=utf-8");
  assert.match(js.body, /FiretowerClient/);
});

test("two pages chat; a reload shows the history", async () => {
  const alice = await person();
  const bob = await person();
  await join(alice.page, "alice", "e2e");
  await join(bob.page, "bob", "e2e");

  await say(alice.page, "hello from alice");
  await bob.page.waitForFunction(
    () => [...document.querySelectorAll("#messages li.message .text")].some((e) => e.textContent === "hello from alice"),
    null,
    { timeout: 10_000 },
  );
  await say(bob.page, "hi alice");
  await alice.page.waitForFunction(
    () => [...document.querySelectorAll("#messages li.message .text")].some((e) => e.textContent === "hi alice"),
    null,
    { timeout: 10_000 },
  );
  const csp = [...alice.problems, ...bob.problems].filter((p) => /Content Security Policy|Refused to/.test(p));
  assert.deepEqual(csp, [], "nothing blocked by the CSP");

  // Presence (issue 15): each sees both names online.
  assert.equal(setup.presence, "on", `presence for demo.*: ${setup.presence}`);
  await alice.page.waitForFunction(
    () => {
      const names = [...document.querySelectorAll("#online li")].map((e) => e.textContent);
      return names.includes("alice") && names.includes("bob");
    },
    null,
    { timeout: 10_000 },
  );

  // History (issue 15): bob reloads, rejoins by himself (the page remembers him) and sees
  // the conversation.
  assert.equal(setup.history, "on", `history for demo.*: ${setup.history}`);
  await bob.page.reload();
  await bob.page.waitForSelector('#status[data-state="connected"]', { timeout: 20_000 });
  await bob.page.waitForFunction(() => document.querySelectorAll("#messages li.message").length >= 2, null, { timeout: 10_000 });
  assert.deepEqual(await messages(bob.page), ["hello from alice", "hi alice"]);
});
