/**
 * Reading a registry pull Secret through the Kubernetes API, the part the operator
 * (ImagePrewarm `pullSecrets`) and the agent (per-job pull secrets) share. Structural
 * types only: neither side's @kubernetes/client-node objects are imported here.
 */

/** A Secret as credential parsing needs it: its type and decoded data. */
export interface SecretData {
  type: string;
  data: Record<string, Buffer>;
  /**
   * Its metadata annotations (absent: none). The operator's pull-credential copies say
   * there whom they were made for (`PULL_CREDENTIALS_ANNOTATIONS`), which the agent checks.
   */
  annotations?: Record<string, string>;
}

/** Label and annotations of the operator's per-ImagePrewarm pull-credential copies. */
export const PULL_CREDENTIALS_LABEL = 'prewarm.kube-prewarm.io/pull-credentials-for';
export const PULL_CREDENTIALS_ANNOTATIONS = {
  /** `namespace/name` of the ImagePrewarm the copy was made for. */
  owner: 'prewarm.kube-prewarm.io/owner',
  /** Its uid (also the label's value). */
  ownerUid: 'prewarm.kube-prewarm.io/owner-uid',
  /** Comma-separated registry hosts the copy holds credentials for. */
  registries: 'prewarm.kube-prewarm.io/registries',
  /** ISO time after which the copy must not be used (the operator replaces it before). */
  expires: 'prewarm.kube-prewarm.io/expires',
} as const;

/**
 * The HTTP status of an error thrown by @kubernetes/client-node (its ApiException has
 * `code`; older shapes `statusCode`); undefined for anything else.
 */
export function kubeApiStatus(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown } | null;
  if (typeof e?.code === 'number') return e.code;
  if (typeof e?.statusCode === 'number') return e.statusCode;
  return undefined;
}

/**
 * Reads a Secret with `read` (e.g. CoreV1Api.readNamespacedSecret) and decodes its
 * base64 values. Undefined when the API answers 404; other errors are rethrown.
 */
export async function readSecretData(
  read: () => Promise<{
    type?: string;
    data?: Record<string, string>;
    metadata?: { annotations?: Record<string, string> };
  }>,
): Promise<SecretData | undefined> {
  try {
    const s = await read();
    const data: Record<string, Buffer> = {};
    for (const [k, v] of Object.entries(s.data ?? {})) data[k] = Buffer.from(v, 'base64');
    const annotations = s.metadata?.annotations;
    return { type: s.type ?? 'Opaque', data, ...(annotations ? { annotations } : {}) };
  } catch (err) {
    if (kubeApiStatus(err) === 404) return undefined;
    throw err;
  }
}
