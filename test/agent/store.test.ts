import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { appendFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { HashCursor } from '../../agent/src/fetch/hash-cursor.js';
import { FsBlobStore, parseJournal } from '../../agent/src/store/fs-store.js';
import { RangeSet } from '../../agent/src/store/ranges.js';
import { type Digest, sha256 } from '../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';
import { Cleanup, makeTempDir } from '../harness/index.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

async function newStore(): Promise<FsBlobStore> {
  return new FsBlobStore(await makeTempDir('store', cleanup)).init();
}

describe('FsBlobStore', () => {
  it('commits an ingest only when the digest and size match', async () => {
    const store = await newStore();
    const data = Buffer.from('hello kube-prewarm');
    const digest = sha256(data);
    const ing = await store.openIngest(digest, data.length);
    await ing.write([data.subarray(0, 5), data.subarray(5)], 0);
    await ing.record(0, data.length);
    await ing.commit(digest);
    assert.equal((await store.stat(digest))?.size, data.length);
    assert.deepEqual(await readdir(join(store.root, 'ingest')), []);

    const other = sha256(Buffer.from('other'));
    const bad = await store.openIngest(other, 5);
    await bad.write([Buffer.from('wrong')], 0);
    await assert.rejects(bad.commit(sha256(Buffer.from('wrong'))), (e) =>
      isPrewarmError(e, ErrorCodes.DIGEST_MISMATCH),
    );
    assert.equal(await store.stat(other), undefined);
    assert.equal(existsSync(store.ingestDir(other)), false);
  });

  it('resumes an ingest from its journal and ignores a torn last line', async () => {
    const store = await newStore();
    const data = Buffer.alloc(3000, 7);
    const digest = sha256(data);
    const ing = await store.openIngest(digest, data.length);
    await ing.write([data.subarray(0, 1000)], 0);
    await ing.record(0, 1000);
    await ing.write([data.subarray(2000, 3000)], 2000);
    await ing.record(2000, 3000);
    await ing.close();
    await appendFile(join(store.ingestDir(digest), 'journal'), '1000 19'); // crash mid-append
    const again = await store.openIngest(digest, data.length);
    assert.deepEqual(again.durable.ranges, [
      { start: 0, end: 1000 },
      { start: 2000, end: 3000 },
    ]);
    await again.close();
    // A different size for the same digest means the old partial is not trusted.
    const resized = await store.openIngest(digest, 4000);
    assert.equal(resized.durable.size, 0);
    await resized.close();
  });

  it('does not trust a journal that claims more than the data file holds', async () => {
    const store = await newStore();
    const digest = sha256(Buffer.from('x'.repeat(100)));
    const ing = await store.openIngest(digest, 100);
    await ing.close();
    await writeFile(join(store.ingestDir(digest), 'journal'), '0 100\n');
    const again = await store.openIngest(digest, 100);
    assert.equal(again.durable.size, 0);
    await again.close();
  });

  it('refuses content that does not match its digest and digests that are not digests', async () => {
    const store = await newStore();
    await assert.rejects(store.putBytes(sha256(Buffer.from('a')), Buffer.from('b')), (e) =>
      isPrewarmError(e, ErrorCodes.DIGEST_MISMATCH),
    );
    assert.throws(
      () => store.blobPath('sha256:../../../etc/passwd' as Digest),
      (e) => isPrewarmError(e, ErrorCodes.INVALID_DIGEST),
    );
  });

  it('keeps image records by digest and by tag alias', async () => {
    const store = await newStore();
    const rec = {
      repository: 'r.example/app',
      tag: 'v1',
      digest: sha256(Buffer.from('m')),
      manifestDigest: sha256(Buffer.from('m')),
      platform: 'linux/amd64',
      manifests: [],
      blobs: [],
      size: 1,
      warmedAt: 1,
    };
    await store.putImage(rec);
    assert.deepEqual(await store.getImage('r.example/app', 'v1', 'linux/amd64'), rec);
    assert.deepEqual(await store.getImage('r.example/app', rec.digest, 'linux/amd64'), rec);
    assert.equal((await store.listImages()).length, 1);
    await store.deleteImage(rec);
    assert.equal(await store.getImage('r.example/app', 'v1', 'linux/amd64'), undefined);
  });
});

describe('parseJournal and RangeSet', () => {
  it('merges ranges and computes complements', () => {
    const s = parseJournal('0 10\n20 30\n10 20\nbad\n50 40\n90 200\n', 100);
    assert.deepEqual(s.ranges, [{ start: 0, end: 30 }]);
    const r = new RangeSet([
      { start: 0, end: 10 },
      { start: 20, end: 30 },
    ]);
    assert.deepEqual(r.complement(40).ranges, [
      { start: 10, end: 20 },
      { start: 30, end: 40 },
    ]);
    r.remove(5, 25);
    assert.deepEqual(r.ranges, [
      { start: 0, end: 5 },
      { start: 25, end: 30 },
    ]);
    assert.equal(r.covers(25, 30), true);
    assert.equal(r.covers(4, 26), false);
  });
});

describe('HashCursor', () => {
  it('hashes out-of-order chunks in byte order, from memory or re-read from disk', async () => {
    const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
    for (const memory of [0, 10_000]) {
      const written = new RangeSet();
      const h = new HashCursor(data.length, written, async (p, l) => data.subarray(p, p + l), memory);
      for (const [s, e] of [
        [600, 1000],
        [200, 600],
        [0, 200],
      ] as const) {
        h.offer(s, data.subarray(s, e));
        written.add(s, e);
        await h.drain();
      }
      assert.equal(h.done, true);
      assert.equal(h.digest(), sha256(data));
      if (memory === 0) assert.ok(h.rereadBytes > 0);
    }
  });
});
