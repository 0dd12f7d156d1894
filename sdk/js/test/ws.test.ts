import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { directConv } from "../src/index.js";
import { Events, Gateway, Redis, connect, secretFile, wallet } from "./harness.js";

for (const engine of ["memory", "redis"] as const) {
  describe(`WebSocket on the ${engine} engine`, () => {
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

    test("sign in, send, ack, receive in order; the sender gets seqs", async () => {
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
      // Idempotent: the same id again answers the original seq, delivers nothing.
      const again = await a.send(conv, { text: "m1" }, { id: "m1" });
      assert.equal(again.seq, 1);
      await a.close();
      await b.close();
    });
  });
}
