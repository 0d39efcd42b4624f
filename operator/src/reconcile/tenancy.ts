/**
 * The operator's tenancy policy, as pure functions: what a namespaced ImagePrewarm may do
 * that reaches beyond its namespace. Two rules (issue 11):
 *
 * - **Gating nodes** (`startup.gateNodes`) keeps a startup taint on every node the
 *   ImagePrewarm targets: only namespaces the operator lists may do it
 *   (`KUBE_PREWARM_GATE_NODES_NAMESPACES`). A refused ImagePrewarm is reconciled as if it
 *   did not gate (its nodes are never held for it) and says why (`GateNodesNotAllowed`).
 * - **Pinned bytes**: a digest an ImagePrewarm wants is pinned on every node it targets and
 *   never evicted by the agents' disk budget. Per namespace the sum of the sizes of the
 *   current digests its ImagePrewarms want (each digest once; the largest platform's
 *   compressed size, which is what the operator learns from the manifests) is capped
 *   (`KUBE_PREWARM_PINNED_QUOTA`, per namespace `KUBE_PREWARM_PINNED_QUOTA_NAMESPACES`).
 *   Entries are admitted oldest first (ImagePrewarm creation time, then name, then spec
 *   order); the first that does not fit, and every newer one, is refused
 *   (`QuotaExceeded`): neither warmed nor pinned, so it takes no disk. An entry whose size
 *   is not known yet cannot be checked: it is refused itself (fail closed) and not counted,
 *   without holding back newer entries. Digests an entry retains after its tag moved
 *   (`retain`) are not counted.
 *
 * Every replica computes the same admissions from the same inputs (the ImagePrewarms in
 * its cache and the sizes in their status), so a namespace's entries never disagree about
 * who is in.
 */
export interface TenancyPolicy {
  /** Namespaces whose ImagePrewarms may gate nodes; `*` = all. */
  gateNodesNamespaces: readonly string[];
  /** Default cap on a namespace's pinned bytes; 0 = none. */
  pinnedQuotaBytes: number;
  /** Per-namespace caps overriding the default (0 = none). */
  pinnedQuotaNamespaces?: Readonly<Record<string, number>>;
}

/** No restriction at all (the controller's default when no policy is given). */
export const OPEN_POLICY: TenancyPolicy = { gateNodesNamespaces: ['*'], pinnedQuotaBytes: 0 };

/** Whether ImagePrewarms of `namespace` may hold nodes with `startup.gateNodes`. */
export function gateNodesAllowed(policy: TenancyPolicy, namespace: string): boolean {
  return policy.gateNodesNamespaces.some((n) => n === '*' || n === namespace);
}

/** The reason a refused gating ImagePrewarm gets. */
export function gateNodesRefusal(namespace: string): { reason: string; message: string } {
  return {
    reason: 'GateNodesNotAllowed',
    message: `startup.gateNodes is not allowed in namespace ${namespace} (operator setting KUBE_PREWARM_GATE_NODES_NAMESPACES): no node is held for this ImagePrewarm; its images are warmed as usual`,
  };
}

/** The cap on `namespace`'s pinned bytes; 0 = none. */
export function pinnedQuotaFor(policy: TenancyPolicy, namespace: string): number {
  return policy.pinnedQuotaNamespaces?.[namespace] ?? policy.pinnedQuotaBytes;
}

/** One image entry of an ImagePrewarm of the namespace, as the quota sees it. */
export interface QuotaEntry {
  /** `namespace/name` of the ImagePrewarm. */
  prewarm: string;
  /** Its creation time (ms). */
  created: number;
  /** Position in `spec.images`. */
  index: number;
  /** `imageName` of the entry. */
  name: string;
  /** Current digest; undefined: nothing to pin yet (not counted, not refused). */
  digest?: string;
  /** Size of the digest (largest platform, compressed); undefined: not known yet. */
  bytes?: number;
}

/** Key of an entry in `quotaRefusals`' result. */
export function quotaKey(prewarm: string, name: string): string {
  return `${prewarm}\n${name}`;
}

/**
 * The entries over the namespace's quota, by `quotaKey`, with their status reason and
 * message (see the module comment for the rule). `quotaBytes` 0: none.
 */
export function quotaRefusals(
  entries: readonly QuotaEntry[],
  quotaBytes: number,
): Map<string, { reason: string; message: string }> {
  const out = new Map<string, { reason: string; message: string }>();
  if (!(quotaBytes > 0)) return out;
  const ordered = [...entries].sort(
    (a, b) => a.created - b.created || cmp(a.prewarm, b.prewarm) || a.index - b.index,
  );
  const admitted = new Set<string>();
  let used = 0;
  let cutoff: string | undefined;
  for (const e of ordered) {
    if (e.digest === undefined) continue;
    if (cutoff === undefined && admitted.has(e.digest)) continue;
    if (cutoff === undefined && e.bytes === undefined) {
      // Refused itself, but no cutoff: a size missing for a while (the registry did not
      // answer) must not unpin the namespace's newer entries.
      out.set(quotaKey(e.prewarm, e.name), {
        reason: 'QuotaExceeded',
        message: `${e.name}: not warmed or pinned: its size is not known yet, so it cannot be checked against the namespace's pinned-image quota of ${formatSize(quotaBytes)}`,
      });
      continue;
    }
    if (cutoff === undefined && used + (e.bytes as number) > quotaBytes)
      cutoff = `${e.name} (${e.prewarm}, ${formatSize(e.bytes as number)}) would bring the namespace to ${formatSize(used + (e.bytes as number))}`;
    if (cutoff === undefined) {
      used += e.bytes as number;
      admitted.add(e.digest);
      continue;
    }
    out.set(quotaKey(e.prewarm, e.name), {
      reason: 'QuotaExceeded',
      message: `${e.name}: not warmed or pinned: the namespace's pinned images may use ${formatSize(quotaBytes)} (${formatSize(used)} used by older entries); ${cutoff}`,
    });
  }
  return out;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** `1.5 GiB`, `300 MiB`, `12 B`. */
export function formatSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v >= 10 ? 0 : 1)} ${units[u]}`;
}
