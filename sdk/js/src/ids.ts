// Client-side checks of ids, with the patterns and bounds the gateway's
// parsers enforce (proto/src/ids.rs), so bad input fails here with a clear
// message instead of as a `bad_frame` later. The patterns and bounds are
// generated from the protocol's JSON Schema (src/gen/patterns.ts), not
// copied.
import { getAddress, isAddress } from "viem";
import { invalid } from "./errors.js";
import {
  ADDRESS_MAX_LENGTH,
  ADDRESS_PATTERN,
  CHANNEL_NAME_MAX_LENGTH,
  CHANNEL_NAME_MIN_LENGTH,
  CHANNEL_NAME_PATTERN,
  CONV_ID_MAX_LENGTH,
  CONV_ID_PATTERN,
  MSG_ID_MAX_LENGTH,
  MSG_ID_MIN_LENGTH,
  MSG_ID_PATTERN,
} from "./gen/patterns.js";
import type { Address, ConvId, MsgId } from "./gen/protocol.js";

/** An address, EIP-55 checksummed; throws `invalid_input` otherwise. */
export function checkAddress(a: string): Address {
  if (typeof a !== "string" || a.length > ADDRESS_MAX_LENGTH || !ADDRESS_PATTERN.test(a) || !isAddress(a, { strict: false })) {
    throw invalid(`not an address (0x and 40 hex digits): ${String(a).slice(0, 60)}`);
  }
  return getAddress(a);
}

/** A conversation id in its canonical form (direct ids lowercase and sorted). */
export function checkConv(c: string): ConvId {
  if (typeof c !== "string" || c.length > CONV_ID_MAX_LENGTH || !CONV_ID_PATTERN.test(c)) {
    throw invalid(`not a conversation id (dm:<a>:<b>, g:<32 hex> or ch:<name>): ${String(c).slice(0, 100)}`);
  }
  if (c.startsWith("dm:")) {
    const [, a, b] = c.split(":");
    return directConv(a as string, b as string);
  }
  return c.startsWith("g:") ? c.toLowerCase() : c;
}

export function checkMsgId(id: string): MsgId {
  if (typeof id !== "string" || id.length > MSG_ID_MAX_LENGTH || !MSG_ID_PATTERN.test(id)) {
    throw invalid(`a message id is ${MSG_ID_MIN_LENGTH} to ${MSG_ID_MAX_LENGTH} characters matching ${MSG_ID_PATTERN.source}`);
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
  if (typeof name !== "string") throw invalid("a channel name is a string");
  const n = name.startsWith("ch:") ? name.slice(3) : name;
  if (n.length > CHANNEL_NAME_MAX_LENGTH || !CHANNEL_NAME_PATTERN.test(n)) {
    throw invalid(
      `a channel name is ${CHANNEL_NAME_MIN_LENGTH} to ${CHANNEL_NAME_MAX_LENGTH} characters matching ${CHANNEL_NAME_PATTERN.source}: ${n.slice(0, 80)}`,
    );
  }
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
