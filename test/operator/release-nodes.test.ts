/**
 * `kube-prewarm operator release-nodes` (operator/src/release-nodes.ts), the chart's
 * pre-delete hook, against a real kube-apiserver (test/harness/kube.ts), running as a user
 * bound by nothing but the ClusterRole the chart renders for the hook: it removes the
 * startup taint (every effect) from every node and keeps every other taint, survives a
 * node changing under it (409 → read again), reports what it could not do with a non-zero
 * exit, and its role allows nothing beyond nodes get/list/patch.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { CoreV1Api, KubernetesObjectApi, type V1Node, type V1Taint } from '@kubernetes/client-node';
import { STARTUP_TAINT_KEY } from '../../operator/src/api/types.js';
import { apiStatus } from '../../operator/src/kube/port.js';
import { silentLogger } from '../../operator/src/logger.js';
import {
  ClientNodeTaintApi,
  type NodeTaintApi,
  releaseNodes,
  releaseNodesCommand,
} from '../../operator/src/release-nodes.js';
import { errorBody, type KubeHandle, startKube } from '../harness/kube.js';
import { createNode, patchNode, readNode } from '../harness/kube-nodes.js';
import { type K8sObject, render } from '../helm/render.js';

const GATE: V1Taint = { key: STARTUP_TAINT_KEY, effect: 'NoSchedule' };
const GPU: V1Taint = { key: 'dedicated', value: 'gpu', effect: 'NoSchedule' };
const DRAIN: V1Taint = { key: 'example.com/drain', effect: 'NoExecute' };

/** A log destination that keeps the JSON lines. */
function logSink(): { stream: Writable; lines: () => Record<string, unknown>[] } {
  let text = '';
  const stream = new Writable({
    write(chunk, _enc, cb) {
      text += String(chunk);
      cb();
    },
  });
  return {
    stream,
    lines: () =>
      text
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

const taintsOf = async (kube: KubeHandle, name: string) =>
  ((await readNode(kube.kc, name)).spec?.taints ?? []).map((t) => ({
    key: t.key,
    effect: t.effect,
    ...(t.value ? { value: t.value } : {}),
  }));

describe('operator release-nodes (the pre-delete hook) on a real kube-apiserver', () => {
  let kube: KubeHandle;
  let hookRbac: K8sObject[];

  before(async () => {
    kube = await startKube({ applyCrds: false });
    const objects = KubernetesObjectApi.makeApiClient(kube.kc);
    await kube.kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: 'kube-prewarm' } } });
    // Exactly what the chart renders for the hook, plus a binding of the same ClusterRole to
    // the harness's token user (no token controller runs to give the ServiceAccount one).
    hookRbac = (await render()).filter(
      (o) => o.metadata.labels?.['app.kubernetes.io/component'] === 'release-nodes' && o.kind !== 'Job',
    );
    assert.deepEqual(hookRbac.map((o) => o.kind).sort(), [
      'ClusterRole',
      'ClusterRoleBinding',
      'ServiceAccount',
    ]);
    for (const o of hookRbac) {
      const copy = structuredClone(o);
      delete copy.metadata.annotations;
      await objects.create(copy);
    }
    const binding = structuredClone(hookRbac.find((o) => o.kind === 'ClusterRoleBinding')!);
    delete binding.metadata.annotations;
    binding.metadata.name = `${binding.metadata.name}-test-user`;
    binding.subjects = [
      { kind: 'User', apiGroup: 'rbac.authorization.k8s.io', name: kube.operatorUser.name },
    ];
    await objects.create(binding);

    await createNode(kube.kc, { name: 'gated', taints: [GATE] });
    await createNode(kube.kc, {
      name: 'gated-and-more',
      taints: [GPU, GATE, { key: STARTUP_TAINT_KEY, effect: 'NoExecute' }, DRAIN],
    });
    await createNode(kube.kc, { name: 'free' });
    await createNode(kube.kc, { name: 'others-only', taints: [GPU] });
  });
  after(async () => {
    await kube?.stop();
  });

  test('removes the startup taint (every effect) from every node, keeps the other taints; a rerun changes nothing', async () => {
    const log = logSink();
    const code = await releaseNodesCommand(['--log-level=debug'], {
      kubeConfig: kube.kubeConfigFor(kube.operatorUser),
      logDestination: log.stream,
    });
    assert.equal(code, 0, JSON.stringify(log.lines()));
    assert.deepEqual(await taintsOf(kube, 'gated'), []);
    assert.deepEqual(await taintsOf(kube, 'gated-and-more'), [GPU, DRAIN]);
    assert.deepEqual(await taintsOf(kube, 'free'), []);
    assert.deepEqual(await taintsOf(kube, 'others-only'), [GPU]);
    const summary = log.lines().at(-1)!;
    assert.deepEqual(summary.released, ['gated', 'gated-and-more']);
    assert.equal(summary.untainted, 2);

    const again = logSink();
    assert.equal(
      await releaseNodesCommand([], {
        kubeConfig: kube.kubeConfigFor(kube.operatorUser),
        logDestination: again.stream,
      }),
      0,
    );
    assert.deepEqual(again.lines().at(-1)!.released, []);
    assert.deepEqual(await taintsOf(kube, 'gated-and-more'), [GPU, DRAIN]);
  });

  test('a node that changes between list and patch is read again; the concurrent change is kept', async () => {
    await createNode(kube.kc, { name: 'busy', taints: [GATE, GPU] });
    const real = new ClientNodeTaintApi(kube.kubeConfigFor(kube.operatorUser));
    let conflicts = 0;
    const racing: NodeTaintApi = {
      listNodes: () => real.listNodes(),
      readNode: (n) => real.readNode(n),
      async setNodeTaints(name, taints, rv) {
        // Someone else (the kubelet, a user) writes the node first, once.
        if (name === 'busy' && conflicts === 0) {
          await patchNode(kube.kc, 'busy', { metadata: { labels: { 'example.com/touched': 'yes' } } });
          try {
            await real.setNodeTaints(name, taints, rv);
          } catch (err) {
            conflicts++;
            throw err;
          }
        }
        return real.setNodeTaints(name, taints, rv);
      },
    };
    const report = await releaseNodes(racing, { log: silentLogger() });
    assert.equal(conflicts, 1, 'the stale patch was refused (409)');
    assert.deepEqual(report.released, ['busy']);
    assert.deepEqual(report.failed, []);
    const node = await readNode(kube.kc, 'busy');
    assert.deepEqual(
      node.spec?.taints?.map((t) => t.key),
      [GPU.key],
    );
    assert.equal(node.metadata?.labels?.['example.com/touched'], 'yes');
  });

  test('a node that keeps conflicting is reported, the others are still released, and the exit code says so', async () => {
    await createNode(kube.kc, { name: 'stuck', taints: [GATE] });
    await createNode(kube.kc, { name: 'later', taints: [GATE] });
    const real = new ClientNodeTaintApi(kube.kubeConfigFor(kube.operatorUser));
    const conflict = Object.assign(new Error('Operation cannot be fulfilled: the object has been modified'), {
      code: 409,
    });
    let patches = 0;
    const api: NodeTaintApi = {
      listNodes: () => real.listNodes(),
      readNode: (n) => real.readNode(n),
      async setNodeTaints(name, taints, rv) {
        if (name !== 'stuck') return real.setNodeTaints(name, taints, rv);
        patches++;
        throw conflict;
      },
    };
    const report = await releaseNodes(api, { log: silentLogger(), attempts: 3 });
    assert.equal(patches, 3);
    assert.deepEqual(
      report.failed.map((f) => f.node),
      ['stuck'],
    );
    assert.deepEqual(report.released, ['later']);
    assert.deepEqual(await taintsOf(kube, 'stuck'), [GATE]);
    assert.deepEqual(await taintsOf(kube, 'later'), []);
  });

  test('without list access (no hook role) the command fails with exit code 1 and changes nothing', async () => {
    const log = logSink();
    // Same server and CA, a token the apiserver does not know: the list is refused.
    const kc = kube.kubeConfigFor({ name: 'nobody', token: 'x'.repeat(32), groups: [] });
    const code = await releaseNodesCommand([], { kubeConfig: kc, logDestination: log.stream });
    assert.equal(code, 1);
    assert.match(JSON.stringify(log.lines()), /could not list the nodes/);
    assert.deepEqual(await taintsOf(kube, 'stuck'), [GATE]);
  });

  test('bad flags are a usage error (exit code 2)', async () => {
    assert.equal(await releaseNodesCommand(['--attempts=0'], { logDestination: logSink().stream }), 2);
    assert.equal(await releaseNodesCommand(['--bogus'], { logDestination: logSink().stream }), 2);
  });

  test('the hook role allows nodes get/list/patch and nothing else', async () => {
    const core = kube.kubeConfigFor(kube.operatorUser).makeApiClient(CoreV1Api);
    const forbidden = async (p: Promise<unknown>, what: string) =>
      assert.rejects(
        p,
        (err: unknown) => {
          assert.equal(apiStatus(err), 403, `${what}: ${errorBody(err)}`);
          return true;
        },
        what,
      );
    await core.readNode({ name: 'free' });
    await forbidden(core.deleteNode({ name: 'free' }), 'delete a node');
    await forbidden(core.patchNodeStatus({ name: 'free', body: {} }), 'patch node status');
    await forbidden(core.listPodForAllNamespaces(), 'list pods');
    await forbidden(core.listSecretForAllNamespaces(), 'list secrets');
    await forbidden(core.createNode({ body: { metadata: { name: 'new' } } as V1Node }), 'create a node');
  });
});
