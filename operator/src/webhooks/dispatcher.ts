/**
 * Runs `onPush` after the 202 has been sent: bounded concurrency (so a burst of pushes does
 * not stampede the registry with resolves), a bounded backlog (beyond it deliveries get
 * 503 and the sender retries later), and a drain for graceful shutdown.
 */
export interface DispatcherOptions {
  /** Tasks run at once. */
  concurrency: number;
  /** Tasks queued or running beyond which `tryReserve` refuses. */
  maxPending: number;
}

export class Dispatcher {
  readonly #opts: DispatcherOptions;
  readonly #queue: (() => Promise<void>)[] = [];
  #running = 0;
  #reserved = 0;
  #idle: (() => void)[] = [];

  constructor(opts: DispatcherOptions) {
    this.#opts = opts;
  }

  /** Tasks queued, running or reserved. */
  get pending(): number {
    return this.#queue.length + this.#running + this.#reserved;
  }

  /**
   * Reserves room for `n` tasks; false when that would exceed `maxPending`. A reservation is
   * consumed by `run` or returned by `unreserve`; reserving before the dedup claims keeps
   * a full backlog from swallowing events it then cannot run.
   */
  tryReserve(n: number): boolean {
    if (n > 0 && this.pending + n > this.#opts.maxPending) return false;
    this.#reserved += n;
    return true;
  }

  unreserve(n: number): void {
    this.#reserved = Math.max(0, this.#reserved - n);
    this.#checkIdle();
  }

  /** Queues `task` against one reservation. `task` must not reject (it handles its own errors). */
  run(task: () => Promise<void>): void {
    this.#reserved = Math.max(0, this.#reserved - 1);
    this.#queue.push(task);
    this.#pump();
  }

  /** Resolves when nothing is queued, running or reserved, or after `timeoutMs`; true when drained. */
  drain(timeoutMs: number): Promise<boolean> {
    if (this.pending === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#idle = this.#idle.filter((f) => f !== done);
        resolve(false);
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.#idle.push(done);
    });
  }

  #pump(): void {
    while (this.#running < this.#opts.concurrency && this.#queue.length > 0) {
      const task = this.#queue.shift()!;
      this.#running++;
      void task()
        .catch(() => {
          // Tasks handle their own errors; this only keeps an unexpected one from crashing us.
        })
        .finally(() => {
          this.#running--;
          this.#pump();
          this.#checkIdle();
        });
    }
  }

  #checkIdle(): void {
    if (this.pending > 0) return;
    const waiters = this.#idle;
    this.#idle = [];
    for (const w of waiters) w();
  }
}
