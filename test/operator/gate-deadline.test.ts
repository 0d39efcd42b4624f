/**
 * The gate deadline (fail open) and the runtime re-warm count on real components: a real
 * kube-apiserver (the CRD's schema keeps the new status fields), Redis, a registry and
 * simulated agents. A gated node whose agent fails keeps the startup taint until the
 * ImagePrewarm's `startup.gateDeadlineSeconds`, then loses it, and the status (written
 * first) says why; the operator's cap shortens a longer deadline; a completed job's
 * `evictions` reaches `status.images[].rewarms` at the next resync.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { prewarmJobId } from '../../oci/src/job-contract.js';
import { STARTUP_TAINT_EFFECT, STARTUP_TAINT_KEY } from '../../operator/src/api/types.js';
import { pushImage } from '../harness/images.js';
import type { KubeHandle } from '../harness/kube.js';
import { createNode, readNode } from '../harness/kube-nodes.js';
import type { RedisHandle } from '../harness/redis.js';
import type { RegistryHandle } from '../harness/registry.js';
import { Cleanup, makeTempDir } from '../harness/tmp.js';
import {
  asDigest,
  condition,
  eventually,
  type InProcessOperator,
  prewarmApi,
  QueueReader,
  redisConnection,
  startCluster,
  startOperator,
} from './env.js';
import { SimAgent } from './sim-agent.js';

const gate = { key: STARTUP_TAINT_KEY, effect: STARTUP_TAINT_EFFECT };
/** The operator's cap in this file: longer spec deadlines are cut to it. */
const CAP_MS = 20_000;

describe('gate deadline and re-warm count (apiserver + redis + registry + simulated agents)', () => {
  const cleanup = new Cleanup();
  let kube: KubeHandle;
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let op: InProcessOperator;
  let readerConn: Redis;
  let reader: QueueReader;
  let storeRoot: string;
  const agents: SimAgent[] = [];
  let api: ReturnType<typeof prewarmApi>;

  const startAgent = (node: string, failWith?: string): void => {
    agents.push(
      new SimAgent({
        node,
        connection: () => redisConnection(redis.url),
        storeDir: join(storeRoot, node),
        ...(failWith ? { failWith: () => failWith } : {}),
      }),
    );
  };
  const tainted = async (name: string): Promise<boolean> =>
    ((await readNode(kube.kc, name)).spec?.taints ?? []).some((t) => t.key === STARTUP_TAINT_KEY);

  before(async () => {
    ({ registry, redis, kube } = await startCluster(cleanup));
    storeRoot = await makeTempDir('gate-deadline-stores', cleanup);
    readerConn = redisConnection(redis.url);
    reader = new QueueReader(readerConn);
    api = prewarmApi(kube.kc);
    op = await startOperator(kube.kc, redis.url, {
      controller: { maxGateDeadlineMs: CAP_MS, resyncMs: 1_000 },
    });
  });

  after(async () => {
    await op?.close();
    for (const a of agents) await a.close();
    await reader?.close();
    readerConn?.disconnect();
    await cleanup.run();
  });

  /**
   * Creates a gated node whose agent fails every job with PW_ERR_DISK_FULL, then polls
   * until the taint is gone. Every poll reads the Node and then the ImagePrewarm: once the
   * Node has no taint, the ImagePrewarm read after it must already name the node (the
   * status is written before the taint is removed). Returns the node's creation time, the
   * last time the taint was seen and the status read right after the release was seen.
   */
  const failUntilReleased = async (nodeName: string, prewarm: string, pool: string) => {
    startAgent(nodeName, 'PW_ERR_DISK_FULL');
    const created = await createNode(kube.kc, { name: nodeName, labels: { pool }, taints: [gate] });
    const createdAt = created.metadata!.creationTimestamp!;
    let lastTainted = 0;
    const atRelease = await eventually(
      `${nodeName} released`,
      async () => {
        const seenAt = Date.now();
        if (await tainted(nodeName)) {
          lastTainted = seenAt;
          return undefined;
        }
        return api.get(prewarm);
      },
      120_000,
    );
    return { createdAt: new Date(createdAt).getTime(), lastTainted, atRelease };
  };

  test('a gated node whose agent fails keeps the taint until gateDeadlineSeconds, then fails open and says why', async () => {
    const img = await pushImage(registry, {
      repository: 'deadline/app',
      tag: 'v1',
      layers: [{ files: { 'a.txt': 'deadline' } }],
    });
    await api.create('deadline', {
      images: [{ repository: `${registry.host}/deadline/app`, tag: 'v1' }],
      nodeSelector: { pool: 'd' },
      startup: { gateNodes: true, gateDeadlineSeconds: 10 },
    });
    await eventually(
      'resolved',
      async () => (await api.get('deadline'))?.status?.images?.[0]?.digest === img.digest,
    );
    const { createdAt, lastTainted, atRelease } = await failUntilReleased('dl1', 'deadline', 'd');
    // Held at first (a failing job alone never releases it: test/operator/e2e.test.ts).
    assert.ok(lastTainted > 0, 'the node was seen tainted at least once');
    const expired = atRelease?.status?.expiredGates ?? [];
    assert.deepEqual(
      expired.map((e) => e.node),
      ['dl1'],
      `status at release: ${JSON.stringify(atRelease?.status)}`,
    );
    assert.ok(
      Date.parse(expired[0]!.time) >= createdAt + 10_000,
      `expired at ${expired[0]!.time}, node created ${new Date(createdAt).toISOString()}`,
    );
    assert.match(expired[0]!.message, /not warm 10s after joining.*PW_ERR_DISK_FULL/);
    const degraded = condition(atRelease, 'Degraded');
    assert.equal(degraded?.reason, 'GateDeadlineExceeded');
    assert.match(degraded?.message ?? '', /dl1/);
    assert.equal(condition(atRelease, 'Ready')?.status, 'False');
    assert.equal(atRelease?.status?.images?.[0]?.failingNodes?.[0]?.reason, 'PW_ERR_DISK_FULL');
    // Fail open means the taint stays off, and the node is still a target (warming goes on).
    const later = await api.get('deadline');
    assert.equal(later?.status?.targetNodes, 1);
    assert.equal(await tainted('dl1'), false);
  });

  test("the operator's cap shortens a longer gateDeadlineSeconds", async () => {
    const img = await pushImage(registry, {
      repository: 'deadline/capped',
      tag: 'v1',
      layers: [{ files: { 'a.txt': 'capped' } }],
    });
    await api.create('capped', {
      images: [{ repository: `${registry.host}/deadline/capped`, tag: 'v1' }],
      nodeSelector: { pool: 'c' },
      startup: { gateNodes: true, gateDeadlineSeconds: 3_600 },
    });
    await eventually(
      'resolved',
      async () => (await api.get('capped'))?.status?.images?.[0]?.digest === img.digest,
    );
    const { createdAt, atRelease } = await failUntilReleased('cap1', 'capped', 'c');
    const expired = atRelease?.status?.expiredGates ?? [];
    assert.deepEqual(
      expired.map((e) => e.node),
      ['cap1'],
    );
    assert.match(expired[0]!.message, /not warm 20s after joining/);
    assert.ok(Date.parse(expired[0]!.time) >= createdAt + CAP_MS);
  });

  test("a completed job's evictions reach status.images[].rewarms", async () => {
    const img = await pushImage(registry, {
      repository: 'rewarm/app',
      tag: 'v1',
      layers: [{ files: { 'a.txt': 'rewarm' } }],
    });
    startAgent('rw1');
    await createNode(kube.kc, { name: 'rw1', labels: { pool: 'r' } });
    await api.create('rewarm', {
      images: [{ repository: `${registry.host}/rewarm/app`, tag: 'v1' }],
      nodeSelector: { pool: 'r' },
    });
    await eventually('warm', async () => (await api.get('rewarm'))?.status?.warm === '1/1');
    assert.equal((await api.get('rewarm'))?.status?.images?.[0]?.rewarms, 0);
    // What the agent's WarmKeeper does after re-importing an image the runtime lost.
    const id = prewarmJobId(asDigest(img.digest), 'rw1', 'cache');
    const job = await Job.fromId(reader.queue('rw1'), id);
    assert.ok(job, `job ${id}`);
    await job.updateProgress({ ...(job.progress as object), evictions: 2 });
    const p = await eventually('rewarms in status', async () => {
      const got = await api.get('rewarm');
      return got?.status?.images?.[0]?.rewarms === 2 ? got : undefined;
    });
    assert.equal(p.status?.warm, '1/1');
  });
});
