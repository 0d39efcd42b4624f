/**
 * The chart's life on a real node, as an administrator lives it: `helm install`, `helm
 * upgrade` with changed values, `helm uninstall`, and a reinstall.
 *
 * - install: the agent's `hosts-toml` container points containerd at the node-local mirror
 *   and moves aside the hosts.toml an administrator had written for the registry (the test
 *   cluster writes one on every node, as an insecure in-cluster registry needs);
 * - upgrade (a registry added to agent.mirror.hostsToml.registries, agent.logLevel changed):
 *   the agents roll, the files follow the values, the new agent logs at the new level, and
 *   an image warmed before the upgrade stays warm: not one registry blob byte from before
 *   the upgrade until a pod using the image runs;
 * - uninstall: the pre-delete hook Job removes the startup taint from a node that still has
 *   it (node-2 joins tainted while no operator runs to release it), the hook's objects are
 *   gone afterwards, and every node is clean: containerd's certs.d is exactly what the
 *   administrator had (byte for byte, same mode), and the store path holds only what
 *   docs/install.md says stays (the content-addressed store, kept for a reinstall);
 * - reinstall (fresh Redis): the kept store warms the same image again with 0 registry
 *   blob bytes.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { STARTUP_TAINT_KEY } from '../../operator/src/api/types.js';
import { registryHostsToml } from '../harness/cluster.js';
import type { ClusterNode } from '../harness/cluster-node.js';
import { pushImage } from '../harness/images.js';
import {
  type E2eEnv,
  FULL,
  NAMESPACE,
  prewarmPath,
  RELEASE,
  startE2e,
  waitForState,
  waitRolledOut,
} from './env.js';
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
  waitGone,
  waitPrewarmReady,
} from './kube.js';

const MiB = 1024 * 1024;
const NS = 'team-life';
const BLOBS = /\/v2\/.+\/blobs\/sha256:/;
/** Blobs of the test's own image (the others belong to kube-prewarm's and Redis's images). */
const APP_BLOBS = /\/v2\/life\/app\/blobs\/sha256:/;
const BACKUP = 'hosts.toml.kube-prewarm-orig';
const MIRROR_HOST = '[host."http://127.0.0.1:5050"]';
const STORE = '/var/lib/kube-prewarm';
const HOOK = `${FULL}-release-nodes`;

/** Every file under `dir` (relative path → content), and every directory (→ null). */
async function tree(dir: string): Promise<Map<string, Buffer | null>> {
  const out = new Map<string, Buffer | null>();
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        out.set(`${p}/`, null);
        await walk(p);
      } else out.set(p, await readFile(join(dir, p)));
    }
  };
  await walk('');
  return out;
}

const certsDir = (node: ClusterNode) => node.hostPath('/etc/containerd/certs.d');

/** A node's certs.d as `path: first line` (directories as `path/`), for messages. */
async function certsSummary(node: ClusterNode): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [p, content] of await tree(certsDir(node)))
    out[p] = content === null ? 'dir' : (content.toString('utf8').split('\n')[0] ?? '');
  return out;
}

/**
 * What docs/install.md says a node keeps in the store path after `helm uninstall`:
 * `store/` with `blobs/sha256/<hex>` (verified content), `images/<record>.json`, and empty
 * `ingest/` and `tmp/` directories. Returns the paths that are none of these.
 */
function unexpectedStoreEntries(entries: Iterable<string>): string[] {
  const allowed = [
    /^store\/$/,
    /^store\/(blobs|blobs\/sha256|images|ingest|tmp)\/$/,
    /^store\/blobs\/sha256\/[a-f0-9]{64}$/,
    /^store\/images\/[^/]+\.json$/,
  ];
  return [...entries].filter((p) => !allowed.some((re) => re.test(p)));
}

describe('helm install, upgrade, uninstall and reinstall on real nodes', { timeout: 2_700_000 }, () => {
  let env: E2eEnv;
  let reg = '';
  let adminToml = '';
  let adminMode = 0;
  let busybox: Buffer;
  let appRef = '';
  /** The app image's blobs (config and layers). */
  let appBlobs: string[] = [];
  const appSpec = () => ({
    apiVersion: 'prewarm.kube-prewarm.io/v1alpha1',
    kind: 'ImagePrewarm',
    metadata: { name: 'app', namespace: NS },
    spec: {
      images: [{ repository: appRef.replace(/:v1$/, ''), tag: 'v1' }],
      mode: 'cache',
      // node-1 only: node-2 joins later and would fetch the image for itself.
      nodeSelector: { 'kubernetes.io/hostname': 'node-1' },
    },
  });
  const node = (i: number) => env.cluster.nodes[i]!;
  const adminFile = (n: ClusterNode) => join(certsDir(n), reg, 'hosts.toml');

  before(async () => {
    env = await startE2e({ install: false });
    reg = env.cluster.registryHost;
    busybox = await readFile('/bin/busybox');
    adminToml = registryHostsToml(reg);
    // What the administrator had before kube-prewarm came: exactly one file.
    const pre = await tree(certsDir(node(0)));
    assert.deepEqual([...pre.keys()].sort(), [`${reg}/`, `${reg}/hosts.toml`]);
    assert.equal(pre.get(`${reg}/hosts.toml`)?.toString('utf8'), adminToml);
    adminMode = (await stat(adminFile(node(0)))).mode;
  });
  after(async () => {
    await env?.close();
  });

  /** Waits until the node's certs.d has our file for each registry, the admin's file aside intact. */
  const waitHostsToml = async (n: ClusterNode, registries: string[]) =>
    waitForState(
      `${n.name}: hosts.toml for ${registries.join(', ')} pointing at the mirror`,
      () => certsSummary(n),
      (s) => registries.every((r) => s[`${r}/hosts.toml`]?.startsWith('# kube-prewarm-managed: ')),
      180_000,
    );

  const checkHostsToml = async (n: ClusterNode, registries: string[]) => {
    for (const r of registries) {
      const text = await readFile(join(certsDir(n), r, 'hosts.toml'), 'utf8');
      assert.ok(text.includes(MIRROR_HOST), `${n.name} ${r}/hosts.toml:\n${text}`);
      if (r === reg) assert.match(text, new RegExp(`^server = "http://${reg.replace(/\./g, '\\.')}"$`, 'm'));
    }
    assert.equal(
      await readFile(join(certsDir(n), reg, BACKUP), 'utf8'),
      adminToml,
      "the administrator's file, moved aside unchanged",
    );
  };

  test('helm install: containerd is pointed at the mirror, the administrator’s hosts.toml moved aside', async () => {
    await env.install();
    await waitHostsToml(node(0), [reg]);
    await checkHostsToml(node(0), [reg]);
    const s = await certsSummary(node(0));
    assert.deepEqual(Object.keys(s).sort(), [`${reg}/`, `${reg}/${BACKUP}`, `${reg}/hosts.toml`].sort());
  });

  test('an image is warmed on node-1 (cache mode)', async () => {
    const c = env.cluster;
    const img = await pushImage(c.registry, {
      repository: 'life/app',
      tag: 'v1',
      layers: [
        { files: { 'bin/busybox': busybox }, executables: ['bin/busybox'] },
        { randomBytes: 64 * MiB, seed: 41 },
      ],
    });
    const m = img.manifests[0]!;
    appBlobs = [m.config, ...m.layers].map((b) => b.digest);
    appRef = `${reg}/life/app:v1`;
    await ensureNamespace(c, NS);
    c.proxy.resetStats();
    await create(c, prewarmPath(NS), appSpec());
    const status = await waitPrewarmReady(c, NS, 'app');
    assert.equal(status.warmNodes, 1);
    assert.ok(c.proxy.bytes(BLOBS) >= 64 * MiB, 'the agent fetched the image from the registry');
  });

  test('helm upgrade with changed values: agents roll, files follow, the warm image stays warm', async () => {
    const c = env.cluster;
    const agentsBefore = (await podsOf(c, NAMESPACE, 'app.kubernetes.io/component=agent')).map(
      (p: Json) => p.metadata.uid,
    );
    assert.equal(agentsBefore.length, 1);
    c.proxy.resetStats();
    await env.install(
      { agent: { logLevel: 'debug', mirror: { hostsToml: { registries: [reg, '_default'] } } } },
      { upgrade: true },
    );
    const agents = await podsOf(c, NAMESPACE, 'app.kubernetes.io/component=agent');
    assert.equal(agents.length, 1);
    const agent = agents[0];
    assert.ok(!agentsBefore.includes(agent.metadata.uid), 'the agent pod was replaced');
    const agentEnv = agent.spec.containers.find((x: Json) => x.name === 'agent').env as Json[];
    assert.equal(agentEnv.find((e) => e.name === 'KUBE_PREWARM_LOG_LEVEL')?.value, 'debug');
    // The new process does log at debug level (pino level 20).
    await waitForState(
      'a debug line in the new agent’s log',
      () => containerLog(c, NAMESPACE, agent.metadata.name, 'agent', { tailLines: 500 }),
      (log) => log.split('\n').some((l) => l.startsWith('{"level":20')),
      120_000,
    );

    await waitHostsToml(node(0), [reg, '_default']);
    await checkHostsToml(node(0), [reg, '_default']);

    // Still warm after the roll, and served by the new agent's mirror: a pod using the image
    // starts without the registry sending a blob byte since before the upgrade.
    const status = await waitPrewarmReady(c, NS, 'app');
    assert.equal(status.warmNodes, 1);
    await create(c, `/apis/apps/v1/namespaces/${NS}/deployments`, sleeperDeployment('app', NS, appRef));
    await waitAppRunning(c, NS, 'app');
    assert.equal(
      c.proxy.bytes(BLOBS),
      0,
      `registry blob requests since the upgrade began: ${JSON.stringify(
        c.proxy.stats.log.filter((e) => BLOBS.test(e.path)),
        null,
        1,
      )}`,
    );
  });

  test('helm uninstall: the hook releases a still-gated node; certs.d and the store path are as documented', async () => {
    const c = env.cluster;
    // ImagePrewarms go first, while the operator runs (docs/install.md, Uninstall step 1).
    await c.kube.request('DELETE', `/apis/apps/v1/namespaces/${NS}/deployments/app`);
    await c.kube.request('DELETE', prewarmPath(NS, 'app'));
    await waitGone(c, prewarmPath(NS, 'app'));
    await waitGone(c, `/apis/apps/v1/namespaces/${NS}/deployments/app`);

    // A node that is still gated when kube-prewarm goes: it joins with the startup taint
    // while no operator runs to release it (scaled to 0 here; a gating ImagePrewarm still
    // warming there has the same effect).
    await mergePatch(c, {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: `${FULL}-operator`, namespace: NAMESPACE },
      spec: { replicas: 0 },
    });
    await waitForState(
      'no operator pod',
      async () =>
        (await podsOf(c, NAMESPACE, 'app.kubernetes.io/component=operator')).map(
          (p: Json) => p.metadata.name,
        ),
      (names) => names.length === 0,
    );
    const taint = `${STARTUP_TAINT_KEY}=:NoSchedule`;
    await c.addNode({ name: 'node-2', taints: [taint] });
    await waitRolledOut(c, 'DaemonSet', `${FULL}-agent`);
    await waitHostsToml(node(1), [reg, '_default']);
    await checkHostsToml(node(1), [reg, '_default']);
    const taintsOf = async (name: string) =>
      ((await get(c, `/api/v1/nodes/${name}`)).spec?.taints ?? []).map((t: Json) => `${t.key}:${t.effect}`);
    assert.ok((await taintsOf('node-2')).includes(`${STARTUP_TAINT_KEY}:NoSchedule`), 'node-2 is gated');

    const r = await env.helm(['uninstall', RELEASE, '--wait', '--timeout', '10m']);
    assert.equal(r.code, 0, `helm uninstall: ${r.stderr}\n${r.stdout}`);

    // The pre-delete hook ran: node-2 is free, and the hook left nothing behind.
    assert.ok(
      !(await taintsOf('node-2')).some((t: string) => t.startsWith(`${STARTUP_TAINT_KEY}:`)),
      `node-2 taints after uninstall: ${await taintsOf('node-2')}`,
    );
    for (const path of [
      `/apis/batch/v1/namespaces/${NAMESPACE}/jobs/${HOOK}`,
      `/api/v1/namespaces/${NAMESPACE}/serviceaccounts/${HOOK}`,
      `/apis/rbac.authorization.k8s.io/v1/clusterroles/${HOOK}`,
      `/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/${HOOK}`,
    ])
      assert.equal((await c.kube.request('GET', path)).status, 404, `${path} is left`);

    // Every pod gone: each agent's hosts-toml container has run its cleanup.
    await waitForState(
      'every kube-prewarm pod gone',
      async () =>
        (await get(c, `/api/v1/namespaces/${NAMESPACE}/pods`)).items.map((p: Json) => p.metadata.name),
      (names: string[]) => names.length === 0,
    );

    for (const n of c.nodes) {
      const certs = await tree(certsDir(n));
      assert.deepEqual(
        [...certs.keys()].sort(),
        [`${reg}/`, `${reg}/hosts.toml`],
        `${n.name}: certs.d after uninstall: ${JSON.stringify(await certsSummary(n))}`,
      );
      assert.equal(
        certs.get(`${reg}/hosts.toml`)?.toString('utf8'),
        adminToml,
        `${n.name}: restored byte for byte`,
      );
      assert.equal((await stat(adminFile(n))).mode, adminMode, `${n.name}: same mode`);

      const store = await tree(n.hostPath(STORE));
      assert.deepEqual(unexpectedStoreEntries(store.keys()), [], `${n.name}: unexpected in ${STORE}`);
      for (const dir of ['store/ingest/', 'store/tmp/'])
        assert.deepEqual(
          [...store.keys()].filter((p) => p.startsWith(dir) && p !== dir),
          [],
          `${n.name}: ${dir} is empty`,
        );
    }
    // The store is kept on purpose (docs/install.md): node-1 still has the warmed image.
    const kept = await tree(node(0).hostPath(STORE));
    for (const d of appBlobs)
      assert.ok(kept.has(`store/blobs/sha256/${d.slice('sha256:'.length)}`), `node-1 keeps ${d}`);
  });

  test('reinstall with a fresh Redis: the kept store warms the image again with 0 registry blob bytes', async () => {
    const c = env.cluster;
    c.proxy.resetStats();
    // persistence off: the Redis of the first install (its PVC stays) must not remember the warm.
    await env.install({ redis: { persistence: { enabled: false } } });
    await waitHostsToml(node(0), [reg]);
    // A new ImagePrewarm: new jobs in an empty Redis, which the agent completes from its store.
    await create(c, prewarmPath(NS), appSpec());
    const status = await waitPrewarmReady(c, NS, 'app');
    assert.equal(status.warmNodes, 1);
    // Only the app's blobs count: Redis (no volume now) may land on node-2 and pull its image.
    assert.equal(
      c.proxy.bytes(APP_BLOBS),
      0,
      `registry blob requests after the reinstall: ${JSON.stringify(
        c.proxy.stats.log.filter((e) => APP_BLOBS.test(e.path)),
        null,
        1,
      )}`,
    );
  });
});
