// Relayed delivery: two gateways on one Redis and a fallback relay (a third
// gateway, its Ably-compatible API with an API key). While Redis is down,
// `sent` and `msg` carry `relayed: true` and no seq; when it is back, the
// gateway resubmits what it relayed and recipients get the sequenced `msg`
// with the same id. The SDK surfaces each message once.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Auth, Rest, directConv } from "../src/index.js";
import { Events, Gateway, RELAY_KEY, Redis, connect, relayArgs, secretFile, until, wallet } from "./harness.js";

const started: Array<{ kill?: () => Promise<void>; stop?: () => Promise<void> }> = [];
after(async () => {
  for (const s of started.reverse()) await (s.kill ?? s.stop)?.call(s);
});

test("a message relayed while Redis is down is surfaced once, and sequenced once when it is back", { timeout: 120_000 }, async () => {
  const redis = await Redis.start({ durable: true });
  started.push(redis);
  // The relay is another cluster: memory engine, its own token secret.
  const relay = await Gateway.start({ extraArgs: ["--api-key", RELAY_KEY] });
  started.push(relay);
  const cluster = { redisUrl: redis.url, secretFile: secretFile(), extraArgs: relayArgs(relay) };
  const gw1 = await Gateway.start(cluster);
  started.push(gw1);
  const gw2 = await Gateway.start(cluster);
  started.push(gw2);
  for (const gw of [gw1, gw2]) {
    await until(`gateway ${gw.port} subscribed to the relay`, async () => (await gw.metric("relay_subscribed")) === 1, 10_000);
  }
  const wa = wallet();
  const wb = wallet();
  const a = await connect(gw1.url, {}, wa);
  const ea = new Events(a);
  const b = await connect(gw2.url, {}, wb);
  const eb = new Events(b);
  const conv = directConv(wa.address, wb.address);

  const before = await a.send(conv, "before", { id: "before" });
  assert.deepEqual([before.relayed, before.seq > 0], [false, true]);
  await eb.next("message", (m) => m.id === "before");

  await redis.stop();
  for (const gw of [gw1, gw2]) await until(`gateway ${gw.port} in relay mode`, () => gw.relayMode(true), 10_000);

  // During: accepted through the relay, no seq; Bob sees it at once, relayed.
  const sent = await a.send(conv, { text: "r1" }, { id: "r1" });
  assert.deepEqual([sent.id, sent.relayed, sent.seq], ["r1", true, 0]);
  const relayed = await eb.next("message", (m) => m.id === "r1");
  assert.deepEqual([relayed.relayed, relayed.seq, relayed.from, relayed.body], [true, 0, wa.address, { text: "r1" }]);
  assert.equal(await gw1.metric("relay_spooled"), 1);

  // After: Redis back with its data; gw1 resubmits r1, which gets its seq.
  await redis.restart();
  for (const gw of [gw1, gw2]) await until(`gateway ${gw.port} out of relay mode`, () => gw.relayMode(false), 20_000);
  await until("gw1 resubmitted r1", async () => (await gw1.metric("relay_replayed")) === 1 && (await gw1.metric("relay_spooled")) === 0, 20_000);
  // The sequenced copy reached both clients (they store it with its seq)...
  for (const [who, c] of [["Bob", b], ["Alice", a]] as const) {
    await until(`${who}'s store holds r1 with a seq`, async () => {
      await c.flush();
      return (await c.store.messages(conv)).some((m) => m.id === "r1" && m.seq > 0);
    }, 20_000);
  }
  // ...and a message after it is surfaced after it (seq order): by then a
  // second surfacing of r1 would have happened.
  const later = await a.send(conv, "after", { id: "after" });
  assert.equal(later.relayed, false);
  await eb.next("message", (m) => m.id === "after");
  const bobs = eb.of("message").filter((m) => m.conv === conv);
  assert.deepEqual(
    bobs.map((m) => [m.id, m.relayed ?? false]),
    [["before", false], ["r1", true], ["after", false]],
    "Bob: r1 once, the relayed copy",
  );
  // Alice's send resolved once; her own message never comes back to her as a message.
  assert.deepEqual(ea.of("sent").filter((s) => s.id === "r1").map((s) => s.relayed), [true]);
  assert.deepEqual(ea.of("message").filter((m) => m.id === "r1"), []);

  // History: r1 once, with a seq between the others.
  const rest = new Rest(new Auth(gw1.url, wa));
  const page = await rest.history(conv, { after: 0, limit: 100 });
  const seqs = page.messages.map((m) => m.seq);
  assert.deepEqual(page.messages.map((m) => m.id), ["before", "r1", "after"], JSON.stringify(page.messages));
  assert.ok(seqs.every((s, i) => s > 0 && (i === 0 || s > (seqs[i - 1] ?? 0))), `seqs ${seqs}`);
  // The stores agree with the server.
  for (const c of [a, b]) {
    await c.flush();
    assert.deepEqual((await c.store.messages(conv)).map((m) => [m.id, m.seq]), page.messages.map((m) => [m.id, m.seq]));
  }
  await Promise.all([a.close(), b.close()]);
});
