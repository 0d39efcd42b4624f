import { EventEmitter, setMaxListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BlobResponse } from '../../../oci/src/client.js';
import { header, toNetworkError } from '../../../oci/src/client.js';
import type { Digest } from '../../../oci/src/digest.js';
import { abortError, ErrorCodes, isPrewarmError, PrewarmError } from '../../../oci/src/errors.js';
import { backoffDelay } from '../../../oci/src/retry.js';
import type { BlobStore, Ingest } from '../store/blob-store.js';
import { type ByteRange, RangeSet } from '../store/ranges.js';
import type { ResolvedFetcherOptions } from './blob-fetcher-options.js';
import { consumeBody } from './body-consumer.js';
import { discardBody } from './body-pump.js';
import { type ChunkState, nextChunk, unclaimed, unclaimedPriority } from './chunk-scheduler.js';
import { DownloadSubscribers } from './download-subscribers.js';
import type { FetchOptions, FetchResult, InflightBlob } from './fetcher.js';
import { HashCursor } from './hash-cursor.js';
import { PriorityHold } from './priority-hold.js';
import { RampParking } from './ramp-parking.js';
import { rangeResponseKind } from './range-response.js';
import { SourcePicker } from './source-picker.js';
import type { BlobSource, BlobTarget } from './sources.js';
import type { Semaphore, TokenBucket } from './token-bucket.js';

/** What every download of one fetcher shares. */
export interface DownloadContext {
  store: BlobStore;
  opts: ResolvedFetcherOptions;
  /** The node-wide connection limit. */
  connections: Semaphore;
  /** The node-wide bandwidth cap. */
  bucket: TokenBucket;
}

/** What the call that starts a download decides for it (joiners change none of it). */
export interface DownloadPlan {
  sources: BlobSource[];
  priority?: FetchOptions['priority'] | undefined;
  /** This download's own cap (FetchOptions.bandwidthBytesPerSec), on top of the node-wide one. */
  ownBucket?: TokenBucket | undefined;
  /** Look for the blob in the store first (the caller has not), and end at once if committed. */
  checkStore: boolean;
}

/** The result of a blob found committed: nothing fetched. */
export function committedResult(target: BlobTarget): FetchResult {
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

/**
 * One blob's download into the store: a pool of workers claims ranges (chunk-scheduler.ts),
 * each fetched from the preferred source (source-picker.ts) and written in batches
 * (ingest-writer.ts) while the hash cursor follows in byte order. Failed requests are
 * retried with backoff until `retry.attempts` consecutive failures; a server that ignores
 * Range gets the whole blob read from its one stream; a digest mismatch after resumed or
 * peer bytes is retried once from the registry alone. Callers follow it through
 * `subscribe`; readers such as the mirror read it as an InflightBlob.
 */
export class Download extends EventEmitter implements InflightBlob {
  readonly digest: Digest;
  readonly size: number;
  written = new RangeSet();
  dataPath: string | undefined;
  readonly promise: Promise<FetchResult>;
  readonly target: BlobTarget;
  #resolve!: (r: FetchResult) => void;
  #reject!: (e: unknown) => void;
  readonly #ctx: DownloadContext;
  readonly #ownBucket: TokenBucket | undefined;
  readonly #checkStore: boolean;
  readonly #controller = new AbortController();
  readonly #subscribers = new DownloadSubscribers((reason) => this.abort(reason));
  readonly #sources: SourcePicker;
  readonly #priority: PriorityHold;
  readonly #ramp = new RampParking();
  #ingest: Ingest | undefined;
  #hasher: HashCursor | undefined;
  /** Ranges claimed by a worker and not yet finished or given back. */
  #inFlight = new RangeSet();
  #fatal: unknown;
  #failures = 0;
  #streamMode = false;
  #fromRegistry = 0;
  #fromPeers = 0;
  #alreadyPresent = 0;
  /** Workers of this attempt; those with an index below the ramp's limit may hold a range. */
  #workers = 0;

  constructor(ctx: DownloadContext, target: BlobTarget, plan: DownloadPlan) {
    super();
    this.#ctx = ctx;
    this.target = target;
    this.digest = target.digest;
    this.size = target.size;
    this.#sources = new SourcePicker(plan.sources);
    this.#priority = new PriorityHold(target.size, plan.priority);
    this.#ownBucket = plan.ownBucket;
    this.#checkStore = plan.checkStore;
    // One abort listener per in-flight request and waiter; the count is bounded by concurrency.
    setMaxListeners(0, this.#controller.signal);
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

  /** One caller's wait for the outcome (see DownloadSubscribers.follow). */
  subscribe(opts: FetchOptions, joined: boolean): Promise<FetchResult> {
    return this.#subscribers.follow(this.promise, opts, joined);
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
    if (this.#checkStore) {
      const existing = await this.#ctx.store.stat(this.digest);
      if (existing && existing.size === this.size) {
        this.#emitProgress(this.size);
        return committedResult(this.target);
      }
    }
    let result = await this.#attempt();
    if (result instanceof PrewarmError) {
      // A mismatch after resuming old bytes or taking bytes from a peer may be their
      // fault, not the registry's: start over once, from the registry only.
      if (this.#alreadyPresent === 0 && this.#fromPeers === 0) throw result;
      this.#reset();
      this.#sources.skipAllPeers();
      result = await this.#attempt();
      if (result instanceof PrewarmError) throw result;
    }
    return result;
  }

  #reset(): void {
    this.written = new RangeSet();
    this.#inFlight = new RangeSet();
    this.#fatal = undefined;
    this.#failures = 0;
    this.#streamMode = false;
    this.#fromRegistry = 0;
    this.#fromPeers = 0;
    this.#alreadyPresent = 0;
  }

  /** One pass; resolves to the digest error (so #run may retry) or the result. */
  async #attempt(): Promise<FetchResult | PrewarmError> {
    const { opts } = this.#ctx;
    const ingest = await this.#ctx.store.openIngest(this.digest, this.size);
    this.#ingest = ingest;
    this.dataPath = ingest.dataPath;
    try {
      this.written = new RangeSet(ingest.durable.ranges);
      this.#alreadyPresent = this.written.size;
      this.#inFlight = new RangeSet();
      this.#hasher = this.#newHasher(ingest);
      this.#emitProgress();
      // As many workers as chunks of the minimum size fit in what is left, at most the maximum.
      const todo = unclaimed(this.#chunkState()).size;
      this.#workers =
        todo === 0 ? 0 : Math.max(1, Math.min(opts.concurrencyPerBlob, Math.ceil(todo / opts.minChunkSize)));
      this.#ramp.restart(opts.initialConcurrency, Math.max(1, this.#workers), opts.rampWindowMs);
      await Promise.all(Array.from({ length: this.#workers }, (_, i) => this.#worker(ingest, i)));
      return await this.#commit(ingest);
    } finally {
      this.#hasher?.clear();
      await ingest.close();
    }
  }

  /** After the workers: checks that every byte is hashed, commits, and builds the result. */
  async #commit(ingest: Ingest): Promise<FetchResult | PrewarmError> {
    const hasher = this.#hasher!;
    if (this.#fatal !== undefined) throw this.#fatal;
    if (this.#controller.signal.aborted) throw abortError(this.#controller.signal);
    await hasher.drain();
    if (!hasher.done) {
      throw new PrewarmError(
        ErrorCodes.STORE_CORRUPT,
        `blob ${this.digest}: hashed ${hasher.position} of ${this.size} bytes`,
      );
    }
    try {
      await ingest.commit(hasher.digest());
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
      bytesReread: hasher.rereadBytes,
      ranged: !this.#streamMode,
      ...(this.#streamMode || this.#workers === 0 ? {} : { connections: this.#ramp.limit }),
      joined: false,
      ...(this.#ownBucket ? { capWaits: this.#ownBucket.waits } : {}),
    };
  }

  #newHasher(ingest: Ingest): HashCursor {
    return new HashCursor(this.size, this.written, (p, l) => ingest.read(p, l), this.#ctx.opts.memoryPerBlob);
  }

  #chunkState(): ChunkState {
    return {
      size: this.size,
      done: this.written,
      inFlight: this.#inFlight,
      priority: this.#priority.ranges,
      holding: this.#priority.holding,
      connections: this.#ramp.limit,
    };
  }

  /** Nothing left to hand out: every byte is on disk or claimed by a worker. */
  #allClaimed(): boolean {
    return unclaimed(this.#chunkState()).isEmpty;
  }

  /** True when only held bytes are left to claim (the worker waits for the hold to lift). */
  #heldBack(): boolean {
    return this.#priority.holding && unclaimedPriority(this.#chunkState()).length === 0;
  }

  /** Claims the next range for a worker (none in stream mode: the one stream owns the blob). */
  #claim(): ByteRange | undefined {
    if (this.#streamMode) return undefined;
    const range = nextChunk(this.#chunkState(), this.#ctx.opts);
    if (range) this.#inFlight.add(range.start, range.end);
    return range;
  }

  async #worker(ingest: Ingest, index: number): Promise<void> {
    try {
      await this.#work(ingest, index);
    } finally {
      // Parked workers must notice when the work runs out, or Promise.all never settles.
      this.#ramp.wakeAll();
    }
  }

  async #work(ingest: Ingest, index: number): Promise<void> {
    const signal = this.#controller.signal;
    while (this.#fatal === undefined && !signal.aborted && !this.#streamMode) {
      if (index >= this.#ramp.limit) {
        if (this.#ramp.frozen || this.#allClaimed()) return;
        await this.#ramp.park(signal);
        continue;
      }
      if (this.#heldBack()) {
        if (this.#allClaimed()) return;
        try {
          await this.#priority.wait(signal);
        } catch {
          return;
        }
        continue;
      }
      let release: () => void;
      try {
        release = await this.#ctx.connections.acquire(signal);
      } catch {
        return;
      }
      try {
        const range = this.#claim();
        // Held: give the connection back and wait for the hold to lift (loop top).
        if (!range && this.#priority.holding) continue;
        if (!range) return;
        try {
          await this.#fetchRange(ingest, range);
          this.#failures = 0;
        } catch (err) {
          const delay = this.#retryDelay(err);
          if (delay === undefined) return;
          // The connection is not held while backing off: other blobs may use it.
          release();
          release = () => undefined;
          try {
            await sleep(delay, undefined, { signal });
          } catch {
            return;
          }
        }
      } finally {
        release();
      }
    }
  }

  /**
   * The backoff before retrying after a failed range, or undefined when the worker should
   * stop: the download is over (aborted, failed, or owned by the one stream), or the error
   * is permanent or the last allowed consecutive failure, which fails the download.
   */
  #retryDelay(err: unknown): number | undefined {
    // In stream mode the single stream owns the blob; stray ranged errors do not matter.
    if (this.#controller.signal.aborted || this.#fatal !== undefined || this.#streamMode) return undefined;
    const retry = this.#ctx.opts.retry;
    const e = isPrewarmError(err) ? err : toNetworkError(err, `blob ${this.digest}`);
    if (!e.retryable || ++this.#failures >= (retry?.attempts ?? 8)) {
      this.#fail(e);
      return undefined;
    }
    const ra = typeof e.detail?.retryAfterMs === 'number' ? e.detail.retryAfterMs : undefined;
    return backoffDelay(this.#failures, retry ?? {}, ra);
  }

  #fail(err: unknown): void {
    if (this.#fatal === undefined) this.#fatal = err;
    this.#controller.abort(err);
  }

  /** Fetches a claimed range; whatever is not on disk when it ends is claimable again. */
  async #fetchRange(ingest: Ingest, range: ByteRange): Promise<void> {
    try {
      await this.#fetchClaimed(ingest, range);
    } finally {
      this.#inFlight.remove(range.start, range.end);
    }
  }

  async #fetchClaimed(ingest: Ingest, range: ByteRange): Promise<void> {
    const { res, source } = await this.#sources.open(this.target, range, this.#controller.signal);
    let kind: 'range' | 'whole';
    try {
      kind = rangeResponseKind(
        { statusCode: res.statusCode, contentRange: header(res.headers, 'content-range') },
        range,
        this.size,
        this.digest,
      );
    } catch (err) {
      discardBody(res.body);
      throw err;
    }
    if (kind === 'whole') {
      // The server ignored Range: take this response as the whole blob, once.
      if (this.#streamMode) {
        discardBody(res.body);
        return;
      }
      this.#streamMode = true;
      await this.#streamWhole(ingest, res, source);
      return;
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
      this.#sources.skipPeer(source);
      // Keep what arrived: record it; the rest becomes claimable again (#fetchRange).
      pos = (err as { position?: number }).position ?? pos;
      if (pos > range.start) await ingest.record(range.start, pos).catch(() => undefined);
      throw err;
    }
    await ingest.record(range.start, range.end);
  }

  /** Reads a response body into [start, end) (body-consumer.ts), counting bytes by source. */
  #consume(
    ingest: Ingest,
    res: BlobResponse,
    source: BlobSource,
    start: number,
    end: number,
  ): Promise<number> {
    const { bucket, opts } = this.#ctx;
    return consumeBody(res.body, start, end, {
      ingest,
      hasher: this.#hasher!,
      signal: this.#controller.signal,
      bucket,
      ownBucket: this.#ownBucket,
      writer: { batchBytes: opts.writeBatchBytes, recordEveryBytes: opts.recordEveryBytes },
      landed: (at, n) => {
        this.written.add(at, at + n);
        if (source.kind === 'peer') this.#fromPeers += n;
        else this.#fromRegistry += n;
        this.#ramp.count(n);
        return this.written;
      },
      flushed: () => this.#emitProgress(),
      label: `blob ${this.digest} from ${source.name}`,
    });
  }

  /** Single-stream fallback: the body is the whole blob from offset 0. */
  async #streamWhole(ingest: Ingest, res: BlobResponse, source: BlobSource): Promise<void> {
    // The ranged workers stop (stream mode); bytes they wrote are the same bytes, so the
    // file stays valid, but the hash restarts from zero on this stream alone.
    this.#hasher?.clear();
    this.written = new RangeSet();
    this.#hasher = this.#newHasher(ingest);
    const pos = await this.#consume(ingest, res, source, 0, this.size);
    if (pos < this.size) {
      // Without Range support there is no resuming inside the blob: the next attempt starts
      // over (an empty `written` makes the whole blob claimable again).
      this.#streamMode = false;
      this.written = new RangeSet();
      this.#hasher = this.#newHasher(ingest);
      throw new PrewarmError(
        ErrorCodes.NETWORK,
        `blob ${this.digest}: stream ended at ${pos} of ${this.size}`,
        { retryable: true },
      );
    }
    await ingest.record(0, this.size);
  }

  #emitProgress(bytesDone = this.written.size): void {
    this.emit('progress', bytesDone);
    this.#subscribers.progress({ digest: this.digest, bytesDone, size: this.size });
  }
}
