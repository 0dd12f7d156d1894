// The IndexedDB store (through fake-indexeddb in Node; a browser run comes
// later) behaves like the memory store, and a client over it resumes after
// a "reload" (a new Client and a reopened database).
import "fake-indexeddb/auto";
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Auth, Client, MemoryStore, directConv, type Message, type Store } from "../src/index.js";
import { IndexedDbStore } from "../src/store/indexeddb.js";
import { Events, Gateway, connect, fast, wallet } from "./harness.js";

const conv = `g:${"a".repeat(32)}`;
const msg = (seq: number): Message => ({ conv, seq, id: `m${seq}`, from: "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23", body: { seq }, ts: seq });

for (const [name, make] of [
  ["memory", async () => new MemoryStore()],
  ["indexeddb", async () => IndexedDbStore.open(`unit-${Math.random()}`)],
] as Array<[string, () => Promise<Store>]>) {
  test(`${name} store: history pages, epochs drop, outbox order`, async () => {
    const s = await make();
    await s.addMessages([5, 1, 3, 2, 4].map(msg));
    assert.deepEqual((await s.messages(conv)).map((m) => m.seq), [1, 2, 3, 4, 5]);
    assert.deepEqual((await s.messages(conv, { limit: 2 })).map((m) => m.seq), [4, 5]);
    assert.deepEqual((await s.messages(conv, { after: 1, limit: 2 })).map((m) => m.seq), [2, 3]);
    assert.deepEqual((await s.messages(conv, { before: 4, limit: 2 })).map((m) => m.seq), [2, 3]);
    await s.dropAbove(conv, 3);
    assert.deepEqual((await s.messages(conv)).map((m) => m.seq), [1, 2, 3]);
    await s.saveConv({ conv, held: 3, epoch: 7 });
    await s.queue({ conv, id: "b", body: 2, queuedAt: 2 });
    await s.queue({ conv, id: "a", body: 1, queuedAt: 1 });
    await s.unqueue(conv, "b");
    const l = await s.load();
    assert.deepEqual(l.convs, [{ conv, held: 3, epoch: 7 }]);
    assert.deepEqual(l.outbox.map((q) => q.id), ["a"]);
  });
}

describe("a client over IndexedDB", { timeout: 60_000 }, () => {
  test("a reload (new client, reopened database) keeps history and resumes", async () => {
    const gw = await Gateway.start();
    const [wa, wb] = [wallet(), wallet()];
    const dm = directConv(wa.address, wb.address);
    const a = await connect(gw.url, {}, wa);
    const db = `client-${Math.random()}`;
    const s1 = await IndexedDbStore.open(db);
    const b = await connect(gw.url, { store: s1 }, wb);
    const eb = new Events(b);
    await a.send(dm, 1);
    await eb.messages(dm, 1);
    await b.close();
    s1.close();
    await a.send(dm, 2);
    const s2 = await IndexedDbStore.open(db);
    const b2 = await Client.connect(new Auth(gw.url, wb), { ...fast, store: s2 });
    const eb2 = new Events(b2);
    assert.deepEqual((await eb2.messages(dm, 1)).map((m) => m.body), [2]);
    await b2.flush();
    assert.deepEqual((await s2.messages(dm)).map((m) => m.body), [1, 2]);
    await Promise.all([a.close(), b2.close()]);
    await gw.kill();
  });
});
