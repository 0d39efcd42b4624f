/**
 * An in-memory JobQueue with the same contract as BullJobQueue (an existing id is left
 * untouched, an active job is orphaned rather than removed, settings follow only what the
 * queue holds), for controller unit tests. The test plays the agents: `start`, `complete`
 * and `fail` move a job as a worker would.
 */
import type { PrewarmJobData, PrewarmJobResult, PrewarmOwnerRef } from '../../../oci/src/job-contract.js';
import type { JobQueue, UnpinOutcome } from './job-queue.js';
import { type EnqueueJob, type JobObservation, type JobRef, type JobSettings, jobSettings } from './types.js';

interface MemoryJob {
  node: string;
  data: PrewarmJobData;
  state: JobObservation['state'];
  result?: PrewarmJobResult;
  failedReason?: string;
  finishedOn?: number;
}

export class MemoryJobQueue implements JobQueue {
  /** Every job, by id (ids are unique across nodes: they include the node). */
  readonly jobs = new Map<string, MemoryJob>();
  readonly #orphans = new Map<string, JobRef>();
  /** Calls to `enqueue` with at least one job. */
  enqueueCalls = 0;

  async observe(refs: readonly JobRef[]): Promise<Map<string, JobObservation>> {
    const out = new Map<string, JobObservation>();
    for (const r of refs) {
      const j = this.jobs.get(r.jobId);
      if (!j || j.node !== r.node) continue;
      out.set(r.jobId, {
        state: j.state,
        owners: [...j.data.owners],
        ...(j.result ? { result: j.result } : {}),
        ...(j.failedReason !== undefined ? { failedReason: j.failedReason } : {}),
        ...(j.finishedOn !== undefined ? { finishedOn: j.finishedOn } : {}),
        triggeredAt: j.data.triggeredAt,
        trigger: j.data.trigger,
        settings: jobSettings(j.data),
      });
    }
    return out;
  }

  async enqueue(jobs: readonly EnqueueJob[]): Promise<void> {
    if (jobs.length > 0) this.enqueueCalls++;
    for (const j of jobs) {
      if (this.jobs.has(j.jobId)) continue;
      this.jobs.set(j.jobId, { node: j.node, data: structuredClone(j.data), state: 'pending' });
    }
  }

  async addOwner(ref: JobRef, owner: PrewarmOwnerRef): Promise<void> {
    const j = this.jobs.get(ref.jobId);
    if (j && !j.data.owners.some((o) => o.uid === owner.uid)) j.data.owners.push({ ...owner });
  }

  async unpin(ref: JobRef, ownerUid: string): Promise<UnpinOutcome> {
    const j = this.jobs.get(ref.jobId);
    if (!j) return 'missing';
    j.data.owners = j.data.owners.filter((o) => o.uid !== ownerUid);
    if (j.data.owners.length > 0) return 'owner-dropped';
    if (j.state === 'active') {
      this.#orphans.set(ref.jobId, ref);
      return 'active-orphan';
    }
    this.jobs.delete(ref.jobId);
    return 'removed';
  }

  async updateSettings(ref: JobRef, settings: JobSettings): Promise<void> {
    const j = this.jobs.get(ref.jobId);
    if (!j) return;
    const data = j.data as unknown as Record<string, unknown>;
    for (const k of ['bandwidthBytesPerSec', 'startupPaths', 'pullSecrets'] as const) delete data[k];
    Object.assign(j.data, settings);
  }

  async removeIfOrphan(ref: JobRef): Promise<boolean> {
    const j = this.jobs.get(ref.jobId);
    if (!j) {
      this.#orphans.delete(ref.jobId);
      return true;
    }
    if (j.data.owners.length > 0 || j.state === 'active') return false;
    this.jobs.delete(ref.jobId);
    this.#orphans.delete(ref.jobId);
    return true;
  }

  async orphans(): Promise<JobRef[]> {
    return [...this.#orphans.values()];
  }

  async retry(ref: JobRef): Promise<void> {
    const j = this.jobs.get(ref.jobId);
    if (j?.state !== 'failed') return;
    j.state = 'pending';
    delete j.failedReason;
    delete j.finishedOn;
  }

  async dropNode(node: string): Promise<void> {
    for (const [id, j] of this.jobs) if (j.node === node) this.jobs.delete(id);
  }

  invalidate(): void {}

  forgetFinished(): void {}

  async close(): Promise<void> {}

  /** The ids of a node's jobs. */
  idsOf(node: string): string[] {
    return [...this.jobs].filter(([, j]) => j.node === node).map(([id]) => id);
  }

  /** An agent takes the job. */
  start(jobId: string): void {
    this.#get(jobId).state = 'active';
  }

  /** An agent finished the job. */
  complete(jobId: string, result: PrewarmJobResult): void {
    const j = this.#get(jobId);
    Object.assign(j, { state: 'completed', result, finishedOn: Date.now() });
  }

  /** The job failed for good (attempts used up), with the agent's `CODE: message` reason. */
  fail(jobId: string, reason: string): void {
    const j = this.#get(jobId);
    Object.assign(j, { state: 'failed', failedReason: reason, finishedOn: Date.now() });
  }

  #get(jobId: string): MemoryJob {
    const j = this.jobs.get(jobId);
    if (!j) throw new Error(`no job ${jobId}`);
    return j;
  }
}
