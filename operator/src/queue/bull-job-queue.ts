import { type FlowJob, FlowProducer, Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import {
  nodeQueueName,
  PREWARM_JOB_NAME,
  type PrewarmJobData,
  type PrewarmJobProgress,
  type PrewarmJobResult,
  type PrewarmOwnerRef,
  QUEUE_PREFIX,
} from '../../../oci/src/job-contract.js';
import type { EnqueueJob, JobObservation, JobRef } from '../reconcile/plan.js';
import { type JobQueue, ownersOf, type UnpinOutcome } from './job-queue.js';

export interface BullJobQueueOptions {
  /** Attempts per job before it counts as failed (the agent retries transient errors itself too). Default 3. */
  attempts?: number;
  /** First retry delay, doubled each attempt. Default 5 s. */
  backoffMs?: number;
  /** Jobs per Redis transaction when enqueueing. Default 500. */
  enqueueBatch?: number;
  /** Per-node Queue handles kept open for mutations (owners, removal, retry). Default 128. */
  queueHandles?: number;
  /** Completed/failed/missing states cached, at most. Default 500 000. */
  cacheLimit?: number;
}

/** Fields of BullMQ's job hash the operator reads (BullMQ's documented key layout). */
const FIELDS = ['data', 'progress', 'returnvalue', 'failedReason', 'finishedOn', 'processedOn'] as const;

/**
 * JobQueue over BullMQ on one shared ioredis connection (the caller owns it).
 *
 * - Enqueue goes through one FlowProducer: `addBulk` writes jobs for many node queues in
 *   one MULTI, so a push fanning out to 5,000 nodes is a handful of round trips and needs
 *   no Queue object per node.
 * - Observe reads the job hashes with pipelined HMGETs (auto-pipelining on the connection
 *   batches them). Completed, failed and missing states are cached: only the operator
 *   creates, removes or retries jobs, and it updates the cache when it does; agents only
 *   move jobs forward from pending/active, which are never cached.
 */
export class BullJobQueue implements JobQueue {
  readonly #redis: Redis;
  readonly #opts: Required<BullJobQueueOptions>;
  readonly #flow: FlowProducer;
  readonly #queues = new Map<string, Queue>();
  /** jobId → terminal observation, or null for "no such job". */
  readonly #cache = new Map<string, JobObservation | null>();
  /** Serialises read-modify-write of one job's data. */
  readonly #locks = new Map<string, Promise<unknown>>();

  constructor(redis: Redis, opts: BullJobQueueOptions = {}) {
    this.#redis = redis;
    this.#opts = {
      attempts: opts.attempts ?? 3,
      backoffMs: opts.backoffMs ?? 5_000,
      enqueueBatch: opts.enqueueBatch ?? 500,
      queueHandles: opts.queueHandles ?? 128,
      cacheLimit: opts.cacheLimit ?? 500_000,
    };
    this.#flow = new FlowProducer({ connection: redis, prefix: QUEUE_PREFIX, skipVersionCheck: true });
  }

  #key(ref: JobRef): string {
    return `${QUEUE_PREFIX}:${nodeQueueName(ref.node)}:${ref.jobId}`;
  }

  async observe(refs: readonly JobRef[]): Promise<Map<string, JobObservation>> {
    const out = new Map<string, JobObservation>();
    const toRead: JobRef[] = [];
    for (const ref of refs) {
      const cached = this.#cache.get(ref.jobId);
      if (cached === undefined) toRead.push(ref);
      else if (cached !== null) out.set(ref.jobId, cached);
    }
    // Chunked so one reconcile over many nodes does not build one giant reply.
    const CHUNK = 2_000;
    for (let i = 0; i < toRead.length; i += CHUNK) {
      const chunk = toRead.slice(i, i + CHUNK);
      const pipe = this.#redis.pipeline();
      for (const ref of chunk) pipe.hmget(this.#key(ref), ...FIELDS);
      const replies = (await pipe.exec()) ?? [];
      chunk.forEach((ref, j) => {
        const [err, values] = replies[j] ?? [new Error('no reply'), null];
        if (err) throw err;
        const obs = parseJobHash(values as (string | null)[]);
        if (obs === undefined || obs.state === 'completed' || obs.state === 'failed')
          this.#remember(ref.jobId, obs ?? null);
        if (obs) out.set(ref.jobId, obs);
      });
    }
    return out;
  }

  #remember(jobId: string, obs: JobObservation | null): void {
    if (this.#cache.size >= this.#opts.cacheLimit) this.#cache.clear();
    this.#cache.set(jobId, obs);
  }

  async enqueue(jobs: readonly EnqueueJob[]): Promise<void> {
    for (let i = 0; i < jobs.length; i += this.#opts.enqueueBatch) {
      const batch = jobs.slice(i, i + this.#opts.enqueueBatch);
      const flows: FlowJob[] = batch.map((j) => ({
        name: PREWARM_JOB_NAME,
        queueName: nodeQueueName(j.node),
        prefix: QUEUE_PREFIX,
        data: j.data,
        opts: {
          jobId: j.jobId,
          attempts: this.#opts.attempts,
          backoff: { type: 'exponential', delay: this.#opts.backoffMs },
          // Kept: a completed job is the record that the node is warm (and the pin).
          removeOnComplete: false,
          removeOnFail: false,
        },
      }));
      await this.#flow.addBulk(flows);
      // Whether each id was new or a duplicate is not reported: re-read next time.
      for (const j of batch) this.#cache.delete(j.jobId);
    }
  }

  #queue(node: string): Queue {
    const name = nodeQueueName(node);
    let q = this.#queues.get(name);
    if (q) {
      // LRU: move to the end.
      this.#queues.delete(name);
      this.#queues.set(name, q);
      return q;
    }
    q = new Queue(name, { connection: this.#redis, prefix: QUEUE_PREFIX, skipVersionCheck: true });
    q.on('error', () => {
      // Errors surface on the awaited calls; the handle itself must not crash the process.
    });
    this.#queues.set(name, q);
    if (this.#queues.size > this.#opts.queueHandles) {
      const [oldestName, oldest] = this.#queues.entries().next().value as [string, Queue];
      this.#queues.delete(oldestName);
      void oldest.close().catch(() => undefined);
    }
    return q;
  }

  async #withLock<T>(jobId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#locks.get(jobId) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.#locks.set(jobId, tail);
    try {
      return await run;
    } finally {
      if (this.#locks.get(jobId) === tail) this.#locks.delete(jobId);
    }
  }

  addOwner(ref: JobRef, owner: PrewarmOwnerRef): Promise<void> {
    return this.#withLock(ref.jobId, async () => {
      const job = await Job.fromId<PrewarmJobData>(this.#queue(ref.node), ref.jobId);
      this.#cache.delete(ref.jobId);
      if (!job) return;
      const owners = ownersOf(job.data);
      if (owners.some((o) => o.uid === owner.uid)) return;
      await job.updateData({ ...job.data, owners: [...owners, owner] });
    });
  }

  unpin(ref: JobRef, ownerUid: string): Promise<UnpinOutcome> {
    return this.#withLock(ref.jobId, async () => {
      const queue = this.#queue(ref.node);
      const job = await Job.fromId<PrewarmJobData>(queue, ref.jobId);
      this.#cache.delete(ref.jobId);
      if (!job) return 'missing';
      const owners = ownersOf(job.data);
      const rest = owners.filter((o) => o.uid !== ownerUid);
      if (rest.length > 0) {
        if (rest.length !== owners.length) await job.updateData({ ...job.data, owners: rest });
        return 'owner-dropped';
      }
      if ((await queue.remove(ref.jobId)) === 1) return 'removed';
      // Locked by an agent: empty the owners so nothing pins it; removed once it finishes.
      await job.updateData({ ...job.data, owners: [] });
      return 'active-orphan';
    });
  }

  removeIfOrphan(ref: JobRef): Promise<boolean> {
    return this.#withLock(ref.jobId, async () => {
      const queue = this.#queue(ref.node);
      const job = await Job.fromId<PrewarmJobData>(queue, ref.jobId);
      this.#cache.delete(ref.jobId);
      if (!job) return true;
      if (ownersOf(job.data).length > 0) return true;
      return (await queue.remove(ref.jobId)) === 1;
    });
  }

  retry(ref: JobRef): Promise<void> {
    return this.#withLock(ref.jobId, async () => {
      const job = await Job.fromId<PrewarmJobData>(this.#queue(ref.node), ref.jobId);
      this.#cache.delete(ref.jobId);
      if (!job?.finishedOn || job.returnvalue) return;
      await job.retry('failed', { resetAttemptsMade: true, resetAttemptsStarted: true });
    });
  }

  invalidate(): void {
    this.#cache.clear();
  }

  async close(): Promise<void> {
    const queues = [...this.#queues.values()];
    this.#queues.clear();
    await Promise.allSettled([this.#flow.close(), ...queues.map((q) => q.close())]);
  }
}

function parseJson<T>(s: string | null): T | undefined {
  if (s === null || s === '') return undefined;
  try {
    return JSON.parse(s) as T;
  } catch {
    return undefined;
  }
}

/**
 * Derives a job's state from its hash: `finishedOn` marks a final state (completed when a
 * return value is stored, else failed); `processedOn` without it means an agent took it
 * (or it is waiting to retry after a failed attempt: both count as in flight).
 */
export function parseJobHash(values: readonly (string | null)[]): JobObservation | undefined {
  const [data, progress, returnvalue, failedReason, finishedOn, processedOn] = values;
  if (data === null || data === undefined) return undefined;
  const parsed = parseJson<Partial<PrewarmJobData>>(data);
  const owners = ownersOf(parsed);
  const prog = parseJson<PrewarmJobProgress | number>(progress ?? null);
  const result = parseJson<PrewarmJobResult>(returnvalue ?? null);
  const finished = finishedOn ? Number(finishedOn) : undefined;
  let state: JobObservation['state'];
  if (finished !== undefined) state = result !== undefined && returnvalue !== 'null' ? 'completed' : 'failed';
  else state = processedOn ? 'active' : 'pending';
  return {
    state,
    owners,
    ...(prog !== undefined && typeof prog === 'object' ? { progress: prog } : {}),
    ...(state === 'completed' && result ? { result } : {}),
    ...(state === 'failed' && failedReason ? { failedReason } : {}),
    ...(finished !== undefined ? { finishedOn: finished } : {}),
    ...(typeof parsed?.triggeredAt === 'number' ? { triggeredAt: parsed.triggeredAt } : {}),
    ...(typeof parsed?.trigger === 'string' ? { trigger: parsed.trigger } : {}),
  };
}
