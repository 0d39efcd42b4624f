import type { Ingest } from '../store/blob-store.js';
// The store does not expose its direct-I/O alignment through `Ingest`; this module is the
// one place in fetch/ that knows it (see `RangeWriter.#flushOnce`).
import { dropBytes, takeBytes } from '../util/buffers.js';

export interface RangeWriterOptions {
  /** Bytes gathered before one vectored write (BlobFetcherOptions.writeBatchBytes). */
  batchBytes: number;
  /** Bytes between durable records within the range (BlobFetcherOptions.recordEveryBytes). */
  recordEveryBytes: number;
}

export interface RangeWriterHooks {
  /**
   * Called after [start, start + length) reached the data file and before the flush
   * records or reports anything: the download marks the bytes written and counts them (and
   * may hash them; the flush waits for a returned promise).
   */
  landed(start: number, length: number): Promise<void> | undefined;
  /** Called at the end of each flush that wrote something (progress). */
  flushed(): void;
}

/**
 * Writes one range's bytes into an ingest as they arrive from the network: gathers them
 * into batches of `batchBytes` (one vectored syscall instead of one per packet), keeps
 * mid-range writes aligned so the store can write them with O_DIRECT, and records durable
 * progress every `recordEveryBytes` so a crash loses at most that much of the range.
 *
 * Flushes run one at a time (`flush` queues behind the one in progress): the error path's
 * last flush must not write a batch that a flush still in progress is writing, which would
 * count bytes twice or mark bytes written past the data.
 */
export class RangeWriter {
  readonly #ingest: Ingest;
  readonly #opts: RangeWriterOptions;
  readonly #hooks: RangeWriterHooks;
  #batch: Buffer[] = [];
  /** File offset of the batch's first byte: everything before it is written. */
  #batchStart: number;
  #batchBytes = 0;
  /** End of the last durable record within this range. */
  #recorded: number;
  #flushing: Promise<void> = Promise.resolve();

  constructor(ingest: Ingest, start: number, opts: RangeWriterOptions, hooks: RangeWriterHooks) {
    this.#ingest = ingest;
    this.#opts = opts;
    this.#hooks = hooks;
    this.#batchStart = start;
    this.#recorded = start;
  }

  /** End of the bytes written so far (the range's start before the first write). */
  get position(): number {
    return this.#batchStart;
  }

  /** True when the batch is large enough to write (`flush(false)`). */
  get full(): boolean {
    return this.#batchBytes >= this.#opts.batchBytes;
  }

  /** Appends the next bytes of the range to the batch (the buffer is kept, not copied). */
  push(buf: Buffer): void {
    this.#batch.push(buf);
    this.#batchBytes += buf.byteLength;
  }

  /**
   * Writes the batch: all of it when `final` (the range's end, or giving up), else up to the
   * last `writeAlignment` boundary. Rejects with the write's (or a hook's) error.
   */
  flush(final: boolean): Promise<void> {
    const p = this.#flushing.then(() => this.#flushOnce(final));
    this.#flushing = p.catch(() => undefined);
    return p;
  }

  async #flushOnce(final: boolean): Promise<void> {
    if (this.#batchBytes === 0) return;
    let n = this.#batchBytes;
    if (!final) {
      // Only up to the last `writeAlignment` boundary, so the store can write it with direct I/O; the
      // rest waits for the next batch.
      const align = this.#ingest.writeAlignment;
      const cut = Math.floor((this.#batchStart + this.#batchBytes) / align) * align - this.#batchStart;
      if (cut > 0) n = cut;
    }
    const start = this.#batchStart;
    // The batch changes only once the write succeeded: a failed write keeps every byte for
    // the caller's last flush, and nothing unwritten is ever marked written.
    await this.#ingest.write(n === this.#batchBytes ? this.#batch : takeBytes(this.#batch, n), start);
    this.#batch = dropBytes(this.#batch, n);
    this.#batchStart += n;
    this.#batchBytes -= n;
    await this.#hooks.landed(start, n);
    if (this.#batchStart - this.#recorded >= this.#opts.recordEveryBytes) {
      await this.#ingest.record(this.#recorded, this.#batchStart);
      this.#recorded = this.#batchStart;
    }
    this.#hooks.flushed();
  }
}
