/**
 * Startup gating with the real scheduler (issue 10, 4c) and its deadline (issue 11): new
 * kubelets register with the startup taint `kube-prewarm.io/warming:NoSchedule`
 * (`--register-with-taints`, as Karpenter's startupTaints do) while an ImagePrewarm with
 * `startup.gateNodes` selects them.
 *
 * The agent DaemonSet runs only on nodes labelled `kp-test/agent=true` here, so a test
 * decides when a new node's agent starts: node-2's agent starts only after the pod that
 * needs the image was seen refused by the scheduler because of the taint (no race with a
 * fast warm), and node-3's store is made a 64 MiB tmpfs inside the node's mount namespace
 * before its agent's pod exists (the hostPath mount is taken when the container starts).
 *
 * 1. node-2: the pod pinned to it stays Pending (FailedScheduling: the untolerated startup
 *    taint) until the operator removes the taint, which it does once the image is warm;
 *    then the pod starts with the image already on the machine and the registry serves the
 *    image's blobs once in total (the agent's warm), none for the pod.
 * 2. node-3: a full store disk: the status names the node with PW_ERR_DISK_FULL and the
 *    budget numbers, the store holds nothing corrupt, and the gate deadline
 *    (`gateDeadlineSeconds: 60`) releases the node (fail open) with GateDeadlineExceeded
 *    naming it; the pod pinned to node-3 then runs.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { pushImage } from '../harness/images.js';
import { patchNode } from '../harness/kube-nodes.js';
import { type E2eEnv, NAMESPACE, prewarmPath, startE2e, waitForState } from './env.js';
import {
  condition,
  create,
  ensureNamespace,
  eventLines,
  get,
  type Json,
  nodePullDiagnostics,
  operatorLogAbout,
  waitAppRunning,
} from './kube.js';

const MiB = 1024 * 1024;
const NS = 'team-gate';
const AGENT_LABEL = 'kp-test/agent';
const TAINT_KEY = 'kube-prewarm.io/warming';
const STARTUP_TAINT = `${TAINT_KEY}:NoSchedule`;

describe('startup gating with the real scheduler, and its deadline', { timeout: 2_400_000 }, () => {
  let env: E2eEnv;
  let busybox: Buffer;
  before(async () => {
    env = await startE2e({
      nodes: [{ name: 'node-1', labels: { [AGENT_LABEL]: 'true' } }],
      values: {
        agent: { nodeSelector: { [AGENT_LABEL]: 'true' } },
        // The tenancy policy lets no namespace gate nodes by default.
        operator: { policy: { gateNodesNamespaces: [NS] } },
      },
    });
    busybox = await readFile('/bin/busybox');
    await ensureNamespace(env.cluster, NS);
  });
  after(async () => {
    await env?.close();
  });

  const node = (name: string): Promise<Json> => get(env.cluster, `/api/v1/nodes/${name}`);
  const hasStartupTaint = (n: Json): boolean =>
    (n.spec?.taints ?? []).some((t: Json) => t.key === TAINT_KEY && t.effect === 'NoSchedule');
  const labelForAgent = async (name: string): Promise<void> => {
    await patchNode(env.cluster.kc, name, { metadata: { labels: { [AGENT_LABEL]: 'true' } } });
  };
  /** A node's NoSchedule/NoExecute taint keys. */
  const blockingTaints = (n: Json): string[] =>
    (n.spec?.taints ?? []).filter((t: Json) => t.effect !== 'PreferNoSchedule').map((t: Json) => t.key);
  const isReady = (n: Json): boolean =>
    (n.status?.conditions ?? []).some((x: Json) => x.type === 'Ready' && x.status === 'True');
  const prewarm = (name: string): Promise<Json> => get(env.cluster, prewarmPath(NS, name));
  /** A bare Pod of `app=<name>` running `image`, that can only go to `nodeName`. */
  const pinnedPod = (name: string, image: string, nodeName: string): Json => ({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: NS, labels: { app: name } },
    spec: {
      terminationGracePeriodSeconds: 1,
      nodeSelector: { 'kubernetes.io/hostname': nodeName },
      containers: [
        { name: 'app', image, imagePullPolicy: 'IfNotPresent', command: ['/bin/busybox', 'sleep', '3600'] },
      ],
    },
  });
  const pod = (name: string): Promise<Json> => get(env.cluster, `/api/v1/namespaces/${NS}/pods/${name}`);

  let appRef = '';

  test('a pod needing the image waits for the gated node until it is warm, then starts with the image present', async () => {
    const c = env.cluster;
    const repository = 'team/gated';
    const img = await pushImage(c.registry, {
      repository,
      tag: 'v1',
      layers: [
        { files: { 'bin/busybox': busybox }, executables: ['bin/busybox'] },
        { randomBytes: 64 * MiB, seed: 21 },
      ],
    });
    const m = img.manifests[0]!;
    const size = [m.config, ...m.layers].reduce((n, b) => n + b.size, 0);
    appRef = `${c.registryHost}/${repository}:v1`;
    const blobs = new RegExp(`^/v2/${repository}/blobs/sha256:`);

    await create(c, prewarmPath(NS), {
      apiVersion: 'prewarm.kube-prewarm.io/v1alpha1',
      kind: 'ImagePrewarm',
      metadata: { name: 'gated', namespace: NS },
      spec: {
        images: [{ repository: `${c.registryHost}/${repository}`, tag: 'v1' }],
        nodeSelector: { pool: 'gated' },
        mode: 'unpack',
        triggers: { onNodeJoin: true },
        startup: { gateNodes: true, gateDeadlineSeconds: 3600 },
      },
    });
    await waitForState(
      'ImagePrewarm gated resolved',
      async () => (await prewarm('gated')).status ?? {},
      (s: Json) => s.images?.[0]?.digest === img.digest,
      120_000,
    );
    // The pod exists before the node: nothing else can take it.
    await create(c, `/api/v1/namespaces/${NS}/pods`, pinnedPod('app-gated', appRef, 'node-2'));
    c.proxy.resetStats();
    await c.addNode({ name: 'node-2', taints: [STARTUP_TAINT], labels: { pool: 'gated' } });

    // No agent on node-2 yet: its job waits and the gate holds. node-2 is Ready, matches the
    // pod's selector and carries no blocking taint but the startup one, and the scheduler
    // refuses the pod for an untolerated taint (1.34 does not name it): the startup taint.
    const refused = await waitForState(
      'node-2 Ready with only the startup taint, and app-gated refused for an untolerated taint',
      async () => {
        const n = await node('node-2');
        return {
          ready: isReady(n),
          taints: blockingTaints(n),
          events: (await eventLines(c, NS))
            .split('\n')
            .filter((l) => l.startsWith('Pod/app-gated FailedScheduling')),
        };
      },
      (s) =>
        s.ready &&
        s.taints.length === 1 &&
        s.taints[0] === TAINT_KEY &&
        s.events.some((l) => /1 node\(s\) had untolerated taint/.test(l)),
      300_000,
    );
    const held = await waitForState(
      'node-2 targeted, its job queued',
      async () => (await prewarm('gated')).status ?? {},
      (s: Json) => s.targetNodes === 1 && s.images?.[0]?.nodePhases?.queued === 1,
      120_000,
    );
    assert.equal(held.warmNodes, 0);
    assert.deepEqual(blockingTaints(await node('node-2')), [TAINT_KEY], 'node-2 keeps the startup taint');
    const pending = await pod('app-gated');
    assert.equal(pending.spec.nodeName, undefined, 'the pod is not scheduled yet');
    assert.equal(pending.status.phase, 'Pending');
    const scheduled = (pending.status.conditions ?? []).find((x: Json) => x.type === 'PodScheduled');
    assert.equal(scheduled?.reason, 'Unschedulable', JSON.stringify(pending.status));

    // The agent comes: the image is warmed and unpacked, the taint removed, the pod scheduled.
    await labelForAgent('node-2');
    const [running] = await waitAppRunning(c, NS, 'app-gated', 600_000);
    assert.equal(running.spec.nodeName, 'node-2');
    assert.equal(hasStartupTaint(await node('node-2')), false, 'the operator removed the startup taint');
    const status = await prewarm('gated');
    assert.equal(status.status.warm, '1/1');
    assert.equal(condition(status, 'Ready')?.status, 'True');
    assert.equal(status.status.expiredGates, undefined, 'released because warm, not by the deadline');

    // The pod found the image on the machine; the registry served its blobs once in total
    // (the agent's warm) and nothing for the pod's start.
    const events = await eventLines(c, NS);
    assert.match(
      events,
      new RegExp(
        `Pod/app-gated Pulled: Container image "${appRef.replace(/[.:/]/g, '\\$&')}" already present on machine`,
      ),
      events,
    );
    const served = c.proxy.bytes(blobs);
    assert.ok(
      served >= size && served < size * 1.1,
      `registry served ${served} B of ${repository}'s blobs for a ${size} B image (warm + pod start); ${JSON.stringify(c.proxy.stats.log.filter((e) => blobs.test(e.path)))}\n${served >= size && served < size * 1.1 ? '' : await nodePullDiagnostics(c, NAMESPACE, 'node-2')}`,
    );
    assert.ok(refused.events.length > 0);
  });

  test('a full store disk: a clear reason, nothing corrupt, and the gate deadline releases the node', async () => {
    const c = env.cluster;
    const repository = 'team/big';
    const big = await pushImage(c.registry, {
      repository,
      tag: 'v1',
      layers: [{ randomBytes: 128 * MiB, seed: 22 }],
    });
    const bigLayer = big.manifests[0]!.layers[0]!.digest;
    await create(c, prewarmPath(NS), {
      apiVersion: 'prewarm.kube-prewarm.io/v1alpha1',
      kind: 'ImagePrewarm',
      metadata: { name: 'full', namespace: NS },
      spec: {
        images: [{ repository: `${c.registryHost}/${repository}`, tag: 'v1' }],
        nodeSelector: { pool: 'full' },
        triggers: { onNodeJoin: true },
        startup: { gateNodes: true, gateDeadlineSeconds: 60 },
      },
    });
    await waitForState(
      'ImagePrewarm full resolved',
      async () => (await prewarm('full')).status ?? {},
      (s: Json) => s.images?.[0]?.digest === big.digest,
      120_000,
    );
    await create(c, `/api/v1/namespaces/${NS}/pods`, pinnedPod('app-full', appRef, 'node-3'));
    const n3 = await c.addNode({ name: 'node-3', taints: [STARTUP_TAINT], labels: { pool: 'full' } });
    const created = Date.parse((await node('node-3')).metadata.creationTimestamp);
    // A small store filesystem, inside the node only, before the agent's pod exists.
    await n3.run('mkdir', ['-p', '/var/lib/kube-prewarm']);
    await n3.run('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', '/var/lib/kube-prewarm']);
    await labelForAgent('node-3');

    // The agent reports why: the 128 MiB image cannot fit a 64 MiB store (80% budget).
    const failing = await waitForState(
      'node-3 failing with PW_ERR_DISK_FULL',
      async () => (await prewarm('full')).status ?? {},
      (s: Json) =>
        (s.images?.[0]?.failingNodes ?? []).some(
          (f: Json) => f.node === 'node-3' && f.reason === 'PW_ERR_DISK_FULL',
        ),
      600_000,
    );
    const f = failing.images[0].failingNodes.find((x: Json) => x.node === 'node-3');
    assert.match(f.message, /budget/, f.message);

    // Fail open: the deadline (60 s after node-3 joined) releases it, and the status says why.
    const released = await waitForState(
      'node-3 released by the gate deadline',
      async () => {
        const n = await node('node-3');
        return { tainted: hasStartupTaint(n), status: (await prewarm('full')).status ?? {} };
      },
      (s) => !s.tainted,
      600_000,
    );
    const expired = released.status.expiredGates ?? [];
    if (expired.length !== 1 || expired[0].node !== 'node-3') {
      assert.fail(
        `status right after the release: ${JSON.stringify(released.status)}\n${await operatorLogAbout(c, NAMESPACE, 'node-3')}`,
      );
    }
    assert.ok(Date.parse(expired[0].time) >= created + 60_000, `expired at ${expired[0].time}`);
    assert.match(expired[0].message, /not warm 60s after joining/);
    const degraded = condition({ status: released.status }, 'Degraded');
    assert.equal(degraded?.reason, 'GateDeadlineExceeded');
    assert.match(degraded?.message ?? '', /node-3/);
    assert.equal(condition({ status: released.status }, 'Ready')?.status, 'False');

    // Pods are no longer kept off node-3.
    const [running] = await waitAppRunning(c, NS, 'app-full', 600_000);
    assert.equal(running.spec.nodeName, 'node-3');

    // Nothing corrupt (the store's contract, agent/src/store/): every committed blob hashes to
    // its name; every image record names only committed content; the big image's layer is
    // neither committed nor partly downloaded (a job whose image cannot fit downloads no
    // byte of it); what is left in ingest/ is a resumable partial (meta.json with the blob's
    // size, data no longer than it, blob not committed), e.g. the mirror's pass-through of
    // the pod's image that hit ENOSPC (containerd then pulled from the registry).
    const store = '/var/lib/kube-prewarm/store';
    const files = (await n3.run('find', [store, '-type', 'f', '-printf', '%s %p\n']))
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const i = l.indexOf(' ');
        return { size: Number(l.slice(0, i)), path: l.slice(i + 1) };
      });
    const committed = new Set<string>();
    for (const b of files.filter((x) => x.path.startsWith(`${store}/blobs/sha256/`))) {
      const hex = b.path.slice(b.path.lastIndexOf('/') + 1);
      const [sum] = (await n3.run('sha256sum', [b.path])).split(' ');
      assert.equal(sum, hex, `${b.path} holds other bytes than its name says`);
      committed.add(`sha256:${hex}`);
    }
    assert.ok(!committed.has(bigLayer), 'the big layer is not committed');
    for (const r of files.filter((x) => x.path.startsWith(`${store}/images/`) && x.path.endsWith('.json'))) {
      const record = JSON.parse(await n3.run('cat', [r.path])) as { manifests: string[]; blobs: string[] };
      for (const d of [...record.manifests, ...record.blobs])
        assert.ok(committed.has(d), `${r.path} names ${d}, which is not in the store`);
    }
    const partials = files.filter((x) => x.path.startsWith(`${store}/ingest/`) && x.path.endsWith('/data'));
    for (const d of partials) {
      const dir = d.path.slice(0, -'/data'.length);
      const digest = `sha256:${dir.slice(dir.lastIndexOf('/') + 1)}`;
      assert.notEqual(digest, bigLayer, `${d.size} B of the big layer were downloaded`);
      assert.ok(!committed.has(digest), `${dir}: partial of a committed blob`);
      const meta = JSON.parse(await n3.run('cat', [`${dir}/meta.json`])) as { size?: number };
      assert.ok(
        typeof meta.size === 'number' && d.size <= meta.size,
        `${dir}: ${d.size} B, meta ${JSON.stringify(meta)}`,
      );
    }
  });
});
