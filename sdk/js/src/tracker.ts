// Per-conversation seq tracking (the Rust SDK's tracker, client/src/tracker.rs):
// surfaces each message once and in seq order, drops repeated (conv, seq)
// (gateway resends, sync replays), notices gaps and asks for a `sync` from
// the last seq held when one lasts longer than a grace (frames of different
// senders may cross for a few ms), pages long syncs, and handles epochs.
import type { ConvId, Message } from "./gen/protocol.js";

export interface SyncTimers {
  gapGraceMs: number;
  syncTimeoutMs: number;
  retryAfterMs: number;
}

/**
 * Ids of the last seqs seen per conversation: enough to notice that the
 * server gave a seq this device holds to another message (Redis lost the
 * tail the worker had not stored, and the numbering went on from what
 * PostgreSQL has), which is the last few seqs.
 */
export const RECENT_IDS = 16;

class Track {
  held: number;
  /** seq → id of the last RECENT_IDS seqs inserted (insertion order). */
  recent = new Map<number, string>();
  /** Seqs above `held` already here (null: our own send, nothing to surface). */
  ahead = new Map<number, Message | null>();
  knownLast: number;
  gapSince: number | undefined;
  inFlight: { after: number; at: number } | undefined;
  want = false;
  notBefore: number | undefined;
  epoch: number | undefined;

  constructor(held: number, epoch?: number) {
    this.held = held;
    this.knownLast = held;
    this.epoch = epoch;
  }

  hasGap(): boolean {
    return this.held < this.knownLast;
  }

  insert(seq: number, m: Message | null, now: number, id?: string): Message[] {
    if (seq <= this.held || this.ahead.has(seq)) return [];
    this.knownLast = Math.max(this.knownLast, seq);
    this.ahead.set(seq, m);
    const known = m?.id ?? id;
    if (known !== undefined) {
      this.recent.set(seq, known);
      if (this.recent.size > RECENT_IDS) this.recent.delete(this.recent.keys().next().value as number);
    }
    const out = this.drain();
    this.noteGap(now);
    return out;
  }

  drain(): Message[] {
    const out: Message[] = [];
    for (;;) {
      const next = this.held + 1;
      if (!this.ahead.has(next)) break;
      const m = this.ahead.get(next);
      this.ahead.delete(next);
      this.held = next;
      if (m) out.push(m);
    }
    return out;
  }

  noteGap(now: number): void {
    if (this.hasGap()) this.gapSince ??= now;
    else this.gapSince = undefined;
  }
}

export interface SyncedFrame {
  recovered: boolean;
  last_seq: number;
  epoch?: number;
  epoch_base?: number;
}

export interface SyncedOutcome {
  surfaced: Message[];
  /** Messages the server no longer had. */
  lost: number;
  /** The epoch changed: what was held above `epoch_base` is void. */
  epochChanged: boolean;
}

/** Most conversations tracked at once: a bound on memory, whatever the server sends. */
export const MAX_TRACKED = 100_000;

export class Tracker {
  private convs = new Map<ConvId, Track>();

  constructor(
    private readonly backfillNew: boolean,
    private readonly timers: SyncTimers,
  ) {}

  private entry(conv: ConvId, seq: number): Track | undefined {
    let t = this.convs.get(conv);
    if (!t) {
      if (this.convs.size >= MAX_TRACKED) return undefined;
      t = new Track(this.backfillNew ? 0 : seq - 1);
      this.convs.set(conv, t);
    }
    return t;
  }

  /** Follow `conv` from `after` (what is held): synced on every connect. */
  track(conv: ConvId, after: number, epoch?: number): void {
    let t = this.convs.get(conv);
    if (!t) {
      t = new Track(after, epoch);
      this.convs.set(conv, t);
    }
    t.want = true;
  }

  held(conv: ConvId): number | undefined {
    return this.convs.get(conv)?.held;
  }

  epoch(conv: ConvId): number | undefined {
    return this.convs.get(conv)?.epoch;
  }

  conversations(): ConvId[] {
    return [...this.convs.keys()];
  }

  onMsg(m: Message, now: number): Message[] {
    return this.entry(m.conv, m.seq)?.insert(m.seq, m, now) ?? [];
  }

  /**
   * Whether `m` is a seq this device holds under another id: the server
   * renumbered the conversation from there (Redis lost its unstored tail).
   * Then what is held from that seq up is void: it is forgotten, a sync
   * from the seq before is due (its `synced` also brings the new epoch),
   * and the caller drops its stored copies above the returned seq. `m`
   * itself comes back with that sync. Returns the seq to keep up to, or
   * undefined for an ordinary repeat or a new seq.
   */
  renumbered(m: Message): number | undefined {
    const t = this.convs.get(m.conv);
    const known = t?.recent.get(m.seq);
    if (!t || known === undefined || known === m.id) return undefined;
    const keep = m.seq - 1;
    t.held = Math.min(t.held, keep);
    for (const k of [...t.ahead.keys()]) if (k > keep) t.ahead.delete(k);
    for (const k of [...t.recent.keys()]) if (k > keep) t.recent.delete(k);
    t.knownLast = Math.max(t.knownLast, m.seq);
    t.want = true;
    return keep;
  }

  /** Our own send `id` got `seq`: it counts as held, with nothing to surface. */
  onSent(conv: ConvId, seq: number, now: number, id?: string): Message[] {
    let t = this.convs.get(conv);
    if (!t) {
      t = new Track(seq - 1);
      this.convs.set(conv, t);
    }
    return t.insert(seq, null, now, id);
  }

  onSynced(conv: ConvId, s: SyncedFrame, now: number): SyncedOutcome {
    const out: SyncedOutcome = { surfaced: [], lost: 0, epochChanged: false };
    const t = this.convs.get(conv);
    if (!t) return out;
    const from = t.inFlight?.after;
    t.inFlight = undefined;
    const epoch = s.epoch ?? 0;
    const base = s.epoch_base ?? 0;
    if (t.epoch !== undefined && t.epoch !== epoch) {
      // The server rebuilt this conversation: seqs above the base may name
      // other messages now. Keep what is below, sync again from there.
      t.held = Math.min(t.held, base);
      for (const k of [...t.ahead.keys()]) if (k > base) t.ahead.delete(k);
      for (const k of [...t.recent.keys()]) if (k > base) t.recent.delete(k);
      t.knownLast = s.last_seq;
      t.want = true;
      t.epoch = epoch;
      out.epochChanged = true;
      t.noteGap(now);
      return out;
    }
    t.epoch = epoch;
    t.knownLast = Math.max(t.knownLast, s.last_seq);
    if (!s.recovered) {
      // The log no longer has everything after `held`: skip to what it has.
      const firstAhead = Math.min(...t.ahead.keys(), s.last_seq + 1);
      if (firstAhead > t.held + 1) {
        out.lost = firstAhead - 1 - t.held;
        t.held = firstAhead - 1;
      }
    }
    out.surfaced = t.drain();
    // A page of a long absence: continue while the sync progressed.
    if (t.held < s.last_seq && from !== undefined && t.held > from) t.want = true;
    t.noteGap(now);
    return out;
  }

  /** A `sync` was refused; `permanent` (not a member): stop tracking. */
  onSyncError(conv: ConvId, permanent: boolean, now: number): boolean {
    const t = this.convs.get(conv);
    if (!t?.inFlight) return false;
    t.inFlight = undefined;
    if (permanent) this.convs.delete(conv);
    else {
      t.want = true;
      t.notBefore = now + this.timers.retryAfterMs;
    }
    return true;
  }

  /** A new connection: every conversation resumes from what it holds. */
  onConnect(): void {
    for (const t of this.convs.values()) {
      t.inFlight = undefined;
      t.want = true;
      t.notBefore = undefined;
    }
  }

  /** The syncs to send now, as (conv, after). */
  dueSyncs(now: number): Array<[ConvId, number]> {
    const out: Array<[ConvId, number]> = [];
    for (const [conv, t] of this.convs) {
      let due: boolean;
      if (t.inFlight) due = now >= t.inFlight.at + this.timers.syncTimeoutMs;
      else {
        const allowed = t.notBefore === undefined || now >= t.notBefore;
        const gapDue = t.gapSince !== undefined && now >= t.gapSince + this.timers.gapGraceMs;
        due = allowed && (t.want || gapDue);
      }
      if (due) {
        t.want = false;
        t.notBefore = undefined;
        t.inFlight = { after: t.held, at: now };
        out.push([conv, t.held]);
      }
    }
    return out;
  }

  /** When `dueSyncs` may next have something. */
  nextDeadline(now: number): number | undefined {
    let min: number | undefined;
    for (const t of this.convs.values()) {
      let d: number | undefined;
      if (t.inFlight) d = t.inFlight.at + this.timers.syncTimeoutMs;
      else if (t.want) d = t.notBefore ?? now;
      else if (t.gapSince !== undefined) d = t.gapSince + this.timers.gapGraceMs;
      if (d !== undefined && (min === undefined || d < min)) min = d;
    }
    return min;
  }
}
