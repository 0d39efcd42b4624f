/**
 * The operator's projection of a Node object: what the node cache keeps (`KubePort.nodes`)
 * and what selection and gating decide on. Owned by kube/ (the port produces it);
 * reconcile/nodes.ts holds the selection logic over it.
 */
import type { V1Node } from '@kubernetes/client-node';
import type { Platform } from '../../../oci/src/platform.js';
import { STARTUP_TAINT_EFFECT, STARTUP_TAINT_KEY } from '../api/types.js';

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
