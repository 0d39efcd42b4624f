/**
 * The Fetcher contract's synchronous way in (`startOrJoin`) and the daemon's gating by
 * composition (`GatedFetcher`), against a real registry behind the fault proxy.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { GatedFetcher } from '../../agent/src/daemon/gated-fetcher.js';
import { BlobFetcher } from '../../agent/src/fetch/blob-fetcher.js';
import type { Fetcher } from '../../agent/src/fetch/fetcher.js';
import { type BlobTarget, RegistrySource } from '../../agent/src/fetch/sources.js';
import { FsBlobStore } from '../../agent/src/store/fs-store.js';
import { RegistryClient } from '../../oci/src/client.js';
import type { Digest } from '../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';
import { Cleanup, type FaultProxyHandle, makeTempDir, pushImage } from '../harness/index.js';
import { assertStored, TEST_RETRY } from './fetch-helpers.js';
import { startProxiedRegistry } from './fixtures.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

const MiB = 1024 * 1024;

describe('Fetcher.startOrJoin and GatedFetcher (real registry)', () => {
  let proxy: FaultProxyHandle;
  let client: RegistryClient;
  let layers: BlobTarget[];

  before(async () => {
    ({ proxy } = await startProxiedRegistry(cleanup));
    const img = await pushImage(proxy, {
      repository: 'kp/start-or-join',
      tag: 'v1',
      layers: [
        { randomBytes: 3 * MiB, seed: 61 },
        { randomBytes: 2 * MiB, seed: 62 },
        { randomBytes: 2 * MiB, seed: 63 },
      ],
    });
    layers = img.manifests[0]!.layers.map((l) => ({
      registry: proxy.host,
      repository: 'kp/start-or-join',
      digest: l.digest as Digest,
      size: l.size,
    }));
    client = new RegistryClient({ retry: TEST_RETRY });
    cleanup.defer(() => client.close());
  });

  async function newFetcher(): Promise<{ store: FsBlobStore; fetcher: BlobFetcher }> {
    const store = await new FsBlobStore(await makeTempDir('store', cleanup), { fsync: false }).init();
    const fetcher = new BlobFetcher(store, {
      chunkSize: 512 * 1024,
      minChunkSize: 128 * 1024,
      retry: TEST_RETRY,
    });
    cleanup.defer(() => fetcher.close());
    return { store, fetcher };
  }

  const sources = () => [new RegistrySource(client, proxy.host)];
  const blobPath = (t: BlobTarget) => new RegExp(`/blobs/${t.digest}$`);

  it('registers the download before returning; later callers join it; the blob is fetched once', async () => {
    const { store, fetcher } = await newFetcher();
    const t = layers[0]!;
    proxy.resetStats();
    const a = fetcher.startOrJoin(t, { sources: sources() });
    assert.equal(a.joined, false);
    assert.equal(fetcher.inflight(t.digest), a.blob, 'in flight as soon as startOrJoin returns');
    const b = fetcher.startOrJoin(t, { sources: sources() });
    assert.equal(b.joined, true);
    assert.equal(b.blob, a.blob);
    const viaFetch = fetcher.fetch(t, { sources: sources() });
    const [ra, rb, rf] = await Promise.all([a.result, b.result, viaFetch]);
    assert.equal(ra.joined, false);
    assert.equal(rb.joined, true);
    assert.equal(rf.joined, true, 'fetch joins a download started by startOrJoin');
    assert.equal(ra.bytesFromRegistry, t.size);
    await assertStored(store, [t.digest]);
    assert.equal(fetcher.inflight(t.digest), undefined, 'forgotten once committed');
    assert.equal(proxy.bytes(blobPath(t)), t.size, 'the registry served the blob once');
  });

  it('a committed blob: the download ends at once without asking the registry', async () => {
    const { fetcher } = await newFetcher();
    const t = layers[1]!;
    await fetcher.fetch(t, { sources: sources() });
    proxy.resetStats();
    const progress: number[] = [];
    const h = fetcher.startOrJoin(t, { sources: sources(), onProgress: (p) => progress.push(p.bytesDone) });
    assert.equal(h.joined, false);
    const ended = new Promise((resolve) => h.blob.once('end', resolve));
    const r = await h.result;
    await ended;
    assert.equal(r.bytesAlreadyPresent, t.size);
    assert.equal(r.bytesFromRegistry, 0);
    assert.deepEqual(progress, [t.size]);
    assert.equal(proxy.count(blobPath(t)), 0);
  });

  it('GatedFetcher holds fetches made with a gated signal until the gate settles, and no other', async () => {
    const { store, fetcher } = await newFetcher();
    const gated: Fetcher & { gate: GatedFetcher['gate'] } = new GatedFetcher(fetcher);
    const t = layers[2]!;
    const job = new AbortController();
    let open!: () => void;
    gated.gate(
      job.signal,
      new Promise<void>((r) => {
        open = r;
      }),
    );
    proxy.resetStats();
    let done = false;
    const p = gated.fetch(t, { sources: sources(), signal: job.signal }).then((r) => {
      done = true;
      return r;
    });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(done, false);
    assert.equal(gated.inflight(t.digest), undefined, 'nothing started behind the gate');
    assert.equal(proxy.count(blobPath(t)), 0, 'no byte asked for behind the gate');
    assert.throws(
      () => gated.startOrJoin(t, { sources: sources(), signal: job.signal }),
      (e) => isPrewarmError(e, ErrorCodes.INVALID_CONFIG),
      'a gated signal cannot start synchronously',
    );
    open();
    const r = await p;
    assert.equal(r.bytesFromRegistry, t.size);
    await assertStored(store, [t.digest]);

    // Another signal is not gated: the mirror's way in goes straight through.
    const h = gated.startOrJoin(layers[0]!, { sources: sources(), signal: new AbortController().signal });
    assert.equal(gated.inflight(layers[0]!.digest), h.blob);
    await h.result;
  });

  it('a gate whose job is aborted fails the fetch with the abort, before anything is fetched', async () => {
    const { fetcher } = await newFetcher();
    const gated = new GatedFetcher(fetcher);
    const t = layers[0]!;
    const job = new AbortController();
    gated.gate(job.signal, Promise.resolve());
    job.abort(new Error('job cancelled'));
    proxy.resetStats();
    await assert.rejects(gated.fetch(t, { sources: sources(), signal: job.signal }), /job cancelled/);
    assert.equal(proxy.count(blobPath(t)), 0);
  });
});
