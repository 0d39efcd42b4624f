import { createHash, type Hash } from 'node:crypto';
import { ErrorCodes, PrewarmError } from './errors.js';

/** Only sha256 is accepted: every registry we talk to uses it and it keeps paths simple. */
const DIGEST_RE = /^sha256:([a-f0-9]{64})$/;

export type Digest = `sha256:${string}`;

export function isDigest(value: unknown): value is Digest {
  return typeof value === 'string' && DIGEST_RE.test(value);
}

/**
 * Validates a digest string and returns it typed. Throws PW_ERR_INVALID_DIGEST for
 * anything else, including other algorithms, upper-case hex and path tricks, so
 * a digest can be used as a file name afterwards.
 */
export function parseDigest(value: string): Digest {
  if (!isDigest(value)) {
    throw new PrewarmError(
      ErrorCodes.INVALID_DIGEST,
      `invalid digest ${JSON.stringify(value.slice(0, 100))}`,
      {
        status: 400,
      },
    );
  }
  return value;
}

/** The 64 hex characters of a validated digest. */
export function digestHex(digest: Digest): string {
  return digest.slice('sha256:'.length);
}

export function sha256(data: Uint8Array): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function hashToDigest(hash: Hash): Digest {
  return `sha256:${hash.digest('hex')}`;
}

/** Throws PW_ERR_DIGEST_MISMATCH when `data` does not hash to `expected`. */
export function verifyBytes(data: Uint8Array, expected: Digest, what: string): void {
  const actual = sha256(data);
  if (actual !== expected) {
    throw new PrewarmError(ErrorCodes.DIGEST_MISMATCH, `${what}: expected ${expected}, got ${actual}`, {
      detail: { expected, actual },
    });
  }
}
