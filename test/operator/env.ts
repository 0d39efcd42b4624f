/**
 * Shared setup for the operator's integration tests: a real kube-apiserver + etcd, a real
 * Redis and a real registry, helpers to create ImagePrewarms and Nodes, to run the
 * operator in this process or as a child process (operator/src/main.ts), and to read the
 * per-node queues directly.
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CoordinationV1Api, CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import type { Digest } from '../../oci/src/digest.js';
import { nodeQueueName, type PrewarmJobData, QUEUE_PREFIX } from '../../oci/src/job-contract.js';
import {
  GROUP,
  type ImagePrewarm,
  type ImagePrewarmSpec,
  PLURAL,
  VERSION,
} from '../../operator/src/api/types.js';
import { ClientNodePort } from '../../operator/src/kube/client-node-port.js';
import { type Logger, silentLogger } from '../../operator/src/logger.js';
import { Operator, type OperatorOptions } from '../../operator/src/operator.js';
import { Resolver } from '../../operator/src/resolve/resolver.js';
import { type KubeHandle, REPO_ROOT, startKube } from '../harness/kube.js';
import { type ManagedProcess, spawnProcess } from '../harness/process.js';
import { type RedisHandle, startRedis } from '../harness/redis.js';
import { type RegistryHandle, startRegistry } from '../harness/registry.js';
import { type Cleanup, freePort } from '../harness/tmp.js';

export const NS = 'default';

/** Polls `fn` until it returns a value other than undefined/false; the error names `what`. */
export async function eventually<T>(
  what: string,
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    }
    await sleep(100);
  }
}

export function prewarmApi(kc: KubeConfig): {
  create(name: string, spec: ImagePrewarmSpec, annotations?: Record<string, string>): Promise<ImagePrewarm>;
  get(name: string): Promise<ImagePrewarm | undefined>;
  patch(name: string, body: Record<string, unknown>): Promise<ImagePrewarm>;
  remove(name: string): Promise<void>;
} {
  const api = kc.makeApiClient(CustomObjectsApi);
  const base = { group: GROUP, version: VERSION, namespace: NS, plural: PLURAL };
  return {
    create: async (name, spec, annotations) =>
      (await api.createNamespacedCustomObject({
        ...base,
        body: {
          apiVersion: `${GROUP}/${VERSION}`,
          kind: 'ImagePrewarm',
          metadata: { name, ...(annotations ? { annotations } : {}) },
          spec,
        },
      })) as ImagePrewarm,
    get: async (name) => {
      try {
        return (await api.getNamespacedCustomObject({ ...base, name })) as ImagePrewarm;
      } catch (err) {
        if ((err as { code?: number }).code === 404) return undefined;
        throw err;
      }
    },
    patch: async (name, body) => {
      const { PatchStrategy, setHeaderOptions } = await import('@kubernetes/client-node');
      return (await api.patchNamespacedCustomObject(
        { ...base, name, body },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      )) as ImagePrewarm;
    },
    remove: async (name) => {
      await api.deleteNamespacedCustomObject({ ...base, name });
    },
  };
}

export function condition(
  p: ImagePrewarm | undefined,
  type: string,
): { status: string; reason: string; message: string } | undefined {
  return p?.status?.conditions?.find((c) => c.type === type);
}

export function redisConnection(url: string): Redis {
  const r = new Redis(url, { maxRetriesPerRequest: null, enableAutoPipelining: true });
  r.on('error', () => {
    // Surfaces on the awaited commands; reconnect noise at teardown is expected.
  });
  return r;
}

/** Reads a node's queue directly (what the agent on that node would see). */
export class QueueReader {
  readonly #redis: Redis;
  readonly #queues = new Map<string, Queue>();
  constructor(redis: Redis) {
    this.#redis = redis;
  }

  queue(node: string): Queue {
    let q = this.#queues.get(node);
    if (!q) {
      q = new Queue(nodeQueueName(node), { connection: this.#redis, prefix: QUEUE_PREFIX });
      this.#queues.set(node, q);
    }
    return q;
  }

  /** Every job in the node's queue, any state, with its state. */
  async jobs(
    node: string,
  ): Promise<{ id: string; state: string; data: PrewarmJobData; returnvalue: unknown }[]> {
    const q = this.queue(node);
    const jobs = await q.getJobs(['waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed']);
    return Promise.all(
      jobs.map(async (j) => ({
        id: j.id ?? '',
        state: await j.getState(),
        data: j.data as PrewarmJobData,
        returnvalue: j.returnvalue,
      })),
    );
  }

  async job(node: string, id: string): Promise<{ state: string; data: PrewarmJobData } | undefined> {
    const j = await this.queue(node).getJob(id);
    if (!j) return undefined;
    return { state: await j.getState(), data: j.data as PrewarmJobData };
  }

  async close(): Promise<void> {
    await Promise.all([...this.#queues.values()].map((q) => q.close()));
  }
}

export interface InProcessOperator {
  operator: Operator;
  redis: Redis;
  metrics: Registry;
  close(): Promise<void>;
}

/** Starts an Operator in this process against the given cluster and Redis. */
export async function startOperator(
  kc: KubeConfig,
  redisUrl: string,
  opts: Partial<OperatorOptions> = {},
): Promise<InProcessOperator> {
  const redis = redisConnection(redisUrl);
  const metrics = new Registry();
  // Test registries listen on 127.0.0.1: allowed explicitly (the default reaches public registries only).
  const resolver = new Resolver({ allowedRegistries: ['127.0.0.1'] });
  // KUBE_PREWARM_TEST_LOG=debug shows the operator's logs on stderr when a test needs debugging.
  const level = process.env.KUBE_PREWARM_TEST_LOG;
  const log: Logger = level ? pino({ level }, pino.destination(2)) : silentLogger();
  const operator = new Operator(
    { kube: new ClientNodePort(kc, log), redis, resolver, log, metrics },
    {
      identity: opts.identity ?? `test-${Math.random().toString(36).slice(2, 8)}`,
      leaseNamespace: NS,
      leaseName: opts.leaseName ?? 'kube-prewarm-test',
      leaseDurationMs: 4_000,
      renewDeadlineMs: 3_000,
      retryPeriodMs: 500,
      ...opts,
      controller: {
        progressPollMs: 250,
        failedRetryAfterMs: 600_000,
        resolveRetryMs: 500,
        ...opts.controller,
      },
      jobQueue: { attempts: 1, backoffMs: 200, ...opts.jobQueue },
    },
  );
  await operator.start();
  return {
    operator,
    redis,
    metrics,
    async close() {
      await operator.close();
      await resolver.close();
      redis.disconnect();
    },
  };
}

/** Runs operator/src/main.ts as a child process with `env` on top of the defaults given here. */
export async function spawnOperator(
  name: string,
  kubeconfigPath: string,
  redisUrl: string,
  logDir: string,
  env: Record<string, string> = {},
): Promise<ManagedProcess> {
  return spawnProcess({
    name,
    command: process.execPath,
    args: ['--import', 'tsx', join(REPO_ROOT, 'operator/src/main.ts')],
    logPath: join(logDir, `${name}.log`),
    cwd: REPO_ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/root',
      KUBECONFIG: kubeconfigPath,
      KUBE_PREWARM_REDIS_URL: redisUrl,
      KUBE_PREWARM_LEASE_NAMESPACE: NS,
      KUBE_PREWARM_HTTP_HOST: '127.0.0.1',
      KUBE_PREWARM_HTTP_PORT: '0',
      KUBE_PREWARM_LOG_LEVEL: 'debug',
      KUBE_PREWARM_PROGRESS_POLL_MS: '250',
      KUBE_PREWARM_JOB_ATTEMPTS: '1',
      KUBE_PREWARM_ALLOWED_REGISTRIES: '127.0.0.1',
      ...env,
    },
  });
}

/**
 * Runs the operator process with the distribution webhook enabled (a fresh shared secret)
 * on a free port, and waits until it is ready. Point a registry's notifications at
 * `url` with `Authorization: Bearer <secret>`.
 */
export async function spawnOperatorWithWebhooks(
  kubeconfigPath: string,
  redisUrl: string,
  dir: string,
  leaseName: string,
): Promise<{ operator: ManagedProcess; port: number; url: string; secret: string }> {
  const secret = randomBytes(24).toString('hex');
  const webhooksConfig = join(dir, 'webhooks.json');
  await writeFile(webhooksConfig, JSON.stringify({ sources: { distribution: { secrets: [secret] } } }));
  const port = await freePort();
  const operator = await spawnOperator('operator', kubeconfigPath, redisUrl, dir, {
    KUBE_PREWARM_LEASE_NAME: leaseName,
    KUBE_PREWARM_HTTP_PORT: String(port),
    KUBE_PREWARM_WEBHOOKS_CONFIG: webhooksConfig,
  });
  await eventually(
    'operator ready',
    async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200,
  );
  return { operator, port, url: `http://127.0.0.1:${port}/webhooks/distribution`, secret };
}

/** The real components every operator test needs: a registry, Redis and a kube-apiserver, torn down by `cleanup`. */
export async function startCluster(
  cleanup: Cleanup,
): Promise<{ registry: RegistryHandle; redis: RedisHandle; kube: KubeHandle }> {
  const registry = await startRegistry();
  cleanup.defer(() => registry.close());
  const redis = await startRedis();
  cleanup.defer(() => redis.close());
  const kube = await startKube();
  cleanup.defer(() => kube.stop());
  return { registry, redis, kube };
}

/** The Lease's holder, or '' when none. */
export async function leaseHolder(kc: KubeConfig, name: string): Promise<{ holder: string; lease: unknown }> {
  try {
    const lease = await kc.makeApiClient(CoordinationV1Api).readNamespacedLease({ namespace: NS, name });
    return { holder: lease.spec?.holderIdentity ?? '', lease };
  } catch (err) {
    if ((err as { code?: number }).code === 404) return { holder: '', lease: undefined };
    throw err;
  }
}

export function asDigest(s: string): Digest {
  return s as Digest;
}
