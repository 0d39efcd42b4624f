import { open } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import type { Digest } from '../../../oci/src/digest.js';
import type { InflightBlob } from '../fetch/fetcher.js';
import type { BlobStore } from '../store/blob-store.js';
import { MirrorHttpError } from './oci-errors.js';
import { parseRange, type RangeRequest } from './range.js';

/** Bytes read from a download in flight per write. */
const READ_CHUNK = 1024 * 1024;
/** Highwater mark of committed-file streams: large reads, few syscalls. */
const FILE_HWM = 1024 * 1024;

/** Where the bytes of an answer came from, for stats and logs. */
export type BlobOrigin = 'store' | 'inflight';

/** What a blob answer covers: 200 with everything, or 206 with an inclusive range. */
export interface BlobSlice {
  status: 200 | 206;
  start: number;
  /** Inclusive; `start - 1` for an empty blob. */
  end: number;
  size: number;
}

/**
 * Turns a parsed Range into the slice to send, or throws the 416 to answer. The 416 carries
 * `Content-Range: bytes * /size` (RFC 9110), which distribution only sends for some cases.
 */
export function sliceFor(range: RangeRequest, size: number): BlobSlice {
  if (range.kind === 'invalid' || range.kind === 'unsatisfiable') {
    throw new MirrorHttpError(
      416,
      'UNSUPPORTED',
      range.kind === 'invalid' ? 'invalid range' : 'range not satisfiable',
      {
        size,
      },
    );
  }
  if (range.kind === 'range') return { status: 206, start: range.start, end: range.end, size };
  return { status: 200, start: 0, end: size - 1, size };
}

/** Response headers of a blob answer (GET and HEAD alike). */
export function blobHeaders(digest: Digest, slice: BlobSlice): Record<string, string> {
  const h: Record<string, string> = {
    'Content-Type': 'application/octet-stream',
    'Content-Length': String(slice.end - slice.start + 1),
    'Docker-Content-Digest': digest,
    'Accept-Ranges': 'bytes',
    ETag: `"${digest}"`,
  };
  if (slice.status === 206) h['Content-Range'] = `bytes ${slice.start}-${slice.end}/${slice.size}`;
  return h;
}

/**
 * Streams a committed (verified) blob from the store. The file is opened before the
 * headers go out, so a blob deleted by GC in between is a clean 404, and one deleted while
 * streaming is still read to the end (the open descriptor keeps it). Returns bytes sent.
 */
export async function sendCommittedBlob(
  res: ServerResponse,
  store: BlobStore,
  digest: Digest,
  rangeHeader: string | undefined,
  head: boolean,
  extraHeaders: Record<string, string>,
): Promise<number> {
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    fh = await open(store.blobPath(digest), 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new MirrorHttpError(404, 'BLOB_UNKNOWN', 'blob unknown to the node mirror', digest);
    throw err;
  }
  try {
    const size = (await fh.stat()).size;
    const slice = sliceFor(parseRange(rangeHeader, size), size);
    res.writeHead(slice.status, { ...blobHeaders(digest, slice), ...extraHeaders });
    if (head || slice.end < slice.start) {
      res.end();
      return 0;
    }
    await pipeFile(res, fh, slice.start, slice.end);
    return slice.end - slice.start + 1;
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/** Pipes [start, end] (inclusive) of an open file into the response and ends it. */
async function pipeFile(
  res: ServerResponse,
  fh: Awaited<ReturnType<typeof open>>,
  start: number,
  end: number,
): Promise<void> {
  const stream = fh.createReadStream({ start, end, highWaterMark: FILE_HWM, autoClose: false });
  await pipeline(stream, res);
}

export interface InflightStreamOptions {
  /** Longest wait for the download to progress while streaming. */
  stallTimeoutMs: number;
  /** Aborts the stream (client gone, mirror closing). */
  signal: AbortSignal;
}

/** Settled state of a download, tracked from its events and its promise (whichever comes first). */
class DownloadWatch {
  state: 'running' | 'done' | 'failed' = 'running';
  error: unknown;
  readonly #blob: InflightBlob;
  /** The one pending `next()` waiter, woken by any change. */
  #wake: (() => void) | undefined;
  readonly #onEnd = () => {
    this.state = 'done';
    this.#wake?.();
  };
  readonly #onError = (err: unknown) => {
    if (this.state === 'running') {
      this.state = 'failed';
      this.error = err;
    }
    this.#wake?.();
  };
  readonly #onProgress = () => this.#wake?.();

  constructor(blob: InflightBlob) {
    this.#blob = blob;
    blob.on('progress', this.#onProgress);
    blob.on('end', this.#onEnd);
    blob.on('error', this.#onError);
    // An end that happened before we subscribed is seen through the promise.
    blob.promise.then(this.#onEnd, this.#onError);
  }

  /**
   * Resolves to true on the next progress, end or error of the download; to false after
   * `timeoutMs` or when `signal` aborts.
   */
  next(timeoutMs: number, signal: AbortSignal): Promise<boolean> {
    if (this.state !== 'running') return Promise.resolve(true);
    if (signal.aborted) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = (v: boolean) => {
        clearTimeout(timer);
        this.#wake = undefined;
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      };
      const onAbort = () => done(false);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.#wake = () => done(true);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  dispose(): void {
    this.#wake = undefined;
    this.#blob.off('progress', this.#onProgress);
    this.#blob.off('end', this.#onEnd);
    this.#blob.off('error', this.#onError);
  }
}

/**
 * Waits until an answer can start from a download in flight: the download committed, or
 * the first byte of the slice landed (and is not the slice's last byte, which is held back,
 * see `streamInflightBlob`). Throws 503 after `deadlineMs` (the client then goes to the
 * next host) and the download's own error if it fails first.
 */
export async function waitForFirstByte(
  blob: InflightBlob,
  slice: BlobSlice,
  deadlineMs: number,
  signal: AbortSignal,
): Promise<void> {
  const watch = new DownloadWatch(blob);
  const deadline = Date.now() + deadlineMs;
  try {
    for (;;) {
      if (watch.state === 'done') return;
      if (watch.state === 'failed') throw watch.error;
      if (slice.start < slice.end && blob.written.runEnd(slice.start) !== undefined) return;
      const left = deadline - Date.now();
      if (left <= 0 || signal.aborted) {
        throw new MirrorHttpError(503, 'UNAVAILABLE', `blob download has no data yet after ${deadlineMs} ms`);
      }
      await watch.next(left, signal);
    }
  } finally {
    watch.dispose();
  }
}

/**
 * Streams [slice.start, slice.end] of a blob while it downloads: bytes are read from the
 * partial file as their ranges land (in any order), and once the download commits the rest
 * comes from the committed file. The last byte of the slice is sent only after the download
 * committed, i.e. after the whole blob was verified against its digest: a client can never
 * receive a complete body of unverified content. When the download fails, restarts from
 * scratch (digest mismatch) or stalls past `stallTimeoutMs`, the connection is destroyed,
 * leaving the client a short body it must reject.
 *
 * Headers must already be sent. Returns the bytes sent; throws when the stream was cut.
 */
export async function streamInflightBlob(
  res: ServerResponse,
  store: BlobStore,
  blob: InflightBlob,
  slice: BlobSlice,
  opts: InflightStreamOptions,
): Promise<number> {
  const watch = new DownloadWatch(blob);
  const epoch = blob.written;
  const endEx = slice.end + 1;
  let pos = slice.start;
  try {
    while (pos < endEx) {
      if (opts.signal.aborted) throw new Error('client gone or mirror closing');
      if (watch.state === 'done') {
        const fh = await open(store.blobPath(blob.digest), 'r');
        try {
          await pipeFile(res, fh, pos, slice.end);
        } finally {
          await fh.close().catch(() => undefined);
        }
        return endEx - slice.start;
      }
      if (watch.state === 'failed') throw watch.error;
      // The fetcher replaces its range set when it restarts a blob (digest mismatch, or a
      // server that ignored Range): bytes already sent may not be the bytes that will verify.
      if (blob.written !== epoch) throw new Error('download restarted; bytes already sent are void');
      const runEnd = blob.written.runEnd(pos);
      // Hold back the final byte until the blob is verified.
      const upto = runEnd === undefined ? pos : Math.min(runEnd, endEx - 1, pos + READ_CHUNK);
      if (upto > pos) {
        let buf: Buffer;
        try {
          buf = await blob.read(pos, upto - pos);
        } catch {
          // The download committed (file renamed) or restarted between the check and the read.
          await watch.next(50, opts.signal);
          continue;
        }
        if (blob.written !== epoch) throw new Error('download restarted; bytes already sent are void');
        await writeChunk(res, buf);
        pos = upto;
        continue;
      }
      const moved = await watch.next(opts.stallTimeoutMs, opts.signal);
      if (!moved && !opts.signal.aborted && watch.state === 'running') {
        throw new Error(`blob download made no progress for ${opts.stallTimeoutMs} ms`);
      }
    }
    res.end();
    return endEx - slice.start;
  } finally {
    watch.dispose();
  }
}

/** Writes with backpressure; rejects when the client goes away. */
function writeChunk(res: ServerResponse, buf: Buffer): Promise<void> {
  if (res.destroyed) return Promise.reject(new Error('client gone'));
  if (res.write(buf)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onDrain = () => {
      res.off('close', onClose);
      resolve();
    };
    const onClose = () => {
      res.off('drain', onDrain);
      reject(new Error('client gone'));
    };
    res.once('drain', onDrain);
    res.once('close', onClose);
  });
}
