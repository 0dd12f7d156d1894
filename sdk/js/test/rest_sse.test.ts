// REST helpers and the SSE reader against a real gateway.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Auth, EventStream, Rest, SwitchboardError, directConv, type Message } from "../src/index.js";
import { Gateway, Redis, connect, secretFile, until, wallet } from "./harness.js";

describe("REST", { timeout: 60_000 }, () => {
  let gw: Gateway;
  before(async () => {
    gw = await Gateway.start();
  });
  after(async () => {
    await gw.kill();
  });

  test("groups, members, conversation list and history paging", async () => {
    const [wa, wb, wc] = [wallet(), wallet(), wallet()];
    const a = await connect(gw.url, {}, wa);
    const rest = new Rest(a.auth);
    const g = await rest.createGroup([wb.address], "team");
    assert.equal(g.kind, "group");
    assert.equal(g.title, "team");
    assert.deepEqual(new Set(g.members), new Set([wa.address, wb.address]));
    assert.deepEqual((await rest.conversation(g.id)).id, g.id);
    assert.deepEqual((await rest.addMembers(g.id, [wc.address])).added, [wc.address]);
    // The dm goes first: the list orders by (last activity, id), newest
    // first, and a dm and the group's last message can share a millisecond.
    // Then the id breaks the tie ("g:…" above "dm:…"), which this order
    // agrees with; the other order would depend on the clock.
    const dm = directConv(wa.address, wb.address);
    await a.send(dm, "dm");
    for (let i = 1; i <= 7; i++) await a.send(g.id, { n: i });
    // The list: newest activity first, paged with the cursor.
    const p1 = await rest.conversations({ limit: 1 });
    assert.equal(p1.conversations[0]?.id, g.id);
    assert.ok(p1.next_cursor);
    const ids = [];
    for await (const c of rest.allConversations(1)) ids.push(c.id);
    assert.deepEqual(ids, [g.id, dm]);
    // History: newest page, scrolling up, paging forward.
    const last = await rest.history(g.id, { limit: 3 });
    assert.deepEqual(last.messages.map((m) => m.seq), [5, 6, 7]);
    assert.equal(last.last_seq, 7);
    assert.equal(last.messages[0]?.status, "sent");
    assert.deepEqual((await rest.history(g.id, { before: 5, limit: 2 })).messages.map((m) => m.seq), [3, 4]);
    const all = [];
    for await (const m of rest.historyFrom(g.id, 0, 2)) all.push(m.seq);
    assert.deepEqual(all, [1, 2, 3, 4, 5, 6, 7]);
    await rest.removeMember(g.id, wc.address);
    assert.equal((await rest.conversation(g.id)).members.length, 2);
    // The gateway's refusals arrive as SwitchboardError with its code and status.
    await assert.rejects(rest.conversation(`g:${"1".repeat(32)}`), (e: SwitchboardError) => e.code === "not_found" && e.status === 404);
    await assert.rejects(rest.history(g.id, { after: 5, before: 3 }), (e: SwitchboardError) => e.code === "bad_request");
    // And bad input never leaves the client.
    assert.throws(() => rest.history(g.id, { limit: 201 }), /limit/);
    assert.throws(() => rest.presence([]), /1 to 100/);
    assert.throws(() => rest.addMembers(g.id, ["0x12"]), /not an address/);
    await a.close();
  });

  test("sign out everywhere: the socket closes with 4001 and the client signs in again", async () => {
    const w = wallet();
    const a = await connect(gw.url, {}, w);
    const rest = new Rest(a.auth);
    const closed = new Promise<number>((resolve) => a.on("disconnected", (d) => resolve(d.code)));
    await rest.revokeSessions();
    assert.equal(await closed, 4001);
    // Revocation covers sessions of the same second: the client keeps
    // signing in with backoff until one is newer.
    await new Promise<void>((resolve) => a.on("connected", () => resolve()));
    await a.close();
  });
});

describe("SSE mode", { timeout: 60_000 }, () => {
  let redis: Redis;
  let gw: Gateway;
  before(async () => {
    redis = await Redis.start();
    gw = await Gateway.start({ redisUrl: redis.url, secretFile: secretFile(), drainSeconds: 1 });
  });
  after(async () => {
    await gw.kill();
    await redis.stop();
  });

  test("replay then live, in order; resumes with Last-Event-ID after the server's 1012", async () => {
    const [wa, wb] = [wallet(), wallet()];
    const a = await connect(gw.url, {}, wa);
    const dm = directConv(wa.address, wb.address);
    for (let i = 1; i <= 3; i++) await a.send(dm, i);
    const auth = new Auth(gw.url, wb);
    const got: Message[] = [];
    const ends: number[] = [];
    let synced = 0;
    const es = new EventStream(auth, dm, {
      after: 1,
      onMessage: (m) => got.push(m),
      onSynced: () => synced++,
      onDisconnect: (d) => ends.push(d.code),
      backoffBaseMs: 20,
      backoffCapMs: 200,
    });
    await until("replay", () => got.length === 2 && synced === 1, 8_000);
    await a.send(dm, 4);
    await until("live message", () => got.length === 3, 8_000);
    assert.deepEqual(got.map((m) => m.body), [2, 3, 4]);
    assert.equal(es.held, 4);
    await a.close();
    await es.close();
  });

  test("channels over SSE", async () => {
    const [wa, wb] = [wallet(), wallet()];
    const a = await connect(gw.url, {}, wa);
    const rest = new Rest(a.auth);
    const name = `sse-${Date.now()}`;
    const ch = await rest.createChannel(name);
    await a.send(ch.id, "one");
    const got: Message[] = [];
    const es = new EventStream(new Auth(gw.url, wb), ch.id, { onMessage: (m) => got.push(m) });
    await a.send(ch.id, "two");
    await until("both", () => got.length === 2, 8_000);
    assert.deepEqual(got.map((m) => m.body), ["one", "two"]);
    await es.close();
    await a.close();
  });
});

describe("SSE across a drain", { timeout: 60_000 }, () => {
  test("the server's close 1012 resumes at once with Last-Event-ID on the other gateway", async () => {
    const redis = await Redis.start();
    const secret = secretFile();
    const ga = await Gateway.start({ redisUrl: redis.url, secretFile: secret, drainSeconds: 1 });
    const gb = await Gateway.start({ redisUrl: redis.url, secretFile: secret, drainSeconds: 1 });
    const { Balancer } = await import("./harness.js");
    const lb = await Balancer.start([ga.port]);
    const [wa, wb] = [wallet(), wallet()];
    const a = await connect(gb.url, {}, wa);
    const dm = directConv(wa.address, wb.address);
    await a.send(dm, 1);
    const got: Message[] = [];
    const ends: number[] = [];
    const es = new EventStream(new Auth(lb.url, wb), dm, {
      onMessage: (m) => got.push(m),
      onDisconnect: (d) => ends.push(d.code),
      backoffBaseMs: 5_000,
      backoffCapMs: 5_000,
    });
    await until("first", () => got.length === 1, 8_000);
    // The balancer now sends new connections to B; A drains.
    lb.upstreams.splice(0, 1, gb.port);
    const drained = ga.drain();
    await a.send(dm, 2);
    await drained;
    await a.send(dm, 3);
    await until("all three", () => got.length === 3, 4_000);
    assert.deepEqual(got.map((m) => m.body), [1, 2, 3]);
    // The drain's 1012, then maybe stale pooled connections to A (retried at once).
    assert.equal(ends[0], 1012);
    assert.ok(ends.slice(1).every((c) => c === 1006) && ends.length <= 5, `ends ${ends}`);
    await es.close();
    await a.close();
    lb.close();
    await gb.kill();
    await redis.stop();
  });
});
