/**
 * Peers before the registry: two in-process agents share Redis; the first warms an image
 * from the registry and announces its blobs (the URL of its peer listener), the second
 * fetches them from the first's peer listener with the cluster peer token; a pull that
 * misses a third node's mirror is served from a peer too. Registry egress is counted by a
 * proxy in front of the real registry. Then the peer listener's refusals: no token or a
 * wrong one → 401; manifests, blobs it does not hold and anything but
 * `/peer/v1/blobs/<digest>` → 404, and it never goes upstream.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import type { PrewarmJobResult } from '../../oci/src/job-contract.js';
import {
  ALL_MANIFEST_TYPES,
  Cleanup,
  type FaultProxyHandle,
  freePort,
  makeTempDir,
  type PushedImage,
  pushImage,
  type RedisHandle,
  type RegistryHandle,
} from '../harness/index.js';
import { enqueue, MiB, startAgent, startTestRedis, waitForJobEnd } from './daemon-fixtures.js';
import { startProxiedRegistry } from './fixtures.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

const TOKEN = 'peer-token-0123456789abcdef0123456789abcdef';
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function layerBytes(proxy: FaultProxyHandle, img: PushedImage): number {
  return proxy.bytes(new RegExp(`(${img.manifests[0]!.layers.map((l) => l.digest).join('|')})$`));
}

describe('peer sharing between agents', () => {
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let conn: Redis;
  let img: PushedImage;
  let tokenFile: string;

  before(async () => {
    tokenFile = join(await makeTempDir('peer-token', cleanup), 'token');
    await writeFile(tokenFile, `${TOKEN}\n`);
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
    const mirrorPort = await freePort();
    const peerPort = await freePort();
    const a = await startAgent(cleanup, {
      node,
      redisUrl: redis.url,
      extra: {
        KUBE_PREWARM_MIRROR_PORT: String(mirrorPort),
        KUBE_PREWARM_PEER_HOST: '127.0.0.1',
        KUBE_PREWARM_PEER_PORT: String(peerPort),
        KUBE_PREWARM_PEER_URL: `http://127.0.0.1:${peerPort}`,
        KUBE_PREWARM_PEER_TOKEN_FILE: tokenFile,
        KUBE_PREWARM_ALLOWED_REGISTRIES: proxy.host,
      },
    });
    return { ...a, mirrorUrl: `http://127.0.0.1:${mirrorPort}`, peerUrl: `http://127.0.0.1:${peerPort}` };
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
    const res = await fetch(`${e.mirrorUrl}/v2/peers/app/blobs/${layer.digest}?ns=${proxy.host}`);
    assert.equal(res.status, 200);
    const body = Buffer.from(await res.arrayBuffer());
    assert.equal(body.length, layer.size);
    assert.equal(sha(body), layer.digest);
    assert.equal(layerBytes(proxy, img), 0, 'the mirror miss was filled from the peer, not the registry');
  });

  it('the peer listener wants the token, serves held blobs by digest only, and never goes upstream', async () => {
    const f = await agent('peer-f');
    const repository = `${proxy.host}/peers/app`;
    const j = await enqueue(conn, { node: 'peer-f', repository, tag: 'v1', digest: img.digest });
    assert.equal((await waitForJobEnd(conn, 'peer-f', j)).state, 'completed');
    const layer = img.manifests[0]!.layers[0]!;
    const blobUrl = `${f.peerUrl}/peer/v1/blobs/${layer.digest}`;
    const auth = { Authorization: `Bearer ${TOKEN}` };

    // Without the token, or with a wrong one: 401 before anything is looked at.
    const wrong: Record<string, string>[] = [
      {},
      { Authorization: `Bearer ${TOKEN.slice(0, -1)}x` },
      { Authorization: `Bearer ${TOKEN}${TOKEN}` },
      { Authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` },
    ];
    for (const headers of wrong) {
      const r = await fetch(blobUrl, { headers });
      assert.equal(r.status, 401, JSON.stringify(headers));
      assert.equal(r.headers.get('www-authenticate'), 'Bearer realm="kube-prewarm-peer"');
      const body = (await r.json()) as { errors: { code: string }[] };
      assert.equal(body.errors[0]!.code, 'UNAUTHORIZED');
    }
    // The containerd mirror is not a way around it: it is on loopback and is not the peer API.
    assert.equal(f.daemon.mirrorAddress?.startsWith('127.0.0.1:'), true);

    // With the token: the blob, verified.
    const ok = await fetch(blobUrl, { headers: auth });
    assert.equal(ok.status, 200);
    assert.equal(sha(Buffer.from(await ok.arrayBuffer())), layer.digest);
    const part = await fetch(blobUrl, { headers: { ...auth, Range: 'bytes=10-19' } });
    assert.equal(part.status, 206);
    assert.equal((await part.arrayBuffer()).byteLength, 10);

    // Never manifests (by the blob path either), never blobs it does not hold, never upstream.
    const other = await pushImage(registry, {
      repository: 'peers/other',
      tag: 'v1',
      layers: [{ randomBytes: 40_000, seed: 23 }],
    });
    proxy.resetStats();
    const refused: [string, number][] = [
      [`${f.peerUrl}/peer/v1/blobs/${img.manifests[0]!.digest}`, 404],
      [`${f.peerUrl}/peer/v1/blobs/${img.digest}`, 404],
      [`${f.peerUrl}/peer/v1/blobs/${other.manifests[0]!.layers[0]!.digest}`, 404],
      [`${f.peerUrl}/v2/peers/app/manifests/v1?ns=${proxy.host}`, 404],
      [`${f.peerUrl}/v2/peers/app/blobs/${layer.digest}?ns=${proxy.host}`, 404],
      [`${f.peerUrl}/v2/peers/other/blobs/${other.manifests[0]!.layers[0]!.digest}?ns=${proxy.host}`, 404],
      [`${f.peerUrl}/peer/v1/blobs/sha256:zz`, 400],
    ];
    for (const [url, status] of refused) {
      const r = await fetch(url, { headers: { ...auth, Accept: ALL_MANIFEST_TYPES } });
      assert.equal(r.status, status, url);
      await r.arrayBuffer();
    }
    assert.equal(proxy.stats.log.length, 0, 'the peer listener never contacts a registry');
  });
});
