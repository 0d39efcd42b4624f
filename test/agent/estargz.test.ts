/**
 * Startup-first warming of eStargz images against a real registry (distribution, through
 * the harness's recording proxy), with the production fetcher, store and warmer.
 */
import assert from 'node:assert/strict';
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { ProgressReporter } from '../../agent/src/daemon/progress-reporter.js';
import { BlobFetcher, type BlobFetcherOptions } from '../../agent/src/fetch/blob-fetcher.js';
import {
  ImageWarmer,
  type WarmOptions,
  type WarmProgress,
  type WarmResult,
} from '../../agent/src/fetch/image-warmer.js';
import { RegistrySource } from '../../agent/src/fetch/sources.js';
import { FsBlobStore } from '../../agent/src/store/fs-store.js';
import { RangeSet } from '../../agent/src/store/ranges.js';
import { StaticCredentials } from '../../oci/src/auth.js';
import { RegistryClient } from '../../oci/src/client.js';
import type { Digest } from '../../oci/src/digest.js';
import type { PrewarmJobProgress } from '../../oci/src/job-contract.js';
import { parseReference } from '../../oci/src/reference.js';
import {
  type BuiltEstargzLayer,
  buildEstargzImage,
  type EstargzImageSpec,
  type PushedEstargzImage,
} from '../harness/estargz.js';
import {
  Cleanup,
  type FaultProxyHandle,
  makeTempDir,
  pushBuiltImage,
  pushImage,
  type RegistryHandle,
} from '../harness/index.js';
import { assertStored, TEST_RETRY } from './fetch-helpers.js';
import { startProxiedRegistry } from './fixtures.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

const KiB = 1024;
const MiB = 1024 * KiB;
const amd64 = { os: 'linux', architecture: 'amd64' } as const;

/** A pushed eStargz image plus the bytes of each eStargz layer as built. */
interface TestImage extends PushedEstargzImage {
  bytes: Map<string, Buffer>;
}

async function pushEstargz(
  registry: RegistryHandle,
  repository: string,
  spec: EstargzImageSpec,
): Promise<TestImage> {
  const built = await buildEstargzImage(spec);
  try {
    const pushed = await pushBuiltImage(registry, built, { repository, tag: 'v1' });
    const bytes = new Map<string, Buffer>();
    for (const l of built.estargz) if (l) bytes.set(l.digest, await readFile(l.path));
    return { ...pushed, estargz: built.estargz, bytes };
  } finally {
    await built.remove();
  }
}

interface WarmRun {
  result: WarmResult;
  store: FsBlobStore;
  phases: WarmProgress['phase'][];
}

/**
 * Warms `ref` into a fresh store with the production classes; `atStartupReady` runs
 * synchronously inside the progress callback that first reports 'startup-ready'.
 */
async function warm(
  ref: string,
  o: {
    storeDir?: string;
    fetcher?: BlobFetcherOptions;
    warm?: Partial<WarmOptions>;
    atStartupReady?: (fetcher: BlobFetcher, store: FsBlobStore, p: WarmProgress) => void;
  } = {},
): Promise<WarmRun> {
  const store = await new FsBlobStore(o.storeDir ?? (await makeTempDir('store', cleanup)), {
    fsync: false,
  }).init();
  const client = new RegistryClient({ credentials: new StaticCredentials(), retry: TEST_RETRY });
  const fetcher = new BlobFetcher(store, {
    chunkSize: 1 * MiB,
    minChunkSize: 128 * KiB,
    concurrencyPerBlob: 4,
    retry: TEST_RETRY,
    ...o.fetcher,
  });
  const phases: WarmProgress['phase'][] = [];
  let checkError: unknown;
  try {
    const result = await new ImageWarmer(client, fetcher, store).warm(parseReference(ref), {
      platform: amd64,
      ...o.warm,
      onProgress: (p) => {
        if (phases.at(-1) !== p.phase) {
          phases.push(p.phase);
          if (p.phase === 'startup-ready') {
            try {
              o.atStartupReady?.(fetcher, store, p);
            } catch (err) {
              checkError ??= err;
            }
          }
        }
        o.warm?.onProgress?.(p);
      },
    });
    if (checkError) throw checkError;
    return { result, store, phases };
  } finally {
    await fetcher.close();
    await client.close();
  }
}

/** Bytes [start, end) of a file, read synchronously (inside a progress callback). */
function readRange(path: string, start: number, end: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(end - start);
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, start + got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}

/**
 * The synchronous check at 'startup-ready': every eStargz layer's startup region is on disk
 * in its partial download, byte-identical to the layer as built, while its bulk is not.
 */
function assertStartupRegionsOnDisk(
  img: TestImage,
  layers: BuiltEstargzLayer[],
  fetcher: BlobFetcher,
  store: FsBlobStore,
): void {
  for (const l of layers) {
    const digest = l.digest as Digest;
    assert.equal(existsSync(store.blobPath(digest)), false, `${digest} must not be complete yet`);
    const inflight = fetcher.inflight(digest);
    assert.ok(inflight?.dataPath, `${digest} is downloading`);
    const original = img.bytes.get(l.digest)!;
    for (const [start, end] of [
      [0, l.landmarkOffset],
      [l.tocOffset, l.size],
    ] as const) {
      assert.ok(inflight.written.covers(start, end), `${digest}: [${start}, ${end}) written`);
      assert.ok(
        readRange(inflight.dataPath, start, end).equals(original.subarray(start, end)),
        `${digest}: [${start}, ${end}) on disk equals the layer`,
      );
    }
    assert.ok(inflight.written.size < l.size, `${digest}: bulk not complete`);
  }
}

/** Request log entries for one blob: the byte range each asked for. */
function rangesFor(proxy: FaultProxyHandle, digest: string): { index: number; start: number; end: number }[] {
  const out: { index: number; start: number; end: number }[] = [];
  proxy.stats.log.forEach((e, index) => {
    if (e.method !== 'GET' || !e.path.endsWith(`/blobs/${digest}`)) return;
    const m = /^bytes=(\d+)-(\d+)$/.exec(e.range ?? '');
    assert.ok(m, `ranged GET expected, got ${e.range}`);
    out.push({ index, start: Number(m[1]), end: Number(m[2]) + 1 });
  });
  return out;
}

describe('startup-first warming of eStargz images (real registry)', () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let two: TestImage;

  before(async () => {
    ({ registry, proxy } = await startProxiedRegistry(cleanup));
    two = await pushEstargz(registry, 'kp/esgz', {
      layers: [
        {
          prioritized: [
            ['bin/app', 'startup code\n'.repeat(16_000)],
            ['etc/app.conf', 'mode=fast\n'],
            ['lib/libapp.so', { randomBytes: 600 * KiB, seed: 11 }],
          ],
          rest: [['data/model.bin', { randomBytes: 8 * MiB, seed: 12 }]],
          chunkSize: 256 * KiB,
        },
        {
          prioritized: [['usr/bin/tool', { randomBytes: 300 * KiB, seed: 13 }]],
          rest: [['usr/share/assets.bin', { randomBytes: 8 * MiB, seed: 14 }]],
        },
      ],
    });
  });

  it("reports 'startup-ready' before 'warm', with both startup regions on disk and verified and the bulk still missing", async () => {
    proxy.resetStats();
    const layers = two.estargz.filter((l): l is BuiltEstargzLayer => l !== undefined);
    assert.equal(layers.length, 2);
    const sent: PrewarmJobProgress[] = [];
    const reporter = new ProgressReporter(
      async (p) => {
        sent.push(p);
      },
      { minIntervalMs: 0 },
    );
    let checked = false;
    const run = await warm(`${proxy.host}/kp/esgz:v1`, {
      // The cap keeps the 16 MiB of bulk on the wire for a while after the startup regions land.
      fetcher: { bandwidthBytesPerSec: 8 * MiB },
      warm: {
        onProgress: (p) =>
          reporter.update({
            phase: p.phase,
            bytesDone: p.bytesDone,
            bytesTotal: p.bytesTotal,
            layersDone: p.layersDone,
            layersTotal: p.layersTotal,
          }),
      },
      atStartupReady: (fetcher, store, p) => {
        assertStartupRegionsOnDisk(two, layers, fetcher, store);
        const config = two.manifests[0]!.config.digest as Digest;
        assert.ok(existsSync(store.blobPath(config)), 'config committed');
        assert.ok(p.bytesDone < p.bytesTotal);
        checked = true;
      },
    });
    await reporter.close();
    assert.ok(checked, 'startup-ready was reported');
    assert.deepEqual(run.phases, ['resolving', 'fetching', 'startup-ready', 'warm']);
    // The agent daemon's reporter forwards the phase in order (what the operator sees).
    const sentPhases = sent.map((p) => p.phase).filter((ph, i, a) => a[i - 1] !== ph);
    assert.deepEqual(sentPhases, ['resolving', 'fetching', 'startup-ready', 'warm']);

    await assertStored(run.store, [
      two.digest,
      two.manifests[0]!.config.digest,
      ...layers.map((l) => l.digest),
    ]);
    assert.deepEqual(
      [...(run.result.startup?.estargzLayers ?? [])].sort(),
      layers.map((l) => l.digest).sort(),
    );
    assert.deepEqual(run.result.startup?.plain, []);
    assert.ok(run.result.startup?.readyAfterMs !== undefined);
    assert.equal(run.result.bytesFromRegistry, run.result.bytesTotal);

    // On the wire: after the footer/TOC probe, every startup-region request of both layers
    // came before any request for either layer's bulk.
    let lastStartup = -1;
    let firstBulk = Number.POSITIVE_INFINITY;
    for (const l of layers) {
      const inStartup = new RangeSet([
        { start: 0, end: l.landmarkOffset },
        { start: l.tocOffset, end: l.size },
      ]);
      const probeStart = Math.max(0, l.size - 64 * KiB);
      for (const r of rangesFor(proxy, l.digest)) {
        if (r.start === probeStart && r.end === l.size) continue; // the probe's tail read
        if (inStartup.covers(r.start, r.end)) lastStartup = Math.max(lastStartup, r.index);
        else firstBulk = Math.min(firstBulk, r.index);
      }
    }
    assert.ok(lastStartup >= 0 && firstBulk < Number.POSITIVE_INFINITY);
    assert.ok(
      lastStartup < firstBulk,
      `startup requests (last #${lastStartup}) before bulk (first #${firstBulk})`,
    );
  });

  it('a second warm of the same image fetches nothing, probes nothing and goes straight to warm', async () => {
    const storeDir = await makeTempDir('store', cleanup);
    await warm(`${proxy.host}/kp/esgz:v1`, { storeDir });
    proxy.resetStats();
    const again = await warm(`${proxy.host}/kp/esgz:v1`, { storeDir });
    assert.equal(again.result.bytesFromRegistry, 0);
    assert.equal(proxy.count(/\/blobs\//), 0, 'no blob request at all');
    assert.deepEqual(again.phases, ['resolving', 'fetching', 'warm']);
    assert.equal(again.result.startup, undefined);
  });

  it('a TOC that does not match its annotation: that layer is a plain blob, startup-ready only once it is committed', async () => {
    const img = await pushEstargz(registry, 'kp/esgz-tampered', {
      layers: [
        {
          prioritized: [['bin/app', { randomBytes: 200 * KiB, seed: 21 }]],
          rest: [['data/bulk.bin', { randomBytes: 8 * MiB, seed: 22 }]],
        },
        {
          prioritized: [['bin/other', 'other\n'.repeat(1000)]],
          rest: [['data/small.bin', { randomBytes: 512 * KiB, seed: 23 }]],
          tamper: {
            // Someone rewrote the TOC in the blob (pointing the file at other bytes); the manifest's annotation still has the original's digest.
            tocAfterAnnotation: (toc) => {
              const e = toc.entries.find((x) => x.name === 'bin/other');
              if (e) e.chunkDigest = `sha256:${'0'.repeat(64)}`;
            },
          },
        },
      ],
    });
    const [good, tampered] = img.estargz as [BuiltEstargzLayer, BuiltEstargzLayer];
    let checked = false;
    const run = await warm(`${proxy.host}/kp/esgz-tampered:v1`, {
      fetcher: { bandwidthBytesPerSec: 8 * MiB },
      atStartupReady: (fetcher, store) => {
        assert.ok(
          existsSync(store.blobPath(tampered.digest as Digest)),
          'the tampered layer is committed (digest-verified)',
        );
        assertStartupRegionsOnDisk(img, [good], fetcher, store);
        checked = true;
      },
    });
    assert.ok(checked, 'startup-ready was reported');
    assert.deepEqual(run.phases, ['resolving', 'fetching', 'startup-ready', 'warm']);
    assert.deepEqual(run.result.startup?.estargzLayers, [good.digest]);
    assert.equal(run.result.startup?.plain.length, 1);
    assert.equal(run.result.startup?.plain[0]?.digest, tampered.digest);
    assert.equal(run.result.startup?.plain[0]?.reason, 'toc-digest-mismatch');
    // The layer itself is what the manifest says it is: the warm succeeds with every blob verified.
    await assertStored(run.store, [img.manifests[0]!.config.digest, good.digest, tampered.digest]);
  });

  it('a consistent TOC whose chunk digest lies: the prefetch check fails and startup-ready is never reported', async () => {
    const img = await pushEstargz(registry, 'kp/esgz-lying', {
      layers: [
        {
          prioritized: [['bin/app', { randomBytes: 200 * KiB, seed: 31 }]],
          rest: [['data/bulk.bin', { randomBytes: 4 * MiB, seed: 32 }]],
          tamper: {
            toc: (toc) => {
              const e = toc.entries.find((x) => x.name === 'bin/app');
              if (e) e.chunkDigest = `sha256:${'1'.repeat(64)}`;
            },
          },
        },
      ],
    });
    const layer = img.estargz[0]!;
    const run = await warm(`${proxy.host}/kp/esgz-lying:v1`, { fetcher: { bandwidthBytesPerSec: 8 * MiB } });
    assert.deepEqual(run.phases, ['resolving', 'fetching', 'warm']);
    assert.deepEqual(run.result.startup?.estargzLayers, []);
    assert.equal(run.result.startup?.plain[0]?.reason, 'verify-failed');
    assert.match(run.result.startup?.plain[0]?.detail ?? '', /bin\/app: chunk hashes to/);
    await assertStored(run.store, [layer.digest]);
  });

  it('the same eStargz layer twice in one manifest: one download, startup-ready, warm', async () => {
    const spec = {
      prioritized: [['bin/app', { randomBytes: 100 * KiB, seed: 71 }]] as [
        string,
        { randomBytes: number; seed: number },
      ][],
      rest: [['data/bulk.bin', { randomBytes: 4 * MiB, seed: 72 }]] as [
        string,
        { randomBytes: number; seed: number },
      ][],
    };
    const img = await pushEstargz(registry, 'kp/esgz-dup', { layers: [spec, spec] });
    const [a, b] = img.estargz as [BuiltEstargzLayer, BuiltEstargzLayer];
    assert.equal(a.digest, b.digest, 'the harness is deterministic');
    proxy.resetStats();
    let checked = false;
    const run = await warm(`${proxy.host}/kp/esgz-dup:v1`, {
      fetcher: { bandwidthBytesPerSec: 8 * MiB },
      atStartupReady: (fetcher, store) => {
        assertStartupRegionsOnDisk(img, [a], fetcher, store);
        checked = true;
      },
    });
    assert.ok(checked);
    assert.deepEqual(run.phases, ['resolving', 'fetching', 'startup-ready', 'warm']);
    assert.deepEqual(run.result.startup?.estargzLayers, [a.digest]);
    let layerBytes = 0;
    for (const [path, n] of proxy.stats.bytesSent) if (path.endsWith(`/blobs/${a.digest}`)) layerBytes += n;
    assert.equal(layerBytes, a.size + 64 * KiB, 'the layer came once (plus the footer/TOC probe)');
    await assertStored(run.store, [a.digest]);
  });

  it('plain images are unaffected: same requests as with startup-first off, no startup-ready', async () => {
    const plain = await pushImage(registry, {
      repository: 'kp/plain',
      tag: 'v1',
      layers: [
        { files: { 'etc/hello.txt': 'hello\n' }, compression: 'gzip' },
        { randomBytes: 3 * MiB, seed: 41, compression: 'gzip' },
      ],
    });
    const requests = async (startupFirst: boolean) => {
      proxy.resetStats();
      const run = await warm(`${proxy.host}/kp/plain:v1`, { warm: { startupFirst } });
      assert.deepEqual(run.phases, ['resolving', 'fetching', 'warm']);
      assert.equal(run.result.startup, undefined);
      await assertStored(run.store, [
        plain.manifests[0]!.config.digest,
        ...plain.manifests[0]!.layers.map((l) => l.digest),
      ]);
      return proxy.stats.log
        .filter((e) => e.path.includes('/blobs/'))
        .map((e) => `${e.method} ${e.path} ${e.range ?? ''}`)
        .sort();
    };
    assert.deepEqual(await requests(true), await requests(false));
  });

  it('eStargz blobs without the annotation are warmed as plain layers (no probe by default)', async () => {
    const img = await pushEstargz(registry, 'kp/esgz-noanno', {
      omitAnnotations: true,
      layers: [{ prioritized: [['bin/app', 'x\n']], rest: [['data/b', { randomBytes: 1 * MiB, seed: 51 }]] }],
    });
    const layer = img.estargz[0]!;
    proxy.resetStats();
    const run = await warm(`${proxy.host}/kp/esgz-noanno:v1`);
    assert.deepEqual(run.phases, ['resolving', 'fetching', 'warm']);
    assert.equal(run.result.startup, undefined);
    const probe = rangesFor(proxy, layer.digest).filter(
      (r) => r.end === layer.size && r.start > 0 && r.end - r.start === 64 * KiB,
    );
    assert.deepEqual(probe, [], 'no footer probe');
    await assertStored(run.store, [layer.digest]);
  });
});

describe('fetcher priority ranges with a hold (real registry)', () => {
  it('claims only the priority ranges until the hold lifts, then completes and verifies the blob', async () => {
    const { registry, proxy } = await startProxiedRegistry(cleanup);
    const img = await pushImage(registry, {
      repository: 'kp/prio',
      tag: 'v1',
      layers: [{ randomBytes: 6 * MiB, seed: 61 }],
    });
    const layer = img.manifests[0]!.layers[0]!;
    const store = await new FsBlobStore(await makeTempDir('store', cleanup), { fsync: false }).init();
    const client = new RegistryClient({ retry: TEST_RETRY });
    const fetcher = new BlobFetcher(store, {
      chunkSize: 1 * MiB,
      minChunkSize: 128 * KiB,
      concurrencyPerBlob: 4,
      retry: TEST_RETRY,
    });
    try {
      const priority = [
        { start: 0, end: 300 * KiB },
        { start: layer.size - 200 * KiB, end: layer.size },
      ];
      let release!: () => void;
      const hold = new Promise<void>((r) => {
        release = r;
      });
      let seenAtCover: RangeSet | undefined;
      const done = fetcher.fetch(
        {
          registry: proxy.host,
          repository: 'kp/prio',
          digest: layer.digest as Digest,
          size: layer.size,
          mediaType: layer.mediaType,
        },
        {
          sources: [new RegistrySource(client, proxy.host)],
          priority: { ranges: priority, holdRestUntil: hold },
          onProgress: () => {
            const w = fetcher.inflight(layer.digest as Digest)?.written;
            if (seenAtCover || !w || !priority.every((r) => w.covers(r.start, r.end))) return;
            seenAtCover = new RangeSet(w.ranges);
            release();
          },
        },
      );
      const r = await done;
      assert.equal(r.bytesFromRegistry, layer.size);
      assert.deepEqual(
        seenAtCover?.ranges,
        priority,
        'nothing outside the priority ranges before the hold lifted',
      );
      await assertStored(store, [layer.digest]);
      // Every request for priority bytes came before every other request.
      const reqs = rangesFor(proxy, layer.digest);
      const inPrio = new RangeSet(priority);
      const lastPrio = Math.max(...reqs.filter((q) => inPrio.covers(q.start, q.end)).map((q) => q.index));
      const firstRest = Math.min(...reqs.filter((q) => !inPrio.covers(q.start, q.end)).map((q) => q.index));
      assert.ok(lastPrio < firstRest);
    } finally {
      await fetcher.close();
      await client.close();
    }
  });
});
