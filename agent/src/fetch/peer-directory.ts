import type { Redis } from 'ioredis';
import { type Digest, digestHex } from '../../../oci/src/digest.js';
import { QUEUE_PREFIX } from '../../../oci/src/job-contract.js';
import { type BlobSource, PeerSource, type PeerSourceOptions } from './sources.js';

/**
 * Who holds which blob, so a node asks its peers before the registry: registry egress
 * becomes ~1× per cluster instead of N×. Holders announce a blob once it is committed
 * (verified) in their store and withdraw it when GC evicts it. A stale entry (node gone)
 * costs one fast connect failure, after which the fetcher skips that peer for the blob.
 */
export interface PeerDirectory {
  /** Peers that announced `digest`, excluding `self`, in a stable per-digest order. */
  holders(digest: Digest): Promise<BlobSource[]>;
  announce(digest: Digest): Promise<void>;
  withdraw(digest: Digest): Promise<void>;
}

export interface RedisPeerDirectoryOptions {
  /**
   * This node's peer listener URL as peers reach it (`http://<node-ip>:<peer port>`, see
   * agent/src/mirror/peer-server.ts): what is announced, and skipped in `holders()`.
   */
  selfUrl: string;
  /** At most this many peers are tried per blob. Default 3. */
  maxPeers?: number;
  /** Entries expire unless re-announced (the agent re-announces on its resync). Default 24 h. */
  ttlSeconds?: number;
  /** How holders are asked; `token` (the cluster's peer token) is what their listeners require. */
  peerOptions?: PeerSourceOptions;
}

/** A holder entry is used only when it is a bare http(s) origin (no user info, path or query). */
function peerOrigin(url: string): string | undefined {
  try {
    const u = new URL(url);
    if ((u.protocol !== 'http:' && u.protocol !== 'https:') || u.username || u.password) return undefined;
    return u.origin === url ? url : undefined;
  } catch {
    return undefined;
  }
}

/** A PeerDirectory on Redis: one set of mirror URLs per blob digest. */
export class RedisPeerDirectory implements PeerDirectory {
  readonly #sources = new Map<string, PeerSource>();

  constructor(
    readonly redis: Redis,
    readonly opts: RedisPeerDirectoryOptions,
  ) {}

  #key(digest: Digest): string {
    return `${QUEUE_PREFIX}:holders:${digestHex(digest)}`;
  }

  async holders(digest: Digest): Promise<BlobSource[]> {
    // Entries come from Redis: anything that is not a plain origin is ignored, so the peer
    // token is only ever sent to an http(s) origin's peer path.
    const urls = (await this.redis.smembers(this.#key(digest))).filter(
      (u) => u !== this.opts.selfUrl && peerOrigin(u) !== undefined,
    );
    // Spread load: order peers by a hash of (digest, url) so different blobs prefer different peers.
    urls.sort((a, b) => score(digest, a) - score(digest, b));
    return urls.slice(0, this.opts.maxPeers ?? 3).map((url) => {
      let s = this.#sources.get(url);
      if (!s) {
        s = new PeerSource(new URL(url).host, url, this.opts.peerOptions);
        this.#sources.set(url, s);
      }
      return s;
    });
  }

  async announce(digest: Digest): Promise<void> {
    const key = this.#key(digest);
    await this.redis
      .multi()
      .sadd(key, this.opts.selfUrl)
      .expire(key, this.opts.ttlSeconds ?? 86_400)
      .exec();
  }

  async withdraw(digest: Digest): Promise<void> {
    await this.redis.srem(this.#key(digest), this.opts.selfUrl);
  }
}

function score(digest: string, url: string): number {
  let h = 2166136261;
  for (const s of [digest, url])
    for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}
