// Every failure the SDK reports is a SwitchboardError with a machine code,
// so apps branch on `code`, not on message text.
import type { ErrorCode } from "./gen/protocol.js";

/** Codes of the gateway (`ErrorCode`) plus the SDK's own. */
export type SdkErrorCode =
  | ErrorCode
  | "invalid_input" // the app passed something the protocol cannot carry
  | "network" // the gateway could not be reached or answered garbage
  | "closed" // the client was closed before the operation finished
  | "timeout";

export class SwitchboardError extends Error {
  override readonly name = "SwitchboardError";
  constructor(
    readonly code: SdkErrorCode,
    message: string,
    /** HTTP status of a REST answer, when there was one. */
    readonly status?: number,
    /** Seconds from a 429's `Retry-After`. */
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

export function invalid(message: string): SwitchboardError {
  return new SwitchboardError("invalid_input", message);
}
