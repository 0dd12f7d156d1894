// REST helpers over `/v1`: conversations, history paging, members,
// presence, channels, sign-out everywhere. Answers are the generated types.
import { invalid } from "./errors.js";
import type {
  AddedMembers,
  Conversation,
  ConversationSummary,
  HistoryItem,
  HistoryPage,
  ListPage,
  PresenceMap,
  Visibility,
} from "./gen/protocol.js";
import { Http } from "./http.js";
import { checkAddress, checkConv, channelConv } from "./ids.js";
import type { Auth } from "./signin.js";

function limitOf(limit: number | undefined): number | undefined {
  if (limit === undefined) return undefined;
  if (!Number.isInteger(limit) || limit < 1 || limit > 200) throw invalid("limit is 1 to 200");
  return limit;
}

function seqOf(name: string, v: number | undefined): number | undefined {
  if (v !== undefined && (!Number.isSafeInteger(v) || v < 0)) throw invalid(`${name} must be a seq (a non-negative integer)`);
  return v;
}

function query(q: Record<string, string | number | undefined>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined) p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : "";
}

export class Rest {
  private readonly http: Http;

  constructor(auth: Auth, fetchImpl?: typeof fetch) {
    this.http = new Http(auth.baseUrl, fetchImpl, () => auth.token());
  }

  /** A group with `members` (the caller is always one); `title` at most 200 characters. */
  createGroup(members: string[], title?: string): Promise<Conversation> {
    if (members.length > 1000) throw invalid("at most 1,000 members");
    if (title !== undefined && [...title].length > 200) throw invalid("title is at most 200 characters");
    return this.http.json("POST", "/v1/conversations", { kind: "group", members: members.map(checkAddress), title });
  }

  conversation(id: string): Promise<Conversation> {
    return this.http.json("GET", `/v1/conversations/${encodeURIComponent(checkConv(id))}`);
  }

  /** One page of my conversations, most recently active first. */
  conversations(opts: { limit?: number; cursor?: string } = {}): Promise<ListPage> {
    return this.http.json("GET", `/v1/conversations${query({ limit: limitOf(opts.limit), cursor: opts.cursor })}`);
  }

  /** Every conversation, page by page. */
  async *allConversations(pageSize = 50): AsyncGenerator<ConversationSummary> {
    let cursor: string | undefined;
    do {
      const p = await this.conversations({ limit: pageSize, ...(cursor ? { cursor } : {}) });
      yield* p.conversations;
      cursor = p.next_cursor ?? undefined;
    } while (cursor);
  }

  /** One history page (ascending): `after` pages forward, `before` scrolls up. */
  history(conv: string, opts: { after?: number; before?: number; limit?: number } = {}): Promise<HistoryPage> {
    const q = query({ after: seqOf("after", opts.after), before: seqOf("before", opts.before), limit: limitOf(opts.limit) });
    return this.http.json("GET", `/v1/conversations/${encodeURIComponent(checkConv(conv))}/messages${q}`);
  }

  /** The whole history after `after`, oldest first, a page at a time. */
  async *historyFrom(conv: string, after = 0, pageSize = 200): AsyncGenerator<HistoryItem> {
    let from = after;
    for (;;) {
      const p = await this.history(conv, { after: from, limit: pageSize });
      yield* p.messages;
      const last = p.messages.at(-1);
      if (!last || last.seq >= p.last_seq) return;
      from = last.seq;
    }
  }

  addMembers(conv: string, members: string[]): Promise<AddedMembers> {
    if (members.length > 1000) throw invalid("at most 1,000 members");
    return this.http.json("POST", `/v1/conversations/${encodeURIComponent(checkConv(conv))}/members`, {
      members: members.map(checkAddress),
    });
  }

  /** Remove a member (admins), or leave (yourself). */
  removeMember(conv: string, member: string): Promise<void> {
    return this.http.empty("DELETE", `/v1/conversations/${encodeURIComponent(checkConv(conv))}/members/${checkAddress(member)}`);
  }

  /** Status and last seen of 1 to 100 users, keyed by checksummed address. */
  presence(users: string[]): Promise<PresenceMap> {
    if (users.length < 1 || users.length > 100) throw invalid("presence takes 1 to 100 users");
    return this.http.json("GET", `/v1/presence${query({ users: users.map(checkAddress).join(",") })}`);
  }

  createChannel(
    name: string,
    opts: { title?: string; visibility?: Visibility; publishers?: string[]; members?: string[] } = {},
  ): Promise<Conversation> {
    const n = channelConv(name).slice(3);
    if ((opts.publishers?.length ?? 0) > 100) throw invalid("at most 100 publishers");
    return this.http.json("POST", "/v1/channels", {
      name: n,
      title: opts.title,
      visibility: opts.visibility,
      publishers: (opts.publishers ?? []).map(checkAddress),
      members: (opts.members ?? []).map(checkAddress),
    });
  }

  /** Sign out everywhere: every session of this user issued until now. */
  revokeSessions(): Promise<void> {
    return this.http.empty("POST", "/v1/auth/revoke");
  }
}
