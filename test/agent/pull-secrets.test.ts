/**
 * Per-job pull secrets: the agent reads the dockerconfigjson Secrets a job names from a
 * real kube-apiserver and uses them for that job only, against a real htpasswd registry
 * and real Redis; a job naming a Secret of a namespace none of its owners is in is
 * refused before anything is read, even by an agent that could read it (issue 11: job
 * data comes from Redis, which every node can write). Plus the resolver's cache,
 * precedence and the checks on the operator's pull-credential copies, with an in-memory
 * reader. The operator ↔ agent path with copies: pull-credentials.test.ts.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CoreV1Api } from '@kubernetes/client-node';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import {
  PullSecretResolver,
  type SecretData,
  type SecretReader,
} from '../../agent/src/daemon/pull-secrets.js';
import type { Digest } from '../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';
import {
  nodeQueueName,
  PREWARM_JOB_NAME,
  type PrewarmJobData,
  type PrewarmJobResult,
  QUEUE_PREFIX,
} from '../../oci/src/job-contract.js';
import { PULL_CREDENTIALS_ANNOTATIONS } from '../../oci/src/kube-secret.js';
import { Cleanup, type PushedImage, pushImage, type RegistryHandle } from '../harness/index.js';
import { type KubeHandle, startKube } from '../harness/kube.js';
import { startAgent, startTestRedis, waitForJobEnd } from './daemon-fixtures.js';
import { startTestRegistry } from './fixtures.js';

const NODE = 'node-secrets';
const NS = 'team-a';
const OTHER_NS = 'team-b';
let ownerSeq = 0;
/** An owner ImagePrewarm in `namespace` (default: the Secret's, team-a). */
const owner = (namespace = NS) => ({ namespace, name: `ip-${++ownerSeq}`, uid: `uid-${ownerSeq}` });

function dockerConfigJson(host: string, username: string, password: string): string {
  const auth = Buffer.from(`${username}:${password}`).toString('base64');
  return JSON.stringify({ auths: { [host]: { auth } } });
}

/** Adds a job as the operator does, with the fields the shared `enqueue` does not set. */
async function enqueueJob(
  conn: Redis,
  jobId: string,
  img: PushedImage,
  extra: Pick<PrewarmJobData, 'pullSecrets' | 'bandwidthBytesPerSec'> &
    Partial<Pick<PrewarmJobData, 'owners'>>,
): Promise<string> {
  const data: PrewarmJobData = {
    v: 1,
    owners: [owner()],
    repository: `${img.host}/${img.repository}`,
    tag: img.tag,
    digest: img.digest as Digest,
    platform: 'linux/amd64',
    node: NODE,
    mode: 'cache',
    triggeredAt: Date.now(),
    trigger: 'spec',
    ...extra,
  };
  const queue = new Queue(nodeQueueName(NODE), { connection: conn, prefix: QUEUE_PREFIX });
  try {
    await queue.add(PREWARM_JOB_NAME, data, {
      jobId,
      attempts: 3,
      backoff: { type: 'fixed', delay: 100 },
      removeOnComplete: false,
      removeOnFail: false,
    });
  } finally {
    await queue.close();
  }
  return jobId;
}

describe('agent: per-job pull secrets (real kube-apiserver, Redis, htpasswd registry)', () => {
  const cleanup = new Cleanup();
  let kube: KubeHandle;
  let registry: RegistryHandle;
  let conn: Redis;
  let redisUrl: string;
  const images: PushedImage[] = [];

  before(async () => {
    kube = await startKube({ applyCrds: false });
    cleanup.defer(() => kube.stop());
    registry = await startTestRegistry(cleanup, {
      auth: { htpasswd: { username: 'puller', password: 's3cret-pw' } },
    });
    const r = await startTestRedis(cleanup);
    conn = r.conn;
    redisUrl = r.redis.url;
    for (const tag of ['with-secret', 'without', 'missing', 'forbidden', 'cross-namespace'])
      images.push(
        await pushImage(registry, {
          repository: 'private/app',
          tag,
          layers: [{ files: { 'etc/tag': `${tag}\n` } }, { randomBytes: 1024 * 1024, seed: tag.length }],
        }),
      );
    const core = kube.kc.makeApiClient(CoreV1Api);
    for (const ns of [NS, OTHER_NS]) await core.createNamespace({ body: { metadata: { name: ns } } });
    await core.createNamespacedSecret({
      namespace: NS,
      body: {
        metadata: { name: 'regcred' },
        type: 'kubernetes.io/dockerconfigjson',
        stringData: { '.dockerconfigjson': dockerConfigJson(registry.host, 'puller', 's3cret-pw') },
      },
    });
  });
  after(() => cleanup.run());

  it('uses a named secret for its job; without it the registry denies; a missing one fails clearly', async () => {
    const agent = await startAgent(cleanup, {
      node: NODE,
      redisUrl,
      extra: {
        KUBE_PREWARM_READ_PULL_SECRETS: 'true',
        KUBE_PREWARM_KUBECONFIG: kube.kubeconfigPath,
      },
    });
    const [withSecret, without, missing] = images as [PushedImage, PushedImage, PushedImage];

    // Jobs that must fail run first, so nothing is in the store yet when they try.
    const idWithout = await enqueueJob(conn, 'without', without, {});
    const vWithout = await waitForJobEnd(conn, NODE, idWithout);
    assert.equal(vWithout.state, 'failed');
    assert.match(vWithout.failedReason ?? '', /^PW_ERR_AUTH_DENIED: /);
    assert.equal(vWithout.attemptsMade, 1, 'auth denied is not retried');

    const idMissing = await enqueueJob(conn, 'missing', missing, {
      pullSecrets: [`${NS}/regcred`, `${NS}/no-such-secret`],
    });
    const vMissing = await waitForJobEnd(conn, NODE, idMissing);
    assert.equal(vMissing.state, 'failed');
    assert.equal(vMissing.failedReason, `PW_ERR_AUTH_FAILED: pull secret ${NS}/no-such-secret: not found`);
    assert.equal(vMissing.attemptsMade, 1, 'a missing secret is not retried');

    // The per-job cap rides along: the job still completes (the cap is checked in fetch-bandwidth.test.ts).
    const idWith = await enqueueJob(conn, 'with', withSecret, {
      pullSecrets: [`${NS}/regcred`],
      bandwidthBytesPerSec: 8 * 1024 * 1024,
    });
    const vWith = await waitForJobEnd(conn, NODE, idWith);
    assert.equal(vWith.state, 'completed', vWith.failedReason);
    const result = vWith.returnvalue as PrewarmJobResult;
    assert.equal(result.phase, 'warm');
    assert.ok(result.bytesFromRegistry > 1024 * 1024);
    assert.equal(result.manifestDigest, withSecret.manifests[0]!.digest);
    for (const l of withSecret.manifests[0]!.layers)
      assert.ok(await agent.daemon.store!.stat(l.digest as Digest), `layer ${l.digest} stored`);

    const log = await readFile(join(agent.dir, 'agent.log'), 'utf8');
    assert.match(log, /using pull secrets for this job/);
    assert.ok(
      !log.includes('s3cret-pw') && !log.includes(Buffer.from('puller:s3cret-pw').toString('base64')),
    );

    // The job's credentials stayed with that job: the image without a secret is still denied.
    const idAgain = await enqueueJob(conn, 'without-again', without, {});
    const vAgain = await waitForJobEnd(conn, NODE, idAgain);
    assert.equal(vAgain.state, 'failed');
    assert.match(vAgain.failedReason ?? '', /^PW_ERR_AUTH_DENIED: /);
  });

  it("a job naming another namespace's Secret is refused before it is read, though this agent could read it", async () => {
    // The attack: whoever can write a job to Redis (a compromised node) names the Secret of
    // a namespace its job's owner is not in. This agent's kubeconfig is cluster-admin, so
    // only the owner check stands between the job and team-a's credentials.
    const node = 'node-cross-ns';
    const agent = await startAgent(cleanup, {
      node,
      redisUrl,
      extra: { KUBE_PREWARM_READ_PULL_SECRETS: 'true', KUBE_PREWARM_KUBECONFIG: kube.kubeconfigPath },
    });
    const img = images[4] as PushedImage;
    const queue = new Queue(nodeQueueName(node), { connection: conn, prefix: QUEUE_PREFIX });
    cleanup.defer(() => queue.close());
    const job = (id: string, owners: PrewarmJobData['owners']) =>
      queue.add(
        PREWARM_JOB_NAME,
        {
          v: 1,
          owners,
          repository: `${img.host}/${img.repository}`,
          digest: img.digest as Digest,
          platform: 'linux/amd64',
          node,
          mode: 'cache',
          triggeredAt: Date.now(),
          trigger: 'spec',
          pullSecrets: [`${NS}/regcred`],
        } satisfies PrewarmJobData,
        { jobId: id, attempts: 3, removeOnFail: false, removeOnComplete: false },
      );
    await job('cross-ns', [owner(OTHER_NS)]);
    const v = await waitForJobEnd(conn, node, 'cross-ns');
    assert.equal(v.state, 'failed');
    assert.equal(
      v.failedReason,
      `PW_ERR_AUTH_FAILED: pull secret ${NS}/regcred: refused: the job's owners are in ${OTHER_NS}, not ${NS}; a job may only use Secrets of its own ImagePrewarm's namespace`,
    );
    assert.equal(v.attemptsMade, 1, 'refused permanently: not retried');
    assert.equal(await agent.daemon.store!.stat(img.manifests[0]!.layers[1]!.digest as Digest), undefined);

    // The control: the same job with an owner in team-a uses the Secret and completes.
    await job('same-ns', [owner(OTHER_NS), owner(NS)]);
    const ok = await waitForJobEnd(conn, node, 'same-ns');
    assert.equal(ok.state, 'completed', ok.failedReason);
  });

  it('a secret the agent may not read fails the job permanently, naming it', async () => {
    // A second agent on another node whose kubeconfig user has no role at all.
    const node = 'node-forbidden';
    const kubeconfig = await kube.writeKubeconfig(kube.operatorUser, 'no-rights.kubeconfig');
    await startAgent(cleanup, {
      node,
      redisUrl,
      extra: { KUBE_PREWARM_READ_PULL_SECRETS: 'true', KUBE_PREWARM_KUBECONFIG: kubeconfig },
    });
    const img = images[3] as PushedImage;
    const data: PrewarmJobData = {
      v: 1,
      owners: [owner()],
      repository: `${img.host}/${img.repository}`,
      digest: img.digest as Digest,
      platform: 'linux/amd64',
      node,
      mode: 'cache',
      triggeredAt: Date.now(),
      trigger: 'spec',
      pullSecrets: [`${NS}/regcred`],
    };
    const queue = new Queue(nodeQueueName(node), { connection: conn, prefix: QUEUE_PREFIX });
    await queue.add(PREWARM_JOB_NAME, data, { jobId: 'forbidden', attempts: 3, removeOnFail: false });
    await queue.close();
    const v = await waitForJobEnd(conn, node, 'forbidden');
    assert.equal(v.state, 'failed');
    assert.match(
      v.failedReason ?? '',
      new RegExp(`^PW_ERR_AUTH_FAILED: pull secret ${NS}/regcred: .*HTTP 403`),
    );
    assert.equal(v.attemptsMade, 1);
  });
});

describe('PullSecretResolver (in-memory reader)', () => {
  class MemoryReader implements SecretReader {
    reads = 0;
    constructor(readonly secrets: Map<string, SecretData>) {}
    async read(namespace: string, name: string): Promise<SecretData | undefined> {
      this.reads++;
      return this.secrets.get(`${namespace}/${name}`);
    }
  }
  const secret = (host: string, user: string, annotations?: Record<string, string>): SecretData => ({
    type: 'kubernetes.io/dockerconfigjson',
    data: { '.dockerconfigjson': Buffer.from(dockerConfigJson(host, user, 'pw')) },
    ...(annotations ? { annotations } : {}),
  });
  /** A job owned by ImagePrewarm a/p, pulling from reg.example:5000. */
  const JOB = { owners: [{ namespace: 'a', name: 'p', uid: 'uid-p' }], registry: 'reg.example:5000' };

  it('caches reads for the TTL, and the first listed secret wins for a host', async () => {
    const reader = new MemoryReader(
      new Map([
        ['a/one', secret('reg.example:5000', 'first')],
        ['a/two', secret('reg.example:5000', 'second')],
      ]),
    );
    let now = 1_000;
    const resolver = new PullSecretResolver(reader, { ttlMs: 60_000, now: () => now });
    const creds = await resolver.credentials(['a/one', 'a/two'], JOB);
    assert.equal(creds.get('reg.example:5000')?.username, 'first');
    assert.equal(
      (await resolver.credentials(['a/two', 'a/one'], JOB)).get('reg.example:5000')?.username,
      'second',
    );
    assert.equal(reader.reads, 2, 'second call served from the cache');
    now += 60_001;
    await resolver.credentials(['a/one'], JOB);
    assert.equal(reader.reads, 3, 're-read after the TTL');
  });

  it('rejects a bad reference, a wrong type and malformed JSON permanently, without contents', async () => {
    const reader = new MemoryReader(
      new Map<string, SecretData>([
        ['a/opaque', { type: 'Opaque', data: { password: Buffer.from('hunter2') } }],
        [
          'a/bad',
          {
            type: 'kubernetes.io/dockerconfigjson',
            data: { '.dockerconfigjson': Buffer.from('{not json hunter2') },
          },
        ],
      ]),
    );
    const resolver = new PullSecretResolver(reader);
    for (const [ref, why] of [
      ['no-slash', /not a namespace\/name/],
      ['a/opaque', /is of type Opaque/],
      ['a/bad', /not JSON/],
      ['a/absent', /not found/],
    ] as const) {
      const err = await resolver.credentials([ref], JOB).then(
        () => assert.fail(`${ref} resolved`),
        (e: unknown) => e,
      );
      assert.ok(isPrewarmError(err, ErrorCodes.AUTH_FAILED), String(err));
      assert.match(err.message, new RegExp(`^pull secret ${ref}: `));
      assert.match(err.message, why);
      assert.doesNotMatch(err.message, /hunter2/);
      assert.equal(err.detail?.permanent, true);
    }
  });

  const refusal = async (resolver: PullSecretResolver, refs: string[], job = JOB) => {
    const err = await resolver.credentials(refs, job).then(
      () => assert.fail(`${refs.join(',')} resolved`),
      (e: unknown) => e,
    );
    assert.ok(isPrewarmError(err, ErrorCodes.AUTH_FAILED), String(err));
    assert.equal(err.detail?.permanent, true);
    return err.message;
  };

  it("refuses a Secret of a namespace none of the job's owners is in, without reading anything", async () => {
    const reader = new MemoryReader(new Map([['b/regcred', secret('reg.example:5000', 'b-user')]]));
    const resolver = new PullSecretResolver(reader);
    assert.match(
      await refusal(resolver, ['a/ok', 'b/regcred']),
      /^pull secret b\/regcred: refused: the job's owners are in a, not b/,
    );
    assert.equal(reader.reads, 0, 'judged before any read');
    const twoOwners = { ...JOB, owners: [...JOB.owners, { namespace: 'b', name: 'q', uid: 'uid-q' }] };
    assert.equal(
      (await resolver.credentials(['b/regcred'], twoOwners)).get('reg.example:5000')?.username,
      'b-user',
    );
  });

  it("uses an operator copy only when made for one of the job's owners, for its registry, and not expired", async () => {
    const A = PULL_CREDENTIALS_ANNOTATIONS;
    let now = Date.parse('2026-01-01T00:00:00Z');
    const ann = (over: Record<string, string> = {}) => ({
      [A.owner]: 'a/p',
      [A.ownerUid]: 'uid-p',
      [A.registries]: 'reg.example:5000',
      [A.expires]: new Date(now + 60_000).toISOString(),
      ...over,
    });
    const reader = new MemoryReader(
      new Map<string, SecretData>([
        ['creds/good', secret('reg.example:5000', 'copy-user', ann())],
        ['creds/theirs', secret('reg.example:5000', 'x', ann({ [A.owner]: 'b/q', [A.ownerUid]: 'uid-q' }))],
        ['creds/elsewhere', secret('other.example', 'x', ann({ [A.registries]: 'other.example' }))],
        ['creds/plain', secret('reg.example:5000', 'x')],
      ]),
    );
    const resolver = new PullSecretResolver(reader, {
      credentialsNamespace: 'creds',
      now: () => now,
      ttlMs: 0,
    });
    assert.equal(
      (await resolver.credentials(['creds/good'], JOB)).get('reg.example:5000')?.username,
      'copy-user',
    );
    assert.match(
      await refusal(resolver, ['creds/theirs']),
      /refused: made for ImagePrewarm b\/q, not for this job's owners \(a\/p\)/,
    );
    assert.match(
      await refusal(resolver, ['creds/elsewhere']),
      /refused: holds credentials for other\.example, not for reg\.example:5000/,
    );
    assert.match(
      await refusal(resolver, ['creds/plain']),
      /refused: not a kube-prewarm pull-credential copy/,
    );
    now += 60_001;
    assert.match(await refusal(resolver, ['creds/good']), /refused: expired at /);
    // Without the setting, the credentials namespace is just another namespace.
    assert.match(
      await refusal(new PullSecretResolver(reader), ['creds/good']),
      /refused: the job's owners are in a, not creds/,
    );
  });
});
