// Exponential backoff with full jitter: the n-th wait is uniform in
// [0, min(cap, base * 2^n)], which spreads a crowd of reconnecting clients
// (after a gateway drain, say) instead of sending them back in waves.

export class Backoff {
  private attempt = 0;
  constructor(
    private readonly baseMs: number,
    private readonly capMs: number,
  ) {}

  /** The ceiling of the next wait, before jitter. */
  ceiling(): number {
    return Math.min(this.capMs, Math.max(1, this.baseMs) * 2 ** Math.min(this.attempt, 30));
  }

  /** The next wait in ms; each call doubles the ceiling up to the cap. */
  next(): number {
    const c = this.ceiling();
    this.attempt += 1;
    return jitter(c);
  }

  reset(): void {
    this.attempt = 0;
  }
}

/** Uniform in [0, max]. */
export function jitter(max: number): number {
  return Math.random() * Math.max(0, max);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
