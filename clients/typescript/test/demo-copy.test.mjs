// The gateway embeds a copy of the compiled client (gateway/src/demo/firetower/, served to the
// demo page). It must equal a fresh build of src/, or the page runs a stale client: after
// changing src/, run `npm run sync-demo` and commit the copy.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test } from "node:test";

import { PACKAGE_DIR } from "./cluster.mjs";

const COPY = resolve(PACKAGE_DIR, "../../gateway/src/demo/firetower");

test("the gateway's copy of the compiled client equals a fresh tsc build", () => {
  const out = mkdtempSync(join(tmpdir(), "firetower-tsc-"));
  try {
    const tsc = createRequire(join(PACKAGE_DIR, "package.json")).resolve("typescript/bin/tsc");
    execFileSync(process.execPath, [tsc, "-p", join(PACKAGE_DIR, "tsconfig.json"), "--outDir", out], { stdio: "inherit" });
    const fresh = readdirSync(out).filter((n) => n.endsWith(".js")).sort();
    const copied = readdirSync(COPY).filter((n) => n.endsWith(".js")).sort();
    const hint = "the demo's client is stale: run `npm run sync-demo` in clients/typescript and commit gateway/src/demo/firetower/";
    assert.deepEqual(copied, fresh, hint);
    for (const name of fresh) {
      assert.equal(readFileSync(join(COPY, name), "utf8"), readFileSync(join(out, name), "utf8"), `${name}: ${hint}`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
