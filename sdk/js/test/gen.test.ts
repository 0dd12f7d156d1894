// The generated modules follow the protocol's JSON Schema: the checked-in
// src/gen matches proto/schema, and a changed pattern in the schema changes
// what is generated (so `--check`, which the test script runs first, fails
// until the SDK is regenerated) and what the SDK accepts.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { CHANNEL_NAME_PATTERN, MSG_ID_MAX_LENGTH, MSG_ID_PATTERN, channelConv, checkMsgId } from "../src/index.js";

const sdk = fileURLToPath(new URL("../../", import.meta.url));
const schema = fileURLToPath(new URL("../../../../proto/schema/", import.meta.url));
const script = join(sdk, "scripts/gen-types.mjs");

const temps: string[] = [];
after(() => {
  for (const d of temps) rmSync(d, { recursive: true, force: true });
});
function temp(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  temps.push(d);
  return d;
}

function gen(...args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [script, ...args], { cwd: sdk, encoding: "utf8" });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** A copy of proto/schema with `edit` applied to every document. */
function editedSchema(edit: (doc: { $defs: Record<string, Record<string, unknown>> }) => void): string {
  const dir = temp("sb-js-schema-");
  cpSync(schema, dir, { recursive: true });
  for (const name of ["frames.json", "rest.json"]) {
    const doc = JSON.parse(readFileSync(join(dir, name), "utf8"));
    edit(doc);
    writeFileSync(join(dir, name), JSON.stringify(doc));
  }
  return dir;
}

test("src/gen is what proto/schema generates", () => {
  const r = gen("--check");
  assert.equal(r.status, 0, r.out);
});

test("a pattern changed in the schema changes the generated patterns, and --check fails on the old ones", () => {
  const dir = editedSchema((doc) => {
    if (doc.$defs.MsgId) Object.assign(doc.$defs.MsgId, { pattern: "^[a-z]{1,8}$", maxLength: 8 });
  });
  const stale = gen("--check", "--schema-dir", dir);
  assert.equal(stale.status, 1, stale.out);
  assert.match(stale.out, /src\/gen\/patterns\.ts is not what/);

  const out = temp("sb-js-gen-");
  const wrote = gen("--schema-dir", dir, "--out-dir", out);
  assert.equal(wrote.status, 0, wrote.out);
  const patterns = readFileSync(join(out, "patterns.ts"), "utf8");
  assert.match(patterns, /export const MSG_ID_PATTERN = new RegExp\("\^\[a-z\]\{1,8\}\$"\);/);
  assert.match(patterns, /export const MSG_ID_MAX_LENGTH = 8;/);
  assert.equal(gen("--check", "--schema-dir", dir, "--out-dir", out).status, 0);
});

test("a pattern the SDK cannot use whole is refused with a clear error", () => {
  const dir = editedSchema((doc) => {
    if (doc.$defs.ConvId) doc.$defs.ConvId.pattern = "g:[0-9a-f]{32}";
  });
  const r = gen("--check", "--schema-dir", dir);
  assert.notEqual(r.status, 0);
  assert.match(r.out, /ConvId's pattern is not anchored/);
});

test("the SDK's id checks are the generated patterns", () => {
  assert.equal(MSG_ID_PATTERN.source, "^[A-Za-z0-9_.:-]{1,64}$");
  assert.equal(checkMsgId("x".repeat(MSG_ID_MAX_LENGTH)), "x".repeat(MSG_ID_MAX_LENGTH));
  assert.throws(() => checkMsgId("x".repeat(MSG_ID_MAX_LENGTH + 1)), (e: Error) => e.message.includes(MSG_ID_PATTERN.source));
  assert.throws(() => checkMsgId("has space"), /message id/);
  assert.equal(channelConv("live.match-42:comments"), "ch:live.match-42:comments");
  assert.throws(() => channelConv("ü"), (e: Error) => e.message.includes(CHANNEL_NAME_PATTERN.source));
  assert.throws(() => channelConv(""), /channel name/);
});
