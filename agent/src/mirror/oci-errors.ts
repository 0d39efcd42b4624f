import { parseChallenge } from '../../../oci/src/auth.js';
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
  | 'UNAUTHORIZED'
  | 'DENIED'
  | 'UNSUPPORTED'
  | 'UNAVAILABLE'
  | 'UNKNOWN';

/** An answer the mirror gives instead of content: HTTP status plus one OCI error. */
export class MirrorHttpError extends Error {
  readonly status: number;
  readonly ociCode: OciErrorCode;
  readonly detail: unknown;
  /** Extra response headers (`WWW-Authenticate` of a relayed 401). */
  readonly headers: Readonly<Record<string, string>>;

  constructor(
    status: number,
    ociCode: OciErrorCode,
    message: string,
    detail?: unknown,
    cause?: unknown,
    headers: Record<string, string> = {},
  ) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'MirrorHttpError';
    this.status = status;
    this.ociCode = ociCode;
    this.detail = detail;
    this.headers = headers;
  }
}

/** The JSON body of an OCI error response. */
export function ociErrorBody(code: OciErrorCode, message: string, detail?: unknown): string {
  return JSON.stringify({ errors: [{ code, message, ...(detail === undefined ? {} : { detail }) }] });
}

/**
 * Status, OCI code and the message the client sees, per PrewarmError code. The message is
 * ours and fixed: what the upstream said (its error text, its host, which address answered)
 * goes to the log only, so the mirror cannot be used to read internal services' answers.
 */
const BY_CODE: Partial<Record<ErrorCode, [number, OciErrorCode, string]>> = {
  [ErrorCodes.INVALID_REFERENCE]: [404, 'NAME_INVALID', 'invalid repository name or reference'],
  [ErrorCodes.INVALID_DIGEST]: [400, 'DIGEST_INVALID', 'invalid digest'],
  [ErrorCodes.MANIFEST_UNKNOWN]: [404, 'MANIFEST_UNKNOWN', 'manifest unknown'],
  [ErrorCodes.BLOB_UNKNOWN]: [404, 'BLOB_UNKNOWN', 'blob unknown'],
  [ErrorCodes.PLATFORM_NOT_FOUND]: [404, 'MANIFEST_UNKNOWN', 'manifest unknown'],
  // The upstream is not one this node may contact (not allowed, or its name resolves to an
  // internal address). 404 like anything the mirror cannot serve: containerd goes to the next
  // host, and the answer says nothing about what is at the address.
  [ErrorCodes.EGRESS_DENIED]: [404, 'NAME_UNKNOWN', 'upstream registry not allowed by the node mirror'],
  // The upstream served bad content, or we could not reach or use it: the client should
  // go to the next host (the upstream itself), which a 5xx tells containerd to do.
  [ErrorCodes.DIGEST_MISMATCH]: [502, 'UNKNOWN', 'upstream content failed verification'],
  [ErrorCodes.SIZE_MISMATCH]: [502, 'UNKNOWN', 'upstream content failed verification'],
  [ErrorCodes.MANIFEST_INVALID]: [502, 'MANIFEST_INVALID', 'upstream manifest is invalid'],
  [ErrorCodes.MANIFEST_TOO_LARGE]: [502, 'MANIFEST_INVALID', 'upstream manifest is invalid'],
  [ErrorCodes.UNSUPPORTED_MEDIA_TYPE]: [502, 'MANIFEST_INVALID', 'upstream manifest is invalid'],
  [ErrorCodes.AUTH_FAILED]: [503, 'UNAVAILABLE', 'upstream registry unavailable'],
  [ErrorCodes.REGISTRY_ERROR]: [503, 'UNAVAILABLE', 'upstream registry unavailable'],
  [ErrorCodes.NETWORK]: [503, 'UNAVAILABLE', 'upstream registry unavailable'],
  [ErrorCodes.TOO_MANY_REDIRECTS]: [503, 'UNAVAILABLE', 'upstream registry unavailable'],
  [ErrorCodes.ABORTED]: [503, 'UNAVAILABLE', 'upstream registry unavailable'],
  [ErrorCodes.DISK_FULL]: [503, 'UNAVAILABLE', 'node mirror cannot store the content'],
};

/**
 * A challenge safe to pass on: Basic or Bearer, only `realm` (http(s)), `service` and
 * `scope`, each without quotes, backslashes or control characters, re-serialised by us.
 * Undefined for anything else (the 401 then goes out without a challenge).
 */
export function relayableChallenge(header: string | undefined): string | undefined {
  const c = parseChallenge(header);
  if (!c || (c.scheme !== 'bearer' && c.scheme !== 'basic')) return undefined;
  // Printable ASCII only, no quote or backslash: nothing can break out of the quoted value.
  const safe = (v: string) => v.length <= 1024 && /^[ -~]*$/.test(v) && !/["\\]/.test(v);
  const parts: string[] = [];
  for (const key of ['realm', 'service', 'scope']) {
    const v = c.params[key];
    if (v === undefined) continue;
    if (!safe(v)) return undefined;
    if (key === 'realm' && c.scheme === 'bearer' && !/^https?:\/\//i.test(v)) return undefined;
    parts.push(`${key}="${v}"`);
  }
  if (c.scheme === 'bearer' && c.params.realm === undefined) return undefined;
  return `${c.scheme === 'bearer' ? 'Bearer' : 'Basic'} ${parts.join(',')}`;
}

/**
 * Maps any error to what the mirror answers. An upstream's 401/403 is passed on (401 with
 * its challenge, re-serialised by `relayableChallenge`, so containerd authenticates with the
 * upstream's token service and retries with a token the mirror forwards); everything the
 * upstream says beyond that stays in the log.
 */
export function toMirrorHttpError(err: unknown): MirrorHttpError {
  if (err instanceof MirrorHttpError) return err;
  if (isPrewarmError(err)) {
    if (err.code === ErrorCodes.AUTH_DENIED) {
      if (err.status === 403)
        return new MirrorHttpError(403, 'DENIED', 'the upstream registry denied access', undefined, err);
      const challenge = relayableChallenge(err.detail?.challenge as string | undefined);
      return new MirrorHttpError(
        401,
        'UNAUTHORIZED',
        'authentication required by the upstream registry',
        undefined,
        err,
        challenge ? { 'WWW-Authenticate': challenge } : {},
      );
    }
    const [status, code, message] = BY_CODE[err.code] ?? [500, 'UNKNOWN', 'internal error'];
    return new MirrorHttpError(status, code, message, { reason: err.code }, err);
  }
  return new MirrorHttpError(500, 'UNKNOWN', 'internal error', undefined, err);
}
