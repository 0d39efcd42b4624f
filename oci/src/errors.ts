/**
 * Errors shared by every kube-prewarm component. Callers branch on `code`, never on
 * the message. `status` is the HTTP status the error maps to where one applies
 * (for the mirror and the webhooks); `retryable` says whether the same call may
 * succeed later (network faults, 5xx, 429) or never will (unknown manifest, bad digest).
 */
export const ErrorCodes = {
  /** A reference or digest string is malformed (also: path traversal attempts). */
  INVALID_REFERENCE: 'PW_ERR_INVALID_REFERENCE',
  INVALID_DIGEST: 'PW_ERR_INVALID_DIGEST',
  /** Content did not hash to the digest that names it. */
  DIGEST_MISMATCH: 'PW_ERR_DIGEST_MISMATCH',
  /** Content was shorter or longer than its descriptor says. */
  SIZE_MISMATCH: 'PW_ERR_SIZE_MISMATCH',
  MANIFEST_UNKNOWN: 'PW_ERR_MANIFEST_UNKNOWN',
  MANIFEST_INVALID: 'PW_ERR_MANIFEST_INVALID',
  MANIFEST_TOO_LARGE: 'PW_ERR_MANIFEST_TOO_LARGE',
  BLOB_UNKNOWN: 'PW_ERR_BLOB_UNKNOWN',
  /** No manifest in an index matches the requested platform. */
  PLATFORM_NOT_FOUND: 'PW_ERR_PLATFORM_NOT_FOUND',
  UNSUPPORTED_MEDIA_TYPE: 'PW_ERR_UNSUPPORTED_MEDIA_TYPE',
  /** The registry refused our credentials (401 after auth, or 403). */
  AUTH_DENIED: 'PW_ERR_AUTH_DENIED',
  /** The token endpoint failed or answered garbage. */
  AUTH_FAILED: 'PW_ERR_AUTH_FAILED',
  /** The registry answered something unexpected (after retries for 5xx/429). */
  REGISTRY_ERROR: 'PW_ERR_REGISTRY',
  /** Connection refused/reset/timeout, after retries. */
  NETWORK: 'PW_ERR_NETWORK',
  TOO_MANY_REDIRECTS: 'PW_ERR_TOO_MANY_REDIRECTS',
  /**
   * The egress policy (oci/src/egress-policy.ts) refused a request before it was sent: a
   * registry not in the allowed list, an address in a loopback / private / link-local /
   * metadata range, a redirect or token realm that may not be followed, plain HTTP to a
   * host not configured for it. Never retryable: the same request is refused again.
   * `detail.reason` says which rule (`EgressDenial`), `detail.host` the host refused.
   */
  EGRESS_DENIED: 'PW_ERR_EGRESS_DENIED',
  /** The local disk is full (ENOSPC/EDQUOT) or over the store's budget. */
  DISK_FULL: 'PW_ERR_DISK_FULL',
  STORE_CORRUPT: 'PW_ERR_STORE_CORRUPT',
  ABORTED: 'PW_ERR_ABORTED',
  INVALID_CONFIG: 'PW_ERR_INVALID_CONFIG',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export interface PrewarmErrorOptions {
  cause?: unknown;
  /** HTTP status this maps to (mirror, webhooks) or that the registry answered. */
  status?: number;
  /** True when the same operation may succeed if tried again later. */
  retryable?: boolean;
  /** Machine-readable details (never secrets). */
  detail?: Record<string, unknown>;
}

export class PrewarmError extends Error {
  readonly code: ErrorCode;
  readonly status: number | undefined;
  readonly retryable: boolean;
  readonly detail: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: PrewarmErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'PrewarmError';
    this.code = code;
    this.status = options.status;
    this.retryable = options.retryable ?? false;
    this.detail = options.detail;
  }
}

export function isPrewarmError(err: unknown, code?: ErrorCode): err is PrewarmError {
  return err instanceof PrewarmError && (code === undefined || err.code === code);
}

const DISK_FULL_ERRNO = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

/** Maps a filesystem error to PW_ERR_DISK_FULL where it is one; returns other errors unchanged. */
export function classifyFsError(err: unknown, what: string): unknown {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code !== undefined && DISK_FULL_ERRNO.has(code)) {
    return new PrewarmError(ErrorCodes.DISK_FULL, `disk full while ${what} (${code})`, { cause: err });
  }
  return err;
}

/** An AbortSignal's reason as a PrewarmError, for uniform handling by callers. */
export function abortError(signal: AbortSignal | undefined): PrewarmError {
  const reason: unknown = signal?.reason;
  if (reason instanceof PrewarmError) return reason;
  return new PrewarmError(ErrorCodes.ABORTED, 'operation aborted', { cause: reason });
}
