// Two gateways on one Redis behind a balancer: a drained gateway's clients
// get 1012, reconnect at once through the balancer to the other, resume,
// and miss nothing; sends queued meanwhile go out once. And an outbox that
// outlives a dead gateway and a reload.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Auth, Client, MemoryStore, directConv } from "../src/index.js";
import { Balancer, Events, Gateway, Redis, connect, fast, secretFile, wallet } from "./harness.js";

describe("two gateways over Redis", { timeout: 120_000 }, () => {
  let redis: Redis;
  let ga: Gateway;
  let gb: Gateway;
  let lb: Balancer;
  before(async () => {
    redis = await Redis.start();
    const secret = secretFile();
    ga = await Gateway.start({ redisUrl: redis.url, secretFile: secret, drainSeconds: 1 });
    gb = await Gateway.start({ redisUrl: redis.url, secretFile: secret, drainSeconds: 1 });
    lb = await Balancer.start([ga.port, gb.port]);
  });
  after(async () => {
    lb.close();
    await ga.kill();
    await gb.kill();
    await redis.stop();
  });

  test("users on different gateways chat; a drain (1012) reconnects at once and resumes", async () => {
    const wa = wallet();
    const wb = wallet();
    // a on gateway B directly; b's clients through the balancer (half on A).
    const a = await connect(gb.url, {}, wa);
    const conv = directConv(wa.address, wb.address);
    // Long backoff: a reconnect that waited for it would fail the timing below.
    const bs = await Promise.all(
      Array.from({ length: 4 }, () => connect(lb.url, { backoffBaseMs: 3_000, backoffCapMs: 3_000 }, wb)),
    );
    const evs = bs.map((b) => new Events(b));
    for (let i = 1; i <= 3; i++) await a.send(conv, i);
    for (const e of evs) await e.messages(conv, 3);
    // A leaves the rotation, then gets SIGTERM; a keeps sending meanwhile.
    lb.remove(ga.port);
    const drainStart = Date.now();
    const exited = ga.drain();
    for (let i = 4; i <= 10; i++) await a.send(conv, i);
    assert.equal(await exited, 0, "gateway A exits cleanly after its drain");
    const drained = evs.filter((e) => e.of("disconnected").some((d) => d.code === 1012));
    assert.ok(drained.length >= 1, "some client was on A and got 1012");
    for (const e of drained) {
      const d = e.seen.findIndex((s) => s.type === "disconnected");
      const back = await e.next("connected", () => true, { from: d });
      assert.ok(back, "reconnected");
    }
    // Reconnected within the drain window plus a little, not after a 3 s backoff.
    assert.ok(Date.now() - drainStart < 1_000 + 2_000 + 1_500, `drain to reconnect took ${Date.now() - drainStart} ms`);
    for (const e of evs) {
      const got = await e.messages(conv, 10);
      assert.deepEqual(got.map((m) => m.body), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "each once, in order");
    }
    await Promise.all([a.close(), ...bs.map((b) => b.close())]);
  });
});

describe("outbox", { timeout: 120_000 }, () => {
  test("sends queued while the gateway is down go out after the reconnect, and after a reload", async () => {
    const redis = await Redis.start();
    const secret = secretFile();
    let gw = await Gateway.start({ redisUrl: redis.url, secretFile: secret });
    const port = gw.port;
    const wa = wallet();
    const wb = wallet();
    const conv = directConv(wa.address, wb.address);
    const store = new MemoryStore();
    const a = await connect(gw.url, { store }, wa);
    const ea = new Events(a);
    const b = await connect(gw.url, {}, wb);
    const eb = new Events(b);
    await a.send(conv, "before");
    // b holds seq 1 before the gateway dies (a conversation it first met
    // later would start at that later message: backfillNew is off).
    await eb.messages(conv, 1);
    await gw.kill();
    await ea.next("disconnected");
    // Offline: queued (and stored), answered after the reconnect.
    const p1 = a.send(conv, "while down 1", { id: "q1" });
    const p2 = a.send(conv, "while down 2", { id: "q2" });
    await a.flush();
    assert.deepEqual((await store.load()).outbox.map((q) => q.id), ["q1", "q2"]);
    gw = await Gateway.start({ redisUrl: redis.url, secretFile: secret, port });
    const [s1, s2] = await Promise.all([p1, p2]);
    assert.deepEqual([s1.seq, s2.seq], [2, 3]);
    await a.flush();
    assert.deepEqual((await store.load()).outbox, []);

    // A reload with sends still queued: the page closes before they went out.
    await gw.kill();
    await ea.next("disconnected", () => true, { from: ea.length });
    const lost = a.send(conv, "queued before reload", { id: "q3" });
    await a.close();
    await assert.rejects(lost, /closed/);
    assert.deepEqual((await store.load()).outbox.map((q) => q.id), ["q3"], "kept in the store");
    gw = await Gateway.start({ redisUrl: redis.url, secretFile: secret, port });
    const a2 = await Client.connect(new Auth(gw.url, wa), { ...fast, store });
    const ea2 = new Events(a2);
    const sent = await ea2.next("sent", (s) => s.id === "q3");
    assert.equal(sent.seq, 4);
    const got = await eb.messages(conv, 4, 15_000);
    assert.deepEqual(got.map((m) => m.body), ["before", "while down 1", "while down 2", "queued before reload"]);
    await a2.flush();
    assert.deepEqual((await store.load()).outbox, []);
    assert.deepEqual((await store.messages(conv)).map((m) => m.seq), [1, 2, 3, 4]);
    await Promise.all([a2.close(), b.close()]);
    await gw.kill();
    await redis.stop();
  });
});
