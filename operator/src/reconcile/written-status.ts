/**
 * The status this controller last wrote, kept until the watch cache has caught up with it.
 *
 * The cache can lag by more than one write: reconcile 1 writes S1 (the server moves A → B),
 * reconcile 2 still reads A and writes S2 (→ C), and the next reconcile may then read B,
 * which holds S1, not S2. A field S2 added and a later step relies on (an expired gate
 * whose node is no longer tainted) would be computed from S1 and dropped for good. So the
 * written status wins over the cached one until the cache shows the very version the last
 * write produced, or a later one. The controller is the only writer of the status
 * subresource, so its last write is the truth in between.
 */
import type { ImagePrewarm, ImagePrewarmStatus } from '../api/types.js';

export interface WrittenStatus {
  /** The object's uid: a recreated object with the same name starts from its own status. */
  uid: string;
  /** resourceVersion the write produced (undefined if the server did not say). */
  resourceVersion: string | undefined;
  status: ImagePrewarmStatus;
}

/**
 * The object with the status to reconcile from, and whether `written` is still needed
 * (false: the cache has caught up, or the object is not the one written to).
 */
export function withWrittenStatus(
  cached: ImagePrewarm,
  written: WrittenStatus | undefined,
): { cr: ImagePrewarm; keep: boolean } {
  if (!written || written.uid !== (cached.metadata.uid ?? '')) return { cr: cached, keep: false };
  if (
    written.resourceVersion === undefined ||
    caughtUp(cached.metadata.resourceVersion, written.resourceVersion)
  )
    return { cr: cached, keep: false };
  return { cr: { ...cached, status: written.status }, keep: true };
}

/**
 * Whether the cache's version is the written one or newer. resourceVersions are opaque, but
 * the API server's are etcd revisions: compared as integers when both are, else only
 * equality counts (a relist that skips past the written version then keeps the written
 * status until the next write, which is still correct for the only writer).
 */
function caughtUp(cachedRv: string | undefined, writtenRv: string): boolean {
  if (cachedRv === undefined) return false;
  if (cachedRv === writtenRv) return true;
  if (/^\d+$/.test(cachedRv) && /^\d+$/.test(writtenRv)) return BigInt(cachedRv) >= BigInt(writtenRv);
  return false;
}
