import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ConnectionRamp } from '../../agent/src/fetch/connection-ramp.js';
import {
  Cleanup,
  type FaultProxyHandle,
  makeTempDir,
  type PushedImage,
  pushImage,
} from '../harness/index.js';
import { assertStored, warmImage } from './fetch-helpers.js';
import { startProxiedRegistry } from './fixtures.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

const MiB = 1024 * 1024;

/**
 * Drives a ramp through one-second windows where the path delivers `rateFor(limit)`
 * bytes/ms; returns the limit after each window.
 */
function drive(ramp: ConnectionRamp, rateFor: (limit: number) => number, windows: number): number[] {
  const limits: number[] = [];
  let now = 0;
  for (let w = 0; w < windows; w++) {
    // Ten reports per window, like flushes of written batches.
    for (let i = 0; i < 10; i++) {
      now += 100;
      ramp.count(rateFor(ramp.limit) * 100, now);
    }
    limits.push(ramp.limit);
  }
  return limits;
}

describe('ConnectionRamp', () => {
  it('doubles to the maximum on a per-connection-capped path', () => {
    const ramp = new ConnectionRamp(4, 16, 1000, 0);
    assert.deepEqual(
      drive(ramp, (n) => n * 10_000, 5),
      [8, 16, 16, 16, 16],
    );
    assert.equal(ramp.frozen, true);
  });

  it('steps back up when fewer connections cost throughput', () => {
    // A server that serves 4 streams at full speed, and no more.
    const ramp = new ConnectionRamp(4, 16, 1000, 0);
    assert.deepEqual(
      drive(ramp, (n) => Math.min(n, 4) * 6_000, 4),
      [8, 2, 4, 4],
    );
    assert.equal(ramp.frozen, true);
  });

  it('gives back a doubling that bought nothing on a link-capped path, then probes down to two', () => {
    const ramp = new ConnectionRamp(4, 16, 1000, 0);
    assert.deepEqual(
      drive(ramp, () => 25_000, 5),
      [8, 2, 2, 2, 2],
    );
    assert.equal(ramp.frozen, true);
  });

  it('keeps a doubling that helped a little (5–20%) but stops ramping', () => {
    const ramp = new ConnectionRamp(2, 16, 1000, 0);
    const rate = (n: number) => (n <= 2 ? 10_000 : n === 4 ? 15_000 : 16_500);
    assert.deepEqual(drive(ramp, rate, 4), [4, 8, 8, 8]);
    assert.equal(ramp.frozen, true);
  });

  it('gives back the last doubling, to the maximum, when it bought nothing, then probes down', () => {
    const ramp = new ConnectionRamp(8, 16, 1000, 0);
    assert.deepEqual(
      drive(ramp, () => 25_000, 4),
      [16, 4, 2, 2],
    );
    assert.equal(ramp.frozen, true);
  });

  it('does not count bytes while new connections settle (slow start)', () => {
    // The first 400 ms of each window are ignored: a slow first burst does not make the
    // next level look like a gain.
    const ramp = new ConnectionRamp(4, 16, 1000, 0);
    const limits = drive(ramp, () => 25_000, 3);
    assert.deepEqual(limits, [8, 2, 2]);
    const slowStart = new ConnectionRamp(4, 16, 1000, 0);
    let now = 0;
    const report = (times: number, bytes: number) => {
      for (let i = 0; i < times; i++) {
        now += 100;
        slowStart.count(bytes, now);
      }
    };
    report(4, 1); // settling: a trickle
    report(6, 25_000 * 100);
    assert.equal(slowStart.limit, 8);
    report(10, 25_000 * 100);
    assert.equal(slowStart.limit, 2, 'the doubling bought nothing once both levels were measured settled');
  });

  it('starts frozen at the maximum when the initial count reaches it, and never goes below 1', () => {
    assert.equal(new ConnectionRamp(16, 16, 1000, 0).frozen, true);
    assert.equal(new ConnectionRamp(32, 6, 1000, 0).limit, 6);
    assert.equal(new ConnectionRamp(0, 6, 1000, 0).limit, 1);
  });

  it('does not decide before a full window', () => {
    const ramp = new ConnectionRamp(4, 16, 1000, 0);
    assert.equal(ramp.count(1e9, 999), false);
    assert.equal(ramp.limit, 4);
    assert.equal(ramp.count(0, 1000), true);
    assert.equal(ramp.limit, 8);
  });
});

describe('fetcher connection ramp against a real registry', () => {
  let proxy: FaultProxyHandle;
  let img: PushedImage;
  before(async () => {
    let registry: Awaited<ReturnType<typeof startProxiedRegistry>>['registry'];
    ({ registry, proxy } = await startProxiedRegistry(cleanup));
    img = await pushImage(registry, {
      repository: 'kp/ramp',
      tag: 'v1',
      layers: [{ randomBytes: 12 * MiB, seed: 3 }],
    });
  });

  const blobs = () => [img.manifests[0]!.config.digest, ...img.manifests[0]!.layers.map((l) => l.digest)];
  /** Most requests for the 12 MiB layer open at once. */
  const layerPeak = () =>
    proxy.stats.peakInFlight.get(`/v2/kp/ramp/blobs/${img.manifests[0]!.layers[0]!.digest}`) ?? 0;

  it('holds a blob to its initial connection count while the ramp has not measured', async () => {
    proxy.resetStats();
    const { store, result } = await warmImage(
      `${proxy.host}/kp/ramp:v1`,
      await makeTempDir('store', cleanup),
      {
        fetcher: {
          chunkSize: MiB,
          minChunkSize: 256 * 1024,
          concurrencyPerBlob: 8,
          initialConcurrency: 1,
          rampWindowMs: 1e9,
        },
      },
    );
    await assertStored(store, blobs());
    assert.equal(layerPeak(), 1);
    const layer = result.blobs.find((b) => b.digest === img.manifests[0]!.layers[0]!.digest);
    assert.equal(layer?.connections, 1, 'the result reports the connection level');
    assert.ok(proxy.count(/\/blobs\/sha256:/, 'GET') >= 12, 'expected one request per 1 MiB chunk');
  });

  it('starts at the maximum when initialConcurrency equals it', async () => {
    proxy.resetStats();
    const { store } = await warmImage(`${proxy.host}/kp/ramp:v1`, await makeTempDir('store', cleanup), {
      fetcher: { chunkSize: MiB, minChunkSize: 256 * 1024, concurrencyPerBlob: 8, initialConcurrency: 8 },
    });
    await assertStored(store, blobs());
    assert.ok(layerPeak() > 1, `peak ${layerPeak()} requests in flight`);
  });

  it('finishes with a verified blob when the ramp re-decides on every batch', async () => {
    const { store } = await warmImage(`${proxy.host}/kp/ramp:v1`, await makeTempDir('store', cleanup), {
      fetcher: {
        chunkSize: MiB,
        minChunkSize: 256 * 1024,
        concurrencyPerBlob: 8,
        initialConcurrency: 1,
        rampWindowMs: 0,
      },
    });
    await assertStored(store, blobs());
  });
});
