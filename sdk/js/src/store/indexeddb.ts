// A Store in the browser's IndexedDB, so a page reload keeps the history,
// the seq held per conversation (to resume from) and the queued sends.
// Import from `@switchboard/client/indexeddb`. One database per user is the
// app's choice (pass a name with the address in it).
import type { ConvId, Message, MsgId } from "../gen/protocol.js";
import { page, type ConvState, type HistoryQuery, type QueuedSend, type Store } from "../store.js";

const VERSION = 1;

function done<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error("IndexedDB request failed"));
  });
}

function committed(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error ?? new Error("IndexedDB transaction failed"));
    tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
  });
}

export class IndexedDbStore implements Store {
  private constructor(private readonly db: IDBDatabase) {}

  /** Open (or create) the database `name`; `factory` defaults to `globalThis.indexedDB`. */
  static async open(name = "switchboard", factory: IDBFactory = globalThis.indexedDB): Promise<IndexedDbStore> {
    if (!factory) throw new Error("no IndexedDB in this runtime");
    const req = factory.open(name, VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      db.createObjectStore("convs", { keyPath: "conv" });
      // Keyed by [conv, seq]: a history page is one key range, in seq order.
      db.createObjectStore("messages", { keyPath: ["conv", "seq"] });
      db.createObjectStore("outbox", { keyPath: ["conv", "id"] }).createIndex("queuedAt", "queuedAt");
    };
    return new IndexedDbStore(await done(req));
  }

  close(): void {
    this.db.close();
  }

  async load() {
    const tx = this.db.transaction(["convs", "outbox"], "readonly");
    const [convs, outbox] = await Promise.all([
      done(tx.objectStore("convs").getAll() as IDBRequest<ConvState[]>),
      done(tx.objectStore("outbox").index("queuedAt").getAll() as IDBRequest<QueuedSend[]>),
    ]);
    return { convs, outbox };
  }

  private async write(store: string, f: (s: IDBObjectStore) => void): Promise<void> {
    const tx = this.db.transaction(store, "readwrite");
    f(tx.objectStore(store));
    await committed(tx);
  }

  saveConv(s: ConvState) {
    return this.write("convs", (o) => o.put(s));
  }
  deleteConv(conv: ConvId) {
    return this.write("convs", (o) => o.delete(conv));
  }
  addMessages(ms: Message[]) {
    return this.write("messages", (o) => {
      for (const m of ms) o.put(m);
    });
  }
  dropAbove(conv: ConvId, seq: number) {
    return this.write("messages", (o) => o.delete(IDBKeyRange.bound([conv, seq], [conv, Number.MAX_SAFE_INTEGER], true, false)));
  }
  async messages(conv: ConvId, q: HistoryQuery = {}) {
    const lo = q.after ?? 0;
    const hi = q.before ?? Number.MAX_SAFE_INTEGER;
    if (hi <= lo + 1) return [];
    const tx = this.db.transaction("messages", "readonly");
    const range = IDBKeyRange.bound([conv, lo], [conv, hi], true, true);
    const all = await done(tx.objectStore("messages").getAll(range) as IDBRequest<Message[]>);
    return page(all, q);
  }
  queue(e: QueuedSend) {
    return this.write("outbox", (o) => o.put(e));
  }
  unqueue(conv: ConvId, id: MsgId) {
    return this.write("outbox", (o) => o.delete([conv, id]));
  }
}
