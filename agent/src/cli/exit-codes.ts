import { type ErrorCode, ErrorCodes, isPrewarmError } from '../../../oci/src/errors.js';

/** Process exit codes of the CLI; stable, documented in the README. */
export const ExitCodes = {
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  NOT_FOUND: 3,
  AUTH: 4,
  INTEGRITY: 5,
  NETWORK: 6,
  DISK_FULL: 7,
  INTERRUPTED: 130,
} as const;

const BY_CODE: Partial<Record<ErrorCode, number>> = {
  [ErrorCodes.INVALID_REFERENCE]: ExitCodes.USAGE,
  [ErrorCodes.INVALID_DIGEST]: ExitCodes.USAGE,
  [ErrorCodes.INVALID_CONFIG]: ExitCodes.USAGE,
  [ErrorCodes.MANIFEST_UNKNOWN]: ExitCodes.NOT_FOUND,
  [ErrorCodes.BLOB_UNKNOWN]: ExitCodes.NOT_FOUND,
  [ErrorCodes.PLATFORM_NOT_FOUND]: ExitCodes.NOT_FOUND,
  [ErrorCodes.AUTH_DENIED]: ExitCodes.AUTH,
  [ErrorCodes.AUTH_FAILED]: ExitCodes.AUTH,
  [ErrorCodes.DIGEST_MISMATCH]: ExitCodes.INTEGRITY,
  [ErrorCodes.SIZE_MISMATCH]: ExitCodes.INTEGRITY,
  [ErrorCodes.MANIFEST_INVALID]: ExitCodes.INTEGRITY,
  [ErrorCodes.MANIFEST_TOO_LARGE]: ExitCodes.INTEGRITY,
  [ErrorCodes.UNSUPPORTED_MEDIA_TYPE]: ExitCodes.INTEGRITY,
  [ErrorCodes.NETWORK]: ExitCodes.NETWORK,
  [ErrorCodes.REGISTRY_ERROR]: ExitCodes.NETWORK,
  [ErrorCodes.TOO_MANY_REDIRECTS]: ExitCodes.NETWORK,
  [ErrorCodes.DISK_FULL]: ExitCodes.DISK_FULL,
  [ErrorCodes.ABORTED]: ExitCodes.INTERRUPTED,
};

export function exitCodeFor(err: unknown): number {
  return isPrewarmError(err) ? (BY_CODE[err.code] ?? ExitCodes.FAILURE) : ExitCodes.FAILURE;
}

/**
 * How a command reports a failure on stderr: `<code>: <message>` for a PrewarmError (the
 * code is what scripts branch on), the stack for anything else (a bug: where it happened).
 */
export function describeError(err: unknown): string {
  return isPrewarmError(err) ? `${err.code}: ${err.message}` : String((err as Error)?.stack ?? err);
}
