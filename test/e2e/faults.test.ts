/**
 * Faults on the real node (issue 10, "Bad input / faults to cover on the real node"), one
 * cluster for the file, kube-prewarm installed with its chart:
 *
 * 1. The agent killed mid-warm, twice: its process SIGKILLed inside the node (kubelet
 *    restarts the container), then its pod deleted with grace 0 (the DaemonSet makes a new
 *    one). The warm resumes from the store's journals and completes; no blob is fetched
 *    twice: the bytes fetched again are bounded by what the fetcher had not made durable
 *    (connections × (8 MiB between durable records + 1 MiB write batch + socket buffers))
 *    per interruption, and the store holds exactly the image's blobs, digest-verified.
 * 2. The Redis pod deleted while jobs run and wait: the StatefulSet brings it back with its
 *    AOF on the PersistentVolume, an ImagePrewarm created meanwhile is rolled out too, every
 *    ImagePrewarm becomes Ready, every job is completed in Redis, none failed, no blob was
 *    fetched twice.
 * 3. The registry down after the warm: a Deployment by tag still starts, in `cache` mode
 *    (the mirror answers the tag from the store's record because the upstream is
 *    unreachable) and in `unpack` mode (the image is present already).
 * 4. The mirror killed while a pod pulls through it (the agent's process SIGKILLed while
 *    containerd streams a blob the agent is still downloading): the pod still starts, and
 *    the warm still completes.
 *
 * The agent runs with KUBE_PREWARM_MAX_CONNECTIONS=4 so that the re-fetch bound is far
 * below the size of a blob (with the default 32 it would exceed a 256 MiB image).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue } from 'bullmq';
import { Redis, type RedisOptions } from 'ioredis';
import { BLOB_FETCHER_DEFAULTS } from '../../agent/src/fetch/blob-fetcher.js';
import { nodeQueueName, prewarmJobId, QUEUE_PREFIX } from '../../oci/src/job-contract.js';
import type { ClusterHandle } from '../harness/cluster.js';
import type { ClusterNode } from '../harness/cluster-node.js';
import { type PushedImage, pushImage } from '../harness/images.js';
import { describePods, type E2eEnv, FULL, NAMESPACE, prewarmPath, startE2e, waitForState } from './env.js';
import {
  condition,
  create,
  ensureNamespace,
  eventLines,
  get,
  type Json,
  sleeperDeployment,
  waitAppRunning,
  waitPrewarmReady,
} from './kube.js';

const MiB = 1024 * 1024;
const NS = 'faults';
const BLOBS = /\/v2\/.+\/blobs\/sha256:/;
const STORE = '/var/lib/kube-prewarm/store';

/** Parallel ranged requests of the whole node (the agent's KUBE_PREWARM_MAX_CONNECTIONS here). */
const MAX_CONNECTIONS = 4;
/**
 * What one connection can lose when its agent dies, as the proxy counts it: the bytes since
 * its last durable record (`recordEveryBytes`) and the batch not yet written
 * (`writeBatchBytes`), plus what sat in the socket buffers between the proxy and the agent
 * (sent by the proxy, never read by the agent: up to the agent's receive buffer and the
 * proxy's send buffer, which the kernel grows to `tcp_rmem`/`tcp_wmem` max under the capped,
 * bursty reads), and never more than the range it holds (`chunkSize`, the agent's
 * KUBE_PREWARM_CHUNK_SIZE default). Each fault's bytes fetched again are held to this bound;
 * the numbers it is made of are printed.
 */
async function lostPerConnection(node: ClusterNode): Promise<{ bytes: number; why: string }> {
  const max = (text: string): number => Number(text.trim().split(/\s+/)[2]);
  const rmem = max(await node.run('cat', ['/proc/sys/net/ipv4/tcp_rmem']));
  const wmem = max(await readFile('/proc/sys/net/ipv4/tcp_wmem', 'utf8'));
  const { recordEveryBytes, writeBatchBytes, chunkSize } = BLOB_FETCHER_DEFAULTS;
  const bytes = Math.min(chunkSize, recordEveryBytes + writeBatchBytes + rmem + wmem);
  return {
    bytes,
    why:
      `min(chunk ${fmt(chunkSize)}, record every ${fmt(recordEveryBytes)} + batch ${fmt(writeBatchBytes)} + ` +
      `agent tcp_rmem max ${fmt(rmem)} + proxy tcp_wmem max ${fmt(wmem)}) = ${fmt(bytes)}`,
  };
}

const fmt = (n: number): string => `${(n / MiB).toFixed(1)} MiB`;
const blobPath = (digest: string): RegExp => new RegExp(`/blobs/${digest}$`);

/** The blobs of a pushed single-platform image, manifest included (the store keeps it too). */
function blobsOf(img: PushedImage): { digest: string; size: number }[] {
  const m = img.manifests[0]!;
  return [{ digest: m.digest, size: m.size }, m.config, ...m.layers];
}

type ProxyEntry = ClusterHandle['proxy']['stats']['log'][number];

/**
 * A GET by containerd itself: one without Range, or an ingest resumed with an open-ended one
 * (`bytes=N-`). The agent's requests always name both ends.
 */
const byContainerd = (e: ProxyEntry): boolean =>
  e.method === 'GET' && (!e.range || /^bytes=\d+-$/.test(e.range));

/**
 * Bytes the proxy served for one blob, and how many of them it served more than once
 * (from each GET's Range start and the bytes actually sent: the overlap of those intervals).
 */
function servedTwice(
  c: ClusterHandle,
  digest: string,
  upTo = c.proxy.stats.log.length,
  include: (e: ProxyEntry) => boolean = () => true,
): { sent: number; unique: number; again: number } {
  const re = blobPath(digest);
  const spans: [number, number][] = [];
  let sent = 0;
  for (const e of c.proxy.stats.log.slice(0, upTo)) {
    if (e.method !== 'GET' || !re.test(e.path) || e.bytes === 0 || !include(e)) continue;
    const start = Number(/^bytes=(\d+)-/.exec(e.range ?? '')?.[1] ?? 0);
    spans.push([start, start + e.bytes]);
    sent += e.bytes;
  }
  spans.sort((a, b) => a[0] - b[0]);
  let unique = 0;
  let end = -1;
  for (const [s, e] of spans) {
    if (e <= end) continue;
    unique += e - Math.max(s, end);
    end = e;
  }
  return { sent, unique, again: sent - unique };
}

/** Committed blobs in the node's store (`sha256:<hex>`). */
async function storeBlobs(node: ClusterNode): Promise<Set<string>> {
  const names = await readdir(node.hostPath(`${STORE}/blobs/sha256`)).catch(() => [] as string[]);
  return new Set(names.map((n) => `sha256:${n}`));
}

/** Problems with `blobs` in the node's store: missing, wrong size, wrong digest, partial left. */
async function storeProblems(
  node: ClusterNode,
  blobs: { digest: string; size: number }[],
): Promise<string[]> {
  const out: string[] = [];
  for (const b of blobs) {
    const hex = /^sha256:([a-f0-9]{64})$/.exec(b.digest)?.[1];
    if (!hex) throw new Error(`not a sha256 digest: ${b.digest}`);
    const file = node.hostPath(`${STORE}/blobs/sha256/${hex}`);
    const st = await stat(file).catch(() => undefined);
    if (!st) {
      out.push(`${b.digest}: not committed`);
      continue;
    }
    if (st.size !== b.size) out.push(`${b.digest}: ${st.size} B, expected ${b.size}`);
    const h = createHash('sha256');
    for await (const chunk of createReadStream(file, { highWaterMark: 4 * MiB })) h.update(chunk as Buffer);
    const got = `sha256:${h.digest('hex')}`;
    if (got !== b.digest) out.push(`${b.digest}: content hashes to ${got}`);
    if (await stat(node.hostPath(`${STORE}/ingest/${hex}`)).catch(() => undefined))
      out.push(`${b.digest}: a partial download is left in ingest/`);
  }
  return out;
}

/** The node's agent pod (not being deleted), if any. */
async function agentPod(c: ClusterHandle, node: string): Promise<Json | undefined> {
  const pods = (
    await get(
      c,
      `/api/v1/namespaces/${NAMESPACE}/pods?labelSelector=${encodeURIComponent('app.kubernetes.io/component=agent')}`,
    )
  ).items as Json[];
  return pods.find((p) => p.spec.nodeName === node && !p.metadata.deletionTimestamp);
}

function agentStatus(pod: Json): Json | undefined {
  return (pod?.status?.containerStatuses ?? []).find((s: Json) => s.name === 'agent');
}

/**
 * Log lines of a component's containers (`app.kubernetes.io/component=<component>`), the
 * previous run's too: pino records at `minLevel` or above (or matching `match`), other
 * lines (Redis's own) when `raw`. For the diagnosis a failed or surprising run prints.
 */
async function componentLog(
  c: ClusterHandle,
  component: string,
  o: { container?: string; minLevel?: number; match?: RegExp; raw?: boolean } = {},
): Promise<string[]> {
  const pods = (
    await get(
      c,
      `/api/v1/namespaces/${NAMESPACE}/pods?labelSelector=${encodeURIComponent(`app.kubernetes.io/component=${component}`)}`,
    )
  ).items as Json[];
  const out: string[] = [];
  for (const pod of pods) {
    for (const previous of [true, false]) {
      const q = `${o.container ? `container=${o.container}&` : ''}tailLines=400${previous ? '&previous=true' : ''}`;
      const r = await c.kube.request(
        'GET',
        `/api/v1/namespaces/${NAMESPACE}/pods/${pod.metadata.name}/log?${q}`,
      );
      if (r.status !== 200) continue;
      const tag = `${pod.metadata.name}${previous ? ' (previous)' : ''}`;
      for (const line of String(r.body).split('\n')) {
        if (!line) continue;
        let rec: { level?: number; msg?: string } | undefined;
        try {
          rec = JSON.parse(line) as { level?: number; msg?: string };
        } catch {
          rec = undefined;
        }
        if (rec && typeof rec.level === 'number') {
          if (rec.level >= (o.minLevel ?? 40) || o.match?.test(line))
            out.push(`${tag}: ${line.slice(0, 600)}`);
        } else if (o.raw) out.push(`${tag}: ${line.slice(0, 600)}`);
      }
    }
  }
  return out;
}

/** Waits until the node's agent container is ready (in a pod other than `notUid`, with more restarts than `restarts`). */
async function waitAgentBack(
  c: ClusterHandle,
  node: string,
  o: { notUid?: string; restartsAbove?: number },
): Promise<Json> {
  try {
    return await waitForState(
      `the agent of ${node} back and ready`,
      async () => (await agentPod(c, node)) ?? 'no agent pod',
      (p: Json) =>
        typeof p === 'object' &&
        (o.notUid === undefined || p.metadata.uid !== o.notUid) &&
        (o.restartsAbove === undefined || (agentStatus(p)?.restartCount ?? 0) > o.restartsAbove) &&
        agentStatus(p)?.ready === true,
      300_000,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${await describePods(c)}`);
  }
}

/** SIGKILLs the agent container's process inside the node (containerd task kill). */
async function killAgentProcess(c: ClusterHandle, node: ClusterNode): Promise<Json> {
  const pod = await agentPod(c, node.name);
  const id = String(agentStatus(pod)?.containerID ?? '').replace(/^containerd:\/\//, '');
  assert.ok(id, `agent container of ${node.name}: ${JSON.stringify(pod?.status)}`);
  await node.containerd.ctr(['tasks', 'kill', '--signal', 'SIGKILL', id]);
  return pod;
}

/** Waits until the proxy has served at least `bytes` of `digest`. */
async function waitServed(c: ClusterHandle, digest: string, bytes: number, what: string): Promise<number> {
  return waitForState(
    what,
    async () => c.proxy.bytes(blobPath(digest)),
    (n) => n >= bytes,
    600_000,
  );
}

// ---- Redis, as the chart's operator reaches it (auth and all), for the queue state ----

/** ioredis options for the release's Redis as its operator is configured (read from the Deployment). */
async function redisOptions(c: ClusterHandle): Promise<RedisOptions> {
  const dep = await get(c, `/apis/apps/v1/namespaces/${NAMESPACE}/deployments/${FULL}-operator`);
  const container = (dep.spec.template.spec.containers as Json[]).find((x) =>
    (x.env ?? []).some((e: Json) => e.name === 'KUBE_PREWARM_REDIS_URL'),
  );
  const vals = new Map<string, string>();
  for (const e of (container?.env ?? []) as Json[]) {
    if (typeof e.value === 'string') vals.set(e.name, e.value);
    const ref = e.valueFrom?.secretKeyRef;
    if (ref) {
      const s = await get(c, `/api/v1/namespaces/${NAMESPACE}/secrets/${ref.name}`);
      const v = s.data?.[ref.key];
      if (typeof v === 'string') vals.set(e.name, Buffer.from(v, 'base64').toString('utf8'));
    }
  }
  const raw = vals.get('KUBE_PREWARM_REDIS_URL');
  if (!raw) throw new Error('the operator Deployment has no KUBE_PREWARM_REDIS_URL');
  const url = new URL(raw.replace(/\$\(([A-Za-z0-9_]+)\)/g, (_, v: string) => vals.get(v) ?? ''));
  // A Service name resolves only inside the cluster: this process uses its ClusterIP.
  let host = url.hostname;
  const svc = /^([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.cluster\.local)?$/.exec(host);
  if (svc) host = (await get(c, `/api/v1/namespaces/${svc[2]}/services/${svc[1]}`)).spec.clusterIP;
  return {
    host,
    port: Number(url.port || 6379),
    ...(url.username ? { username: decodeURIComponent(url.username) } : {}),
    ...(url.password ? { password: decodeURIComponent(url.password) } : {}),
    db: Number(url.pathname.slice(1) || 0),
    ...(url.protocol === 'rediss:' ? { tls: { rejectUnauthorized: false, servername: url.hostname } } : {}),
    // Inspection only: fail fast rather than wait for a Redis that is down.
    maxRetriesPerRequest: 1,
    connectTimeout: 5_000,
    retryStrategy: () => null,
  };
}

interface QueueJob {
  id: string;
  state: string;
  /** When the job was created (ms): a job re-created after a loss has a new one. */
  timestamp: number;
  attemptsMade: number;
  progress: unknown;
  failedReason?: string;
}

/** The node's queue as BullMQ sees it: counts and every job with its state (or the error). */
async function queueState(c: ClusterHandle, node: string): Promise<{ counts: unknown; jobs: QueueJob[] }> {
  const conn = new Redis(await redisOptions(c));
  conn.on('error', () => undefined);
  const q = new Queue(nodeQueueName(node), { connection: conn, prefix: QUEUE_PREFIX });
  q.on('error', () => undefined);
  const stop = new AbortController();
  const timeout = sleep(15_000, undefined, { signal: stop.signal }).then(() => {
    throw new Error('Redis did not answer within 15 s');
  });
  timeout.catch(() => undefined);
  try {
    return await Promise.race([
      (async () => {
        await q.waitUntilReady();
        const counts = await q.getJobCounts();
        const jobs: QueueJob[] = [];
        for (const j of await q.getJobs([
          'active',
          'wait',
          'delayed',
          'prioritized',
          'failed',
          'completed',
        ])) {
          if (!j?.id) continue;
          jobs.push({
            id: j.id,
            state: await j.getState(),
            timestamp: j.timestamp,
            attemptsMade: j.attemptsMade,
            progress: j.progress,
            ...(j.failedReason ? { failedReason: j.failedReason } : {}),
          });
        }
        return { counts, jobs };
      })(),
      timeout,
    ]);
  } finally {
    stop.abort();
    await q.close().catch(() => undefined);
    conn.disconnect();
  }
}

describe('faults on the real node', { timeout: 3_600_000 }, () => {
  let env: E2eEnv;
  let c: ClusterHandle;
  let node: ClusterNode;
  let busybox: Buffer;
  /** What one interruption may cost: every connection's `lostPerConnection`. */
  let LOST_PER_INTERRUPTION = 0;
  let lostWhy = '';
  before(async () => {
    env = await startE2e({
      values: { agent: { extraEnv: { KUBE_PREWARM_MAX_CONNECTIONS: String(MAX_CONNECTIONS) } } },
    });
    c = env.cluster;
    node = c.nodes[0]!;
    const lost = await lostPerConnection(node);
    LOST_PER_INTERRUPTION = MAX_CONNECTIONS * lost.bytes;
    lostWhy = `${MAX_CONNECTIONS} connections × ${lost.why}`;
    console.log(`# one interruption may cost ${fmt(LOST_PER_INTERRUPTION)}: ${lostWhy}`);
    busybox = await readFile('/bin/busybox');
    await ensureNamespace(c, NS);
  });
  after(async () => {
    await c?.registry.start().catch(() => undefined);
    await env?.close();
  });

  /** busybox plus `mib` MiB of incompressible data, under `repository:v1`. */
  const pushApp = (repository: string, mib: number, seed: number): Promise<PushedImage> =>
    pushImage(c.registry, {
      repository,
      tag: 'v1',
      layers: [
        { files: { 'bin/busybox': busybox }, executables: ['bin/busybox'] },
        { randomBytes: mib * MiB, seed },
      ],
    });

  const prewarm = (name: string, img: PushedImage, spec: Json = {}): Promise<Json> =>
    create(c, prewarmPath(NS), {
      apiVersion: 'prewarm.kube-prewarm.io/v1alpha1',
      kind: 'ImagePrewarm',
      metadata: { name, namespace: NS },
      spec: { images: [{ repository: `${c.registryHost}/${img.repository}`, tag: 'v1' }], ...spec },
    });

  test('agent killed mid-warm (SIGKILL, then pod deleted with grace 0): the warm resumes, no blob fetched twice', async () => {
    const started = Date.now();
    const img = await pushApp('faults/big', 256, 11);
    const layer = img.manifests[0]!.layers[1]!;
    const blobs = blobsOf(img);
    const size = blobs.reduce((n, b) => n + b.size, 0);
    const before = await storeBlobs(node);
    c.proxy.resetStats();
    // 6 MiB/s: about 45 s for the whole layer, so both interruptions land mid-download.
    await prewarm('big', img, { rollout: { maxBandwidthPerNode: '6Mi' } });

    const killAt = await waitServed(c, layer.digest, 64 * MiB, '64 MiB of the layer fetched');
    const killed = await killAgentProcess(c, node);
    const restarts = agentStatus(killed)?.restartCount ?? 0;
    console.log(`# SIGKILLed the agent after ${fmt(killAt)} of ${fmt(layer.size)}`);
    await waitAgentBack(c, node.name, { restartsAbove: restarts });

    const deleteAt = await waitServed(c, layer.digest, killAt + 64 * MiB, 'the warm resumed (64 MiB more)');
    const logAtDelete = c.proxy.stats.log.length;
    const pod = await agentPod(c, node.name);
    const del = await c.kube.request('DELETE', `/api/v1/namespaces/${NAMESPACE}/pods/${pod.metadata.name}`, {
      apiVersion: 'v1',
      kind: 'DeleteOptions',
      gracePeriodSeconds: 0,
    });
    assert.ok(del.status < 300, `delete ${pod.metadata.name}: ${del.status} ${JSON.stringify(del.body)}`);
    console.log(`# deleted agent pod ${pod.metadata.name} (grace 0) after ${fmt(deleteAt)}`);
    await waitAgentBack(c, node.name, { notUid: pod.metadata.uid });

    const status = await waitPrewarmReady(c, NS, 'big');
    assert.equal(status.warmNodes, 1);

    const total = c.proxy.bytes(BLOBS);
    // The manifest comes through /manifests/; config and layers through /blobs/.
    const perBlob = blobs
      .slice(1)
      .map((b) => ({ digest: b.digest, size: b.size, ...servedTwice(c, b.digest) }));
    const again = perBlob.reduce((n, b) => n + b.again, 0);
    const bound = 2 * LOST_PER_INTERRUPTION;
    const againFirst = servedTwice(c, layer.digest, logAtDelete).again;
    console.log(
      `# fetched again after the SIGKILL ${fmt(againFirst)}, after the pod deletion ${fmt(again - againFirst)}; ` +
        `blob requests ${c.proxy.count(BLOBS, 'GET')}`,
    );
    console.log(
      `# image ${fmt(size)}; blob bytes at the proxy ${fmt(total)} (${total} B); fetched again ${fmt(again)} (${again} B); ` +
        `bound 2 interruptions × ${lostWhy} = ${fmt(bound)}; wall ${((Date.now() - started) / 1000).toFixed(0)} s`,
    );
    for (const b of perBlob)
      assert.ok(b.unique >= b.size, `${b.digest}: only ${b.unique} of ${b.size} B served`);
    assert.ok(again <= bound, `fetched again ${again} B > bound ${bound} B: ${JSON.stringify(perBlob)}`);
    assert.ok(total <= size + bound, `blob bytes ${total} > image ${size} + bound ${bound}`);

    const added = [...(await storeBlobs(node))].filter((d) => !before.has(d)).sort();
    assert.deepEqual(added, blobs.map((b) => b.digest).sort(), 'the store gained exactly the image blobs');
    assert.deepEqual(await storeProblems(node, blobs), []);
  });

  test('Redis pod deleted mid-rollout: every ImagePrewarm Ready, every job completed, none lost', async () => {
    const started = Date.now();
    const imgs = await Promise.all([1, 2, 3].map((i) => pushApp(`faults/redis-${i}`, 48, 20 + i)));
    c.proxy.resetStats();
    // 3 MiB/s each, two jobs at a time (the agent's KUBE_PREWARM_CONCURRENCY): a third waits.
    for (const [i, img] of imgs.entries())
      await prewarm(`redis-${i + 1}`, img, { rollout: { maxBandwidthPerNode: '3Mi' } });

    const digests = async (names: string[]): Promise<Map<string, string>> => {
      const out = new Map<string, string>();
      for (const n of names) {
        const s = await waitForState(
          `${n} resolved`,
          async () => (await get(c, prewarmPath(NS, n))).status ?? {},
          (st: Json) => typeof st.images?.[0]?.digest === 'string',
          300_000,
        );
        out.set(n, prewarmJobId(s.images[0].digest, node.name, 'cache'));
      }
      return out;
    };
    const ids = await digests(['redis-1', 'redis-2', 'redis-3']);
    const during = await waitForState(
      'one job running with progress and one waiting',
      () => queueState(c, node.name),
      (s) => {
        const mine = s.jobs.filter((j) => [...ids.values()].includes(j.id));
        const running = mine.filter(
          (j) => j.state === 'active' && ((j.progress as Json)?.bytesDone ?? 0) > 4 * MiB,
        );
        return running.length >= 1 && mine.some((j) => j.state === 'waiting' || j.state === 'wait');
      },
      300_000,
    );
    console.log(`# queue when Redis was deleted: ${JSON.stringify(during)}`);
    const activeAtOutage = during.jobs.filter((j) => j.state === 'active').length;

    const redisPod = await get(c, `/api/v1/namespaces/${NAMESPACE}/pods/${FULL}-redis-0`);
    const deletedAt = Date.now();
    const del = await c.kube.request('DELETE', `/api/v1/namespaces/${NAMESPACE}/pods/${FULL}-redis-0`);
    assert.ok(del.status < 300, `delete Redis pod: ${del.status} ${JSON.stringify(del.body)}`);
    // Created while Redis is gone or still coming back: the operator must enqueue it afterwards.
    await waitForState(
      'the old Redis pod gone',
      async () =>
        (await c.kube.request('GET', `/api/v1/namespaces/${NAMESPACE}/pods/${FULL}-redis-0`)).body as Json,
      (p: Json) => p?.metadata?.uid !== redisPod.metadata.uid,
      300_000,
    );
    const late = await pushApp('faults/redis-4', 16, 24);
    await prewarm('redis-4', late);
    const back = await waitForState(
      'Redis back (a new pod, ready)',
      async () => (await get(c, `/api/v1/namespaces/${NAMESPACE}/pods/${FULL}-redis-0`)) as Json,
      (p: Json) =>
        p.metadata.uid !== redisPod.metadata.uid &&
        (p.status?.containerStatuses ?? []).every((s: Json) => s.ready),
      300_000,
    );
    console.log(
      `# Redis back in pod ${back.metadata.uid} after ${((Date.now() - started) / 1000).toFixed(0)} s`,
    );

    const names = ['redis-1', 'redis-2', 'redis-3', 'redis-4'];
    try {
      for (const n of names) await waitPrewarmReady(c, NS, n);
    } catch (err) {
      const q = await queueState(c, node.name).catch((e: Error) => `queue unreadable: ${e.message}`);
      throw new Error(
        `${(err as Error).message}\nqueue: ${JSON.stringify(q, null, 1)}\n${await describePods(c)}`,
      );
    }
    for (const n of names) {
      const s = (await get(c, prewarmPath(NS, n))).status;
      assert.equal(condition({ status: s }, 'Ready')?.status, 'True', `${n}: ${JSON.stringify(s)}`);
      assert.equal(s.warmNodes, 1, n);
    }
    const allIds = await digests(names);
    const final = await queueState(c, node.name);
    for (const [n, id] of allIds) {
      const j = final.jobs.find((x) => x.id === id);
      assert.equal(j?.state, 'completed', `${n}'s job ${id}: ${JSON.stringify(j ?? final)}`);
    }
    assert.deepEqual(
      final.jobs.filter((j) => j.state === 'failed'),
      [],
      'no failed job',
    );
    // Redis kept them (AOF on the volume): the jobs of before the outage are the same jobs,
    // not ones the operator made again after finding them missing.
    const recreated = during.jobs
      .map((j) => ({ id: j.id, before: j.timestamp, now: final.jobs.find((x) => x.id === j.id)?.timestamp }))
      .filter((j) => j.now !== j.before);
    const logs = async () => ({
      redis: await componentLog(c, 'redis', { raw: true }),
      operator: await componentLog(c, 'operator', { match: /enqueue|Redis|redis/ }),
      agent: await componentLog(c, 'agent', { container: 'agent', match: /job|Redis|redis/ }),
    });
    if (recreated.length > 0)
      assert.fail(
        `jobs re-created after the outage (lost by Redis): ${JSON.stringify(recreated)}\n` +
          `redis deleted at ${deletedAt}\nbefore: ${JSON.stringify(during, null, 1)}\nafter: ${JSON.stringify(final, null, 1)}\n` +
          `${JSON.stringify(await logs(), null, 1)}`,
      );
    console.log(`# warnings: ${JSON.stringify(await logs(), null, 1)}`);

    // Downloads continued through the outage; a job whose lock was lost resumes from the
    // journal: at most what its connections had not made durable comes again.
    const all = [...imgs, late].flatMap(blobsOf);
    const again = [...new Set(all.map((b) => b.digest))].reduce((n, d) => n + servedTwice(c, d).again, 0);
    const bound = Math.max(1, activeAtOutage) * LOST_PER_INTERRUPTION;
    const unique = [...new Map(all.map((b) => [b.digest, b.size])).values()].reduce((n, x) => n + x, 0);
    console.log(
      `# blob bytes at the proxy ${fmt(c.proxy.bytes(BLOBS))} for ${fmt(unique)} of distinct blobs; fetched again ${again} B (bound ${fmt(bound)}); wall ${((Date.now() - started) / 1000).toFixed(0)} s`,
    );
    assert.ok(again <= bound, `fetched again ${again} B > ${bound} B`);
    assert.deepEqual(await storeProblems(node, all), []);
  });

  test('registry down after the warm: pods start by tag in cache and unpack mode', async () => {
    const started = Date.now();
    const cacheImg = await pushApp('faults/down-cache', 32, 31);
    const unpackImg = await pushApp('faults/down-unpack', 32, 32);
    await prewarm('down-cache', cacheImg, { mode: 'cache' });
    await prewarm('down-unpack', unpackImg, { mode: 'unpack' });
    await waitPrewarmReady(c, NS, 'down-cache');
    await waitPrewarmReady(c, NS, 'down-unpack');

    await c.registry.stop();
    try {
      c.proxy.resetStats();
      for (const [name, img] of [
        ['down-cache', cacheImg],
        ['down-unpack', unpackImg],
      ] as const)
        await create(
          c,
          `/apis/apps/v1/namespaces/${NS}/deployments`,
          sleeperDeployment(name, NS, `${c.registryHost}/${img.repository}:v1`),
        );
      const pods = [
        ...(await waitAppRunning(c, NS, 'down-cache')),
        ...(await waitAppRunning(c, NS, 'down-unpack')),
      ];
      for (const [p, img] of [
        [pods[0], cacheImg],
        [pods[1], unpackImg],
      ] as const) {
        const imageID = String(p.status.containerStatuses[0].imageID);
        assert.ok(imageID.endsWith(img.digest), `${p.metadata.name} runs ${imageID}, expected ${img.digest}`);
      }
      const events = await eventLines(c, NS);
      assert.match(events, /Pod\/down-cache-\S+ Pulled: Successfully pulled image/);
      assert.match(events, /Pod\/down-unpack-\S+ Pulled: Container image "\S+" already present on machine/);
      // The registry really was unreachable for the cache-mode pull: the mirror asked it
      // for the tag and got the proxy's 502 (then answered from the store's record).
      const asked = c.proxy.stats.log.filter((e) => e.path.endsWith('/faults/down-cache/manifests/v1'));
      console.log(`# tag requests reaching the proxy while the registry was down: ${JSON.stringify(asked)}`);
      assert.ok(
        asked.length > 0 && asked.every((e) => e.status >= 500),
        `upstream tag lookups: ${JSON.stringify(asked)}`,
      );
      assert.equal(c.proxy.bytes(BLOBS), 0, 'no blob byte from the (stopped) registry');
    } finally {
      await c.registry.start();
    }
    console.log(`# wall ${((Date.now() - started) / 1000).toFixed(0)} s`);
  });

  test('mirror killed while a pod pulls through it: the pod still starts, the warm completes', async () => {
    const started = Date.now();
    const img = await pushApp('faults/mirror', 128, 41);
    const layer = img.manifests[0]!.layers[1]!;
    const hex = layer.digest.slice('sha256:'.length);
    c.proxy.resetStats();
    await prewarm('mirror', img, { rollout: { maxBandwidthPerNode: '4Mi' } });
    await waitServed(c, layer.digest, 16 * MiB, '16 MiB of the layer fetched');
    await create(
      c,
      `/apis/apps/v1/namespaces/${NS}/deployments`,
      sleeperDeployment('mirror', NS, `${c.registryHost}/${img.repository}:v1`),
    );
    // containerd's ingest of the layer grows while the mirror streams it from the download
    // in flight (the layer is not committed yet: the warm is capped).
    const ingest = await waitForState(
      'containerd receiving the layer through the mirror (an active ingest of it)',
      async () => (await node.containerd.ctr(['content', 'active'])).stdout,
      (out) => out.includes(hex),
      300_000,
    );
    const served = c.proxy.bytes(blobPath(layer.digest));
    assert.ok(served < layer.size, `the layer was still downloading (${served} of ${layer.size} B)`);
    // None of containerd's own requests yet at the registry: its bytes came through the mirror.
    const direct = () =>
      c.proxy.stats.log.filter((e) => blobPath(layer.digest).test(e.path) && byContainerd(e));
    assert.deepEqual(direct(), [], 'containerd pulled the layer through the mirror, not from the registry');
    console.log(`# containerd's active ingests when the agent was killed:\n${ingest.trim()}`);
    await killAgentProcess(c, node);

    const pods = await waitAppRunning(c, NS, 'mirror', 600_000);
    const imageID = String(pods[0].status.containerStatuses[0].imageID);
    assert.ok(imageID.endsWith(img.digest), `the pod runs ${imageID}, expected ${img.digest}`);
    const status = await waitPrewarmReady(c, NS, 'mirror');
    assert.equal(status.warmNodes, 1);
    assert.deepEqual(await storeProblems(node, blobsOf(img)), []);
    const fellBack = direct();
    console.log(
      `# after the kill containerd ${fellBack.length > 0 ? `fell back to the registry: ${JSON.stringify(fellBack)}` : 'pulled through the mirror again'}`,
    );
    const events = (await eventLines(c, NS)).split('\n').filter((l) => l.startsWith('Pod/mirror-'));
    const layerRequests = c.proxy.stats.log
      .filter((e) => blobPath(layer.digest).test(e.path))
      .map((e) => `${e.method} ${e.range ?? '(whole)'} ${e.status} ${e.bytes}`);
    const twice = servedTwice(c, layer.digest);
    // The agent's own requests: what its kill cost it, whether or not containerd fell back.
    const agentTwice = servedTwice(c, layer.digest, undefined, (e) => !byContainerd(e));
    console.log(
      `# pod events:\n${events.join('\n')}\n# layer ${fmt(layer.size)}: registry served ${fmt(twice.sent)}, ` +
        `${fmt(twice.again)} of it more than once (${fmt(agentTwice.again)} by the agent); requests:\n${layerRequests.join('\n')}\n` +
        `# agent log: ${JSON.stringify(await componentLog(c, 'agent', { container: 'agent', match: /mismatch|blob|mirror/ }), null, 1)}\n` +
        `# wall ${((Date.now() - started) / 1000).toFixed(0)} s`,
    );
    // The kill costs the agent at most what its connections had not made durable (containerd's
    // own fallback, if any, is containerd's retry, not the agent's).
    assert.ok(
      agentTwice.again <= LOST_PER_INTERRUPTION,
      `the agent fetched the layer again: ${agentTwice.again} B > ${LOST_PER_INTERRUPTION} B (${lostWhy})`,
    );
  });
});
