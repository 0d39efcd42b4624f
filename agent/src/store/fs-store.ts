import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, type ReadStream } from 'node:fs';
import {
  type FileHandle,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  unlink,
  utimes,
} from 'node:fs/promises';
import { join } from 'node:path';
import { type Digest, digestHex, isDigest, parseDigest, sha256 } from '../../../oci/src/digest.js';
import { classifyFsError, ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import { dropBytes, takeBytes } from '../util/buffers.js';
import type { BlobInfo, BlobStore, ImageRecord, Ingest } from './blob-store.js';
import { ALIGN, AlignedPool, openDirect, readDirect, splitAligned, writeDirect } from './direct-io.js';
import { RangeSet } from './ranges.js';

export interface FsBlobStoreOptions {
  /**
   * fsync data and directories on commit. Default true; only tests and benchmarks on
   * throwaway directories turn it off.
   */
  fsync?: boolean;
  /**
   * Write (and re-read) ingest data with O_DIRECT, bypassing the page cache, where the
   * filesystem allows it (probed at `init`). Default true; see `direct-io.ts`.
   */
  directIo?: boolean;
}

/** Staging slabs per store for direct I/O: one per write or read in flight; more wait. */
const DIRECT_SLABS = 16;

/**
 * A content-addressed store on a local filesystem, laid out like containerd's:
 * `blobs/sha256/<hex>` for committed content, `ingest/<hex>/` for partial downloads
 * (data file + journal of durable ranges), `images/` for image records, `tmp/` for
 * atomic small writes. Every name is derived from a validated digest, never from input
 * text, so no reference or digest can escape the root.
 */
export class FsBlobStore implements BlobStore {
  readonly root: string;
  readonly #fsync: boolean;
  readonly #directIo: boolean;
  #pool: AlignedPool | undefined;

  constructor(root: string, opts: FsBlobStoreOptions = {}) {
    this.root = root;
    this.#fsync = opts.fsync ?? true;
    this.#directIo = opts.directIo ?? true;
  }

  /** Creates the directory layout and probes direct I/O; call once before use. */
  async init(): Promise<this> {
    for (const d of ['blobs/sha256', 'ingest', 'images', 'tmp'])
      await mkdir(join(this.root, d), { recursive: true });
    if (this.#directIo && !this.#pool) {
      this.#pool = await AlignedPool.probe(
        join(this.root, 'tmp', `dio-probe-${randomBytes(4).toString('hex')}`),
        DIRECT_SLABS,
      );
    }
    return this;
  }

  /** True when ingest data bypasses the page cache (O_DIRECT accepted by this filesystem). */
  get directIo(): boolean {
    return this.#pool !== undefined;
  }

  blobPath(digest: Digest): string {
    return join(this.root, 'blobs', 'sha256', digestHex(parseDigest(digest)));
  }

  ingestDir(digest: Digest): string {
    return join(this.root, 'ingest', digestHex(parseDigest(digest)));
  }

  async stat(digest: Digest): Promise<BlobInfo | undefined> {
    try {
      const s = await stat(this.blobPath(digest));
      return { digest, size: s.size, accessedAt: s.mtimeMs };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Marks a blob as used now (LRU); missing blobs are ignored. */
  async touch(digest: Digest): Promise<void> {
    const now = new Date();
    await utimes(this.blobPath(digest), now, now).catch(() => undefined);
  }

  async openIngest(digest: Digest, size: number): Promise<Ingest> {
    const dir = this.ingestDir(digest);
    await mkdir(dir, { recursive: true });
    const metaPath = join(dir, 'meta.json');
    let durable = new RangeSet();
    let fresh = true;
    try {
      const meta = JSON.parse(await readFile(metaPath, 'utf8')) as { size?: unknown };
      if (meta.size === size) {
        durable = parseJournal(await readFile(join(dir, 'journal'), 'utf8').catch(() => ''), size);
        fresh = false;
      }
    } catch {
      // No or unreadable meta: start over.
    }
    if (fresh) {
      await rm(join(dir, 'journal'), { force: true });
      await rm(join(dir, 'data'), { force: true });
      await writeAtomic(join(this.root, 'tmp'), metaPath, JSON.stringify({ digest, size }), this.#fsync);
    }
    try {
      const data = await open(join(dir, 'data'), fresh ? 'w+' : 'r+').catch(
        async (err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return open(join(dir, 'data'), 'w+');
          throw err;
        },
      );
      if (!fresh) {
        // A journal entry past the data file's end means the file was lost; trust neither.
        const st = await data.stat();
        const last = durable.ranges.at(-1);
        if (last && last.end > st.size) durable = new RangeSet();
      }
      const journal = await open(join(dir, 'journal'), 'a');
      // Another mount type under the same root (or a changed mount) may refuse O_DIRECT: buffered then.
      const direct = this.#pool
        ? await openDirect(join(dir, 'data')).then(
            (fh) => ({ fh, pool: this.#pool! }),
            () => undefined,
          )
        : undefined;
      return new FsIngest(this, digest, size, dir, data, journal, durable, this.#fsync, direct);
    } catch (err) {
      throw classifyFsError(err, `opening ingest for ${digest}`);
    }
  }

  async putBytes(digest: Digest, bytes: Uint8Array): Promise<void> {
    const actual = sha256(bytes);
    if (actual !== digest) {
      throw new PrewarmError(
        ErrorCodes.DIGEST_MISMATCH,
        `refusing to store ${digest}: content hashes to ${actual}`,
      );
    }
    if (await this.stat(digest)) return;
    try {
      await writeAtomic(join(this.root, 'tmp'), this.blobPath(digest), bytes, this.#fsync);
    } catch (err) {
      throw classifyFsError(err, `storing ${digest}`);
    }
  }

  async readBytes(digest: Digest, limit = 4 * 1024 * 1024): Promise<Buffer> {
    const info = await this.stat(digest);
    if (!info)
      throw new PrewarmError(ErrorCodes.BLOB_UNKNOWN, `blob ${digest} not in store`, { status: 404 });
    if (info.size > limit)
      throw new PrewarmError(
        ErrorCodes.MANIFEST_TOO_LARGE,
        `blob ${digest} is ${info.size} bytes, limit ${limit}`,
      );
    return readFile(this.blobPath(digest));
  }

  createReadStream(digest: Digest, range?: { start: number; end: number }): ReadStream {
    return createReadStream(this.blobPath(digest), range ? { start: range.start, end: range.end } : {});
  }

  async delete(digest: Digest): Promise<boolean> {
    try {
      await unlink(this.blobPath(digest));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  async *list(): AsyncIterable<BlobInfo> {
    const dir = join(this.root, 'blobs', 'sha256');
    for (const name of await readdir(dir)) {
      const digest = `sha256:${name}`;
      if (!isDigest(digest)) continue;
      const info = await this.stat(digest);
      if (info) yield info;
    }
  }

  /** Digests with a partial download in `ingest/`, and when each was last written. */
  async listIngests(): Promise<{ digest: Digest; modifiedAt: number; bytes: number }[]> {
    const out: { digest: Digest; modifiedAt: number; bytes: number }[] = [];
    for (const name of await readdir(join(this.root, 'ingest')).catch(() => [] as string[])) {
      const digest = `sha256:${name}`;
      if (!isDigest(digest)) continue;
      const s = await stat(join(this.root, 'ingest', name, 'data')).catch(() => undefined);
      out.push({
        digest,
        modifiedAt: s?.mtimeMs ?? 0,
        bytes: s?.blocks !== undefined ? s.blocks * 512 : (s?.size ?? 0),
      });
    }
    return out;
  }

  async removeIngest(digest: Digest): Promise<void> {
    await rm(this.ingestDir(digest), { recursive: true, force: true });
  }

  #imagePath(repository: string, ref: string, platform: string): string {
    const key = createHash('sha256').update(`${repository}\n${ref}\n${platform}`).digest('hex');
    return join(this.root, 'images', `${key}.json`);
  }

  async putImage(record: ImageRecord): Promise<void> {
    const body = JSON.stringify(record);
    const tmp = join(this.root, 'tmp');
    try {
      await writeAtomic(
        tmp,
        this.#imagePath(record.repository, record.digest, record.platform),
        body,
        this.#fsync,
      );
      // The tag alias lets the mirror answer a manifest-by-tag request when the upstream is unreachable.
      if (record.tag)
        await writeAtomic(
          tmp,
          this.#imagePath(record.repository, record.tag, record.platform),
          body,
          this.#fsync,
        );
    } catch (err) {
      throw classifyFsError(err, `recording image ${record.repository}`);
    }
  }

  async getImage(repository: string, ref: string, platform: string): Promise<ImageRecord | undefined> {
    try {
      return JSON.parse(await readFile(this.#imagePath(repository, ref, platform), 'utf8')) as ImageRecord;
    } catch {
      return undefined;
    }
  }

  async listImages(): Promise<ImageRecord[]> {
    const seen = new Map<string, ImageRecord>();
    const dir = join(this.root, 'images');
    for (const name of await readdir(dir)) {
      if (!name.endsWith('.json')) continue;
      try {
        const r = JSON.parse(await readFile(join(dir, name), 'utf8')) as ImageRecord;
        const key = `${r.repository}\n${r.digest}\n${r.platform}`;
        const prev = seen.get(key);
        if (!prev || prev.warmedAt < r.warmedAt) seen.set(key, r);
      } catch {
        // A torn record cannot exist (atomic writes); skip anything unreadable.
      }
    }
    return [...seen.values()];
  }

  /** The `images/` directory's mtime (ns): every record write or removal renames or unlinks in it. */
  async imagesStamp(): Promise<{ stamp: string; changedAtMs: number }> {
    const st = await stat(join(this.root, 'images'), { bigint: true });
    return { stamp: `${st.mtimeNs}:${st.ino}`, changedAtMs: Number(st.mtimeNs / 1_000_000n) };
  }

  async deleteImage(record: ImageRecord): Promise<void> {
    await rm(this.#imagePath(record.repository, record.digest, record.platform), { force: true });
    if (record.tag) {
      const alias = await this.getImage(record.repository, record.tag, record.platform);
      if (alias?.digest === record.digest)
        await rm(this.#imagePath(record.repository, record.tag, record.platform), { force: true });
    }
  }
}

class FsIngest implements Ingest {
  /** Direct I/O's block size; buffered writes do not mind, and batches stay the same. */
  readonly writeAlignment = ALIGN;
  readonly durable: RangeSet;
  readonly dataPath: string;
  #closed = false;

  constructor(
    readonly store: FsBlobStore,
    readonly digest: Digest,
    readonly size: number,
    readonly dir: string,
    readonly data: FileHandle,
    readonly journal: FileHandle,
    durable: RangeSet,
    readonly fsync: boolean,
    readonly direct?: { fh: FileHandle; pool: AlignedPool },
  ) {
    this.durable = durable;
    this.dataPath = join(dir, 'data');
  }

  async write(buffers: readonly Buffer[], position: number): Promise<void> {
    if (!this.direct) return this.#writeBuffered(buffers, position);
    const length = buffers.reduce((n, b) => n + b.byteLength, 0);
    const span = splitAligned(position, length);
    if (span.end === span.start) return this.#writeBuffered(buffers, position);
    const head = span.start - position;
    const body = span.end - span.start;
    try {
      await Promise.all([
        head > 0 ? this.#writeBuffered(takeBytes(buffers, head), position) : undefined,
        writeDirect(this.direct.fh, this.direct.pool, buffers, head, body, span.start),
        position + length > span.end
          ? this.#writeBuffered(dropBytes(buffers, head + body), span.end)
          : undefined,
      ]);
    } catch (err) {
      throw classifyFsError(err, `writing ${this.digest}`);
    }
  }

  async #writeBuffered(buffers: readonly Buffer[], position: number): Promise<void> {
    try {
      let pos = position;
      let rest = buffers;
      // writev may write less than asked (rare, but allowed); loop until all is written.
      while (rest.length > 0) {
        const want = rest.reduce((n, b) => n + b.byteLength, 0);
        const { bytesWritten } = await this.data.writev(rest as Buffer[], pos);
        if (bytesWritten === want) return;
        pos += bytesWritten;
        rest = dropBytes(rest, bytesWritten);
      }
    } catch (err) {
      throw classifyFsError(err, `writing ${this.digest}`);
    }
  }

  async read(position: number, length: number): Promise<Buffer> {
    if (this.direct) {
      try {
        return await readDirect(this.direct.fh, this.direct.pool, position, length);
      } catch (err) {
        if ((err as { code?: string }).code === 'SHORT_READ')
          throw new PrewarmError(ErrorCodes.STORE_CORRUPT, `ingest ${this.digest} is shorter than recorded`);
        throw classifyFsError(err, `reading ${this.digest}`);
      }
    }
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await this.data.read(buf, got, length - got, position + got);
      if (bytesRead === 0)
        throw new PrewarmError(ErrorCodes.STORE_CORRUPT, `ingest ${this.digest} is shorter than recorded`);
      got += bytesRead;
    }
    return buf;
  }

  async record(start: number, end: number): Promise<void> {
    if (end <= start) return;
    try {
      if (this.fsync) await this.data.datasync();
      await this.journal.appendFile(`${start} ${end}\n`);
    } catch (err) {
      throw classifyFsError(err, `recording progress of ${this.digest}`);
    }
    this.durable.add(start, end);
  }

  async commit(computed: Digest): Promise<void> {
    if (computed !== this.digest) {
      await this.discard();
      throw new PrewarmError(
        ErrorCodes.DIGEST_MISMATCH,
        `blob ${this.digest}: content hashes to ${computed}`,
        {
          detail: { expected: this.digest, actual: computed },
        },
      );
    }
    const st = await this.data.stat();
    if (st.size !== this.size) {
      await this.discard();
      throw new PrewarmError(
        ErrorCodes.SIZE_MISMATCH,
        `blob ${this.digest}: ${st.size} bytes on disk, descriptor says ${this.size}`,
      );
    }
    try {
      if (this.fsync) await this.data.sync();
      await this.close();
      await rename(this.dataPath, this.store.blobPath(this.digest));
      if (this.fsync) await fsyncDir(join(this.store.root, 'blobs', 'sha256'));
    } catch (err) {
      throw classifyFsError(err, `committing ${this.digest}`);
    }
    await rm(this.dir, { recursive: true, force: true });
  }

  async discard(): Promise<void> {
    await this.close();
    await rm(this.dir, { recursive: true, force: true });
    this.durable.remove(0, Number.MAX_SAFE_INTEGER);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.allSettled([this.data.close(), this.journal.close(), this.direct?.fh.close()]);
  }
}

/** Parses journal lines `start end`; a torn last line (crash mid-append) is ignored. */
export function parseJournal(text: string, size: number): RangeSet {
  const set = new RangeSet();
  for (const line of text.split('\n')) {
    const m = /^(\d+) (\d+)$/.exec(line);
    if (!m) continue;
    const s = Number(m[1]);
    const e = Number(m[2]);
    if (s < e && e <= size) set.add(s, e);
  }
  return set;
}

/** Writes `data` to a temp file, fsyncs, and renames it over `dest`. */
export async function writeAtomic(
  tmpDir: string,
  dest: string,
  data: string | Uint8Array,
  fsync = true,
): Promise<void> {
  const tmp = join(tmpDir, `${randomBytes(8).toString('hex')}.tmp`);
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(data);
    if (fsync) await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, dest);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
