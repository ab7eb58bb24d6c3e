// A Firetower cluster for the tests, on loopback: `firetower dev` (three managers and a
// gateway) plus gateways of our own with a config file, as tests/acceptance/cluster.py does.
// FIRETOWER_BIN names the binary; default ../../target/debug/firetower from the package.

import { spawn, spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { get, request } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const BIN = process.env.FIRETOWER_BIN ?? resolve(PACKAGE_DIR, "../../target/debug/firetower");

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function portFree(port) {
  return new Promise((ok) => {
    const s = createServer();
    s.once("error", () => ok(false));
    s.listen(port, "127.0.0.1", () => s.close(() => ok(true)));
  });
}

/** A first port with the next n-1 free too (dev uses consecutive ports). */
async function freeBlock(n) {
  for (let tries = 0; tries < 200; tries++) {
    const base = 20000 + Math.floor(Math.random() * 20000);
    let all = true;
    for (let p = base; p < base + n && all; p++) {
      all = await portFree(p);
    }
    if (all) {
      return base;
    }
  }
  throw new Error("no free port block");
}

/** GET http://addr/path: { status, body, headers }. */
export function httpGet(addr, path) {
  return new Promise((ok, fail) => {
    const req = get({ host: addr.split(":")[0], port: Number(addr.split(":")[1]), path, timeout: 2000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => ok({ status: res.statusCode, body, headers: res.headers }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", fail);
  });
}

/** POST a JSON body to http://addr/path: { status, body (parsed when JSON), headers }. */
export function httpPostJson(addr, path, value) {
  const payload = Buffer.from(JSON.stringify(value));
  return new Promise((ok, fail) => {
    const req = request(
      {
        host: addr.split(":")[0],
        port: Number(addr.split(":")[1]),
        path,
        method: "POST",
        timeout: 2000,
        headers: { "Content-Type": "application/json", "Content-Length": payload.length },
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (body += c));
        res.on("end", () => {
          let parsed = body;
          try {
            parsed = JSON.parse(body);
          } catch {
            // Not JSON: keep the text.
          }
          ok({ status: res.statusCode, body: parsed, headers: res.headers });
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", fail);
    req.end(payload);
  });
}

async function waitReady(addr, proc, log, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`process exited (${proc.exitCode ?? proc.signalCode}):\n${readFileSync(log, "utf8")}`);
    }
    try {
      if ((await httpGet(addr, "/readyz")).status === 200) {
        return;
      }
    } catch {
      // Not listening yet.
    }
    await sleep(200);
  }
  throw new Error(`${addr} never became ready:\n${readFileSync(log, "utf8")}`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `probe` until it returns something truthy; fail after `timeoutMs` with `what`. */
export async function eventually(probe, what, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v) {
        return v;
      }
    } catch (e) {
      last = e;
    }
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ""}`);
}

/** An HS256 JWT signed with `secret`. */
export function signHs256(claims, secret) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

export class Cluster {
  /** Start `firetower dev`; resolves once its gateway is ready. */
  static async start() {
    if (!existsSync(BIN)) {
      throw new Error(`no firetower binary at ${BIN}: build it (cargo build) or set FIRETOWER_BIN`);
    }
    const c = new Cluster();
    await c.boot();
    return c;
  }

  constructor() {
    this.root = mkdtempSync(join(tmpdir(), "firetower-ts-"));
    this.procs = [];
  }

  async boot() {
    this.base = await freeBlock(9);
    this.admins = [0, 1, 2].map((i) => `127.0.0.1:${this.base + 2 * i + 1}`);
    this.devGateway = `127.0.0.1:${await freePort()}`;
    this.tlsDir = join(this.root, "dev", "tls");
    const log = join(this.root, "dev.log");
    const p = this.spawn(
      [BIN, "dev", "--data-dir", join(this.root, "dev"), "--base-port", String(this.base), "--listen", this.devGateway],
      log,
    );
    await waitReady(this.devGateway, p, log);
  }

  /** `ws://` URL of a gateway address. */
  static url(addr) {
    return `ws://${addr}/ws`;
  }

  spawn(args, log) {
    const out = openSync(log, "a");
    const p = spawn(args[0], args.slice(1), {
      stdio: ["ignore", out, out],
      env: { ...process.env, FIRETOWER_LOG: process.env.FIRETOWER_LOG ?? "info,openraft=warn" },
    });
    this.procs.push(p);
    return p;
  }

  /**
   * Start `firetower gateway --config` with `configText` (TOML) after the cluster part;
   * `listen` reuses an address (a restarted gateway taking over). Resolves to
   * { addr, proc, log, restart() }.
   */
  async gateway(id, configText = "allow_anonymous = true\n", listen = undefined) {
    if (!existsSync(join(this.tlsDir, `gateway-${id}.pem`))) {
      const issued = spawnSync(BIN, ["certs", "issue", "--dir", this.tlsDir, "--gateway", String(id)], { encoding: "utf8" });
      if (issued.status !== 0) {
        throw new Error(`certs issue failed: ${issued.stderr}`);
      }
    }
    const addr = listen ?? `127.0.0.1:${await freePort()}`;
    const cfg = join(this.root, `gateway-${id}.toml`);
    const managers = this.admins.map((a) => `"${a}"`).join(", ");
    // The cluster part first: configText may open tables ([auth], [demo]).
    writeFileSync(
      cfg,
      `id = ${id}\nlisten = "${addr}"\nmanagers = [${managers}]\n${configText}\n[tls]\ndir = "${this.tlsDir}"\n`,
    );
    const log = join(this.root, `gateway-${id}.log`);
    const proc = this.spawn([BIN, "gateway", "--config", cfg], log);
    await waitReady(addr, proc, log);
    return {
      addr,
      proc,
      log,
      url: Cluster.url(addr),
      restart: () => this.gateway(id, configText, addr),
    };
  }

  /** `firetower cluster --tls-dir ... ARGS --admin ADMIN`; throws on a non-zero exit. */
  cli(...args) {
    const r = spawnSync(BIN, ["cluster", "--tls-dir", this.tlsDir, ...args, "--admin", this.admins[0]], {
      encoding: "utf8",
    });
    if (r.status !== 0) {
      throw new Error(`firetower cluster ${args.join(" ")} failed (${r.status}):\n${r.stdout}${r.stderr}`);
    }
    return r.stdout;
  }

  /** A file under this cluster's scratch directory. */
  file(name, text) {
    const path = join(this.root, name);
    writeFileSync(path, text);
    return path;
  }

  async stop() {
    for (const p of [...this.procs].reverse()) {
      if (p.exitCode === null && p.signalCode === null) {
        p.kill("SIGTERM");
      }
    }
    await Promise.all(
      this.procs.map(
        (p) =>
          new Promise((ok) => {
            if (p.exitCode !== null || p.signalCode !== null) {
              return ok();
            }
            const t = setTimeout(() => {
              p.kill("SIGKILL");
              ok();
            }, 15_000);
            p.once("exit", () => {
              clearTimeout(t);
              ok();
            });
          }),
      ),
    );
    if (!process.env.FIRETOWER_KEEP) {
      rmSync(this.root, { recursive: true, force: true });
    }
  }
}

/** Kill -9 and wait until the process is gone. */
export function killHard(proc) {
  return new Promise((ok) => {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      return ok();
    }
    proc.once("exit", () => ok());
    proc.kill("SIGKILL");
  });
}
