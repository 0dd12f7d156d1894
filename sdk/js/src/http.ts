// The one place REST requests are made: base URL checks, bearer auth,
// bounded answers and the gateway's error bodies turned into SwitchboardError.
import { SwitchboardError, invalid } from "./errors.js";
import type { ErrorBody } from "./gen/protocol.js";

/** Largest REST answer read (a 200-message history page of 64 KiB bodies fits twice). */
export const MAX_ANSWER_BYTES = 32 * 1024 * 1024;

/** `http(s)://host[:port]` with no trailing slash; ws(s) URLs are accepted and mapped. */
export function httpBase(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw invalid(`not a URL: ${url.slice(0, 200)}`);
  }
  const scheme = { "http:": "http:", "https:": "https:", "ws:": "http:", "wss:": "https:" }[u.protocol];
  if (!scheme) throw invalid(`the gateway URL must be http(s):// or ws(s)://, not ${u.protocol}`);
  const path = u.pathname.replace(/\/+$/, "");
  return `${scheme}//${u.host}${path}`;
}

export function wsUrl(base: string): string {
  return `${base.replace(/^http/, "ws")}/v1/ws`;
}

export class Http {
  readonly base: string;
  private readonly fetch: typeof fetch;

  constructor(
    baseUrl: string,
    fetchImpl?: typeof fetch,
    private readonly token?: () => Promise<string>,
  ) {
    this.base = httpBase(baseUrl);
    const f = fetchImpl ?? globalThis.fetch;
    if (!f) throw invalid("no fetch in this runtime: pass one (Node >= 18 has it)");
    this.fetch = f.bind(globalThis);
  }

  async request(method: string, path: string, body?: unknown, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    if (this.token) headers.set("authorization", `Bearer ${await this.token()}`);
    if (body !== undefined) headers.set("content-type", "application/json");
    let r: Response;
    try {
      r = await this.fetch(`${this.base}${path}`, {
        ...init,
        method,
        headers,
        body: body === undefined ? null : JSON.stringify(body),
      });
    } catch (e) {
      throw new SwitchboardError("network", `${method} ${path}: ${(e as Error).message}`);
    }
    if (!r.ok) throw await errorOf(r, `${method} ${path}`);
    return r;
  }

  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const r = await this.request(method, path, body);
    const text = await boundedText(r);
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new SwitchboardError("network", `${method} ${path}: the answer is not JSON`, r.status);
    }
  }

  async empty(method: string, path: string, body?: unknown): Promise<void> {
    const r = await this.request(method, path, body);
    await r.body?.cancel();
  }
}

async function boundedText(r: Response): Promise<string> {
  const len = Number(r.headers.get("content-length") ?? "0");
  if (len > MAX_ANSWER_BYTES) {
    await r.body?.cancel();
    throw new SwitchboardError("too_large", `answer of ${len} bytes is over ${MAX_ANSWER_BYTES}`);
  }
  const text = await r.text();
  if (text.length > MAX_ANSWER_BYTES) throw new SwitchboardError("too_large", "answer too large");
  return text;
}

/** The gateway's `{"error": {code, message}}` (or whatever came) as an error. */
export async function errorOf(r: Response, what: string): Promise<SwitchboardError> {
  const retry = Number(r.headers.get("retry-after"));
  const retryAfter = Number.isFinite(retry) && retry > 0 ? retry : undefined;
  let text = "";
  try {
    text = (await r.text()).slice(0, 4096);
  } catch {
    /* the status alone says enough */
  }
  try {
    const b = JSON.parse(text) as ErrorBody;
    if (b?.error?.code) {
      return new SwitchboardError(b.error.code as never, `${what}: ${b.error.message}`, r.status, retryAfter);
    }
  } catch {
    /* not the gateway's error body */
  }
  const code = r.status === 401 ? "unauthorized" : r.status === 404 ? "not_found" : r.status === 429 ? "rate_limited" : "network";
  return new SwitchboardError(code, `${what}: HTTP ${r.status} ${text.slice(0, 200)}`, r.status, retryAfter);
}
