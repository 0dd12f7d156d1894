// The WebSocket client: one connection at a time to `/v1/ws`, replaced on
// loss with jittered backoff (at once after a 1012 drain; after signing in
// again on 4001). Every (re)connect resumes: each tracked conversation is
// synced from the last seq held, each channel re-subscribed from its last
// seq, and unanswered sends are written again with their ids (idempotent).
// Messages are acked, deduped by (conv, seq) and relayed id, surfaced once
// in seq order, and kept in the Store with the outbox, so a new Client over
// the same store (a page reload) carries on where the last one stopped.
import { Backoff } from "./backoff.js";
import { SwitchboardError, invalid } from "./errors.js";
import type { Address, ClientFrame, ConvId, ErrorCode, Message, MsgId, PresenceStatus, ServerFrame } from "./gen/protocol.js";
import { MAX_FRAME_BYTES } from "./gen/protocol.js";
import { wsUrl, httpBase } from "./http.js";
import { checkConv, checkMsgId, channelConv, isChannel, randomMsgId } from "./ids.js";
import { Outbox, type Sent } from "./outbox.js";
import { RelayedIds } from "./relayed.js";
import { Auth, type Session } from "./signin.js";
import { MemoryStore, type ConvState, type Store } from "./store.js";
import { Tracker } from "./tracker.js";

/** Close codes (generated `CloseCode`, so a code the gateway does not use fails to compile). */
export const Close = {
  UNAUTHORIZED: 4001,
  IDLE_TIMEOUT: 4000,
  SLOW_CONSUMER: 4008,
  TOO_BIG: 1009,
  GOING_AWAY: 1012,
  TOO_MANY_CONNECTIONS: 4029,
  FLOODING: 4030,
} as const satisfies Record<string, import("./gen/protocol.js").CloseCode>;

/** The browser WebSocket API subset used; Node < 22 passes the `ws` package's class. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketCtor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** Default `globalThis.WebSocket` (browsers, Node >= 22). */
  WebSocket?: WebSocketCtor;
  /** Default: a new MemoryStore. */
  store?: Store;
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** One connection attempt: upgrade, `auth`, `ready`. */
  connectTimeoutMs?: number;
  /** A send with no answer this long is written again (same id). */
  sendTimeoutMs?: number;
  /** First wait before retrying a send refused as unavailable / rate_limited. */
  retryBaseMs?: number;
  /** A seq gap this old is filled with `sync`. */
  gapGraceMs?: number;
  syncTimeoutMs?: number;
  /** Override the server's `heartbeat_ms`. */
  heartbeatMs?: number;
  /** No frame this long after a ping: the connection is dead, replace it. */
  pongTimeoutMs?: number;
  maxInFlight?: number;
  /** Sends kept waiting at most (a bound on memory and storage). */
  maxQueued?: number;
  /** A conversation first seen live: replay its history too (default false). */
  backfillNew?: boolean;
  /** Ack every message (default true; off only to test the gateway's resends). */
  autoAck?: boolean;
  /** Sign in again and reconnect before the session expires (default true with a wallet). */
  renewSession?: boolean;
}

export interface Subscribed {
  channel: ConvId;
  lastSeq: number;
  recovered: boolean;
}

export interface ClientEvents {
  connected: { user: Address };
  /** `willReconnect` false: the client stopped (closed, or 4001 without a way to sign in). */
  disconnected: { code: number; reason: string; willReconnect: boolean };
  /** A message, once, in seq order per conversation (a relayed one: at once, seq 0). */
  message: Message;
  /** One of this client's sends was accepted (also for sends queued before a reload). */
  sent: Sent;
  receipt: { conv: ConvId; user: Address; delivered: number; read: number };
  typing: { conv: ConvId; user: Address };
  presence: { user: Address; status: PresenceStatus; last_seen: number };
  synced: { conv: ConvId; lastSeq: number; held: number; lost: number };
  subscribed: Subscribed;
  unsubscribed: { channel: ConvId };
  /** An error frame not answered through a send's promise, or a store failure. */
  error: { code: ErrorCode | "store"; message: string; ref?: string };
  session: Session;
}
type Listener<K extends keyof ClientEvents> = (e: ClientEvents[K]) => void;

const OPEN = 1;
/** A connection that lived this long resets the reconnect backoff. */
const STABLE_MS = 5_000;

export class Client {
  private readonly opts: Required<Omit<ClientOptions, "WebSocket" | "store" | "heartbeatMs">> & Pick<ClientOptions, "heartbeatMs">;
  private readonly WS: WebSocketCtor;
  readonly store: Store;
  private readonly tracker: Tracker;
  private readonly outbox: Outbox;
  private readonly relayed = new RelayedIds();
  private readonly backoff: Backoff;
  private readonly listeners = new Map<keyof ClientEvents, Set<(e: never) => void>>();
  /** Channels followed, with the last seq held (undefined: only new ones). */
  private readonly channels = new Map<ConvId, number | undefined>();
  private readonly subscribeWaiters = new Map<ConvId, Array<(s: Subscribed) => void>>();
  /** Read marks not written yet (offline), highest per conversation. */
  private readonly pendingReads = new Map<ConvId, number>();
  private ws: WebSocketLike | undefined;
  /** Counters for monitoring (and tests): repeats dropped, connections made. */
  readonly stats = { duplicates: 0, connections: 0 };
  private user: Address | undefined;
  private closed = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private lastFrameAt = 0;
  private storeChain: Promise<void> = Promise.resolve();
  private wake: (() => void) | undefined;
  private loopDone: Promise<void> | undefined;

  private constructor(
    readonly auth: Auth,
    options: ClientOptions,
  ) {
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    if (!WS) throw invalid("no WebSocket in this runtime: pass options.WebSocket (the `ws` package on Node < 22)");
    this.WS = WS;
    this.store = options.store ?? new MemoryStore();
    this.opts = {
      backoffBaseMs: options.backoffBaseMs ?? 200,
      backoffCapMs: options.backoffCapMs ?? 10_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      sendTimeoutMs: options.sendTimeoutMs ?? 10_000,
      retryBaseMs: options.retryBaseMs ?? 200,
      gapGraceMs: options.gapGraceMs ?? 250,
      syncTimeoutMs: options.syncTimeoutMs ?? 10_000,
      heartbeatMs: options.heartbeatMs,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
      maxInFlight: options.maxInFlight ?? 32,
      maxQueued: options.maxQueued ?? 10_000,
      backfillNew: options.backfillNew ?? false,
      autoAck: options.autoAck ?? true,
      renewSession: options.renewSession ?? true,
    };
    this.tracker = new Tracker(this.opts.backfillNew, {
      gapGraceMs: this.opts.gapGraceMs,
      syncTimeoutMs: this.opts.syncTimeoutMs,
      retryAfterMs: this.opts.retryBaseMs,
    });
    this.outbox = new Outbox(this.opts.maxInFlight, {
      baseMs: this.opts.retryBaseMs,
      capMs: this.opts.backoffCapMs,
      answerTimeoutMs: this.opts.sendTimeoutMs,
    });
    this.backoff = new Backoff(this.opts.backoffBaseMs, this.opts.backoffCapMs);
  }

  /**
   * Load the store (conversations to resume, queued sends), connect, and
   * resolve once the first connection is up. Rejects if that first
   * connection is refused for good (bad token and no wallet); later losses
   * are retried in the background.
   */
  static async connect(auth: Auth, options: ClientOptions = {}): Promise<Client> {
    const c = new Client(auth, options);
    await c.restore();
    const first = new Promise<void>((resolve, reject) => {
      const offC = c.on("connected", () => {
        offC();
        offD();
        resolve();
      });
      const offD = c.on("disconnected", (d) => {
        if (!d.willReconnect) {
          offC();
          offD();
          reject(new SwitchboardError("unauthorized", `could not connect: ${d.reason}`));
        }
      });
    });
    c.loopDone = c.loop();
    await first;
    return c;
  }

  get address(): Address | undefined {
    return this.user;
  }

  on<K extends keyof ClientEvents>(type: K, fn: Listener<K>): () => void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(fn as (e: never) => void);
    return () => set.delete(fn as (e: never) => void);
  }

  private emit<K extends keyof ClientEvents>(type: K, e: ClientEvents[K]): void {
    for (const fn of this.listeners.get(type) ?? []) {
      try {
        (fn as Listener<K>)(e);
      } catch (err) {
        // An app's listener must not break the connection's bookkeeping.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  // ---- app API ----

  /**
   * Send `body` (any JSON value) to `conv`. Resolves with the seq once the
   * gateway stored it. Queued while offline (and kept in the store), written
   * again with the same id until answered.
   */
  async send(conv: string, body: unknown, opts: { id?: string } = {}): Promise<Sent> {
    if (this.closed) throw new SwitchboardError("closed", "the client is closed");
    const c = checkConv(conv);
    const id = opts.id === undefined ? randomMsgId() : checkMsgId(opts.id);
    // JSON.stringify drops undefined members silently: refuse them here.
    if (body === undefined || typeof body === "function" || typeof body === "symbol") {
      throw invalid("the body is not a JSON value");
    }
    const existing = this.outbox.find(c, id);
    if (existing) return new Promise((resolve, reject) => existing.waiters.push({ resolve, reject }));
    if (this.outbox.size >= this.opts.maxQueued) {
      throw new SwitchboardError("rate_limited", `${this.outbox.size} sends are already waiting (maxQueued)`);
    }
    const frame = frameText({ type: "send", conv: c, id, body });
    const queuedAt = Date.now();
    // Persist first: a reload after this line still sends it.
    await this.store.queue({ conv: c, id, body, queuedAt });
    // Closed meanwhile: the stored entry is the next client's to send.
    if (this.closed) throw new SwitchboardError("closed", "the client was closed before the send was written");
    return new Promise<Sent>((resolve, reject) => {
      this.outbox.push({ id, conv: c, body, frame, queuedAt, state: { k: "queued" }, refusals: 0, waiters: [{ resolve, reject }] });
      this.pump();
    });
  }

  /** Follow a conversation from `after` (what the app already holds). */
  track(conv: string, after = 0): void {
    const c = checkConv(conv);
    if (isChannel(c)) throw invalid("channels are followed with subscribe()");
    if (!Number.isSafeInteger(after) || after < 0) throw invalid("after must be a seq (a non-negative integer)");
    this.tracker.track(c, after);
    this.saveConv(c);
    this.pump();
  }

  /** The user read `conv` up to `seq` (raises the read watermark; others get a receipt). */
  read(conv: string, seq: number): void {
    const c = checkConv(conv);
    if (!Number.isSafeInteger(seq) || seq < 1) throw invalid("seq must be a positive integer");
    if (!this.write({ type: "read", conv: c, seq })) {
      this.pendingReads.set(c, Math.max(seq, this.pendingReads.get(c) ?? 0));
    }
  }

  /** The user is typing (ephemeral; dropped while offline). */
  typing(conv: string): void {
    this.write({ type: "typing", conv: checkConv(conv) });
  }

  /**
   * Follow a channel: replay after `after` (default: what this client
   * already holds of it, or only new messages), then live. Resumed on every
   * reconnect from the last seq held.
   */
  subscribe(channel: string, opts: { after?: number } = {}): Promise<Subscribed> {
    const c = channelConv(channel);
    if (opts.after !== undefined && (!Number.isSafeInteger(opts.after) || opts.after < 0)) {
      throw invalid("after must be a seq (a non-negative integer)");
    }
    const after = opts.after ?? this.channels.get(c);
    this.channels.set(c, after);
    this.saveChannel(c);
    const p = new Promise<Subscribed>((resolve) => {
      const list = this.subscribeWaiters.get(c) ?? [];
      list.push(resolve);
      this.subscribeWaiters.set(c, list);
    });
    this.write(subscribeFrame(c, after));
    return p;
  }

  unsubscribe(channel: string): void {
    const c = channelConv(channel);
    this.channels.delete(c);
    this.persist(() => this.store.deleteConv(c));
    this.write({ type: "unsubscribe", channel: c });
  }

  /** The seq held for a conversation or channel. */
  held(conv: string): number | undefined {
    const c = checkConv(conv);
    return isChannel(c) ? this.channels.get(c) : this.tracker.held(c);
  }

  /** Resolves once every store write issued so far is done. */
  flush(): Promise<void> {
    return this.storeChain;
  }

  /** Replace the connection now (after a token renewal, or a network change the app knows of). */
  reconnect(): void {
    this.ws?.close(1000, "reconnecting");
  }

  /** Stop: close the socket, fail waiting sends (they stay in the store for the next client). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.auth.stopKeepingFresh();
    this.wake?.();
    this.ws?.close(1000, "client closed");
    this.outbox.failAll(new SwitchboardError("closed", "the client was closed before the send was answered"));
    await this.loopDone;
    await this.flush();
  }

  // ---- connection loop ----

  private async restore(): Promise<void> {
    const { convs, outbox } = await this.store.load();
    for (const s of convs) {
      if (isChannel(s.conv)) {
        if (s.subscribed) this.channels.set(s.conv, s.held > 0 ? s.held : undefined);
      } else this.tracker.track(s.conv, s.held, s.epoch);
    }
    for (const q of outbox.slice(0, this.opts.maxQueued)) {
      this.outbox.push({
        id: q.id,
        conv: q.conv,
        body: q.body,
        frame: frameText({ type: "send", conv: q.conv, id: q.id, body: q.body }),
        queuedAt: q.queuedAt,
        state: { k: "queued" },
        refusals: 0,
        waiters: [],
      });
    }
  }

  private async loop(): Promise<void> {
    let immediate = true;
    while (!this.closed) {
      if (!immediate) await this.pause(this.backoff.next());
      immediate = false;
      if (this.closed) break;
      let ws: WebSocketLike;
      try {
        ws = await this.dial();
      } catch (e) {
        const err = e as SwitchboardError;
        if (err.code === "unauthorized") {
          if (!(await this.signInAgain(err.message))) return;
          immediate = true;
        } else {
          this.emit("disconnected", { code: 1006, reason: err.message, willReconnect: true });
        }
        continue;
      }
      const started = Date.now();
      const end = await this.serve(ws);
      if (Date.now() - started >= STABLE_MS) this.backoff.reset();
      if (this.closed) {
        this.emit("disconnected", { ...end, willReconnect: false });
        return;
      }
      if (end.code === Close.UNAUTHORIZED) {
        this.emit("disconnected", { ...end, willReconnect: true });
        if (!(await this.signInAgain(end.reason))) return;
        immediate = true;
      } else {
        this.emit("disconnected", { ...end, willReconnect: true });
        // Drain (1012) and our own reconnect(): to another gateway at once.
        immediate = end.code === Close.GOING_AWAY || end.code === 1000;
      }
    }
  }

  /** After a 4001: a new session from the wallet, or stop. */
  private async signInAgain(reason: string): Promise<boolean> {
    try {
      const s = await this.auth.refresh();
      this.emit("session", s);
      return true;
    } catch (e) {
      this.closed = true;
      this.outbox.failAll(new SwitchboardError("unauthorized", `signed out: ${reason}`));
      this.emit("disconnected", { code: Close.UNAUTHORIZED, reason: `${reason}; ${(e as Error).message}`, willReconnect: false });
      return false;
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(t);
        self.wake = undefined;
        resolve();
      }
      this.wake = done;
    });
  }

  /** Open a socket, authenticate with the first frame, wait for `ready`. */
  private async dial(): Promise<WebSocketLike> {
    const token = await this.auth.token();
    const ws = new this.WS(wsUrl(httpBase(this.auth.baseUrl)));
    return new Promise<WebSocketLike>((resolve, reject) => {
      let unauthorized = false;
      const fail = (code: "unauthorized" | "network", why: string) => {
        clearTimeout(timer);
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close();
        } catch {
          /* already closed */
        }
        reject(new SwitchboardError(code, why));
      };
      const timer = setTimeout(() => fail("network", "connect timed out"), this.opts.connectTimeoutMs);
      ws.onopen = () => ws.send(frameText({ type: "auth", token }));
      ws.onerror = () => {
        /* onclose follows with the code */
      };
      ws.onclose = (ev) => {
        fail(unauthorized || ev.code === Close.UNAUTHORIZED ? "unauthorized" : "network", `closed ${ev.code} ${ev.reason}`.trim());
      };
      ws.onmessage = (ev) => {
        const f = parseFrame(ev.data);
        if (f?.type === "ready") {
          clearTimeout(timer);
          ws.onopen = ws.onclose = ws.onerror = ws.onmessage = null;
          this.user = f.user;
          if (!this.opts.heartbeatMs) this.serverHeartbeat = f.heartbeat_ms;
          resolve(ws);
        } else if (f?.type === "error" && f.code === "unauthorized") {
          unauthorized = true;
        }
      };
    });
  }
  private serverHeartbeat = 30_000;

  /** Serve one authenticated socket until it closes. */
  private serve(ws: WebSocketLike): Promise<{ code: number; reason: string }> {
    this.ws = ws;
    this.lastFrameAt = Date.now();
    return new Promise((resolve) => {
      ws.onmessage = (ev) => {
        this.lastFrameAt = Date.now();
        const f = parseFrame(ev.data);
        if (f) this.onFrame(f);
        this.pump();
      };
      ws.onerror = () => {
        /* onclose follows */
      };
      ws.onclose = (ev) => {
        ws.onmessage = ws.onclose = ws.onerror = null;
        this.ws = undefined;
        clearInterval(this.heartbeat);
        clearTimeout(this.timer);
        this.outbox.onDisconnect();
        resolve({ code: ev.code, reason: ev.reason });
      };
      // Heartbeat with jitter; no frame at all for pongTimeout after a ping: dead.
      const every = this.opts.heartbeatMs ?? this.serverHeartbeat;
      this.heartbeat = setInterval(() => {
        if (Date.now() - this.lastFrameAt > every + this.opts.pongTimeoutMs) {
          ws.close(4000, "no answer to ping");
          return;
        }
        this.write({ type: "ping" });
      }, every * (0.8 + Math.random() * 0.2));
      this.stats.connections += 1;
      if (this.user) this.emit("connected", { user: this.user });
      if (this.user && this.auth.current && this.opts.renewSession) {
        this.auth.keepFresh((s) => {
          this.emit("session", s);
          this.reconnect();
        });
      }
      this.tracker.onConnect();
      for (const [c, after] of this.channels) this.write(subscribeFrame(c, after));
      for (const [conv, seq] of this.pendingReads) this.write({ type: "read", conv, seq });
      this.pendingReads.clear();
      this.pump();
    });
  }

  /** Write what is due (syncs, sends) and arm the timer for what comes due next. */
  private pump(): void {
    if (!this.ws || this.ws.readyState !== OPEN) return;
    const now = Date.now();
    for (const [conv, after] of this.tracker.dueSyncs(now)) this.write({ type: "sync", conv, after });
    this.outbox.expire(now);
    for (const text of this.outbox.takeDue(now)) this.writeText(text);
    clearTimeout(this.timer);
    const next = [this.tracker.nextDeadline(now), this.outbox.nextDeadline()].filter((d): d is number => d !== undefined);
    if (next.length) this.timer = setTimeout(() => this.pump(), Math.max(5, Math.min(...next) - now));
  }

  private write(f: ClientFrame): boolean {
    return this.writeText(frameText(f));
  }

  private writeText(text: string): boolean {
    if (!this.ws || this.ws.readyState !== OPEN) return false;
    this.ws.send(text);
    return true;
  }

  private onFrame(f: ServerFrame): void {
    const now = Date.now();
    switch (f.type) {
      case "sent": {
        const sent: Sent = { id: f.id, conv: f.conv, seq: f.seq, ts: f.ts, relayed: f.relayed ?? false };
        const e = this.outbox.onSent(sent);
        if (!e) return;
        this.persist(() => this.store.unqueue(e.conv, e.id));
        const own: Message = { conv: f.conv, seq: f.seq, id: f.id, from: this.user ?? "", body: e.body, ts: f.ts };
        if (sent.relayed) {
          // Its sequenced copy comes later as a msg: do not surface it twice.
          if (this.user) this.relayed.firstCopy(f.conv, this.user, f.id);
        } else if (isChannel(f.conv)) {
          this.persist(() => this.store.addMessages([own]));
        } else {
          this.persist(() => this.store.addMessages([own]));
          this.surface(this.tracker.onSent(f.conv, f.seq, now, f.id));
          this.saveConv(f.conv);
        }
        this.emit("sent", sent);
        return;
      }
      case "msg": {
        const m: Message = { conv: f.conv, seq: f.seq, id: f.id, from: f.from, body: f.body, ts: f.ts };
        if (f.relayed) {
          if (this.relayed.firstCopy(m.conv, m.from, m.id)) this.emit("message", { ...m, relayed: true });
          return;
        }
        if (isChannel(m.conv)) return this.onChannelMsg(m);
        // Ack every copy, repeats too: the gateway resends until acked.
        if (this.opts.autoAck) this.write({ type: "ack", conv: m.conv, seq: m.seq });
        const keep = this.tracker.renumbered(m);
        if (keep !== undefined) {
          // Held under another id: the server renumbered from m.seq (see
          // Tracker.renumbered); what is stored above `keep` is void, and
          // the sync now due brings m and the rest back.
          this.persist(() => this.store.dropAbove(m.conv, keep));
          this.pump();
          return;
        }
        const held = this.tracker.held(m.conv);
        if (held !== undefined && m.seq <= held) this.stats.duplicates += 1;
        const out = this.tracker.onMsg(m, now);
        if (out.length) {
          this.surface(out);
          this.saveConv(m.conv);
        }
        return;
      }
      case "synced": {
        if (isChannel(f.conv)) return;
        const r = this.tracker.onSynced(f.conv, f, now);
        if (r.epochChanged) {
          const base = f.epoch_base ?? 0;
          this.persist(() => this.store.dropAbove(f.conv, base));
        }
        this.surface(r.surfaced);
        this.saveConv(f.conv);
        const held = this.tracker.held(f.conv) ?? f.last_seq;
        if (!r.epochChanged) this.emit("synced", { conv: f.conv, lastSeq: f.last_seq, held, lost: r.lost });
        return;
      }
      case "subscribed": {
        const held = this.channels.get(f.channel);
        if (held === undefined || held < f.last_seq) this.channels.set(f.channel, Math.max(held ?? 0, f.last_seq));
        this.saveChannel(f.channel);
        const s: Subscribed = { channel: f.channel, lastSeq: f.last_seq, recovered: f.recovered };
        for (const w of this.subscribeWaiters.get(f.channel) ?? []) w(s);
        this.subscribeWaiters.delete(f.channel);
        this.emit("subscribed", s);
        return;
      }
      case "unsubscribed":
        return this.emit("unsubscribed", { channel: f.channel });
      case "receipt":
        return this.emit("receipt", { conv: f.conv, user: f.user, delivered: f.delivered, read: f.read });
      case "typing":
        return this.emit("typing", { conv: f.conv, user: f.user });
      case "presence":
        return this.emit("presence", { user: f.user, status: f.status, last_seen: f.last_seen });
      case "error": {
        const ref = f.ref ?? undefined;
        if (ref !== undefined) {
          const r = this.outbox.onError(ref, f.code, f.message, now);
          if (r === "retrying") return;
          if (r !== "not_ours") {
            this.persist(() => this.store.unqueue(r.conv, r.id));
            return;
          }
          const permanent = f.code === "forbidden" || f.code === "bad_frame" || f.code === "not_found";
          if (this.tracker.onSyncError(ref, permanent, now)) return;
        }
        return this.emit("error", { code: f.code, message: f.message, ...(ref === undefined ? {} : { ref }) });
      }
      case "ready":
      case "pong":
        return;
    }
  }

  /** Channel messages come in seq order without gaps: drop what is held, keep the rest. */
  private onChannelMsg(m: Message): void {
    if (!this.channels.has(m.conv)) return;
    const held = this.channels.get(m.conv) ?? 0;
    if (m.seq <= held) return;
    this.channels.set(m.conv, m.seq);
    this.saveChannel(m.conv);
    this.persist(() => this.store.addMessages([m]));
    if (!this.relayed.sequenced(m.conv, m.from, m.id)) this.emit("message", m);
  }

  private surface(ms: Message[]): void {
    if (!ms.length) return;
    this.persist(() => this.store.addMessages(ms));
    for (const m of ms) if (!this.relayed.sequenced(m.conv, m.from, m.id)) this.emit("message", m);
  }

  private saveConv(conv: ConvId): void {
    const held = this.tracker.held(conv);
    if (held === undefined) return;
    const epoch = this.tracker.epoch(conv);
    const s: ConvState = epoch === undefined ? { conv, held } : { conv, held, epoch };
    this.persist(() => this.store.saveConv(s));
  }

  private saveChannel(c: ConvId): void {
    const held = this.channels.get(c) ?? 0;
    this.persist(() => this.store.saveConv({ conv: c, held, subscribed: true }));
  }

  /** Store writes in order, off the socket's path; failures are reported, not thrown. */
  private persist(op: () => Promise<void>): void {
    this.storeChain = this.storeChain.then(op).catch((e: unknown) => {
      this.emit("error", { code: "store", message: (e as Error).message ?? String(e) });
    });
  }
}

function subscribeFrame(channel: ConvId, after: number | undefined): ClientFrame {
  return after === undefined ? { type: "subscribe", channel } : { type: "subscribe", channel, after };
}

/** JSON text of a frame, refused here when the gateway would close the socket for its size. */
export function frameText(f: ClientFrame): string {
  let text: string;
  try {
    text = JSON.stringify(f);
  } catch (e) {
    throw invalid(`the frame cannot be JSON: ${(e as Error).message}`);
  }
  if (text === undefined) throw invalid("the body is not a JSON value");
  // Bytes, not UTF-16 units: the gateway counts bytes.
  const bytes = new TextEncoder().encode(text).length;
  if (bytes > MAX_FRAME_BYTES) throw invalid(`the frame is ${bytes} bytes, over the ${MAX_FRAME_BYTES} the gateway takes`);
  return text;
}

/** A server frame, or undefined for anything that is not one (ignored). */
export function parseFrame(data: unknown): ServerFrame | undefined {
  if (typeof data !== "string" || data.length > MAX_FRAME_BYTES * 4) return undefined;
  try {
    const v = JSON.parse(data) as unknown;
    if (v && typeof v === "object" && typeof (v as { type?: unknown }).type === "string") return v as ServerFrame;
  } catch {
    /* not JSON: ignored */
  }
  return undefined;
}

export type { Sent, MsgId };
