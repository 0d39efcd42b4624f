/**
 * Which nodes an ImagePrewarm targets. Pure functions over NodeView (kube/node-view.ts),
 * with the scheduler's semantics where they overlap (nodeSelector, required node
 * affinity, NoSchedule/NoExecute taints vs tolerations), so "warm here" means "a pod with
 * the same constraints could land here".
 */
import { formatPlatform, type Platform, parsePlatform, platformMatches } from '../../../oci/src/platform.js';
import type {
  ImagePrewarmSpec,
  NodeSelectorRequirement,
  NodeSelectorTerm,
  Toleration,
} from '../api/types.js';
import { isStartupTaint, type NodeView, type Taint } from '../kube/node-view.js';

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
