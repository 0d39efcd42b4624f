/**
 * bench/fanout — one push event → a prewarm job for every node, how fast and in how much
 * memory. Not a test: prints numbers, asserts nothing.
 *
 *   npm run bench -- fanout [--nodes 5000] [--runs 3]
 *
 * Everything real: kube-apiserver + etcd holding N Node objects (shaped like real ones)
 * and one ImagePrewarm selecting all of them, Redis, a registry (images pushed with
 * skopeo). The operator is the compiled operator (tsc output of operator/src, run with
 * plain node, as in the container image) in its own process, so its RSS is its own;
 * VmHWM from /proc is its peak RSS since start (initial list of N nodes included).
 *
 * Each run: the ImagePrewarm's tag is resolved and its jobs are in Redis; a new image is
 * pushed under the same tag; the push event is appended to the operator's push inbox
 * (exactly what `onPush` does on whichever replica the webhook reaches); the clock stops
 * when the job for the last node in enqueue order exists in Redis (jobs are written in
 * ordered batches), then all N are counted to confirm. Targets (issue 2): < 1 s and
 * < 256 MiB RSS for 5,000 nodes.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs, promisify } from 'node:util';
import type { V1Node } from '@kubernetes/client-node';
import { Redis } from 'ioredis';
import { eachLimited } from '../oci/src/concurrency.js';
import type { Digest } from '../oci/src/digest.js';
import { nodeQueueName, prewarmJobId, QUEUE_PREFIX } from '../oci/src/job-contract.js';
import { API_VERSION, GROUP, KIND, PLURAL, VERSION } from '../operator/src/api/types.js';
import { pushImage } from '../test/harness/images.js';
import { REPO_ROOT, startKube } from '../test/harness/kube.js';
import { metricSum } from '../test/harness/metrics.js';
import { type ManagedProcess, spawnProcess, waitUntil } from '../test/harness/process.js';
import { startRedis } from '../test/harness/redis.js';
import { startRegistry } from '../test/harness/registry.js';
import { Cleanup, freePort, makeTempDir } from '../test/harness/tmp.js';

const execFileP = promisify(execFile);

const { values } = parseArgs({
  options: {
    nodes: { type: 'string', default: '5000' },
    runs: { type: 'string', default: '3' },
    /** Passed to the operator as --max-old-space-size (MiB), as a container memory limit would size the heap. */
    heap: { type: 'string', default: '128' },
    /** Passed to the operator as --max-semi-space-size (MiB): the young generation's size. */
    semi: { type: 'string', default: '' },
    /** Write a heap snapshot of the operator after the last run into this directory. */
    snapshot: { type: 'string', default: '' },
  },
});
const N = Number(values.nodes);
const RUNS = Number(values.runs);
const MiB = 1024 * 1024;

/** A Node roughly the size of a real one (labels, conditions, addresses, nodeInfo, images). */
function makeNode(i: number): V1Node {
  const name = `ip-10-0-${Math.floor(i / 250)}-${i % 250}.ec2.internal`;
  const now = new Date();
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name,
      uid: `00000000-0000-0000-0000-${String(i).padStart(12, '0')}`,
      creationTimestamp: new Date(Date.now() - 86_400_000),
      labels: {
        'kubernetes.io/hostname': name,
        'kubernetes.io/os': 'linux',
        'kubernetes.io/arch': 'amd64',
        'node.kubernetes.io/instance-type': 'm6i.2xlarge',
        'topology.kubernetes.io/zone': `us-east-1${'abc'[i % 3]}`,
        'topology.kubernetes.io/region': 'us-east-1',
        'karpenter.sh/nodepool': 'default',
        'karpenter.sh/capacity-type': 'on-demand',
        pool: 'general',
      },
      annotations: {
        'node.alpha.kubernetes.io/ttl': '0',
        'volumes.kubernetes.io/controller-managed-attach-detach': 'true',
      },
    },
    spec: { providerID: `aws:///us-east-1a/i-${i.toString(16).padStart(17, '0')}`, taints: [] },
    status: {
      conditions: ['MemoryPressure', 'DiskPressure', 'PIDPressure']
        .map((type) => ({
          type,
          status: 'False',
          reason: `KubeletHas${type}`,
          message: 'ok',
          lastHeartbeatTime: now,
          lastTransitionTime: now,
        }))
        .concat([
          {
            type: 'Ready',
            status: 'True',
            reason: 'KubeletReady',
            message: 'kubelet is posting ready status',
            lastHeartbeatTime: now,
            lastTransitionTime: now,
          },
        ]),
      addresses: [
        { type: 'InternalIP', address: `10.0.${Math.floor(i / 250)}.${i % 250}` },
        { type: 'Hostname', address: name },
      ],
      capacity: { cpu: '8', memory: '32386544Ki', pods: '58', 'ephemeral-storage': '104845292Ki' },
      allocatable: { cpu: '7910m', memory: '31369712Ki', pods: '58', 'ephemeral-storage': '95551679140' },
      nodeInfo: {
        architecture: 'amd64',
        operatingSystem: 'linux',
        bootID: 'b',
        containerRuntimeVersion: 'containerd://1.7.11',
        kernelVersion: '6.1.0',
        kubeProxyVersion: 'v1.34.2',
        kubeletVersion: 'v1.34.2',
        machineID: 'm',
        osImage: 'Amazon Linux 2023',
        systemUUID: 'u',
      },
      images: Array.from({ length: 10 }, (_, k) => ({
        names: [`registry.example.com/team/image-${k}@sha256:${String(k).repeat(64).slice(0, 64)}`],
        sizeBytes: 100_000_000 + k,
      })),
    },
  };
}

async function procStatus(pid: number): Promise<{ rss: number; hwm: number }> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string): number =>
    Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
}

async function main(): Promise<void> {
  const cleanup = new Cleanup();
  let operator: ManagedProcess | undefined;
  const check = { conn: undefined as Redis | undefined };
  try {
    // One after the other: free ports picked concurrently can collide.
    const registry = await startRegistry({ logLevel: 'error' });
    const redisServer = await startRedis();
    const kube = await startKube();
    cleanup.defer(() => kube.stop());
    cleanup.defer(() => redisServer.close());
    cleanup.defer(() => registry.close());
    const conn = new Redis(redisServer.url, { maxRetriesPerRequest: null });
    check.conn = conn;

    let t = performance.now();
    const nodes = Array.from({ length: N }, (_, i) => makeNode(i));
    await eachLimited(nodes, 32, async (n) => {
      const res = await kube.request('POST', '/api/v1/nodes', n);
      if (res.status >= 300)
        throw new Error(`create node: ${res.status} ${JSON.stringify(res.body).slice(0, 300)}`);
    });
    console.log(`created ${N} Node objects in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    // A Node is created with its status (as a kubelet registers it); check it stuck.
    const sample = (await kube.request('GET', `/api/v1/nodes/${nodes[0]!.metadata!.name}`)).body as V1Node;
    if (!sample.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')) {
      throw new Error('created nodes are not Ready: the apiserver dropped their status');
    }
    const nodeNames = nodes.map((n) => n.metadata!.name!).sort();

    await pushImage(registry, { repository: 'app', tag: 'prod', layers: [{ files: { v: '0' } }] });
    const created = await kube.request('POST', `/apis/${GROUP}/${VERSION}/namespaces/default/${PLURAL}`, {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { name: 'fleet' },
      spec: {
        images: [{ repository: `${registry.host}/app`, tag: 'prod' }],
        nodeSelector: { pool: 'general' },
      },
    });
    if (created.status >= 300) throw new Error(`create ImagePrewarm: ${JSON.stringify(created.body)}`);

    // The compiled operator, as it ships.
    t = performance.now();
    const outDir = join(REPO_ROOT, 'bench/out/fanout-dist');
    await execFileP(process.execPath, [
      join(REPO_ROOT, 'node_modules/typescript/bin/tsc'),
      '-p',
      join(REPO_ROOT, 'tsconfig.build.json'),
      '--outDir',
      outDir,
    ]).catch(
      () => undefined, // Type errors elsewhere still emit; a missing main.js fails below.
    );
    console.log(`compiled the operator in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    console.log(
      `operator node flags: ${values.heap && values.heap !== '0' ? `--max-old-space-size=${values.heap}` : '(none)'}${values.semi ? ` --max-semi-space-size=${values.semi}` : ''}`,
    );
    const logDir = await makeTempDir('fanout', cleanup);
    const port = await freePort();
    operator = await spawnProcess({
      name: 'operator',
      command: process.execPath,
      args: [
        ...(values.heap && values.heap !== '0' ? [`--max-old-space-size=${values.heap}`] : []),
        ...(values.semi ? [`--max-semi-space-size=${values.semi}`] : []),
        ...(values.snapshot ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${values.snapshot}`] : []),
        join(outDir, 'operator/src/main.js'),
      ],
      logPath: join(logDir, 'operator.log'),
      cwd: REPO_ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        KUBECONFIG: kube.kubeconfigPath,
        KUBE_PREWARM_REDIS_URL: redisServer.url,
        KUBE_PREWARM_LEASE_NAMESPACE: 'default',
        KUBE_PREWARM_HTTP_HOST: '127.0.0.1',
        KUBE_PREWARM_HTTP_PORT: String(port),
        KUBE_PREWARM_LOG_LEVEL: 'warn',
        // Measure the push path, not the progress poller (no agents run here).
        KUBE_PREWARM_PROGRESS_POLL_MS: '600000',
        KUBE_PREWARM_MAX_INFLIGHT_JOBS: '1000000',
      },
    });
    await waitUntil(
      'initial rollout enqueued',
      async () => (await metricSum(port, 'kprw_jobs_enqueued_total')) >= N,
      {
        process: operator,
        timeoutMs: 120_000,
        intervalMs: 200,
      },
    );
    const start = await procStatus(operator.pid);
    console.log(
      `operator up, initial rollout of ${N} jobs enqueued; RSS ${(start.rss / MiB).toFixed(0)} MiB, peak so far ${(start.hwm / MiB).toFixed(0)} MiB`,
    );

    const results: { ms: number; rss: number; hwm: number }[] = [];
    for (let run = 1; run <= RUNS; run++) {
      const next = await pushImage(registry, {
        repository: 'app',
        tag: 'prod',
        layers: [{ files: { v: String(run) } }],
      });
      const lastKey = jobKey(nodeNames.at(-1)!, next.digest as Digest);
      const t0 = performance.now();
      await conn.xadd(
        'kprw:operator:push-events',
        '*',
        'e',
        JSON.stringify({
          registry: registry.host,
          repository: 'app',
          tag: 'prod',
          digest: next.digest,
          source: 'distribution',
          eventId: `bench-${run}`,
          timestamp: new Date().toISOString(),
          receivedAt: new Date().toISOString(),
        }),
      );
      while ((await conn.exists(lastKey)) === 0) await sleep(1);
      const ms = performance.now() - t0;
      const pipe = conn.pipeline();
      for (const node of nodeNames) pipe.exists(jobKey(node, next.digest as Digest));
      const present = ((await pipe.exec()) ?? []).filter(([, v]) => v === 1).length;
      // Let the rest of the reconcile (unpinning the dropped digest, status) finish.
      await sleep(3_000);
      const mem = await procStatus(operator.pid);
      results.push({ ms, ...mem });
      console.log(
        `run ${run}: push → ${present}/${N} jobs in Redis in ${ms.toFixed(0)} ms; operator RSS ${(mem.rss / MiB).toFixed(0)} MiB, peak ${(mem.hwm / MiB).toFixed(0)} MiB`,
      );
    }
    if (values.snapshot) {
      process.kill(operator.pid, 'SIGUSR2');
      await sleep(15_000);
      console.log(`heap snapshot written to ${values.snapshot}`);
    }
    const best = Math.min(...results.map((r) => r.ms));
    const worst = Math.max(...results.map((r) => r.ms));
    const peak = Math.max(...results.map((r) => r.hwm));
    console.log('');
    console.log(
      `fan-out to ${N} nodes: best ${best.toFixed(0)} ms, worst ${worst.toFixed(0)} ms (target < 1000 ms)`,
    );
    console.log(`operator peak RSS ${(peak / MiB).toFixed(0)} MiB (target < 256 MiB)`);
  } finally {
    await operator?.stop();
    check.conn?.disconnect();
    await cleanup.run();
  }
}

function jobKey(node: string, digest: Digest): string {
  return `${QUEUE_PREFIX}:${nodeQueueName(node)}:${prewarmJobId(digest, node, 'cache')}`;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
