// The peer under test in `switchboard-bench peer`: a Socket.IO 4 server with
// the Redis adapter doing, per message, the Redis work a chat server built on
// it would do, as close to Switchboard's per-message work as this stack
// makes natural (docs/benchmarks.md, "Against Socket.IO", lists what it does
// not do).
//
//   node server.mjs --listen 127.0.0.1:PORT --redis-url redis://127.0.0.1:PORT \
//        --secret-hex HEX --node-modules DIR
//
// DIR is the node_modules the bench installed the pinned packages into
// (~/.cache/switchboard/node/<hash>/node_modules); they are loaded from there
// with createRequire, since ESM imports ignore NODE_PATH.
//
// HTTP (bodies JSON, at most 4 KiB):
//   GET  /nonce   -> {"nonce"}: HMAC-signed, valid 5 minutes, stored nowhere
//   POST /signin  {"address","nonce"} -> {"token"}: checks the nonce's HMAC
//                 and expiry and the address's form, issues an HMAC session
//                 token (no wallet signature is verified)
// Socket.IO (websocket transport only), auth payload {"token"}: the token's
// HMAC and expiry are checked on connect; the socket joins the room named
// after its user.
//   send {"conv","id","body"}  conv is dm:<addr>:<addr> naming the sender;
//        INCR seq:{conv}, XADD log:{conv} (MAXLEN ~ 10000) with seq, id,
//        sender and body; then `sent` {"id","conv","seq","ts"} to the sender
//        and `msg` {"conv","seq","id","from","body","ts"} to the other
//        member's room (through the adapter: a PUBLISH).
//   ack  {"conv","seq"}  HSET dlv:{conv} <user> <seq> (the delivered
//        watermark), then `receipt` {"conv","user","delivered"} to the other
//        member's room.
// A bad frame is answered with `failed` {"code","message","ref"}.

import { createServer } from 'node:http';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { createRequire } from 'node:module';
import path from 'node:path';

function fail(msg) {
  process.stderr.write(`socket.io peer: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i];
    const v = argv[i + 1];
    if (!k || !k.startsWith('--') || v === undefined) fail(`bad arguments near ${k}`);
    out[k.slice(2)] = v;
  }
  for (const k of ['listen', 'redis-url', 'secret-hex', 'node-modules']) {
    if (!out[k]) fail(`--${k} is required`);
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const listen = args.listen.match(/^([0-9.]+):([0-9]{1,5})$/);
if (!listen) fail(`--listen ${args.listen} is not host:port`);
if (!/^([0-9a-f]{2}){16,64}$/.test(args['secret-hex'])) fail('--secret-hex must be 16 to 64 hex bytes');
const secret = Buffer.from(args['secret-hex'], 'hex');

const require = createRequire(path.join(args['node-modules'], 'peer.cjs'));
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const MAX_BODY = 4096;
const LOG_MAX_LEN = 10000;
const NONCE_TTL_MS = 5 * 60 * 1000;
const TOKEN_TTL_MS = 60 * 60 * 1000;
const ADDRESS = /^0x[0-9a-f]{40}$/;

const b64 = (buf) => Buffer.from(buf).toString('base64url');
const mac = (s) => createHmac('sha256', secret).update(s).digest('base64url');

function macOk(signed, tag) {
  const want = Buffer.from(mac(signed));
  const got = Buffer.from(String(tag));
  return want.length === got.length && timingSafeEqual(want, got);
}

function issueNonce() {
  const signed = `n.${Date.now() + NONCE_TTL_MS}.${b64(randomBytes(12))}`;
  return `${signed}.${mac(signed)}`;
}

function nonceOk(nonce) {
  if (typeof nonce !== 'string' || nonce.length > 200) return false;
  const i = nonce.lastIndexOf('.');
  if (i < 0 || !macOk(nonce.slice(0, i), nonce.slice(i + 1))) return false;
  return Number(nonce.split('.')[1]) > Date.now();
}

function issueToken(address) {
  const signed = `v1.${b64(JSON.stringify({ sub: address, exp: Date.now() + TOKEN_TTL_MS }))}`;
  return `${signed}.${mac(signed)}`;
}

// The user a token names, or null.
function tokenUser(token) {
  if (typeof token !== 'string' || token.length > 1000) return null;
  const i = token.lastIndexOf('.');
  if (i < 0 || !macOk(token.slice(0, i), token.slice(i + 1))) return null;
  try {
    const claims = JSON.parse(Buffer.from(token.slice(3, i), 'base64url').toString());
    if (typeof claims.sub !== 'string' || !ADDRESS.test(claims.sub)) return null;
    if (!(claims.exp > Date.now())) return null;
    return claims.sub;
  } catch {
    return null;
  }
}

// The other member of direct conversation `conv` when `user` is one, or null.
function otherMember(conv, user) {
  if (typeof conv !== 'string' || conv.length > 100) return null;
  const m = conv.match(/^dm:(0x[0-9a-f]{40}):(0x[0-9a-f]{40})$/);
  if (!m) return null;
  if (m[1] === user) return m[2];
  if (m[2] === user) return m[1];
  return null;
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function readJson(req, res, then) {
  let size = 0;
  const chunks = [];
  req.on('data', (c) => {
    size += c.length;
    if (size > MAX_BODY) {
      reply(res, 413, { error: `body over ${MAX_BODY} bytes` });
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => {
    if (size > MAX_BODY) return;
    let v;
    try {
      v = JSON.parse(Buffer.concat(chunks).toString());
    } catch {
      return reply(res, 400, { error: 'body is not JSON' });
    }
    then(v);
  });
}

const http = createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/nonce') return reply(res, 200, { nonce: issueNonce() });
  if (req.method === 'POST' && req.url === '/signin') {
    return readJson(req, res, (v) => {
      if (!v || typeof v !== 'object') return reply(res, 400, { error: 'expected {"address","nonce"}' });
      const address = typeof v.address === 'string' ? v.address.toLowerCase() : '';
      if (!ADDRESS.test(address)) return reply(res, 400, { error: 'address is not 0x + 40 hex digits' });
      if (!nonceOk(v.nonce)) return reply(res, 401, { error: 'nonce invalid or expired' });
      reply(res, 200, { token: issueToken(address) });
    });
  }
  // Socket.IO answers its own path; everything else is unknown.
  if (!req.url.startsWith('/socket.io/')) reply(res, 404, { error: 'not found' });
});

const redisUrl = args['redis-url'];
const data = createClient({ url: redisUrl });
const pub = createClient({ url: redisUrl });
const sub = pub.duplicate();
for (const c of [data, pub, sub]) c.on('error', (e) => process.stderr.write(`redis: ${e}\n`));
await Promise.all([data.connect(), pub.connect(), sub.connect()]);

const io = new Server(http, {
  transports: ['websocket'],
  serveClient: false,
  maxHttpBufferSize: 64 * 1024,
  adapter: createAdapter(pub, sub),
});

io.use((socket, next) => {
  const user = tokenUser(socket.handshake.auth && socket.handshake.auth.token);
  if (!user) return next(new Error('unauthorized'));
  socket.data.user = user;
  next();
});

io.on('connection', (socket) => {
  const user = socket.data.user;
  socket.join(user);
  const failed = (code, message, ref) => socket.emit('failed', { code, message, ref });

  socket.on('send', async (m) => {
    if (!m || typeof m !== 'object') return failed('bad_frame', 'send needs {"conv","id","body"}');
    const other = otherMember(m.conv, user);
    if (!other) return failed('not_member', 'not a direct conversation of yours', m.conv);
    if (typeof m.id !== 'string' || m.id.length === 0 || m.id.length > 128) {
      return failed('bad_frame', 'id must be 1 to 128 characters', m.conv);
    }
    const body = JSON.stringify(m.body === undefined ? null : m.body);
    if (body.length > MAX_BODY) return failed('too_large', `body over ${MAX_BODY} bytes`, m.id);
    try {
      const seq = await data.incr(`seq:{${m.conv}}`);
      await data.xAdd(
        `log:{${m.conv}}`,
        '*',
        { seq: String(seq), id: m.id, from: user, body },
        { TRIM: { strategy: 'MAXLEN', strategyModifier: '~', threshold: LOG_MAX_LEN } },
      );
      const ts = Date.now();
      socket.emit('sent', { id: m.id, conv: m.conv, seq, ts });
      io.to(other).emit('msg', { conv: m.conv, seq, id: m.id, from: user, body: m.body, ts });
    } catch (e) {
      failed('unavailable', String(e), m.id);
    }
  });

  socket.on('ack', async (m) => {
    if (!m || typeof m !== 'object') return failed('bad_frame', 'ack needs {"conv","seq"}');
    const other = otherMember(m.conv, user);
    if (!other) return failed('not_member', 'not a direct conversation of yours', m.conv);
    if (!Number.isSafeInteger(m.seq) || m.seq < 1) return failed('bad_frame', 'seq must be a positive integer', m.conv);
    try {
      await data.hSet(`dlv:{${m.conv}}`, user, String(m.seq));
      io.to(other).emit('receipt', { conv: m.conv, user, delivered: m.seq });
    } catch (e) {
      failed('unavailable', String(e), m.conv);
    }
  });
});

http.listen(Number(listen[2]), listen[1]);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    io.close();
    Promise.allSettled([data.quit(), pub.quit(), sub.quit()]).then(() => process.exit(0));
  });
}
