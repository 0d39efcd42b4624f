import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { after, describe, it } from 'node:test';
import { FsBlobStore } from '../../agent/src/store/fs-store.js';
import { sha256 } from '../../oci/src/digest.js';
import { Cleanup, makeTempDir } from '../harness/index.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

const MiB = 1024 * 1024;

/** Filesystem type of `dir` as `stat -f` names it (ext2/ext3 for ext4, xfs, tmpfs, …). */
function fsType(dir: string): string {
  return execFileSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' }).trim();
}

/** Bytes of `path` resident in the page cache (util-linux fincore). */
function residentBytes(path: string): number {
  return Number(execFileSync('fincore', ['-b', '-n', '-o', 'RES', path], { encoding: 'utf8' }).trim());
}

/** Splits `data` into pieces of random sizes (1 B … maxPiece), each piece into 1–4 buffers. */
function randomPieces(
  data: Buffer,
  maxPiece: number,
  seed: number,
): { position: number; buffers: Buffer[] }[] {
  let s = seed;
  const rand = (n: number) => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s % n;
  };
  const out: { position: number; buffers: Buffer[] }[] = [];
  for (let pos = 0; pos < data.length; ) {
    const len = Math.min(data.length - pos, 1 + rand(maxPiece));
    const piece = data.subarray(pos, pos + len);
    const buffers: Buffer[] = [];
    for (let at = 0, k = 1 + rand(4); at < len; k--) {
      const n = k <= 1 ? len - at : 1 + rand(len - at);
      buffers.push(piece.subarray(at, at + n));
      at += n;
    }
    out.push({ position: pos, buffers });
    pos += len;
  }
  return out;
}

/** Fisher–Yates with a fixed seed, so a failure reproduces. */
function shuffled<T>(xs: T[], seed: number): T[] {
  const a = [...xs];
  let s = seed;
  for (let i = a.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    const j = s % (i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

describe('store direct I/O (O_DIRECT ingest)', () => {
  it('is used on ext4/xfs and keeps ingest data out of the page cache; buffered when turned off', async (t) => {
    const dir = await makeTempDir('dio', cleanup);
    const type = fsType(dir);
    if (!['ext2/ext3', 'xfs'].includes(type)) {
      t.skip(`temp dir is on ${type}; this check needs ext4 or xfs`);
      return;
    }
    const data = randomBytes(8 * MiB);
    const digest = sha256(data);
    const direct = await new FsBlobStore(`${dir}/direct`, { fsync: false }).init();
    const buffered = await new FsBlobStore(`${dir}/buffered`, { fsync: false, directIo: false }).init();
    assert.equal(direct.directIo, true);
    assert.equal(buffered.directIo, false);
    const resident: Record<string, number> = {};
    for (const [name, store] of [
      ['direct', direct],
      ['buffered', buffered],
    ] as const) {
      const ing = await store.openIngest(digest, data.length);
      for (let p = 0; p < data.length; p += MiB) await ing.write([data.subarray(p, p + MiB)], p);
      resident[name] = residentBytes(ing.dataPath);
      await ing.record(0, data.length);
      await ing.commit(digest);
      assert.ok((await readFile(store.blobPath(digest))).equals(data), `${name}: stored bytes differ`);
    }
    assert.equal(resident.direct, 0, 'direct writes left pages in the page cache');
    assert.ok(resident.buffered! >= 4 * MiB, `buffered writes: only ${resident.buffered} bytes cached`);
  });

  for (const directIo of [true, false]) {
    it(`writes unaligned pieces in any order and in parallel, reads back any span (directIo: ${directIo})`, async () => {
      const store = await new FsBlobStore(await makeTempDir('dio', cleanup), {
        fsync: false,
        directIo,
      }).init();
      const data = randomBytes(5 * MiB + 123);
      const digest = sha256(data);
      const ing = await store.openIngest(digest, data.length);
      const pieces = shuffled(randomPieces(data, 700 * 1024, 7), 11);
      // Parallel: neighbouring pieces share pages at their unaligned edges.
      await Promise.all(pieces.map((p) => ing.write(p.buffers, p.position)));
      for (const [start, len] of [
        [0, 1],
        [1, 4095],
        [4095, 2],
        [123_457, 1_234_567],
        [data.length - 5000, 5000],
        [0, data.length],
      ] as const) {
        const got = await ing.read(start, len);
        assert.ok(got.equals(data.subarray(start, start + len)), `read(${start}, ${len}) differs`);
      }
      await ing.record(0, data.length);
      await ing.commit(digest);
      assert.ok((await readFile(store.blobPath(digest))).equals(data));
    });
  }

  it('resumes an ingest: bytes recorded before a close are kept, the rest completes it', async () => {
    const store = await new FsBlobStore(await makeTempDir('dio', cleanup), { fsync: true }).init();
    const data = randomBytes(3 * MiB + 4097);
    const digest = sha256(data);
    const cut = MiB + 17;
    const first = await store.openIngest(digest, data.length);
    await first.write([data.subarray(0, cut)], 0);
    await first.record(0, cut);
    await first.close();

    const again = await store.openIngest(digest, data.length);
    assert.deepEqual(again.durable.ranges, [{ start: 0, end: cut }]);
    assert.ok((await again.read(0, cut)).equals(data.subarray(0, cut)));
    await again.write([data.subarray(cut)], cut);
    await again.record(cut, data.length);
    await again.commit(digest);
    assert.ok((await readFile(store.blobPath(digest))).equals(data));
  });

  it('reports a read past the written data as a corrupt ingest, not as data', async () => {
    const store = await new FsBlobStore(await makeTempDir('dio', cleanup), { fsync: false }).init();
    const data = randomBytes(10_000);
    const ing = await store.openIngest(sha256(data), data.length);
    await ing.write([data.subarray(0, 6000)], 0);
    await assert.rejects(ing.read(5000, 5000), /shorter than recorded/);
    await ing.discard();
  });
});
