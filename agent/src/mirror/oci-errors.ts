import { type ErrorCode, ErrorCodes, isPrewarmError } from '../../../oci/src/errors.js';

/**
 * Error codes of the OCI distribution spec (and distribution's `UNAVAILABLE`), as the
 * mirror puts them in `{"errors":[{"code", "message", "detail"}]}` bodies.
 */
export type OciErrorCode =
  | 'BLOB_UNKNOWN'
  | 'MANIFEST_UNKNOWN'
  | 'MANIFEST_INVALID'
  | 'NAME_INVALID'
  | 'NAME_UNKNOWN'
  | 'TAG_INVALID'
  | 'DIGEST_INVALID'
  | 'UNSUPPORTED'
  | 'UNAVAILABLE'
  | 'UNKNOWN';

/** An answer the mirror gives instead of content: HTTP status plus one OCI error. */
export class MirrorHttpError extends Error {
  readonly status: number;
  readonly ociCode: OciErrorCode;
  readonly detail: unknown;

  constructor(status: number, ociCode: OciErrorCode, message: string, detail?: unknown, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'MirrorHttpError';
    this.status = status;
    this.ociCode = ociCode;
    this.detail = detail;
  }
}

/** The JSON body of an OCI error response. */
export function ociErrorBody(code: OciErrorCode, message: string, detail?: unknown): string {
  return JSON.stringify({ errors: [{ code, message, ...(detail === undefined ? {} : { detail }) }] });
}

const BY_CODE: Partial<Record<ErrorCode, [number, OciErrorCode]>> = {
  [ErrorCodes.INVALID_REFERENCE]: [404, 'NAME_INVALID'],
  [ErrorCodes.INVALID_DIGEST]: [400, 'DIGEST_INVALID'],
  [ErrorCodes.MANIFEST_UNKNOWN]: [404, 'MANIFEST_UNKNOWN'],
  [ErrorCodes.BLOB_UNKNOWN]: [404, 'BLOB_UNKNOWN'],
  [ErrorCodes.PLATFORM_NOT_FOUND]: [404, 'MANIFEST_UNKNOWN'],
  // The upstream served bad content, or we could not reach or use it: the client should
  // go to the next host (the upstream itself), which a 5xx tells containerd to do.
  [ErrorCodes.DIGEST_MISMATCH]: [502, 'UNKNOWN'],
  [ErrorCodes.SIZE_MISMATCH]: [502, 'UNKNOWN'],
  [ErrorCodes.MANIFEST_INVALID]: [502, 'MANIFEST_INVALID'],
  [ErrorCodes.MANIFEST_TOO_LARGE]: [502, 'MANIFEST_INVALID'],
  [ErrorCodes.UNSUPPORTED_MEDIA_TYPE]: [502, 'MANIFEST_INVALID'],
  [ErrorCodes.AUTH_DENIED]: [503, 'UNAVAILABLE'],
  [ErrorCodes.AUTH_FAILED]: [503, 'UNAVAILABLE'],
  [ErrorCodes.REGISTRY_ERROR]: [503, 'UNAVAILABLE'],
  [ErrorCodes.NETWORK]: [503, 'UNAVAILABLE'],
  [ErrorCodes.TOO_MANY_REDIRECTS]: [503, 'UNAVAILABLE'],
  [ErrorCodes.ABORTED]: [503, 'UNAVAILABLE'],
  [ErrorCodes.DISK_FULL]: [503, 'UNAVAILABLE'],
};

/**
 * Maps any error to what the mirror answers. Never 401/403: containerd would try to
 * authenticate against the mirror; an upstream that refuses us is "unavailable here", and
 * containerd then asks the upstream itself with the node's own credentials.
 */
export function toMirrorHttpError(err: unknown): MirrorHttpError {
  if (err instanceof MirrorHttpError) return err;
  if (isPrewarmError(err)) {
    const [status, code] = BY_CODE[err.code] ?? [500, 'UNKNOWN'];
    return new MirrorHttpError(status, code, err.message, { reason: err.code }, err);
  }
  return new MirrorHttpError(500, 'UNKNOWN', 'internal error', undefined, err);
}
