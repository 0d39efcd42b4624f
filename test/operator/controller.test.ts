/**
 * PrewarmController over the in-memory Kubernetes port and job queue (no servers): the
 * whole reconcile loop, with the test playing the agents. What the real ports add (the
 * apiserver's watch, BullMQ's Lua) is covered by the tests against them
 * (test/operator/e2e.test.ts, test/system/).
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import type { V1Node, V1NodeSystemInfo } from '@kubernetes/client-node';
import { Registry } from 'prom-client';
import type { Digest } from '../../oci/src/digest.js';
import {
  API_VERSION,
  FINALIZER,
  type ImagePrewarm,
  KIND,
  STARTUP_TAINT_KEY,
} from '../../operator/src/api/types.js';
import { MemoryKubePort } from '../../operator/src/kube/memory-port.js';
import { silentLogger } from '../../operator/src/logger.js';
import { OperatorMetrics } from '../../operator/src/metrics.js';
import { MemoryJobQueue } from '../../operator/src/queue/memory-job-queue.js';
import { PrewarmController } from '../../operator/src/reconcile/controller.js';
import type { Resolver } from '../../operator/src/resolve/resolver.js';
import { waitUntil } from '../harness/process.js';

const D1 = `sha256:${'1'.repeat(64)}` as Digest;
const D2 = `sha256:${'2'.repeat(64)}` as Digest;
const NS = 'team-a';
const WAIT = { timeoutMs: 60_000 };

/** A resolver answering from a table (tag → digest), as the registry would. */
function tableResolver(tags: Map<string, Digest>): Resolver {
  const fake = {
    resolveTag: async (repository: string, tag: string) => {
      const digest = tags.get(`${repository}:${tag}`);
      if (!digest)
        throw Object.assign(new Error(`${repository}:${tag} not found`), { code: 'PW_ERR_MANIFEST_UNKNOWN' });
      return { digest, mediaType: 'application/vnd.oci.image.manifest.v1+json' };
    },
    describe: async () => ({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      bytesByPlatform: { 'linux/amd64': 1_000 },
    }),
    close: async () => undefined,
  };
  return fake as unknown as Resolver;
}

function node(name: string, labels: Record<string, string> = {}, gated = false): V1Node {
  return {
    metadata: { name, labels: { 'kubernetes.io/os': 'linux', 'kubernetes.io/arch': 'amd64', ...labels } },
    spec: gated ? { taints: [{ key: STARTUP_TAINT_KEY, effect: 'NoSchedule' }] } : {},
    status: {
      conditions: [{ type: 'Ready', status: 'True' }],
      nodeInfo: { architecture: 'amd64', operatingSystem: 'linux' } as V1NodeSystemInfo,
    },
  };
}

function prewarm(name: string, spec: ImagePrewarm['spec']): ImagePrewarm {
  return { apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace: NS, uid: `uid-${name}` }, spec };
}

const result = {
  phase: 'warm' as const,
  manifestDigest: D1,
  bytesTotal: 1_000,
  bytesFromRegistry: 1_000,
  bytesFromPeers: 0,
  bytesAlreadyPresent: 0,
  durationMs: 5,
};

function setup(tags: Map<string, Digest>, opts: ConstructorParameters<typeof PrewarmController>[1] = {}) {
  const kube = new MemoryKubePort();
  const jobs = new MemoryJobQueue();
  const controller = new PrewarmController(
    {
      kube,
      jobs,
      resolver: tableResolver(tags),
      metrics: new OperatorMetrics(new Registry()),
      log: silentLogger(),
    },
    { resyncMs: 60_000, progressPollMs: 100, resolveRetryMs: 200, ...opts },
  );
  const ac = new AbortController();
  const running = controller.run(ac.signal);
  const stop = async () => {
    ac.abort();
    await running.catch(() => undefined);
  };
  const status = (name: string) => kube.prewarms.get(name, NS)?.status;
  /** Waits for `probe`; a timeout prints the status and the jobs as last seen. */
  const until = (what: string, name: string, probe: () => boolean) =>
    waitUntil(
      what,
      async () => {
        if (probe()) return true;
        throw new Error(
          `status ${JSON.stringify(status(name))}; jobs ${JSON.stringify([...jobs.jobs.entries()])}`,
        );
      },
      WAIT,
    );
  return { kube, jobs, stop, status, until };
}

describe('PrewarmController (in-memory ports)', () => {
  const stops: (() => Promise<void>)[] = [];
  after(async () => {
    for (const s of stops) await s();
  });

  test('resolves the tag, enqueues one job per targeted node, reports warm once the agents complete', async () => {
    const env = setup(new Map([['registry.example/app:v1', D1]]));
    stops.push(env.stop);
    env.kube.applyNode(node('n1', { pool: 'a' }));
    env.kube.applyNode(node('n2', { pool: 'a' }));
    env.kube.applyNode(node('other', { pool: 'b' }));
    env.kube.applyPrewarm(
      prewarm('app', {
        images: [{ repository: 'registry.example/app', tag: 'v1' }],
        nodeSelector: { pool: 'a' },
      }),
    );

    await env.until('two jobs', 'app', () => env.jobs.jobs.size === 2);
    assert.deepEqual(env.jobs.idsOf('other'), [], 'a node the selector excludes gets nothing');
    for (const j of env.jobs.jobs.values()) {
      assert.equal(j.data.digest, D1);
      assert.deepEqual(
        j.data.owners.map((o) => o.uid),
        ['uid-app'],
      );
    }
    assert.ok(env.kube.prewarms.get('app', NS)?.metadata.finalizers?.includes(FINALIZER));
    await env.until('status 0/2', 'app', () => env.status('app')?.warm === '0/2');
    assert.equal(env.status('app')?.images?.[0]?.digest, D1);

    for (const id of env.jobs.jobs.keys()) env.jobs.complete(id, result);
    await env.until('warm 2/2 and Ready', 'app', () => {
      const s = env.status('app');
      return s?.warm === '2/2' && s.conditions?.find((c) => c.type === 'Ready')?.status === 'True';
    });
  });

  test('a failed job: the node and the agent reason in the status, then a retry after failedRetryAfterMs', async () => {
    const env = setup(new Map([['registry.example/big:v1', D2]]), { failedRetryAfterMs: 500 });
    stops.push(env.stop);
    env.kube.applyNode(node('n1'));
    env.kube.applyPrewarm(prewarm('big', { images: [{ repository: 'registry.example/big', tag: 'v1' }] }));
    await env.until('one job', 'big', () => env.jobs.jobs.size === 1);
    const [id] = [...env.jobs.jobs.keys()] as [string];
    env.jobs.start(id);
    env.jobs.fail(id, 'PW_ERR_DISK_FULL: not enough room within the store budget');
    await env.until('failing node in status', 'big', () =>
      (env.status('big')?.images?.[0]?.failingNodes ?? []).some(
        (f) => f.node === 'n1' && f.reason === 'PW_ERR_DISK_FULL',
      ),
    );
    assert.equal(env.status('big')?.conditions?.find((c) => c.type === 'Ready')?.status, 'False');
    await env.until('the job retried', 'big', () => env.jobs.jobs.get(id)?.state === 'pending');
  });

  test('a gated node keeps the startup taint until its job completes, then it is removed', async () => {
    const env = setup(new Map([['registry.example/app:v1', D1]]));
    stops.push(env.stop);
    env.kube.applyPrewarm(
      prewarm('gate', {
        images: [{ repository: 'registry.example/app', tag: 'v1' }],
        startup: { gateNodes: true },
      }),
    );
    await env.until('resolved', 'gate', () => env.status('gate')?.images?.[0]?.digest === D1);
    env.kube.applyNode(node('g1', {}, true));
    const tainted = () => (env.kube.nodes.get('g1')?.taints ?? []).some((t) => t.key === STARTUP_TAINT_KEY);
    await env.until('job for the gated node', 'gate', () => env.jobs.idsOf('g1').length === 1);
    assert.equal(tainted(), true, 'held while the job is pending');
    env.jobs.complete(env.jobs.idsOf('g1')[0]!, result);
    await env.until('taint removed', 'gate', () => !tainted());
    assert.equal(env.status('gate')?.expiredGates, undefined, 'released because warm');
  });

  test('deleting the ImagePrewarm unpins its jobs and removes the finalizer', async () => {
    const env = setup(new Map([['registry.example/app:v1', D1]]));
    stops.push(env.stop);
    env.kube.applyNode(node('n1'));
    env.kube.applyPrewarm(prewarm('gone', { images: [{ repository: 'registry.example/app', tag: 'v1' }] }));
    await env.until('one job', 'gone', () => env.jobs.jobs.size === 1);
    await env.until(
      'finalizer',
      'gone',
      () => !!env.kube.prewarms.get('gone', NS)?.metadata.finalizers?.includes(FINALIZER),
    );
    env.kube.deletePrewarm(NS, 'gone');
    await env.until(
      'object and jobs gone',
      'gone',
      () => !env.kube.prewarms.get('gone', NS) && env.jobs.jobs.size === 0,
    );
  });
});
