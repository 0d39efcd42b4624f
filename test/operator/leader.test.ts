/**
 * Two operator replicas (real child processes) on one Lease: only the leader reconciles;
 * when it is killed, the standby takes over once the lease has expired (never earlier)
 * and carries on.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { V1Lease } from '@kubernetes/client-node';
import { pushImage } from '../harness/images.js';
import type { KubeHandle } from '../harness/kube.js';
import { createNode } from '../harness/kube-nodes.js';
import { metricSum } from '../harness/metrics.js';
import type { ManagedProcess } from '../harness/process.js';
import type { RedisHandle } from '../harness/redis.js';
import type { RegistryHandle } from '../harness/registry.js';
import { Cleanup, freePort, makeTempDir } from '../harness/tmp.js';
import {
  condition,
  eventually,
  leaseHolder,
  prewarmApi,
  redisConnection,
  spawnOperator,
  startCluster,
} from './env.js';
import { SimAgent } from './sim-agent.js';

const LEASE = 'ha-test';
const LEASE_MS = 3_000;

describe('leader election between two replicas', () => {
  const cleanup = new Cleanup();
  let kube: KubeHandle;
  let redis: RedisHandle;
  let registry: RegistryHandle;
  const agents: SimAgent[] = [];
  const procs: ManagedProcess[] = [];

  before(async () => {
    ({ registry, redis, kube } = await startCluster(cleanup));
  });
  after(async () => {
    for (const p of procs) await p.kill();
    for (const a of agents) await a.close();
    await cleanup.run();
  });

  test('only the leader acts; killing it hands over after the lease expires', async (t) => {
    const dir = await makeTempDir('op-ha', cleanup);
    for (const node of ['h1', 'h2']) {
      await createNode(kube.kc, { name: node, labels: { pool: 'h' } });
      agents.push(
        new SimAgent({ node, connection: () => redisConnection(redis.url), storeDir: join(dir, node) }),
      );
    }
    await pushImage(registry, { repository: 'ha', tag: 'v1', layers: [{ files: { f: 'one' } }] });
    const env = {
      KUBE_PREWARM_LEASE_NAME: LEASE,
      KUBE_PREWARM_LEASE_DURATION_MS: String(LEASE_MS),
      KUBE_PREWARM_RENEW_DEADLINE_MS: '2000',
      KUBE_PREWARM_RETRY_PERIOD_MS: '500',
    };
    const ports: Record<string, number> = { 'op-a': await freePort(), 'op-b': await freePort() };
    for (const id of ['op-a', 'op-b']) {
      procs.push(
        await spawnOperator(id, kube.kubeconfigPath, redis.url, dir, {
          ...env,
          KUBE_PREWARM_IDENTITY: id,
          KUBE_PREWARM_HTTP_PORT: String(ports[id]),
        }),
      );
    }
    const leader = await eventually(
      'a leader',
      async () => (await leaseHolder(kube.kc, LEASE)).holder || undefined,
    );
    const standby = leader === 'op-a' ? 'op-b' : 'op-a';
    // Both replicas serve: caches synced, ready for webhooks.
    for (const id of ['op-a', 'op-b']) {
      await eventually(
        `${id} ready`,
        async () => (await fetch(`http://127.0.0.1:${ports[id]}/readyz`)).status === 200,
      );
    }

    const api = prewarmApi(kube.kc);
    await api.create('ha', {
      images: [{ repository: `${registry.host}/ha`, tag: 'v1' }],
      nodeSelector: { pool: 'h' },
    });
    await eventually('ha Ready', async () => condition(await api.get('ha'), 'Ready')?.status === 'True');

    assert.equal(await metricSum(ports[leader]!, 'kprw_leader'), 1);
    assert.equal(await metricSum(ports[standby]!, 'kprw_leader'), 0);
    assert.ok((await metricSum(ports[leader]!, 'kprw_reconciles_total')) > 0, 'the leader reconciles');
    assert.equal(await metricSum(ports[standby]!, 'kprw_reconciles_total'), 0, 'the standby does not');
    assert.equal(await metricSum(ports[standby]!, 'kprw_jobs_enqueued_total'), 0);

    const leaderProc = procs.find((p) => p.name === leader)!;
    await leaderProc.kill();
    const killedAt = Date.now();
    const { lease: lastLease } = await leaseHolder(kube.kc, LEASE);
    const lastRenew = new Date((lastLease as V1Lease).spec!.renewTime!).getTime();

    const { lease } = await eventually('the standby takes over', async () => {
      const got = await leaseHolder(kube.kc, LEASE);
      return got.holder === standby ? got : undefined;
    });
    const took = Date.now() - killedAt;
    const acquired = new Date((lease as V1Lease).spec!.acquireTime!).getTime();
    t.diagnostic(`standby took over ${took} ms after the kill (lease ${LEASE_MS} ms, renew every 500 ms)`);
    // Safety: the standby waited for a full lease duration after the last renewal it saw.
    assert.ok(acquired >= lastRenew + LEASE_MS, `acquired ${acquired - lastRenew} ms after the last renewal`);
    assert.equal((lease as V1Lease).spec?.leaseTransitions, 1);

    // The new leader acts: a new resource is reconciled to Ready.
    await api.create('ha2', {
      images: [{ repository: `${registry.host}/ha`, tag: 'v1' }],
      nodeSelector: { pool: 'h' },
    });
    await eventually(
      'ha2 Ready under the new leader',
      async () => condition(await api.get('ha2'), 'Ready')?.status === 'True',
    );
    assert.equal(await metricSum(ports[standby]!, 'kprw_leader'), 1);
    assert.ok((await metricSum(ports[standby]!, 'kprw_reconciles_total')) > 0);
  });

  test('a graceful stop releases the lease at once', async () => {
    const holder = (await leaseHolder(kube.kc, LEASE)).holder;
    const proc = procs.find((p) => p.name === holder && p.running)!;
    const status = await proc.stop(10_000);
    assert.equal(status.code, 0, 'SIGTERM exits 0');
    const { holder: after, lease } = await leaseHolder(kube.kc, LEASE);
    assert.equal(after, '');
    assert.equal((lease as V1Lease).spec?.leaseDurationSeconds, 1);
  });
});
