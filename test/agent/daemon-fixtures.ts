/**
 * Shared pieces of the agent daemon tests: enqueueing jobs exactly as the operator does
 * (oci/src/job-contract.ts: per-node queue, job id from digest/node/mode, jobs kept after
 * completion), running an agent in-process or as a real child process, and reading jobs.
 */
import { join } from 'node:path';
import { type JobsOptions, Queue } from 'bullmq';
import { Redis } from 'ioredis';
import pino from 'pino';
import { AgentDaemon } from '../../agent/src/daemon/agent.js';
import { type AgentConfig, loadConfig } from '../../agent/src/daemon/config.js';
import type { RuntimeImageService } from '../../agent/src/runtime/runtime-port.js';
import type { Digest } from '../../oci/src/digest.js';
import {
  nodeQueueName,
  PREWARM_JOB_NAME,
  type PrewarmJobData,
  type PrewarmMode,
  type PrewarmOwnerRef,
  prewarmJobId,
  QUEUE_PREFIX,
} from '../../oci/src/job-contract.js';
import {
  type Cleanup,
  freePort,
  type ManagedProcess,
  makeTempDir,
  type RedisHandle,
  type RedisOptions,
  spawnProcess,
  startRedis,
  waitForHttp,
  waitUntil,
} from '../harness/index.js';

export const MiB = 1024 * 1024;

/** A connection for test-side BullMQ objects (the agent makes its own). */
export function testRedis(url: string): Redis {
  const r = new Redis(url, { maxRetriesPerRequest: null });
  r.on('error', () => undefined);
  return r;
}

/** A real Redis and a `testRedis` connection to it; both closed by `cleanup`. */
export async function startTestRedis(
  cleanup: Cleanup,
  opts: RedisOptions = {},
): Promise<{ redis: RedisHandle; conn: Redis }> {
  const redis = await startRedis(opts);
  cleanup.defer(() => redis.close());
  const conn = testRedis(redis.url);
  cleanup.defer(() => conn.disconnect());
  return { redis, conn };
}

export interface EnqueueSpec {
  node: string;
  /** `host:port/repo` */
  repository: string;
  digest: string;
  tag?: string;
  mode?: PrewarmMode;
  owners?: PrewarmOwnerRef[];
  platform?: string;
}

let ownerSeq = 0;
export function owner(name = `ip-${++ownerSeq}`): PrewarmOwnerRef {
  return { namespace: 'default', name, uid: `uid-${name}` };
}

/** Adds a prewarm job as the operator's BullJobQueue does; returns its id. */
export async function enqueue(
  redis: Redis,
  spec: EnqueueSpec,
  opts: Pick<JobsOptions, 'attempts' | 'backoff'> = {},
): Promise<string> {
  const mode = spec.mode ?? 'cache';
  const data: PrewarmJobData = {
    v: 1,
    owners: spec.owners ?? [owner()],
    repository: spec.repository,
    ...(spec.tag ? { tag: spec.tag } : {}),
    digest: spec.digest as Digest,
    platform: spec.platform ?? 'linux/amd64',
    node: spec.node,
    mode,
    triggeredAt: Date.now(),
    trigger: 'spec',
  };
  const jobId = prewarmJobId(data.digest, spec.node, mode);
  const queue = new Queue(nodeQueueName(spec.node), { connection: redis, prefix: QUEUE_PREFIX });
  try {
    await queue.add(PREWARM_JOB_NAME, data, {
      jobId,
      attempts: opts.attempts ?? 3,
      backoff: opts.backoff ?? { type: 'exponential', delay: 200 },
      removeOnComplete: false,
      removeOnFail: false,
    });
  } finally {
    await queue.close();
  }
  return jobId;
}

/** A job's hash fields the operator reads. */
export interface JobView {
  state: 'completed' | 'failed' | 'other' | 'missing';
  data?: PrewarmJobData;
  progress?: unknown;
  returnvalue?: unknown;
  failedReason?: string;
  attemptsMade: number;
  processedBy?: string;
}

export async function readJob(redis: Redis, node: string, jobId: string): Promise<JobView> {
  const key = `${QUEUE_PREFIX}:${nodeQueueName(node)}:${jobId}`;
  const [data, progress, returnvalue, failedReason, finishedOn, attemptsMade, processedBy] =
    await redis.hmget(key, 'data', 'progress', 'returnvalue', 'failedReason', 'finishedOn', 'atm', 'pb');
  if (data === null) return { state: 'missing', attemptsMade: 0 };
  const parse = (s: string | null | undefined) => (s ? (JSON.parse(s) as unknown) : undefined);
  const rv = parse(returnvalue);
  const state = finishedOn ? (rv !== undefined && rv !== null ? 'completed' : 'failed') : 'other';
  return {
    state,
    data: parse(data) as PrewarmJobData,
    progress: parse(progress),
    returnvalue: rv,
    ...(failedReason ? { failedReason } : {}),
    attemptsMade: Number(attemptsMade ?? 0),
    ...(processedBy ? { processedBy } : {}),
  };
}

/** Waits until the job is completed or failed (finally); returns its view. */
export async function waitForJobEnd(
  redis: Redis,
  node: string,
  jobId: string,
  opts: { timeoutMs?: number; process?: ManagedProcess } = {},
): Promise<JobView> {
  let view: JobView = { state: 'missing', attemptsMade: 0 };
  await waitUntil(
    `job ${jobId} finished`,
    async () => {
      view = await readJob(redis, node, jobId);
      return view.state === 'completed' || view.state === 'failed';
    },
    {
      timeoutMs: opts.timeoutMs ?? 60_000,
      intervalMs: 100,
      ...(opts.process ? { process: opts.process } : {}),
    },
  );
  return view;
}

/**
 * Environment for an agent under test: fast locks, no fsync, no containerd, free ports,
 * registries on 127.0.0.1 allowed.
 */
export function agentEnv(o: {
  node: string;
  store: string;
  redisUrl: string;
  httpPort?: number;
  extra?: Record<string, string>;
}): Record<string, string> {
  return {
    KUBE_PREWARM_NODE_NAME: o.node,
    KUBE_PREWARM_STORE: o.store,
    KUBE_PREWARM_STORE_FSYNC: 'false',
    KUBE_PREWARM_REDIS_URL: o.redisUrl,
    KUBE_PREWARM_HTTP_HOST: '127.0.0.1',
    KUBE_PREWARM_HTTP_PORT: String(o.httpPort ?? 0),
    KUBE_PREWARM_MIRROR_PORT: '0',
    // Every test registry listens on 127.0.0.1: allowed explicitly (the default, _default,
    // reaches public registries only).
    KUBE_PREWARM_ALLOWED_REGISTRIES: '127.0.0.1',
    KUBE_PREWARM_CONTAINERD_SOCKET: '',
    KUBE_PREWARM_JOB_LOCK: '3s',
    KUBE_PREWARM_STALLED_INTERVAL: '2s',
    KUBE_PREWARM_GC_INTERVAL: '10m',
    KUBE_PREWARM_RECHECK_INTERVAL: '10m',
    KUBE_PREWARM_SHUTDOWN_TIMEOUT: '10s',
    KUBE_PREWARM_CHUNK_SIZE: '2MiB',
    KUBE_PREWARM_LOG_LEVEL: 'info',
    ...o.extra,
  };
}

/** An in-process agent with its logs in a file under `dir`. */
export async function startAgent(
  cleanup: Cleanup,
  o: {
    node: string;
    redisUrl: string;
    store?: string;
    extra?: Record<string, string>;
    runtime?: RuntimeImageService | null;
  },
): Promise<{ daemon: AgentDaemon; config: AgentConfig; store: string; url: string; dir: string }> {
  const dir = await makeTempDir(`agent-${o.node}`, cleanup);
  const store = o.store ?? join(dir, 'store');
  const config = loadConfig(agentEnv({ node: o.node, store, redisUrl: o.redisUrl, extra: o.extra ?? {} }));
  const logger = pino({ level: 'debug' }, pino.destination({ dest: join(dir, 'agent.log'), sync: true }));
  // No runtime unless given, or configured through KUBE_PREWARM_CONTAINERD_SOCKET in `extra`.
  const daemon = new AgentDaemon(config, {
    logger,
    ...(o.runtime !== undefined ? { runtime: o.runtime } : {}),
  });
  cleanup.defer(() => daemon.close());
  await daemon.start();
  const a = daemon.httpAddress!;
  return { daemon, config, store, url: `http://${a.address}:${a.port}`, dir };
}

export interface AgentProcess {
  proc: ManagedProcess;
  /** `http://127.0.0.1:<port>` of /metrics, /healthz, /readyz. */
  url: string;
  logPath: string;
}

/**
 * Starts the agent as a real child process through the CLI (`kube-prewarm agent`,
 * `node --import tsx agent/src/cli/run.ts agent`) and waits for /readyz.
 */
export async function spawnAgent(o: {
  node: string;
  store: string;
  redisUrl: string;
  logDir: string;
  extra?: Record<string, string>;
  /** Wait for /readyz (default true). */
  ready?: boolean;
}): Promise<AgentProcess> {
  const httpPort = await freePort();
  const logPath = join(o.logDir, `agent-${o.node}.log`);
  const env = { ...process.env, ...agentEnv({ ...o, httpPort, extra: o.extra ?? {} }) };
  const proc = await spawnProcess({
    name: `agent ${o.node}`,
    command: process.execPath,
    args: ['--import', 'tsx', 'agent/src/cli/run.ts', 'agent'],
    logPath,
    env,
  });
  const url = `http://127.0.0.1:${httpPort}`;
  if (o.ready ?? true)
    await waitForHttp(`${url}/readyz`, { process: proc, timeoutMs: 30_000, ready: (s) => s === 200 });
  return { proc, url, logPath };
}

/** The value of one metric series from a Prometheus text exposition (0 when absent). */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) total += Number(m[3]);
  }
  return total;
}
