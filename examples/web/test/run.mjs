// The browser chat's test script (scripts/test runs it): the checked-in
// dist/index.html is what the sources build to, the page type-checks with
// the SDK's pinned TypeScript, then node --test drives it in headless
// Chromium against a real `switchboard dev`.
//   SWITCHBOARD_BIN   the switchboard binary (default target/debug/switchboard)
//   CHROMIUM_BIN      the browser (default /usr/bin/chromium, Debian's package)
//   --screenshot      also save docs/web-chat.png from the run
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const dir = fileURLToPath(new URL("..", import.meta.url));
function run(what, args, env = {}) {
  console.log(`\n== ${what}`);
  const r = spawnSync(process.execPath, args, { cwd: dir, stdio: "inherit", env: { ...process.env, ...env } });
  if (r.status !== 0) {
    console.error(`${what} failed (${r.status ?? r.signal})`);
    process.exit(1);
  }
}
run("dist/index.html is current", ["build.mjs", "--check"]);
run("type check (tsc, strict)", ["../../sdk/js/node_modules/typescript/bin/tsc", "-p", "tsconfig.json"]);
run(
  "browser chat in headless Chromium (node --test)",
  ["--test", "--test-force-exit", "--test-concurrency=1", "test/chat.test.mjs"],
  process.argv.includes("--screenshot") ? { WEB_SCREENSHOT: "1" } : {},
);
