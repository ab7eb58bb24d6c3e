// Copy the compiled client (dist/*.js) into the gateway's demo page (gateway/src/demo/firetower/),
// which the gateway binary embeds. `npm run sync-demo` builds first; test/demo-copy.test.mjs
// fails when the committed copy differs from a fresh build.

import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(pkg, "dist");
const target = resolve(pkg, "../../gateway/src/demo/firetower");

rmSync(target, { recursive: true, force: true });
mkdirSync(target, { recursive: true });
for (const name of readdirSync(dist).filter((n) => n.endsWith(".js")).sort()) {
  copyFileSync(join(dist, name), join(target, name));
  console.log(`gateway/src/demo/firetower/${name}`);
}
