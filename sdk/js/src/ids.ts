// Client-side checks of ids, with the same bounds the gateway's parsers
// enforce (proto/src/ids.rs), so bad input fails here with a clear message
// instead of as a `bad_frame` later.
import { getAddress, isAddress } from "viem";
import { invalid } from "./errors.js";
import type { Address, ConvId, MsgId } from "./gen/protocol.js";

const MSG_ID = /^[A-Za-z0-9_.:-]{1,64}$/;
const CHANNEL_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
const CONV_ID = /^(dm:0[xX][0-9a-fA-F]{40}:0[xX][0-9a-fA-F]{40}|g:[0-9a-fA-F]{32}|ch:[A-Za-z0-9_.:-]{1,64})$/;

/** An address, EIP-55 checksummed; throws `invalid_input` otherwise. */
export function checkAddress(a: string): Address {
  if (typeof a !== "string" || a.length !== 42 || !isAddress(a, { strict: false })) {
    throw invalid(`not an address (0x and 40 hex digits): ${String(a).slice(0, 60)}`);
  }
  return getAddress(a);
}

/** A conversation id in its canonical form (direct ids lowercase and sorted). */
export function checkConv(c: string): ConvId {
  if (typeof c !== "string" || c.length > 96 || !CONV_ID.test(c)) {
    throw invalid(`not a conversation id (dm:<a>:<b>, g:<32 hex> or ch:<name>): ${String(c).slice(0, 100)}`);
  }
  if (c.startsWith("dm:")) {
    const [, a, b] = c.split(":");
    return directConv(a as string, b as string);
  }
  return c.startsWith("g:") ? c.toLowerCase() : c;
}

export function checkMsgId(id: string): MsgId {
  if (typeof id !== "string" || !MSG_ID.test(id)) {
    throw invalid("a message id is 1 to 64 characters of [A-Za-z0-9_.:-]");
  }
  return id;
}

/** The direct conversation of two different wallets: both see the same id. */
export function directConv(a: string, b: string): ConvId {
  const [x, y] = [checkAddress(a).toLowerCase(), checkAddress(b).toLowerCase()].sort();
  if (x === y) throw invalid("a direct conversation needs two different wallets");
  return `dm:${x}:${y}`;
}

/** `ch:<name>`; accepts the name with or without the prefix. */
export function channelConv(name: string): ConvId {
  const n = name.startsWith("ch:") ? name.slice(3) : name;
  if (!CHANNEL_NAME.test(n)) throw invalid("a channel name is 1 to 64 characters of [A-Za-z0-9_.:-]");
  return `ch:${n}`;
}

export function isChannel(conv: ConvId): boolean {
  return conv.startsWith("ch:");
}

/** A random message id (24 hex digits), for sends without one of the app's. */
export function randomMsgId(): MsgId {
  const b = new Uint8Array(12);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}
