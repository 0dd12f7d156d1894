// Test harness: real `switchboard-gateway` processes (memory or Redis
// engine) and a real redis-server on free ports, wallets that sign like a
// browser wallet would (viem private-key accounts), and waiting for events.
import { spawn, type ChildProcess } from "node:child_process";
import { after } from "node:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import WebSocket from "ws";
import { Auth, Client, type ClientEvents, type ClientOptions, type WalletSigner, viemSigner } from "../src/index.js";

const repo = fileURLToPath(new URL("../../../../", import.meta.url));
export const GATEWAY_BIN = process.env.SWITCHBOARD_GATEWAY_BIN ?? join(repo, "target/debug/switchboard-gateway");
export const WAIT_MS = 8_000;

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (a && typeof a === "object" ? resolve(a.port) : reject(new Error("no port"))));
    });
  });
}

const children = new Set<ChildProcess>();
function killAll(): void {
  for (const c of children) c.kill("SIGKILL");
}
process.on("exit", killAll);
// A failed test skips its own cleanup: the servers it started must not keep
// the test process alive.
after(killAll);

function track(c: ChildProcess): ChildProcess {
  children.add(c);
  c.once("exit", () => children.delete(c));
  return c;
}

/** Resolves when `pred` holds, checking every 50 ms, or rejects after `ms`. */
export async function until(what: string, pred: () => Promise<boolean> | boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export class Redis {
  private constructor(
    readonly port: number,
    private readonly child: ChildProcess,
  ) {}
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }
  static async start(): Promise<Redis> {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), "sb-js-redis-"));
    const child = track(
      spawn(
        process.env.REDIS_SERVER_BIN ?? "redis-server",
        ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--appendonly", "no", "--save", "", "--protected-mode", "no"],
        { stdio: ["ignore", "pipe", "inherit"] },
      ),
    );
    // redis-server logs this line to stdout once it accepts connections.
    await new Promise<void>((resolve, reject) => {
      let out = "";
      const t = setTimeout(() => reject(new Error(`redis-server not ready: ${out}`)), 20_000);
      child.stdout?.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.includes("Ready to accept connections")) {
          clearTimeout(t);
          resolve();
        }
      });
      child.once("exit", (code) => reject(new Error(`redis-server exited ${code}: ${out}`)));
    });
    return new Redis(port, child);
  }
  async stop(): Promise<void> {
    await stopChild(this.child, "SIGKILL");
  }
}

async function stopChild(c: ChildProcess, sig: NodeJS.Signals): Promise<number | null> {
  if (c.exitCode !== null || c.signalCode !== null) return c.exitCode;
  return new Promise((resolve) => {
    c.once("exit", (code) => resolve(code));
    c.kill(sig);
  });
}

export interface GatewayOptions {
  redisUrl?: string;
  /** Gateways that should accept each other's tokens share this file. */
  secretFile?: string;
  drainSeconds?: number;
  extraArgs?: string[];
  /** Listen on this port (a restart at the same address). */
  port?: number;
}

export function secretFile(): string {
  const dir = mkdtempSync(join(tmpdir(), "sb-js-secret-"));
  const f = join(dir, "secret");
  writeFileSync(f, "sdk-js-test-secret-sdk-js-test-secret!!", { mode: 0o600 });
  return f;
}

export class Gateway {
  private constructor(
    readonly port: number,
    private readonly child: ChildProcess,
  ) {}
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  static async start(o: GatewayOptions = {}): Promise<Gateway> {
    const port = o.port ?? (await freePort());
    const args = [
      "--listen", `127.0.0.1:${port}`,
      "--token-secret-file", o.secretFile ?? secretFile(),
      "--drain-seconds", String(o.drainSeconds ?? 1),
      // Tests sign many wallets in from one address within seconds.
      "--rest-burst", "10000", "--rest-rate", "1000",
      ...(o.redisUrl ? ["--redis-url", o.redisUrl] : []),
      ...(o.extraArgs ?? []),
    ];
    const env = { ...process.env };
    delete env.SWITCHBOARD_DATABASE_URL;
    delete env.SWITCHBOARD_REDIS_URL;
    delete env.POD_NAME;
    const child = track(spawn(GATEWAY_BIN, args, { stdio: ["ignore", "ignore", process.env.GATEWAY_LOGS ? "inherit" : "ignore"], env }));
    const gw = new Gateway(port, child);
    let exited = false;
    child.once("exit", () => (exited = true));
    await until(`gateway on ${port} ready`, async () => {
      if (exited) throw new Error(`${GATEWAY_BIN} exited before it was ready`);
      try {
        return (await fetch(`${gw.url}/readyz`)).ok;
      } catch {
        return false;
      }
    });
    return gw;
  }
  /** SIGTERM: the gateway drains (closes its sockets with 1012) and exits. */
  async drain(): Promise<number | null> {
    return stopChild(this.child, "SIGTERM");
  }
  async kill(): Promise<void> {
    await stopChild(this.child, "SIGKILL");
  }
}

/**
 * A round-robin TCP balancer over the gateways still in rotation, as a
 * Kubernetes Service is: a draining pod leaves it before its SIGTERM.
 */
export class Balancer {
  private next = 0;
  private constructor(
    readonly port: number,
    private readonly server: import("node:net").Server,
    readonly upstreams: number[],
  ) {}
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  static async start(upstreams: number[]): Promise<Balancer> {
    const { createServer: tcp, connect: dial } = await import("node:net");
    const ups = [...upstreams];
    let b: Balancer | undefined;
    const server = tcp((inbound) => {
      const list = b?.upstreams ?? ups;
      const port = list[(b ? b.next++ : 0) % list.length];
      const outbound = dial(port ?? 0, "127.0.0.1");
      inbound.pipe(outbound).pipe(inbound);
      inbound.on("error", () => outbound.destroy());
      outbound.on("error", () => inbound.destroy());
      inbound.on("close", () => outbound.destroy());
      outbound.on("close", () => inbound.destroy());
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const a = server.address();
    b = new Balancer(a && typeof a === "object" ? a.port : 0, server, ups);
    return b;
  }
  remove(port: number): void {
    const i = this.upstreams.indexOf(port);
    if (i >= 0) this.upstreams.splice(i, 1);
  }
  close(): void {
    this.server.close();
  }
}

export function wallet(): WalletSigner & { address: string } {
  const account = privateKeyToAccount(generatePrivateKey());
  return Object.assign(viemSigner(account), { address: account.address });
}

export const fast: ClientOptions = {
  WebSocket: WebSocket as never,
  backoffBaseMs: 20,
  backoffCapMs: 300,
  connectTimeoutMs: 3_000,
  sendTimeoutMs: 2_000,
  retryBaseMs: 50,
  gapGraceMs: 100,
  syncTimeoutMs: 2_000,
};

/** A wallet signed in at `url` and connected. */
export async function connect(url: string, opts: ClientOptions = {}, w = wallet(), authOpts = {}): Promise<Client> {
  const auth = new Auth(url, w, authOpts);
  return Client.connect(auth, { ...fast, ...opts });
}

/** Records a client's events so a test can wait for one that already came. */
export class Events {
  readonly seen: Array<{ type: keyof ClientEvents; e: unknown }> = [];
  private waiters: Array<() => void> = [];
  constructor(c: Client) {
    const types: Array<keyof ClientEvents> = [
      "connected", "disconnected", "message", "sent", "receipt", "typing", "presence", "synced", "subscribed", "unsubscribed", "error", "session",
    ];
    for (const t of types) {
      c.on(t, (e) => {
        this.seen.push({ type: t, e });
        for (const w of this.waiters.splice(0)) w();
      });
    }
  }
  of<K extends keyof ClientEvents>(type: K): Array<ClientEvents[K]> {
    return this.seen.filter((s) => s.type === type).map((s) => s.e as ClientEvents[K]);
  }
  /** The first event of `type` (from index `from` of the record) matching `pred`. */
  async next<K extends keyof ClientEvents>(
    type: K,
    pred: (e: ClientEvents[K]) => boolean = () => true,
    opts: { from?: number; ms?: number } = {},
  ): Promise<ClientEvents[K]> {
    const deadline = Date.now() + (opts.ms ?? WAIT_MS);
    let i = opts.from ?? 0;
    for (;;) {
      for (; i < this.seen.length; i++) {
        const s = this.seen[i];
        if (s && s.type === type && pred(s.e as ClientEvents[K])) return s.e as ClientEvents[K];
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${type} event within ${opts.ms ?? WAIT_MS} ms; saw ${this.seen.map((s) => s.type).join(",")}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
  /** `n` messages of `conv` (waiting for them), in the order surfaced. */
  async messages(conv: string, n: number, ms = WAIT_MS): Promise<ClientEvents["message"][]> {
    const deadline = Date.now() + ms;
    for (;;) {
      const got = this.of("message").filter((m) => m.conv === conv);
      if (got.length >= n) return got;
      if (Date.now() > deadline) throw new Error(`${got.length} of ${n} messages of ${conv} within ${ms} ms: ${JSON.stringify(got.map((m) => [m.seq, m.body]))}; events ${this.seen.map((s) => s.type).join(",")}`);
      await this.next("message", (m) => m.conv === conv, { from: this.seen.length, ms: deadline - Date.now() }).catch(() => undefined);
    }
  }
  get length(): number {
    return this.seen.length;
  }
}
