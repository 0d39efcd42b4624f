import type { Digest } from '../../../oci/src/digest.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import type { Fetcher, FetchHandle, FetchOptions, FetchResult, InflightBlob } from '../fetch/fetcher.js';
import type { BlobTarget } from '../fetch/sources.js';

/**
 * A Fetcher with one addition: a job can hold its downloads until room is reserved for
 * them. `gate(signal, ready)` makes every `fetch` called with that `signal` wait for `ready`
 * first (a rejected or aborted gate fails the fetch with the signal's reason). The image
 * warmer passes the job's signal to each fetch and reports the blob list synchronously
 * before the first one, so a job registers its gate in time and no byte of an image that
 * does not fit is downloaded. Fetches without a gated signal (the mirror's) are not
 * affected.
 *
 * Gates are keyed by the job's signal because that is what the job processor hands over
 * (PrewarmProcessorDeps.gate) and what the warmer passes to every fetch of the job.
 */
export class GatedFetcher implements Fetcher {
  readonly #inner: Fetcher;
  readonly #gates = new WeakMap<AbortSignal, Promise<void>>();

  constructor(inner: Fetcher) {
    this.#inner = inner;
  }

  /** Holds fetches made with `signal` until `ready` settles. */
  gate(signal: AbortSignal, ready: Promise<void>): void {
    this.#gates.set(signal, ready);
  }

  async fetch(target: BlobTarget, opts: FetchOptions): Promise<FetchResult> {
    const gate = opts.signal ? this.#gates.get(opts.signal) : undefined;
    if (gate) {
      await gate;
      opts.signal?.throwIfAborted();
    }
    return this.#inner.fetch(target, opts);
  }

  /**
   * Starts or joins at once, which a gated signal forbids: throws PW_ERR_INVALID_CONFIG for
   * one (a programming error; gated callers use `fetch`) rather than download past the gate.
   */
  startOrJoin(target: BlobTarget, opts: FetchOptions): FetchHandle {
    if (opts.signal && this.#gates.has(opts.signal))
      throw new PrewarmError(
        ErrorCodes.INVALID_CONFIG,
        'a gated fetch cannot start synchronously: use fetch',
      );
    return this.#inner.startOrJoin(target, opts);
  }

  inflight(digest: Digest): InflightBlob | undefined {
    return this.#inner.inflight(digest);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }
}
