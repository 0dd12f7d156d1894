// The official Ably REST SDK (npm `ably`) against a Switchboard gateway:
// single and batch publish, an idempotent retry by message id, history
// newest first with paging, forwards history, and Ably error codes for bad
// keys. Run by gateway/tests/ably_sdk.rs with SB_PORT and SB_KEY set and
// NODE_PATH pointing at the installed package; exits non-zero on failure.
'use strict';
const assert = require('node:assert/strict');
const Ably = require('ably');

const port = Number(process.env.SB_PORT);
const key = process.env.SB_KEY;
const client = (k) =>
  new Ably.Rest({
    key: k,
    // `endpoint` needs a newer SDK; restHost works on every 2.x.
    restHost: '127.0.0.1',
    port,
    tls: false,
    useBinaryProtocol: false,
    logLevel: 0,
  });

async function main() {
  const rest = client(key);
  const ch = rest.channels.get('sdk-test');

  await ch.publish('greeting', 'hello');
  // Object data travels JSON-encoded and comes back decoded.
  await ch.publish([
    { name: 'a', data: { x: 1 } },
    { name: 'b', data: 'two', extras: { headers: { h: 'v' } } },
  ]);
  // An explicit id published twice (a retry) is stored once.
  await ch.publish({ id: 'fixed-id-1', name: 'n', data: 'once' });
  await ch.publish({ id: 'fixed-id-1', name: 'n', data: 'once' });

  const page = await ch.history({ limit: 2 });
  assert.deepEqual(page.items.map((m) => m.name), ['n', 'b']);
  assert.equal(page.items[0].id, 'fixed-id-1');
  assert.deepEqual(page.items[1].extras, { headers: { h: 'v' } });
  assert.ok(page.hasNext(), 'a second page');
  const older = await page.next();
  assert.deepEqual(older.items.map((m) => m.name), ['a', 'greeting']);
  assert.deepEqual(older.items[0].data, { x: 1 });
  assert.equal(older.items[1].data, 'hello');
  assert.ok(older.items[1].timestamp > 1.7e12);
  assert.ok(!older.hasNext(), 'no third page');

  const all = await ch.history({ direction: 'forwards', limit: 10 });
  assert.deepEqual(all.items.map((m) => m.name), ['greeting', 'a', 'b', 'n']);

  // A generic EventSource client on the SSE endpoint gets what the SDK
  // published: the last two by rewind, then one live.
  const EventSource = require('eventsource');
  const url = `http://127.0.0.1:${port}/sse?v=1.2&channels=sdk-test&key=${encodeURIComponent(key)}&rewind=2`;
  const got = await new Promise((resolve, reject) => {
    const es = new EventSource(url);
    const seen = [];
    const timer = setTimeout(() => { es.close(); reject(new Error(`SSE: got ${JSON.stringify(seen)}`)); }, 10000);
    es.addEventListener('message', (e) => {
      const m = JSON.parse(e.data);
      seen.push({ name: m.name, channel: m.channel, id: e.lastEventId });
      if (seen.length === 2) ch.publish('live', 'now').catch(reject);
      if (seen.length === 3) { clearTimeout(timer); es.close(); resolve(seen); }
    });
    es.onerror = (e) => { if (e && e.status) { clearTimeout(timer); es.close(); reject(new Error(`SSE error ${e.status}`)); } };
  });
  assert.deepEqual(got.map((m) => m.name), ['b', 'n', 'live']);
  assert.ok(got.every((m) => m.channel === 'sdk-test'));
  assert.equal(got[2].id, 'sdk-test@5');

  for (const [badKey, code] of [
    [key.split(':')[0] + ':wrong-secret', 40101],
    ['app.unknown:secret', 40101],
  ]) {
    await assert.rejects(client(badKey).channels.get('sdk-test').publish('x', 'y'), (e) => {
      assert.equal(e.code, code, `error code for ${badKey}: ${e.message}`);
      assert.equal(e.statusCode, 401);
      return true;
    });
  }
  console.log(JSON.stringify({ ok: true, sdk: Ably.Rest.Platform?.Config?.agent ?? 'ably-js' }));
}

main().catch((e) => {
  console.error('FAILED:', e && (e.stack || e.message || e));
  process.exit(1);
});
