/**
 * The operator's side of the per-node job queues (oci/src/job-contract.ts): observe job
 * states, enqueue, and maintain owners (pins). An interface so the reconciler can be
 * exercised against the real BullMQ implementation or an in-memory one.
 *
 * Pins: a digest is pinned on a node while a job for it exists in that node's queue with
 * a non-empty `owners` list. Unpinning drops an owner; a job left without owners is
 * removed (a pending one is thereby cancelled). The agent's garbage collector keeps blobs
 * of pinned digests.
 */
import type { PrewarmJobData, PrewarmOwnerRef } from '../../../oci/src/job-contract.js';
import type { EnqueueJob, JobObservation, JobRef, JobSettings } from './types.js';

/** What `unpin` did. */
export type UnpinOutcome = 'removed' | 'owner-dropped' | 'active-orphan' | 'missing';

export interface JobQueue {
  /**
   * Current state of each referenced job; jobs that do not exist are absent from the map.
   * Throws on Redis errors (the reconcile is retried with backoff).
   */
  observe(refs: readonly JobRef[]): Promise<Map<string, JobObservation>>;
  /**
   * Adds jobs to their nodes' queues. An id that already exists is left untouched (so a
   * duplicate call adds nothing). Returns how many calls were sent (not how many were new).
   */
  enqueue(jobs: readonly EnqueueJob[]): Promise<void>;
  /** Adds `owner` to the job's owners if the job exists and lacks it. */
  addOwner(ref: JobRef, owner: PrewarmOwnerRef): Promise<void>;
  /**
   * Drops the owner with `ownerUid`; removes the job when no owner is left. An active job
   * cannot be removed (an agent holds its lock): its owners are emptied and the outcome
   * is `active-orphan`, to be removed later with `removeIfOrphan`.
   */
  unpin(ref: JobRef, ownerUid: string): Promise<UnpinOutcome>;
  /**
   * Replaces the job's spec-derived settings (bandwidth cap, startup paths, pull secrets)
   * if the job exists. Meant for pending jobs; an agent that already started one keeps
   * what it read.
   */
  updateSettings(ref: JobRef, settings: JobSettings): Promise<void>;
  /** Removes the job if it has no owners and is not active. Returns true when it is gone. */
  removeIfOrphan(ref: JobRef): Promise<boolean>;
  /**
   * Every `active-orphan` not yet removed, recorded durably by `unpin` (so a restarted or
   * new leader finishes removing them; `removeIfOrphan` forgets the ones that are gone).
   */
  orphans(): Promise<JobRef[]>;
  /** Moves a failed job back to waiting (attempts start over). */
  retry(ref: JobRef): Promise<void>;
  /**
   * Deletes a node's whole queue (every job, any state): called once the Node object is
   * gone, so departed nodes leave nothing behind in Redis.
   */
  dropNode(node: string): Promise<void>;
  /** Forgets cached job states (after gaining leadership another replica may have written). */
  invalidate(): void;
  /**
   * Forgets cached completed and failed states (not the job data), so the next observation
   * re-reads them: agents add to a completed job's progress (runtime re-warm counts).
   */
  forgetFinished(): void;
  close(): Promise<void>;
}

/** The owners of a job's data, tolerating a malformed document. */
export function ownersOf(data: Partial<PrewarmJobData> | undefined): PrewarmOwnerRef[] {
  return Array.isArray(data?.owners) ? data.owners.filter((o) => o && typeof o.uid === 'string') : [];
}
