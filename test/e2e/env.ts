/**
 * Shared setup of the end-to-end tests: kube-prewarm as its users run it. A real cluster
 * (test/harness/cluster.ts), the project's image built without Docker by
 * `scripts/build-image.sh` (and the Redis image from Debian's redis-server), both pushed
 * to the cluster's registry, and the Helm chart installed with `helm install`. Nothing is
 * started by hand: the operator, the agents and Redis are pods the kubelet runs.
 *
 * Values differ from the chart's defaults only where this cluster differs from a cloud
 * one: the registry is an in-cluster plain-HTTP one on a private address (so it is listed
 * as an allowed, plain-HTTP registry and routed through the mirror), Redis's volume is a
 * static hostPath PersistentVolume (no provisioner here), one operator replica (two cores).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chown, mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import type { KubernetesObject } from '@kubernetes/client-node';
import { type ClusterHandle, type ClusterOptions, startCluster } from '../harness/cluster.js';
import { REPO_ROOT } from '../harness/kube.js';
import { waitUntil } from '../harness/process.js';
import { CHART_DIR, type HelmResult, helm } from '../helm/render.js';

const execFileP = promisify(execFile);

export const RELEASE = 'kp';
export const NAMESPACE = 'kube-prewarm';
/** Resource names of the release (the chart's fullname is `<release>-kube-prewarm`). */
export const FULL = `${RELEASE}-kube-prewarm`;
export const GROUP = 'prewarm.kube-prewarm.io';
export const VERSION = 'v1alpha1';

export interface BuiltImages {
  /** `<registryHost>/kube-prewarm@sha256:…` */
  kubePrewarm: { repository: string; digest: string };
  redis: { repository: string; digest: string };
}

export interface E2eEnv {
  cluster: ClusterHandle;
  images: BuiltImages;
  /** Values the tests install with (pass overrides to `install`/`upgrade`). */
  baseValues(): Record<string, unknown>;
  /** `helm <args> --namespace kube-prewarm --kubeconfig …`; never throws. */
  helm(args: string[], values?: unknown): Promise<HelmResult>;
  /** `helm install` (or `upgrade` when `upgrade`), then waits for every component to be Ready. */
  install(overrides?: Record<string, unknown>, o?: { upgrade?: boolean }): Promise<void>;
  /** Waits until the operator, every node's agent and Redis are Ready (error: last states). */
  waitReady(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

/** Deep merge of plain objects (arrays and scalars of `b` win). */
export function merge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const cur = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && cur && typeof cur === 'object' && !Array.isArray(cur)
        ? merge(cur as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/** Inputs of an image build: what `git` sees of them, committed or not. */
const IMAGE_INPUTS = [
  'agent',
  'operator',
  'oci',
  'bin',
  'package.json',
  'package-lock.json',
  'tsconfig.json',
].concat(['tsconfig.build.json', 'scripts/build-image.sh', 'scripts/image']);

/**
 * A key for the image's inputs (the files' content hashes from `git`, tracked or not), so
 * that the test files of one run share one build: the layout is kept under
 * ~/.cache/kube-prewarm-e2e/<image>-<key> (the newest few only).
 */
async function inputsKey(which: string): Promise<string> {
  const { stdout: files } = await execFileP(
    'git',
    ['ls-files', '-co', '--exclude-standard', '--', ...IMAGE_INPUTS],
    {
      cwd: REPO_ROOT,
      maxBuffer: 16 << 20,
    },
  );
  const list = files.split('\n').filter((f) => f && existsSync(join(REPO_ROOT, f)));
  const { stdout: hashes } = await execFileP('git', ['hash-object', '--', ...list], {
    cwd: REPO_ROOT,
    maxBuffer: 16 << 20,
  });
  return createHash('sha256').update(which).update(list.join('\n')).update(hashes).digest('hex').slice(0, 16);
}

/** Builds an image with scripts/build-image.sh (host arch; cached by inputs) and pushes it; returns its digest. */
async function buildAndPush(
  which: 'kube-prewarm' | 'redis',
  registry: string,
  repository: string,
): Promise<string> {
  const cacheRoot = join(process.env.KP_E2E_CACHE ?? join(homedir(), '.cache', 'kube-prewarm-e2e'));
  const out = join(cacheRoot, `${which}-${await inputsKey(which)}`);
  if (!existsSync(join(out, 'build.json'))) {
    await mkdir(cacheRoot, { recursive: true });
    const tmp = `${out}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await execFileP(
      'bash',
      [join(REPO_ROOT, 'scripts/build-image.sh'), which, '--arch', 'amd64', '--out', tmp, '--tag', 'e2e'],
      { cwd: REPO_ROOT, timeout: 900_000, maxBuffer: 16 << 20 },
    ).catch((err: { stderr?: string; message: string }) => {
      throw new Error(`build-image.sh ${which} failed: ${err.stderr?.slice(-4000) ?? err.message}`);
    });
    await rm(out, { recursive: true, force: true });
    await rename(tmp, out);
    // Keep the three newest builds of each image.
    const olds = (await readdir(cacheRoot)).filter((d) => d.startsWith(`${which}-`) && !d.includes('.tmp-'));
    const dated = await Promise.all(
      olds.map(async (d) => ({ d, t: (await stat(join(cacheRoot, d))).mtimeMs })),
    );
    for (const { d } of dated.sort((x, y) => y.t - x.t).slice(3))
      await rm(join(cacheRoot, d), { recursive: true, force: true });
  }
  const build = JSON.parse(await readFile(join(out, 'build.json'), 'utf8')) as { index: string };
  await execFileP(
    'skopeo',
    [
      'copy',
      '--quiet',
      '--all',
      '--preserve-digests',
      '--dest-tls-verify=false',
      `oci:${out}:e2e`,
      `docker://${registry}/${repository}:e2e`,
    ],
    { timeout: 300_000 },
  ).catch((err: { stderr?: string; message: string }) => {
    throw new Error(`skopeo copy of ${which} failed: ${err.stderr ?? err.message}`);
  });
  return build.index;
}

/** A StorageClass without a provisioner and a hostPath PersistentVolume on node 1 for Redis. */
async function redisVolume(cluster: ClusterHandle): Promise<void> {
  const node = cluster.nodes[0]!;
  const path = '/var/lib/kp-test-pv/redis';
  await mkdir(node.hostPath(path), { recursive: true });
  // hostPath volumes ignore fsGroup: the directory must belong to Redis's user already.
  await chown(node.hostPath(path), 999, 999);
  const objects: KubernetesObject[] = [
    {
      apiVersion: 'storage.k8s.io/v1',
      kind: 'StorageClass',
      metadata: { name: 'kp-static' },
      provisioner: 'kubernetes.io/no-provisioner',
      volumeBindingMode: 'WaitForFirstConsumer',
      reclaimPolicy: 'Retain',
    } as KubernetesObject,
    {
      apiVersion: 'v1',
      kind: 'PersistentVolume',
      metadata: { name: 'kp-redis' },
      spec: {
        capacity: { storage: '2Gi' },
        accessModes: ['ReadWriteOnce'],
        storageClassName: 'kp-static',
        persistentVolumeReclaimPolicy: 'Retain',
        hostPath: { path, type: 'DirectoryOrCreate' },
        nodeAffinity: {
          required: {
            nodeSelectorTerms: [
              { matchExpressions: [{ key: 'kubernetes.io/hostname', operator: 'In', values: [node.name] }] },
            ],
          },
        },
      },
    } as KubernetesObject,
  ];
  for (const o of objects) await cluster.api.create(o);
}

interface RolloutStatus {
  kind: string;
  name: string;
  ready: boolean;
  detail: string;
}

async function rollout(
  cluster: ClusterHandle,
  kind: 'Deployment' | 'DaemonSet' | 'StatefulSet',
  name: string,
): Promise<RolloutStatus> {
  const plural = `${kind.toLowerCase()}s`;
  const got = await cluster.kube.request('GET', `/apis/apps/v1/namespaces/${NAMESPACE}/${plural}/${name}`);
  if (got.status !== 200) return { kind, name, ready: false, detail: `HTTP ${got.status}` };
  // biome-ignore lint/suspicious/noExplicitAny: the workload objects' status shapes differ by kind.
  const o = got.body as any;
  const gen = o.metadata?.generation;
  const st = o.status ?? {};
  const observed = st.observedGeneration === gen;
  let ready: boolean;
  let detail: string;
  if (kind === 'DaemonSet') {
    ready =
      observed &&
      st.desiredNumberScheduled > 0 &&
      st.numberReady === st.desiredNumberScheduled &&
      st.updatedNumberScheduled === st.desiredNumberScheduled;
    detail = `ready ${st.numberReady}/${st.desiredNumberScheduled}, updated ${st.updatedNumberScheduled}`;
  } else {
    const want = o.spec?.replicas ?? 1;
    ready = observed && st.readyReplicas === want && (st.updatedReplicas ?? want) === want;
    detail = `ready ${st.readyReplicas ?? 0}/${want}, updated ${st.updatedReplicas ?? 0}`;
  }
  return { kind, name, ready, detail };
}

/**
 * Waits until one workload of the release namespace has rolled out (every replica updated
 * and Ready; for workloads `waitReady` does not cover, e.g. the webhook receiver). The
 * error names its last state and the pods'.
 */
export async function waitRolledOut(
  cluster: ClusterHandle,
  kind: 'Deployment' | 'DaemonSet' | 'StatefulSet',
  name: string,
  timeoutMs = 300_000,
): Promise<void> {
  let last: RolloutStatus | undefined;
  try {
    await waitUntil(
      `${kind} ${name} rolled out`,
      async () => {
        last = await rollout(cluster, kind, name);
        return last.ready;
      },
      { timeoutMs, intervalMs: 1_000 },
    );
  } catch (err) {
    throw new Error(
      `${(err as Error).message}\n${last?.detail ?? ''}\npods:\n${await describePods(cluster)}`,
    );
  }
}

/**
 * Pods of a namespace with their phase, readiness and container states, and the last log
 * lines of every container that is not ready (its previous run's when it restarted): what a
 * timed-out wait needs to say why.
 */
export async function describePods(cluster: ClusterHandle, namespace = NAMESPACE): Promise<string> {
  const got = await cluster.kube.request('GET', `/api/v1/namespaces/${namespace}/pods`);
  // biome-ignore lint/suspicious/noExplicitAny: a PodList as JSON.
  const items = ((got.body as any).items ?? []) as any[];
  const out: string[] = [];
  for (const p of items) {
    const name = p.metadata.name;
    out.push(`${name} on ${p.spec.nodeName ?? '-'}: ${p.status?.phase}`);
    for (const c of p.status?.containerStatuses ?? []) {
      const last = c.lastState?.terminated ? ` last=${JSON.stringify(c.lastState.terminated)}` : '';
      out.push(
        `  ${c.name}: ${c.ready ? 'ready' : 'not ready'}, restarts ${c.restartCount}, ${JSON.stringify(c.state)}${last}`,
      );
      if (c.ready) continue;
      const q = `container=${c.name}&tailLines=15${c.restartCount > 0 ? '&previous=true' : ''}`;
      const log = await cluster.kube.request('GET', `/api/v1/namespaces/${namespace}/pods/${name}/log?${q}`);
      out.push(`  --- ${c.name} log ---\n${String(log.body).replace(/^/gm, '    ')}`);
    }
  }
  return out.join('\n');
}

export interface E2eOptions extends ClusterOptions {
  /** Install the chart in `startE2e` (default true) with these overrides. */
  install?: boolean;
  values?: Record<string, unknown>;
}

/** Starts the cluster, builds and pushes the images, and (by default) installs the chart. */
export async function startE2e(opts: E2eOptions = {}): Promise<E2eEnv> {
  const cluster = await startCluster(opts);
  try {
    await redisVolume(cluster);
    const loopback = cluster.registry.host;
    const reg = cluster.registryHost;
    const images: BuiltImages = {
      kubePrewarm: {
        repository: `${reg}/kube-prewarm`,
        digest: await buildAndPush('kube-prewarm', loopback, 'kube-prewarm'),
      },
      redis: { repository: `${reg}/redis`, digest: await buildAndPush('redis', loopback, 'redis') },
    };
    const baseValues = (): Record<string, unknown> => ({
      image: { repository: images.kubePrewarm.repository, digest: images.kubePrewarm.digest },
      operator: { replicas: 1 },
      // The test registry is on a private address: allowed explicitly, as an administrator
      // would allow an in-cluster registry.
      registries: { allowed: [reg], plainHttp: [reg] },
      agent: {
        mirror: { hostsToml: { registries: [reg] } },
        unpack: { enabled: true },
        // Quick re-checks so tests see a lost image re-warmed within seconds.
        extraEnv: { KUBE_PREWARM_RECHECK_INTERVAL: '10s' },
      },
      redis: {
        image: { repository: images.redis.repository, digest: images.redis.digest },
        persistence: { storageClass: 'kp-static' },
      },
    });
    const helmIn = (args: string[], values?: unknown): Promise<HelmResult> =>
      helm([...args, '--namespace', NAMESPACE, '--kubeconfig', cluster.kube.kubeconfigPath], values);

    const waitReady = async (timeoutMs = 300_000): Promise<void> => {
      let last: RolloutStatus[] = [];
      try {
        await waitUntil(
          'kube-prewarm Ready',
          async () => {
            last = [
              await rollout(cluster, 'Deployment', `${FULL}-operator`),
              await rollout(cluster, 'DaemonSet', `${FULL}-agent`),
              await rollout(cluster, 'StatefulSet', `${FULL}-redis`),
            ];
            return last.every((r) => r.ready);
          },
          { timeoutMs, intervalMs: 1_000 },
        );
      } catch (err) {
        const state = last.map((r) => `${r.kind} ${r.name}: ${r.detail}`).join('\n');
        throw new Error(`${(err as Error).message}\n${state}\npods:\n${await describePods(cluster)}`);
      }
    };

    const install = async (
      overrides: Record<string, unknown> = {},
      o: { upgrade?: boolean } = {},
    ): Promise<void> => {
      const values = merge(baseValues(), overrides);
      const r = o.upgrade
        ? await helmIn(['upgrade', RELEASE, CHART_DIR], values)
        : await helmIn(['install', RELEASE, CHART_DIR, '--create-namespace'], values);
      if (r.code !== 0) throw new Error(`helm ${o.upgrade ? 'upgrade' : 'install'} failed: ${r.stderr}`);
      await waitReady();
    };

    const env: E2eEnv = {
      cluster,
      images,
      baseValues,
      helm: helmIn,
      install,
      waitReady,
      close: () => cluster.close(),
    };
    if (opts.install ?? true) await install(opts.values ?? {});
    return env;
  } catch (err) {
    await cluster.close().catch(() => undefined);
    throw err;
  }
}

/** A custom-resource path of the ImagePrewarm API. */
export function prewarmPath(namespace: string, name = ''): string {
  return `/apis/${GROUP}/${VERSION}/namespaces/${namespace}/imageprewarms${name ? `/${name}` : ''}`;
}

/** Polls `probe` (which returns the state it saw) until `done(state)`; the error shows the last state. */
export async function waitForState<T>(
  what: string,
  probe: () => Promise<T>,
  done: (s: T) => boolean,
  timeoutMs = 300_000,
): Promise<T> {
  let last: T | undefined;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      last = await probe();
      if (done(last)) return last;
    } catch (err) {
      last = `probe error: ${(err as Error).message}` as T;
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}; last state:\n${JSON.stringify(last, null, 2)}`,
      );
    await sleep(1_000);
  }
}
