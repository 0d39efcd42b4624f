/**
 * The pure half of reconciliation: from what the operator observed (the ImagePrewarm, the
 * nodes, the digests its tags resolve to, the state of the per-node jobs) to what should
 * happen (jobs to enqueue, owners to add, pins to drop, failed jobs to retry) and the
 * status to write. No I/O, no clock (the caller passes `now`): unit-tested with plain
 * objects, and re-running it on the same input gives the same output, which is what
 * makes a restarted operator safe.
 */
import { type Digest, digestHex } from '../../../oci/src/digest.js';
import {
  JOB_SCHEMA_VERSION,
  type PrewarmJobData,
  type PrewarmMode,
  type PrewarmOwnerRef,
  type PrewarmPhase,
  parseFailure,
  prewarmJobId,
} from '../../../oci/src/job-contract.js';
import { formatPlatform, parsePlatform, platformMatches } from '../../../oci/src/platform.js';
import type {
  Condition,
  ConditionStatus,
  ConditionType,
  DigestRecord,
  ExpiredGate,
  FailingNode,
  ImagePrewarmSpec,
  ImagePrewarmStatus,
  ImageStatus,
  TriggerRecord,
} from '../api/types.js';
import type { NodeView } from '../kube/node-view.js';
import { parseQuantity } from '../quantity.js';
import {
  type EnqueueJob,
  type JobObservation,
  type JobRef,
  type JobSettings,
  jobSettings,
} from '../queue/types.js';
import { gateDeadlineMs } from './gate.js';
import { platformAllowed, selectNodes } from './nodes.js';

export { parseQuantity };

/** One spec image entry after resolution (same order as `spec.images`). */
export interface ResolvedImage {
  /** `imageName(spec entry)`. */
  name: string;
  /** `registry/repository`. */
  repository: string;
  /** Registry host, for per-registry budgets. */
  registry: string;
  /** The concrete tag the current digest came from (for tagGlob: the last pushed match). */
  tag?: string;
  current?: {
    digest: Digest;
    resolvedAt: string;
    mediaType?: string;
    /** Platforms an index offers; undefined for a single-platform manifest (fits any node). */
    platforms?: string[];
    /** Compressed bytes per `os/arch[/variant]` as far as known. */
    bytesByPlatform?: Record<string, number>;
  };
  /** Retained earlier digests, newest first (already trimmed to `retain`). */
  previous: DigestRecord[];
  /** Digests to unpin (were current or retained, no longer are). */
  dropped: Digest[];
  lastTrigger?: TriggerRecord;
  /** Resolution failed; `current` is the last good digest, if any. */
  error?: { reason: string; message: string };
  /** No digest yet for a reason that is not an error (a tagGlob waiting for a push). */
  waiting?: { reason: string; message: string };
  /** `platforms` filter from the spec entry. */
  platformFilter?: string[];
  /**
   * Refused by the tenancy policy (`QuotaExceeded`, tenancy.ts): the entry is neither
   * warmed nor pinned (jobs it owns for it are unpinned) and the status says why.
   */
  blocked?: { reason: string; message: string };
}

export interface PlanInput {
  owner: PrewarmOwnerRef;
  generation: number;
  spec: ImagePrewarmSpec;
  /** The status as last written (for condition transition times and carried fields). */
  status: ImagePrewarmStatus | undefined;
  images: ResolvedImage[];
  /** Every node the informer knows. */
  nodes: readonly NodeView[];
  /** Node name → creation time (ms), for onNodeJoin=false. */
  nodeCreatedAt?: ReadonlyMap<string, number>;
  /**
   * Gated node name → since when it is gated (ms; its creation time), for the gate
   * deadline. A gated node absent here never expires.
   */
  gatedSince?: ReadonlyMap<string, number>;
  /** Observed jobs by job id. */
  jobs: ReadonlyMap<string, JobObservation>;
  /** Free capacity for new jobs: cluster-wide and per registry host (absent host: unlimited). */
  slots: { cluster: number; registry: ReadonlyMap<string, number> };
  now: number;
  /** Extra problems found before planning (invalid schedule, unreadable pull secret). */
  problems?: { reason: string; message: string }[];
  options: PlanOptions;
}

export interface PlanOptions {
  /** A finally-failed job is retried this long after it failed. */
  failedRetryAfterMs: number;
  /** Cap on `failingNodes` per image in status. */
  maxFailingNodes: number;
  /** Poll interval while jobs are in flight (progress arrives through Redis, not events). */
  progressPollMs: number;
  /** Dockerconfigjson Secrets as `namespace/name`, passed to agents. */
  pullSecrets?: string[];
  /** Operator-wide cap on `startup.gateDeadlineSeconds`, ms. Default 1 h. */
  maxGateDeadlineMs?: number;
}

/** A pending job whose spec-derived settings are to be replaced. */
export interface UpdateJob extends JobRef {
  settings: JobSettings;
}

/** Per node: is every current digest this ImagePrewarm wants there warm? */
export type NodeWarmth = 'warm' | 'pending' | 'failed';

export interface Plan {
  enqueue: EnqueueJob[];
  addOwner: JobRef[];
  /** Jobs this ImagePrewarm owns but no longer wants (digest dropped, node deselected, mode changed). */
  unpin: JobRef[];
  retry: JobRef[];
  /**
   * Pending jobs owned by this ImagePrewarm alone whose bandwidth cap, startup paths or
   * pull secrets differ from the spec now (an agent reads them when it starts the job).
   */
  update: UpdateJob[];
  status: ImagePrewarmStatus;
  requeueAfterMs?: number;
  /** Jobs in flight for this ImagePrewarm after the plan is applied, by registry host. */
  inFlightByRegistry: Map<string, number>;
  /** Targeted nodes and their warmth (every targeted node, gated or not). */
  nodeWarmth: Map<string, NodeWarmth>;
  /**
   * Gated targeted nodes this ImagePrewarm no longer holds: not warm, past its gate
   * deadline (listed in `status.expiredGates` of this plan's status). Empty without
   * `startup.gateNodes`.
   */
  gateExpired: Set<string>;
  /** Newly completed jobs (for the trigger→warm histogram): finishedOn - triggeredAt. */
  completed: {
    jobId: string;
    node: string;
    image: string;
    finishedOn: number;
    triggeredAt: number;
    trigger: string;
  }[];
}

/** All job ids a plan may look at, so the caller knows what to observe. */
export function jobRefsToObserve(
  images: readonly ResolvedImage[],
  nodes: readonly NodeView[],
  modes: readonly PrewarmMode[],
): JobRef[] {
  const digests = new Set<Digest>();
  for (const img of images) {
    if (img.current) digests.add(img.current.digest);
    for (const p of img.previous) digests.add(p.digest as Digest);
    for (const d of img.dropped) digests.add(d);
  }
  const refs: JobRef[] = [];
  for (const node of nodes) {
    for (const digest of digests) {
      for (const mode of modes) refs.push({ node: node.name, jobId: prewarmJobId(digest, node.name, mode) });
    }
  }
  return refs;
}

/** `PW_ERR_X: message` (the agent's `formatFailure`) → reason and message. */
export function splitFailure(failedReason: string | undefined): { reason: string; message: string } {
  const text = failedReason ?? 'unknown failure';
  const f = parseFailure(text);
  if (f) return { reason: f.code, message: f.message.slice(0, 1024) };
  return { reason: 'JobFailed', message: text.slice(0, 1024) };
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/**
 * Sets condition `type`, keeping `lastTransitionTime` when the status did not change
 * (a condition's time says when it last flipped, not when it was last written).
 */
export function setCondition(
  previous: readonly Condition[] | undefined,
  type: ConditionType,
  status: ConditionStatus,
  reason: string,
  message: string,
  generation: number,
  now: number,
): Condition {
  const old = previous?.find((c) => c.type === type);
  return {
    type,
    status,
    reason,
    message: message.slice(0, 4096),
    lastTransitionTime: old && old.status === status ? old.lastTransitionTime : iso(now),
    observedGeneration: generation,
  };
}

function triggerLabel(t: TriggerRecord | undefined): string {
  if (!t) return 'spec';
  return t.source ? `${t.type}:${t.source}` : t.type;
}

/**
 * Computes the desired jobs and the status. Contract:
 * - a job is enqueued only where none exists with that id (idempotent across restarts);
 * - at most `rollout.maxParallelNodes` targeted nodes have jobs in flight, and no more
 *   jobs are started than `slots` allows (cluster-wide and per registry);
 * - startup-gated nodes are served first, then nodes by name;
 * - jobs this ImagePrewarm owns for digests it no longer wants, or on nodes it no longer
 *   targets, are listed in `unpin`; retained digests stay pinned but are not pushed to
 *   nodes that do not already hold them.
 */
export function plan(input: PlanInput): Plan {
  const { spec, owner, now, options } = input;
  const mode: PrewarmMode = spec.mode ?? 'cache';
  const targeted = selectNodes(spec, input.nodes);
  const onNodeJoin = spec.triggers?.onNodeJoin ?? true;
  const maxParallel = spec.rollout?.maxParallelNodes ?? Number.POSITIVE_INFINITY;
  const bandwidth = parseQuantity(spec.rollout?.maxBandwidthPerNode);
  const gatedFirst = [...targeted].sort((a, b) => Number(b.gated) - Number(a.gated));

  const enqueue: EnqueueJob[] = [];
  const addOwner: JobRef[] = [];
  const unpin: JobRef[] = [];
  const retry: JobRef[] = [];
  const update: UpdateJob[] = [];
  const settings = jobSettings({
    ...(options.pullSecrets ? { pullSecrets: options.pullSecrets } : {}),
    ...(bandwidth !== undefined ? { bandwidthBytesPerSec: bandwidth } : {}),
    ...(spec.startup?.paths ? { startupPaths: spec.startup.paths } : {}),
  });
  // Canonical (jobSettings), as observations' settings are: equal settings, equal JSON.
  const settingsJson = JSON.stringify(settings);
  const completed: Plan['completed'] = [];
  const nodeWarmth = new Map<string, NodeWarmth>();
  const inFlightByRegistry = new Map<string, number>();
  let clusterSlots = input.slots.cluster;
  const registrySlots = new Map(input.slots.registry);
  let retryAtMin = Number.POSITIVE_INFINITY;

  const hasOwner = (obs: JobObservation): boolean => obs.owners.some((o) => o.uid === owner.uid);

  // Which (image, node) pairs are wanted for the current digest, and why a targeted node
  // cannot have one (platform missing from the index).
  interface Want {
    img: ResolvedImage;
    digest: Digest;
    platform: string;
    jobId: string;
  }
  const wantsByNode = new Map<string, Want[]>();
  const platformMisses = new Map<string, FailingNode[]>(); // image name → nodes
  const targetsByImage = new Map<string, string[]>();
  for (const node of gatedFirst) {
    const wants: Want[] = [];
    for (const img of input.images) {
      if (!img.current || img.blocked) continue;
      if (!platformAllowed(img.platformFilter, node.platform)) continue;
      const created = input.nodeCreatedAt?.get(node.name);
      // onNodeJoin=false: nodes that appeared after the digest was resolved are left alone.
      if (!onNodeJoin && created !== undefined && created > Date.parse(img.current.resolvedAt)) continue;
      const platform = formatPlatform(node.platform);
      const list = targetsByImage.get(img.name) ?? [];
      list.push(node.name);
      targetsByImage.set(img.name, list);
      if (img.current.platforms && !img.current.platforms.some((p) => platformOffered(p, platform))) {
        const misses = platformMisses.get(img.name) ?? [];
        misses.push({
          node: node.name,
          reason: 'PlatformNotFound',
          message: `${img.name} (${img.current.digest}) offers ${img.current.platforms.join(', ') || 'no platforms'}, node is ${platform}`,
        });
        platformMisses.set(img.name, misses);
        continue;
      }
      wants.push({
        img,
        digest: img.current.digest,
        platform,
        jobId: prewarmJobId(img.current.digest, node.name, mode),
      });
    }
    wantsByNode.set(node.name, wants);
  }

  const missedNodes = new Set<string>();
  for (const list of platformMisses.values()) for (const f of list) missedNodes.add(f.node);

  // Pass 1: what is already there; count nodes in flight (they hold maxParallelNodes slots).
  let nodesInFlight = 0;
  for (const node of gatedFirst) {
    const wants = wantsByNode.get(node.name) ?? [];
    let inFlight = false;
    for (const w of wants) {
      const obs = input.jobs.get(w.jobId);
      if (obs && (obs.state === 'pending' || obs.state === 'active')) {
        inFlight = true;
        inFlightByRegistry.set(w.img.registry, (inFlightByRegistry.get(w.img.registry) ?? 0) + 1);
      }
    }
    if (inFlight) nodesInFlight++;
  }

  // Pass 2: enqueue, own, retry.
  const failingByImage = new Map<string, FailingNode[]>();
  const warmByImage = new Map<string, number>();
  const phasesByImage = new Map<string, Partial<Record<PrewarmPhase, number>>>();
  const countPhase = (image: string, phase: PrewarmPhase) => {
    const m = phasesByImage.get(image) ?? {};
    m[phase] = (m[phase] ?? 0) + 1;
    phasesByImage.set(image, m);
  };
  const bytesFetchedByImage = new Map<string, number>();
  const rewarmsByImage = new Map<string, number>();
  /** Per node not warm: the first thing missing, for the gate deadline's message. */
  const missingByNode = new Map<string, string>();
  const noteMissing = (node: string, what: string): void => {
    if (!missingByNode.has(node)) missingByNode.set(node, what);
  };
  let anyInFlight = false;
  for (const node of gatedFirst) {
    const wants = wantsByNode.get(node.name) ?? [];
    const misses = missedNodes.has(node.name);
    let nodeState: NodeWarmth = misses ? 'failed' : 'warm';
    if (misses) noteMissing(node.name, 'PlatformNotFound');
    let nodeInFlight = wants.some((w) => {
      const s = input.jobs.get(w.jobId)?.state;
      return s === 'pending' || s === 'active';
    });
    for (const w of wants) {
      const obs = input.jobs.get(w.jobId);
      if (!obs) {
        if (nodeState === 'warm') nodeState = 'pending';
        noteMissing(node.name, `${w.img.name} queued`);
        if (!nodeInFlight && nodesInFlight >= maxParallel) continue;
        if (clusterSlots <= 0) continue;
        const regSlots = registrySlots.get(w.img.registry);
        if (regSlots !== undefined && regSlots <= 0) continue;
        clusterSlots--;
        if (regSlots !== undefined) registrySlots.set(w.img.registry, regSlots - 1);
        if (!nodeInFlight) {
          nodeInFlight = true;
          nodesInFlight++;
        }
        const joined = input.nodeCreatedAt?.get(node.name);
        const resolvedAt = Date.parse(w.img.current!.resolvedAt);
        // creationTimestamp has whole seconds: only a node created in a later second than the
        // resolution is known to have joined after it (the label and the histogram's start
        // time; a node created in the same second keeps the digest's trigger).
        const isJoin = joined !== undefined && joined > resolvedAt;
        const data: PrewarmJobData = {
          v: JOB_SCHEMA_VERSION,
          owners: [owner],
          repository: w.img.repository,
          ...(w.img.tag !== undefined ? { tag: w.img.tag } : {}),
          digest: w.digest,
          platform: w.platform,
          node: node.name,
          mode,
          ...settings,
          triggeredAt: isJoin ? joined : w.img.lastTrigger ? Date.parse(w.img.lastTrigger.time) : resolvedAt,
          trigger: isJoin ? 'node-join' : triggerLabel(w.img.lastTrigger),
        };
        enqueue.push({ node: node.name, jobId: w.jobId, data });
        countPhase(w.img.name, 'queued');
        inFlightByRegistry.set(w.img.registry, (inFlightByRegistry.get(w.img.registry) ?? 0) + 1);
        anyInFlight = true;
        continue;
      }
      if (!hasOwner(obs)) addOwner.push({ node: node.name, jobId: w.jobId });
      // A shared job keeps what its first owner asked for; two specs cannot both be honoured.
      const soleOwner = obs.owners.length === 1 && obs.owners[0]?.uid === owner.uid;
      if (
        obs.state === 'pending' &&
        soleOwner &&
        obs.settings &&
        JSON.stringify(jobSettings(obs.settings)) !== settingsJson
      )
        update.push({ node: node.name, jobId: w.jobId, settings });
      countPhase(
        w.img.name,
        obs.state === 'completed'
          ? (obs.result?.phase ?? 'warm')
          : obs.state === 'failed'
            ? 'failed'
            : (obs.progress?.phase ?? (obs.state === 'pending' ? 'queued' : 'resolving')),
      );
      switch (obs.state) {
        case 'completed': {
          warmByImage.set(w.img.name, (warmByImage.get(w.img.name) ?? 0) + 1);
          if (obs.evictions)
            rewarmsByImage.set(w.img.name, (rewarmsByImage.get(w.img.name) ?? 0) + obs.evictions);
          const r = obs.result;
          if (r) {
            bytesFetchedByImage.set(
              w.img.name,
              (bytesFetchedByImage.get(w.img.name) ?? 0) + r.bytesFromRegistry + r.bytesFromPeers,
            );
          }
          if (obs.finishedOn !== undefined && obs.triggeredAt !== undefined) {
            completed.push({
              jobId: w.jobId,
              node: node.name,
              image: w.img.name,
              finishedOn: obs.finishedOn,
              triggeredAt: obs.triggeredAt,
              trigger: (obs.trigger ?? 'spec').split(':')[0] ?? 'spec',
            });
          }
          break;
        }
        case 'failed': {
          nodeState = 'failed';
          const { reason, message } = splitFailure(obs.failedReason);
          noteMissing(node.name, `${w.img.name} failed: ${reason}: ${message.slice(0, 256)}`);
          const list = failingByImage.get(w.img.name) ?? [];
          list.push({
            node: node.name,
            reason,
            message,
            ...(obs.finishedOn ? { time: iso(obs.finishedOn) } : {}),
          });
          failingByImage.set(w.img.name, list);
          const retryAt = (obs.finishedOn ?? now) + options.failedRetryAfterMs;
          if (retryAt <= now) retry.push({ node: node.name, jobId: w.jobId });
          else retryAtMin = Math.min(retryAtMin, retryAt);
          break;
        }
        default:
          if (nodeState === 'warm') nodeState = 'pending';
          noteMissing(
            node.name,
            `${w.img.name} ${obs.progress?.phase ?? (obs.state === 'pending' ? 'queued' : 'resolving')}`,
          );
          anyInFlight = true;
      }
    }
    // An image without a digest yet cannot be warm anywhere.
    if (nodeState === 'warm' && input.images.some((i) => !i.current)) {
      nodeState = 'pending';
      noteMissing(node.name, `${input.images.find((i) => !i.current)?.name} has no digest yet`);
    }
    nodeWarmth.set(node.name, nodeState);
  }

  // Unpin: every observed job this ImagePrewarm owns that it no longer wants.
  const wantedIds = new Set<string>();
  for (const wants of wantsByNode.values()) for (const w of wants) wantedIds.add(w.jobId);
  const keptIds = new Set<string>(wantedIds);
  const targetedNames = new Set(targeted.map((n) => n.name));
  for (const img of input.images) {
    if (img.blocked) continue;
    for (const p of img.previous) {
      for (const name of targetedNames) keptIds.add(prewarmJobId(p.digest as Digest, name, mode));
    }
  }
  for (const [jobId, obs] of input.jobs) {
    if (keptIds.has(jobId) || !hasOwner(obs)) continue;
    const node = jobNode(jobId);
    if (node !== undefined) unpin.push({ node, jobId });
  }
  // A retained digest stays pinned; make sure this ImagePrewarm is among its owners.
  for (const jobId of keptIds) {
    if (wantedIds.has(jobId)) continue;
    const obs = input.jobs.get(jobId);
    if (obs && !hasOwner(obs) && obs.state === 'completed') {
      const node = jobNode(jobId);
      if (node !== undefined) addOwner.push({ node, jobId });
    }
  }

  // Gate deadline (fail open): a gated node not warm this long after it joined is no longer
  // held by this ImagePrewarm. It is recorded in the status (written before the node
  // reconcile may act on it) and stays listed until the node is warm or leaves the selection.
  const gateExpired = new Set<string>();
  const expiredGates: ExpiredGate[] = [];
  const gateDeadline = gateDeadlineMs(spec, options.maxGateDeadlineMs);
  if (spec.startup?.gateNodes === true) {
    const before = new Map((input.status?.expiredGates ?? []).map((e) => [e.node, e] as const));
    for (const node of targeted) {
      if (nodeWarmth.get(node.name) === 'warm') continue;
      const old = before.get(node.name);
      let time = old?.time;
      if (node.gated) {
        const since = input.gatedSince?.get(node.name);
        if (since === undefined) continue;
        const at = since + gateDeadline;
        if (now < at) {
          retryAtMin = Math.min(retryAtMin, at);
          continue;
        }
        gateExpired.add(node.name);
        time ??= iso(at);
      }
      if (time === undefined) continue;
      expiredGates.push({
        node: node.name,
        time,
        message: `not warm ${Math.round(gateDeadline / 1000)}s after joining; startup taint released; missing: ${missingByNode.get(node.name) ?? 'unknown'}`,
      });
    }
    expiredGates.sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0));
  }

  // Status.
  const imageStatuses: ImageStatus[] = input.images.map((img) => {
    const failing = [...(platformMisses.get(img.name) ?? []), ...(failingByImage.get(img.name) ?? [])].sort(
      (a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0),
    );
    const bytes = img.current?.bytesByPlatform
      ? Math.max(0, ...Object.values(img.current.bytesByPlatform))
      : undefined;
    const s: ImageStatus = {
      name: img.name,
      repository: img.repository,
      ...(img.tag !== undefined ? { tag: img.tag } : {}),
      ...(img.current
        ? {
            digest: img.current.digest,
            resolvedAt: img.current.resolvedAt,
            ...(img.current.mediaType ? { mediaType: img.current.mediaType } : {}),
            ...(img.current.platforms ? { platforms: img.current.platforms } : {}),
          }
        : {}),
      ...(bytes !== undefined && bytes > 0 ? { bytes } : {}),
      bytesFetched: bytesFetchedByImage.get(img.name) ?? 0,
      targetNodes: img.current ? (targetsByImage.get(img.name)?.length ?? 0) : 0,
      warmNodes: warmByImage.get(img.name) ?? 0,
      ...(img.lastTrigger ? { lastTrigger: img.lastTrigger } : {}),
      previousDigests: img.previous,
      nodePhases: phasesByImage.get(img.name) ?? {},
      failingNodes: failing.slice(0, options.maxFailingNodes),
      rewarms: rewarmsByImage.get(img.name) ?? 0,
    };
    return s;
  });

  const targetNodes = targeted.length;
  const warmNodes = [...nodeWarmth.values()].filter((w) => w === 'warm').length;
  const failingNodeNames = new Set<string>();
  for (const s of imageStatuses) for (const f of s.failingNodes ?? []) failingNodeNames.add(f.node);
  const failedCount = [...nodeWarmth.values()].filter((w) => w === 'failed').length;
  const unresolved = input.images.filter((i) => !i.current);
  const resolveErrors = input.images.filter((i) => i.error);
  const blocked = input.images.filter((i) => i.blocked && i.current);

  const problems: { reason: string; message: string }[] = [];
  for (const i of resolveErrors)
    problems.push({ reason: i.error!.reason, message: `${i.name}: ${i.error!.message}` });
  for (const i of blocked) problems.push(i.blocked!);
  if (expiredGates.length > 0) {
    const sample = expiredGates.slice(0, 3).map((e) => `${e.node} (${e.message})`);
    problems.push({
      reason: 'GateDeadlineExceeded',
      message: `gate deadline (${Math.round(gateDeadline / 1000)}s) passed on ${expiredGates.length} node(s) before the images were warm, startup taint released (fail open): ${sample.join('; ')}${expiredGates.length > 3 ? '; ...' : ''}; see status.expiredGates`,
    });
  }
  if (failedCount > 0) {
    const sample = [...failingNodeNames].slice(0, 3).join(', ');
    problems.push({
      reason: 'NodesFailing',
      message: `${failedCount} node(s) failed to warm (${sample}${failingNodeNames.size > 3 ? ', ...' : ''}); see status.images[].failingNodes`,
    });
  }
  const deadline = spec.rollout?.deadlineSeconds;
  if (deadline !== undefined && warmNodes < targetNodes) {
    const started = Math.min(
      ...input.images.map((i) => Date.parse(i.lastTrigger?.time ?? i.current?.resolvedAt ?? iso(now))),
    );
    if (now - started > deadline * 1000) {
      problems.push({
        reason: 'RolloutDeadlineExceeded',
        message: `${warmNodes}/${targetNodes} nodes warm ${Math.round((now - started) / 1000)}s after the trigger (deadline ${deadline}s)`,
      });
      retryAtMin = Math.min(retryAtMin, now + options.progressPollMs * 5);
    } else {
      retryAtMin = Math.min(retryAtMin, started + deadline * 1000 + 1);
    }
  }
  problems.push(...(input.problems ?? []));

  const prevConds = input.status?.conditions;
  const gen = input.generation;
  const progressing =
    anyInFlight || enqueue.length > 0 || (warmNodes < targetNodes && failedCount < targetNodes - warmNodes);
  let readyReason: string;
  let readyMessage: string;
  const ready =
    unresolved.length === 0 && blocked.length === 0 && warmNodes === targetNodes && failedCount === 0;
  if (ready) {
    readyReason = targetNodes === 0 ? 'NoTargetNodes' : 'AllNodesWarm';
    readyMessage =
      targetNodes === 0
        ? 'no Ready, schedulable node matches the selection'
        : `${warmNodes}/${targetNodes} nodes warm`;
  } else if (unresolved.length > 0) {
    const first = unresolved[0]!;
    readyReason = first.error?.reason ?? first.waiting?.reason ?? 'Resolving';
    readyMessage = `${first.name}: ${first.error?.message ?? first.waiting?.message ?? 'resolving'}`;
  } else if (blocked.length > 0) {
    readyReason = blocked[0]!.blocked!.reason;
    readyMessage = blocked.map((i) => i.blocked!.message).join('; ');
  } else if (failedCount > 0 && !progressing) {
    readyReason = 'NodesFailing';
    readyMessage = `${warmNodes}/${targetNodes} nodes warm, ${failedCount} failed`;
  } else {
    readyReason = 'RollingOut';
    readyMessage = `${warmNodes}/${targetNodes} nodes warm`;
  }
  const conditions: Condition[] = [
    setCondition(prevConds, 'Ready', ready ? 'True' : 'False', readyReason, readyMessage, gen, now),
    setCondition(
      prevConds,
      'Progressing',
      progressing ? 'True' : 'False',
      progressing ? 'RollingOut' : failedCount > 0 ? 'Stalled' : 'Complete',
      progressing
        ? `${warmNodes}/${targetNodes} nodes warm, ${nodesInFlight} in flight`
        : failedCount > 0
          ? `${failedCount} node(s) failed; retried ${Math.round(options.failedRetryAfterMs / 1000)}s after failing`
          : 'rollout complete',
      gen,
      now,
    ),
    problems.length > 0
      ? setCondition(
          prevConds,
          'Degraded',
          'True',
          problems[0]!.reason,
          problems.map((p) => p.message).join('; '),
          gen,
          now,
        )
      : setCondition(prevConds, 'Degraded', 'False', 'AsExpected', 'no problems', gen, now),
  ];

  const status: ImagePrewarmStatus = {
    ...(input.status ?? {}),
    observedGeneration: gen,
    imageCount: spec.images.length,
    targetNodes,
    warmNodes,
    warm: `${warmNodes}/${targetNodes}`,
    conditions,
    images: imageStatuses,
  };
  if (expiredGates.length > 0) status.expiredGates = expiredGates.slice(0, options.maxFailingNodes);
  else delete status.expiredGates;

  let requeueAfterMs: number | undefined;
  if (progressing || anyInFlight) requeueAfterMs = options.progressPollMs;
  if (Number.isFinite(retryAtMin)) {
    const wait = Math.max(options.progressPollMs, retryAtMin - now);
    requeueAfterMs = requeueAfterMs === undefined ? wait : Math.min(requeueAfterMs, wait);
  }

  return {
    enqueue,
    addOwner,
    unpin,
    retry,
    update,
    status,
    ...(requeueAfterMs !== undefined ? { requeueAfterMs } : {}),
    inFlightByRegistry,
    nodeWarmth,
    gateExpired,
    completed,
  };
}

/** Whether an index platform string serves a node platform string (arm64 variant folding). */
function platformOffered(offered: string, node: string): boolean {
  if (offered === node) return true;
  try {
    return platformMatches(parsePlatform(offered), parsePlatform(node), false);
  } catch {
    return false;
  }
}

/** The node part of a job id (`<hex>.<node>.<mode>`; node names may contain dots). */
export function jobNode(jobId: string): string | undefined {
  const first = jobId.indexOf('.');
  const last = jobId.lastIndexOf('.');
  if (first < 0 || last <= first) return undefined;
  return jobId.slice(first + 1, last);
}

/** The digest part of a job id. */
export function jobDigest(jobId: string): Digest | undefined {
  const hex = jobId.slice(0, jobId.indexOf('.'));
  return /^[a-f0-9]{64}$/.test(hex) ? (`sha256:${hex}` as Digest) : undefined;
}

export { digestHex };
