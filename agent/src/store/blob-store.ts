import type { Readable } from 'node:stream';
import type { Digest } from '../../../oci/src/digest.js';
import type { RangeSet } from './ranges.js';

/** What the store knows of one committed blob. */
export interface BlobInfo {
  digest: Digest;
  size: number;
  /** Last access (read or commit), ms since epoch; drives LRU garbage collection. */
  accessedAt: number;
}

/** One image as warmed on this node: the reference, the digests and every blob it needs. */
export interface ImageRecord {
  /** `registry/repository`. */
  repository: string;
  tag?: string;
  /** The digest the reference resolved to (index or manifest). */
  digest: Digest;
  /** The image manifest for `platform` (equals `digest` for single-platform images). */
  manifestDigest: Digest;
  platform: string;
  /** Manifest digests (index, image manifest) and blob digests (config, layers). */
  manifests: Digest[];
  blobs: Digest[];
  /** Total bytes of manifests and blobs. */
  size: number;
  warmedAt: number;
}

/**
 * A partial download of one blob: bytes land at any offset, each finished range is
 * recorded durably, and a restart resumes from what is recorded. Nothing becomes
 * visible under the blob's final name until `commit` has verified size and digest.
 */
export interface Ingest {
  readonly digest: Digest;
  readonly size: number;
  /** Ranges already on disk and durable when the ingest was opened or since recorded. */
  readonly durable: RangeSet;
  /** Path of the data file (readers of an in-flight download read it directly). */
  readonly dataPath: string;
  /**
   * Writes that start and end on multiples of this many bytes go fastest (direct I/O);
   * writers batch to it. 1: no preference.
   */
  readonly writeAlignment: number;
  /** Writes buffers contiguously at `position` (one syscall for many buffers). */
  write(buffers: readonly Buffer[], position: number): Promise<void>;
  /** Reads `length` bytes at `position` from the data file. */
  read(position: number, length: number): Promise<Buffer>;
  /** Makes [start, end) durable (fdatasync) and records it so a restart does not fetch it again. */
  record(start: number, end: number): Promise<void>;
  /**
   * Makes the blob final: checks `digest` (computed by the caller while streaming)
   * and the size, fsyncs, renames into place. PW_ERR_DIGEST_MISMATCH / PW_ERR_SIZE_MISMATCH
   * discard the partial data. "Already exists" is success.
   */
  commit(computed: Digest): Promise<void>;
  /** Discards all partial data (used after a digest mismatch or when restarting from scratch). */
  discard(): Promise<void>;
  /** Closes the file but keeps the partial data for a later resume. */
  close(): Promise<void>;
}

/** Content-addressed storage for blobs and manifests. */
export interface BlobStore {
  /** Size of a committed blob, or undefined when absent. */
  stat(digest: Digest): Promise<BlobInfo | undefined>;
  /** Opens (or resumes) an ingest. Throws PW_ERR_SIZE_MISMATCH if a resumable ingest disagrees on size. */
  openIngest(digest: Digest, size: number): Promise<Ingest>;
  /** Stores a small verified blob (manifests, configs) atomically. */
  putBytes(digest: Digest, bytes: Uint8Array): Promise<void>;
  /** Reads a whole blob (for manifests; capped at `limit` bytes). */
  readBytes(digest: Digest, limit?: number): Promise<Buffer>;
  /** Streams a committed blob or a byte range of it (inclusive `end`). */
  createReadStream(digest: Digest, range?: { start: number; end: number }): Readable;
  /** Absolute path of a committed blob's file. */
  blobPath(digest: Digest): string;
  delete(digest: Digest): Promise<boolean>;
  list(): AsyncIterable<BlobInfo>;
  putImage(record: ImageRecord): Promise<void>;
  getImage(repository: string, ref: string, platform: string): Promise<ImageRecord | undefined>;
  listImages(): Promise<ImageRecord[]>;
  /**
   * Something that changes whenever image records are added or removed, possibly by another
   * process (`{ stamp, changedAt }`: the records directory's modification time), so readers
   * can cache `listImages()`. Optional: without it a cache must re-read every time.
   */
  imagesStamp?(): Promise<{ stamp: string; changedAtMs: number }>;
  deleteImage(record: ImageRecord): Promise<void>;
}
