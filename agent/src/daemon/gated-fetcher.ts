import { BlobFetcher, type FetchOptions, type FetchResult } from '../fetch/blob-fetcher.js';
import type { BlobTarget } from '../fetch/sources.js';

/**
 * The node's BlobFetcher, with one addition: a job can hold its downloads until room is
 * reserved for them. `gate(signal, ready)` makes every `fetch` called with that
 * `signal` wait for `ready` first (a rejected or aborted gate fails the fetch with the
 * signal's reason). The image warmer passes the job's signal to each fetch and reports
 * the blob list synchronously before the first one, so a job registers its gate in time
 * and no byte of an image that does not fit is downloaded. Fetches without a gated
 * signal (the mirror's) are not affected.
 */
export class GatedBlobFetcher extends BlobFetcher {
  readonly #gates = new WeakMap<AbortSignal, Promise<void>>();

  /** Holds fetches made with `signal` until `ready` settles. */
  gate(signal: AbortSignal, ready: Promise<void>): void {
    this.#gates.set(signal, ready);
  }

  override async fetch(target: BlobTarget, opts: FetchOptions): Promise<FetchResult> {
    const gate = opts.signal ? this.#gates.get(opts.signal) : undefined;
    if (gate) {
      await gate;
      opts.signal?.throwIfAborted();
    }
    return super.fetch(target, opts);
  }
}
