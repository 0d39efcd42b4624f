/**
 * Push to warm on a real node: the registry's own push notification (Debian's
 * docker-registry, `notifications.endpoints`) reaches the in-cluster webhook receiver
 * through its NodePort, the operator re-resolves the watched tag, the agent warms the new
 * digest, and only then is the Deployment rolled to it: the new pod starts without one
 * registry blob byte. The digest the tag moved away from stays pinned per `retain: 1`
 * (in status.previousDigests, pinned in the node's job queue as the agent's garbage
 * collector reads it, its blobs still in the node's store); one more push moves it past
 * `retain` and it is unpinned.
 *
 * test/system/push-to-warm.test.ts runs the same flow with processes instead of a cluster.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { RedisPinSource } from '../../agent/src/store/redis-pins.js';
import type { Digest } from '../../oci/src/digest.js';
import { CLUSTER_NET } from '../harness/cluster.js';
import { pushImage } from '../harness/images.js';
import { containerEnv } from '../helm/render.js';
import { type E2eEnv, FULL, NAMESPACE, prewarmPath, startE2e, waitForState, waitRolledOut } from './env.js';
import {
  containerLog,
  create,
  ensureNamespace,
  get,
  type Json,
  mergePatch,
  podsOf,
  sleeperDeployment,
  waitAppRunning,
  waitPrewarmReady,
} from './kube.js';

const MiB = 1024 * 1024;
const NS = 'team-push';
const BLOBS = /\/v2\/.+\/blobs\/sha256:/;
const REPOSITORY = 'push/web';
/** The receiver's `webhooks` port on node 1 (the chart's webhooks.receiver.service.nodePort). */
const NODE_PORT = 30880;
const STORE_BLOBS = '/var/lib/kube-prewarm/store/blobs/sha256';

/**
 * A Redis client with the operator's own credentials, read from its Deployment as the
 * kubelet would resolve them (Secret references, `$(REDIS_PASSWORD)`), reaching the Redis
 * Service by its ClusterIP (this process cannot resolve cluster DNS names).
 */
async function operatorRedis(env: E2eEnv): Promise<Redis> {
  const c = env.cluster;
  const dep = await get(c, `/apis/apps/v1/namespaces/${NAMESPACE}/deployments/${FULL}-operator`);
  const ctr = dep.spec.template.spec.containers.find((x: Json) => x.name === 'operator');
  const secrets: Record<string, string> = {};
  for (const v of ctr.env ?? []) {
    const ref = v.valueFrom?.secretKeyRef;
    if (!ref) continue;
    const s = await get(c, `/api/v1/namespaces/${NAMESPACE}/secrets/${ref.name}`);
    secrets[`${ref.name}/${ref.key}`] = Buffer.from(s.data[ref.key], 'base64').toString('utf8');
  }
  // The apiserver drops empty values (`value: ""`): put them back as the kubelet reads them.
  const vars = (ctr.env ?? []).map((v: Json) =>
    v.value === undefined && !v.valueFrom ? { ...v, value: '' } : v,
  );
  const envs = containerEnv(
    { env: vars },
    {
      fields: { 'metadata.name': 'test', 'metadata.namespace': NAMESPACE, 'spec.nodeName': 'node-1' },
      secrets,
    },
  );
  const url = new URL(envs.KUBE_PREWARM_REDIS_URL!);
  const svc = await get(c, `/api/v1/namespaces/${NAMESPACE}/services/${url.hostname.split('.')[0]}`);
  url.hostname = svc.spec.clusterIP;
  return new Redis(url.toString(), { maxRetriesPerRequest: 3, lazyConnect: true });
}

describe('a registry push reaches the in-cluster webhook and is warm before the rollout', {
  timeout: 1_800_000,
}, () => {
  let env: E2eEnv;
  let redis: Redis | undefined;
  let busybox: Buffer;
  const secret = randomBytes(24).toString('hex');
  const digests: string[] = [];
  /** The layer only each pushed image has (its random data), by image. */
  const uniqueLayers: string[] = [];

  before(async () => {
    env = await startE2e({
      install: false,
      registryNotifications: {
        url: `http://${CLUSTER_NET.nodeIp(1)}:${NODE_PORT}/webhooks/distribution`,
        headers: { Authorization: `Bearer ${secret}` },
      },
    });
    busybox = await readFile('/bin/busybox');
    await env.install({
      webhooks: {
        enabled: true,
        // Pushes reach the registry on 127.0.0.1; ImagePrewarms name it by its cluster address.
        sources: { distribution: { secrets: [secret], registry: env.cluster.registryHost } },
        receiver: { replicas: 1, service: { type: 'NodePort', nodePort: NODE_PORT } },
      },
    });
    await waitRolledOut(env.cluster, 'Deployment', `${FULL}-webhooks`);
    await ensureNamespace(env.cluster, NS);
  });
  after(async () => {
    redis?.disconnect();
    await env?.close();
  });

  /** Pushes a new image under `push/web:v1`: busybox plus 64 MiB of its own. */
  const push = async (seed: number): Promise<string> => {
    const img = await pushImage(env.cluster.registry, {
      repository: REPOSITORY,
      tag: 'v1',
      layers: [
        { files: { 'bin/busybox': busybox }, executables: ['bin/busybox'] },
        { randomBytes: 64 * MiB, seed },
      ],
    });
    digests.push(img.digest);
    uniqueLayers.push(img.manifests[0]!.layers[1]!.digest);
    return img.digest;
  };
  const inStore = (layer: string) =>
    existsSync(env.cluster.nodes[0]!.hostPath(`${STORE_BLOBS}/${layer.slice('sha256:'.length)}`));
  const imageStatus = async (): Promise<Json> =>
    (await get(env.cluster, prewarmPath(NS, 'web'))).status?.images?.[0];
  const pinned = async (): Promise<ReadonlySet<Digest>> => {
    redis ??= await operatorRedis(env);
    return new RedisPinSource(redis, 'node-1').pinned();
  };

  /** Waits until the tag's new digest is warm on the node, moved there by a push event. */
  const waitPushedWarm = async (digest: string): Promise<Json> => {
    try {
      return await waitForState(
        `${digest} warm on node-1 after the push`,
        imageStatus,
        (s: Json) =>
          s?.digest === digest &&
          s.warmNodes === 1 &&
          s.lastTrigger?.type === 'push' &&
          s.lastTrigger?.source === 'distribution',
        300_000,
      );
    } catch (err) {
      const c = env.cluster;
      const logs: string[] = [];
      for (const p of await podsOf(c, NAMESPACE, 'app.kubernetes.io/component=webhooks'))
        logs.push(`${p.metadata.name}:\n${await containerLog(c, NAMESPACE, p.metadata.name, 'webhooks')}`);
      throw new Error(`${(err as Error).message}\nreceiver logs:\n${logs.join('\n')}`);
    }
  };

  test('ImagePrewarm following tag v1 (onPush, retain 1); a Deployment runs its first digest', async () => {
    const c = env.cluster;
    const first = await push(1);
    await create(c, prewarmPath(NS), {
      apiVersion: 'prewarm.kube-prewarm.io/v1alpha1',
      kind: 'ImagePrewarm',
      metadata: { name: 'web', namespace: NS },
      spec: {
        images: [{ repository: `${c.registryHost}/${REPOSITORY}`, tag: 'v1' }],
        mode: 'cache',
        triggers: { onPush: true },
        retain: 1,
      },
    });
    const status = await waitPrewarmReady(c, NS, 'web');
    assert.equal(status.images[0].digest, first);
    await create(
      c,
      `/apis/apps/v1/namespaces/${NS}/deployments`,
      sleeperDeployment('web', NS, `${c.registryHost}/${REPOSITORY}@${first}`),
    );
    await waitAppRunning(c, NS, 'web');
  });

  test('a push under v1: the new digest is warm before the rollout, whose pod starts with 0 registry blob bytes', async () => {
    const c = env.cluster;
    const [first] = digests;
    const second = await push(2);
    assert.notEqual(second, first);
    const s = await waitPushedWarm(second);
    assert.ok(inStore(uniqueLayers[1]!), 'the new layer is in the node store before the rollout');

    c.proxy.resetStats();
    const ref = `${c.registryHost}/${REPOSITORY}@${second}`;
    await mergePatch(c, {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'web', namespace: NS },
      // A merge patch replaces the list: the whole container, with the new image.
      spec: {
        template: { spec: { containers: sleeperDeployment('web', NS, ref).spec.template.spec.containers } },
      },
    });
    // Rolled out: the only pod left runs the new digest (the old one is gone, not terminating).
    await waitForState(
      `the rollout of web to ${second}`,
      async () =>
        (await podsOf(c, NS, 'app=web')).map((p: Json) => ({
          image: p.spec.containers[0].image,
          phase: p.status?.phase,
          ready: (p.status?.containerStatuses ?? []).every((x: Json) => x.ready),
          deleting: Boolean(p.metadata.deletionTimestamp),
        })),
      (pods) =>
        pods.length === 1 &&
        pods[0]!.image === ref &&
        pods[0]!.phase === 'Running' &&
        pods[0]!.ready &&
        !pods[0]!.deleting,
    );
    await waitAppRunning(c, NS, 'web');
    assert.equal(
      c.proxy.bytes(BLOBS),
      0,
      `registry blob requests during the rollout: ${JSON.stringify(
        c.proxy.stats.log.filter((e) => BLOBS.test(e.path)),
        null,
        1,
      )}`,
    );

    // retain: 1 keeps the digest the tag moved away from, pinned on the node.
    assert.deepEqual(
      s.previousDigests?.map((d: Json) => [d.digest, d.tag]),
      [[first, 'v1']],
    );
    const pins = await pinned();
    assert.ok(pins.has(first as Digest) && pins.has(second as Digest), `pinned on node-1: ${[...pins]}`);
    assert.ok(inStore(uniqueLayers[0]!), 'the old digest’s layer is still in the node store');
  });

  test('one more push moves the first digest past retain: it is unpinned, the second stays pinned', async () => {
    const [first, second] = digests;
    const third = await push(3);
    const s = await waitPushedWarm(third);
    assert.deepEqual(
      s.previousDigests?.map((d: Json) => d.digest),
      [second],
    );
    const pins = await waitForState(
      'the first digest unpinned on node-1',
      async (): Promise<string[]> => [...(await pinned())],
      (p) => !p.includes(first!),
      120_000,
    );
    assert.ok(pins.includes(second!) && pins.includes(third), `pinned on node-1: ${pins}`);
  });
});
