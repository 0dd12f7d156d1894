// Builds the browser chat into one self-contained file, dist/index.html
// (script and styles inline), which is checked in: `switchboard dev`
// embeds it at compile time and serves it at /demo. esbuild (pinned)
// bundles src/main.ts with the SDK's sources and its pinned dependencies
// (sdk/js/node_modules). `--check` fails when dist/index.html is not what
// the sources build to (the web test runs it first).
import { build } from "esbuild";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";

const dir = fileURLToPath(new URL(".", import.meta.url));
const out = `${dir}dist/index.html`;
const check = process.argv.includes("--check");

const bundle = await build({
  entryPoints: [`${dir}src/main.ts`],
  bundle: true,
  write: false,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  legalComments: "eof",
  charset: "utf8",
  nodePaths: [`${dir}../../sdk/js/node_modules`],
  logLevel: "warning",
});
const js = bundle.outputFiles[0].text;
// Inline, the script must not end its own element.
if (/<\/script/i.test(js)) throw new Error("the bundle contains </script: it cannot be inlined");
const css = readFileSync(`${dir}src/style.css`, "utf8");
const html = readFileSync(`${dir}src/index.html`, "utf8")
  .replace("/*STYLE*/", () => css.trim())
  .replace("/*SCRIPT*/", () => js.trim());

if (check) {
  let have = "";
  try {
    have = readFileSync(out, "utf8");
  } catch {}
  if (have !== html) {
    console.error("examples/web/dist/index.html is stale: run `node examples/web/build.mjs` and commit it");
    process.exit(1);
  }
  console.log("examples/web/dist/index.html is current");
} else {
  mkdirSync(`${dir}dist`, { recursive: true });
  writeFileSync(out, html);
  console.log(`wrote ${out} (${html.length} bytes)`);
}
