/**
 * The disk budget end to end: pins come from the operator's jobs in real Redis, images
 * from a real registry, one in-process agent with a budget smaller than the images.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { FsBlobStore } from '../../agent/src/store/fs-store.js';
import type { Digest } from '../../oci/src/digest.js';
import { nodeQueueName, QUEUE_PREFIX } from '../../oci/src/job-contract.js';
import {
  Cleanup,
  type PushedImage,
  pushImage,
  type RedisHandle,
  type RegistryHandle,
} from '../harness/index.js';
import { enqueue, MiB, metricValue, startAgent, startTestRedis, waitForJobEnd } from './daemon-fixtures.js';
import { startTestRegistry } from './fixtures.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

/** Every digest of the image (manifest, config, layers) is committed in the store. */
async function warm(store: FsBlobStore, img: PushedImage): Promise<boolean> {
  const m = img.manifests[0]!;
  for (const d of [m.digest, m.config.digest, ...m.layers.map((l) => l.digest)])
    if (!(await store.stat(d as Digest))) return false;
  return true;
}

async function gone(store: FsBlobStore, img: PushedImage): Promise<boolean> {
  const m = img.manifests[0]!;
  for (const d of [m.digest, m.config.digest, ...m.layers.map((l) => l.digest)])
    if (await store.stat(d as Digest)) return false;
  return true;
}

describe('disk budget with pins from Redis (real Redis, real registry)', () => {
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let conn: Redis;
  const imgs: Record<string, PushedImage> = {};

  before(async () => {
    ({ redis, conn } = await startTestRedis(cleanup));
    registry = await startTestRegistry(cleanup);
    for (const name of ['pinned', 'old', 'newer', 'next', 'big'])
      imgs[name] = await pushImage(registry, {
        repository: `budget/${name}`,
        tag: 'v1',
        layers: [{ randomBytes: (name === 'big' ? 7 : 4) * MiB }],
      });
  });

  async function warmJob(node: string, name: string): Promise<string> {
    const id = await enqueue(conn, {
      node,
      repository: `${registry.host}/budget/${name}`,
      digest: imgs[name]!.digest,
      tag: 'v1',
    });
    return id;
  }

  /** What the operator's `unpin` does for a completed job whose last owner goes: remove it. */
  async function unpin(node: string, jobId: string): Promise<void> {
    const queue = new Queue(nodeQueueName(node), { connection: conn, prefix: QUEUE_PREFIX });
    try {
      const job = await Job.fromId(queue, jobId);
      assert.ok(job);
      await job.remove();
    } finally {
      await queue.close();
    }
  }

  it('budget smaller than two images: the unpinned image is evicted for the next one, the pinned one never', async () => {
    const node = 'node-small';
    // 4 MiB images; 6 MiB fits one image and not two.
    const agent = await startAgent(cleanup, {
      node,
      redisUrl: redis.url,
      extra: { KUBE_PREWARM_DISK_BUDGET: '6MiB', KUBE_PREWARM_DISK_BUDGET_PERCENT: '0' },
    });
    const store = agent.daemon.store!;
    const old = await warmJob(node, 'old');
    assert.equal((await waitForJobEnd(conn, node, old)).state, 'completed');
    assert.ok(await warm(store, imgs.old!));
    await unpin(node, old);

    const pinned = await warmJob(node, 'pinned');
    const v = await waitForJobEnd(conn, node, pinned);
    assert.equal(v.state, 'completed', v.failedReason);
    assert.ok(await warm(store, imgs.pinned!));
    assert.ok(await gone(store, imgs.old!), 'the unpinned image made room');

    // Another pinned image cannot fit beside the pinned one: the job fails with the
    // budget numbers, and the pinned image is untouched.
    const next = await warmJob(node, 'next');
    const n = await waitForJobEnd(conn, node, next);
    assert.equal(n.state, 'failed');
    assert.match(
      n.failedReason ?? '',
      /^PW_ERR_DISK_FULL: not enough room within the store budget; store uses/,
    );
    assert.match(n.failedReason ?? '', /of a 6\.0 MiB budget/);
    assert.ok(await warm(store, imgs.pinned!), 'pinned image never evicted');
    // Only its manifest was read (to learn the sizes); no blob of it was downloaded.
    const nm = imgs.next!.manifests[0]!;
    for (const d of [nm.config.digest, ...nm.layers.map((l) => l.digest)])
      assert.equal(await store.stat(d as Digest), undefined, `${d} not downloaded`);
    assert.deepEqual(await store.listIngests(), [], 'no partial download either');

    // An image larger than the whole budget can never fit: failed at once, not retried.
    const big = await warmJob(node, 'big');
    const b = await waitForJobEnd(conn, node, big);
    assert.equal(b.state, 'failed');
    assert.equal(b.attemptsMade, 1);
    assert.match(b.failedReason ?? '', /^PW_ERR_DISK_FULL: /);
    assert.ok(await warm(store, imgs.pinned!));

    // A periodic pass over budget leaves the pinned image too.
    const report = await agent.daemon.collect('periodic');
    assert.ok(report?.pinsKnown);
    assert.equal(report?.evictedImages.length, 0);
    assert.ok(await warm(store, imgs.pinned!));
    const text = await (await fetch(`${agent.url}/metrics`)).text();
    assert.equal(metricValue(text, 'kprw_agent_gc_evictions_total', { kind: 'image' }), 1);
    // Not permanent (pins may be released meanwhile): retried with backoff, each attempt short of room.
    assert.equal(n.attemptsMade, 3);
    assert.equal(metricValue(text, 'kprw_agent_gc_runs_total', { reason: 'job', result: 'short' }), 3 + 1);
    await agent.daemon.close();
  });

  it('room for three images: of two unpinned images, only the older one is evicted', async () => {
    const node = 'node-lru';
    const agent = await startAgent(cleanup, {
      node,
      redisUrl: redis.url,
      extra: { KUBE_PREWARM_DISK_BUDGET: '14MiB', KUBE_PREWARM_DISK_BUDGET_PERCENT: '0' },
    });
    const store = agent.daemon.store!;
    const ids: Record<string, string> = {};
    for (const name of ['pinned', 'old', 'newer']) {
      ids[name] = await warmJob(node, name);
      const v = await waitForJobEnd(conn, node, ids[name]!);
      assert.equal(v.state, 'completed', v.failedReason);
    }
    await unpin(node, ids.old!);
    await unpin(node, ids.newer!);
    const next = await warmJob(node, 'next');
    const v = await waitForJobEnd(conn, node, next);
    assert.equal(v.state, 'completed', v.failedReason);
    assert.ok(await gone(store, imgs.old!), 'older unpinned image evicted');
    assert.ok(await warm(store, imgs.newer!), 'newer unpinned image kept (room was enough)');
    assert.ok(await warm(store, imgs.pinned!));
    assert.ok(await warm(store, imgs.next!));
    await agent.daemon.close();
  });
});
