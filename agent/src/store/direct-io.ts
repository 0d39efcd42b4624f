import { constants } from 'node:fs';
import { type FileHandle, open, rm } from 'node:fs/promises';

/**
 * O_DIRECT for the ingest data file: bulk bytes go from an aligned staging buffer to the
 * disk without passing through the page cache.
 *
 * Why: a prewarm writes gigabytes that the node will not read again soon (containerd
 * reads them once, through the mirror). Buffered writes copy every byte into newly
 * allocated page-cache pages and push the node's working set out of memory; on this
 * project's test VMs that copy costs more CPU than the sha256 (`bench/README.md` has the
 * numbers). Direct writes skip both.
 *
 * Node has no aligned allocator, so the pool allocates one ArrayBuffer with a page of slack
 * and probes, once per store, which offset into it the kernel accepts for O_DIRECT (the
 * address alignment the filesystem and device require is not visible from JavaScript).
 * ArrayBuffer backing stores never move, so the offset stays valid. File offsets and
 * lengths of direct I/O are kept to multiples of ALIGN; the few bytes outside an aligned
 * span go through the ordinary buffered handle (see `splitAligned`).
 */

/** File offset and length alignment of every direct write and read (covers 512e and 4Kn disks). */
export const ALIGN = 4096;
/** One staging buffer; direct writes and reads move at most this much per syscall. */
export const SLAB_BYTES = 1024 * 1024;

export class AlignedPool {
  readonly #free: Buffer[];
  readonly #waiters: Array<(b: Buffer) => void> = [];

  private constructor(slabs: Buffer[]) {
    this.#free = slabs;
  }

  /**
   * Allocates `count` slabs and finds their alignment by direct-writing one page to
   * `probePath` (created and removed here). Undefined when the filesystem refuses
   * O_DIRECT (EINVAL on open, as on some FUSE and overlay mounts) or accepts no offset.
   */
  static async probe(probePath: string, count: number): Promise<AlignedPool | undefined> {
    let fh: FileHandle;
    try {
      fh = await open(
        probePath,
        constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT,
      );
    } catch {
      return undefined;
    }
    try {
      const ab = new ArrayBuffer(count * SLAB_BYTES + ALIGN);
      // malloc aligns to 16 bytes, so the aligned offset is one of these.
      for (let off = 0; off < ALIGN; off += 16) {
        try {
          await fh.write(new Uint8Array(ab, off, ALIGN), 0, ALIGN, 0);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EINVAL') continue;
          return undefined;
        }
        const slabs: Buffer[] = [];
        for (let i = 0; i < count; i++) slabs.push(Buffer.from(ab, off + i * SLAB_BYTES, SLAB_BYTES));
        return new AlignedPool(slabs);
      }
      return undefined;
    } finally {
      await fh.close().catch(() => undefined);
      await rm(probePath, { force: true });
    }
  }

  /** A free slab; waits for one when all are in use (each use is one syscall long). */
  acquire(): Promise<Buffer> | Buffer {
    const b = this.#free.pop();
    if (b) return b;
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  release(b: Buffer): void {
    const w = this.#waiters.shift();
    if (w) w(b);
    else this.#free.push(b);
  }
}

/**
 * The part of [position, position + length) that direct I/O may write: whole ALIGN
 * blocks only. `start === end` when there is none.
 */
export function splitAligned(position: number, length: number): { start: number; end: number } {
  const start = Math.ceil(position / ALIGN) * ALIGN;
  const end = Math.floor((position + length) / ALIGN) * ALIGN;
  return end > start ? { start, end } : { start: position, end: position };
}

/** Opens `path` for direct writes and reads (it must exist). */
export function openDirect(path: string): Promise<FileHandle> {
  return open(path, constants.O_RDWR | constants.O_DIRECT);
}

/**
 * Copies `length` bytes of `buffers`, starting `skip` bytes in, to `position` of `fh`
 * through pool slabs. `position` and `length` must be ALIGN multiples.
 */
export async function writeDirect(
  fh: FileHandle,
  pool: AlignedPool,
  buffers: readonly Buffer[],
  skip: number,
  length: number,
  position: number,
): Promise<void> {
  let bi = 0;
  let bo = skip;
  while (bi < buffers.length && bo >= buffers[bi]!.byteLength) bo -= buffers[bi++]!.byteLength;
  let done = 0;
  while (done < length) {
    const slab = await pool.acquire();
    try {
      const n = Math.min(SLAB_BYTES, length - done);
      let filled = 0;
      while (filled < n) {
        const b = buffers[bi]!;
        const k = Math.min(n - filled, b.byteLength - bo);
        b.copy(slab, filled, bo, bo + k);
        filled += k;
        bo += k;
        if (bo === b.byteLength) {
          bi++;
          bo = 0;
        }
      }
      let w = 0;
      // A short direct write is legal; the remainder stays aligned because writes are.
      while (w < n) {
        const { bytesWritten } = await fh.write(slab, w, n - w, position + done + w);
        if (bytesWritten <= 0 || bytesWritten % ALIGN !== 0)
          throw new Error(`short direct write (${bytesWritten} of ${n - w} bytes)`);
        w += bytesWritten;
      }
      done += n;
    } finally {
      pool.release(slab);
    }
  }
}

/**
 * Reads [position, position + length) of `fh` with direct I/O into a new Buffer. The span
 * read from disk is widened to ALIGN boundaries (a read past the end of the file returns
 * short, which is fine for the widened tail). Throws (code SHORT_READ) when the file ends
 * before `position + length`.
 */
export async function readDirect(
  fh: FileHandle,
  pool: AlignedPool,
  position: number,
  length: number,
): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  let got = 0;
  while (got < length) {
    const slab = await pool.acquire();
    try {
      const at = position + got;
      const blockStart = Math.floor(at / ALIGN) * ALIGN;
      const lead = at - blockStart;
      const want = Math.min(SLAB_BYTES, Math.ceil((lead + length - got) / ALIGN) * ALIGN);
      const { bytesRead } = await fh.read(slab, 0, want, blockStart);
      const usable = Math.min(bytesRead - lead, length - got);
      if (usable <= 0) throw Object.assign(new Error('short read'), { code: 'SHORT_READ' });
      slab.copy(out, got, lead, lead + usable);
      got += usable;
    } finally {
      pool.release(slab);
    }
  }
  return out;
}
