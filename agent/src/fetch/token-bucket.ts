import { setTimeout as sleep } from 'node:timers/promises';

/**
 * A token bucket shared by every download of a node, so the node's total rate stays
 * under `bytesPerSecond` however many chunks run. Bytes are taken after they arrive;
 * the wait applies TCP backpressure to the connection that went over.
 */
export class TokenBucket {
  readonly #rate: number;
  readonly #burst: number;
  #tokens: number;
  #last: number;
  #waits = 0;

  /** `bytesPerSecond` ≤ 0 means unlimited. `burstBytes` defaults to a quarter second of rate. */
  constructor(bytesPerSecond: number, burstBytes?: number) {
    this.#rate = bytesPerSecond;
    this.#burst = burstBytes ?? Math.max(256 * 1024, bytesPerSecond / 4);
    this.#tokens = this.#burst;
    this.#last = performance.now();
  }

  get unlimited(): boolean {
    return this.#rate <= 0;
  }

  /** Times `take` had to wait (the cap slowed a transfer down). */
  get waits(): number {
    return this.#waits;
  }

  /** Consumes `n` bytes' worth of tokens, waiting while the bucket is in debt. */
  async take(n: number, signal?: AbortSignal): Promise<void> {
    if (this.#rate <= 0) return;
    const now = performance.now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) / 1000) * this.#rate);
    this.#last = now;
    this.#tokens -= n;
    if (this.#tokens >= 0) return;
    const waitMs = (-this.#tokens / this.#rate) * 1000;
    this.#waits++;
    await sleep(waitMs, undefined, signal ? { signal } : undefined);
  }
}

/** A counting semaphore for connections shared across downloads. */
export class Semaphore {
  #free: number;
  readonly #waiters: (() => void)[] = [];

  constructor(permits: number) {
    this.#free = permits;
  }

  async acquire(signal?: AbortSignal): Promise<() => void> {
    if (this.#free > 0) {
      this.#free--;
      return this.#releaser();
    }
    await new Promise<void>((resolve, reject) => {
      const wake = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = () => {
        const i = this.#waiters.indexOf(wake);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(wake);
    });
    return this.#releaser();
  }

  #releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.#waiters.shift();
      if (next) next();
      else this.#free++;
    };
  }
}

/**
 * Takes `n` bytes from the node-wide bucket and the download's own (either may be
 * unlimited); undefined when neither limits, so the hot path stays synchronous.
 */
export function takeTokens(
  node: TokenBucket,
  own: TokenBucket | undefined,
  n: number,
  signal: AbortSignal,
): Promise<unknown> | undefined {
  const a = node.unlimited ? undefined : node.take(n, signal);
  const b = own === undefined || own.unlimited ? undefined : own.take(n, signal);
  if (a && b) return Promise.all([a, b]);
  return a ?? b;
}
