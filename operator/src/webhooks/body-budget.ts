/**
 * A byte budget for request bodies being read, across all webhook requests of a process:
 * each delivery reserves what it may buffer (its announced Content-Length, or its
 * source's limit when the body is chunked) before reading, and gives it back once the
 * delivery is answered. A delivery that finds no room gets 503 + Retry-After instead of
 * being read, so many slow senders cannot add up to more memory than the budget.
 *
 * Requests whose sender is not authenticated yet (sources that sign the body: GitHub,
 * SNS) may hold only part of the budget, so a flood of them cannot starve senders that
 * proved who they are before sending a byte of body.
 */

export interface BodyBudgetOptions {
  /** Bytes all bodies being read may hold together. */
  maxBytes: number;
  /**
   * Fraction of `maxBytes` that bodies of not-yet-authenticated senders may hold together.
   * Default 0.5.
   */
  unauthenticatedShare?: number;
}

/** A reservation; `release` is idempotent. */
export interface BodyReservation {
  readonly bytes: number;
  release(): void;
}

/** Default budget: 16 MiB, a small slice of a 256–512 MiB container. */
export const DEFAULT_MAX_INFLIGHT_BODY_BYTES = 16 * 1024 * 1024;

export class BodyBudget {
  readonly maxBytes: number;
  readonly maxUnauthenticatedBytes: number;
  #used = 0;
  #usedUnauthenticated = 0;

  constructor(opts: BodyBudgetOptions) {
    this.maxBytes = opts.maxBytes;
    this.maxUnauthenticatedBytes = Math.floor(opts.maxBytes * (opts.unauthenticatedShare ?? 0.5));
  }

  /** Bytes reserved right now. */
  get used(): number {
    return this.#used;
  }

  /** Bytes reserved right now by not-yet-authenticated senders. */
  get usedUnauthenticated(): number {
    return this.#usedUnauthenticated;
  }

  /**
   * Reserves `bytes` for a body about to be read; undefined when that would exceed the
   * budget (or, for `authenticated: false`, its unauthenticated share).
   */
  tryReserve(bytes: number, authenticated: boolean): BodyReservation | undefined {
    if (this.#used + bytes > this.maxBytes) return undefined;
    if (!authenticated && this.#usedUnauthenticated + bytes > this.maxUnauthenticatedBytes) return undefined;
    this.#used += bytes;
    if (!authenticated) this.#usedUnauthenticated += bytes;
    let released = false;
    return {
      bytes,
      release: () => {
        if (released) return;
        released = true;
        this.#used -= bytes;
        if (!authenticated) this.#usedUnauthenticated -= bytes;
      },
    };
  }
}
