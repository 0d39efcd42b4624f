/**
 * Pull secrets the way the chart runs them (issue 11), on real components: kube-apiserver
 * + etcd with the chart's own RBAC applied, an htpasswd registry, Redis, the operator in
 * this process and a real agent whose Kubernetes user has exactly the chart's agent role
 * (get Secrets in the pull-credentials namespace, nothing else).
 *
 * - An ImagePrewarm naming a dockerconfigjson Secret is warmed on the node: the operator
 *   copies just its registry's credentials into an immutable Secret with a random name in
 *   the pull-credentials namespace and the job carries only that name.
 * - Nothing of the credential reaches Redis (every key and value scanned), the logs of
 *   either side, the metrics of either side, or the ImagePrewarm (annotations, status).
 * - Forged jobs (what a compromised node that can write to Redis would enqueue) are refused
 *   with a clear, permanent reason: the tenant's Secret itself (the agent may not read it),
 *   the copy under another owner, the tenant Secret of another namespace.
 * - Deleting the ImagePrewarm removes its copy.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CoreV1Api, KubernetesObjectApi } from '@kubernetes/client-node';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import type { Digest } from '../../oci/src/digest.js';
import {
  nodeQueueName,
  PREWARM_JOB_NAME,
  type PrewarmJobData,
  prewarmJobId,
  QUEUE_PREFIX,
} from '../../oci/src/job-contract.js';
import { PULL_CREDENTIALS_LABEL } from '../../oci/src/kube-secret.js';
import { ClientNodePort } from '../../operator/src/kube/client-node-port.js';
import { Operator } from '../../operator/src/operator.js';
import { Resolver } from '../../operator/src/resolve/resolver.js';
import { Cleanup, makeTempDir, type PushedImage, pushImage, type RegistryHandle } from '../harness/index.js';
import { type KubeHandle, startKube } from '../harness/kube.js';
import { createNode } from '../harness/kube-nodes.js';
import { NAMESPACE, render } from '../helm/render.js';
import { condition, eventually, NS, prewarmApi, redisConnection } from '../operator/env.js';
import { startAgent, startTestRedis, waitForJobEnd } from './daemon-fixtures.js';
import { startTestRegistry } from './fixtures.js';

const NODE = 'node-pc';
const CRED_NS = `${NAMESPACE}-pull-credentials`;
const USER = { username: 'tenant-puller', password: 'Tenant-Pw-7c1e0f93-do-not-leak' };

/** Every key and value in Redis as text (strings, hashes, lists, sets, sorted sets, streams). */
async function dumpRedis(conn: Redis): Promise<string> {
  const parts: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await conn.scan(cursor, 'COUNT', 500);
    cursor = next;
    for (const key of keys) {
      parts.push(key);
      const type = await conn.type(key);
      if (type === 'string') parts.push((await conn.get(key)) ?? '');
      else if (type === 'hash') parts.push(JSON.stringify(await conn.hgetall(key)));
      else if (type === 'list') parts.push(JSON.stringify(await conn.lrange(key, 0, -1)));
      else if (type === 'set') parts.push(JSON.stringify(await conn.smembers(key)));
      else if (type === 'zset') parts.push(JSON.stringify(await conn.zrange(key, '0', '-1')));
      else if (type === 'stream') parts.push(JSON.stringify(await conn.xrange(key, '-', '+')));
      else parts.push(`<${type}>`);
    }
  } while (cursor !== '0');
  return parts.join('\n');
}

describe('pull secrets through per-ImagePrewarm credential copies (apiserver + chart RBAC + operator + agent)', () => {
  const cleanup = new Cleanup();
  let kube: KubeHandle;
  let registry: RegistryHandle;
  let conn: Redis;
  let redisUrl: string;
  let image: PushedImage;
  let operator: Operator;
  let operatorLog: string;
  let operatorMetrics: Registry;
  let agent: Awaited<ReturnType<typeof startAgent>>;
  let agentQueue: Queue;
  const api = () => prewarmApi(kube.kc);
  /** Every form the credential could leak in. */
  const forms = (): string[] => {
    const basic = Buffer.from(`${USER.username}:${USER.password}`).toString('base64');
    return [USER.password, basic, Buffer.from(USER.password).toString('base64')];
  };

  before(async () => {
    kube = await startKube();
    cleanup.defer(() => kube.stop());
    registry = await startTestRegistry(cleanup, { auth: { htpasswd: USER } });
    ({
      conn,
      redis: { url: redisUrl },
    } = await startTestRedis(cleanup));
    image = await pushImage(registry, {
      repository: 'tenant/private',
      tag: 'v1',
      layers: [{ files: { 'etc/app': 'private\n' } }, { randomBytes: 512 * 1024, seed: 11 }],
    });

    const core = kube.kc.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: NAMESPACE } } });
    await core.createNamespacedSecret({
      namespace: NS,
      body: {
        metadata: { name: 'regcred' },
        type: 'kubernetes.io/dockerconfigjson',
        stringData: {
          '.dockerconfigjson': JSON.stringify({
            auths: {
              [registry.host]: { auth: Buffer.from(`${USER.username}:${USER.password}`).toString('base64') },
              'unrelated.example.com': { auth: Buffer.from('other:other-pw-not-needed').toString('base64') },
            },
          }),
        },
      },
    });
    // The chart's objects for pull secrets, exactly as rendered: the Namespace, the agent's
    // Role and the operator's Role there, and their bindings. The harness's token user
    // "kube-prewarm-operator" stands in for the agent's ServiceAccount (no token controller
    // runs here): it gets the agent's bindings and nothing else.
    const objects = KubernetesObjectApi.makeApiClient(kube.kc);
    const rendered = await render({ agent: { rbac: { readPullSecrets: true } } });
    const chart = rendered.filter(
      (o) => o.kind === 'Namespace' || (/^Role(Binding)?$/.test(o.kind) && o.metadata.namespace === CRED_NS),
    );
    assert.deepEqual(chart.map((o) => o.kind).sort(), [
      'Namespace',
      'Role',
      'Role',
      'RoleBinding',
      'RoleBinding',
    ]);
    for (const o of chart) await objects.create(o);
    const agentBinding = chart.find((o) => o.kind === 'RoleBinding' && o.metadata.name.endsWith('-agent'))!;
    await objects.create({
      ...agentBinding,
      metadata: { ...agentBinding.metadata, name: 'agent-test-user' },
      subjects: [{ kind: 'User', apiGroup: 'rbac.authorization.k8s.io', name: kube.operatorUser.name }],
    });

    await createNode(kube.kc, { name: NODE });

    const dir = await makeTempDir('pull-credentials', cleanup);
    operatorLog = join(dir, 'operator.log');
    const log = pino({ level: 'debug' }, pino.destination({ dest: operatorLog, sync: true }));
    operatorMetrics = new Registry();
    const redis = redisConnection(redisUrl);
    cleanup.defer(() => redis.disconnect());
    const resolver = new Resolver({ allowedRegistries: ['127.0.0.1'] });
    cleanup.defer(() => resolver.close());
    operator = new Operator(
      { kube: new ClientNodePort(kube.kc, log), redis, resolver, log, metrics: operatorMetrics },
      {
        identity: 'pull-credentials-test',
        leaseNamespace: NS,
        leaseName: 'kube-prewarm-pull-credentials-test',
        leaseDurationMs: 4_000,
        renewDeadlineMs: 3_000,
        retryPeriodMs: 500,
        controller: { progressPollMs: 250, failedRetryAfterMs: 600_000, resolveRetryMs: 500 },
        jobQueue: { attempts: 1, backoffMs: 200 },
        http: { host: '127.0.0.1', port: 0 },
        pullCredentials: { namespace: CRED_NS },
      },
    );
    await operator.start();
    cleanup.defer(() => operator.close());

    agent = await startAgent(cleanup, {
      node: NODE,
      redisUrl,
      extra: {
        KUBE_PREWARM_READ_PULL_SECRETS: 'true',
        KUBE_PREWARM_PULL_CREDENTIALS_NAMESPACE: CRED_NS,
        KUBE_PREWARM_KUBECONFIG: await kube.writeKubeconfig(kube.operatorUser, 'agent.kubeconfig'),
      },
    });
    agentQueue = new Queue(nodeQueueName(NODE), { connection: conn, prefix: QUEUE_PREFIX });
    cleanup.defer(() => agentQueue.close());
  });
  after(() => cleanup.run());

  const jobId = () => prewarmJobId(image.digest as Digest, NODE, 'cache');
  const copies = async () =>
    (
      await kube.kc
        .makeApiClient(CoreV1Api)
        .listNamespacedSecret({ namespace: CRED_NS, labelSelector: PULL_CREDENTIALS_LABEL })
    ).items;

  it('warms a private image with the copy the operator made; the job names only that copy', async () => {
    await api().create('app', {
      images: [{ repository: `${registry.host}/tenant/private`, tag: 'v1' }],
      pullSecrets: [{ name: 'regcred' }],
    });
    let last: unknown;
    const warm = await eventually(
      'app warm on the node',
      async () => {
        const p = await api().get('app');
        last = p?.status;
        return condition(p, 'Ready')?.reason === 'AllNodesWarm' ? p : undefined;
      },
      120_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}; last status ${JSON.stringify(last)}`);
    });
    assert.equal(warm.status?.warm, '1/1');

    const [copy, ...more] = await copies();
    assert.ok(copy, 'a copy exists');
    assert.deepEqual(more, [], 'one copy per ImagePrewarm');
    assert.match(copy.metadata!.name!, /^kprw-pull-[0-9a-f]{32}$/);
    assert.equal(copy.immutable, true);
    assert.equal(copy.metadata?.labels?.[PULL_CREDENTIALS_LABEL], warm.metadata.uid);
    const held = JSON.parse(Buffer.from(copy.data!['.dockerconfigjson']!, 'base64').toString()) as {
      auths: Record<string, unknown>;
    };
    assert.deepEqual(Object.keys(held.auths), [registry.host], 'only the registry its images name');

    const job = await agentQueue.getJob(jobId());
    assert.ok(job, 'the operator made the job');
    assert.deepEqual((job.data as PrewarmJobData).pullSecrets, [`${CRED_NS}/${copy.metadata!.name}`]);
    for (const l of image.manifests[0]!.layers)
      assert.ok(await agent.daemon.store!.stat(l.digest as Digest), `layer ${l.digest} stored`);
  });

  it('no credential in Redis, in the logs, in the metrics, or in the ImagePrewarm', async () => {
    // The scan reads values, not just keys: a planted credential is found.
    await conn.hset('kprw:test:canary', 'v', JSON.stringify({ auth: forms()[1] }));
    assert.ok((await dumpRedis(conn)).includes(forms()[1]!), 'the scan finds a credential in a hash value');
    await conn.del('kprw:test:canary');
    const redisText = await dumpRedis(conn);
    const copyName = (await copies())[0]!.metadata!.name!;
    // The scan sees job data (the control: it finds the reference it should find).
    assert.ok(redisText.includes(copyName), 'the scan covers the job data');
    const agentLog = await readFile(join(agent.dir, 'agent.log'), 'utf8');
    const opLog = await readFile(operatorLog, 'utf8');
    assert.match(opLog, /pull credentials copied for the agents/, 'the operator log is the real one');
    assert.match(agentLog, /using pull secrets for this job/, 'the agent log is the real one');
    const agentMetrics = await (await fetch(`${agent.url}/metrics`)).text();
    assert.match(agentMetrics, /kprw_agent_jobs_total/);
    const opMetrics = await operatorMetrics.metrics();
    const cr = JSON.stringify(await api().get('app'));
    const places: Record<string, string> = {
      redis: redisText,
      'agent log': agentLog,
      'operator log': opLog,
      'agent metrics': agentMetrics,
      'operator metrics': opMetrics,
      'ImagePrewarm (annotations, status)': cr,
    };
    for (const [where, text] of Object.entries(places))
      for (const f of forms())
        assert.ok(!text.includes(f), `the credential (${f.slice(0, 4)}…) is in the ${where}`);
    assert.ok(!redisText.includes('other-pw-not-needed'));
  });

  const forge = async (id: string, over: Partial<PrewarmJobData>) => {
    const data: PrewarmJobData = {
      v: 1,
      owners: [{ namespace: NS, name: 'app', uid: 'uid-forged' }],
      repository: `${registry.host}/tenant/private`,
      digest: image.digest as Digest,
      platform: 'linux/amd64',
      node: NODE,
      mode: 'cache',
      triggeredAt: Date.now(),
      trigger: 'spec',
      ...over,
    };
    await agentQueue.add(PREWARM_JOB_NAME, data, { jobId: id, attempts: 3, removeOnFail: false });
    return waitForJobEnd(conn, NODE, id);
  };

  it('forged jobs are refused with a permanent, clear reason', async () => {
    const warm = (await api().get('app'))!;
    const copyRef = `${CRED_NS}/${(await copies())[0]!.metadata!.name}`;
    // 1. The tenant's Secret itself: the agent has no right to it (chart RBAC).
    const direct = await forge('forged-direct', {
      owners: [{ namespace: NS, name: 'app', uid: warm.metadata.uid }],
      pullSecrets: [`${NS}/regcred`],
    });
    assert.equal(direct.state, 'failed');
    assert.match(
      direct.failedReason ?? '',
      /^PW_ERR_AUTH_FAILED: pull secret default\/regcred: the agent may not read it \(HTTP 403/,
    );
    assert.equal(direct.attemptsMade, 1);
    // 2. The copy, under an owner it was not made for.
    const other = await forge('forged-owner', {
      owners: [{ namespace: 'team-b', name: 'thief', uid: 'uid-thief' }],
      pullSecrets: [copyRef],
    });
    assert.equal(other.state, 'failed');
    assert.equal(
      other.failedReason,
      `PW_ERR_AUTH_FAILED: pull secret ${copyRef}: refused: made for ImagePrewarm ${NS}/app, not for this job's owners (team-b/thief)`,
    );
    assert.equal(other.attemptsMade, 1);
    // 3. Another namespace's Secret: refused before any request.
    const cross = await forge('forged-namespace', {
      owners: [{ namespace: 'team-b', name: 'thief', uid: 'uid-thief' }],
      pullSecrets: [`${NS}/regcred`],
    });
    assert.match(cross.failedReason ?? '', /refused: the job's owners are in team-b, not default/);
  });

  it("a refusal reaches the ImagePrewarm's status: code, Secret and why, on the node", async () => {
    // The job the operator would make for an ImagePrewarm, written first by a Redis writer
    // naming another namespace's Secret: the agent refuses it; when the ImagePrewarm appears
    // the operator adopts the job (same id) and shows the refusal in its status.
    const other = await pushImage(registry, {
      repository: 'tenant/other',
      tag: 'v1',
      layers: [{ randomBytes: 64 * 1024, seed: 12 }],
    });
    const id = prewarmJobId(other.digest as Digest, NODE, 'cache');
    const v = await forge(id, {
      owners: [{ namespace: NS, name: 'victim', uid: 'uid-guessed' }],
      repository: `${registry.host}/tenant/other`,
      digest: other.digest as Digest,
      pullSecrets: ['team-b/stolen'],
    });
    assert.equal(v.state, 'failed');
    await api().create('victim', {
      images: [{ repository: `${registry.host}/tenant/other`, digest: other.digest }],
    });
    let last: unknown;
    const p = await eventually(
      'the refusal in the status',
      async () => {
        const got = await api().get('victim');
        last = got?.status;
        return got?.status?.images?.[0]?.failingNodes?.length ? got : undefined;
      },
      60_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}; last status ${JSON.stringify(last)}`);
    });
    const f = p.status!.images![0]!.failingNodes![0]!;
    assert.equal(f.node, NODE);
    assert.equal(f.reason, 'PW_ERR_AUTH_FAILED');
    assert.match(
      f.message,
      /^pull secret team-b\/stolen: refused: the job's owners are in default, not team-b/,
    );
    assert.equal(condition(p, 'Degraded')?.reason, 'NodesFailing');
    await api().remove('victim');
  });

  it('deleting the ImagePrewarm removes its copy', async () => {
    assert.equal((await copies()).length, 1);
    await api().remove('app');
    await eventually('copy removed', async () => (await copies()).length === 0, 60_000);
  });
});
