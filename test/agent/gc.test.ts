/**
 * Store lifecycle against a real FsBlobStore on disk: LRU garbage collection with pins,
 * leases and reservations, stale partial downloads, and the startup scan.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, truncate, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { ImageRecord } from '../../agent/src/store/blob-store.js';
import { budgetBytes } from '../../agent/src/store/disk-space.js';
import { FsBlobStore } from '../../agent/src/store/fs-store.js';
import { GarbageCollector, type GarbageCollectorOptions } from '../../agent/src/store/gc.js';
import { LeaseSet } from '../../agent/src/store/leases.js';
import { digestClosure, StaticPinSource } from '../../agent/src/store/pins.js';
import { scanStore } from '../../agent/src/store/store-scan.js';
import { type Digest, sha256 } from '../../oci/src/digest.js';
import { Cleanup, makeTempDir } from '../harness/index.js';

const cleanup = new Cleanup();
after(() => cleanup.run());
const KiB = 1024;
const HUGE_FS = async () => ({ totalBytes: 1e15, availableBytes: 1e15 });

interface TestImage {
  record: ImageRecord;
  manifest: Digest;
  config: Digest;
  layers: Digest[];
  bytes: number;
}

async function newStore(): Promise<FsBlobStore> {
  return new FsBlobStore(join(await makeTempDir('gc', cleanup), 'store'), { fsync: false }).init();
}

/** Stores an image (manifest, config, layers) and its record; `shared` layers are reused as given. */
async function addImage(
  store: FsBlobStore,
  name: string,
  o: { layerBytes?: number[]; shared?: Buffer[]; warmedAt: number },
): Promise<TestImage> {
  const layerBufs = [...(o.shared ?? []), ...(o.layerBytes ?? [64 * KiB]).map((n) => randomBytes(n))];
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', name }));
  const layers: Digest[] = [];
  for (const b of layerBufs) {
    const d = sha256(b);
    await store.putBytes(d, b);
    layers.push(d);
  }
  const configDigest = sha256(config);
  await store.putBytes(configDigest, config);
  const manifestBytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: {
        mediaType: 'application/vnd.oci.image.config.v1+json',
        digest: configDigest,
        size: config.length,
      },
      layers: layerBufs.map((b, i) => ({
        mediaType: 'application/vnd.oci.image.layer.v1.tar',
        digest: layers[i],
        size: b.length,
      })),
    }),
  );
  const manifest = sha256(manifestBytes);
  await store.putBytes(manifest, manifestBytes);
  const bytes = layerBufs.reduce((n, b) => n + b.length, 0) + config.length + manifestBytes.length;
  const record: ImageRecord = {
    repository: `registry.test/${name}`,
    tag: 'v1',
    digest: manifest,
    manifestDigest: manifest,
    platform: 'linux/amd64',
    manifests: [manifest],
    blobs: [configDigest, ...layers],
    size: bytes,
    warmedAt: o.warmedAt,
  };
  await store.putImage(record);
  // Access times follow warm times, so LRU order is the order the test chose.
  const t = new Date(o.warmedAt);
  for (const d of [manifest, configDigest, ...layers]) await utimes(store.blobPath(d), t, t);
  return { record, manifest, config: configDigest, layers, bytes };
}

async function present(store: FsBlobStore, img: TestImage): Promise<boolean> {
  for (const d of [img.manifest, img.config, ...img.layers]) if (!(await store.stat(d))) return false;
  return (await store.getImage(img.record.repository, img.record.digest, img.record.platform)) !== undefined;
}

async function absent(store: FsBlobStore, img: TestImage, except: Digest[] = []): Promise<boolean> {
  for (const d of [img.manifest, img.config, ...img.layers])
    if (!except.includes(d) && (await store.stat(d))) return false;
  return (await store.getImage(img.record.repository, img.record.digest, img.record.platform)) === undefined;
}

function gcFor(
  store: FsBlobStore,
  pins: StaticPinSource,
  leases: LeaseSet,
  o: Partial<GarbageCollectorOptions> & { maxBytes: number },
) {
  return new GarbageCollector(store, leases, pins, {
    budget: { maxBytes: o.maxBytes, maxPercent: 0 },
    space: o.space ?? HUGE_FS,
    ...o,
  });
}

describe('budget arithmetic', () => {
  it('takes the smaller of the byte and percent caps, and Infinity when neither is set', () => {
    assert.equal(budgetBytes({ maxBytes: 100, maxPercent: 0 }, 1000), 100);
    assert.equal(budgetBytes({ maxBytes: 0, maxPercent: 50 }, 1000), 500);
    assert.equal(budgetBytes({ maxBytes: 800, maxPercent: 50 }, 1000), 500);
    assert.equal(budgetBytes({ maxBytes: 0, maxPercent: 0 }, 1000), Number.POSITIVE_INFINITY);
  });
});

describe('GarbageCollector (real FsBlobStore)', () => {
  it('over budget: evicts the least recently used unpinned images to the low-water mark, never a pinned one', async () => {
    const store = await newStore();
    const pinned = await addImage(store, 'pinned', { layerBytes: [200 * KiB], warmedAt: 1_000 });
    const old = await addImage(store, 'old', { layerBytes: [200 * KiB], warmedAt: 2_000 });
    const mid = await addImage(store, 'mid', { layerBytes: [200 * KiB], warmedAt: 3_000 });
    const fresh = await addImage(store, 'fresh', { layerBytes: [200 * KiB], warmedAt: 4_000 });
    const pins = new StaticPinSource([pinned.record.digest]);
    const gc = gcFor(store, pins, new LeaseSet(), { maxBytes: 700 * KiB, lowWaterRatio: 0.9 });
    const r = await gc.collect({ reason: 'periodic' });
    assert.ok(r.pinsKnown);
    assert.ok(r.usageBefore > 700 * KiB);
    // 4 images of ~201 KiB, low water 630 KiB: exactly one image (the oldest unpinned) goes.
    assert.deepEqual(
      r.evictedImages.map((e) => e.repository),
      ['registry.test/old'],
    );
    assert.ok(await present(store, pinned), 'pinned image intact');
    assert.ok(await absent(store, old), 'oldest unpinned image evicted with its blobs and record');
    assert.ok(await present(store, mid));
    assert.ok(await present(store, fresh));
    assert.equal(r.freedBytes, old.bytes);
    assert.ok(r.usageAfter <= 0.9 * 700 * KiB);
    assert.ok(r.satisfied);

    // A budget below the pinned image alone: everything else goes, the pinned image stays.
    const tight = gcFor(store, pins, new LeaseSet(), { maxBytes: 100 * KiB });
    const r2 = await tight.collect({ reason: 'periodic' });
    assert.equal(r2.satisfied, false);
    assert.ok(await present(store, pinned));
    assert.ok(await absent(store, mid));
    assert.ok(await absent(store, fresh));
  });

  it('keeps a layer shared with an image that stays, and leased or in-flight content', async () => {
    const store = await newStore();
    const shared = randomBytes(100 * KiB);
    const a = await addImage(store, 'a', { shared: [shared], layerBytes: [50 * KiB], warmedAt: 1_000 });
    const b = await addImage(store, 'b', { shared: [shared], layerBytes: [50 * KiB], warmedAt: 5_000 });
    // An orphan blob (no record), old, and a leased orphan, older still.
    const orphan = randomBytes(30 * KiB);
    await store.putBytes(sha256(orphan), orphan);
    await utimes(store.blobPath(sha256(orphan)), new Date(500), new Date(500));
    const leasedBlob = randomBytes(30 * KiB);
    await store.putBytes(sha256(leasedBlob), leasedBlob);
    await utimes(store.blobPath(sha256(leasedBlob)), new Date(100), new Date(100));
    const leases = new LeaseSet();
    const lease = leases.acquire([sha256(leasedBlob)]);
    const gc = gcFor(store, new StaticPinSource(), leases, { maxBytes: 220 * KiB, lowWaterRatio: 1 });
    const r = await gc.collect({ reason: 'periodic' });
    // Orphan (oldest unleased) first, then image a; its shared layer stays for b.
    assert.deepEqual(
      r.evictedImages.map((e) => e.repository),
      ['registry.test/a'],
    );
    assert.equal(await store.stat(sha256(orphan)), undefined);
    assert.ok(await store.stat(sha256(leasedBlob)), 'leased blob kept');
    assert.ok(await absent(store, a, [sha256(shared)]));
    assert.ok(await store.stat(sha256(shared)), 'shared layer kept');
    assert.ok(await present(store, b));

    // Once released, the leased blob is an ordinary orphan.
    lease.release();
    const r2 = await gcFor(store, new StaticPinSource(), leases, {
      maxBytes: 160 * KiB,
      lowWaterRatio: 1,
    }).collect({
      reason: 'periodic',
    });
    assert.equal(r2.evictedBlobs, 1);
    assert.equal(await store.stat(sha256(leasedBlob)), undefined);
    assert.ok(await present(store, b));
  });

  it('a leased root with no record yet protects whatever its stored manifest references', async () => {
    const store = await newStore();
    const img = await addImage(store, 'downloading', { layerBytes: [100 * KiB], warmedAt: 1_000 });
    // As mid-download: manifest and some blobs stored, no record yet.
    await store.deleteImage(img.record);
    const leases = new LeaseSet();
    leases.acquire([img.manifest]);
    const closure = await digestClosure(store, [img.manifest], []);
    assert.deepEqual(new Set(closure), new Set([img.manifest, img.config, ...img.layers]));
    const r = await gcFor(store, new StaticPinSource(), leases, { maxBytes: 1 }).collect({
      reason: 'periodic',
    });
    assert.equal(r.evictedBlobs, 0);
    for (const d of [img.manifest, img.config, ...img.layers]) assert.ok(await store.stat(d));
  });

  it('evicts nothing when the pins cannot be read', async () => {
    const store = await newStore();
    const img = await addImage(store, 'x', { layerBytes: [100 * KiB], warmedAt: 1_000 });
    const pins = new StaticPinSource();
    pins.failWith = new Error('redis down');
    const r = await gcFor(store, pins, new LeaseSet(), { maxBytes: 1 }).collect({ reason: 'periodic' });
    assert.equal(r.pinsKnown, false);
    assert.equal(r.evictedBlobs, 0);
    assert.ok(await present(store, img));
  });

  it('reserve: makes just enough room, counts other reservations, and destroys nothing when room is out of reach', async () => {
    const store = await newStore();
    const pinned = await addImage(store, 'pinned', { layerBytes: [300 * KiB], warmedAt: 1_000 });
    const u1 = await addImage(store, 'u1', { layerBytes: [300 * KiB], warmedAt: 2_000 });
    const u2 = await addImage(store, 'u2', { layerBytes: [300 * KiB], warmedAt: 3_000 });
    const pins = new StaticPinSource([pinned.record.digest]);
    const gc = gcFor(store, pins, new LeaseSet(), { maxBytes: 1200 * KiB, reserveBytes: 0 });
    const want = (n: number) => [{ digest: sha256(randomBytes(8)), size: n }];

    // Needs 2 GiB with a 1.2 MiB budget: impossible, so nothing may be evicted for it.
    const impossible = await gc.reserve(want(2 * 1024 * 1024 * KiB));
    assert.equal(impossible.report.satisfied, false);
    assert.equal(impossible.report.evictedBlobs, 0);
    assert.ok(await present(store, u1));

    // Needs 300 KiB: only the older unpinned image goes.
    const first = await gc.reserve(want(300 * KiB));
    assert.ok(first.report.satisfied);
    assert.deepEqual(
      first.report.evictedImages.map((e) => e.repository),
      ['registry.test/u1'],
    );
    assert.ok(await present(store, u2));
    // A second job's reservation sees the first one's: u2 must go too.
    const second = await gc.reserve(want(300 * KiB));
    assert.ok(second.report.satisfied);
    assert.equal(second.report.needBytes, 600 * KiB);
    assert.ok(await absent(store, u2));
    assert.ok(await present(store, pinned));
    // A third cannot fit beside the pinned image and two reservations.
    const third = await gc.reserve(want(300 * KiB));
    assert.equal(third.report.satisfied, false);
    first.release();
    second.release();
    const fourth = await gc.reserve(want(300 * KiB));
    assert.ok(fourth.report.satisfied);
    fourth.release();
  });

  it('removes stale and superseded partial downloads, keeps in-flight and fresh ones', async () => {
    const store = await newStore();
    const now = 10_000_000;
    const mk = async (data: Buffer, mtime: number) => {
      const d = sha256(data);
      const ing = await store.openIngest(d, data.length);
      await ing.write([data.subarray(0, 1000)], 0);
      await ing.record(0, 1000);
      await ing.close();
      await utimes(join(store.ingestDir(d), 'data'), new Date(mtime), new Date(mtime));
      return d;
    };
    const stale = await mk(randomBytes(4000), now - 2 * 3600_000);
    const fresh = await mk(randomBytes(4000), now - 60_000);
    const inflight = await mk(randomBytes(4000), now - 5 * 3600_000);
    const committedData = randomBytes(4000);
    const committed = await mk(committedData, now);
    await store.putBytes(committed, committedData);
    const gc = new GarbageCollector(store, new LeaseSet(), new StaticPinSource(), {
      budget: { maxBytes: 1 << 30, maxPercent: 0 },
      space: HUGE_FS,
      staleIngestMs: 3600_000,
      now: () => now,
      inflight: (d) => d === inflight,
    });
    const r = await gc.collect({ reason: 'periodic' });
    assert.equal(r.removedIngests, 2);
    const left = (await store.listIngests()).map((i) => i.digest).sort();
    assert.deepEqual(left, [fresh, inflight].sort());
    assert.ok(!left.includes(stale));
    assert.ok(await store.stat(committed));
  });

  it('counts the filesystem: evicts when the disk is short even within the budget', async () => {
    const store = await newStore();
    const u = await addImage(store, 'u', { layerBytes: [500 * KiB], warmedAt: 1_000 });
    let free = 100 * KiB;
    const gc = new GarbageCollector(store, new LeaseSet(), new StaticPinSource(), {
      budget: { maxBytes: 1 << 30, maxPercent: 0 },
      reserveBytes: 10 * KiB,
      space: async () => ({ totalBytes: 1 << 30, availableBytes: free }),
    });
    const r = await gc.reserve([{ digest: sha256(randomBytes(4)), size: 300 * KiB }]);
    assert.ok(r.report.satisfied, JSON.stringify(r.report));
    assert.ok(await absent(store, u));
    r.release();
    free = 0;
    const r2 = await gc.reserve([{ digest: sha256(randomBytes(4)), size: 300 * KiB }]);
    assert.equal(r2.report.satisfied, false);
  });
});

describe('startup scan (real FsBlobStore)', () => {
  it('removes temp files, bad blobs, records with missing content and unresumable partials; keeps the rest', async () => {
    const store = await newStore();
    const good = await addImage(store, 'good', { layerBytes: [64 * KiB], warmedAt: 1_000 });
    const truncated = await addImage(store, 'truncated', { layerBytes: [64 * KiB], warmedAt: 2_000 });
    const lost = await addImage(store, 'lost', { layerBytes: [64 * KiB], warmedAt: 3_000 });
    // A crash mid atomic write, a layer cut short by a filesystem that lost data, a blob deleted by hand.
    await writeFile(join(store.root, 'tmp', 'deadbeef.tmp'), 'partial');
    await truncate(store.blobPath(truncated.layers[0]!), 1000);
    await store.delete(lost.layers[0]!);
    await writeFile(join(store.root, 'blobs', 'sha256', 'not-a-digest'), 'x');
    await writeFile(join(store.root, 'images', 'torn.json'), '{"repository":');
    // Partial downloads: one resumable, one without metadata, one of an already committed blob.
    const partial = randomBytes(5000);
    const ing = await store.openIngest(sha256(partial), partial.length);
    await ing.write([partial.subarray(0, 2000)], 0);
    await ing.record(0, 2000);
    await ing.close();
    const noMeta = join(store.root, 'ingest', 'a'.repeat(64));
    await mkdir(noMeta, { recursive: true });
    await writeFile(join(noMeta, 'data'), 'xx');
    const dup = join(store.root, 'ingest', good.layers[0]!.slice(7));
    await mkdir(dup, { recursive: true });
    await writeFile(join(dup, 'meta.json'), JSON.stringify({ size: 64 * KiB }));
    await writeFile(join(dup, 'data'), 'xx');

    const r = await scanStore(store, 'size');
    assert.equal(r.removedTmp, 1);
    assert.deepEqual(r.removedBlobs.sort(), ['not-a-digest', truncated.layers[0]!].sort());
    assert.deepEqual(r.removedImages.map((i) => i.repository).sort(), [
      'registry.test/lost',
      'registry.test/truncated',
    ]);
    assert.equal(r.images, 1);
    assert.equal(r.keptIngests, 1);
    assert.equal(r.removedIngests, 2);
    assert.ok(await present(store, good));
    assert.deepEqual(await readdir(join(store.root, 'tmp')), []);
    assert.deepEqual(await readdir(join(store.root, 'images')).then((n) => n.includes('torn.json')), false);
    assert.deepEqual(
      (await store.listIngests()).map((i) => i.digest),
      [sha256(partial)],
    );
    // The resumable partial still resumes from its journal.
    const again = await store.openIngest(sha256(partial), partial.length);
    assert.deepEqual(again.durable.ranges, [{ start: 0, end: 2000 }]);
    await again.close();
  });

  it('`full` re-hashes blobs and drops one whose content changed at the same size', async () => {
    const store = await newStore();
    const img = await addImage(store, 'flip', { layerBytes: [32 * KiB], warmedAt: 1_000 });
    const path = store.blobPath(img.layers[0]!);
    await writeFile(path, randomBytes(32 * KiB));
    assert.equal((await scanStore(store, 'size')).removedBlobs.length, 0, 'same size passes the cheap check');
    const r = await scanStore(store, 'full');
    assert.deepEqual(r.removedBlobs, [img.layers[0]]);
    assert.deepEqual(
      r.removedImages.map((i) => i.repository),
      ['registry.test/flip'],
    );
  });
});
