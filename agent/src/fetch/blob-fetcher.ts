import { EventEmitter, setMaxListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BlobResponse } from '../../../oci/src/client.js';
import { header, toNetworkError } from '../../../oci/src/client.js';
import type { Digest } from '../../../oci/src/digest.js';
import { abortError, ErrorCodes, isPrewarmError, PrewarmError } from '../../../oci/src/errors.js';
import { backoffDelay, type RetryOptions } from '../../../oci/src/retry.js';
import type { BlobStore, Ingest } from '../store/blob-store.js';
import { ALIGN, dropBytes, takeBytes } from '../store/direct-io.js';
import { type ByteRange, RangeSet } from '../store/ranges.js';
import { ConnectionRamp } from './connection-ramp.js';
import { HashCursor } from './hash-cursor.js';
import type { BlobSource, BlobTarget } from './sources.js';
import { Semaphore, TokenBucket } from './token-bucket.js';

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

export interface FetchOptions {
  signal?: AbortSignal;
  /** Sources in preference order (peers first, registry last). */
  sources: BlobSource[];
  /** Called as bytes land (throttle on your side). */
  onProgress?: (p: { digest: Digest; bytesDone: number; size: number }) => void;
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
 * (the blob is then committed), 'error' on failure.
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

/**
 * The lazy-chunk fetcher: downloads blobs as parallel HTTP Range requests into the
 * store, hashing in byte order as chunks land, with retries (backoff, Retry-After),
 * a node-wide bandwidth cap and connection limit, resume from durable ranges after a
 * crash, fallback to one stream when a server ignores Range, and single-flight: a
 * second request for a digest joins the download in flight.
 */
export class BlobFetcher {
  readonly #store: BlobStore;
  readonly #opts: typeof DEFAULTS & BlobFetcherOptions;
  readonly #connections: Semaphore;
  readonly #bucket: TokenBucket;
  readonly #inflight = new Map<Digest, Download>();

  constructor(store: BlobStore, opts: BlobFetcherOptions = {}) {
    this.#store = store;
    this.#opts = { ...DEFAULTS, ...stripUndefined(opts) };
    this.#connections = new Semaphore(this.#opts.maxConnections);
    this.#bucket = new TokenBucket(opts.bandwidthBytesPerSec ?? 0);
  }

  /** The download of `digest` in flight, if any. */
  inflight(digest: Digest): InflightBlob | undefined {
    return this.#inflight.get(digest);
  }

  /**
   * Makes `target` present and verified in the store. Resolves when committed; throws
   * PrewarmError: PW_ERR_DIGEST_MISMATCH (nothing left under the final name),
   * PW_ERR_SIZE_MISMATCH, PW_ERR_BLOB_UNKNOWN, PW_ERR_AUTH_DENIED, PW_ERR_DISK_FULL,
   * PW_ERR_NETWORK / PW_ERR_REGISTRY after retries, PW_ERR_ABORTED.
   */
  async fetch(target: BlobTarget, opts: FetchOptions): Promise<FetchResult> {
    const existing = await this.#store.stat(target.digest);
    if (existing && existing.size === target.size) {
      opts.onProgress?.({ digest: target.digest, bytesDone: target.size, size: target.size });
      return {
        digest: target.digest,
        size: target.size,
        bytesAlreadyPresent: target.size,
        bytesFromRegistry: 0,
        bytesFromPeers: 0,
        bytesReread: 0,
        ranged: true,
        joined: false,
      };
    }
    let dl = this.#inflight.get(target.digest);
    const joined = dl !== undefined;
    if (!dl) {
      dl = new Download(
        this.#store,
        target,
        opts.sources,
        this.#opts,
        this.#connections,
        this.#bucket,
        opts.priority,
        opts.bandwidthBytesPerSec && opts.bandwidthBytesPerSec > 0
          ? new TokenBucket(opts.bandwidthBytesPerSec)
          : undefined,
      );
      const started = dl;
      this.#inflight.set(target.digest, started);
      started.promise.then(
        () => this.#inflight.delete(target.digest),
        () => this.#inflight.delete(target.digest),
      );
      started.start();
    }
    return dl.subscribe(opts, joined);
  }

  /** Aborts every download in flight (partial data stays for a resume). */
  async close(): Promise<void> {
    const all = [...this.#inflight.values()];
    for (const d of all) d.abort(new PrewarmError(ErrorCodes.ABORTED, 'fetcher closing'));
    await Promise.allSettled(all.map((d) => d.promise));
  }
}

class Download extends EventEmitter implements InflightBlob {
  readonly digest: Digest;
  readonly size: number;
  written = new RangeSet();
  dataPath: string | undefined;
  readonly promise: Promise<FetchResult>;
  #resolve!: (r: FetchResult) => void;
  #reject!: (e: unknown) => void;
  readonly #controller = new AbortController();
  #subscribers = 0;
  #ingest: Ingest | undefined;
  #hasher: HashCursor | undefined;
  #todo = new RangeSet();
  #fatal: unknown;
  #failures = 0;
  #streamMode = false;
  #badSources = new Set<BlobSource>();
  #fromRegistry = 0;
  #fromPeers = 0;
  #alreadyPresent = 0;
  #progressListeners = new Set<NonNullable<FetchOptions['onProgress']>>();
  /** Ranges claimed before all others (FetchOptions.priority). */
  readonly #priority: RangeSet;
  /** True while the bytes outside `#priority` must not be claimed. */
  #holding = false;
  #hold: Promise<void> | undefined;
  /** Workers of this attempt; those with an index below the ramp's limit may hold a range. */
  #workers = 0;
  #limitWaiters = new Set<() => void>();
  #ramp = new ConnectionRamp(1, 1, 0, 0);

  constructor(
    readonly store: BlobStore,
    readonly target: BlobTarget,
    readonly sources: BlobSource[],
    readonly opts: typeof DEFAULTS & BlobFetcherOptions,
    readonly connections: Semaphore,
    readonly bucket: TokenBucket,
    priority?: FetchOptions['priority'],
    /** This download's own cap (FetchOptions.bandwidthBytesPerSec), on top of `bucket`. */
    readonly ownBucket?: TokenBucket,
  ) {
    super();
    this.#priority = new RangeSet(
      (priority?.ranges ?? []).map((r) => ({
        start: Math.max(0, r.start),
        end: Math.min(target.size, r.end),
      })),
    );
    if (priority?.holdRestUntil) {
      this.#holding = true;
      const open = () => {
        this.#holding = false;
      };
      this.#hold = priority.holdRestUntil.then(open, open);
    }
    // One abort listener per in-flight request and waiter; the count is bounded by concurrency.
    setMaxListeners(0, this.#controller.signal);
    this.digest = target.digest;
    this.size = target.size;
    this.promise = new Promise((res, rej) => {
      this.#resolve = res;
      this.#reject = rej;
    });
    // Readers that attach late must not crash the process with an unhandled 'error'.
    this.on('error', () => undefined);
    this.promise.catch(() => undefined);
  }

  start(): void {
    this.#run().then(
      (r) => {
        this.emit('end', r);
        this.#resolve(r);
      },
      (e) => {
        this.emit('error', e);
        this.#reject(e);
      },
    );
  }

  abort(reason: unknown): void {
    this.#controller.abort(reason);
  }

  async subscribe(opts: FetchOptions, joined: boolean): Promise<FetchResult> {
    this.#subscribers++;
    const onProgress = opts.onProgress;
    if (onProgress) this.#progressListeners.add(onProgress);
    const signal = opts.signal;
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_, rej) => {
      if (!signal) return;
      onAbort = () => rej(abortError(signal));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
    aborted.catch(() => undefined);
    try {
      const r = await Promise.race([this.promise, aborted]);
      return { ...r, joined };
    } finally {
      if (onAbort) signal?.removeEventListener('abort', onAbort);
      if (onProgress) this.#progressListeners.delete(onProgress);
      // The last caller to give up stops the download; partial data stays for a resume.
      if (--this.#subscribers === 0 && signal?.aborted) this.abort(abortError(signal));
    }
  }

  read(position: number, length: number): Promise<Buffer> {
    if (!this.#ingest)
      return Promise.reject(new PrewarmError(ErrorCodes.BLOB_UNKNOWN, 'download not started'));
    if (!this.written.covers(position, position + length)) {
      return Promise.reject(new PrewarmError(ErrorCodes.BLOB_UNKNOWN, 'range not written yet'));
    }
    return this.#ingest.read(position, length);
  }

  async #run(): Promise<FetchResult> {
    let result = await this.#attempt();
    if (result instanceof PrewarmError) {
      // A mismatch after resuming old bytes or taking bytes from a peer may be their
      // fault, not the registry's: start over once, from the registry only.
      if (this.#alreadyPresent === 0 && this.#fromPeers === 0) throw result;
      this.#reset();
      this.#badSources = new Set(this.sources.filter((s) => s.kind === 'peer'));
      result = await this.#attempt();
      if (result instanceof PrewarmError) throw result;
    }
    return result;
  }

  #reset(): void {
    this.written = new RangeSet();
    this.#todo = new RangeSet();
    this.#fatal = undefined;
    this.#failures = 0;
    this.#streamMode = false;
    this.#fromRegistry = 0;
    this.#fromPeers = 0;
    this.#alreadyPresent = 0;
  }

  /** One pass; resolves to the digest error (so #run may retry) or the result. */
  async #attempt(): Promise<FetchResult | PrewarmError> {
    const ingest = await this.store.openIngest(this.digest, this.size);
    this.#ingest = ingest;
    this.dataPath = ingest.dataPath;
    try {
      this.written = new RangeSet(ingest.durable.ranges);
      this.#alreadyPresent = this.written.size;
      this.#todo = this.written.complement(this.size);
      this.#hasher = new HashCursor(
        this.size,
        this.written,
        (p, l) => ingest.read(p, l),
        this.opts.memoryPerBlob,
      );
      this.#emitProgress();
      const workers = Math.max(
        1,
        Math.min(this.opts.concurrencyPerBlob, Math.ceil(this.#todo.size / this.opts.minChunkSize)),
      );
      this.#workers = this.#todo.isEmpty ? 0 : workers;
      this.#ramp = new ConnectionRamp(
        this.opts.initialConcurrency,
        Math.max(1, this.#workers),
        this.opts.rampWindowMs,
        performance.now(),
      );
      await Promise.all(Array.from({ length: this.#workers }, (_, i) => this.#worker(ingest, i)));
      if (this.#fatal !== undefined) throw this.#fatal;
      if (this.#controller.signal.aborted) throw abortError(this.#controller.signal);
      await this.#hasher.drain();
      if (!this.#hasher.done) {
        throw new PrewarmError(
          ErrorCodes.STORE_CORRUPT,
          `blob ${this.digest}: hashed ${this.#hasher.position} of ${this.size} bytes`,
        );
      }
      try {
        await ingest.commit(this.#hasher.digest());
      } catch (err) {
        if (isPrewarmError(err, ErrorCodes.DIGEST_MISMATCH)) return err;
        throw err;
      }
      return {
        digest: this.digest,
        size: this.size,
        bytesAlreadyPresent: this.#alreadyPresent,
        bytesFromRegistry: this.#fromRegistry,
        bytesFromPeers: this.#fromPeers,
        bytesReread: this.#hasher.rereadBytes,
        ranged: !this.#streamMode,
        ...(this.#streamMode || this.#workers === 0 ? {} : { connections: this.#ramp.limit }),
        joined: false,
        ...(this.ownBucket ? { capWaits: this.ownBucket.waits } : {}),
      };
    } finally {
      this.#hasher?.clear();
      await ingest.close();
    }
  }

  /** Parts of `#priority` still to claim, lowest offset first. */
  #priorityTodo(): ByteRange[] {
    const out: ByteRange[] = [];
    if (this.#priority.isEmpty) return out;
    for (const t of this.#todo.ranges)
      for (const p of this.#priority.ranges) {
        const start = Math.max(t.start, p.start);
        const end = Math.min(t.end, p.end);
        if (start < end) out.push({ start, end });
      }
    return out;
  }

  /** Resolves when the hold on non-priority bytes lifts; rejects when `signal` aborts. */
  #waitHold(signal: AbortSignal): Promise<void> {
    const hold = this.#hold;
    if (!this.#holding || !hold) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      if (signal.aborted) {
        onAbort();
        return;
      }
      signal.addEventListener('abort', onAbort, { once: true });
      void hold.then(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
    });
  }

  /**
   * Claims the next range: priority ranges first, then (unless held) lowest offset first,
   * chunks shrinking near the end.
   */
  #take(): { start: number; end: number } | undefined {
    const pri = this.#priorityTodo();
    const p = pri[0];
    if (p) {
      const remaining = pri.reduce((n, r) => n + r.end - r.start, 0);
      const len = Math.max(
        this.opts.minChunkSize,
        Math.min(this.opts.chunkSize, Math.ceil(remaining / this.#ramp.limit)),
      );
      const end = Math.min(p.end, p.start + len);
      this.#todo.remove(p.start, end);
      return { start: p.start, end };
    }
    if (this.#holding) return undefined;
    const first = this.#todo.first();
    if (!first) return undefined;
    const remaining = this.#todo.size;
    const len = Math.max(
      this.opts.minChunkSize,
      Math.min(this.opts.chunkSize, Math.ceil(remaining / this.#ramp.limit)),
    );
    const end = Math.min(first.end, first.start + len);
    this.#todo.remove(first.start, end);
    return { start: first.start, end };
  }

  #wakeParked(): void {
    const ws = [...this.#limitWaiters];
    this.#limitWaiters.clear();
    for (const w of ws) w();
  }

  /** Parks a worker above the limit until the limit or the work changes. */
  #park(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        signal.removeEventListener('abort', done);
        this.#limitWaiters.delete(done);
        resolve();
      };
      signal.addEventListener('abort', done, { once: true });
      this.#limitWaiters.add(done);
    });
  }

  /** Counts bytes for the connection ramp (see BlobFetcherOptions.initialConcurrency). */
  #rampCount(n: number): void {
    const wasFrozen = this.#ramp.frozen;
    const changed = this.#ramp.count(n, performance.now());
    // Parked workers start when the limit rises, and exit once the ramp is frozen below them.
    if (changed || this.#ramp.frozen !== wasFrozen) this.#wakeParked();
  }

  async #worker(ingest: Ingest, index: number): Promise<void> {
    try {
      await this.#work(ingest, index);
    } finally {
      // Parked workers must notice when the work runs out, or Promise.all never settles.
      this.#wakeParked();
    }
  }

  async #work(ingest: Ingest, index: number): Promise<void> {
    const signal = this.#controller.signal;
    while (this.#fatal === undefined && !signal.aborted && !this.#streamMode) {
      if (index >= this.#ramp.limit) {
        if (this.#ramp.frozen || this.#todo.isEmpty) return;
        await this.#park(signal);
        continue;
      }
      if (this.#holding && this.#priorityTodo().length === 0) {
        if (this.#todo.isEmpty) return;
        try {
          await this.#waitHold(signal);
        } catch {
          return;
        }
        continue;
      }
      let release: () => void;
      try {
        release = await this.connections.acquire(signal);
      } catch {
        return;
      }
      try {
        const range = this.#take();
        // Held: give the connection back and wait for the hold to lift (loop top).
        if (!range && this.#holding) continue;
        if (!range) return;
        try {
          await this.#fetchRange(ingest, range);
          this.#failures = 0;
        } catch (err) {
          // In stream mode the single stream owns the blob; stray ranged errors do not matter.
          if (signal.aborted || this.#fatal !== undefined || this.#streamMode) return;
          const e = isPrewarmError(err) ? err : toNetworkError(err, `blob ${this.digest}`);
          if (!e.retryable || ++this.#failures >= (this.opts.retry?.attempts ?? 8)) {
            this.#fail(e);
            return;
          }
          const ra = typeof e.detail?.retryAfterMs === 'number' ? e.detail.retryAfterMs : undefined;
          release();
          release = () => undefined;
          try {
            await sleep(backoffDelay(this.#failures, this.opts.retry ?? {}, ra), undefined, { signal });
          } catch {
            return;
          }
        }
      } finally {
        release();
      }
    }
  }

  #fail(err: unknown): void {
    if (this.#fatal === undefined) this.#fatal = err;
    this.#controller.abort(err);
  }

  #source(): BlobSource {
    const s = this.sources.find((x) => !this.#badSources.has(x)) ?? this.sources.at(-1);
    if (!s) throw new PrewarmError(ErrorCodes.INVALID_CONFIG, 'no blob source configured');
    return s;
  }

  async #open(range: { start: number; end: number }): Promise<{ res: BlobResponse; source: BlobSource }> {
    for (;;) {
      const source = this.#source();
      try {
        return {
          res: await source.open(
            this.target,
            { start: range.start, end: range.end - 1 },
            this.#controller.signal,
          ),
          source,
        };
      } catch (err) {
        // A peer that fails is skipped for the rest of this blob; the registry's errors go to the retry loop.
        if (source.kind === 'peer' && !this.#controller.signal.aborted) {
          this.#badSources.add(source);
          continue;
        }
        throw err;
      }
    }
  }

  async #fetchRange(ingest: Ingest, range: { start: number; end: number }): Promise<void> {
    let opened: { res: BlobResponse; source: BlobSource };
    try {
      opened = await this.#open(range);
    } catch (err) {
      this.#todo.add(range.start, range.end);
      throw err;
    }
    const { res, source } = opened;
    if (res.statusCode === 200 && !(range.start === 0 && range.end === this.size)) {
      // The server ignored Range: take this response as the whole blob, once.
      if (this.#streamMode) {
        discardBody(res.body);
        return;
      }
      this.#streamMode = true;
      await this.#streamWhole(ingest, res, source);
      return;
    }
    if (res.statusCode === 206) {
      const cr = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header(res.headers, 'content-range') ?? '');
      if (!cr || Number(cr[1]) !== range.start || Number(cr[2]) !== range.end - 1) {
        discardBody(res.body);
        this.#todo.add(range.start, range.end);
        throw new PrewarmError(
          ErrorCodes.REGISTRY_ERROR,
          `blob ${this.digest}: bad Content-Range ${header(res.headers, 'content-range')}`,
          {
            retryable: true,
          },
        );
      }
      if (cr[3] !== '*' && Number(cr[3]) !== this.size) {
        discardBody(res.body);
        throw new PrewarmError(
          ErrorCodes.SIZE_MISMATCH,
          `blob ${this.digest}: registry says ${cr[3]} bytes, descriptor ${this.size}`,
        );
      }
    }
    let pos = range.start;
    try {
      pos = await this.#consume(ingest, res, source, range.start, range.end);
      if (pos < range.end) {
        throw new PrewarmError(
          ErrorCodes.NETWORK,
          `blob ${this.digest}: body ended at ${pos}, expected ${range.end}`,
          { retryable: true },
        );
      }
    } catch (err) {
      // A peer that fails mid-body is not asked again for this blob.
      if (source.kind === 'peer') this.#badSources.add(source);
      // Keep what arrived: record it and put only the rest back.
      pos = (err as { position?: number }).position ?? pos;
      if (pos > range.start) await ingest.record(range.start, pos).catch(() => undefined);
      this.#todo.add(pos, range.end);
      throw err;
    }
    await ingest.record(range.start, range.end);
  }

  /**
   * Reads a response body into [start, end), writing in batches, hashing in order.
   * Returns the position reached; on error, attaches `position` (bytes written so far).
   */
  async #consume(
    ingest: Ingest,
    res: BlobResponse,
    source: BlobSource,
    start: number,
    end: number,
  ): Promise<number> {
    const hasher = this.#hasher!;
    const signal = this.#controller.signal;
    let pos = start;
    let batch: Buffer[] = [];
    let batchStart = start;
    let batchBytes = 0;
    let needDrain = false;
    let recorded = start;
    /**
     * Writes the batch. Mid-range (`final` false) only up to the last ALIGN boundary, so
     * the store can write it with direct I/O; the rest waits for the next batch.
     */
    const flushOnce = async (final: boolean) => {
      if (batchBytes === 0) return;
      let n = batchBytes;
      if (!final) {
        const cut = Math.floor((batchStart + batchBytes) / ALIGN) * ALIGN - batchStart;
        if (cut > 0) n = cut;
      }
      // The batch changes only once the write succeeded: a failed write keeps every byte
      // for the caller's last flush, and nothing unwritten is ever marked written.
      await ingest.write(n === batchBytes ? batch : takeBytes(batch, n), batchStart);
      this.written.add(batchStart, batchStart + n);
      if (source.kind === 'peer') this.#fromPeers += n;
      else this.#fromRegistry += n;
      this.#rampCount(n);
      batch = dropBytes(batch, n);
      batchStart += n;
      batchBytes -= n;
      if (needDrain || this.written.runEnd(hasher.position) !== undefined) {
        needDrain = false;
        await hasher.drain();
      }
      if (batchStart - recorded >= this.opts.recordEveryBytes) {
        await ingest.record(recorded, batchStart);
        recorded = batchStart;
      }
      this.#emitProgress();
    };
    // One flush at a time: the error path's last flush must not write a batch that a
    // flush still in progress is writing (twice counted, or marked written past the data).
    let flushing: Promise<void> = Promise.resolve();
    const flush = (final: boolean): Promise<void> => {
      const p = flushing.then(() => flushOnce(final));
      flushing = p.catch(() => undefined);
      return p;
    };
    try {
      await pump(
        res.body,
        (chunk) => {
          let buf = chunk;
          if (pos + buf.byteLength > end) {
            if (pos >= end) return false;
            buf = buf.subarray(0, end - pos);
          }
          const waitTokens = takeTokens(this.bucket, this.ownBucket, buf.byteLength, signal);
          if (!hasher.offer(pos, buf)) needDrain = true;
          batch.push(buf);
          batchBytes += buf.byteLength;
          pos += buf.byteLength;
          const more = pos < end;
          if (waitTokens === undefined && batchBytes < this.opts.writeBatchBytes) return more;
          return (async () => {
            await waitTokens;
            if (batchBytes >= this.opts.writeBatchBytes) await flush(false);
            return more;
          })();
        },
        signal,
      );
      await flush(true);
      return pos;
    } catch (err) {
      discardBody(res.body);
      // Bytes already received are worth keeping: write them before giving up the range.
      await flush(true).catch(() => undefined);
      const e = isPrewarmError(err) ? err : toNetworkError(err, `blob ${this.digest} from ${source.name}`);
      Object.assign(e, { position: batchStart });
      throw e;
    } finally {
      if (pos >= end && !res.body.destroyed) discardBody(res.body);
    }
  }

  /** Single-stream fallback: the body is the whole blob from offset 0. */
  async #streamWhole(ingest: Ingest, res: BlobResponse, source: BlobSource): Promise<void> {
    // Stop the ranged workers; bytes they wrote are the same bytes, so the file stays valid,
    // but the hash restarts from zero on this stream alone.
    this.#todo = new RangeSet();
    this.#hasher?.clear();
    this.written = new RangeSet();
    this.#hasher = new HashCursor(
      this.size,
      this.written,
      (p, l) => ingest.read(p, l),
      this.opts.memoryPerBlob,
    );
    const pos = await this.#consume(ingest, res, source, 0, this.size);
    if (pos < this.size) {
      // Without Range support there is no resuming inside the blob: the next attempt starts over.
      this.#streamMode = false;
      this.written = new RangeSet();
      this.#todo = new RangeSet([{ start: 0, end: this.size }]);
      this.#hasher = new HashCursor(
        this.size,
        this.written,
        (p, l) => ingest.read(p, l),
        this.opts.memoryPerBlob,
      );
      throw new PrewarmError(
        ErrorCodes.NETWORK,
        `blob ${this.digest}: stream ended at ${pos} of ${this.size}`,
        { retryable: true },
      );
    }
    await ingest.record(0, this.size);
  }

  #emitProgress(): void {
    const bytesDone = this.written.size;
    this.emit('progress', bytesDone);
    for (const l of this.#progressListeners) l({ digest: this.digest, bytesDone, size: this.size });
  }
}

/**
 * Takes `n` bytes from the node-wide bucket and the download's own (either may be
 * unlimited); undefined when neither limits, so the hot path stays synchronous.
 */
function takeTokens(
  node: TokenBucket,
  own: TokenBucket | undefined,
  n: number,
  signal: AbortSignal,
): Promise<unknown> | undefined {
  const a = node.unlimited ? undefined : node.take(n, signal);
  const b = own === undefined || own.unlimited ? undefined : own.take(n, signal);
  if (a && b) return Promise.all([a, b]);
  return a ?? b;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * Feeds a body's chunks to `onChunk` through 'data' events: cheaper per chunk than async
 * iteration, which matters when a shaped link delivers a few packets per read across many
 * connections. A returned promise pauses the body until it settles; `false` (or a promise
 * of it) stops reading. Resolves at the end of the body, or early on `false`; an early
 * close resolves too (the caller compares positions and treats a short body as an error).
 */
function pump(
  body: BlobResponse['body'],
  onChunk: (chunk: Buffer) => boolean | Promise<boolean>,
  signal: AbortSignal,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    const finish = (err?: unknown) => {
      if (settled) return;
      settled = true;
      body.off('data', onData);
      body.off('end', onEnd);
      body.off('close', onEnd);
      body.off('error', finish);
      signal.removeEventListener('abort', onAbort);
      if (err === undefined) resolve();
      else reject(err);
    };
    /** The promise an onChunk call returned and that has not settled yet. */
    let pending: Promise<unknown> | undefined;
    // The body can end while the last chunk's promise (a write) is still running; the
    // caller must not see the end before that write is done.
    const onEnd = () => {
      if (pending) void pending.then(() => finish(), finish);
      else finish();
    };
    const onAbort = () => finish(abortError(signal));
    const onData = (chunk: Buffer) => {
      let r: boolean | Promise<boolean>;
      try {
        r = onChunk(chunk);
      } catch (err) {
        finish(err);
        return;
      }
      if (r === true) return;
      if (r === false) {
        finish();
        return;
      }
      body.pause();
      const p = r.then((more) => {
        if (pending === p) pending = undefined;
        if (!more) finish();
        else if (!settled) body.resume();
      }, finish);
      pending = p;
    };
    if (signal.aborted) {
      onAbort();
      return;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    body.on('data', onData);
    body.once('end', onEnd);
    body.once('close', onEnd);
    body.once('error', finish);
  });
}

/** Stops reading a body we no longer need; undici reports that as an 'error', which is expected here. */
function discardBody(body: BlobResponse['body']): void {
  body.on('error', () => undefined);
  body.destroy();
}
