// Epochs: Redis loses its data while PostgreSQL (filled by the worker) keeps
// the history. The next use of a conversation seeds it from PostgreSQL: its
// seq counter continues at the highest stored seq (`epoch_base`) in a new
// `epoch`, and what Redis had accepted but the worker had not stored yet is
// gone, its seqs given to new messages. A client that held those drops what
// it holds above the base and converges to the server's history.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Auth, Client, MemoryStore, Rest, directConv } from "../src/index.js";
import { Events, Gateway, Postgres, Redis, Worker, connect, fast, until, wallet } from "./harness.js";

const started: Array<{ kill?: () => Promise<void>; stop?: () => Promise<void> }> = [];
after(async () => {
  for (const s of started.reverse()) await (s.kill ?? s.stop)?.call(s);
});

/** PostgreSQL, Redis and a gateway on both; Alice connected; Bob's store. */
async function setUp() {
  const pg = await Postgres.start();
  started.push(pg);
  const redis = await Redis.start();
  started.push(redis);
  const gw = await Gateway.start({ redisUrl: redis.url, databaseUrl: pg.url });
  started.push(gw);
  const wa = wallet();
  const wb = wallet();
  const conv = directConv(wa.address, wb.address);
  const a = await connect(gw.url, {}, wa);
  return { pg, redis, gw, wa, wb, conv, a, storeB: new MemoryStore() };
}

test("after Redis comes back empty, a client drops what it held above the epoch base and converges to the history", { timeout: 180_000 }, async () => {
  const { pg, redis, gw, wa, wb, conv, a, storeB } = await setUp();
  let worker = await Worker.start({ redisUrl: redis.url, databaseUrl: pg.url });
  started.push(worker);
  let b = await connect(gw.url, { store: storeB }, wb);
  let eb = new Events(b);

  // m1..m3 stored in PostgreSQL by the worker.
  for (const i of [1, 2, 3]) assert.equal((await a.send(conv, `m${i}`, { id: `m${i}` })).seq, i);
  await until("the worker stored m1..m3", async () => (await worker.metric("messages")) >= 3, 20_000);
  // m4, m5 only in Redis: the worker is gone before they come.
  await worker.kill();
  for (const i of [4, 5]) assert.equal((await a.send(conv, `m${i}`, { id: `m${i}` })).seq, i);
  await eb.messages(conv, 5);

  // Bob learns the conversation's epoch from a sync (a reconnect syncs
  // from what it holds), then goes offline with m1..m5 in its store.
  const from = eb.length;
  b.reconnect();
  const s1 = await eb.next("synced", (s) => s.conv === conv, { from });
  assert.deepEqual([s1.held, s1.lastSeq], [5, 5]);
  await b.flush();
  const e1 = (await storeB.load()).convs.find((c) => c.conv === conv)?.epoch;
  assert.ok(e1 !== undefined && e1 > 0, `epoch ${e1}`);
  await b.close();

  // Redis loses everything; a new worker. The next send seeds the
  // conversation from PostgreSQL: seqs continue at 4, in a new epoch.
  await redis.wipeAndRestart();
  worker = await Worker.start({ redisUrl: redis.url, databaseUrl: pg.url });
  started.push(worker);
  assert.deepEqual([(await a.send(conv, "m6", { id: "m6" })).seq, (await a.send(conv, "m7", { id: "m7" })).seq], [4, 5]);

  // Bob comes back with the same store: syncs from 5, sees the new epoch,
  // drops 4 and 5 (m4, m5: gone from the server), syncs from 3.
  b = await Client.connect(new Auth(gw.url, wb), { ...fast, store: storeB });
  eb = new Events(b);
  const got = await eb.messages(conv, 2);
  await eb.next("synced", (s) => s.conv === conv && s.held === 5);
  assert.deepEqual(got.map((m) => [m.id, m.seq]), [["m6", 4], ["m7", 5]]);

  const rest = new Rest(new Auth(gw.url, wa));
  const history = (await rest.history(conv, { after: 0, limit: 100 })).messages.map((m) => [m.id, m.seq]);
  assert.deepEqual(history, [["m1", 1], ["m2", 2], ["m3", 3], ["m6", 4], ["m7", 5]]);
  await b.flush();
  assert.deepEqual((await storeB.messages(conv, { limit: 100 })).map((m) => [m.id, m.seq]), history, "Bob's store is the history");
  const state = (await storeB.load()).convs.find((c) => c.conv === conv);
  assert.ok(state?.epoch !== undefined && state.epoch > e1, `epoch ${state?.epoch} after ${e1}`);
  assert.equal(state?.held, 5);

  // Live again: the next message follows without a gap or a repeat.
  assert.equal((await a.send(conv, "m8", { id: "m8" })).seq, 6);
  await eb.next("message", (m) => m.id === "m8");
  assert.deepEqual(eb.of("message").filter((m) => m.conv === conv).map((m) => m.id), ["m6", "m7", "m8"]);
  await Promise.all([a.close(), b.close()]);
});

// The same loss seen by a client that stays connected: it holds m4, m5 from
// live delivery when the numbering goes on from PostgreSQL's m3, and the new
// m6 reaches it live under seq 4. A seq it holds under another id: it drops
// what it held from there (store included) and syncs, and converges to the
// history without a gap or a repeat. Before, it took m6@4 for a repeat of
// m4 and showed m4, m5 and never m6, m7 until its next reconnect.
test("a connected client that gets a seq it holds under another id drops the stale tail and converges", { timeout: 180_000 }, async () => {
  const { pg, redis, gw, wa, wb, conv, a, storeB } = await setUp();
  let worker = await Worker.start({ redisUrl: redis.url, databaseUrl: pg.url });
  started.push(worker);
  const b = await connect(gw.url, { store: storeB }, wb);
  const eb = new Events(b);

  for (const i of [1, 2, 3]) assert.equal((await a.send(conv, `m${i}`, { id: `m${i}` })).seq, i);
  await until("the worker stored m1..m3", async () => (await worker.metric("messages")) >= 3, 20_000);
  await worker.kill();
  for (const i of [4, 5]) assert.equal((await a.send(conv, `m${i}`, { id: `m${i}` })).seq, i);
  await eb.messages(conv, 5);

  // Redis loses everything while both stay connected; the gateway
  // registers their sockets again (its liveness loop), a new worker runs.
  const reasserted = await gw.metric("registrations_reasserted");
  await redis.wipeAndRestart();
  worker = await Worker.start({ redisUrl: redis.url, databaseUrl: pg.url });
  started.push(worker);
  await until("the gateway registered its sockets again", async () => (await gw.metric("registrations_reasserted")) > reasserted, 30_000);
  assert.deepEqual([(await a.send(conv, "m6", { id: "m6" })).seq, (await a.send(conv, "m7", { id: "m7" })).seq], [4, 5]);

  const got = (await eb.messages(conv, 7)).slice(5);
  assert.deepEqual(got.map((m) => [m.id, m.seq]), [["m6", 4], ["m7", 5]]);
  const rest = new Rest(new Auth(gw.url, wa));
  const history = (await rest.history(conv, { after: 0, limit: 100 })).messages.map((m) => [m.id, m.seq]);
  assert.deepEqual(history, [["m1", 1], ["m2", 2], ["m3", 3], ["m6", 4], ["m7", 5]]);
  await b.flush();
  assert.deepEqual((await storeB.messages(conv, { limit: 100 })).map((m) => [m.id, m.seq]), history, "Bob's store is the history");

  assert.equal((await a.send(conv, "m8", { id: "m8" })).seq, 6);
  await eb.next("message", (m) => m.id === "m8");
  assert.deepEqual(
    eb.of("message").filter((m) => m.conv === conv).map((m) => m.id),
    ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"],
    "each surfaced once",
  );
  await Promise.all([a.close(), b.close()]);
});
