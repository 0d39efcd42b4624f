import type { Digest } from '../../../oci/src/digest.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import type { BlobStore } from '../store/blob-store.js';
import {
  type BlobFetcherOptions,
  type ResolvedFetcherOptions,
  resolveFetcherOptions,
} from './blob-fetcher-options.js';
import { committedResult, Download } from './download.js';
import type { Fetcher, FetchHandle, FetchOptions, FetchResult, InflightBlob } from './fetcher.js';
import type { BlobTarget } from './sources.js';
import { Semaphore, TokenBucket } from './token-bucket.js';

// The fetcher's public types, re-exported where they were first defined.
export { BLOB_FETCHER_DEFAULTS, type BlobFetcherOptions } from './blob-fetcher-options.js';
export type {
  Fetcher,
  FetchHandle,
  FetchOptions,
  FetchProgress,
  FetchResult,
  InflightBlob,
} from './fetcher.js';

/**
 * The lazy-chunk fetcher: downloads blobs as parallel HTTP Range requests into the
 * store, hashing in byte order as chunks land, with retries (backoff, Retry-After),
 * a node-wide bandwidth cap and connection limit, resume from durable ranges after a
 * crash, fallback to one stream when a server ignores Range, and single-flight: a
 * second request for a digest joins the download in flight (download.ts does one blob;
 * this class is the registry of downloads and what they share).
 */
export class BlobFetcher implements Fetcher {
  readonly #store: BlobStore;
  readonly #opts: ResolvedFetcherOptions;
  readonly #connections: Semaphore;
  readonly #bucket: TokenBucket;
  readonly #inflight = new Map<Digest, Download>();

  constructor(store: BlobStore, opts: BlobFetcherOptions = {}) {
    this.#store = store;
    this.#opts = resolveFetcherOptions(opts);
    this.#connections = new Semaphore(this.#opts.maxConnections);
    this.#bucket = new TokenBucket(opts.bandwidthBytesPerSec ?? 0);
  }

  /** The download of `digest` in flight, if any. */
  inflight(digest: Digest): InflightBlob | undefined {
    return this.#inflight.get(digest);
  }

  /**
   * Makes `target` present and verified in the store. Resolves when committed; throws
   * PrewarmError: PW_ERR_DIGEST_MISMATCH (nothing left under the final name),
   * PW_ERR_SIZE_MISMATCH, PW_ERR_BLOB_UNKNOWN, PW_ERR_AUTH_DENIED, PW_ERR_DISK_FULL,
   * PW_ERR_NETWORK / PW_ERR_REGISTRY after retries, PW_ERR_ABORTED.
   */
  async fetch(target: BlobTarget, opts: FetchOptions): Promise<FetchResult> {
    // Checked here, before joining: a committed blob is answered without a download, so
    // concurrent callers for it each get `joined: false` and nothing is registered.
    const existing = await this.#store.stat(target.digest);
    if (existing && existing.size === target.size) {
      opts.onProgress?.({ digest: target.digest, bytesDone: target.size, size: target.size });
      return committedResult(target);
    }
    return this.#startOrJoin(target, opts, false).result;
  }

  /**
   * Starts or joins the download of `target` synchronously (see Fetcher.startOrJoin): the
   * download checks the store itself first, so a committed blob ends it at once.
   */
  startOrJoin(target: BlobTarget, opts: FetchOptions): FetchHandle {
    return this.#startOrJoin(target, opts, true);
  }

  #startOrJoin(target: BlobTarget, opts: FetchOptions, checkStore: boolean): FetchHandle {
    let dl = this.#inflight.get(target.digest);
    const joined = dl !== undefined;
    if (!dl) {
      const own = opts.bandwidthBytesPerSec;
      dl = new Download(
        { store: this.#store, opts: this.#opts, connections: this.#connections, bucket: this.#bucket },
        target,
        {
          sources: opts.sources,
          priority: opts.priority,
          ownBucket: own && own > 0 ? new TokenBucket(own) : undefined,
          checkStore,
        },
      );
      const started = dl;
      this.#inflight.set(target.digest, started);
      const forget = () => {
        if (this.#inflight.get(target.digest) === started) this.#inflight.delete(target.digest);
      };
      started.promise.then(forget, forget);
      started.start();
    }
    return { blob: dl, joined, result: dl.subscribe(opts, joined) };
  }

  /** Aborts every download in flight (partial data stays for a resume). */
  async close(): Promise<void> {
    const all = [...this.#inflight.values()];
    for (const d of all) d.abort(new PrewarmError(ErrorCodes.ABORTED, 'fetcher closing'));
    await Promise.allSettled(all.map((d) => d.promise));
  }
}
