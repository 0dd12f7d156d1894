// The browser chat: @switchboard/client in a page, no framework.
// Sign-in with an injected wallet (window.ethereum) or, when there is none,
// a throwaway key kept in this page's localStorage; conversations with
// unread counts, direct and group chats, read receipts, typing, presence,
// a live channel, and the connection's state (reconnects, resumes).
import {
  Auth,
  Client,
  Rest,
  SwitchboardError,
  channelConv,
  checkAddress,
  directConv,
  eip1193Signer,
  randomMsgId,
  viemSigner,
  type Address,
  type ConvId,
  type Eip1193Provider,
  type Message,
  type PresenceStatus,
  type WalletSigner,
} from "../../../sdk/js/src/index.js";
import { IndexedDbStore } from "../../../sdk/js/src/store/indexeddb.js";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";

const KEY_ITEM = "switchboard-demo-key";
/** The live channel every signed-in page follows. */
const LOBBY = channelConv("lobby");
/** Messages shown per conversation (the store keeps them all). */
const SHOWN = 500;
const TYPING_SHOWN_MS = 3_000;
const TYPING_EVERY_MS = 1_500;

const params = new URLSearchParams(location.search);
/** The gateway: this page's origin (`switchboard dev` serves both), or `?server=`. */
const server = params.get("server") ?? location.origin;
/** The gateway's `--domain` (default `localhost`), or `?domain=`. */
const domain = params.get("domain") ?? "localhost";

interface Conv {
  id: ConvId;
  kind: string;
  title: string;
  members: Address[];
  unread: number;
  lastSeq: number;
}
interface Shown {
  key: string;
  conv: ConvId;
  seq: number;
  from: Address;
  text: string;
  pending: boolean;
}

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing`);
  return el as T;
};

let client: Client | undefined;
let rest: Rest | undefined;
let me: Address | undefined;
let selected: ConvId | undefined;
const convs = new Map<ConvId, Conv>();
/** Per conversation: shown messages by key (`s<seq>` or `p<client id>` while pending). */
const shown = new Map<ConvId, Map<string, Shown>>();
/** Per conversation and member: the highest seq delivered to / read by them. */
const receipts = new Map<ConvId, Map<Address, { delivered: number; read: number }>>();
const presence = new Map<Address, PresenceStatus>();
const typingUntil = new Map<ConvId, Map<Address, number>>();
/** When this page last said it was typing, per conversation. */
const typingSent = new Map<ConvId, number>();

/** Addresses compare without regard to checksum case. */
function same(a: string | undefined, b: string | undefined): boolean {
  return !!a && !!b && a.toLowerCase() === b.toLowerCase();
}

function short(a: string): string {
  return `${a.slice(0, 6)}…${a.slice(-4)}`;
}

function log(line: string): void {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${line}`;
  const ol = $("log");
  ol.prepend(li);
  while (ol.children.length > 50) ol.lastElementChild?.remove();
}

function setStatus(state: "signed-out" | "connecting" | "online" | "reconnecting" | "offline", text: string): void {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text;
}

function textOf(body: unknown): string {
  if (typeof body === "string") return body;
  if (body && typeof body === "object" && typeof (body as { text?: unknown }).text === "string") {
    return (body as { text: string }).text;
  }
  return JSON.stringify(body);
}

function peerOf(c: Conv): Address | undefined {
  return c.kind === "direct" ? c.members.find((m) => !same(m, me)) : undefined;
}

function convName(c: Conv): string {
  if (c.title) return c.title;
  const peer = peerOf(c);
  if (peer) return short(peer);
  if (c.kind === "channel") return `#${c.id.slice(3)}`;
  return c.id;
}

// ---- rendering ----

function renderConvs(): void {
  const ul = $("convs");
  ul.replaceChildren();
  for (const c of convs.values()) {
    const li = document.createElement("li");
    li.dataset.conv = c.id;
    if (c.id === selected) li.classList.add("selected");
    const dot = document.createElement("span");
    dot.className = "dot";
    const peer = peerOf(c);
    dot.dataset.presence = peer ? (presence.get(peer.toLowerCase() as Address) ?? "offline") : c.kind === "channel" ? "online" : "offline";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = convName(c);
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = c.kind === "direct" ? "direct" : c.kind === "channel" ? "live channel" : `group · ${c.members.length}`;
    const unread = document.createElement("span");
    unread.className = "unread";
    unread.dataset.count = String(c.unread);
    unread.textContent = c.unread > 999 ? "999+" : String(c.unread);
    li.append(dot, name, kind, unread);
    li.addEventListener("click", () => void select(c.id));
    ul.append(li);
  }
}

function receiptText(conv: ConvId, m: Shown): string {
  if (m.pending) return "sending…";
  const r = receipts.get(conv);
  const others = convs.get(conv)?.members.filter((u) => !same(u, me)) ?? [];
  if (!r || others.length === 0) return "sent";
  const read = others.filter((u) => (r.get(u.toLowerCase() as Address)?.read ?? 0) >= m.seq).length;
  const delivered = others.filter((u) => (r.get(u.toLowerCase() as Address)?.delivered ?? 0) >= m.seq).length;
  if (read === others.length) return others.length === 1 ? "read" : "read by all";
  if (read > 0) return `read by ${read}`;
  if (delivered === others.length) return "delivered";
  return "sent";
}

function renderMessages(): void {
  const ol = $("messages");
  ol.replaceChildren();
  if (!selected) return;
  const list = [...(shown.get(selected)?.values() ?? [])].sort(
    (a, b) => Number(a.pending) - Number(b.pending) || a.seq - b.seq,
  );
  for (const m of list.slice(-SHOWN)) {
    const li = document.createElement("li");
    li.dataset.seq = String(m.seq);
    li.dataset.from = m.from;
    if (same(m.from, me)) li.classList.add("mine");
    if (m.pending) li.classList.add("pending");
    const from = document.createElement("div");
    from.className = "from";
    from.textContent = same(m.from, me) ? "you" : short(m.from);
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = m.text;
    li.append(from, text);
    if (same(m.from, me)) {
      const r = document.createElement("span");
      r.className = "receipt";
      r.textContent = receiptText(selected, m);
      from.append(r);
    }
    ol.append(li);
  }
  ol.scrollTop = ol.scrollHeight;
}

function renderTyping(): void {
  const p = $("typing");
  const now = Date.now();
  const who = [...(selected ? (typingUntil.get(selected) ?? new Map<Address, number>()) : new Map<Address, number>())]
    .filter(([u, until]) => until > now && !same(u, me))
    .map(([u]) => short(u));
  p.textContent = who.length ? `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…` : "";
}

// ---- state ----

function add(m: Shown): void {
  let map = shown.get(m.conv);
  if (!map) shown.set(m.conv, (map = new Map()));
  map.set(m.key, m);
}

async function ensureConv(id: ConvId): Promise<Conv> {
  const have = convs.get(id);
  if (have) return have;
  const c: Conv = { id, kind: id.startsWith("dm:") ? "direct" : id.startsWith("ch:") ? "channel" : "group", title: "", members: [], unread: 0, lastSeq: 0 };
  convs.set(id, c);
  if (id.startsWith("dm:")) c.members = id.slice(3).split(":").map((a) => checkAddress(a));
  try {
    const full = await rest?.conversation(id);
    if (full) {
      c.kind = full.kind;
      c.title = full.title ?? "";
      c.members = full.members;
    }
  } catch (e) {
    log(`cannot read ${id}: ${(e as Error).message}`);
  }
  await refreshPresence();
  renderConvs();
  return c;
}

async function refreshPresence(): Promise<void> {
  const peers = [...new Set([...convs.values()].map(peerOf).filter((p): p is Address => !!p))].slice(0, 100);
  if (!rest || peers.length === 0) return;
  try {
    const p = await rest.presence(peers);
    for (const [u, s] of Object.entries(p)) if (s) presence.set(u.toLowerCase() as Address, s.status);
  } catch (e) {
    log(`presence: ${(e as Error).message}`);
  }
}

async function select(id: ConvId): Promise<void> {
  selected = id;
  const c = await ensureConv(id);
  $("conv-title").textContent = `${convName(c)}${c.kind === "group" ? ` (${c.members.length} members)` : ""}`;
  ($("text") as HTMLInputElement).disabled = false;
  ($("send") as HTMLButtonElement).disabled = false;
  markRead(c);
  renderConvs();
  renderMessages();
  renderTyping();
}

function markRead(c: Conv): void {
  const top = Math.max(0, ...[...(shown.get(c.id)?.values() ?? [])].filter((m) => !m.pending).map((m) => m.seq));
  c.unread = 0;
  if (top > 0 && c.kind !== "channel" && document.visibilityState === "visible") client?.read(c.id, top);
}

function onMessage(m: Message): void {
  const text = textOf(m.body);
  const own = shown.get(m.conv);
  // One of ours that was shown as pending: now it has its seq.
  own?.delete(`p${m.id}`);
  add({ key: m.seq > 0 ? `s${m.seq}` : `r${m.from}:${m.id}`, conv: m.conv, seq: m.seq, from: m.from, text, pending: false });
  void ensureConv(m.conv).then((c) => {
    c.lastSeq = Math.max(c.lastSeq, m.seq);
    if (m.conv === selected) markRead(c);
    else if (!same(m.from, me)) c.unread += 1;
    // Most recently active first.
    convs.delete(c.id);
    const rest = [...convs.entries()];
    convs.clear();
    convs.set(c.id, c);
    for (const [k, v] of rest) convs.set(k, v);
    renderConvs();
    if (m.conv === selected) renderMessages();
  });
}

// ---- sign-in and wiring ----

function signer(): { signer: WalletSigner; what: string } {
  const eth = (window as { ethereum?: Eip1193Provider }).ethereum;
  if (eth) return { signer: eip1193Signer(eth), what: "your wallet" };
  let key = localStorage.getItem(KEY_ITEM);
  if (!key || !/^0x[0-9a-fA-F]{64}$/.test(key)) {
    key = generatePrivateKey();
    localStorage.setItem(KEY_ITEM, key);
  }
  return { signer: viemSigner(privateKeyToAccount(key as `0x${string}`)), what: "a throwaway key kept in this page" };
}

async function start(): Promise<void> {
  const { signer: s, what } = signer();
  setStatus("connecting", "signing in");
  const auth = new Auth(server, s, { domain });
  await auth.refresh();
  me = checkAddress(await s.getAddress());
  $("me").textContent = me;
  rest = new Rest(auth);
  const store = await IndexedDbStore.open(`switchboard-demo-${me.toLowerCase()}`);
  log(`signed in as ${me} with ${what}`);

  // What this page held before a reload, then what the server lists.
  const held = await store.load();
  for (const st of held.convs) {
    if (st.conv.startsWith("ch:")) continue;
    for (const m of await store.messages(st.conv, { limit: SHOWN })) {
      add({ key: `s${m.seq}`, conv: m.conv, seq: m.seq, from: m.from, text: textOf(m.body), pending: false });
    }
  }
  for await (const sum of rest.allConversations()) {
    convs.set(sum.id, { id: sum.id, kind: sum.kind, title: sum.title ?? "", members: [], unread: sum.unread, lastSeq: sum.last_seq });
    if (convs.size >= 200) break;
  }

  const c = await Client.connect(auth, { store });
  client = c;
  const connected = (): void => {
    $("connections").textContent = `connections: ${c.stats.connections}`;
    setStatus("online", "online");
  };
  // The first connection is up once connect resolves; later ones are resumes.
  log("connected");
  c.on("connected", () => {
    connected();
    log(`reconnected (connection ${c.stats.connections}); resuming from the last seq held`);
  });
  c.on("disconnected", (d) => {
    setStatus(navigator.onLine ? "reconnecting" : "offline", d.willReconnect ? "reconnecting…" : "disconnected");
    const why = d.reason && d.reason !== `closed ${d.code}` ? `: ${d.reason}` : "";
    log(`connection lost (code ${d.code}${why})${d.willReconnect ? ", reconnecting" : ""}`);
  });
  c.on("synced", (s) => {
    if (s.held > 0 || s.lost > 0) log(`resumed ${s.conv.slice(0, 24)}…: held up to seq ${s.held} of ${s.lastSeq}${s.lost ? `, ${s.lost} expired` : ""}`);
  });
  c.on("message", onMessage);
  c.on("sent", (s) => {
    const map = shown.get(s.conv);
    const p = map?.get(`p${s.id}`);
    if (p && map) {
      map.delete(p.key);
      if (s.seq > 0) add({ ...p, key: `s${s.seq}`, seq: s.seq, pending: false });
    }
    if (s.conv === selected) renderMessages();
  });
  c.on("receipt", (r) => {
    let map = receipts.get(r.conv);
    if (!map) receipts.set(r.conv, (map = new Map()));
    const user = r.user.toLowerCase() as Address;
    const old = map.get(user) ?? { delivered: 0, read: 0 };
    map.set(user, { delivered: Math.max(old.delivered, r.delivered), read: Math.max(old.read, r.read) });
    if (r.conv === selected) renderMessages();
  });
  c.on("typing", (t) => {
    let map = typingUntil.get(t.conv);
    if (!map) typingUntil.set(t.conv, (map = new Map()));
    map.set(t.user, Date.now() + TYPING_SHOWN_MS);
    renderTyping();
    setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
  });
  c.on("presence", (p) => {
    presence.set(p.user.toLowerCase() as Address, p.status);
    renderConvs();
  });
  c.on("error", (e) => log(`error: ${e.code}: ${e.message}`));
  // Back from offline: try at once instead of waiting out the backoff.
  window.addEventListener("online", () => c.reconnect());
  // The browser knows the network is gone: drop the socket now rather than
  // wait for a missed heartbeat (reconnect attempts back off until online).
  window.addEventListener("offline", () => {
    setStatus("offline", "offline");
    c.reconnect();
  });
  document.addEventListener("visibilitychange", () => {
    const cur = selected ? convs.get(selected) : undefined;
    if (cur) markRead(cur);
  });

  // Everything the list names, from the last seq this page holds.
  for (const conv of convs.values()) c.track(conv.id, c.held(conv.id) ?? 0);
  // The live channel: created public on first use, then replay and live.
  try {
    await rest.createChannel("lobby", { title: "lobby (live)", visibility: "public" });
  } catch (e) {
    if (!(e instanceof SwitchboardError && e.status === 409)) log(`lobby: ${(e as Error).message}`);
  }
  await ensureConv(LOBBY);
  await c.subscribe(LOBBY);
  for (const conv of convs.values()) await ensureConv(conv.id);
  await refreshPresence();
  $("signin-pane").hidden = true;
  $("chat").hidden = false;
  renderConvs();
  connected();
}

async function newChat(ev: Event): Promise<void> {
  ev.preventDefault();
  const members = ($("new-members") as HTMLInputElement).value.split(",").map((s) => s.trim()).filter(Boolean);
  const title = ($("new-title") as HTMLInputElement).value.trim();
  try {
    if (!me || !rest) return;
    if (members.length === 0) throw new Error("name at least one address");
    if (members.length > 100) throw new Error("at most 100 members here");
    const checked = members.map((m) => checkAddress(m));
    let id: ConvId;
    if (checked.length === 1 && !title) {
      id = directConv(me, checked[0] as string);
    } else {
      id = (await rest.createGroup(checked, title || undefined)).id;
    }
    ($("new-members") as HTMLInputElement).value = "";
    ($("new-title") as HTMLInputElement).value = "";
    await select(id);
  } catch (e) {
    log(`cannot start that chat: ${(e as Error).message}`);
  }
}

async function send(ev: Event): Promise<void> {
  ev.preventDefault();
  const input = $("text") as HTMLInputElement;
  const text = input.value.trim();
  if (!text || !selected || !client || !me) return;
  input.value = "";
  const conv = selected;
  const id = randomMsgId();
  add({ key: `p${id}`, conv, seq: 0, from: me, text, pending: true });
  renderMessages();
  try {
    await client.send(conv, { text }, { id });
  } catch (e) {
    shown.get(conv)?.delete(`p${id}`);
    renderMessages();
    log(`not sent: ${(e as Error).message}`);
  }
}

function typed(): void {
  const now = Date.now();
  if (!selected || !client || selected.startsWith("ch:") || now - (typingSent.get(selected) ?? 0) < TYPING_EVERY_MS) return;
  typingSent.set(selected, now);
  client.typing(selected);
}

const eth = (window as { ethereum?: unknown }).ethereum;
$("wallet-note").textContent = eth
  ? "A wallet is available: sign in with it (it signs a Sign-In with Ethereum message, no transaction)."
  : "No wallet in this browser: sign in with a throwaway key kept in this page.";
$("signin").addEventListener("click", () => {
  ($("signin") as HTMLButtonElement).disabled = true;
  start().catch((e: unknown) => {
    ($("signin") as HTMLButtonElement).disabled = false;
    setStatus("signed-out", "signed out");
    $("signin-error").textContent = `cannot sign in: ${(e as Error).message}`;
  });
});
$("new-chat").addEventListener("submit", (e) => void newChat(e));
$("compose").addEventListener("submit", (e) => void send(e));
$("text").addEventListener("input", typed);
