/**
 * Per-download bandwidth caps (FetchOptions.bandwidthBytesPerSec, WarmOptions
 * .bandwidthBytesPerSec) against a real registry: a capped warm completes and verifies,
 * and the cap is really applied (its token bucket had to wait), with no timing assertion.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { BlobFetcher } from '../../agent/src/fetch/blob-fetcher.js';
import { ImageWarmer } from '../../agent/src/fetch/image-warmer.js';
import { FsBlobStore } from '../../agent/src/store/fs-store.js';
import { RegistryClient } from '../../oci/src/client.js';
import { parseReference } from '../../oci/src/reference.js';
import { Cleanup, makeTempDir, type PushedImage, pushImage } from '../harness/index.js';
import { assertStored, TEST_RETRY } from './fetch-helpers.js';
import { startTestRegistry } from './fixtures.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

const MiB = 1024 * 1024;

describe('per-download bandwidth cap (real registry)', () => {
  let image: PushedImage;

  before(async () => {
    const registry = await startTestRegistry(cleanup);
    image = await pushImage(registry, {
      repository: 'kp/capped',
      tag: 'v1',
      layers: [{ randomBytes: 2 * MiB, seed: 7 }, { files: { 'etc/x': 'x\n' } }],
    });
  });

  async function warm(bandwidthBytesPerSec: number | undefined) {
    const store = await new FsBlobStore(await makeTempDir('store', cleanup), { fsync: false }).init();
    const client = new RegistryClient({ retry: TEST_RETRY });
    // No node-wide cap: any wait below comes from the per-download bucket.
    const fetcher = new BlobFetcher(store, { chunkSize: 512 * 1024, minChunkSize: 128 * 1024 });
    try {
      const result = await new ImageWarmer(client, fetcher, store).warm(parseReference(image.ref), {
        platform: { os: 'linux', architecture: 'amd64' },
        ...(bandwidthBytesPerSec !== undefined ? { bandwidthBytesPerSec } : {}),
      });
      return { result, store };
    } finally {
      await fetcher.close();
      await client.close();
    }
  }

  it('a capped warm completes, every blob verified, and the cap slowed the big layer', async () => {
    // 1 MiB/s with a 256 KiB burst: 2 MiB cannot pass without waiting.
    const { result, store } = await warm(MiB);
    const m = image.manifests[0]!;
    const digests = [m.config.digest, ...m.layers.map((l) => l.digest)];
    assert.deepEqual(result.record.blobs, digests);
    await assertStored(store, digests);
    const big = result.blobs.find((b) => b.digest === m.layers[0]!.digest)!;
    assert.equal(big.bytesFromRegistry, m.layers[0]!.size);
    assert.ok((big.capWaits ?? 0) > 0, `capWaits ${big.capWaits}`);
    for (const b of result.blobs) assert.equal(typeof b.capWaits, 'number', `${b.digest} had a cap`);
  });

  it('without a cap (absent or 0) no per-download bucket is made', async () => {
    for (const cap of [undefined, 0]) {
      const { result, store } = await warm(cap);
      await assertStored(store, result.record.blobs);
      for (const b of result.blobs) assert.equal(b.capWaits, undefined);
    }
  });
});
