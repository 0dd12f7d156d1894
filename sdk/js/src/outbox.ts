// Sends not yet answered by `sent` (client/src/outbox.rs). Each keeps its id,
// so writing it again — after a timeout, a reconnect or a reload — is
// idempotent: the gateway answers the original seq and delivers nothing twice.
// `unavailable` and `rate_limited` refusals are retried with backoff; other
// refusals fail the send. Entries are persisted by the client through the Store.
import { jitter } from "./backoff.js";
import { SwitchboardError } from "./errors.js";
import type { ConvId, ErrorCode, MsgId } from "./gen/protocol.js";

export interface Sent {
  id: MsgId;
  conv: ConvId;
  seq: number;
  ts: number;
  /** Accepted by the fallback relay: seq 0 until Redis is back. */
  relayed: boolean;
}

interface Waiter {
  resolve(s: Sent): void;
  reject(e: SwitchboardError): void;
}

type State = { k: "queued" } | { k: "written"; deadline: number } | { k: "retry"; at: number };

export interface Entry {
  id: MsgId;
  conv: ConvId;
  body: unknown;
  frame: string;
  queuedAt: number;
  state: State;
  refusals: number;
  waiters: Waiter[];
}

export interface RetryPolicy {
  baseMs: number;
  capMs: number;
  answerTimeoutMs: number;
}

export class Outbox {
  private entries: Entry[] = [];

  constructor(
    private readonly maxInFlight: number,
    private readonly policy: RetryPolicy,
  ) {}

  get size(): number {
    return this.entries.length;
  }

  find(conv: ConvId, id: MsgId): Entry | undefined {
    return this.entries.find((e) => e.conv === conv && e.id === id);
  }

  push(e: Entry): void {
    this.entries.push(e);
  }

  /** Frames to write now, in order, within the in-flight budget. */
  takeDue(now: number): string[] {
    let budget = Math.max(1, this.maxInFlight) - this.entries.filter((e) => e.state.k === "written").length;
    const out: string[] = [];
    for (const e of this.entries) {
      if (budget <= 0) break;
      if (e.state.k === "written") continue;
      // A refused send waits; later ones wait behind it, keeping order.
      if (e.state.k === "retry" && e.state.at > now) break;
      e.state = { k: "written", deadline: now + this.policy.answerTimeoutMs };
      out.push(e.frame);
      budget -= 1;
    }
    return out;
  }

  /** The entry `sent` answers, removed, or undefined (another device's send). */
  onSent(s: Sent): Entry | undefined {
    const i = this.entries.findIndex((e) => e.id === s.id && e.conv === s.conv);
    if (i < 0) return undefined;
    const [e] = this.entries.splice(i, 1);
    for (const w of e?.waiters ?? []) w.resolve(s);
    return e;
  }

  /** An `error` whose `ref` may be one of our written sends. */
  onError(ref: string, code: ErrorCode, message: string, now: number): "not_ours" | "retrying" | Entry {
    const i = this.entries.findIndex((e) => e.id === ref && e.state.k === "written");
    const e = this.entries[i];
    if (!e) return "not_ours";
    if (code === "unavailable" || code === "rate_limited") {
      const ceiling = Math.min(this.policy.capMs, this.policy.baseMs * 2 ** Math.min(e.refusals, 20));
      e.state = { k: "retry", at: now + ceiling / 2 + jitter(ceiling / 2) };
      e.refusals += 1;
      return "retrying";
    }
    this.entries.splice(i, 1);
    for (const w of e.waiters) w.reject(new SwitchboardError(code, `send ${e.id} refused: ${message}`));
    return e;
  }

  /** The connection dropped: what was written goes again on the next one. */
  onDisconnect(): void {
    for (const e of this.entries) if (e.state.k === "written") e.state = { k: "queued" };
  }

  /** Written sends whose answer is overdue go again (same id). */
  expire(now: number): void {
    for (const e of this.entries) if (e.state.k === "written" && now >= e.state.deadline) e.state = { k: "queued" };
  }

  nextDeadline(): number | undefined {
    let min: number | undefined;
    for (const e of this.entries) {
      const d = e.state.k === "written" ? e.state.deadline : e.state.k === "retry" ? e.state.at : undefined;
      if (d !== undefined && (min === undefined || d < min)) min = d;
    }
    return min;
  }

  /** The client closed: fail whoever still waits. */
  failAll(err: SwitchboardError): void {
    for (const e of this.entries) for (const w of e.waiters) w.reject(err);
    for (const e of this.entries) e.waiters = [];
  }
}
