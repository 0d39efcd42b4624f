/**
 * `DedupStore` on Redis: `SET key 1 EX ttl NX` is one atomic round trip, shared by every
 * operator replica, and Redis expires the keys itself.
 */
import type { Redis } from 'ioredis';
import type { DedupStore } from './dedup-store.js';

export interface RedisDedupStoreOptions {
  /** Prepended to every key. Default `kprw:webhook:dedup:`. */
  keyPrefix?: string;
}

export class RedisDedupStore implements DedupStore {
  readonly #redis: Redis;
  readonly #prefix: string;

  /**
   * @param redis a connected ioredis client; not owned (the caller closes it). Do not use a
   *   client with `keyPrefix` set unless you want both prefixes.
   */
  constructor(redis: Redis, options: RedisDedupStoreOptions = {}) {
    this.#redis = redis;
    this.#prefix = options.keyPrefix ?? 'kprw:webhook:dedup:';
  }

  async claim(key: string, ttlSeconds: number): Promise<boolean> {
    const ttl = Math.max(1, Math.ceil(ttlSeconds));
    const res = await this.#redis.set(this.#prefix + key, '1', 'EX', ttl, 'NX');
    return res === 'OK';
  }

  async release(key: string): Promise<void> {
    await this.#redis.del(this.#prefix + key);
  }
}
