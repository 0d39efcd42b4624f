/**
 * The whole push path with nothing simulated but the agent, in the chart's topology: a
 * real registry sends its notification for a `skopeo` push to the webhook receiver process
 * (operator/src/webhooks-main.ts, no Kubernetes credentials), which appends the event to the
 * Redis push stream; the operator process (no webhooks of its own) consumes it as leader,
 * re-resolves the tag and rolls the new digest out.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { prewarmJobId } from '../../oci/src/job-contract.js';
import { pushImage } from '../harness/images.js';
import { type KubeHandle, startKube } from '../harness/kube.js';
import { createNode } from '../harness/kube-nodes.js';
import type { ManagedProcess } from '../harness/process.js';
import { type RedisHandle, startRedis } from '../harness/redis.js';
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
} from './env.js';
import { SimAgent } from './sim-agent.js';
import { type ReceiverProcess, startReceiver } from './webhooks/receiver-process.js';

describe('registry push → webhook → operator → new digest on the nodes', () => {
  const cleanup = new Cleanup();
  let kube: KubeHandle;
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let operator: ManagedProcess | undefined;
  let receiver: ReceiverProcess | undefined;
  const agents: SimAgent[] = [];

  before(async () => {
    redis = await startRedis();
    cleanup.defer(() => redis.close());
    kube = await startKube();
    cleanup.defer(() => kube.stop());
  });
  after(async () => {
    await receiver?.stop();
    await operator?.stop();
    for (const a of agents) await a.close();
    await cleanup.run();
  });

  test('a skopeo push is rolled out without anyone calling the operator', async () => {
    const dir = await makeTempDir('op-push', cleanup);
    const port = await freePort();
    operator = await spawnOperator('operator', kube.kubeconfigPath, redis.url, dir, {
      KUBE_PREWARM_LEASE_NAME: 'push-test',
      KUBE_PREWARM_HTTP_PORT: String(port),
    });
    const op = operator;
    await eventually(
      'operator ready',
      async () => op.running && (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200,
    );
    const secret = randomBytes(24).toString('hex');
    receiver = await startReceiver({
      dir,
      redisUrl: redis.url,
      options: { sources: { distribution: { secrets: [secret] } } },
    });
    registry = await startRegistry({
      notifications: { url: receiver.url('distribution'), headers: { Authorization: `Bearer ${secret}` } },
    });
    cleanup.defer(() => registry.close());

    for (const node of ['p1', 'p2']) {
      await createNode(kube.kc, { name: node, labels: { pool: 'p' } });
      agents.push(
        new SimAgent({ node, connection: () => redisConnection(redis.url), storeDir: join(dir, node) }),
      );
    }
    const first = await pushImage(registry, {
      repository: 'svc',
      tag: 'live',
      layers: [{ files: { v: '1' } }],
    });
    const api = prewarmApi(kube.kc);
    await api.create('svc', {
      images: [{ repository: `${registry.host}/svc`, tag: 'live' }],
      nodeSelector: { pool: 'p' },
    });
    await eventually('first digest warm', async () => {
      const got = await api.get('svc');
      return got?.status?.images?.[0]?.digest === first.digest && condition(got, 'Ready')?.status === 'True';
    });

    const second = await pushImage(registry, {
      repository: 'svc',
      tag: 'live',
      layers: [{ files: { v: '2' } }],
    });
    const p = await eventually(
      'second digest warm',
      async () => {
        const got = await api.get('svc');
        const img = got?.status?.images?.[0];
        return img?.digest === second.digest && img.warmNodes === 2 ? got : undefined;
      },
      90_000,
    );
    const img = p.status!.images![0]!;
    assert.deepEqual(img.lastTrigger && { type: img.lastTrigger.type, source: img.lastTrigger.source }, {
      type: 'push',
      source: 'distribution',
    });
    assert.deepEqual(
      img.previousDigests?.map((d) => d.digest),
      [first.digest],
    );
    const conn = redisConnection(redis.url);
    const reader = new QueueReader(conn);
    try {
      for (const node of ['p1', 'p2']) {
        const job = await reader.job(node, prewarmJobId(asDigest(second.digest), node, 'cache'));
        assert.equal(job?.state, 'completed');
        assert.equal(job?.data.trigger, 'push:distribution');
      }
    } finally {
      await reader.close();
      conn.disconnect();
    }
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(metrics, /kprw_push_events_total\{result="matched"\} [1-9]/);
    const received = await (await fetch(`http://127.0.0.1:${receiver.httpPort}/metrics`)).text();
    assert.match(received, /kprw_webhook_events_total\{source="distribution",outcome="dispatched"\} [1-9]/);
    assert.doesNotMatch(metrics, /kprw_webhook_deliveries_total\{/, 'the operator serves no webhooks');
  });
});
