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
import { type JobQueue, ownersOf, type UnpinOutcome } from './job-queue.js';
import { type EnqueueJob, type JobObservation, type JobRef, type JobSettings, jobSettings } from './types.js';

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

/** `HSET key data ARGV[1]` only if the job hash exists (a removed job must not come back as a stub). */
const SET_DATA_IF_EXISTS = `if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'data', ARGV[1]) return 1 end return 0`;

/** Fields of BullMQ's job hash read on every observation (BullMQ's documented key layout). */
const STATE_FIELDS = [
  'timestamp',
  'progress',
  'returnvalue',
  'failedReason',
  'finishedOn',
  'processedOn',
] as const;

/** What a job's `data` contributes to an observation. */
export interface JobMeta {
  owners: PrewarmOwnerRef[];
  triggeredAt?: number;
  trigger?: string;
  settings: JobSettings;
}

/** The job hash fields read (null: absent). `data` may be omitted when its meta is known. */
export interface JobHash {
  timestamp: string | null;
  data: string | null;
  progress: string | null;
  returnvalue: string | null;
  failedReason: string | null;
  finishedOn: string | null;
  processedOn: string | null;
}

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
  /** jobId → what the job's `data` says (owners, trigger), which only this process changes. */
  readonly #meta = new Map<string, JobMeta>();
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

  /** Redis set of `active-orphan` jobs (JSON JobRefs) awaiting removal. */
  static readonly ORPHANS_KEY = `${QUEUE_PREFIX}:orphans`;

  async orphans(): Promise<JobRef[]> {
    const out: JobRef[] = [];
    for (const m of await this.#redis.smembers(BullJobQueue.ORPHANS_KEY)) {
      try {
        const r = JSON.parse(m) as Partial<JobRef>;
        if (typeof r.node === 'string' && typeof r.jobId === 'string')
          out.push({ node: r.node, jobId: r.jobId });
        else await this.#redis.srem(BullJobQueue.ORPHANS_KEY, m);
      } catch {
        await this.#redis.srem(BullJobQueue.ORPHANS_KEY, m);
      }
    }
    return out;
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
      const metas = chunk.map((ref) => this.#meta.get(ref.jobId));
      // `data` (the largest field) only when its owners are not known yet: only this
      // process writes it after creation.
      chunk.forEach((ref, j) => {
        pipe.hmget(this.#key(ref), ...STATE_FIELDS, ...(metas[j] ? [] : ['data']));
      });
      const replies = (await pipe.exec()) ?? [];
      chunk.forEach((ref, j) => {
        const [err, values] = replies[j] ?? [new Error('no reply'), null];
        if (err) throw err;
        const v = values as (string | null)[];
        const parsed = parseJobHash(
          {
            timestamp: v[0] ?? null,
            progress: v[1] ?? null,
            returnvalue: v[2] ?? null,
            failedReason: v[3] ?? null,
            finishedOn: v[4] ?? null,
            processedOn: v[5] ?? null,
            data: v[6] ?? null,
          },
          metas[j],
        );
        if (!parsed) {
          this.#meta.delete(ref.jobId);
          this.#remember(ref.jobId, null);
          return;
        }
        this.#meta.set(ref.jobId, parsed.meta);
        if (parsed.obs.state === 'completed' || parsed.obs.state === 'failed')
          this.#remember(ref.jobId, parsed.obs);
        out.set(ref.jobId, parsed.obs);
      });
    }
    return out;
  }

  #remember(jobId: string, obs: JobObservation | null): void {
    if (this.#cache.size >= this.#opts.cacheLimit) this.#cache.clear();
    if (this.#meta.size >= this.#opts.cacheLimit) this.#meta.clear();
    this.#cache.set(jobId, obs);
  }

  #forget(jobId: string): void {
    this.#cache.delete(jobId);
    this.#meta.delete(jobId);
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
      for (const j of batch) this.#forget(j.jobId);
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

  /** The job's data, or undefined when the job does not exist. */
  async #readData(ref: JobRef): Promise<PrewarmJobData | undefined> {
    const raw = await this.#redis.hget(this.#key(ref), 'data');
    if (raw === null) return undefined;
    return (parseJson<PrewarmJobData>(raw) ?? {}) as PrewarmJobData;
  }

  /**
   * Replaces the job's data if the job still exists (BullMQ's own updateData does the
   * same). Only the leader writes `data`, serialised per job by `#withLock`; agents write
   * other fields (progress, state), so no update is lost.
   */
  async #writeData(ref: JobRef, data: PrewarmJobData): Promise<void> {
    await this.#redis.eval(SET_DATA_IF_EXISTS, 1, this.#key(ref), JSON.stringify(data));
  }

  /**
   * Removes a job with BullMQ's own removal (all of its keys and set memberships), through
   * a queue-bound backend view that costs no Redis round trip to create. 1 = removed,
   * 0 = locked by an agent.
   */
  #remove(ref: JobRef): Promise<number> {
    return this.#flow.getBackend().forQueue(nodeQueueName(ref.node), QUEUE_PREFIX).remove(ref.jobId, false);
  }

  addOwner(ref: JobRef, owner: PrewarmOwnerRef): Promise<void> {
    return this.#withLock(ref.jobId, async () => {
      this.#forget(ref.jobId);
      const data = await this.#readData(ref);
      if (!data) return;
      const owners = ownersOf(data);
      if (owners.some((o) => o.uid === owner.uid)) return;
      await this.#writeData(ref, { ...data, owners: [...owners, owner] });
    });
  }

  unpin(ref: JobRef, ownerUid: string): Promise<UnpinOutcome> {
    return this.#withLock(ref.jobId, async () => {
      this.#forget(ref.jobId);
      const data = await this.#readData(ref);
      if (!data) return 'missing';
      const owners = ownersOf(data);
      const rest = owners.filter((o) => o.uid !== ownerUid);
      if (rest.length > 0) {
        if (rest.length !== owners.length) await this.#writeData(ref, { ...data, owners: rest });
        return 'owner-dropped';
      }
      if ((await this.#remove(ref)) === 1) return 'removed';
      // Locked by an agent: empty the owners so nothing pins it; removed once it finishes.
      // Recorded first, so a crash between the two writes leaves a record, not a lost job.
      await this.#redis.sadd(BullJobQueue.ORPHANS_KEY, orphanMember(ref));
      await this.#writeData(ref, { ...data, owners: [] });
      return 'active-orphan';
    });
  }

  updateSettings(ref: JobRef, settings: JobSettings): Promise<void> {
    return this.#withLock(ref.jobId, async () => {
      this.#forget(ref.jobId);
      const data = await this.#readData(ref);
      if (!data) return;
      const { bandwidthBytesPerSec: _b, startupPaths: _s, pullSecrets: _p, ...rest } = data;
      await this.#writeData(ref, { ...rest, ...jobSettings(settings) });
    });
  }

  removeIfOrphan(ref: JobRef): Promise<boolean> {
    return this.#withLock(ref.jobId, async () => {
      this.#forget(ref.jobId);
      const data = await this.#readData(ref);
      // Gone, adopted by another ImagePrewarm, or removed now: no longer an orphan.
      const gone = !data || ownersOf(data).length > 0 || (await this.#remove(ref)) === 1;
      if (gone) await this.#redis.srem(BullJobQueue.ORPHANS_KEY, orphanMember(ref));
      return gone;
    });
  }

  retry(ref: JobRef): Promise<void> {
    return this.#withLock(ref.jobId, async () => {
      const job = await Job.fromId<PrewarmJobData>(this.#queue(ref.node), ref.jobId);
      this.#forget(ref.jobId);
      if (!job?.finishedOn || job.returnvalue) return;
      await job.retry('failed', { resetAttemptsMade: true, resetAttemptsStarted: true });
    });
  }

  async dropNode(node: string): Promise<void> {
    const name = nodeQueueName(node);
    const cached = this.#queues.get(name);
    this.#queues.delete(name);
    const q =
      cached ??
      new Queue(name, {
        connection: this.#redis,
        prefix: QUEUE_PREFIX,
        skipVersionCheck: true,
        skipMetasUpdate: true,
      });
    try {
      // force: also when jobs are active (the node's agent is gone with the node).
      await q.obliterate({ force: true });
    } finally {
      await q.close().catch(() => undefined);
    }
    const suffix = `.${node}.`;
    for (const id of [...this.#cache.keys()]) if (id.includes(suffix)) this.#forget(id);
    for (const id of [...this.#meta.keys()]) if (id.includes(suffix)) this.#meta.delete(id);
  }

  invalidate(): void {
    this.#cache.clear();
    this.#meta.clear();
  }

  forgetFinished(): void {
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
 * Derives a job's state from its hash: no `timestamp` means no job; `finishedOn` marks a
 * final state (completed when a return value is stored, else failed); `processedOn`
 * without it means an agent took it (or it waits to retry after a failed attempt: both
 * count as in flight). `meta` stands in for `data` when given.
 */
export function parseJobHash(h: JobHash, meta?: JobMeta): { obs: JobObservation; meta: JobMeta } | undefined {
  if (h.timestamp === null && h.data === null) return undefined;
  let m = meta;
  if (!m) {
    const parsed = parseJson<Partial<PrewarmJobData>>(h.data);
    m = {
      owners: ownersOf(parsed),
      ...(typeof parsed?.triggeredAt === 'number' ? { triggeredAt: parsed.triggeredAt } : {}),
      ...(typeof parsed?.trigger === 'string' ? { trigger: parsed.trigger } : {}),
      settings: jobSettings(parsed),
    };
  }
  const finished = h.finishedOn ? Number(h.finishedOn) : undefined;
  let state: JobObservation['state'];
  if (finished !== undefined)
    state = h.returnvalue !== null && h.returnvalue !== 'null' ? 'completed' : 'failed';
  else state = h.processedOn ? 'active' : 'pending';
  const prog =
    state === 'active' || state === 'pending'
      ? parseJson<PrewarmJobProgress | number>(h.progress)
      : undefined;
  // A completed job's progress only matters for the runtime re-warm count the agent adds.
  const done = state === 'completed' ? parseJson<PrewarmJobProgress | number>(h.progress) : undefined;
  const evictions = typeof done === 'object' && done !== null ? done.evictions : undefined;
  const result = state === 'completed' ? parseJson<PrewarmJobResult>(h.returnvalue) : undefined;
  const obs: JobObservation = {
    state,
    owners: m.owners,
    ...(prog !== undefined && typeof prog === 'object' ? { progress: prog } : {}),
    ...(result ? { result } : {}),
    ...(typeof evictions === 'number' && Number.isInteger(evictions) && evictions > 0 ? { evictions } : {}),
    ...(state === 'failed' && h.failedReason ? { failedReason: h.failedReason } : {}),
    ...(finished !== undefined ? { finishedOn: finished } : {}),
    ...(m.triggeredAt !== undefined ? { triggeredAt: m.triggeredAt } : {}),
    ...(m.trigger !== undefined ? { trigger: m.trigger } : {}),
    settings: m.settings,
  };
  return { obs, meta: m };
}

/** A JobRef as a member of the orphans set (fixed key order, so SREM finds what SADD wrote). */
function orphanMember(ref: JobRef): string {
  return JSON.stringify({ node: ref.node, jobId: ref.jobId });
}
