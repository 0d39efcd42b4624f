import type { RetryOptions } from '../../../oci/src/retry.js';

export interface BlobFetcherOptions {
  /** Largest ranged request. Default 16 MiB (SOCI's parallel-pull default). */
  chunkSize?: number;
  /** Smallest ranged request; chunks shrink toward it near a blob's end so the tail finishes together. Default 1 MiB. */
  minChunkSize?: number;
  /** Parallel ranged requests per blob, at most. Default 16. */
  concurrencyPerBlob?: number;
  /**
   * Parallel ranged requests a blob starts with. Every `rampWindowMs` the count doubles
   * (up to `concurrencyPerBlob`) while the last doubling raised throughput by at least a
   * fifth. A doubling that bought under 5% is undone, and the count then halves while
   * throughput holds, down to two (see ConnectionRamp). A per-connection-capped path
   * ramps to the maximum; a link- or server-capped one ends low, which saves CPU and the
   * server's connections. Default 4; set it to `concurrencyPerBlob` to stay at the maximum.
   */
  initialConcurrency?: number;
  /** Length of one ramp measurement. Default 1000 ms. */
  rampWindowMs?: number;
  /** Parallel requests across all blobs of this fetcher (the node). Default 32. */
  maxConnections?: number;
  /** Node-wide bandwidth cap in bytes/s; 0 = unlimited. Default 0. */
  bandwidthBytesPerSec?: number;
  /** Backoff between failed requests; `attempts` counts consecutive failures with no progress. Default 8 attempts. */
  retry?: RetryOptions;
  /** Bytes of out-of-order chunk data held in memory per blob for hashing before spilling to a re-read. Default 64 MiB. */
  memoryPerBlob?: number;
  /** Bytes gathered before one vectored write. Default 1 MiB. */
  writeBatchBytes?: number;
  /**
   * Within a range, bytes between durable progress records (fdatasync + journal), so a
   * crash loses at most this much per connection. Default 8 MiB.
   */
  recordEveryBytes?: number;
}

const DEFAULTS = {
  chunkSize: 16 * 1024 * 1024,
  initialConcurrency: 4,
  rampWindowMs: 1000,
  minChunkSize: 1024 * 1024,
  concurrencyPerBlob: 16,
  maxConnections: 32,
  memoryPerBlob: 64 * 1024 * 1024,
  writeBatchBytes: 1024 * 1024,
  recordEveryBytes: 8 * 1024 * 1024,
};

/** The defaults of BlobFetcherOptions (what a crash can lose per connection follows from them). */
export const BLOB_FETCHER_DEFAULTS: Readonly<typeof DEFAULTS> = DEFAULTS;

/** BlobFetcherOptions with every defaulted field filled in. */
export type ResolvedFetcherOptions = typeof DEFAULTS & BlobFetcherOptions;

/** Applies the defaults; a field given as `undefined` takes its default too. */
export function resolveFetcherOptions(opts: BlobFetcherOptions): ResolvedFetcherOptions {
  const given = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined));
  return { ...DEFAULTS, ...(given as Partial<ResolvedFetcherOptions>) };
}
