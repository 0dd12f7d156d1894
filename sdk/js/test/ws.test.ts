// The WebSocket client against real gateways: memory and Redis engines.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Auth, Client, MemoryStore, Rest, directConv } from "../src/index.js";
import { Events, Gateway, Redis, connect, fast, wallet } from "./harness.js";

for (const engine of ["memory", "redis"] as const) {
  describe(`WebSocket on the ${engine} engine`, { timeout: 120_000 }, () => {
    let gw: Gateway;
    let redis: Redis | undefined;
    before(async () => {
      if (engine === "redis") redis = await Redis.start();
      gw = await Gateway.start(redis ? { redisUrl: redis.url } : {});
    });
    after(async () => {
      await gw.kill();
      await redis?.stop();
    });

    test("send, ack, receive in order; a repeated id answers the original seq", async () => {
      const wa = wallet();
      const wb = wallet();
      const a = await connect(gw.url, {}, wa);
      const b = await connect(gw.url, {}, wb);
      const eb = new Events(b);
      const conv = directConv(wa.address, wb.address);
      const sent = [];
      for (let i = 1; i <= 5; i++) sent.push(await a.send(conv, { text: `m${i}` }, { id: `m${i}` }));
      assert.deepEqual(sent.map((s) => s.seq), [1, 2, 3, 4, 5]);
      const got = await eb.messages(conv, 5);
      assert.deepEqual(got.map((m) => m.seq), [1, 2, 3, 4, 5]);
      assert.deepEqual(got.map((m) => (m.body as { text: string }).text), ["m1", "m2", "m3", "m4", "m5"]);
      assert.equal(got[0]?.from, wa.address);
      const again = await a.send(conv, { text: "m1" }, { id: "m1" });
      assert.equal(again.seq, 1);
      await a.send(conv, "after", { id: "m6" });
      const all = await eb.messages(conv, 6);
      assert.deepEqual(all.map((m) => m.id), ["m1", "m2", "m3", "m4", "m5", "m6"], "m1 once");
      // The sender's own messages are in its store with their seqs.
      await a.flush();
      assert.deepEqual((await a.store.messages(conv)).map((m) => m.seq), [1, 2, 3, 4, 5, 6]);
      await Promise.all([a.close(), b.close()]);
    });

    test("bad input is refused before anything is written", async () => {
      const a = await connect(gw.url);
      await assert.rejects(a.send("x:1", 1), /not a conversation id/);
      await assert.rejects(a.send(`g:${"0".repeat(32)}`, 1, { id: "has space" }), /message id/);
      await assert.rejects(a.send(`g:${"0".repeat(32)}`, "x".repeat(70_000)), /over the 65536/);
      await assert.rejects(a.send(`g:${"0".repeat(32)}`, undefined), /not a JSON value/);
      // A group the user is not in: the gateway refuses, the promise says so.
      await assert.rejects(a.send(`g:${"0".repeat(32)}`, 1), (e: Error & { code?: string }) => e.code === "forbidden");
      await a.close();
    });

    test("a lasting seq gap is filled with sync, in order", async () => {
      const wa = wallet();
      const wb = wallet();
      const a = await connect(gw.url, {}, wa);
      const conv = directConv(wa.address, wb.address);
      for (let i = 1; i <= 3; i++) await a.send(conv, i);
      // b learns of the conversation from seq 4 live: 1..3 are a gap it syncs.
      const b = await connect(gw.url, { backfillNew: true }, wb);
      const eb = new Events(b);
      await a.send(conv, 4);
      const got = await eb.messages(conv, 4);
      assert.deepEqual(got.map((m) => m.body), [1, 2, 3, 4]);
      const s = await eb.next("synced", (x) => x.conv === conv);
      assert.equal(s.lost, 0);
      await Promise.all([a.close(), b.close()]);
    });

    test("typing, receipts and presence", async () => {
      const wa = wallet();
      const wb = wallet();
      const a = await connect(gw.url, {}, wa);
      const ea = new Events(a);
      const b = await connect(gw.url, {}, wb);
      const eb = new Events(b);
      const conv = directConv(wa.address, wb.address);
      await a.send(conv, "hi");
      const [m] = await eb.messages(conv, 1);
      b.typing(conv);
      const t = await ea.next("typing", (x) => x.conv === conv);
      assert.equal(t.user, wb.address);
      b.read(conv, m?.seq ?? 0);
      const r = await ea.next("receipt", (x) => x.conv === conv && x.read === 1);
      assert.equal(r.user, wb.address);
      assert.equal(r.delivered, 1);
      // A second socket of b's: a sees b online (b shares a conversation with a).
      const b2 = await connect(gw.url, {}, wb);
      await b.close();
      const from = ea.length;
      await b2.close();
      const b3 = await connect(gw.url, {}, wb);
      const p = await ea.next("presence", (x) => x.user === wb.address && x.status === "online", { from });
      assert.ok(p.last_seen > 0);
      const rest = new Rest(a.auth);
      const pm = await rest.presence([wb.address]);
      assert.equal(pm[wb.address]?.status, "online");
      await Promise.all([a.close(), b3.close()]);
    });

    test("reconnect resumes from the last seq held: a new client over the same store gets only what it missed", async () => {
      const wa = wallet();
      const wb = wallet();
      const store = new MemoryStore();
      const a = await connect(gw.url, {}, wa);
      const b = await connect(gw.url, { store }, wb);
      const eb = new Events(b);
      const conv = directConv(wa.address, wb.address);
      await a.send(conv, 1);
      await a.send(conv, 2);
      await eb.messages(conv, 2);
      await b.close();
      for (let i = 3; i <= 5; i++) await a.send(conv, i);
      // "Reload": a new client object over the same store, same wallet.
      const b2 = await Client.connect(new Auth(gw.url, wb), { ...fast, store });
      const eb2 = new Events(b2);
      const got = await eb2.messages(conv, 3);
      await eb2.next("synced", (x) => x.conv === conv && x.held === 5);
      assert.deepEqual(got.map((m) => m.body), [3, 4, 5]);
      await b2.flush();
      assert.deepEqual((await store.messages(conv)).map((m) => m.body), [1, 2, 3, 4, 5]);
      await Promise.all([a.close(), b2.close()]);
    });

    test("channels: subscribe replays, then live; resume after a reload misses and repeats nothing", async () => {
      const wa = wallet();
      const a = await connect(gw.url, {}, wa);
      const rest = new Rest(a.auth);
      const name = `news-${engine}-${Date.now()}`;
      const ch = await rest.createChannel(name, { title: "News" });
      assert.equal(ch.id, `ch:${name}`);
      assert.equal(ch.kind, "channel");
      for (let i = 1; i <= 3; i++) await a.send(ch.id, i);
      const store = new MemoryStore();
      const wc = wallet();
      const c = await connect(gw.url, { store }, wc);
      const ec = new Events(c);
      const s = await c.subscribe(name, { after: 0 });
      assert.deepEqual(s, { channel: ch.id, lastSeq: 3, recovered: true });
      assert.deepEqual((await ec.messages(ch.id, 3)).map((m) => m.body), [1, 2, 3]);
      await a.send(ch.id, 4);
      assert.deepEqual((await ec.messages(ch.id, 4)).map((m) => m.body), [1, 2, 3, 4]);
      await c.close();
      await a.send(ch.id, 5);
      await a.send(ch.id, 6);
      const c2 = await Client.connect(new Auth(gw.url, wc), { ...fast, store });
      const ec2 = new Events(c2);
      await ec2.next("subscribed", (x) => x.channel === ch.id);
      await a.send(ch.id, 7);
      const got = await ec2.messages(ch.id, 3);
      assert.deepEqual(got.map((m) => m.body), [5, 6, 7]);
      assert.equal(c2.held(ch.id), 7);
      c2.unsubscribe(name);
      await ec2.next("unsubscribed", (x) => x.channel === ch.id);
      await Promise.all([a.close(), c2.close()]);
    });
  });
}

describe("resends and sessions (memory engine)", { timeout: 120_000 }, () => {
  let gw: Gateway;
  before(async () => {
    gw = await Gateway.start();
  });
  after(async () => {
    await gw.kill();
  });

  test("a repeated (conv, seq) — the gateway's resend of an unacked msg — is surfaced once", async () => {
    const wa = wallet();
    const wb = wallet();
    const a = await connect(gw.url, {}, wa);
    // No acks: the gateway resends after its ack timeout (5 s).
    const b = await connect(gw.url, { autoAck: false }, wb);
    const eb = new Events(b);
    const conv = directConv(wa.address, wb.address);
    await a.send(conv, "once");
    await eb.messages(conv, 1);
    const deadline = Date.now() + 9_000;
    while (b.stats.duplicates === 0 && Date.now() < deadline) {
      await eb.next("message", () => true, { from: eb.length, ms: 500 }).catch(() => undefined);
    }
    assert.ok(b.stats.duplicates >= 1, "the gateway resent the message");
    assert.equal(eb.of("message").length, 1, "surfaced once");
    await Promise.all([a.close(), b.close()]);
  });

  test("4001 when the session expires: the client signs in again and resumes", async () => {
    const wa = wallet();
    const wb = wallet();
    const a = await connect(gw.url, {}, wa);
    // The session ends with the message's Expiration Time: 3 s.
    const b = await connect(gw.url, { renewSession: false }, wb, { expiresInMs: 3_000, refreshMarginMs: 0 });
    const eb = new Events(b);
    const first = b.auth.current?.token;
    const conv = directConv(wa.address, wb.address);
    await a.send(conv, 1);
    await eb.messages(conv, 1);
    const d = await eb.next("disconnected", (x) => x.code === 4001, { ms: 8_000 });
    assert.equal(d.willReconnect, true);
    await eb.next("session");
    await eb.next("connected", () => true, { from: eb.seen.findIndex((s) => s.e === d) });
    assert.notEqual(b.auth.current?.token, first);
    await a.send(conv, 2);
    assert.deepEqual((await eb.messages(conv, 2)).map((m) => m.body), [1, 2]);
    await Promise.all([a.close(), b.close()]);
  });

  test("the session is renewed before it expires: no 4001", async () => {
    const wa = wallet();
    const wb = wallet();
    const a = await connect(gw.url, {}, wa);
    const b = await connect(gw.url, {}, wb, { expiresInMs: 4_000, refreshMarginMs: 2_500 });
    const eb = new Events(b);
    const conv = directConv(wa.address, wb.address);
    await eb.next("session", () => true, { ms: 6_000 });
    await eb.next("connected", () => true, { from: eb.seen.findIndex((s) => s.type === "session") });
    await a.send(conv, "after renewal");
    await eb.messages(conv, 1);
    // Past the first token's expiry: still no 4001.
    await new Promise((r) => setTimeout(r, Math.max(0, 4_500 - 2_000)));
    assert.equal(eb.of("disconnected").filter((x) => x.code === 4001).length, 0);
    await Promise.all([a.close(), b.close()]);
  });

  test("a session that cannot be renewed stops the client with willReconnect false", async () => {
    const w = wallet();
    const a = await connect(gw.url, {}, w);
    const s = a.auth.current;
    assert.ok(s);
    await a.close();
    const fixed = Auth.fromSession(gw.url, { ...s, token: "v1.garbage" });
    await assert.rejects(Client.connect(fixed, fast), /could not connect/);
  });
});
