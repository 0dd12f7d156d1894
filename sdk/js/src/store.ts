// Where a client keeps what must survive a page reload: the messages it
// surfaced, the seq it holds per conversation (to resume from), channel
// subscriptions and the sends not yet answered (the outbox). The in-memory
// store is the default; `@switchboard/client/indexeddb` persists in a browser.
import type { ConvId, Message, MsgId } from "./gen/protocol.js";

export interface ConvState {
  conv: ConvId;
  /** Every message up to this seq has been surfaced. */
  held: number;
  epoch?: number;
  /** A channel followed with `subscribe` (resumed on every connect). */
  subscribed?: boolean;
}

export interface QueuedSend {
  conv: ConvId;
  id: MsgId;
  body: unknown;
  /** Unix ms; keeps the outbox's order across a reload. */
  queuedAt: number;
}

export interface HistoryQuery {
  /** Exclusive bounds, like the REST API. */
  after?: number;
  before?: number;
  /** Newest `limit` when only `before` (or nothing) is given, oldest when `after` is. */
  limit?: number;
}

export interface Store {
  load(): Promise<{ convs: ConvState[]; outbox: QueuedSend[] }>;
  saveConv(s: ConvState): Promise<void>;
  deleteConv(conv: ConvId): Promise<void>;
  addMessages(ms: Message[]): Promise<void>;
  /** The server rebuilt `conv` (new epoch): forget what is above `seq`. */
  dropAbove(conv: ConvId, seq: number): Promise<void>;
  messages(conv: ConvId, q?: HistoryQuery): Promise<Message[]>;
  queue(e: QueuedSend): Promise<void>;
  unqueue(conv: ConvId, id: MsgId): Promise<void>;
}

/** Picks a page of ascending `ms` the way the REST history does. */
export function page(ms: Message[], q: HistoryQuery = {}): Message[] {
  const limit = Math.max(1, Math.min(q.limit ?? 50, 10_000));
  const inRange = ms.filter((m) => (q.after === undefined || m.seq > q.after) && (q.before === undefined || m.seq < q.before));
  return q.after !== undefined ? inRange.slice(0, limit) : inRange.slice(-limit);
}

/**
 * Everything in memory: survives a reconnect and a new Client over the same
 * object (a single-page app's route change), not a reload. Bounded: at most
 * `maxPerConv` messages per conversation (oldest dropped).
 */
export class MemoryStore implements Store {
  private convs = new Map<ConvId, ConvState>();
  private msgs = new Map<ConvId, Map<number, Message>>();
  private out = new Map<string, QueuedSend>();

  constructor(private readonly maxPerConv = 10_000) {}

  async load() {
    return {
      convs: [...this.convs.values()].map((c) => ({ ...c })),
      outbox: [...this.out.values()].sort((a, b) => a.queuedAt - b.queuedAt),
    };
  }
  async saveConv(s: ConvState) {
    this.convs.set(s.conv, { ...s });
  }
  async deleteConv(conv: ConvId) {
    this.convs.delete(conv);
  }
  async addMessages(ms: Message[]) {
    for (const m of ms) {
      let c = this.msgs.get(m.conv);
      if (!c) this.msgs.set(m.conv, (c = new Map()));
      c.set(m.seq, m);
      if (c.size > this.maxPerConv) {
        const oldest = Math.min(...c.keys());
        c.delete(oldest);
      }
    }
  }
  async dropAbove(conv: ConvId, seq: number) {
    const c = this.msgs.get(conv);
    for (const k of [...(c?.keys() ?? [])]) if (k > seq) c?.delete(k);
  }
  async messages(conv: ConvId, q?: HistoryQuery) {
    const all = [...(this.msgs.get(conv)?.values() ?? [])].sort((a, b) => a.seq - b.seq);
    return page(all, q);
  }
  async queue(e: QueuedSend) {
    this.out.set(`${e.conv}\n${e.id}`, e);
  }
  async unqueue(conv: ConvId, id: MsgId) {
    this.out.delete(`${conv}\n${id}`);
  }
}
