// Wallet sign-in: fetch a nonce, build the EIP-4361 message with viem's
// SIWE helper (a kept implementation of the grammar, not hand-built text),
// have the wallet `personal_sign` it, and trade it for a session token.
// `Auth` keeps the token and signs in again before it expires.
import { getAddress, isHex, toHex } from "viem";
import { createSiweMessage } from "viem/siwe";
import { SwitchboardError, invalid } from "./errors.js";
import type { Address, NonceResponse, VerifyResponse } from "./gen/protocol.js";
import { Http } from "./http.js";

/** Anything that can name its address and `personal_sign` a text. */
export interface WalletSigner {
  getAddress(): Promise<string>;
  /** EIP-191 `personal_sign` of the UTF-8 message; returns 0x + 130 hex. */
  signMessage(message: string): Promise<string>;
}

/** The EIP-1193 provider subset used (`window.ethereum`, WalletConnect, ...). */
export interface Eip1193Provider {
  request(args: { method: string; params?: unknown[] }): Promise<unknown>;
}

/** A browser wallet: asks for the account (`eth_requestAccounts`) and signs with `personal_sign`. */
export function eip1193Signer(provider: Eip1193Provider, account?: string): WalletSigner {
  let chosen = account ? getAddress(account) : undefined;
  return {
    async getAddress() {
      if (chosen) return chosen;
      const accounts = await provider.request({ method: "eth_requestAccounts" });
      const first = Array.isArray(accounts) ? accounts[0] : undefined;
      if (typeof first !== "string") throw new SwitchboardError("unauthorized", "the wallet gave no account");
      chosen = getAddress(first);
      return chosen;
    },
    async signMessage(message) {
      const from = await this.getAddress();
      // personal_sign takes the message hex-encoded (what MetaMask and
      // others expect for non-ASCII safety), then the address.
      const sig = await provider.request({ method: "personal_sign", params: [toHex(message), from] });
      if (typeof sig !== "string" || !isHex(sig)) throw new SwitchboardError("unauthorized", "the wallet returned no signature");
      return sig;
    },
  };
}

/** A viem account (`privateKeyToAccount`, a JSON-RPC account of a wallet client's `account`). */
export function viemSigner(account: {
  address: string;
  signMessage?: (args: { message: string }) => Promise<string>;
}, walletClient?: { signMessage(args: { account: never; message: string }): Promise<string> }): WalletSigner {
  return {
    getAddress: async () => getAddress(account.address),
    signMessage: async (message) => {
      if (account.signMessage) return account.signMessage({ message });
      if (walletClient) return walletClient.signMessage({ account: account as never, message });
      throw invalid("a JSON-RPC viem account needs its wallet client to sign");
    },
  };
}

/** An ethers v6 `Signer` (`getAddress`, `signMessage`) already fits. */
export function ethersSigner(signer: { getAddress(): Promise<string>; signMessage(m: string): Promise<string> }): WalletSigner {
  return { getAddress: () => signer.getAddress(), signMessage: (m) => signer.signMessage(m) };
}

export interface SignInOptions {
  /** The EIP-4361 domain; must equal the gateway's `--domain` (default `localhost`). */
  domain?: string;
  /** Must be a chain id the gateway accepts (default 1). */
  chainId?: number;
  statement?: string;
  /** The message's Expiration Time from now, which also bounds the session (default 10 min). */
  expiresInMs?: number;
  fetch?: typeof fetch;
}

export interface Session {
  token: string;
  address: Address;
  /** Unix ms. */
  expiresAt: number;
}

/** One sign-in: `GET /v1/auth/nonce`, sign, `POST /v1/auth/verify`. */
export async function signIn(baseUrl: string, signer: WalletSigner, opts: SignInOptions = {}): Promise<Session> {
  const http = new Http(baseUrl, opts.fetch);
  const domain = opts.domain ?? "localhost";
  const { nonce } = await http.json<NonceResponse>("GET", "/v1/auth/nonce");
  const address = getAddress(await signer.getAddress());
  const now = new Date();
  // The gateway wants the URI to name the service (the domain as authority),
  // whatever address the socket dials.
  const scheme = http.base.startsWith("https:") ? "https" : "http";
  const message = createSiweMessage({
    domain,
    address,
    statement: opts.statement ?? "Sign in to Switchboard",
    uri: `${scheme}://${domain}`,
    version: "1",
    chainId: opts.chainId ?? 1,
    nonce,
    issuedAt: now,
    expirationTime: new Date(now.getTime() + (opts.expiresInMs ?? 10 * 60_000)),
  });
  const signature = await signer.signMessage(message);
  const v = await http.json<VerifyResponse>("POST", "/v1/auth/verify", { message, signature });
  if (v.address.toLowerCase() !== address.toLowerCase()) {
    throw new SwitchboardError("unauthorized", `signed in as ${address} but the session names ${v.address}`);
  }
  const expiresAt = Date.parse(v.expires_at);
  if (!Number.isFinite(expiresAt)) throw new SwitchboardError("network", `bad expires_at ${v.expires_at}`);
  return { token: v.token, address: v.address, expiresAt };
}

export interface AuthOptions extends SignInOptions {
  /** Sign in again when the token has less than this left (default 60 s). */
  refreshMarginMs?: number;
  /** Called with every new session (to persist it, say). */
  onSession?: (s: Session) => void;
}

/**
 * Keeps a session: hands out a token that is valid for at least the
 * refresh margin, signing in again (once, however many callers wait) when
 * it is not, or when the gateway said the token is no longer good (4001).
 */
export class Auth {
  private session: Session | undefined;
  private pending: Promise<Session> | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly baseUrl: string,
    private readonly signer: WalletSigner | undefined,
    private readonly opts: AuthOptions = {},
    session?: Session,
  ) {
    this.session = session;
  }

  /** A fixed session, without a wallet: it cannot be refreshed. */
  static fromSession(baseUrl: string, session: Session, opts: AuthOptions = {}): Auth {
    return new Auth(baseUrl, undefined, opts, session);
  }

  get current(): Session | undefined {
    return this.session;
  }

  /** A token valid beyond the refresh margin. */
  async token(): Promise<string> {
    const margin = this.opts.refreshMarginMs ?? 60_000;
    const s = this.session;
    if (s && s.expiresAt - Date.now() > margin) return s.token;
    return (await this.refresh()).token;
  }

  /** Sign in again now (a 4001 said the token is not accepted any more). */
  refresh(): Promise<Session> {
    if (!this.signer) {
      const s = this.session;
      return Promise.reject(
        new SwitchboardError("unauthorized", s ? "the session expired and there is no wallet to sign in again" : "not signed in"),
      );
    }
    this.pending ??= signIn(this.baseUrl, this.signer, this.opts)
      .then((s) => {
        this.session = s;
        this.opts.onSession?.(s);
        return s;
      })
      .finally(() => {
        this.pending = undefined;
      });
    return this.pending;
  }

  /**
   * Refresh in the background before expiry, so a socket's token is renewed
   * without a 4001 first. `onRenewed` reconnects with the new token.
   */
  keepFresh(onRenewed: (s: Session) => void): void {
    this.stopKeepingFresh();
    const s = this.session;
    if (!s || !this.signer) return;
    const margin = this.opts.refreshMarginMs ?? 60_000;
    const wait = Math.max(0, s.expiresAt - Date.now() - margin);
    // setTimeout holds at most ~24.8 days; sessions are shorter.
    this.timer = setTimeout(() => {
      this.refresh().then(onRenewed, () => {
        /* the socket's 4001 will retry */
      });
    }, Math.min(wait, 2 ** 31 - 1));
    // Node: a pending refresh must not keep a script alive.
    (this.timer as { unref?: () => void }).unref?.();
  }

  stopKeepingFresh(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
