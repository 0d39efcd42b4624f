/**
 * Which nodes an ImagePrewarm targets. Pure functions over a slim view of Node objects,
 * with the scheduler's semantics where they overlap (nodeSelector, required node
 * affinity, NoSchedule/NoExecute taints vs tolerations), so "warm here" means "a pod with
 * the same constraints could land here".
 */
import type { V1Node } from '@kubernetes/client-node';
import { formatPlatform, type Platform, parsePlatform, platformMatches } from '../../../oci/src/platform.js';
import {
  type ImagePrewarmSpec,
  type NodeSelectorRequirement,
  type NodeSelectorTerm,
  STARTUP_TAINT_EFFECT,
  STARTUP_TAINT_KEY,
  type Toleration,
} from '../api/types.js';

/** Label naming a platform variant (`v7`, `v8`); Node status.nodeInfo has none. */
export const VARIANT_LABEL = 'kube-prewarm.io/platform-variant';

export interface Taint {
  key: string;
  value?: string;
  effect: string;
}

/** The parts of a Node the operator decides on. */
export interface NodeView {
  name: string;
  labels: Record<string, string>;
  taints: Taint[];
  /** Ready condition is True. */
  ready: boolean;
  /** `spec.unschedulable` (cordoned). */
  unschedulable: boolean;
  platform: Platform;
  /** Carries the startup taint (`kube-prewarm.io/warming:NoSchedule`). */
  gated: boolean;
  /** metadata.resourceVersion (guards the taint removal). */
  resourceVersion?: string;
  /** metadata.creationTimestamp, ms. */
  createdAt?: number;
}

/**
 * Slims a Node object (the node cache keeps only this). Platform from status.nodeInfo,
 * falling back to the well-known labels. Accepts typed objects and raw watch JSON.
 */
export function nodeView(node: V1Node): NodeView {
  const labels = node.metadata?.labels ?? {};
  const taints: Taint[] = (node.spec?.taints ?? []).map((t) => ({
    key: t.key,
    effect: t.effect,
    ...(t.value !== undefined ? { value: t.value } : {}),
  }));
  const ready = (node.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
  const os = node.status?.nodeInfo?.operatingSystem || labels['kubernetes.io/os'] || 'linux';
  const architecture = node.status?.nodeInfo?.architecture || labels['kubernetes.io/arch'] || 'amd64';
  const variant = labels[VARIANT_LABEL];
  const created = node.metadata?.creationTimestamp;
  return {
    name: node.metadata?.name ?? '',
    labels,
    taints,
    ready,
    unschedulable: node.spec?.unschedulable === true,
    platform: { os, architecture, ...(variant ? { variant } : {}) },
    gated: taints.some((t) => isStartupTaint(t)),
    ...(node.metadata?.resourceVersion ? { resourceVersion: node.metadata.resourceVersion } : {}),
    ...(created ? { createdAt: new Date(created).getTime() } : {}),
  };
}

export function isStartupTaint(t: Taint): boolean {
  return t.key === STARTUP_TAINT_KEY && t.effect === STARTUP_TAINT_EFFECT;
}

/** Kubernetes toleration semantics (core/v1 Toleration.ToleratesTaint). */
export function tolerates(tol: Toleration, taint: Taint): boolean {
  if (tol.effect && tol.effect !== taint.effect) return false;
  if (tol.key && tol.key !== taint.key) return false;
  const op = tol.operator ?? 'Equal';
  if (op === 'Exists') return true;
  // An empty key with Equal matches nothing (the CRD rejects it anyway).
  if (!tol.key) return false;
  return (tol.value ?? '') === (taint.value ?? '');
}

/**
 * True when every NoSchedule/NoExecute taint is tolerated. The startup taint is exempt:
 * warming a gated node is the point of it.
 */
export function taintsTolerated(taints: readonly Taint[], tolerations: readonly Toleration[] = []): boolean {
  return taints.every(
    (t) =>
      t.effect === 'PreferNoSchedule' || isStartupTaint(t) || tolerations.some((tol) => tolerates(tol, t)),
  );
}

function requirementMatches(req: NodeSelectorRequirement, value: string | undefined): boolean {
  const values = req.values ?? [];
  switch (req.operator) {
    case 'In':
      return value !== undefined && values.includes(value);
    case 'NotIn':
      return value === undefined || !values.includes(value);
    case 'Exists':
      return value !== undefined;
    case 'DoesNotExist':
      return value === undefined;
    case 'Gt':
    case 'Lt': {
      if (value === undefined || !/^-?\d+$/.test(value) || values.length !== 1) return false;
      const have = Number(value);
      const want = Number(values[0]);
      return req.operator === 'Gt' ? have > want : have < want;
    }
    default:
      return false;
  }
}

/** A nodeSelectorTerm: all expressions AND all fields (only `metadata.name` is a field). */
export function termMatches(term: NodeSelectorTerm, node: Pick<NodeView, 'name' | 'labels'>): boolean {
  const exprs = term.matchExpressions ?? [];
  const fields = term.matchFields ?? [];
  // An empty term matches nothing, as in the scheduler.
  if (exprs.length === 0 && fields.length === 0) return false;
  return (
    exprs.every((r) => requirementMatches(r, node.labels[r.key])) &&
    fields.every((r) => requirementMatches(r, r.key === 'metadata.name' ? node.name : undefined))
  );
}

/** nodeSelector and required node affinity (terms ORed), ignoring readiness and taints. */
export function matchesPlacement(spec: ImagePrewarmSpec, node: Pick<NodeView, 'name' | 'labels'>): boolean {
  for (const [k, v] of Object.entries(spec.nodeSelector ?? {})) {
    if (node.labels[k] !== v) return false;
  }
  const terms =
    spec.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms;
  if (terms && terms.length > 0 && !terms.some((t) => termMatches(t, node))) return false;
  return true;
}

/** Why a node is not targeted, or undefined when it is. */
export type Exclusion = 'not-ready' | 'cordoned' | 'placement' | 'taint';

export function exclusion(spec: ImagePrewarmSpec, node: NodeView): Exclusion | undefined {
  if (!matchesPlacement(spec, node)) return 'placement';
  if (!node.ready) return 'not-ready';
  // Cordoned nodes are skipped so the autoscaler can scale them in without us pulling.
  if (node.unschedulable) return 'cordoned';
  if (!taintsTolerated(node.taints, spec.tolerations)) return 'taint';
  return undefined;
}

/** Nodes the spec targets: placement matches, Ready, schedulable, taints tolerated. Sorted by name. */
export function selectNodes(spec: ImagePrewarmSpec, nodes: readonly NodeView[]): NodeView[] {
  return nodes
    .filter((n) => exclusion(spec, n) === undefined)
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Whether an image entry's `platforms` filter admits a node. */
export function platformAllowed(filter: readonly string[] | undefined, platform: Platform): boolean {
  if (!filter || filter.length === 0) return true;
  return filter.some((p) => {
    try {
      return platformMatches(parsePlatform(p), platform, false);
    } catch {
      return false;
    }
  });
}

export { formatPlatform };
