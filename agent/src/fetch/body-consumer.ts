import type { BlobResponse } from '../../../oci/src/client.js';
import { toNetworkError } from '../../../oci/src/client.js';
import { isPrewarmError } from '../../../oci/src/errors.js';
import type { Ingest } from '../store/blob-store.js';
import type { RangeSet } from '../store/ranges.js';
import { discardBody, pump } from './body-pump.js';
import type { HashCursor } from './hash-cursor.js';
import { RangeWriter, type RangeWriterOptions } from './ingest-writer.js';
import { type TokenBucket, takeTokens } from './token-bucket.js';

/** What reading one body needs from its download. */
export interface BodyConsumerDeps {
  ingest: Ingest;
  /** The download's hash cursor (offered every byte, drained as runs complete). */
  hasher: HashCursor;
  signal: AbortSignal;
  /** The node-wide cap and the download's own (either may be unlimited). */
  bucket: TokenBucket;
  ownBucket: TokenBucket | undefined;
  writer: RangeWriterOptions;
  /**
   * Marks [start, start + length) written and counts it; returns the download's written set
   * as it is now (a stream fallback replaces it), to see whether the hash cursor can move.
   */
  landed(start: number, length: number): RangeSet;
  /** After each write (progress). */
  flushed(): void;
  /** Names the body in network errors, e.g. `blob sha256:… from registry.example.com`. */
  label: string;
}

/**
 * Reads a response body into [start, end) of the ingest: takes bandwidth tokens (the wait
 * is TCP backpressure on this connection), offers each buffer to the hash cursor, and
 * writes in batches (RangeWriter). Bytes past `end` are not read. Returns the position
 * reached (short when the body ended early; the caller decides). On error, writes what
 * arrived first, then throws with `position` attached: the end of the bytes written.
 */
export async function consumeBody(
  body: BlobResponse['body'],
  start: number,
  end: number,
  deps: BodyConsumerDeps,
): Promise<number> {
  const { hasher, signal } = deps;
  let pos = start;
  /** A buffer went past the hash cursor's memory: drain (re-read) at the next flush. */
  let needDrain = false;
  const writer = new RangeWriter(deps.ingest, start, deps.writer, {
    landed: (at, n) => {
      const written = deps.landed(at, n);
      if (!needDrain && written.runEnd(hasher.position) === undefined) return undefined;
      needDrain = false;
      return hasher.drain();
    },
    flushed: deps.flushed,
  });
  try {
    await pump(
      body,
      (chunk) => {
        let buf = chunk;
        if (pos + buf.byteLength > end) {
          if (pos >= end) return false;
          buf = buf.subarray(0, end - pos);
        }
        const waitTokens = takeTokens(deps.bucket, deps.ownBucket, buf.byteLength, signal);
        if (!hasher.offer(pos, buf)) needDrain = true;
        writer.push(buf);
        pos += buf.byteLength;
        const more = pos < end;
        // The hot path stays synchronous: no promise unless a cap or a full batch must wait.
        if (waitTokens === undefined && !writer.full) return more;
        return (async () => {
          await waitTokens;
          if (writer.full) await writer.flush(false);
          return more;
        })();
      },
      signal,
    );
    await writer.flush(true);
    return pos;
  } catch (err) {
    discardBody(body);
    // Bytes already received are worth keeping: write them before giving up the range.
    await writer.flush(true).catch(() => undefined);
    const e = isPrewarmError(err) ? err : toNetworkError(err, deps.label);
    Object.assign(e, { position: writer.position });
    throw e;
  } finally {
    if (pos >= end && !body.destroyed) discardBody(body);
  }
}
