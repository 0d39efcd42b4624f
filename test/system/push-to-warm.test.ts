/**
 * The whole system with nothing simulated, in the chart's topology: Debian's
 * docker-registry sends its push notification to the webhook receiver process
 * (operator/src/webhooks-main.ts, no Kubernetes credentials), which appends it to the Redis
 * push stream; the operator process (operator/src/main.ts, no webhooks of its own) consumes
 * it, re-resolves the tag against the registry and enqueues per-node jobs, and the real node
 * agents (AgentDaemon: fetcher, store, mirror, disk budget) warm the image; the
 * ImagePrewarm status on the real kube-apiserver shows the new digest warm, and a node
 * whose agent cannot hold the image is listed with the agent's failure reason.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { prewarmJobId } from '../../oci/src/job-contract.js';
import { startAgent, startTestRedis } from '../agent/daemon-fixtures.js';
import { pushImage } from '../harness/images.js';
import { type KubeHandle, startKube } from '../harness/kube.js';
import { createNode } from '../harness/kube-nodes.js';
import type { ManagedProcess } from '../harness/process.js';
import { type RegistryHandle, startRegistry } from '../harness/registry.js';
import { Cleanup, freePort, makeTempDir } from '../harness/tmp.js';
import {
  asDigest,
  condition,
  eventually,
  prewarmApi,
  QueueReader,
  redisConnection,
  spawnOperator,
} from '../operator/env.js';
import { startReceiver } from '../operator/webhooks/receiver-process.js';

const MiB = 1024 * 1024;

describe('push → webhook → operator → real agents → status', () => {
  const cleanup = new Cleanup();
  let kube: KubeHandle;
  let registry: RegistryHandle;
  let operator: ManagedProcess | undefined;
  let port = 0;
  let reader: QueueReader;
  let redisUrl = '';
  const api = () => prewarmApi(kube.kc);

  before(async () => {
    const { redis } = await startTestRedis(cleanup);
    redisUrl = redis.url;
    kube = await startKube();
    cleanup.defer(() => kube.stop());
    const dir = await makeTempDir('system', cleanup);
    port = await freePort();
    operator = await spawnOperator('operator', kube.kubeconfigPath, redisUrl, dir, {
      KUBE_PREWARM_LEASE_NAME: 'system-test',
      KUBE_PREWARM_HTTP_PORT: String(port),
    });
    cleanup.defer(async () => {
      await operator?.stop();
    });
    await eventually(
      'operator ready',
      async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200,
    );
    const secret = randomBytes(24).toString('hex');
    const receiver = await startReceiver({
      dir,
      redisUrl,
      options: { sources: { distribution: { secrets: [secret] } } },
    });
    cleanup.defer(() => receiver.stop());
    registry = await startRegistry({
      notifications: { url: receiver.url('distribution'), headers: { Authorization: `Bearer ${secret}` } },
    });
    cleanup.defer(() => registry.close());
    // Two nodes whose agents have room, one whose agent's disk budget is too small for the image.
    for (const [node, budget] of [
      ['sys-a', '256MiB'],
      ['sys-b', '256MiB'],
      ['sys-small', '4MiB'],
    ] as const) {
      await createNode(kube.kc, { name: node, labels: { pool: 'sys' } });
      await startAgent(cleanup, { node, redisUrl, extra: { KUBE_PREWARM_DISK_BUDGET: budget } });
    }
    const conn = redisConnection(redisUrl);
    cleanup.defer(() => conn.disconnect());
    reader = new QueueReader(conn);
    cleanup.defer(() => reader.close());
  });
  after(() => cleanup.run());

  let first = '';

  test('an ImagePrewarm is warmed by the real agents; the node that cannot hold it says why', async (t) => {
    const img = await pushImage(registry, {
      repository: 'sys/app',
      tag: 'stable',
      layers: [{ randomBytes: 8 * MiB }],
    });
    first = img.digest;
    await api().create('sys-app', {
      images: [{ repository: `${registry.host}/sys/app`, tag: 'stable' }],
      nodeSelector: { pool: 'sys' },
    });
    const p = await eventually(
      'two nodes warm, one failing',
      async () => {
        const got = await api().get('sys-app');
        const s = got?.status?.images?.[0];
        return s?.digest === first && s.warmNodes === 2 && (s.failingNodes?.length ?? 0) === 1
          ? got
          : undefined;
      },
      90_000,
    );
    const s = p.status!.images![0]!;
    assert.equal(s.targetNodes, 3);
    assert.equal(s.failingNodes![0]!.node, 'sys-small');
    assert.deepEqual(s.nodePhases, { warm: 2, failed: 1 }, 'per-node phases as the agents reported them');
    assert.match(`${s.failingNodes![0]!.reason} ${s.failingNodes![0]!.message}`, /DISK_FULL|budget/i);
    assert.equal(condition(p, 'Ready')?.status, 'False');
    assert.equal(condition(p, 'Degraded')?.status, 'True');
    t.diagnostic(`failing node: ${JSON.stringify(s.failingNodes![0])}`);
  });

  test('a push under the watched tag reaches the nodes and is warmed there', async (t) => {
    const pushedAt = Date.now();
    const img = await pushImage(registry, {
      repository: 'sys/app',
      tag: 'stable',
      layers: [{ randomBytes: 6 * MiB }],
    });
    const pushDone = Date.now();
    const ids = ['sys-a', 'sys-b'].map((n) => [n, prewarmJobId(asDigest(img.digest), n, 'cache')] as const);
    await eventually('jobs for the new digest on both nodes', async () => {
      for (const [n, id] of ids) if (!(await reader.job(n, id))) return false;
      return true;
    });
    // Reported, not asserted: timing does not belong in assertions.
    t.diagnostic(
      `push finished → jobs on both nodes: ${Date.now() - pushDone} ms (push itself took ${pushDone - pushedAt} ms)`,
    );
    const p = await eventually(
      'new digest warm on both nodes',
      async () => {
        const got = await api().get('sys-app');
        const s = got?.status?.images?.[0];
        return s?.digest === img.digest && s.warmNodes === 2 ? got : undefined;
      },
      90_000,
    );
    const s = p.status!.images![0]!;
    assert.deepEqual(
      s.previousDigests?.map((d) => d.digest),
      [first],
    );
    assert.equal(s.lastTrigger?.source, 'distribution');
    for (const [n, id] of ids) {
      const job = await reader.job(n, id);
      assert.equal(job?.state, 'completed', n);
      assert.equal(job?.data.trigger, 'push:distribution');
    }
  });

  test('a push under a tag nobody watches enqueues nothing', async () => {
    const before = new Map<string, number>();
    for (const n of ['sys-a', 'sys-b', 'sys-small']) before.set(n, (await reader.jobs(n)).length);
    // The receiver cannot know what is watched (it sees no ImagePrewarms); the leader counts it.
    const metric = async () => {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      return Number(/kprw_push_events_total\{result="unmatched"\} (\d+)/.exec(text)?.[1] ?? 0);
    };
    const unwatchedBefore = await metric();
    await pushImage(registry, { repository: 'sys/app', tag: 'canary', layers: [{ files: { c: 'canary' } }] });
    await pushImage(registry, {
      repository: 'sys/other',
      tag: 'stable',
      layers: [{ files: { o: 'other' } }],
    });
    await eventually(
      'both pushes seen and counted as unwatched',
      async () => (await metric()) >= unwatchedBefore + 2,
    );
    for (const n of ['sys-a', 'sys-b', 'sys-small'])
      assert.equal((await reader.jobs(n)).length, before.get(n), n);
  });
});
