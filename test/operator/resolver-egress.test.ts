/**
 * The operator's egress (issue 11): anyone who can create an ImagePrewarm names the
 * registry the operator resolves against, so the resolver obeys the egress policy
 * (KUBE_PREWARM_ALLOWED_REGISTRIES, default `_default` = public registries only). Against
 * the real registry behind the harness fault proxy (its request log shows what reached
 * it) and real Redis for the controller's job queue; the Kubernetes side is the in-memory
 * KubePort, so this runs without an apiserver:
 * - a loopback registry, a metadata address, a name resolving to 127.0.0.1 → refused,
 *   nothing sent; listed explicitly → resolved (control);
 * - an ImagePrewarm naming a registry that is not allowed gets reason RegistryNotAllowed
 *   (Ready=False for a tag, which cannot be resolved; Degraded for a digest, whose manifest
 *   cannot be read); an allowed one resolves.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Redis } from 'ioredis';
import { Registry } from 'prom-client';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';
import { API_VERSION, type ImagePrewarm, KIND } from '../../operator/src/api/types.js';
import { loadConfig } from '../../operator/src/config.js';
import { MemoryKubePort } from '../../operator/src/kube/memory-port.js';
import { silentLogger } from '../../operator/src/logger.js';
import { OperatorMetrics } from '../../operator/src/metrics.js';
import { BullJobQueue } from '../../operator/src/queue/bull-job-queue.js';
import { PrewarmController } from '../../operator/src/reconcile/controller.js';
import { Resolver } from '../../operator/src/resolve/resolver.js';
import {
  Cleanup,
  type FaultProxyHandle,
  type PushedImage,
  pushImage,
  type RedisHandle,
  startFaultProxy,
  startRedis,
  startRegistry,
  waitUntil,
} from '../harness/index.js';
import { redisConnection } from './env.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

const denied = (e: unknown) =>
  isPrewarmError(e, ErrorCodes.EGRESS_DENIED) && e.detail?.reason === 'registry-not-allowed';

let proxy: FaultProxyHandle;
let img: PushedImage;
let redis: RedisHandle;

before(async () => {
  const registry = await startRegistry();
  cleanup.defer(() => registry.close());
  proxy = await startFaultProxy({ upstream: registry });
  cleanup.defer(() => proxy.stop());
  img = await pushImage(registry, {
    repository: 'op/app',
    tag: 'v1',
    layers: [{ randomBytes: 4096, seed: 3 }],
  });
  redis = await startRedis();
  cleanup.defer(() => redis.close());
});

function resolver(opts: ConstructorParameters<typeof Resolver>[0] = {}): Resolver {
  const r = new Resolver(opts);
  cleanup.defer(() => r.close());
  return r;
}

describe('resolver egress', () => {
  test('by default a loopback registry is refused before any request; listed explicitly it resolves', async () => {
    proxy.resetStats();
    const strict = resolver();
    await assert.rejects(strict.resolveTag(`${proxy.host}/op/app`, 'v1'), denied);
    await assert.rejects(strict.describe(`${proxy.host}/op/app`, img.digest as never, []), denied);
    assert.equal(proxy.stats.log.length, 0, 'nothing reached the registry');
    const explicit = resolver({ allowedRegistries: [proxy.host] });
    assert.equal((await explicit.resolveTag(`${proxy.host}/op/app`, 'v1')).digest, img.digest);
  });

  test('metadata and private addresses, in any spelling, are refused', async () => {
    const strict = resolver();
    for (const repo of [
      '169.254.169.254/latest',
      '0xa9fea9fe:80/latest',
      '[fd00:ec2::254]/x',
      '10.0.0.1:5000/x',
      'localhost:5000/x',
      '2130706433:5000/x',
    ])
      await assert.rejects(strict.resolveTag(repo, 'v1'), denied, repo);
  });

  test('a public-looking registry name that resolves to 127.0.0.1 is refused when connecting', async () => {
    const port = new URL(proxy.url).port;
    const r = resolver({ resolve: async () => [{ address: '127.0.0.1', family: 4 }] });
    proxy.resetStats();
    await assert.rejects(
      r.resolveTag(`registry.example.test:${port}/op/app`, 'v1'),
      (e: unknown) =>
        isPrewarmError(e, ErrorCodes.EGRESS_DENIED) && e.detail?.reason === 'address-not-allowed',
    );
    assert.equal(proxy.stats.log.length, 0);
  });

  test('operator config: KUBE_PREWARM_ALLOWED_REGISTRIES defaults to _default and is validated', () => {
    assert.deepEqual(loadConfig({}).allowedRegistries, ['_default']);
    assert.deepEqual(
      loadConfig({ KUBE_PREWARM_ALLOWED_REGISTRIES: '_default, 10.0.0.5:5000' }).allowedRegistries,
      ['_default', '10.0.0.5:5000'],
    );
    assert.throws(
      () => loadConfig({ KUBE_PREWARM_ALLOWED_REGISTRIES: 'a/b' }),
      /KUBE_PREWARM_ALLOWED_REGISTRIES/,
    );
    assert.throws(
      () => loadConfig({ KUBE_PREWARM_PLAIN_HTTP: '127.0.0.1:5000' }),
      /127\.0\.0\.1:5000 is not allowed by KUBE_PREWARM_ALLOWED_REGISTRIES/,
    );
  });
});

describe('an ImagePrewarm naming a registry that is not allowed', () => {
  let conn: Redis;
  before(() => {
    conn = redisConnection(redis.url);
    cleanup.defer(() => conn.disconnect());
  });

  function prewarm(name: string, image: ImagePrewarm['spec']['images'][number]): ImagePrewarm {
    return {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { name, namespace: 'team-a', uid: `uid-${name}` },
      spec: { images: [image] },
    };
  }

  test('gets reason RegistryNotAllowed (Ready=False for a tag, Degraded for a digest); an allowed registry resolves', async () => {
    const kube = new MemoryKubePort();
    const jobs = new BullJobQueue(conn);
    cleanup.defer(() => jobs.close());
    // Allowed: public registries only (the default), and the proxy's port explicitly.
    const r = resolver({ allowedRegistries: ['_default', proxy.host] });
    const controller = new PrewarmController(
      { kube, jobs, resolver: r, metrics: new OperatorMetrics(new Registry()), log: silentLogger() },
      { resyncMs: 60_000, progressPollMs: 200, resolveRetryMs: 60_000 },
    );
    // The same registry through another port of the same host is not allowed.
    const port = Number(new URL(proxy.url).port);
    const other = `127.0.0.1:${port === 65535 ? port - 1 : port + 1}`;
    kube.applyPrewarm(prewarm('by-tag', { repository: `${other}/op/app`, tag: 'v1' }));
    kube.applyPrewarm(prewarm('by-digest', { repository: `169.254.169.254/op/app`, digest: img.digest }));
    kube.applyPrewarm(prewarm('allowed', { repository: `${proxy.host}/op/app`, tag: 'v1' }));
    proxy.resetStats();
    const ac = new AbortController();
    const running = controller.run(ac.signal);
    const condition = (name: string, type: string) =>
      kube.prewarms.get(name, 'team-a')?.status?.conditions?.find((c) => c.type === type);
    try {
      // On timeout the last probe error shows the statuses as they were.
      await waitUntil(
        'statuses written',
        async () => {
          if (
            condition('by-tag', 'Ready')?.reason === 'RegistryNotAllowed' &&
            condition('by-digest', 'Degraded')?.reason === 'RegistryNotAllowed' &&
            kube.prewarms.get('allowed', 'team-a')?.status?.images?.[0]?.digest !== undefined
          )
            return true;
          throw new Error(
            JSON.stringify(
              ['by-tag', 'by-digest', 'allowed'].map((n) => kube.prewarms.get(n, 'team-a')?.status),
            ),
          );
        },
        { timeoutMs: 30_000, intervalMs: 50 },
      );
    } finally {
      ac.abort();
      await running;
    }
    // A tag cannot be resolved: not Ready, and why. A digest needs no resolution, so the
    // refusal (of reading its manifest) shows as Degraded.
    const cases: [string, string, string][] = [
      ['by-tag', 'Ready', 'False'],
      ['by-tag', 'Degraded', 'True'],
      ['by-digest', 'Degraded', 'True'],
    ];
    for (const [name, type, status] of cases) {
      const c = condition(name, type)!;
      assert.equal(c.status, status, `${name} ${type}`);
      assert.equal(c.reason, 'RegistryNotAllowed', `${name} ${type}`);
      assert.match(c.message ?? '', /PW_ERR_EGRESS_DENIED/, name);
      assert.match(c.message ?? '', /KUBE_PREWARM_ALLOWED_REGISTRIES/, name);
    }
    assert.equal(condition('allowed', 'Degraded')?.status, 'False');
    assert.equal(kube.prewarms.get('allowed', 'team-a')!.status!.images![0]!.digest, img.digest);
    // Only the allowed ImagePrewarm reached the registry (through the proxy).
    assert.ok(proxy.stats.log.length > 0);
    assert.ok(proxy.stats.log.every((e) => e.path.startsWith('/v2/op/app/')));
  });
});
