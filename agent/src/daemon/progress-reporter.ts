import { setTimeout as sleep } from 'node:timers/promises';
import type { PrewarmJobProgress, PrewarmPhase } from '../../../oci/src/job-contract.js';

/** Phase order of the contract; `failed` is never reported as progress. */
const PHASE_ORDER: readonly PrewarmPhase[] = [
  'queued',
  'resolving',
  'fetching',
  'startup-ready',
  'warm',
  'unpacked',
];

export function phaseRank(p: PrewarmPhase): number {
  return PHASE_ORDER.indexOf(p);
}

export interface ProgressReporterOptions {
  /** Least time between two reports of the same phase (a phase change is sent at once). Default 500 ms. */
  minIntervalMs?: number;
  /**
   * Progress already reported for this job (a previous attempt, or before a crash):
   * nothing below it is sent, so what the operator sees never goes backwards.
   */
  floor?: PrewarmJobProgress;
  /** Called when a send fails; the report is dropped (a later one supersedes it). */
  onError?: (err: unknown) => void;
}

/**
 * Sends a job's progress in order and monotonic: one send at a time, byte updates
 * within a phase coalesced to the latest and sent at most every `minIntervalMs`, every
 * phase change sent, `bytesDone`, `layersDone` and the phase never lower than anything
 * sent before. The download never waits for Redis: `update` only queues.
 */
export class ProgressReporter {
  readonly #send: (p: PrewarmJobProgress) => Promise<void>;
  readonly #minInterval: number;
  readonly #onError: (err: unknown) => void;
  #last: PrewarmJobProgress | undefined;
  readonly #queue: PrewarmJobProgress[] = [];
  #running: Promise<void> | undefined;
  #flushing = false;
  #lastSentAt = 0;
  #lastSentPhase: PrewarmPhase | undefined;
  #closed = false;

  constructor(send: (p: PrewarmJobProgress) => Promise<void>, opts: ProgressReporterOptions = {}) {
    this.#send = send;
    this.#minInterval = opts.minIntervalMs ?? 500;
    this.#onError = opts.onError ?? (() => undefined);
    this.#last = opts.floor && phaseRank(opts.floor.phase) >= 0 ? { ...opts.floor } : undefined;
  }

  /** The latest progress accepted (after clamping), if any. */
  get current(): PrewarmJobProgress | undefined {
    return this.#last;
  }

  /** Queues `p` (clamped so nothing goes backwards); dropped when it adds nothing new. */
  update(p: PrewarmJobProgress): void {
    if (this.#closed || phaseRank(p.phase) < 0) return;
    const prev = this.#last;
    let next: PrewarmJobProgress = { ...p };
    if (prev) {
      const phase = phaseRank(p.phase) >= phaseRank(prev.phase) ? p.phase : prev.phase;
      next = {
        ...next,
        phase,
        bytesTotal: p.bytesTotal || prev.bytesTotal,
        layersTotal: p.layersTotal || prev.layersTotal,
        bytesDone: Math.max(prev.bytesDone, p.bytesDone),
        layersDone: Math.max(prev.layersDone, p.layersDone),
        // The eviction count belongs to the job, not to this run: keep it unless updated.
        ...((p.evictions ?? prev.evictions) !== undefined
          ? { evictions: p.evictions ?? prev.evictions }
          : {}),
      };
      if (
        next.phase === prev.phase &&
        next.bytesDone === prev.bytesDone &&
        next.layersDone === prev.layersDone &&
        next.bytesTotal === prev.bytesTotal &&
        next.layersTotal === prev.layersTotal &&
        next.evictions === prev.evictions
      )
        return;
    }
    this.#last = next;
    const tail = this.#queue.at(-1);
    if (tail && tail.phase === next.phase) this.#queue[this.#queue.length - 1] = next;
    else this.#queue.push(next);
    this.#running ??= this.#drain().finally(() => {
      this.#running = undefined;
    });
  }

  /** Sends everything queued now (no throttling) and waits for it. */
  async flush(): Promise<void> {
    this.#flushing = true;
    try {
      while (this.#running) await this.#running;
    } finally {
      this.#flushing = false;
    }
  }

  /** Flushes, then ignores further updates. */
  async close(): Promise<void> {
    await this.flush();
    this.#closed = true;
  }

  async #drain(): Promise<void> {
    for (let p = this.#queue.shift(); p !== undefined; p = this.#queue.shift()) {
      if (p.phase === this.#lastSentPhase && !this.#flushing) {
        const wait = this.#lastSentAt + this.#minInterval - performance.now();
        if (wait > 0) {
          // Updates arriving meanwhile replace `p` in place; take the newest after the wait.
          this.#queue.unshift(p);
          await sleep(wait);
          p = this.#queue.shift() as PrewarmJobProgress;
        }
      }
      try {
        await this.#send(p);
      } catch (err) {
        this.#onError(err);
      }
      this.#lastSentAt = performance.now();
      this.#lastSentPhase = p.phase;
    }
  }
}
