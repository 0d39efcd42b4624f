import { createHash, type Hash } from 'node:crypto';
import type { Digest } from '../../../oci/src/digest.js';
import type { RangeSet } from '../store/ranges.js';

/**
 * Computes a blob's sha256 in byte order while its chunks arrive out of order.
 * Buffers that arrive exactly at the cursor are hashed at once; buffers ahead of it are
 * held in memory (up to `memoryLimit` bytes) and hashed when the cursor reaches them;
 * past the limit they are dropped and re-read from the data file, which by then holds
 * them. So the common case hashes every byte straight from the network buffer, with no
 * second pass over the file.
 */
/** Consecutive held buffers from one connection: one entry per range in flight, not per packet. */
interface Run {
  bufs: Buffer[];
  end: number;
}

export class HashCursor {
  readonly #hash: Hash = createHash('sha256');
  /** Held runs by start offset, and the same runs by end offset (to append in O(1)). */
  readonly #runs = new Map<number, Run>();
  readonly #ends = new Map<number, number>();
  readonly #memoryLimit: number;
  #held = 0;
  #cursor = 0;
  #draining: Promise<void> | undefined;
  /** Bytes hashed from the data file instead of memory (resume or memory pressure). */
  rereadBytes = 0;

  constructor(
    readonly size: number,
    /** Ranges whose bytes are on disk (written), to re-read what is not held in memory. */
    readonly written: RangeSet,
    readonly read: (position: number, length: number) => Promise<Buffer>,
    memoryLimit = 64 * 1024 * 1024,
  ) {
    this.#memoryLimit = memoryLimit;
  }

  get position(): number {
    return this.#cursor;
  }

  get done(): boolean {
    return this.#cursor >= this.size;
  }

  /**
   * Offers bytes received at `offset`. Returns true when they were hashed or kept; false
   * when dropped for memory (the caller must have written them to disk before `drain`).
   */
  offer(offset: number, buf: Buffer): boolean {
    if (offset === this.#cursor && this.#draining === undefined) {
      this.#hash.update(buf);
      this.#cursor += buf.byteLength;
      this.#takeRuns();
      return true;
    }
    if (offset < this.#cursor || this.#held + buf.byteLength > this.#memoryLimit) return false;
    const end = offset + buf.byteLength;
    const start = this.#ends.get(offset);
    const run = start === undefined ? undefined : this.#runs.get(start);
    if (start !== undefined && run) {
      run.bufs.push(buf);
      run.end = end;
      this.#ends.delete(offset);
      this.#ends.set(end, start);
    } else {
      this.#runs.set(offset, { bufs: [buf], end });
      this.#ends.set(end, offset);
    }
    this.#held += buf.byteLength;
    return true;
  }

  #takeRuns(): void {
    for (let run = this.#runs.get(this.#cursor); run !== undefined; run = this.#runs.get(this.#cursor)) {
      this.#runs.delete(this.#cursor);
      this.#ends.delete(run.end);
      for (const b of run.bufs) {
        this.#hash.update(b);
        this.#held -= b.byteLength;
      }
      this.#cursor = run.end;
    }
  }

  /**
   * Advances the cursor through everything available (memory, then written ranges on
   * disk). Safe to call concurrently: calls share one drain.
   */
  drain(): Promise<void> {
    if (!this.#draining) {
      this.#draining = this.#drainLoop().finally(() => {
        this.#draining = undefined;
      });
    }
    return this.#draining;
  }

  async #drainLoop(): Promise<void> {
    for (;;) {
      this.#takeRuns();
      if (this.#cursor >= this.size) return;
      const runEnd = this.written.runEnd(this.#cursor);
      if (runEnd === undefined) return;
      // Read up to the next held run so held runs stay aligned to the cursor.
      let end = Math.min(runEnd, this.#cursor + 4 * 1024 * 1024);
      for (const k of this.#runs.keys()) if (k > this.#cursor && k < end) end = k;
      const buf = await this.read(this.#cursor, end - this.#cursor);
      this.#hash.update(buf);
      this.rereadBytes += buf.byteLength;
      this.#cursor = end;
    }
  }

  /** Drops held buffers (after an abort) so memory is released. */
  clear(): void {
    this.#runs.clear();
    this.#ends.clear();
    this.#held = 0;
  }

  digest(): Digest {
    return `sha256:${this.#hash.digest('hex')}`;
  }
}
