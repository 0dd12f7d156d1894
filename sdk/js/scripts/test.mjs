// The SDK's test script (scripts/test runs it; so can `npm test` here):
// generated types current, strict build with declarations, then the tests
// against real gateways (SWITCHBOARD_GATEWAY_BIN, default the workspace's
// target/debug/switchboard-gateway; SWITCHBOARD_WORKER_BIN, default
// target/debug/switchboard-worker; redis-server on PATH; PostgreSQL's initdb
// on PATH, in PG_BIN_DIR or under /usr/lib/postgresql/*/bin).
import { spawnSync } from "node:child_process";
import { readdirSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";

// The SDK runs on Node >= 18; its tests use node --test flags of 20.14+.
const [major, minor] = process.versions.node.split(".").map(Number);
if (major < 20 || (major === 20 && minor < 14)) {
  console.error(`the SDK's tests need Node.js >= 20.14 (this is ${process.version})`);
  process.exit(1);
}
const dir = fileURLToPath(new URL("..", import.meta.url));
const tsc = `${dir}node_modules/typescript/bin/tsc`;
function run(what, cmd, args) {
  console.log(`\n== ${what}`);
  const r = spawnSync(cmd, args, { cwd: dir, stdio: "inherit" });
  if (r.status !== 0) {
    console.error(`${what} failed (${r.status ?? r.signal})`);
    process.exit(1);
  }
}
run("generated types match proto/schema", process.execPath, ["scripts/gen-types.mjs", "--check"]);
rmSync(`${dir}dist`, { recursive: true, force: true });
rmSync(`${dir}build`, { recursive: true, force: true });
run("build (tsc, strict, declarations)", process.execPath, [tsc, "-p", "tsconfig.json"]);
run("build tests", process.execPath, [tsc, "-p", "tsconfig.test.json"]);
// One file at a time: each starts its own gateways and the machine is small.
run("tests (node --test)", process.execPath, [
  "--test",
  "--test-force-exit",
  "--test-concurrency=1",
  ...process.argv.slice(2),
  ...readdirSync(`${dir}build/test`)
    .filter((f) => f.endsWith(".test.js"))
    .map((f) => `build/test/${f}`),
]);
