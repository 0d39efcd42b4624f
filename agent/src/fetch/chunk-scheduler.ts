import { type ByteRange, RangeSet } from '../store/ranges.js';

/**
 * Which byte range a blob download claims next. Pure: the download passes what it knows,
 * gets a range (or nothing) back, and does the bookkeeping itself.
 *
 * The order: startup (priority) ranges first, lowest offset first; then, unless the rest
 * is held, the lowest unclaimed offset. Lowest offset first keeps the hash cursor close
 * behind the network, so few out-of-order bytes wait in memory for hashing.
 */

/** Chunk sizes (BlobFetcherOptions.chunkSize / minChunkSize). */
export interface ChunkPolicy {
  /** Largest range claimed at once. */
  chunkSize: number;
  /** Smallest range claimed, unless the gap being claimed is shorter. */
  minChunkSize: number;
}

/** What a download knows about its blob's bytes when a worker asks for work. */
export interface ChunkState {
  /** Blob size in bytes. */
  size: number;
  /** Bytes on disk (the download's `written`). */
  done: RangeSet;
  /** Ranges claimed by a worker and not yet finished or given back. */
  inFlight: RangeSet;
  /** Ranges to claim before any other (FetchOptions.priority), within [0, size). */
  priority: RangeSet;
  /** True while nothing outside `priority` may be claimed. */
  holding: boolean;
  /** Ranged connections the download may use now (the connection ramp's limit). */
  connections: number;
}

/** Bytes neither on disk nor claimed: what is left to hand out. */
export function unclaimed(state: ChunkState): RangeSet {
  const taken = new RangeSet(state.done.ranges);
  for (const r of state.inFlight.ranges) taken.add(r.start, r.end);
  return taken.complement(state.size);
}

/** The unclaimed parts of `state.priority`, lowest offset first. */
export function unclaimedPriority(state: ChunkState, free: RangeSet = unclaimed(state)): ByteRange[] {
  const out: ByteRange[] = [];
  if (state.priority.isEmpty) return out;
  for (const t of free.ranges)
    for (const p of state.priority.ranges) {
      const start = Math.max(t.start, p.start);
      const end = Math.min(t.end, p.end);
      if (start < end) out.push({ start, end });
    }
  return out;
}

/**
 * Length of the next chunk when `remaining` bytes are left to claim: the remainder split
 * over the connections, within [minChunkSize, chunkSize]. Splitting shrinks chunks near
 * the end so the last connections finish together instead of one long tail.
 */
export function chunkLength(policy: ChunkPolicy, remaining: number, connections: number): number {
  return Math.max(policy.minChunkSize, Math.min(policy.chunkSize, Math.ceil(remaining / connections)));
}

/**
 * The next range to claim ([start, end), never across a gap), or undefined when there is
 * none: everything is on disk or claimed, or only held bytes are left. Priority chunks are
 * sized by the priority bytes left, so a small startup region is spread over the
 * connections too.
 */
export function nextChunk(state: ChunkState, policy: ChunkPolicy): ByteRange | undefined {
  const free = unclaimed(state);
  const pri = unclaimedPriority(state, free);
  const from = pri[0] ?? (state.holding ? undefined : free.first());
  if (!from) return undefined;
  const remaining = pri.length > 0 ? pri.reduce((n, r) => n + r.end - r.start, 0) : free.size;
  const end = Math.min(from.end, from.start + chunkLength(policy, remaining, state.connections));
  return { start: from.start, end };
}
