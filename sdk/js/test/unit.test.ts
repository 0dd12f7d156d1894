// The pure parts, without a gateway.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff, Close, checkConv, directConv, type Message } from "../src/index.js";
import { frameText, parseFrame } from "../src/client.js";
import { Tracker } from "../src/tracker.js";

const conv = `g:${"b".repeat(32)}`;
const msg = (seq: number): Message => ({ conv, seq, id: `m${seq}`, from: "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23", body: seq, ts: 1 });
const timers = { gapGraceMs: 100, syncTimeoutMs: 5_000, retryAfterMs: 1_000 };

test("tracker: in order once, repeats dropped, gaps synced from what is held", () => {
  const t = new Tracker(true, timers);
  assert.deepEqual(t.onMsg(msg(1), 0).map((m) => m.seq), [1]);
  assert.deepEqual(t.onMsg(msg(1), 0), []);
  assert.deepEqual(t.onMsg(msg(4), 0), []);
  assert.deepEqual(t.dueSyncs(50), []);
  assert.deepEqual(t.dueSyncs(150), [[conv, 1]]);
  assert.deepEqual(t.onMsg(msg(2), 160).map((m) => m.seq), [2]);
  assert.deepEqual(t.onSynced(conv, { recovered: true, last_seq: 4 }, 170).surfaced, []);
  assert.deepEqual(t.onMsg(msg(3), 180).map((m) => m.seq), [3, 4]);
});

test("tracker: an epoch change drops what is above the base and syncs again", () => {
  const t = new Tracker(true, timers);
  t.track(conv, 0);
  t.dueSyncs(0);
  for (const s of [1, 2, 3]) t.onMsg(msg(s), 0);
  t.onSynced(conv, { recovered: true, last_seq: 3, epoch: 1, epoch_base: 0 }, 0);
  t.dueSyncs(0);
  const r = t.onSynced(conv, { recovered: true, last_seq: 3, epoch: 2, epoch_base: 1 }, 0);
  assert.ok(r.epochChanged);
  assert.equal(t.held(conv), 1);
  assert.deepEqual(t.dueSyncs(0), [[conv, 1]]);
});

test("backoff: full jitter under a doubling ceiling", () => {
  const b = new Backoff(100, 1_000);
  const ceilings = [];
  for (let i = 0; i < 6; i++) {
    const c = b.ceiling();
    ceilings.push(c);
    assert.ok(b.next() <= c);
  }
  assert.deepEqual(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
});

test("ids and frames are bounded", () => {
  const a = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
  const b = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359";
  assert.equal(directConv(a, b), directConv(b, a));
  assert.equal(checkConv(`dm:${b}:${a}`), directConv(a, b));
  assert.throws(() => directConv(a, a), /two different/);
  assert.throws(() => checkConv(`ch:${"x".repeat(65)}`), /not a conversation id/);
  assert.throws(() => frameText({ type: "send", conv, id: "m", body: "é".repeat(40_000) }), /bytes/);
  assert.equal(parseFrame("[1]"), undefined);
  assert.equal(parseFrame("not json"), undefined);
  assert.equal(parseFrame('{"type":"pong"}')?.type, "pong");
  assert.equal(Close.GOING_AWAY, 1012);
});
