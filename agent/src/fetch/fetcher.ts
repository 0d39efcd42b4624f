import type { EventEmitter } from 'node:events';
import type { Digest } from '../../../oci/src/digest.js';
import type { ByteRange, RangeSet } from '../store/ranges.js';
import type { BlobSource, BlobTarget } from './sources.js';

/**
 * What the image warmer, the mirror and the peer listener need from a blob fetcher. One
 * real implementation (`BlobFetcher`: ranged HTTP into the store, single-flight) and
 * wrappers that add policy by composition (`GatedFetcher` in the daemon holds a job's
 * downloads until disk room is reserved).
 */
export interface Fetcher {
  /**
   * Makes `target` present and verified in the store. Resolves when committed (at once when
   * it already is); joins the download in flight for the same digest if there is one.
   * Throws PrewarmError: PW_ERR_DIGEST_MISMATCH (nothing left under the final name),
   * PW_ERR_SIZE_MISMATCH, PW_ERR_BLOB_UNKNOWN, PW_ERR_AUTH_DENIED, PW_ERR_DISK_FULL,
   * PW_ERR_NETWORK / PW_ERR_REGISTRY after retries, PW_ERR_ABORTED.
   */
  fetch(target: BlobTarget, opts: FetchOptions): Promise<FetchResult>;
  /**
   * Starts the download of `target`, or joins the one in flight, and returns it at once
   * (synchronously), so a reader can stream it without waiting for the download to be
   * registered. A blob that turns out to be committed already ends its download at once.
   * `result` settles like `fetch` and rejects with the same codes: the caller must handle it.
   */
  startOrJoin(target: BlobTarget, opts: FetchOptions): FetchHandle;
  /** The download of `digest` in flight, if any. */
  inflight(digest: Digest): InflightBlob | undefined;
  /** Aborts every download in flight (partial data stays for a resume). */
  close(): Promise<void>;
}

/** A download started or joined by `Fetcher.startOrJoin`. */
export interface FetchHandle {
  /** The download, readable as its ranges land. */
  readonly blob: InflightBlob;
  /** True when the call joined a download already in flight. */
  readonly joined: boolean;
  /** This caller's outcome (its `signal` can give up without stopping other callers). */
  readonly result: Promise<FetchResult>;
}

export interface FetchOptions {
  signal?: AbortSignal;
  /** Sources in preference order (peers first, registry last). */
  sources: BlobSource[];
  /** Called as bytes land (throttle on your side). */
  onProgress?: (p: FetchProgress) => void;
  /**
   * Startup-first ordering, applied only when this call starts the download (a call that
   * joins one in flight leaves its order alone). `ranges` are claimed before any other
   * byte, lowest offset first; nothing else is claimed until `holdRestUntil` settles
   * (resolved or rejected), so the startup ranges of several blobs share the link before
   * any of their bulk. A server that ignores Range sends the blob in one stream anyway.
   * The caller must settle `holdRestUntil`, or the download never finishes.
   */
  priority?: { ranges: readonly ByteRange[]; holdRestUntil?: Promise<unknown> };
  /**
   * A cap in bytes/s for this download alone, applied on top of the node-wide cap
   * (BlobFetcherOptions.bandwidthBytesPerSec) and, like `priority`, only when this call
   * starts the download: a call that joins one in flight does not change its rate.
   * Absent or ≤ 0: node-wide cap only.
   */
  bandwidthBytesPerSec?: number;
}

/** One progress report of a download. */
export interface FetchProgress {
  digest: Digest;
  bytesDone: number;
  size: number;
}

export interface FetchResult {
  digest: Digest;
  size: number;
  /** Bytes already in the store (committed, or resumed from a partial download). */
  bytesAlreadyPresent: number;
  bytesFromRegistry: number;
  bytesFromPeers: number;
  /** Bytes hashed by re-reading the data file (resume or memory pressure). */
  bytesReread: number;
  /** False when the server ignored Range and the blob came as one stream. */
  ranged: boolean;
  /** Ranged connections the blob ended with (the connection ramp's level). */
  connections?: number;
  /** True when this call joined a download already in flight. */
  joined: boolean;
  /**
   * Times the download waited on its own cap (FetchOptions.bandwidthBytesPerSec); absent
   * when it had none.
   */
  capWaits?: number;
}

/**
 * A download in flight, visible to readers such as the mirror: `written` grows as
 * ranges land in `dataPath`; 'progress' fires after each write, 'end' on success
 * (the blob is then committed), 'error' on failure. `written` is replaced by a new set
 * when the download restarts from scratch, so readers can tell that bytes they already
 * sent may not be the bytes that will verify.
 */
export interface InflightBlob extends EventEmitter {
  readonly digest: Digest;
  readonly size: number;
  readonly written: RangeSet;
  readonly dataPath: string | undefined;
  readonly promise: Promise<FetchResult>;
  /** Reads bytes from the partial file (only within `written`). */
  read(position: number, length: number): Promise<Buffer>;
}
