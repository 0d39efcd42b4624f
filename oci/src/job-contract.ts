/**
 * The wire contract between the operator (producer) and the node agents (consumers)
 * over BullMQ. It lives in oci/ because both sides import oci/ and neither imports the
 * other. Bump `JOB_SCHEMA_VERSION` on any incompatible change; agents reject jobs with
 * a newer version (UnrecoverableError) rather than guess.
 *
 * Routing: one queue per node (`nodeQueueName`). A per-node queue lets each agent run a
 * plain BullMQ Worker on its own queue (no job is ever fetched by the wrong node and
 * re-queued), lets the operator read per-node depth cheaply, and lets a node's backlog
 * be cancelled by removing jobs from one queue; the cost (one Redis key set per node)
 * is small next to one Pod/Job per node×image.
 *
 * Pins: a digest is pinned on a node while a job for it exists in that node's queue with
 * a non-empty `owners` list, whatever the job's state. The operator is the only writer of
 * `data` after creation: it adds owners (a second ImagePrewarm wanting the same digest)
 * and drops them (a tag moved past `retain`, a node left the selection, an ImagePrewarm
 * was deleted); a job left without owners is removed, which also cancels it if still
 * pending. Completed jobs are kept (not `removeOnComplete`): they are the record that the
 * node is warm. Agents never change `data`.
 */
import { type Digest, digestHex } from './digest.js';

export const JOB_SCHEMA_VERSION = 1;

/** BullMQ key prefix for every kube-prewarm queue. */
export const QUEUE_PREFIX = 'kprw';

/** BullMQ job name for prewarm jobs. */
export const PREWARM_JOB_NAME = 'prewarm';

/** Queue for one node. Node names are DNS subdomains, safe in Redis keys (no ':'). */
export function nodeQueueName(node: string): string {
  return `node.${node}`;
}

export type PrewarmMode = 'cache' | 'unpack';

/**
 * Job id derived from (digest, node, mode): a duplicate event or an operator restart
 * enqueues nothing twice, because BullMQ ignores an add with an existing id.
 */
export function prewarmJobId(digest: Digest, node: string, mode: PrewarmMode): string {
  return `${digestHex(digest)}.${node}.${mode}`;
}

export interface PrewarmOwnerRef {
  namespace: string;
  name: string;
  uid: string;
}

export interface PrewarmJobData {
  v: number;
  /** The ImagePrewarm resources that want this digest on this node (pins for GC). */
  owners: PrewarmOwnerRef[];
  /** `registry/repository`, no tag or digest. */
  repository: string;
  /** The tag the digest was resolved from, for display and the mirror's tag cache. */
  tag?: string;
  /** Resolved digest: an index or an image manifest. */
  digest: Digest;
  /** The node's platform, `os/arch[/variant]`, used to pick from an index. */
  platform: string;
  node: string;
  mode: PrewarmMode;
  /** `namespace/name` of dockerconfigjson Secrets the agent may read for this pull. */
  pullSecrets?: string[];
  /** Per-node bandwidth cap for this job, bytes per second (0 or absent: node default). */
  bandwidthBytesPerSec?: number;
  /** Paths to fetch first (eStargz prefetch landmark is always honoured). */
  startupPaths?: string[];
  /** Wall-clock ms when the trigger happened (push event time, schedule tick, CR change). */
  triggeredAt: number;
  /** What caused the job: `spec`, `push:<source>`, `schedule`, `node-join`. */
  trigger: string;
}

export type PrewarmPhase =
  | 'queued'
  | 'resolving'
  | 'fetching'
  | 'startup-ready'
  | 'warm'
  | 'unpacked'
  | 'failed';

/** Reported with `job.updateProgress`; always monotonic in `bytesDone` and phase order. */
export interface PrewarmJobProgress {
  phase: PrewarmPhase;
  bytesDone: number;
  bytesTotal: number;
  layersDone: number;
  layersTotal: number;
  /**
   * Times the container runtime lost this image after it was warm (kubelet image GC,
   * containerd pruning) and the agent re-warmed it. Set on completed jobs by the agent's
   * re-check; absent until the first eviction.
   */
  evictions?: number;
}

/** A job's return value. */
export interface PrewarmJobResult {
  phase: 'warm' | 'unpacked';
  /** The image manifest digest actually stored for the node's platform. */
  manifestDigest: Digest;
  bytesTotal: number;
  bytesFromRegistry: number;
  bytesFromPeers: number;
  bytesAlreadyPresent: number;
  durationMs: number;
}

/** Failure reasons the agent puts in `failedReason` as `<code>: <message>`. */
export function formatFailure(code: string, message: string): string {
  return `${code}: ${message}`;
}

/** The inverse of `formatFailure`: undefined when `reason` does not start with a PW_ERR_ code. */
export function parseFailure(reason: string): { code: string; message: string } | undefined {
  const m = /^(PW_ERR_[A-Z_]+):\s*(.*)$/s.exec(reason);
  return m ? { code: m[1]!, message: m[2]! } : undefined;
}
