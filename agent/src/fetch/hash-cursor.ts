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
export class HashCursor {
  readonly #hash: Hash = createHash('sha256');
  readonly #pending = new Map<number, Buffer>();
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
      this.#takePending();
      return true;
    }
    if (offset < this.#cursor || this.#held + buf.byteLength > this.#memoryLimit) return false;
    this.#pending.set(offset, buf);
    this.#held += buf.byteLength;
    return true;
  }

  #takePending(): void {
    for (let b = this.#pending.get(this.#cursor); b !== undefined; b = this.#pending.get(this.#cursor)) {
      this.#pending.delete(this.#cursor);
      this.#held -= b.byteLength;
      this.#hash.update(b);
      this.#cursor += b.byteLength;
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
      this.#takePending();
      if (this.#cursor >= this.size) return;
      const runEnd = this.written.runEnd(this.#cursor);
      if (runEnd === undefined) return;
      // Read up to the next held buffer so held buffers stay aligned to the cursor.
      let end = Math.min(runEnd, this.#cursor + 4 * 1024 * 1024);
      for (const k of this.#pending.keys()) if (k > this.#cursor && k < end) end = k;
      const buf = await this.read(this.#cursor, end - this.#cursor);
      this.#hash.update(buf);
      this.rereadBytes += buf.byteLength;
      this.#cursor = end;
    }
  }

  /** Drops held buffers (after an abort) so memory is released. */
  clear(): void {
    this.#pending.clear();
    this.#held = 0;
  }

  digest(): Digest {
    return `sha256:${this.#hash.digest('hex')}`;
  }
}
