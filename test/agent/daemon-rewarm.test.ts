/**
 * `unpack` mode and "warm stays warm" against a real containerd (CRI over its socket),
 * the agent's node-local mirror in hosts.toml, real Redis and a real registry behind a
 * byte-counting proxy: the runtime losing an image is noticed, counted, and repaired
 * from the store without registry traffic; the store losing a blob is repaired from
 * the registry.
 */
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import { CriImageService } from '../../agent/src/runtime/cri-image-service.js';
import type { Digest } from '../../oci/src/digest.js';
import type { PrewarmJobProgress, PrewarmJobResult } from '../../oci/src/job-contract.js';
import { startContainerd } from '../harness/containerd.js';
import {
  Cleanup,
  type FaultProxyHandle,
  freePort,
  type PushedImage,
  pushImage,
  type RedisHandle,
  type RegistryHandle,
  waitUntil,
} from '../harness/index.js';
import {
  enqueue,
  MiB,
  metricValue,
  readJob,
  startAgent,
  startTestRedis,
  waitForJobEnd,
} from './daemon-fixtures.js';
import { startProxiedRegistry } from './fixtures.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

function blobBytes(proxy: FaultProxyHandle): number {
  return proxy.bytes(/\/blobs\//);
}

describe('unpack mode and warm-stays-warm (real containerd, Redis, registry)', () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let redis: RedisHandle;
  let conn: Redis;
  let cri: CriImageService;
  let containerdAddress: string;
  let img: PushedImage;
  let mirrorPort: number;

  before(async () => {
    ({ registry, proxy } = await startProxiedRegistry(cleanup));
    ({ redis, conn } = await startTestRedis(cleanup));
    const containerd = await startContainerd();
    cleanup.defer(() => containerd.close());
    containerdAddress = containerd.address;
    mirrorPort = await freePort();
    // containerd asks the node-local mirror first, the registry (through the proxy) second.
    const hostDir = join(containerd.certsDir, proxy.host);
    await mkdir(hostDir, { recursive: true });
    await writeFile(
      join(hostDir, 'hosts.toml'),
      [
        `server = "http://${proxy.host}"`,
        '',
        `[host."http://127.0.0.1:${mirrorPort}"]`,
        '  capabilities = ["pull", "resolve"]',
        '',
      ].join('\n'),
    );
    cri = new CriImageService({ address: containerd.address });
    cleanup.defer(() => cri.close());
    img = await pushImage(registry, {
      repository: 'rewarm/app',
      tag: 'v1',
      layers: [{ files: { 'etc/app.conf': 'warm\n' } }, { randomBytes: 3 * MiB }],
    });
  });

  it('unpack job ends unpacked; a runtime eviction (containerd event) is re-imported from the store and counted; a store loss is re-fetched', async () => {
    const node = 'node-unpack';
    const agent = await startAgent(cleanup, {
      node,
      redisUrl: redis.url,
      // The agent's own CRI client and event subscription on this containerd.
      extra: {
        KUBE_PREWARM_MIRROR_HOST: '127.0.0.1',
        KUBE_PREWARM_MIRROR_PORT: String(mirrorPort),
        KUBE_PREWARM_CONTAINERD_SOCKET: containerdAddress,
      },
    });
    const repository = `${proxy.host}/rewarm/app`;
    const image = `${repository}@${img.digest}`;
    const id = await enqueue(conn, { node, repository, digest: img.digest, tag: 'v1', mode: 'unpack' });
    const view = await waitForJobEnd(conn, node, id, { timeoutMs: 120_000 });
    assert.equal(view.state, 'completed', view.failedReason);
    assert.equal((view.returnvalue as PrewarmJobResult).phase, 'unpacked');
    assert.equal((view.progress as PrewarmJobProgress).phase, 'unpacked');
    const m = img.manifests[0]!;
    const status = await cri.imageStatus(image);
    assert.equal(status?.id, m.config.digest, 'the runtime has the image');

    // The node is warm and nothing was lost: a re-check does nothing.
    const signal = new AbortController().signal;
    assert.deepEqual(await agent.daemon.keeper!.recheck(signal), {
      checked: 1,
      storeRewarms: 0,
      runtimeRewarms: 0,
      failures: 0,
    });

    // kubelet's image GC removes it: containerd's delete event triggers a re-check, which
    // puts it back from the store (no manual re-check, the periodic one is 10 min away).
    proxy.resetStats();
    await cri.removeImage(image);
    await waitUntil(
      'the image back in the runtime and the eviction counted',
      async () =>
        (await cri.imageStatus(image))?.id === m.config.digest &&
        ((await readJob(conn, node, id)).progress as PrewarmJobProgress).evictions === 1,
      { timeoutMs: 60_000, intervalMs: 200 },
    );
    // Under the tag too, as the job unpacked it (kubelet looks a pod's image up by the
    // reference it names). The registry was asked for the tag only, never for a blob.
    assert.equal((await cri.imageStatus(`${repository}:v1`))?.id, m.config.digest, 'the tag is back');
    assert.equal(blobBytes(proxy), 0, 'no blob byte from the registry');
    assert.deepEqual(
      proxy.stats.log.filter((e) => !e.path.endsWith('/manifests/v1')).map((e) => `${e.method} ${e.path}`),
      [],
      'nothing but the tag asked of the registry',
    );
    const after1 = await readJob(conn, node, id);
    assert.equal(after1.state, 'completed');
    assert.equal((after1.progress as PrewarmJobProgress).phase, 'unpacked');
    const log = await readFile(join(agent.dir, 'agent.log'), 'utf8');
    assert.match(log, /runtime deleted an image; re-checking/);

    // Nothing lost now: a re-check finds everything in place.
    assert.deepEqual(await agent.daemon.keeper!.recheck(signal), {
      checked: 1,
      storeRewarms: 0,
      runtimeRewarms: 0,
      failures: 0,
    });

    // The store loses a layer (disk trouble, a hand-deleted file): re-fetched from the registry.
    const layer = m.layers[1]!;
    await agent.daemon.store!.delete(layer.digest as Digest);
    proxy.resetStats();
    const r2 = await agent.daemon.keeper!.recheck(signal);
    assert.deepEqual(r2, { checked: 1, storeRewarms: 1, runtimeRewarms: 0, failures: 0 });
    assert.ok(await agent.daemon.store!.stat(layer.digest as Digest));
    assert.equal(blobBytes(proxy), layer.size, 'exactly the lost layer came from the registry');
    const text = await (await fetch(`${agent.url}/metrics`)).text();
    assert.equal(metricValue(text, 'kprw_agent_rewarms_total', { cause: 'runtime' }), 1);
    assert.equal(metricValue(text, 'kprw_agent_rewarms_total', { cause: 'store' }), 1);
    assert.ok(
      metricValue(text, 'kprw_agent_mirror_requests_total') > 0,
      'containerd pulled through the mirror',
    );
    await agent.daemon.close();
  });

  it('an unpack job on an agent without a runtime fails permanently with a reason', async () => {
    const node = 'node-noruntime';
    const agent = await startAgent(cleanup, { node, redisUrl: redis.url });
    const id = await enqueue(conn, {
      node,
      repository: `${registry.host}/rewarm/app`,
      digest: img.digest,
      mode: 'unpack',
    });
    const v = await waitForJobEnd(conn, node, id);
    assert.equal(v.state, 'failed');
    assert.equal(v.attemptsMade, 1);
    assert.match(v.failedReason ?? '', /^PW_ERR_INVALID_CONFIG: unpack mode needs a container runtime/);
    await agent.daemon.close();
  });
});
