/** Kubernetes quantities (no Kubernetes client here: the webhook receiver loads this through config.ts). */

/**
 * Parses `50Mi`, `200M`, `1.5Gi` (bytes per second). Returns undefined for anything the CRD
 * would have refused.
 */
export function parseQuantity(q: string | undefined): number | undefined {
  if (q === undefined) return undefined;
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|K|M|G|T)?$/.exec(q);
  if (!m) return undefined;
  const mult: Record<string, number> = {
    '': 1,
    Ki: 1024,
    Mi: 1024 ** 2,
    Gi: 1024 ** 3,
    Ti: 1024 ** 4,
    k: 1e3,
    K: 1e3,
    M: 1e6,
    G: 1e9,
    T: 1e12,
  };
  return Math.floor(Number(m[1]) * (mult[m[2] ?? ''] ?? 1));
}
