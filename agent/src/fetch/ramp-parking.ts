import { ConnectionRamp } from './connection-ramp.js';

/**
 * The connection ramp of one download, applied to its worker pool: a pool of
 * `concurrencyPerBlob` workers starts, and a worker whose index is at or above the ramp's
 * limit parks here until the limit rises (it then takes work) or the ramp freezes below it
 * (it then exits). Parked workers are also woken whenever a worker exits, since the work
 * may have run out, and they must notice or the pool never settles.
 */
export class RampParking {
  #ramp = new ConnectionRamp(1, 1, 0, 0);
  readonly #parked = new Set<() => void>();

  /** Starts a new ramp (one per attempt): from `initial` connections up to `max`. */
  restart(initial: number, max: number, windowMs: number): void {
    this.#ramp = new ConnectionRamp(initial, max, windowMs, performance.now());
  }

  /** Workers with an index below this may hold a range. */
  get limit(): number {
    return this.#ramp.limit;
  }

  /** True once the limit will not change again (parked workers above it can exit). */
  get frozen(): boolean {
    return this.#ramp.frozen;
  }

  /** Counts `n` bytes received now; wakes the parked workers when the limit or `frozen` changed. */
  count(n: number): void {
    const wasFrozen = this.#ramp.frozen;
    const changed = this.#ramp.count(n, performance.now());
    if (changed || this.#ramp.frozen !== wasFrozen) this.wakeAll();
  }

  /** Parks a worker above the limit until `wakeAll` (or `signal` aborts); never rejects. */
  park(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        signal.removeEventListener('abort', done);
        this.#parked.delete(done);
        resolve();
      };
      signal.addEventListener('abort', done, { once: true });
      this.#parked.add(done);
    });
  }

  /** Wakes every parked worker to re-check the limit and the work left. */
  wakeAll(): void {
    const ws = [...this.#parked];
    this.#parked.clear();
    for (const w of ws) w();
  }
}
