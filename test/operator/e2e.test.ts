/**
 * The operator end to end on real components: kube-apiserver + etcd, Redis, a registry
 * (images pushed with skopeo), and simulated agents that fetch the real blobs through
 * the per-node BullMQ queues. One cluster for the whole file; tests run in order and
 * build on each other (a rollout, then a push, then a new node, ...).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CoreV1Api } from '@kubernetes/client-node';
import type { Redis } from 'ioredis';
import { StaticCredentials } from '../../oci/src/auth.js';
import { digestHex } from '../../oci/src/digest.js';
import { prewarmJobId } from '../../oci/src/job-contract.js';
import { REFRESH_ANNOTATION, STARTUP_TAINT_EFFECT, STARTUP_TAINT_KEY } from '../../operator/src/api/types.js';
import { pushImage } from '../harness/images.js';
import type { KubeHandle } from '../harness/kube.js';
import { createNode, deleteNode, patchNode, readNode } from '../harness/kube-nodes.js';
import type { RedisHandle } from '../harness/redis.js';
import { type RegistryHandle, startRegistry } from '../harness/registry.js';
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
import { SimAgent, type SimAgentOptions } from './sim-agent.js';

const gate = { key: STARTUP_TAINT_KEY, effect: STARTUP_TAINT_EFFECT };

describe('operator end to end (apiserver + redis + registry + simulated agents)', () => {
  const cleanup = new Cleanup();
  let kube: KubeHandle;
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let op: InProcessOperator;
  let reader: QueueReader;
  let readerConn: Redis;
  let storeRoot: string;
  const agents = new Map<string, SimAgent>();
  let api: ReturnType<typeof prewarmApi>;
  let uniq = 0;

  const push = (repository: string, tag: string, platforms?: { os: string; architecture: string }[]) =>
    pushImage(registry, {
      repository,
      tag,
      layers: [{ files: { 'hello.txt': `content ${repository}:${tag} #${++uniq}` } }],
      ...(platforms ? { platforms } : {}),
    });

  const startAgent = (node: string, extra: Partial<SimAgentOptions> = {}): SimAgent => {
    const a = new SimAgent({
      node,
      connection: () => redisConnection(redis.url),
      storeDir: join(storeRoot, node),
      ...extra,
    });
    agents.set(node, a);
    return a;
  };
  const stopAgent = async (node: string): Promise<void> => {
    await agents.get(node)?.close();
    agents.delete(node);
  };

  before(async () => {
    ({ registry, redis, kube } = await startCluster(cleanup));
    storeRoot = await makeTempDir('op-e2e-stores', cleanup);
    readerConn = redisConnection(redis.url);
    reader = new QueueReader(readerConn);
    api = prewarmApi(kube.kc);
    for (const [name, pool] of [
      ['n1', 'a'],
      ['n2', 'a'],
      ['n3', 'a'],
      ['n4', 'b'],
      ['n5', 'b'],
    ] as const) {
      await createNode(kube.kc, { name, labels: { pool } });
      startAgent(name);
    }
    op = await startOperator(kube.kc, redis.url);
  });

  after(async () => {
    await op?.close();
    for (const node of [...agents.keys()]) await stopAgent(node);
    await reader?.close();
    readerConn?.disconnect();
    await cleanup.run();
  });

  let d1 = '';
  let d2 = '';
  let d3 = '';

  test('selects 3 of 5 nodes, enqueues 3 jobs, status reaches Ready 3/3', async () => {
    const pushed = await push('app', 'v1');
    d1 = pushed.digest;
    await api.create('web', {
      images: [{ repository: `${registry.host}/app`, tag: 'v1' }],
      nodeSelector: { pool: 'a' },
    });
    const p = await eventually('web Ready', async () => {
      const got = await api.get('web');
      return condition(got, 'Ready')?.status === 'True' ? got : undefined;
    });
    assert.equal(p.status?.warm, '3/3');
    assert.equal(p.status?.observedGeneration, p.metadata.generation);
    const img = p.status?.images?.[0];
    assert.equal(img?.digest, d1);
    assert.equal(img?.warmNodes, 3);
    assert.equal(img?.targetNodes, 3);
    const m = pushed.manifests[0]!;
    assert.equal(img?.bytes, m.config.size + m.layers.reduce((n, l) => n + l.size, 0));
    assert.equal(condition(p, 'Degraded')?.status, 'False');
    assert.equal(condition(p, 'Progressing')?.status, 'False');
    for (const node of ['n1', 'n2', 'n3']) {
      const jobs = await reader.jobs(node);
      assert.deepEqual(
        jobs.map((j) => [j.id, j.state]),
        [[prewarmJobId(asDigest(d1), node, 'cache'), 'completed']],
        node,
      );
      assert.equal(jobs[0]!.data.platform, 'linux/amd64');
      assert.deepEqual(jobs[0]!.data.owners, [{ namespace: 'default', name: 'web', uid: p.metadata.uid }]);
      // The simulated agent really fetched the layer from the registry.
      assert.ok(existsSync(join(storeRoot, node, 'blobs/sha256', digestHex(asDigest(m.layers[0]!.digest)))));
    }
    for (const node of ['n4', 'n5']) assert.deepEqual(await reader.jobs(node), [], node);
    assert.ok((p.metadata.finalizers ?? []).includes('prewarm.kube-prewarm.io/cleanup'));
  });

  test('a push under the same tag rolls out the new digest and retains the old one', async () => {
    d2 = (await push('app', 'v1')).digest;
    assert.notEqual(d2, d1);
    const result = await op.operator.onPush({
      registry: registry.host,
      repository: 'app',
      tag: 'v1',
      digest: asDigest(d2),
      source: 'distribution',
      eventId: `e-${d2}`,
      timestamp: new Date().toISOString(),
      receivedAt: new Date().toISOString(),
    });
    assert.deepEqual(result, { matched: 1 });
    const p = await eventually('web on d2', async () => {
      const got = await api.get('web');
      const img = got?.status?.images?.[0];
      return img?.digest === d2 && img.warmNodes === 3 && condition(got, 'Ready')?.status === 'True'
        ? got
        : undefined;
    });
    const img = p.status!.images![0]!;
    assert.equal(img.lastTrigger?.type, 'push');
    assert.equal(img.lastTrigger?.source, 'distribution');
    assert.deepEqual(
      img.previousDigests?.map((d) => d.digest),
      [d1],
    );
    for (const node of ['n1', 'n2', 'n3']) {
      const old = await reader.job(node, prewarmJobId(asDigest(d1), node, 'cache'));
      assert.equal(old?.state, 'completed', `${node} keeps the old digest pinned`);
      assert.equal(old?.data.owners.length, 1);
      const cur = await reader.job(node, prewarmJobId(asDigest(d2), node, 'cache'));
      assert.equal(cur?.state, 'completed');
      assert.equal(cur?.data.trigger, 'push:distribution');
    }
  });

  test('an explicit refresh re-resolves; retain drops the oldest digest and unpins it everywhere', async () => {
    d3 = (await push('app', 'v1')).digest;
    await api.patch('web', { metadata: { annotations: { [REFRESH_ANNOTATION]: 'r1' } } });
    const p = await eventually('web on d3', async () => {
      const got = await api.get('web');
      const img = got?.status?.images?.[0];
      return img?.digest === d3 && img.warmNodes === 3 ? got : undefined;
    });
    const img = p.status!.images![0]!;
    assert.equal(img.lastTrigger?.type, 'refresh');
    assert.equal(p.status?.lastRefresh, 'r1');
    assert.deepEqual(
      img.previousDigests?.map((d) => d.digest),
      [d2],
    );
    for (const node of ['n1', 'n2', 'n3']) {
      assert.equal(
        await reader.job(node, prewarmJobId(asDigest(d1), node, 'cache')),
        undefined,
        `${node}: d1 unpinned`,
      );
      assert.equal((await reader.job(node, prewarmJobId(asDigest(d2), node, 'cache')))?.state, 'completed');
      assert.equal((await reader.job(node, prewarmJobId(asDigest(d3), node, 'cache')))?.state, 'completed');
    }
  });

  test('a new matching node gets the image (onNodeJoin)', async () => {
    // creationTimestamp has whole seconds: create the node in a later second than the
    // resolution so it is unambiguously a join.
    const resolvedAt = Date.parse((await api.get('web'))?.status?.images?.[0]?.resolvedAt ?? '');
    await eventually('a second after the resolution', () => Date.now() >= resolvedAt + 1000);
    startAgent('n6');
    await createNode(kube.kc, { name: 'n6', labels: { pool: 'a' } });
    const p = await eventually('web 4/4', async () => {
      const got = await api.get('web');
      return got?.status?.warm === '4/4' && condition(got, 'Ready')?.status === 'True' ? got : undefined;
    });
    assert.equal(p.status?.targetNodes, 4);
    const job = await reader.job('n6', prewarmJobId(asDigest(d3), 'n6', 'cache'));
    assert.equal(job?.state, 'completed');
    assert.equal(job?.data.trigger, 'node-join');
    // Only the current digest goes to a new node; retained ones stay where they are.
    assert.equal(await reader.job('n6', prewarmJobId(asDigest(d2), 'n6', 'cache')), undefined);
  });

  test('cordoned and not-ready nodes are not targeted, and lose their pins', async () => {
    await patchNode(kube.kc, 'n6', { spec: { unschedulable: true } });
    await eventually('web back to 3/3', async () => (await api.get('web'))?.status?.warm === '3/3');
    await eventually('n6 unpinned', async () => (await reader.jobs('n6')).length === 0);
    await patchNode(kube.kc, 'n6', { spec: { unschedulable: false } });
    await eventually('web 4/4 again', async () => (await api.get('web'))?.status?.warm === '4/4');
  });

  test('a deleted node leaves nothing behind in Redis', async () => {
    const keys = () => readerConn.keys('kprw:node.n6:*');
    assert.ok((await keys()).length > 0, 'n6 has a queue');
    await stopAgent('n6');
    await deleteNode(kube.kc, 'n6');
    await eventually('n6 queue dropped', async () => (await keys()).length === 0);
    await eventually('web back to 3/3', async () => (await api.get('web'))?.status?.warm === '3/3');
  });

  test('pending jobs follow spec changes; deleting the ImagePrewarm removes them and releases the finalizer', async () => {
    // No agents on pool b: jobs stay pending.
    await stopAgent('n4');
    await stopAgent('n5');
    await api.create('batch', {
      images: [{ repository: `${registry.host}/app`, tag: 'v1' }],
      nodeSelector: { pool: 'b' },
    });
    const id4 = prewarmJobId(asDigest(d3), 'n4', 'cache');
    const id5 = prewarmJobId(asDigest(d3), 'n5', 'cache');
    await eventually('batch jobs pending', async () => {
      const [a, b] = [await reader.job('n4', id4), await reader.job('n5', id5)];
      return a?.state === 'waiting' && b?.state === 'waiting';
    });
    const p = await api.get('batch');
    assert.equal(condition(p, 'Ready')?.status, 'False');
    // A spec change reaches the jobs still waiting for an agent.
    await api.patch('batch', {
      spec: { rollout: { maxBandwidthPerNode: '20Mi' }, startup: { paths: ['/bin/app'] } },
    });
    await eventually('pending jobs follow the spec', async () => {
      const job = await reader.job('n4', id4);
      return job?.data.bandwidthBytesPerSec === 20 * 1024 * 1024 && job.data.startupPaths?.[0] === '/bin/app';
    });
    assert.equal((await reader.job('n4', id4))?.state, 'waiting');
    await api.remove('batch');
    await eventually('batch gone', async () => (await api.get('batch')) === undefined);
    assert.equal(await reader.job('n4', id4), undefined);
    assert.equal(await reader.job('n5', id5), undefined);
    // web's jobs are untouched.
    assert.equal((await reader.job('n1', prewarmJobId(asDigest(d3), 'n1', 'cache')))?.state, 'completed');
  });

  test('a job shared by two ImagePrewarms keeps its pin until both are gone', async () => {
    await api.create('web2', {
      images: [{ repository: `${registry.host}/app`, tag: 'v1' }],
      nodeSelector: { pool: 'a' },
    });
    const id = prewarmJobId(asDigest(d3), 'n1', 'cache');
    await eventually('web2 Ready and owner added', async () => {
      const got = await api.get('web2');
      const job = await reader.job('n1', id);
      return condition(got, 'Ready')?.status === 'True' && job?.data.owners.length === 2;
    });
    await api.remove('web2');
    await eventually('web2 gone', async () => (await api.get('web2')) === undefined);
    const job = await reader.job('n1', id);
    assert.equal(job?.state, 'completed');
    assert.deepEqual(
      job?.data.owners.map((o) => o.name),
      ['web'],
    );
  });

  test('an invalid cron schedule is reported as a condition', async () => {
    await api.create('badcron', {
      images: [{ repository: `${registry.host}/app`, tag: 'v1' }],
      nodeSelector: { pool: 'none' },
      triggers: { schedule: '61 * * * *' },
    });
    const p = await eventually('badcron Degraded', async () => {
      const got = await api.get('badcron');
      return condition(got, 'Degraded')?.reason === 'InvalidSchedule' ? got : undefined;
    });
    assert.equal(condition(p, 'Degraded')?.status, 'True');
    assert.match(condition(p, 'Degraded')?.message ?? '', /61 \* \* \* \*/);
    await api.remove('badcron');
  });

  test('a cron schedule re-resolves a tag without webhooks', async () => {
    const first = (await push('sched', 'latest')).digest;
    await api.create('cron', {
      images: [{ repository: `${registry.host}/sched`, tag: 'latest' }],
      nodeSelector: { pool: 'a' },
      triggers: { onPush: false, schedule: '* * * * * *' },
    });
    await eventually(
      'cron on first',
      async () => (await api.get('cron'))?.status?.images?.[0]?.digest === first,
    );
    const second = (await push('sched', 'latest')).digest;
    const p = await eventually('cron on second', async () => {
      const got = await api.get('cron');
      const img = got?.status?.images?.[0];
      return img?.digest === second &&
        img.warmNodes === img.targetNodes &&
        condition(got, 'Ready')?.status === 'True'
        ? got
        : undefined;
    });
    assert.equal(p.status?.images?.[0]?.lastTrigger?.type, 'schedule');
    assert.ok(p.status?.lastScheduleTime);
    await api.remove('cron');
  });

  test('a gated node keeps the startup taint until its agent reports warm', async () => {
    const image = await push('gated', 'v1');
    let release: () => void = () => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    let holding = false;
    startAgent('g1', {
      onStart: async () => {
        holding = true;
        await held;
      },
    });
    // The ImagePrewarm exists before the node joins (a node no gating resource targets is
    // released at once, see the test below).
    await api.create('gate', {
      images: [{ repository: `${registry.host}/gated`, tag: 'v1' }],
      nodeSelector: { pool: 'g' },
      startup: { gateNodes: true },
    });
    await eventually(
      'gate resolved',
      async () => (await api.get('gate'))?.status?.images?.[0]?.digest === image.digest,
    );
    await createNode(kube.kc, { name: 'g1', labels: { pool: 'g' }, taints: [gate] });
    try {
      await eventually('g1 job active', () => holding);
      // The agent holds the job: status shows it in flight and the taint is still there.
      await eventually('status shows the rollout in progress', async () => {
        const got = await api.get('gate');
        return condition(got, 'Progressing')?.status === 'True' && got?.status?.warm === '0/1';
      });
      assert.ok((await readNode(kube.kc, 'g1')).spec?.taints?.some((t) => t.key === STARTUP_TAINT_KEY));
    } finally {
      // Never leave the agent holding the job (its worker could not close).
      release();
    }
    await eventually('taint removed', async () => {
      const n = await readNode(kube.kc, 'g1');
      return !(n.spec?.taints ?? []).some((t) => t.key === STARTUP_TAINT_KEY);
    });
    const job = await reader.job('g1', prewarmJobId(asDigest(image.digest), 'g1', 'cache'));
    assert.equal(job?.state, 'completed', 'the taint went only after the job completed');
  });

  test('a gated node whose agent fails keeps the taint and the status says why', async () => {
    startAgent('g2', { failWith: () => 'PW_ERR_DISK_FULL' });
    await createNode(kube.kc, { name: 'g2', labels: { pool: 'g' }, taints: [gate] });
    const p = await eventually('g2 failing', async () => {
      const got = await api.get('gate');
      const failing = got?.status?.images?.[0]?.failingNodes ?? [];
      return failing.some((f) => f.node === 'g2') ? got : undefined;
    });
    const f = p.status!.images![0]!.failingNodes!.find((x) => x.node === 'g2')!;
    assert.equal(f.reason, 'PW_ERR_DISK_FULL');
    assert.match(f.message, /injected failure on g2/);
    assert.equal(condition(p, 'Degraded')?.reason, 'NodesFailing');
    assert.equal(condition(p, 'Ready')?.status, 'False');
    assert.equal(p.status?.warm, '1/2');
    // Give the operator further reconciles (a push re-resolves the unchanged tag): the taint must stay.
    const before = await op.metrics.getSingleMetricAsString('kprw_resolves_total');
    await op.operator.onPush({
      registry: registry.host,
      repository: 'gated',
      tag: 'v1',
      source: 'distribution',
      eventId: 'again',
      timestamp: new Date().toISOString(),
      receivedAt: new Date().toISOString(),
    });
    await eventually(
      'another reconcile',
      async () => (await op.metrics.getSingleMetricAsString('kprw_resolves_total')) !== before,
    );
    assert.ok((await readNode(kube.kc, 'g2')).spec?.taints?.some((t) => t.key === STARTUP_TAINT_KEY));
  });

  test('a gated node no gating ImagePrewarm selects is released at once', async () => {
    await createNode(kube.kc, { name: 'g3', labels: { pool: 'nobody' }, taints: [gate] });
    await eventually('g3 released', async () => {
      const n = await readNode(kube.kc, 'g3');
      return !(n.spec?.taints ?? []).some((t) => t.key === STARTUP_TAINT_KEY);
    });
  });

  test('multi-arch: each node gets its platform, a missing platform is reported per node', async () => {
    const image = await push('multi', 'v1', [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64' },
    ]);
    assert.ok(image.isIndex);
    startAgent('m-amd');
    startAgent('m-arm');
    startAgent('m-s390');
    await createNode(kube.kc, { name: 'm-amd', labels: { pool: 'm' } });
    await createNode(kube.kc, { name: 'm-arm', labels: { pool: 'm' }, architecture: 'arm64' });
    await createNode(kube.kc, { name: 'm-s390', labels: { pool: 'm' }, architecture: 's390x' });
    await api.create('multi', {
      images: [{ repository: `${registry.host}/multi`, tag: 'v1' }],
      nodeSelector: { pool: 'm' },
    });
    const p = await eventually('multi settled', async () => {
      const got = await api.get('multi');
      const img = got?.status?.images?.[0];
      return img?.warmNodes === 2 && (img.failingNodes ?? []).length === 1 ? got : undefined;
    });
    const img = p.status!.images![0]!;
    assert.deepEqual(img.platforms?.sort(), ['linux/amd64', 'linux/arm64']);
    assert.equal(img.failingNodes?.[0]?.node, 'm-s390');
    assert.equal(img.failingNodes?.[0]?.reason, 'PlatformNotFound');
    assert.equal(
      await reader.job('m-s390', prewarmJobId(asDigest(image.digest), 'm-s390', 'cache')),
      undefined,
    );
    for (const [node, arch] of [
      ['m-amd', 'amd64'],
      ['m-arm', 'arm64'],
    ] as const) {
      const jobs = await reader.jobs(node);
      assert.equal(jobs.length, 1);
      assert.equal(jobs[0]!.data.platform, `linux/${arch}`);
      const want = image.manifests.find((m) => m.platform.architecture === arch)!.digest;
      assert.equal((jobs[0]!.returnvalue as { manifestDigest: string }).manifestDigest, want);
    }
  });

  test('rollout.maxParallelNodes bounds how many nodes fetch at once', async () => {
    await push('throttled', 'v1');
    let active = 0;
    let maxActive = 0;
    const nodes = ['t1', 't2', 't3', 't4'];
    for (const node of nodes) {
      // onEnd runs before BullMQ marks the job completed, and the operator only starts the
      // next node after it has seen that: the count cannot lag behind the real overlap.
      startAgent(node, {
        blobDelayMs: 50,
        onStart: () => {
          active++;
          maxActive = Math.max(maxActive, active);
        },
        onEnd: () => {
          active--;
        },
      });
      await createNode(kube.kc, { name: node, labels: { pool: 't' } });
    }
    await api.create('throttle', {
      images: [{ repository: `${registry.host}/throttled`, tag: 'v1' }],
      nodeSelector: { pool: 't' },
      rollout: { maxParallelNodes: 1 },
    });
    await eventually('throttle 4/4', async () => (await api.get('throttle'))?.status?.warm === '4/4');
    assert.equal(maxActive, 1);
  });

  test('pull secrets: the operator resolves with them and hands them to the agents', async () => {
    const creds = { username: 'puller', password: 'a-long-enough-password' };
    const secured = await startRegistry({ auth: { htpasswd: creds } });
    cleanup.defer(() => secured.close());
    const image = await pushImage(secured, {
      repository: 'private',
      tag: 'v1',
      layers: [{ files: { s: 'secret' } }],
    });
    const dockerconfig = {
      auths: {
        [secured.host]: { auth: Buffer.from(`${creds.username}:${creds.password}`).toString('base64') },
      },
    };
    await kube.kc.makeApiClient(CoreV1Api).createNamespacedSecret({
      namespace: 'default',
      body: {
        metadata: { name: 'regcred' },
        type: 'kubernetes.io/dockerconfigjson',
        data: { '.dockerconfigjson': Buffer.from(JSON.stringify(dockerconfig)).toString('base64') },
      },
    });
    startAgent('s1', { credentials: new StaticCredentials().set(secured.host, creds) });
    await createNode(kube.kc, { name: 's1', labels: { pool: 's' } });
    await api.create('private', {
      images: [{ repository: `${secured.host}/private`, tag: 'v1' }],
      nodeSelector: { pool: 's' },
      pullSecrets: [{ name: 'regcred' }],
    });
    const p = await eventually('private Ready', async () => {
      const got = await api.get('private');
      return condition(got, 'Ready')?.status === 'True' ? got : undefined;
    });
    assert.equal(p.status?.images?.[0]?.digest, image.digest);
    const job = await reader.job('s1', prewarmJobId(asDigest(image.digest), 's1', 'cache'));
    assert.deepEqual(job?.data.pullSecrets, ['default/regcred']);

    // Without the secret the registry refuses the operator, and the status says so.
    await api.create('nosecret', {
      images: [{ repository: `${secured.host}/private`, tag: 'v1' }],
      nodeSelector: { pool: 's' },
      pullSecrets: [{ name: 'missing' }],
    });
    const bad = await eventually('nosecret Degraded', async () => {
      const got = await api.get('nosecret');
      return condition(got, 'Degraded')?.status === 'True' ? got : undefined;
    });
    assert.equal(condition(bad, 'Ready')?.reason, 'ResolveFailed');
    assert.match(condition(bad, 'Degraded')?.message ?? '', /PW_ERR_AUTH_DENIED/);
    assert.match(condition(bad, 'Degraded')?.message ?? '', /secret default\/missing not found/);
    await api.remove('nosecret');
  });

  test('metrics are served', async () => {
    const text = await op.metrics.metrics();
    for (const name of [
      'kprw_reconciles_total',
      'kprw_jobs_enqueued_total',
      'kprw_nodes_warm',
      'kprw_trigger_to_warm_seconds_bucket',
      'kprw_queue_depth',
      'kprw_leader 1',
    ]) {
      assert.ok(text.includes(name), name);
    }
    const warm = (await api.get('web'))?.status?.images?.[0]?.warmNodes;
    assert.equal(warm, 3);
    assert.match(
      text,
      new RegExp(`kprw_nodes_warm\\{namespace="default",prewarm="web",image="[^"]+app:v1"\\} ${warm}`),
    );
  });
});
