/**
 * TypeScript view of the ImagePrewarm custom resource (crds/imageprewarm.yaml) and the
 * names the operator shares with the cluster. The CRD's OpenAPI schema is the source of
 * truth for what the apiserver accepts; these types describe what the operator reads
 * and writes. Keep them in step with the CRD.
 */
import type { PrewarmMode, PrewarmPhase } from '../../../oci/src/job-contract.js';

export const GROUP = 'prewarm.kube-prewarm.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = 'ImagePrewarm';
export const PLURAL = 'imageprewarms';

/** Finalizer that holds deletion until pending jobs are cancelled and digests unpinned. */
export const FINALIZER = 'prewarm.kube-prewarm.io/cleanup';

/** Changing this annotation's value asks for an immediate re-resolution of every tag. */
export const REFRESH_ANNOTATION = 'prewarm.kube-prewarm.io/refresh';

/**
 * The startup taint a node provisioner puts on new nodes (Karpenter `startupTaints`);
 * removed by the operator once every gating ImagePrewarm is warm on the node.
 */
export const STARTUP_TAINT_KEY = 'kube-prewarm.io/warming';
export const STARTUP_TAINT_EFFECT = 'NoSchedule';

/**
 * How long a gating ImagePrewarm holds a node's startup taint, counted from the Node's
 * creation, when `startup.gateDeadlineSeconds` is not set. After it the taint is removed
 * even if the images are not warm (fail open: a broken prewarm must not block a node pool).
 */
export const DEFAULT_GATE_DEADLINE_SECONDS = 600;

export interface ImageSpec {
  /** `registry[:port]/path`, no tag or digest. */
  repository: string;
  tag?: string;
  tagGlob?: string;
  digest?: string;
  /** `os/arch[/variant]` filter. */
  platforms?: string[];
}

export interface NodeSelectorRequirement {
  key: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist' | 'Gt' | 'Lt';
  values?: string[];
}

export interface NodeSelectorTerm {
  matchExpressions?: NodeSelectorRequirement[];
  matchFields?: NodeSelectorRequirement[];
}

export interface Toleration {
  key?: string;
  operator?: 'Exists' | 'Equal';
  value?: string;
  effect?: '' | 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute';
  tolerationSeconds?: number;
}

export interface ImagePrewarmSpec {
  images: ImageSpec[];
  nodeSelector?: Record<string, string>;
  affinity?: {
    nodeAffinity?: {
      requiredDuringSchedulingIgnoredDuringExecution?: { nodeSelectorTerms: NodeSelectorTerm[] };
    };
  };
  tolerations?: Toleration[];
  triggers?: { onPush?: boolean; schedule?: string; timeZone?: string; onNodeJoin?: boolean };
  startup?: {
    paths?: string[];
    gateNodes?: boolean;
    /** Most seconds after a node's creation the startup taint is held (default 600, capped by the operator). */
    gateDeadlineSeconds?: number;
  };
  mode?: PrewarmMode;
  rollout?: { maxParallelNodes?: number; maxBandwidthPerNode?: string; deadlineSeconds?: number };
  pullSecrets?: { name: string }[];
  retain?: number;
}

export type ConditionType = 'Ready' | 'Progressing' | 'Degraded';
export type ConditionStatus = 'True' | 'False' | 'Unknown';

export interface Condition {
  type: ConditionType;
  status: ConditionStatus;
  reason: string;
  message: string;
  lastTransitionTime: string;
  observedGeneration?: number;
}

export interface TriggerRecord {
  /** `spec`, `push`, `schedule`, `refresh`, `node-join`. */
  type: string;
  /** Push source (e.g. `distribution`, `acr`), or a detail for other types. */
  source?: string;
  time: string;
}

export interface DigestRecord {
  digest: string;
  tag?: string;
  resolvedAt?: string;
}

export interface FailingNode {
  node: string;
  reason: string;
  message: string;
  time?: string;
}

export interface ImageStatus {
  /** The spec entry this describes (see `imageName`). */
  name: string;
  repository?: string;
  tag?: string;
  digest?: string;
  mediaType?: string;
  resolvedAt?: string;
  platforms?: string[];
  bytes?: number;
  bytesFetched?: number;
  targetNodes?: number;
  warmNodes?: number;
  lastTrigger?: TriggerRecord;
  previousDigests?: DigestRecord[];
  /** Target nodes by the phase of their job for the current digest (what the agents report). */
  nodePhases?: Partial<Record<PrewarmPhase, number>>;
  failingNodes?: FailingNode[];
  /**
   * Times the container runtime lost the current digest on a target node after it was
   * warm (kubelet image GC, containerd pruning) and the agent re-imported it, summed over
   * the target nodes (`unpack` mode; the agents' `evictions`).
   */
  rewarms?: number;
}

/** A node whose startup taint this ImagePrewarm stopped holding at its gate deadline. */
export interface ExpiredGate {
  node: string;
  /** When the deadline passed (RFC 3339). */
  time: string;
  /** What was still missing, e.g. the node's phase or the agent's error. */
  message: string;
}

export interface ImagePrewarmStatus {
  observedGeneration?: number;
  /** The mode the pinned jobs were created with (a mode change re-warms and unpins the old jobs). */
  mode?: PrewarmMode;
  imageCount?: number;
  targetNodes?: number;
  warmNodes?: number;
  warm?: string;
  lastRefresh?: string;
  lastScheduleTime?: string;
  nextScheduleTime?: string;
  conditions?: Condition[];
  images?: ImageStatus[];
  /**
   * Target nodes released by the gate deadline (`startup.gateDeadlineSeconds`) before
   * every current digest was warm there; an entry stays until the node is warm or no
   * longer targeted.
   */
  expiredGates?: ExpiredGate[];
}

export interface ObjectMeta {
  name: string;
  namespace: string;
  uid: string;
  generation?: number;
  resourceVersion?: string;
  /** RFC 3339 (custom resources arrive as plain JSON). */
  creationTimestamp?: string;
  deletionTimestamp?: string;
  finalizers?: string[];
  annotations?: Record<string, string>;
  labels?: Record<string, string>;
}

export interface ImagePrewarm {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: ObjectMeta;
  spec: ImagePrewarmSpec;
  status?: ImagePrewarmStatus;
}

/** `namespace/name`, the work-queue key. */
export function prewarmKey(p: { metadata: { namespace?: string; name?: string } }): string {
  return `${p.metadata.namespace ?? ''}/${p.metadata.name ?? ''}`;
}

/** The stable display name of a spec entry: `repo:tag`, `repo:<glob>` or `repo@digest`. */
export function imageName(img: ImageSpec): string {
  if (img.digest) return `${img.repository}@${img.digest}`;
  if (img.tagGlob) return `${img.repository}:${img.tagGlob}`;
  return `${img.repository}:${img.tag ?? 'latest'}`;
}
