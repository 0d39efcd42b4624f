/**
 * Peers before the registry: two in-process agents share Redis; the first warms an image
 * from the registry and announces its blobs, the second fetches them from the first's
 * mirror; a pull that misses a third node's mirror is served from a peer too. Registry
 * egress is counted by a proxy in front of the real registry.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import type { PrewarmJobResult } from '../../oci/src/job-contract.js';
import {
  Cleanup,
  type FaultProxyHandle,
  freePort,
  type PushedImage,
  pushImage,
  type RedisHandle,
  type RegistryHandle,
} from '../harness/index.js';
import { enqueue, MiB, startAgent, startTestRedis, waitForJobEnd } from './daemon-fixtures.js';
import { startProxiedRegistry } from './fixtures.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

function layerBytes(proxy: FaultProxyHandle, img: PushedImage): number {
  return proxy.bytes(new RegExp(`(${img.manifests[0]!.layers.map((l) => l.digest).join('|')})$`));
}

describe('peer sharing between agents', () => {
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let conn: Redis;
  let img: PushedImage;

  before(async () => {
    ({ redis, conn } = await startTestRedis(cleanup));
    ({ registry, proxy } = await startProxiedRegistry(cleanup));
    img = await pushImage(registry, {
      repository: 'peers/app',
      tag: 'v1',
      layers: [
        { randomBytes: 12 * MiB, seed: 21 },
        { randomBytes: 5 * MiB, seed: 22 },
      ],
    });
  });

  async function agent(node: string) {
    const port = await freePort();
    return startAgent(cleanup, {
      node,
      redisUrl: redis.url,
      extra: {
        KUBE_PREWARM_MIRROR_HOST: '127.0.0.1',
        KUBE_PREWARM_MIRROR_PORT: String(port),
        KUBE_PREWARM_PEER_URL: `http://127.0.0.1:${port}`,
      },
    });
  }

  it('the second node takes every layer from the first node, none from the registry', async () => {
    await agent('peer-a');
    await agent('peer-b');
    const repository = `${proxy.host}/peers/app`;
    proxy.resetStats();
    const a = await enqueue(conn, { node: 'peer-a', repository, tag: 'v1', digest: img.digest });
    const ja = await waitForJobEnd(conn, 'peer-a', a);
    assert.equal(ja.state, 'completed', ja.failedReason);
    const fromRegistryA = layerBytes(proxy, img);
    const layersSize = img.manifests[0]!.layers.reduce((n, l) => n + l.size, 0);
    assert.equal(fromRegistryA, layersSize, 'the first node fetched the layers from the registry once');

    proxy.resetStats();
    const b = await enqueue(conn, { node: 'peer-b', repository, tag: 'v1', digest: img.digest });
    const jb = await waitForJobEnd(conn, 'peer-b', b);
    assert.equal(jb.state, 'completed', jb.failedReason);
    const rb = jb.returnvalue as PrewarmJobResult;
    assert.equal(layerBytes(proxy, img), 0, 'no layer byte came from the registry for the second node');
    assert.ok(rb.bytesFromPeers >= layersSize, `bytesFromPeers ${rb.bytesFromPeers}`);
  });

  it('a pull that misses a node mirror takes the blob from a peer, not the registry', async () => {
    await agent('peer-d');
    const e = await agent('peer-e');
    const repository = `${proxy.host}/peers/app`;
    const d = await enqueue(conn, { node: 'peer-d', repository, tag: 'v1', digest: img.digest });
    const jd = await waitForJobEnd(conn, 'peer-d', d);
    assert.equal(jd.state, 'completed', jd.failedReason);

    proxy.resetStats();
    const layer = img.manifests[0]!.layers[0]!;
    // What containerd sends to a hosts.toml mirror: the upstream registry in `ns`.
    const res = await fetch(
      `http://127.0.0.1:${e.config.mirrorPort}/v2/peers/app/blobs/${layer.digest}?ns=${proxy.host}`,
    );
    assert.equal(res.status, 200);
    const body = Buffer.from(await res.arrayBuffer());
    assert.equal(body.length, layer.size);
    assert.equal(`sha256:${createHash('sha256').update(body).digest('hex')}`, layer.digest);
    assert.equal(layerBytes(proxy, img), 0, 'the mirror miss was filled from the peer, not the registry');
  });
});
