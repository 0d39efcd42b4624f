/**
 * The tenancy policy on real components (kube-apiserver + etcd, Redis, a registry with
 * images pushed by skopeo), the operator in this process, no agents: an ImagePrewarm of a
 * namespace that may not gate nodes holds none (the startup taint goes while its job is
 * still pending) and says so; a namespace's pinned-image quota keeps the newer
 * ImagePrewarm's entry out of every node queue until the older one is deleted.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { prewarmJobId } from '../../oci/src/job-contract.js';
import { STARTUP_TAINT_EFFECT, STARTUP_TAINT_KEY } from '../../operator/src/api/types.js';
import { type PushedImage, pushImage } from '../harness/images.js';
import type { KubeHandle } from '../harness/kube.js';
import { createNode, readNode } from '../harness/kube-nodes.js';
import type { RedisHandle } from '../harness/redis.js';
import type { RegistryHandle } from '../harness/registry.js';
import { Cleanup } from '../harness/tmp.js';
import {
  asDigest,
  condition,
  eventually,
  type InProcessOperator,
  NS,
  prewarmApi,
  QueueReader,
  redisConnection,
  startCluster,
  startOperator,
} from './env.js';

const KiB = 1024;

describe('tenancy policy (apiserver + redis + registry, operator in process)', () => {
  const cleanup = new Cleanup();
  let kube: KubeHandle;
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let op: InProcessOperator;
  let reader: QueueReader;
  let conn: Redis;
  let api: ReturnType<typeof prewarmApi>;
  const img: Record<string, PushedImage> = {};

  before(async () => {
    ({ registry, redis, kube } = await startCluster(cleanup));
    for (const [name, seed] of [
      ['gated', 1],
      ['big-a', 2],
      ['big-b', 3],
    ] as const)
      img[name] = await pushImage(registry, {
        repository: `tenancy/${name}`,
        tag: 'v1',
        // Incompressible: the compressed size the quota counts is ~256 KiB per image.
        layers: [{ randomBytes: 256 * KiB, seed }],
      });
    op = await startOperator(kube.kc, redis.url, {
      controller: {
        // `default` (where these ImagePrewarms live) may not gate; 400 KiB fit one image, not two.
        policy: { gateNodesNamespaces: ['ml'], pinnedQuotaBytes: 400 * KiB },
      },
    });
    cleanup.defer(() => op.close());
    conn = redisConnection(redis.url);
    cleanup.defer(() => conn.disconnect());
    reader = new QueueReader(conn);
    cleanup.defer(() => reader.close());
    api = prewarmApi(kube.kc);
    await eventually('leader', () => op.operator.isLeader);
  });
  after(() => cleanup.run());

  test('a namespace that may not gate: its ImagePrewarm holds no node and says GateNodesNotAllowed', async () => {
    await api.create('gater', {
      images: [{ repository: `${registry.host}/tenancy/gated`, tag: 'v1' }],
      nodeSelector: { pool: 'g' },
      triggers: { onNodeJoin: true },
      startup: { gateNodes: true },
    });
    await createNode(kube.kc, {
      name: 'g1',
      labels: { pool: 'g' },
      taints: [{ key: STARTUP_TAINT_KEY, effect: STARTUP_TAINT_EFFECT }],
    });
    let last: unknown;
    await eventually(
      'startup taint removed from g1',
      async () => {
        const n = await readNode(kube.kc, 'g1');
        last = n.spec?.taints;
        return !(n.spec?.taints ?? []).some((t) => t.key === STARTUP_TAINT_KEY);
      },
      60_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}; last taints ${JSON.stringify(last)}`);
    });
    // Not because the image got warm: nothing runs its job (no agent here).
    const job = await eventually('g1 job enqueued', () =>
      reader.job('g1', prewarmJobId(asDigest(img.gated!.digest), 'g1', 'cache')),
    );
    assert.notEqual(job.state, 'completed');
    const got = await eventually('GateNodesNotAllowed in the status', async () => {
      const p = await api.get('gater');
      return condition(p, 'Degraded')?.reason === 'GateNodesNotAllowed' ? p : undefined;
    });
    assert.match(condition(got, 'Degraded')!.message, /not allowed in namespace default/);
    // Its image counts against the namespace's quota too: make room for the next test.
    await api.remove('gater');
    await eventually('gater deleted', async () => (await api.get('gater')) === undefined);
  });

  test('pinned-image quota: the newer ImagePrewarm is refused (QuotaExceeded, no jobs) until the older goes', async () => {
    await createNode(kube.kc, { name: 'q1', labels: { pool: 'q' } });
    // The older one has the later name: its age, not its name, lets it in.
    await api.create('zz-older', {
      images: [{ repository: `${registry.host}/tenancy/big-a`, tag: 'v1' }],
      nodeSelector: { pool: 'q' },
    });
    const older = await eventually('zz-older resolved with its size', async () => {
      const p = await api.get('zz-older');
      return (p?.status?.images?.[0]?.bytes ?? 0) > 0 ? p : undefined;
    });
    const size = older.status!.images![0]!.bytes!;
    assert.ok(size > 256 * KiB && size < 400 * KiB, `one image fits the quota (${size} B)`);
    await eventually('zz-older job on q1', () =>
      reader.job('q1', prewarmJobId(asDigest(img['big-a']!.digest), 'q1', 'cache')),
    );
    // creationTimestamp has whole seconds: make sure the second one is newer.
    await sleep(1_100);
    await api.create('aa-newer', {
      images: [{ repository: `${registry.host}/tenancy/big-b`, tag: 'v1' }],
      nodeSelector: { pool: 'q' },
    });
    const newer = await eventually('aa-newer refused', async () => {
      const p = await api.get('aa-newer');
      return condition(p, 'Ready')?.reason === 'QuotaExceeded' ? p : undefined;
    });
    assert.equal(condition(newer, 'Degraded')?.reason, 'QuotaExceeded');
    assert.match(condition(newer, 'Ready')!.message, /may use 400 KiB/);
    const newJob = prewarmJobId(asDigest(img['big-b']!.digest), 'q1', 'cache');
    // Give the operator a few progress polls to (wrongly) enqueue it.
    await sleep(1_500);
    assert.equal(await reader.job('q1', newJob), undefined, 'the refused entry has no job');
    assert.equal(condition(await api.get('zz-older'), 'Degraded')?.reason, 'AsExpected');

    await api.remove('zz-older');
    await eventually('aa-newer admitted once zz-older is gone', () => reader.job('q1', newJob), 60_000);
    await eventually(
      'aa-newer no longer refused',
      async () => condition(await api.get('aa-newer'), 'Ready')?.reason !== 'QuotaExceeded',
    );
    assert.equal(NS, 'default');
  });
});
