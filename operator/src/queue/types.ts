/**
 * The job and event shapes the queue ports carry (job-queue.ts, bull-job-queue.ts,
 * push-inbox.ts). Owned here, by the ports: reconcile/ (plan, push matching) imports them
 * from this module, never the other way round.
 */
import type {
  PrewarmJobData,
  PrewarmJobProgress,
  PrewarmJobResult,
  PrewarmOwnerRef,
} from '../../../oci/src/job-contract.js';

/** A job in a node's queue. */
export interface JobRef {
  node: string;
  jobId: string;
}

export interface EnqueueJob extends JobRef {
  data: PrewarmJobData;
}

/** What the operator knows about one job (absent from the map: no such job). */
export interface JobObservation {
  /** `pending` = waiting, delayed or prioritized; `active` = an agent holds it. */
  state: 'pending' | 'active' | 'completed' | 'failed';
  owners: PrewarmOwnerRef[];
  progress?: PrewarmJobProgress;
  result?: PrewarmJobResult;
  failedReason?: string;
  /** ms epoch when the job completed or finally failed. */
  finishedOn?: number;
  /** The job data's `triggeredAt`. */
  triggeredAt?: number;
  /** The job data's `trigger` (`spec`, `push:<source>`, `schedule`, `node-join`, ...). */
  trigger?: string;
  /** The job data's spec-derived settings (undefined: not read). */
  settings?: JobSettings;
  /** Completed jobs: times the runtime lost the image and the agent re-imported it (progress `evictions`). */
  evictions?: number;
}

/** The parts of a job's data that follow the spec after enqueueing (while it is pending). */
export type JobSettings = Pick<PrewarmJobData, 'bandwidthBytesPerSec' | 'startupPaths' | 'pullSecrets'>;

/** The settings of `data`, with absent and empty fields omitted (a canonical form). */
export function jobSettings(data: Partial<PrewarmJobData> | undefined): JobSettings {
  const bw = data?.bandwidthBytesPerSec;
  const paths = Array.isArray(data?.startupPaths)
    ? data.startupPaths.filter((p) => typeof p === 'string')
    : [];
  const secrets = Array.isArray(data?.pullSecrets)
    ? data.pullSecrets.filter((p) => typeof p === 'string')
    : [];
  return {
    ...(typeof bw === 'number' && bw > 0 ? { bandwidthBytesPerSec: bw } : {}),
    ...(paths.length > 0 ? { startupPaths: paths } : {}),
    ...(secrets.length > 0 ? { pullSecrets: secrets } : {}),
  };
}

/** The parts of a webhook PushEvent matching needs (operator/src/webhooks/push-event.ts). */
export interface PushEventLike {
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
  source: string;
  timestamp?: string;
  receivedAt?: string;
  eventId?: string;
}
