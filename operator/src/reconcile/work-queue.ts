/**
 * A keyed work queue with client-go's workqueue semantics, which is what makes
 * level-based reconciliation cheap and safe:
 *
 * - a key waiting in the queue is there once, however many events arrive for it;
 * - a key is never processed by two workers at once; if it is added while being
 *   processed it is processed again afterwards (the events are not lost);
 * - `addAfter` delays a key (requeueAfter, timers), `addRateLimited` delays it by a
 *   per-key exponential backoff that `forget` resets.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export interface WorkQueueOptions {
  /** First backoff after a failure. Default 500 ms. */
  baseDelayMs?: number;
  /** Backoff cap. Default 5 min. */
  maxDelayMs?: number;
}

export class WorkQueue {
  readonly #opts: Required<WorkQueueOptions>;
  readonly #queue: string[] = [];
  readonly #queued = new Set<string>();
  readonly #processing = new Set<string>();
  readonly #dirty = new Set<string>();
  readonly #failures = new Map<string, number>();
  readonly #timers = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  readonly #waiters: (() => void)[] = [];
  #shutdown = false;

  constructor(opts: WorkQueueOptions = {}) {
    this.#opts = { baseDelayMs: opts.baseDelayMs ?? 500, maxDelayMs: opts.maxDelayMs ?? 300_000 };
  }

  /** Keys waiting (not counting delayed ones or those being processed). */
  get length(): number {
    return this.#queue.length;
  }

  add(key: string): void {
    if (this.#shutdown) return;
    if (this.#processing.has(key)) {
      this.#dirty.add(key);
      return;
    }
    if (this.#queued.has(key)) return;
    this.#queued.add(key);
    this.#queue.push(key);
    this.#waiters.shift()?.();
  }

  /** Adds `key` after `ms`; an earlier pending timer for the key wins. */
  addAfter(key: string, ms: number): void {
    if (this.#shutdown) return;
    if (ms <= 0) {
      this.add(key);
      return;
    }
    const at = Date.now() + ms;
    const existing = this.#timers.get(key);
    if (existing && existing.at <= at) return;
    if (existing) clearTimeout(existing.timer);
    const timer = setTimeout(() => {
      this.#timers.delete(key);
      this.add(key);
    }, ms);
    timer.unref();
    this.#timers.set(key, { at, timer });
  }

  /** Adds `key` after its backoff (base × 2^failures, capped); returns the delay. */
  addRateLimited(key: string): number {
    const n = this.#failures.get(key) ?? 0;
    this.#failures.set(key, n + 1);
    const delay = Math.min(this.#opts.maxDelayMs, this.#opts.baseDelayMs * 2 ** n);
    this.addAfter(key, delay);
    return delay;
  }

  /** Resets the key's backoff (after a successful reconcile). */
  forget(key: string): void {
    this.#failures.delete(key);
  }

  /** Failures recorded for the key since the last `forget`. */
  failures(key: string): number {
    return this.#failures.get(key) ?? 0;
  }

  async #next(signal: AbortSignal): Promise<string | undefined> {
    for (;;) {
      if (signal.aborted || this.#shutdown) return undefined;
      const key = this.#queue.shift();
      if (key !== undefined) {
        this.#queued.delete(key);
        this.#processing.add(key);
        return key;
      }
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = (): void => {
          const i = this.#waiters.indexOf(wake);
          if (i >= 0) this.#waiters.splice(i, 1);
          resolve();
        };
        this.#waiters.push(wake);
        signal.addEventListener('abort', onAbort, { once: true });
      });
    }
  }

  #done(key: string): void {
    this.#processing.delete(key);
    if (this.#dirty.delete(key)) this.add(key);
  }

  /**
   * Runs `concurrency` workers calling `handler(key)` until `signal` aborts. A handler
   * must not throw (the controller turns errors into `addRateLimited`); if it does, the
   * key is retried with backoff anyway. Resolves once every worker has finished its
   * current key.
   */
  async run(
    concurrency: number,
    handler: (key: string) => Promise<void>,
    signal: AbortSignal,
  ): Promise<void> {
    const worker = async (): Promise<void> => {
      for (;;) {
        const key = await this.#next(signal);
        if (key === undefined) return;
        try {
          await handler(key);
        } catch {
          this.addRateLimited(key);
        } finally {
          this.#done(key);
        }
        // Let timers and I/O callbacks run between keys under a flood of events.
        if (this.#queue.length > 0) await sleep(0);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, () => worker()));
  }

  /** Stops accepting keys and drops timers and waiting keys. */
  shutdown(): void {
    this.#shutdown = true;
    for (const { timer } of this.#timers.values()) clearTimeout(timer);
    this.#timers.clear();
    this.#queue.length = 0;
    this.#queued.clear();
    for (const w of this.#waiters.splice(0)) w();
  }
}
