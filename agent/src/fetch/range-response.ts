import type { Digest } from '../../../oci/src/digest.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import type { ByteRange } from '../store/ranges.js';

/** A parsed `Content-Range: bytes start-end/total` (RFC 9110 §14.4); `end` is inclusive. */
export interface ContentRange {
  start: number;
  end: number;
  /** Undefined for `/*` (total unknown to the server). */
  total: number | undefined;
}

/**
 * Parses a satisfied byte range. Undefined for anything else, `bytes *\/total` (the form
 * of a 416) and a missing header included.
 */
export function parseContentRange(value: string | undefined): ContentRange | undefined {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value ?? '');
  if (!m) return undefined;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? undefined : Number(m[3]) };
}

/**
 * How to read the response to a ranged request for `range` ([start, end)) of a blob of
 * `size` bytes:
 * - `range`: the body is exactly the requested bytes (a 206 that matches, or a 200 to a
 *   request for the whole blob);
 * - `whole`: a 200 to a partial request, i.e. the server ignored Range and sends the
 *   whole blob from offset 0 (the fetcher falls back to one stream).
 *
 * Throws PW_ERR_REGISTRY (retryable) for a 206 whose Content-Range is missing, malformed or
 * names other bytes (a confused proxy: ask again), and PW_ERR_SIZE_MISMATCH when it names
 * another total size (the descriptor is wrong, or the blob is not the one we want: asking
 * again will not help).
 */
export function rangeResponseKind(
  res: { statusCode: number; contentRange: string | undefined },
  range: ByteRange,
  size: number,
  digest: Digest,
): 'range' | 'whole' {
  if (res.statusCode === 200) return range.start === 0 && range.end === size ? 'range' : 'whole';
  if (res.statusCode !== 206) return 'range';
  const cr = parseContentRange(res.contentRange);
  if (!cr || cr.start !== range.start || cr.end !== range.end - 1) {
    const message = `blob ${digest}: bad Content-Range ${res.contentRange}`;
    throw new PrewarmError(ErrorCodes.REGISTRY_ERROR, message, { retryable: true });
  }
  if (cr.total !== undefined && cr.total !== size) {
    throw new PrewarmError(
      ErrorCodes.SIZE_MISMATCH,
      `blob ${digest}: registry says ${cr.total} bytes, descriptor ${size}`,
    );
  }
  return 'range';
}
