// `npm pack` makes a tarball that installs into an empty project and imports, with types and
// without runtime dependencies.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { PACKAGE_DIR } from "./cluster.mjs";

const npm = process.platform === "win32" ? "npm.cmd" : "npm";

test("npm pack makes an installable tarball", () => {
  const dir = mkdtempSync(join(tmpdir(), "firetower-pack-"));
  try {
    const packed = JSON.parse(
      execFileSync(npm, ["pack", "--json", "--pack-destination", dir], { cwd: PACKAGE_DIR, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }),
    );
    const files = packed[0].files.map((f) => f.path);
    assert.ok(files.includes("dist/index.js") && files.includes("dist/index.d.ts"), files.join(", "));
    assert.ok(!files.some((f) => f.startsWith("src/") || f.startsWith("test/")), "only the build is shipped");
    const tarball = join(dir, packed[0].filename);
    const app = join(dir, "app");
    execFileSync("mkdir", ["-p", app]);
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", version: "1.0.0", type: "module", private: true }));
    execFileSync(npm, ["install", "--no-audit", "--no-fund", "--offline", tarball], { cwd: app, stdio: "inherit" });
    const installed = join(app, "node_modules", "@firetower", "client");
    assert.ok(existsSync(join(installed, "dist", "index.d.ts")));
    const manifest = JSON.parse(readFileSync(join(installed, "package.json"), "utf8"));
    assert.equal(manifest.dependencies, undefined, "no runtime dependencies");
    writeFileSync(
      join(app, "check.mjs"),
      `import { FiretowerClient, FiretowerError, ForbiddenError } from "@firetower/client";
       const c = new FiretowerClient({ url: "ws://127.0.0.1:1/ws", WebSocket: class {} });
       if (c.state !== "idle" || !(new ForbiddenError("forbidden", "x") instanceof FiretowerError)) process.exit(1);
       console.log("imported");`,
    );
    assert.equal(execFileSync(process.execPath, ["check.mjs"], { cwd: app, encoding: "utf8" }).trim(), "imported");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
