import { abortError } from '../../../oci/src/errors.js';
import type { FetchOptions, FetchProgress, FetchResult } from './fetcher.js';

/**
 * The callers waiting on one download (single-flight fan-in). Each caller gets the shared
 * outcome as its own result and may give up alone through its `signal`; the download itself
 * is stopped only when the last caller gives up by aborting, so a caller that joins late
 * keeps it alive (partial data stays for a resume either way).
 */
export class DownloadSubscribers {
  #count = 0;
  readonly #progress = new Set<NonNullable<FetchOptions['onProgress']>>();
  readonly #stop: (reason: unknown) => void;

  /** `stop` aborts the download; called when the last subscriber leaves aborted. */
  constructor(stop: (reason: unknown) => void) {
    this.#stop = stop;
  }

  /**
   * Waits for `outcome` on behalf of one caller. Resolves with the outcome marked `joined`
   * as given; rejects with the outcome's error, or with PW_ERR_ABORTED (the signal's
   * reason) as soon as the caller's `signal` aborts.
   */
  async follow(outcome: Promise<FetchResult>, opts: FetchOptions, joined: boolean): Promise<FetchResult> {
    this.#count++;
    const onProgress = opts.onProgress;
    if (onProgress) this.#progress.add(onProgress);
    const signal = opts.signal;
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_, rej) => {
      if (!signal) return;
      onAbort = () => rej(abortError(signal));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
    aborted.catch(() => undefined);
    try {
      const r = await Promise.race([outcome, aborted]);
      return { ...r, joined };
    } finally {
      if (onAbort) signal?.removeEventListener('abort', onAbort);
      if (onProgress) this.#progress.delete(onProgress);
      // The last caller to give up stops the download; partial data stays for a resume.
      if (--this.#count === 0 && signal?.aborted) this.#stop(abortError(signal));
    }
  }

  /** Reports progress to every caller that asked for it (each gets its own object). */
  progress(p: FetchProgress): void {
    for (const l of this.#progress) l({ ...p });
  }
}
