/**
 * Remembers which webhook events were already taken, so a sender's retries (the registry
 * did not see our 202, SNS redelivers, an attacker replays a captured request) dispatch
 * an event at most once per TTL. Keys are opaque strings chosen by the webhook router.
 */
export interface DedupStore {
  /**
   * Atomically records `key` for `ttlSeconds` if it is not recorded yet. Resolves true
   * when this call recorded it (first sighting: dispatch), false when it was already there
   * (duplicate: drop). Rejects when the store cannot be reached; the router then
   * dispatches anyway, because the operator's enqueue is idempotent and losing a push
   * is worse than resolving a tag twice.
   */
  claim(key: string, ttlSeconds: number): Promise<boolean>;
  /**
   * Forgets `key` so a later redelivery is dispatched again. Used when dispatch failed
   * after the claim. Best effort: rejections are logged by the caller, not retried.
   */
  release(key: string): Promise<void>;
}

export interface MemoryDedupStoreOptions {
  /** Clock in ms since the epoch. Default `Date.now`. Tests pass a fake one to expire keys. */
  now?: () => number;
  /** Upper bound on remembered keys; the oldest are dropped beyond it. Default 100 000. */
  maxKeys?: number;
}

/**
 * In-process `DedupStore` for unit tests and single-replica setups without Redis. Not
 * shared between replicas: with several operator replicas use `RedisDedupStore`.
 */
export class MemoryDedupStore implements DedupStore {
  readonly #expires = new Map<string, number>();
  readonly #now: () => number;
  readonly #maxKeys: number;

  constructor(options: MemoryDedupStoreOptions = {}) {
    this.#now = options.now ?? Date.now;
    this.#maxKeys = options.maxKeys ?? 100_000;
  }

  async claim(key: string, ttlSeconds: number): Promise<boolean> {
    const now = this.#now();
    const until = this.#expires.get(key);
    if (until !== undefined && until > now) return false;
    // Re-insert so Map order stays oldest-first for the eviction below.
    this.#expires.delete(key);
    this.#expires.set(key, now + ttlSeconds * 1000);
    if (this.#expires.size > this.#maxKeys) this.#evict(now);
    return true;
  }

  async release(key: string): Promise<void> {
    this.#expires.delete(key);
  }

  /** Number of keys currently remembered (expired ones included until evicted). */
  get size(): number {
    return this.#expires.size;
  }

  #evict(now: number): void {
    for (const [k, until] of this.#expires) {
      if (until <= now) this.#expires.delete(k);
    }
    for (const k of this.#expires.keys()) {
      if (this.#expires.size <= this.#maxKeys) break;
      this.#expires.delete(k);
    }
  }
}
