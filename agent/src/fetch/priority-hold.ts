import { RangeSet } from '../store/ranges.js';
import type { FetchOptions } from './fetcher.js';

/**
 * A download's startup-first order (FetchOptions.priority): the ranges to claim before all
 * others, and the hold that keeps every other byte unclaimed until `holdRestUntil` settles.
 * The hold lifts on rejection too: a failed startup plan must not stall the bulk.
 */
export class PriorityHold {
  /** The priority ranges, clipped to the blob. */
  readonly ranges: RangeSet;
  #holding = false;
  readonly #lifted: Promise<void> | undefined;

  constructor(size: number, priority: FetchOptions['priority'] | undefined) {
    this.ranges = new RangeSet(
      (priority?.ranges ?? []).map((r) => ({ start: Math.max(0, r.start), end: Math.min(size, r.end) })),
    );
    if (priority?.holdRestUntil) {
      this.#holding = true;
      const open = () => {
        this.#holding = false;
      };
      this.#lifted = priority.holdRestUntil.then(open, open);
    }
  }

  /** True while the bytes outside `ranges` must not be claimed. */
  get holding(): boolean {
    return this.#holding;
  }

  /** Resolves when the hold lifts (at once when there is none); rejects when `signal` aborts. */
  wait(signal: AbortSignal): Promise<void> {
    const lifted = this.#lifted;
    if (!this.#holding || !lifted) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      if (signal.aborted) {
        onAbort();
        return;
      }
      signal.addEventListener('abort', onAbort, { once: true });
      void lifted.then(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
    });
  }
}
