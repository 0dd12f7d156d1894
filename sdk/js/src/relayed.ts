// Messages delivered through the gateway's fallback relay (`relayed: true`,
// seq 0) come again, sequenced, once Redis is back: the app sees each
// (conv, from, id) once, whichever copy comes first (client/src/relayed.rs).
import type { Address, ConvId, MsgId } from "./gen/protocol.js";

/** Relayed ids remembered at most (oldest forgotten first): bounded memory. */
export const MAX_REMEMBERED = 10_000;

export class RelayedIds {
  private seen = new Set<string>();

  private static key(conv: ConvId, from: Address, id: MsgId): string {
    return `${conv}\n${from.toLowerCase()}\n${id}`;
  }

  /** A relayed copy arrived: true the first time (surface it). */
  firstCopy(conv: ConvId, from: Address, id: MsgId): boolean {
    const k = RelayedIds.key(conv, from, id);
    if (this.seen.has(k)) return false;
    this.seen.add(k);
    if (this.seen.size > MAX_REMEMBERED) {
      // A Set iterates in insertion order: the first is the oldest.
      const oldest = this.seen.values().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
    return true;
  }

  /** The sequenced copy arrived: true when its relayed copy was already surfaced. */
  sequenced(conv: ConvId, from: Address, id: MsgId): boolean {
    return this.seen.delete(RelayedIds.key(conv, from, id));
  }
}
