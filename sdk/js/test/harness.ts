// Test harness: real `switchboard-gateway` processes (memory or Redis
// engine) and a real redis-server on free ports, wallets that sign like a
// browser wallet would (viem private-key accounts), and waiting for events.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { after } from "node:test";
import { chownSync, existsSync, mkdtempSync, readdirSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import WebSocket from "ws";
import { Auth, Client, type ClientEvents, type ClientOptions, type WalletSigner, viemSigner } from "../src/index.js";

const repo = fileURLToPath(new URL("../../../../", import.meta.url));
export const GATEWAY_BIN = process.env.SWITCHBOARD_GATEWAY_BIN ?? join(repo, "target/debug/switchboard-gateway");
export const WORKER_BIN = process.env.SWITCHBOARD_WORKER_BIN ?? join(repo, "target/debug/switchboard-worker");
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

export interface RedisOptions {
  /** Append-only file fsynced on every write: a kill -9 loses nothing, a restart has the data. */
  durable?: boolean;
}

export class Redis {
  private constructor(
    readonly port: number,
    private readonly dir: string,
    private readonly opts: RedisOptions,
    private child: ChildProcess,
  ) {}
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }
  static async start(opts: RedisOptions = {}): Promise<Redis> {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), "sb-js-redis-"));
    return new Redis(port, dir, opts, await Redis.spawn(port, dir, opts));
  }
  private static async spawn(port: number, dir: string, opts: RedisOptions): Promise<ChildProcess> {
    const persistence = opts.durable ? ["--appendonly", "yes", "--appendfsync", "always"] : ["--appendonly", "no"];
    const child = track(
      spawn(
        process.env.REDIS_SERVER_BIN ?? "redis-server",
        ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, ...persistence, "--save", "", "--protected-mode", "no"],
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
    return child;
  }
  /** kill -9 (the gateways see Redis unreachable). */
  async stop(): Promise<void> {
    await stopChild(this.child, "SIGKILL");
  }
  /** Start again on the same port with the same data directory (durable: with the data). */
  async restart(): Promise<void> {
    await this.stop();
    this.child = await Redis.spawn(this.port, this.dir, this.opts);
  }
  /** A Redis that lost its data: kill -9, empty the data directory, start again on the same port. */
  async wipeAndRestart(): Promise<void> {
    await this.stop();
    for (const f of readdirSync(this.dir)) rmSync(join(this.dir, f), { recursive: true, force: true });
    this.child = await Redis.spawn(this.port, this.dir, this.opts);
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
  /** PostgreSQL (the gateway seeds conversations from it; history reads it). */
  databaseUrl?: string;
}

export function secretFile(): string {
  const dir = mkdtempSync(join(tmpdir(), "sb-js-secret-"));
  const f = join(dir, "secret");
  writeFileSync(f, "sdk-js-test-secret-sdk-js-test-secret!!", { mode: 0o600 });
  return f;
}

/** A counter (`name_total`) or gauge (`name`) from a Prometheus text page; 0 when absent or unreachable. */
export async function metricAt(url: string, name: string): Promise<number> {
  let text: string;
  try {
    text = await (await fetch(url)).text();
  } catch {
    return 0;
  }
  for (const line of text.split("\n")) {
    for (const prefix of [`${name} `, `${name}_total `]) {
      if (line.startsWith(prefix)) return Number(line.slice(prefix.length).trim());
    }
  }
  return 0;
}

/** The relay's API key (`name:secret`): the relay gateway takes it with --api-key, the others with --relay-api-key. */
export const RELAY_KEY = "relay.key:relay-secret";

/**
 * Gateway arguments for a fallback relay: another Switchboard gateway (its
 * Ably-compatible API) at `relay`, reached with RELAY_KEY; the relay.json
 * the operator would mount, written to a temp file.
 */
export function relayArgs(relay: Gateway): string[] {
  const dir = mkdtempSync(join(tmpdir(), "sb-js-relay-"));
  const f = join(dir, "relay.json");
  writeFileSync(f, JSON.stringify({ provider: "switchboard", hosts: [`127.0.0.1:${relay.port}`], tls: false }));
  return ["--relay-config", f, "--relay-api-key", RELAY_KEY];
}

export class Gateway {
  private constructor(
    readonly port: number,
    readonly metricsPort: number,
    private readonly child: ChildProcess,
  ) {}
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  static async start(o: GatewayOptions = {}): Promise<Gateway> {
    const port = o.port ?? (await freePort());
    const metricsPort = await freePort();
    const args = [
      "--listen", `127.0.0.1:${port}`,
      "--metrics-listen", `127.0.0.1:${metricsPort}`,
      "--token-secret-file", o.secretFile ?? secretFile(),
      "--drain-seconds", String(o.drainSeconds ?? 1),
      // Tests sign many wallets in from one address within seconds.
      "--rest-burst", "10000", "--rest-rate", "1000",
      ...(o.redisUrl ? ["--redis-url", o.redisUrl] : []),
      ...(o.databaseUrl ? ["--database-url", o.databaseUrl] : []),
      ...(o.extraArgs ?? []),
    ];
    const env = { ...process.env };
    delete env.SWITCHBOARD_DATABASE_URL;
    delete env.SWITCHBOARD_REDIS_URL;
    delete env.POD_NAME;
    const child = track(spawn(GATEWAY_BIN, args, { stdio: ["ignore", "ignore", process.env.GATEWAY_LOGS ? "inherit" : "ignore"], env }));
    const gw = new Gateway(port, metricsPort, child);
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
  /** A counter or gauge of the gateway's /metrics (0 when absent). */
  async metric(name: string): Promise<number> {
    return metricAt(`http://127.0.0.1:${this.metricsPort}/metrics`, `switchboard_gateway_${name}`);
  }
  /** What /readyz answers: 200 "ready", or 200 naming relay mode ("Redis unreachable..."), or 503. */
  async readyz(): Promise<{ status: number; body: string }> {
    try {
      const r = await fetch(`${this.url}/readyz`);
      return { status: r.status, body: await r.text() };
    } catch (e) {
      return { status: 0, body: String(e) };
    }
  }
  /** Whether /readyz says the gateway is in relay mode (`on`) or plainly ready (`!on`). */
  async relayMode(on: boolean): Promise<boolean> {
    const r = await this.readyz();
    return r.status === 200 && r.body.includes("Redis unreachable") === on && (on || r.body === "ready");
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
 * The directory holding `initdb` and `postgres`: PG_BIN_DIR, else the one
 * `initdb` on PATH links into, else the newest /usr/lib/postgresql/N/bin
 * (Debian keeps the server binaries off PATH); as testkit's postgres.rs.
 */
function pgBinDir(): string {
  if (process.env.PG_BIN_DIR) return process.env.PG_BIN_DIR;
  for (const d of (process.env.PATH ?? "").split(":")) {
    if (!d || !existsSync(join(d, "initdb"))) continue;
    const real = join(realpathSync(join(d, "initdb")), "..");
    if (existsSync(join(real, "postgres"))) return real;
  }
  const versions = (existsSync("/usr/lib/postgresql") ? readdirSync("/usr/lib/postgresql") : [])
    .filter((v) => /^\d+$/.test(v) && existsSync(`/usr/lib/postgresql/${v}/bin/initdb`))
    .sort((a, b) => Number(a) - Number(b));
  const v = versions.pop();
  if (v === undefined) throw new Error("no initdb/postgres: set PG_BIN_DIR or install PostgreSQL (apt-get install -y postgresql), or run ./scripts/test");
  return `/usr/lib/postgresql/${v}/bin`;
}

/**
 * A real PostgreSQL: `initdb` into a temp dir, `postgres` on a free port on
 * 127.0.0.1, trust auth for the `postgres` role. PostgreSQL refuses to run
 * as root: then the data directory goes to the `postgres` system user and
 * the server runs under it through `setpriv`, which execs in place (the
 * child held here is the postmaster).
 */
export class Postgres {
  private constructor(
    readonly port: number,
    private readonly dir: string,
    private readonly child: ChildProcess,
  ) {}
  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }
  static async start(): Promise<Postgres> {
    const bin = pgBinDir();
    const root = process.getuid?.() === 0;
    const cmd = (name: string, args: string[]): [string, string[]] =>
      root
        ? ["setpriv", ["--reuid", "postgres", "--regid", "postgres", "--init-groups", join(bin, name), ...args]]
        : [join(bin, name), args];
    const dir = mkdtempSync(join(tmpdir(), "sb-js-pg-"));
    if (root) {
      const uid = Number(spawnSync("id", ["-u", "postgres"], { encoding: "utf8" }).stdout.trim());
      const gid = Number(spawnSync("id", ["-g", "postgres"], { encoding: "utf8" }).stdout.trim());
      if (!Number.isInteger(uid) || !Number.isInteger(gid)) throw new Error("running as root and there is no `postgres` user (apt-get install -y postgresql)");
      chownSync(dir, uid, gid);
    }
    const data = join(dir, "data");
    const [initdb, initArgs] = cmd("initdb", ["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--locale", "C"]);
    const init = spawnSync(initdb, initArgs, { encoding: "utf8" });
    if (init.status !== 0) throw new Error(`initdb failed (${init.status ?? init.error}): ${init.stdout}${init.stderr}`);
    const port = await freePort();
    const [postgres, args] = cmd("postgres", [
      "-D", data, "-p", String(port),
      "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
      // Tests kill processes, never the OS: fsync loses nothing observable here.
      "-c", "fsync=off", "-c", "full_page_writes=off",
    ]);
    let log = "";
    const child = track(spawn(postgres, args, { stdio: ["ignore", "pipe", "pipe"] }));
    child.stdout?.on("data", (d: Buffer) => (log += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (log += d.toString()));
    let exited = false;
    child.once("exit", () => (exited = true));
    await until(`postgres on ${port} ready`, () => {
      if (exited) throw new Error(`postgres exited: ${log.slice(-2000)}`);
      return spawnSync(join(bin, "pg_isready"), ["-h", "127.0.0.1", "-p", String(port), "-q"]).status === 0;
    }, 30_000);
    return new Postgres(port, dir, child);
  }
  /** Fast shutdown, then the data directory (tens of MB) is removed. */
  async stop(): Promise<void> {
    await stopChild(this.child, "SIGINT");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The persistence worker (`switchboard-worker run --migrate`): Redis streams into PostgreSQL. */
export class Worker {
  private constructor(
    readonly port: number,
    private readonly child: ChildProcess,
  ) {}
  static async start(o: { redisUrl: string; databaseUrl: string }): Promise<Worker> {
    if (!existsSync(WORKER_BIN)) throw new Error(`no ${WORKER_BIN}: build it with cargo build -p switchboard-worker (or set SWITCHBOARD_WORKER_BIN)`);
    const port = await freePort();
    const args = ["run", "--migrate", "--redis-url", o.redisUrl, "--database-url", o.databaseUrl, "--listen", `127.0.0.1:${port}`, "--linger-ms", "1"];
    const env = { ...process.env };
    delete env.SWITCHBOARD_DATABASE_URL;
    delete env.SWITCHBOARD_REDIS_URL;
    delete env.POD_NAME;
    const child = track(spawn(WORKER_BIN, args, { stdio: ["ignore", "ignore", process.env.GATEWAY_LOGS ? "inherit" : "ignore"], env }));
    let exited = false;
    child.once("exit", () => (exited = true));
    const w = new Worker(port, child);
    await until(`worker on ${port} ready`, async () => {
      if (exited) throw new Error(`${WORKER_BIN} exited before it was ready`);
      try {
        return (await fetch(`http://127.0.0.1:${port}/readyz`)).ok;
      } catch {
        return false;
      }
    });
    return w;
  }
  /** A counter or gauge of the worker's /metrics (0 when absent). */
  async metric(name: string): Promise<number> {
    return metricAt(`http://127.0.0.1:${this.port}/metrics`, `switchboard_worker_${name}`);
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
