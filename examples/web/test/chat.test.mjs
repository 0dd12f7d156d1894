// The browser chat in real headless Chromium (Debian's `chromium`, driven by
// puppeteer-core) against a real `switchboard dev` serving it at /demo. Two
// pages sign in with injected EIP-1193 test wallets (a shim in the page whose
// personal_sign is done by a viem private-key account in this process), chat
// directly, in a group and on the live channel, see unread counts, read
// receipts and typing; one page goes offline (CDP network emulation), both
// write meanwhile, and after it comes back each page shows every message
// exactly once.
import { spawn } from "node:child_process";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import puppeteer from "puppeteer-core";

const web = fileURLToPath(new URL("..", import.meta.url));
const repo = join(web, "../..");
const BIN = process.env.SWITCHBOARD_BIN ?? join(repo, "target/debug/switchboard");
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const WAIT = 20_000;

// viem from the SDK's pinned dependencies.
const sdkRequire = createRequire(join(repo, "sdk/js/package.json"));
const { generatePrivateKey, privateKeyToAccount } = await import(pathToFileURL(sdkRequire.resolve("viem/accounts")).href);

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

let server;
let browser;
let base;

before(async () => {
  assert.ok(existsSync(BIN), `${BIN} missing: cargo build -p switchboard-cli --bin switchboard`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  const port = await freePort();
  const secret = join(mkdtempSync(join(tmpdir(), "sb-web-")), "secret");
  writeFileSync(secret, "web-example-test-secret-web-example-test!", { mode: 0o600 });
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith("SWITCHBOARD_")) delete env[k];
  server = spawn(
    BIN,
    ["dev", "--listen", `127.0.0.1:${port}`, "--token-secret-file", secret, "--drain-seconds", "1", "--rest-burst", "10000", "--rest-rate", "1000"],
    { stdio: ["ignore", "ignore", process.env.GATEWAY_LOGS ? "inherit" : "ignore"], env },
  );
  let exited = false;
  server.once("exit", () => (exited = true));
  base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + WAIT;
  for (;;) {
    if (exited) throw new Error(`${BIN} dev exited before it was ready`);
    try {
      if ((await fetch(`${base}/readyz`)).ok) break;
    } catch {}
    if (Date.now() > deadline) throw new Error("switchboard dev not ready");
    await new Promise((r) => setTimeout(r, 50));
  }
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in CI has no user namespaces for Chromium's sandbox.
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGKILL");
});

/** A page in its own browser context with an injected test wallet, signed in. */
async function signedInPage(name) {
  const account = privateKeyToAccount(generatePrivateKey());
  const ctx = await browser.createBrowserContext();
  const page = await ctx.newPage();
  await page.setViewport({ width: 1100, height: 640 });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  // The wallet's key stays in this process; the page asks it to sign.
  await page.exposeFunction("__testWalletSign", (hex) => account.signMessage({ message: { raw: hex } }));
  await page.evaluateOnNewDocument((address) => {
    window.ethereum = {
      async request({ method, params }) {
        if (method === "eth_requestAccounts" || method === "eth_accounts") return [address];
        if (method === "personal_sign") return window.__testWalletSign(params[0]);
        throw Object.assign(new Error(`unsupported: ${method}`), { code: 4200 });
      },
    };
  }, account.address);
  await page.goto(`${base}/demo`);
  await page.click("#signin");
  await page.waitForSelector("#chat:not([hidden]) #convs li", { timeout: WAIT }).catch(async (e) => {
    const state = await page.evaluate(() => ({
      error: document.querySelector("#signin-error")?.textContent,
      log: document.querySelector("#log")?.textContent,
    }));
    throw new Error(`${name} did not come online: ${e.message}: ${JSON.stringify(state)} ${errors.join("; ")}`);
  });
  const me = await page.$eval("#me", (e) => e.textContent);
  assert.equal(me, account.address, `${name} signed in as its wallet`);
  return { page, address: account.address, errors };
}

async function texts(page) {
  return page.$$eval("#messages li .text", (els) => els.map((e) => e.textContent));
}

async function send(page, text) {
  await page.type("#text", text);
  await page.keyboard.press("Enter");
}

/** Waits until the selected conversation shows exactly `want` (in this order, each once). */
async function shows(page, want) {
  await page
    .waitForFunction(
      (want) => {
        const got = [...document.querySelectorAll("#messages li .text")].map((e) => e.textContent);
        return JSON.stringify(got) === JSON.stringify(want);
      },
      { timeout: WAIT },
      want,
    )
    .catch(async (e) => {
      throw new Error(`${e.message}: wanted ${JSON.stringify(want)}, shown ${JSON.stringify(await texts(page))}`);
    });
}

const liFor = (conv) => `#convs li[data-conv="${conv}"]`;

/** Opens a conversation from the list (clicked in the page: the list re-renders as events come). */
async function open(page, conv) {
  await page.waitForSelector(liFor(conv), { timeout: WAIT });
  await page.$eval(liFor(conv), (li) => li.click());
}

test("/demo serves the checked-in page", async () => {
  const r = await fetch(`${base}/demo`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /^text\/html/);
  // The binary embeds dist/index.html when it is compiled: rebuild it after the page changes.
  const served = await r.text();
  assert.ok(served === readFileSync(join(web, "dist/index.html"), "utf8"), `${BIN} serves a different page than dist/index.html (${served.length} bytes): rebuild it`);
});

test("two wallets chat in the browser: unread, receipts, typing, group, live channel, offline and back", async () => {
  const a = await signedInPage("alice");
  const b = await signedInPage("bob");
  const dm = `dm:${[a.address, b.address].map((x) => x.toLowerCase()).sort().join(":")}`;

  // Alice opens a direct chat with Bob's address and writes.
  await a.page.type("#new-members", b.address);
  await a.page.click("#new-chat button");
  await a.page.waitForSelector(`${liFor(dm)}.selected`, { timeout: WAIT });
  await send(a.page, "hello bob");
  await send(a.page, "are you there?");
  await shows(a.page, ["hello bob", "are you there?"]);
  await a.page.waitForFunction(() => document.querySelectorAll("#messages li.pending").length === 0, { timeout: WAIT });

  // Bob's list shows the chat with two unread; opening it reads them.
  await b.page.waitForSelector(`${liFor(dm)} .unread[data-count="2"]`, { timeout: WAIT });
  await open(b.page, dm);
  await shows(b.page, ["hello bob", "are you there?"]);
  await b.page.waitForSelector(`${liFor(dm)} .unread[data-count="0"]`, { timeout: WAIT });
  // Alice sees both read.
  await a.page.waitForFunction(
    () => [...document.querySelectorAll("#messages li.mine .receipt")].map((e) => e.textContent).join() === "read,read",
    { timeout: WAIT },
  );

  // Bob types; Alice sees it. Then he sends.
  await b.page.type("#text", "yes, he");
  await a.page.waitForFunction(() => /is typing/.test(document.querySelector("#typing")?.textContent ?? ""), { timeout: WAIT });
  await b.page.type("#text", "re");
  await b.page.keyboard.press("Enter");
  await shows(a.page, ["hello bob", "are you there?", "yes, here"]);

  // Presence: each sees the other online.
  await a.page.waitForSelector(`${liFor(dm)} .dot[data-presence="online"]`, { timeout: WAIT });

  // Bob goes offline. Both write meanwhile: Alice's messages wait in the
  // gateway for Bob, Bob's in his page's outbox.
  const connectionsBefore = await b.page.$eval("#connections", (e) => e.textContent);
  assert.equal(connectionsBefore, "connections: 1");
  await b.page.setOfflineMode(true);
  await b.page.waitForSelector('#status:not([data-state="online"])', { timeout: WAIT });
  for (const t of ["away 1", "away 2", "away 3"]) await send(a.page, t);
  await send(b.page, "written offline");
  await b.page.waitForSelector("#messages li.pending", { timeout: WAIT });
  await shows(a.page, ["hello bob", "are you there?", "yes, here", "away 1", "away 2", "away 3"]);
  // Still offline: nothing of Alice's arrived at Bob.
  assert.deepEqual(await texts(b.page), ["hello bob", "are you there?", "yes, here", "written offline"]);

  await b.page.setOfflineMode(false);
  await b.page.waitForSelector('#status[data-state="online"]', { timeout: WAIT });
  const final = ["hello bob", "are you there?", "yes, here", "away 1", "away 2", "away 3", "written offline"];
  await shows(b.page, final);
  await shows(a.page, final);
  await b.page.waitForFunction(() => document.querySelectorAll("#messages li.pending").length === 0, { timeout: WAIT });
  // Each message once, with seqs 1..7 in order, on both pages.
  for (const p of [a.page, b.page]) {
    const seqs = await p.$$eval("#messages li", (els) => els.map((e) => Number(e.dataset.seq)));
    assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6, 7]);
  }
  assert.equal(await b.page.$eval("#connections", (e) => e.textContent), "connections: 2", "Bob reconnected once");

  // A group with a title, and the live channel Alice created on sign-in.
  await a.page.type("#new-members", b.address);
  await a.page.type("#new-title", "launch team");
  await a.page.click("#new-chat button");
  await a.page.waitForFunction(() => document.querySelector("#conv-title")?.textContent?.startsWith("launch team"), { timeout: WAIT });
  await send(a.page, "group hello");
  await shows(a.page, ["group hello"]);
  await b.page.waitForFunction(
    () => [...document.querySelectorAll("#convs li")].some((li) => li.textContent?.includes("launch team") && li.querySelector('.unread[data-count="1"]')),
    { timeout: WAIT },
  );
  await open(a.page, "ch:lobby");
  await send(a.page, "live on the lobby");
  await open(b.page, "ch:lobby");
  await shows(b.page, ["live on the lobby"]);

  // Back to the direct chat for the picture: Bob's page, after its
  // reconnect, with Alice typing.
  await open(a.page, dm);
  await shows(a.page, final);
  await open(b.page, dm);
  await shows(b.page, final);
  await a.page.type("#text", "see you");
  await b.page.waitForFunction(() => /is typing/.test(document.querySelector("#typing")?.textContent ?? ""), { timeout: WAIT });
  if (process.env.WEB_SCREENSHOT) {
    await b.page.screenshot({ path: join(repo, "docs/web-chat.png") });
    console.log("saved docs/web-chat.png");
  }
  assert.deepEqual(a.errors, [], "no uncaught errors in Alice's page");
  assert.deepEqual(b.errors, [], "no uncaught errors in Bob's page");
});

test("without a wallet: a throwaway key kept in the page; after a reload the same user with its history", async () => {
  const ctx = await browser.createBrowserContext();
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const signIn = async () => {
    await page.waitForSelector("#signin", { timeout: WAIT });
    assert.match(await page.$eval("#wallet-note", (e) => e.textContent), /throwaway key/);
    await page.click("#signin");
    await page.waitForSelector("#chat:not([hidden]) #convs li", { timeout: WAIT });
    return page.$eval("#me", (e) => e.textContent);
  };
  await page.goto(`${base}/demo`);
  const me = await signIn();
  assert.match(me, /^0x[0-9a-fA-F]{40}$/);
  const key = await page.evaluate(() => localStorage.getItem("switchboard-demo-key"));
  assert.match(key, /^0x[0-9a-f]{64}$/);
  assert.equal(privateKeyToAccount(key).address, me, "the key in the page is the user's");

  const peer = privateKeyToAccount(generatePrivateKey()).address;
  const dm = `dm:${[me, peer].map((x) => x.toLowerCase()).sort().join(":")}`;
  await page.type("#new-members", peer);
  await page.click("#new-chat button");
  await page.waitForSelector(`${liFor(dm)}.selected`, { timeout: WAIT });
  await send(page, "kept across a reload");
  await page.waitForSelector('#messages li[data-seq="1"]:not(.pending)', { timeout: WAIT });

  await page.reload();
  assert.equal(await signIn(), me, "the same key after a reload");
  await open(page, dm);
  await shows(page, ["kept across a reload"]);
  assert.deepEqual(errors, []);
  await ctx.close();
});
