// @switchboard/client: Switchboard's TypeScript SDK.
export * from "./gen/protocol.js";
export * from "./gen/patterns.js";
export { SwitchboardError, type SdkErrorCode } from "./errors.js";
export { checkAddress, checkConv, checkMsgId, directConv, channelConv, randomMsgId } from "./ids.js";
export { Backoff } from "./backoff.js";
export {
  Auth,
  signIn,
  eip1193Signer,
  viemSigner,
  ethersSigner,
  type WalletSigner,
  type Eip1193Provider,
  type SignInOptions,
  type AuthOptions,
  type Session,
} from "./signin.js";
export { Client, Close, type ClientOptions, type ClientEvents, type Subscribed, type WebSocketCtor, type WebSocketLike } from "./client.js";
export type { Sent } from "./outbox.js";
export { MemoryStore, type Store, type ConvState, type QueuedSend, type HistoryQuery } from "./store.js";
export { Rest } from "./rest.js";
export { EventStream, type EventStreamOptions } from "./sse.js";
