/**
 * The operator process killed (SIGKILL) in the middle of a rollout and started again:
 * nothing is enqueued twice, nothing finished is redone, and the rollout completes. And a
 * job still running when its ImagePrewarm was deleted is removed once it ends, even when
 * the operator that orphaned it died before that.
 * The operator runs as a real child process (operator/src/main.ts); agents are simulated
 * in this process and count every job they run.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Redis } from 'ioredis';
import { prewarmJobId } from '../../oci/src/job-contract.js';
import { pushImage } from '../harness/images.js';
import type { KubeHandle } from '../harness/kube.js';
import { createNode } from '../harness/kube-nodes.js';
import type { ManagedProcess } from '../harness/process.js';
import type { RedisHandle } from '../harness/redis.js';
import type { RegistryHandle } from '../harness/registry.js';
import { Cleanup, freePort, makeTempDir } from '../harness/tmp.js';
import {
  asDigest,
  condition,
  eventually,
  leaseHolder,
  prewarmApi,
  QueueReader,
  redisConnection,
  spawnOperator,
  startCluster,
} from './env.js';
import { SimAgent } from './sim-agent.js';

const NODES = ['r1', 'r2', 'r3', 'r4', 'r5', 'r6'];

/** A short lease (3 s), so a SIGKILLed leader is replaced quickly. */
function fastLease(name: string): Record<string, string> {
  return {
    KUBE_PREWARM_LEASE_NAME: name,
    KUBE_PREWARM_LEASE_DURATION_MS: '3000',
    KUBE_PREWARM_RENEW_DEADLINE_MS: '2000',
    KUBE_PREWARM_RETRY_PERIOD_MS: '500',
  };
}

async function metric(port: number, name: string): Promise<string[]> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  const text = await res.text();
  return text.split('\n').filter((l) => l.startsWith(name));
}

describe('operator restart mid-rollout', () => {
  const cleanup = new Cleanup();
  let kube: KubeHandle;
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let dir: string;
  let conn: Redis;
  let reader: QueueReader;
  const agents: SimAgent[] = [];
  const procs: ManagedProcess[] = [];

  before(async () => {
    ({ registry, redis, kube } = await startCluster(cleanup));
    dir = await makeTempDir('op-restart', cleanup);
    conn = redisConnection(redis.url);
    reader = new QueueReader(conn);
    for (const node of NODES) {
      await createNode(kube.kc, { name: node, labels: { pool: 'r' } });
      // Slow enough that the rollout (one node at a time) is still going when we kill.
      agents.push(
        new SimAgent({
          node,
          connection: () => redisConnection(redis.url),
          storeDir: join(dir, node),
          blobDelayMs: 250,
        }),
      );
    }
  });

  after(async () => {
    for (const p of procs) await p.kill();
    for (const a of agents) await a.close();
    await reader?.close();
    conn?.disconnect();
    await cleanup.run();
  });

  test('SIGKILL mid-rollout, restart: no duplicate jobs, no lost progress, rollout completes', async (t) => {
    const image = await pushImage(registry, {
      repository: 'big',
      tag: 'v1',
      layers: [{ files: { 'a.txt': 'a' } }, { files: { 'b.txt': 'b' } }],
    });
    const api = prewarmApi(kube.kc);
    await api.create('rollout', {
      images: [{ repository: `${registry.host}/big`, tag: 'v1' }],
      nodeSelector: { pool: 'r' },
      rollout: { maxParallelNodes: 1 },
    });
    const env = fastLease('restart-test');
    const first = await spawnOperator('operator-1', kube.kubeconfigPath, redis.url, dir, {
      ...env,
      KUBE_PREWARM_IDENTITY: 'op-1',
    });
    procs.push(first);
    const mid = await eventually('rollout under way', async () => {
      const got = await api.get('rollout');
      const warm = got?.status?.warmNodes ?? 0;
      return warm >= 2 && warm < NODES.length ? got : undefined;
    });
    await first.kill();
    const warmAtKill = mid.status?.warmNodes ?? 0;
    t.diagnostic(`killed the operator with ${warmAtKill}/${NODES.length} nodes warm`);
    assert.equal(
      (await leaseHolder(kube.kc, 'restart-test')).holder,
      'op-1',
      'the dead operator still holds the lease',
    );

    const port = await freePort();
    const second = await spawnOperator('operator-2', kube.kubeconfigPath, redis.url, dir, {
      ...env,
      KUBE_PREWARM_IDENTITY: 'op-2',
      KUBE_PREWARM_HTTP_PORT: String(port),
    });
    procs.push(second);
    const done = await eventually('rollout complete after restart', async () => {
      const got = await api.get('rollout');
      return condition(got, 'Ready')?.status === 'True' ? got : undefined;
    });
    assert.equal(done.status?.warm, `${NODES.length}/${NODES.length}`);
    assert.equal((await leaseHolder(kube.kc, 'restart-test')).holder, 'op-2');

    // Exactly one job per node, each run exactly once.
    for (const [i, node] of NODES.entries()) {
      const jobs = await reader.jobs(node);
      assert.deepEqual(
        jobs.map((j) => [j.id, j.state]),
        [[prewarmJobId(asDigest(image.digest), node, 'cache'), 'completed']],
        node,
      );
      const agent = agents[i]!;
      assert.deepEqual([...agent.started.values()], [1], `${node}: started once`);
      assert.deepEqual([...agent.processed.values()], [1], `${node}: completed once`);
    }

    // A duplicate push (through the Redis push inbox, as another replica's webhook would
    // deliver it) re-resolves the unchanged tag and enqueues nothing.
    await conn.xadd(
      'kprw:operator:push-events',
      '*',
      'e',
      JSON.stringify({
        registry: registry.host,
        repository: 'big',
        tag: 'v1',
        source: 'distribution',
        eventId: 'dup',
        timestamp: new Date().toISOString(),
        receivedAt: new Date().toISOString(),
      }),
    );
    await eventually('duplicate push handled', async () =>
      (await metric(port, 'kprw_resolves_total')).some((l) => l.includes('unchanged')),
    );
    await eventually(
      'status settled',
      async () => condition(await api.get('rollout'), 'Ready')?.status === 'True',
    );
    for (const [i, node] of NODES.entries()) {
      assert.equal((await reader.jobs(node)).length, 1, node);
      assert.deepEqual([...agents[i]!.started.values()], [1], node);
    }
    const enqueued = await metric(port, 'kprw_jobs_enqueued_total');
    const sum = enqueued.reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
    t.diagnostic(
      `second operator enqueued ${sum} job(s); ${warmAtKill} node(s) were warm when the first was killed`,
    );
    assert.ok(sum <= NODES.length - warmAtKill, 'the restarted operator only enqueued what was missing');
  });

  test('a job running when its ImagePrewarm is deleted is removed once it ends, across an operator restart', async () => {
    for (const p of procs.splice(0)) await p.kill();
    const image = await pushImage(registry, {
      repository: 'orphan',
      tag: 'v1',
      layers: [{ files: { 'o.txt': 'o' } }],
    });
    await createNode(kube.kc, { name: 'o1', labels: { pool: 'o' } });
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    agents.push(
      new SimAgent({
        node: 'o1',
        connection: () => redisConnection(redis.url),
        storeDir: join(dir, 'o1'),
        onStart: () => held,
      }),
    );
    const env = fastLease('orphan-test');
    const first = await spawnOperator('operator-o1', kube.kubeconfigPath, redis.url, dir, {
      ...env,
      KUBE_PREWARM_IDENTITY: 'op-o1',
    });
    procs.push(first);
    const api = prewarmApi(kube.kc);
    await api.create('orphaning', {
      images: [{ repository: `${registry.host}/orphan`, tag: 'v1' }],
      nodeSelector: { pool: 'o' },
    });
    const id = prewarmJobId(asDigest(image.digest), 'o1', 'cache');
    await eventually('the job is running', async () => (await reader.job('o1', id))?.state === 'active');
    await api.remove('orphaning');
    await eventually('ImagePrewarm gone', async () => (await api.get('orphaning')) === undefined);
    const orphan = await reader.job('o1', id);
    assert.equal(orphan?.state, 'active', 'a running job cannot be removed yet');
    assert.deepEqual(orphan?.data.owners, [], 'but it pins nothing');
    await first.kill();

    release();
    await eventually('the job finished', async () => (await reader.job('o1', id))?.state === 'completed');
    procs.push(
      await spawnOperator('operator-o2', kube.kubeconfigPath, redis.url, dir, {
        ...env,
        KUBE_PREWARM_IDENTITY: 'op-o2',
      }),
    );
    await eventually(
      'the new leader removed the orphan',
      async () => (await reader.job('o1', id)) === undefined,
    );
    assert.equal(await conn.scard('kprw:orphans'), 0, 'and forgot it');
  });
});
