// Read-only live events over Server-Sent Events, for pages that only read:
// `GET /v1/conversations/{id}/events` (or a channel's). Read with fetch (so
// the token goes in a header, not the URL, and Node needs no EventSource),
// parsed by eventsource-parser; resumes with Last-Event-ID (the last seq)
// after a drop, at once after the server's `close` 1012, after signing in
// again on 4001; a message is surfaced once, in seq order.
import { createParser } from "eventsource-parser";
import { Backoff } from "./backoff.js";
import { SwitchboardError } from "./errors.js";
import type { ConvId, Message } from "./gen/protocol.js";
import { Http, errorOf } from "./http.js";
import { checkConv, isChannel } from "./ids.js";
import type { Auth } from "./signin.js";

/** Longest event accepted (a message frame is at most 64 KiB; JSON escapes may grow it). */
export const MAX_EVENT_BYTES = 512 * 1024;

export interface EventStreamOptions {
  /** Replay after this seq (default 0: everything the server still holds). */
  after?: number;
  onMessage: (m: Message) => void;
  onSynced?: (s: { recovered: boolean; lastSeq: number }) => void;
  /** The stream ended from the server's side (`close`) or dropped; it reconnects unless stopped. */
  onDisconnect?: (d: { code: number; reason: string }) => void;
  backoffBaseMs?: number;
  backoffCapMs?: number;
  fetch?: typeof fetch;
}

export class EventStream {
  private readonly abort = new AbortController();
  private readonly http: Http;
  private readonly done: Promise<void>;
  private lastSeq: number;
  private readonly conv: ConvId;

  constructor(
    private readonly auth: Auth,
    conv: string,
    private readonly opts: EventStreamOptions,
  ) {
    this.conv = checkConv(conv);
    this.lastSeq = opts.after ?? 0;
    this.http = new Http(auth.baseUrl, opts.fetch, () => auth.token());
    this.done = this.run();
  }

  /** The last seq surfaced. */
  get held(): number {
    return this.lastSeq;
  }

  async close(): Promise<void> {
    this.abort.abort();
    await this.done;
  }

  private path(): string {
    const c = encodeURIComponent(this.conv);
    return isChannel(this.conv) ? `/v1/channels/${c}/events` : `/v1/conversations/${c}/events`;
  }

  private async run(): Promise<void> {
    const backoff = new Backoff(this.opts.backoffBaseMs ?? 200, this.opts.backoffCapMs ?? 10_000);
    let wait = 0;
    // After a drain's 1012 the next request may go out on a pooled
    // keep-alive connection to the draining gateway and fail at once;
    // such failures (one per pooled connection) are retried at once too, a few times, not after a backoff.
    let atOnce = 0;
    while (!this.abort.signal.aborted) {
      if (wait > 0) await sleepUnless(wait, this.abort.signal);
      if (this.abort.signal.aborted) return;
      let end: { code: number; reason: string };
      try {
        end = await this.once(() => {
          backoff.reset();
          atOnce = 0;
        });
      } catch (e) {
        if (this.abort.signal.aborted) return;
        const err = e as SwitchboardError;
        end = { code: err.status === 401 ? 4001 : 1006, reason: err.message };
      }
      if (this.abort.signal.aborted) return;
      this.opts.onDisconnect?.(end);
      if (end.code === 4001) {
        await this.auth.refresh().catch(() => undefined);
        wait = backoff.next();
      } else if (end.code === 1012) {
        wait = 0;
        atOnce = 4;
      } else if (end.code === 1006 && atOnce > 0) {
        wait = 0;
        atOnce -= 1;
      } else wait = backoff.next();
    }
  }

  /** One stream until it ends. */
  private async once(onOpen: () => void): Promise<{ code: number; reason: string }> {
    const headers = { accept: "text/event-stream", "last-event-id": String(this.lastSeq) };
    const r = await this.http.request("GET", `${this.path()}?after=${this.lastSeq}`, undefined, {
      headers,
      signal: this.abort.signal,
    });
    if (!r.body) throw await errorOf(r, "events");
    onOpen();
    let end: { code: number; reason: string } | undefined;
    let size = 0;
    const parser = createParser({
      onEvent: (ev) => {
        size = 0;
        let data: unknown;
        try {
          data = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (ev.event === "message" || ev.event === undefined) {
          const m = data as Message & { type?: string };
          // Gap-free and in order from the server; this drops a replayed repeat.
          if (typeof m.seq !== "number" || m.seq <= this.lastSeq) return;
          this.lastSeq = m.seq;
          const { type: _t, ...msg } = m;
          this.opts.onMessage(msg as Message);
        } else if (ev.event === "synced") {
          const s = data as { recovered: boolean; last_seq: number };
          this.opts.onSynced?.({ recovered: s.recovered, lastSeq: s.last_seq });
        } else if (ev.event === "close") {
          const c = data as { code: number; reason: string };
          end = { code: c.code, reason: c.reason };
        } else if (ev.event === "error") {
          const c = data as { code?: string; message?: string };
          end = { code: 1011, reason: `${c.code}: ${c.message}` };
        }
      },
    });
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        size += value.length;
        if (size > MAX_EVENT_BYTES) {
          await reader.cancel();
          return { code: 1009, reason: "an event over the size limit" };
        }
        parser.feed(value);
        if (end) {
          await reader.cancel();
          break;
        }
      }
    } catch (e) {
      if (this.abort.signal.aborted) return { code: 1000, reason: "closed" };
      return { code: 1006, reason: (e as Error).message };
    }
    return end ?? { code: 1006, reason: "the stream ended" };
  }
}

function sleepUnless(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}
