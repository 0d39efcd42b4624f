import { type ConnectionOptions, type Job, UnrecoverableError, WaitingError, Worker } from 'bullmq';
import type { RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import {
  nodeQueueName,
  type PrewarmJobData,
  type PrewarmJobResult,
  QUEUE_PREFIX,
} from '../../../oci/src/job-contract.js';
import { classifyFailure, type PrewarmProcessor } from './job-processor.js';
import type { AgentMetrics } from './metrics.js';

export interface PrewarmWorkerOptions {
  node: string;
  /** Images processed in parallel. */
  concurrency: number;
  /** BullMQ lock; a dead agent's job becomes available again after it expires. */
  lockDurationMs: number;
  /** How often to look for jobs whose lock expired (stalled). */
  stalledIntervalMs: number;
  /** Times a job may be recovered from a dead agent before it fails. */
  maxStalledCount: number;
  /** Shown as the job's `processedBy`. Default `<node>/<pid>`. */
  workerName?: string;
}

/**
 * The BullMQ worker on this node's queue (`node.<name>`, the operator's routing: no job
 * of another node ever reaches it). A processed job ends one of four ways:
 * - completed with a `PrewarmJobResult`;
 * - failed permanently (`UnrecoverableError`: unknown manifest, auth denied, missing
 *   platform, invalid job) with the reason `<code>: <message>` in `failedReason`;
 * - failed for this attempt (a plain Error with the same reason format), retried by
 *   BullMQ with the job's backoff until its attempts run out;
 * - handed back to the queue on shutdown (moved to wait, no attempt consumed): the
 *   partial downloads stay in the store and the next run resumes them.
 * A job whose lock renewal fails (another worker may own it now) is cancelled.
 */
export class PrewarmWorker {
  readonly #processor: PrewarmProcessor;
  readonly #metrics: AgentMetrics;
  readonly #log: Logger;
  readonly #opts: PrewarmWorkerOptions;
  readonly #connection: RedisOptions;
  readonly #shutdown = new AbortController();
  #worker: Worker<PrewarmJobData, PrewarmJobResult> | undefined;
  #running: Promise<void> | undefined;

  constructor(
    connection: RedisOptions,
    processor: PrewarmProcessor,
    metrics: AgentMetrics,
    logger: Logger,
    opts: PrewarmWorkerOptions,
  ) {
    this.#connection = connection;
    this.#processor = processor;
    this.#metrics = metrics;
    this.#log = logger;
    this.#opts = opts;
  }

  /** True between `start` and `close` while the worker loop runs. */
  get running(): boolean {
    return this.#worker?.isRunning() === true && !this.#shutdown.signal.aborted;
  }

  /** Starts taking jobs. */
  start(): void {
    if (this.#worker) return;
    const worker = new Worker<PrewarmJobData, PrewarmJobResult>(
      nodeQueueName(this.#opts.node),
      // Three declared parameters: BullMQ passes an AbortSignal only to processors that take one.
      (job, token, signal) => this.#process(job, token, signal),
      {
        // ioredis' options type and BullMQ's own declaration of it differ only nominally.
        connection: this.#connection as ConnectionOptions,
        prefix: QUEUE_PREFIX,
        autorun: false,
        concurrency: this.#opts.concurrency,
        lockDuration: this.#opts.lockDurationMs,
        stalledInterval: this.#opts.stalledIntervalMs,
        maxStalledCount: this.#opts.maxStalledCount,
        name: this.#opts.workerName ?? `${this.#opts.node}/${process.pid}`,
        skipVersionCheck: true,
      },
    );
    worker.on('error', (err) => this.#log.warn({ err }, 'queue worker error'));
    worker.on('stalled', (jobId) =>
      this.#log.warn({ job: jobId }, 'job stalled (its agent died); re-queued'),
    );
    worker.on('lockRenewalFailed', (ids: string[]) => {
      for (const id of ids) {
        this.#log.warn({ job: id }, 'lost the job lock; cancelling this run');
        worker.cancelJob(id, 'job lock lost');
      }
    });
    this.#worker = worker;
    this.#running = worker.run().catch((err: unknown) => {
      this.#log.error({ err }, 'queue worker stopped');
    });
  }

  /**
   * Stops taking jobs, hands running ones back to the queue (their downloads keep
   * their partial data), and closes the connections. Bounded by `timeoutMs`: after it,
   * the worker is closed by force (running jobs then stall and are re-queued by the
   * next agent once their lock expires).
   */
  async close(timeoutMs: number): Promise<void> {
    const worker = this.#worker;
    if (!worker) return;
    const closing = worker.close();
    this.#shutdown.abort(new PrewarmError(ErrorCodes.ABORTED, 'agent shutting down'));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      closing.then(() => false),
      new Promise<boolean>((r) => {
        timer = setTimeout(() => r(true), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      this.#log.warn({ timeoutMs }, 'jobs did not stop in time; closing the worker by force');
      await worker.close(true).catch(() => undefined);
    }
    await this.#running;
  }

  async #process(
    job: Job<PrewarmJobData, PrewarmJobResult>,
    token: string | undefined,
    signal: AbortSignal | undefined,
  ): Promise<PrewarmJobResult> {
    const mode = typeof job.data?.mode === 'string' ? job.data.mode : 'unknown';
    const combined = AbortSignal.any([this.#shutdown.signal, ...(signal ? [signal] : [])]);
    const stop = this.#metrics.jobDuration.startTimer();
    this.#metrics.jobsActive.inc();
    try {
      const result = await this.#processor.process(job, combined);
      this.#metrics.jobs.inc({ outcome: 'completed', mode });
      stop({ outcome: 'completed' });
      return result;
    } catch (err) {
      const failure = classifyFailure(err);
      if (this.#shutdown.signal.aborted && failure.code === ErrorCodes.ABORTED && token) {
        // Hand the job back without spending an attempt; the next run resumes its downloads.
        try {
          await job.moveToWait(token);
          this.#metrics.jobs.inc({ outcome: 'requeued', mode });
          stop({ outcome: 'requeued' });
          this.#log.info({ job: job.id }, 'job handed back to the queue for the next run');
          throw new WaitingError();
        } catch (moveErr) {
          if (moveErr instanceof WaitingError) throw moveErr;
          this.#log.warn(
            { job: job.id, err: moveErr },
            'could not hand the job back; it will stall and be re-queued',
          );
        }
      }
      const attempts = job.opts.attempts ?? 1;
      const final = failure.permanent || job.attemptsMade + 1 >= attempts;
      const outcome = failure.code === ErrorCodes.ABORTED ? 'cancelled' : final ? 'failed' : 'retry';
      this.#metrics.jobs.inc({ outcome, mode });
      stop({ outcome });
      this.#log[final ? 'error' : 'warn'](
        {
          job: job.id,
          code: failure.code,
          permanent: failure.permanent,
          attempt: job.attemptsMade + 1,
          attempts,
        },
        `prewarm job failed: ${failure.message}`,
      );
      if (failure.permanent) throw new UnrecoverableError(failure.message);
      throw new Error(failure.message, { cause: failure });
    } finally {
      this.#metrics.jobsActive.dec();
    }
  }
}
