/**
 * The chart against a real kube-apiserver (test/harness/kube.ts):
 * - every rendered object, for several value sets, passes a server-side-apply dry run
 *   (schema, defaulting, validation and admission of the real server, nothing persisted);
 * - the chart's RBAC, applied for real, is enough for the operator's actual Kubernetes
 *   calls: the operator's own KubePort implementation (ClientNodePort) runs every call it
 *   has as a user bound by the chart's roles, and is refused what the chart does not grant;
 * - the ServiceAccount subjects resolve through the authorizer (SubjectAccessReview).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  ApiextensionsV1Api,
  AppsV1Api,
  AuthorizationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubernetesObjectApi,
  PatchStrategy,
  type V1Lease,
} from '@kubernetes/client-node';
import { parse as parseYaml } from 'yaml';
import { API_VERSION, GROUP, KIND, PLURAL, VERSION } from '../../operator/src/api/types.js';
import { ClientNodePort } from '../../operator/src/kube/client-node-port.js';
import { apiStatus } from '../../operator/src/kube/port.js';
import { errorBody, type KubeHandle, startKube } from '../harness/kube.js';
import { createNode } from '../harness/kube-nodes.js';
import { CHART_DIR, helm, type K8sObject, NAMESPACE, one, RELEASE, render } from './render.js';

const FULL = `${RELEASE}-kube-prewarm`;
const FIELD_MANAGER = 'kube-prewarm-chart-test';
const SECRET = 'a-webhook-secret-0123456789';

const quietLog = { warn: () => undefined, debug: () => undefined };

describe('the chart on a real kube-apiserver', () => {
  let kube: KubeHandle;
  let objects: KubernetesObjectApi;

  before(async () => {
    kube = await startKube();
    objects = KubernetesObjectApi.makeApiClient(kube.kc);
    const core = kube.kc.makeApiClient(CoreV1Api);
    // The pull-credentials namespace is a chart object too, but a dry run creates nothing.
    for (const name of [NAMESPACE, 'team-a', `${NAMESPACE}-pull-credentials`])
      await core.createNamespace({ body: { metadata: { name } } });
  });
  after(async () => {
    await kube?.stop();
  });

  const dryRunApply = (obj: K8sObject) =>
    objects.patch(obj, undefined, 'All', FIELD_MANAGER, true, PatchStrategy.ServerSideApply);

  const valueSets: Record<string, unknown> = {
    defaults: {},
    'webhooks, ingress, network policies, digest-pinned image': {
      image: { digest: `sha256:${'c'.repeat(64)}` },
      webhooks: {
        enabled: true,
        sources: { distribution: { secrets: [SECRET] }, gcr: { tokens: [SECRET] } },
        ingress: {
          enabled: true,
          host: 'hooks.example.com',
          tls: [{ hosts: ['hooks.example.com'], secretName: 'tls' }],
        },
      },
      networkPolicy: { enabled: true, redisNodeCidrs: ['10.0.0.0/16', 'fd00::/64'] },
    },
    'external Redis, watchNamespace, agent pull secrets, one replica': {
      redis: {
        enabled: false,
        external: { url: 'rediss://redis.example.com:6380/1', passwordSecret: 'redis' },
      },
      operator: { watchNamespace: 'team-a', replicas: 1 },
      agent: {
        rbac: { readPullSecrets: true },
        priorityClassName: 'system-node-critical',
        dockerConfigSecret: 'node-creds',
        hostNetwork: false,
        mirror: { hostsToml: { install: false } },
      },
    },
  };

  for (const [name, values] of Object.entries(valueSets)) {
    test(`every object passes a server-side dry-run apply: ${name}`, async () => {
      const objs = await render(values);
      assert.ok(objs.length > 10);
      const refused: string[] = [];
      for (const obj of objs) {
        try {
          await dryRunApply(obj);
        } catch (err) {
          refused.push(`${obj.kind}/${obj.metadata.name}: ${errorBody(err)}`);
        }
      }
      assert.deepEqual(refused, []);
    });
  }

  test('the dry run does validate: a broken DaemonSet is refused', async () => {
    const ds = structuredClone(one(await render(), 'DaemonSet'));
    ds.spec.template.spec.volumes[0].hostPath.type = 'NotAType';
    await assert.rejects(dryRunApply(ds), (err: unknown) => {
      assert.equal(apiStatus(err), 422);
      assert.match(errorBody(err), /hostPath\.type/);
      return true;
    });
  });

  describe('RBAC is sufficient for the operator and no wider', () => {
    let port: ClientNodePort;
    let custom: CustomObjectsApi;

    before(async () => {
      const objs = await render();
      const rbac = objs.filter((o) => /^(ServiceAccount|(Cluster)?Role(Binding)?)$/.test(o.kind));
      for (const obj of rbac) await objects.create(obj);
      // The harness's token user "kube-prewarm-operator" stands in for the ServiceAccount
      // (no token controller runs): bind it to the chart's roles, exactly as rendered.
      for (const obj of rbac.filter((o) => o.kind.endsWith('Binding'))) {
        const copy = structuredClone(obj);
        copy.metadata.name = `${obj.metadata.name}-test-user`;
        copy.subjects = [
          { kind: 'User', apiGroup: 'rbac.authorization.k8s.io', name: kube.operatorUser.name },
        ];
        await objects.create(copy);
      }
      custom = kube.kc.makeApiClient(CustomObjectsApi);
      await createNode(kube.kc, {
        name: 'node-a',
        taints: [{ key: 'kube-prewarm.io/warming', effect: 'NoSchedule' }],
      });
      await kube.kc.makeApiClient(CoreV1Api).createNamespacedSecret({
        namespace: 'default',
        body: {
          metadata: { name: 'pull' },
          type: 'kubernetes.io/dockerconfigjson',
          data: { '.dockerconfigjson': Buffer.from('{"auths":{}}').toString('base64') },
        },
      });
      await custom.createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: 'default',
        plural: PLURAL,
        body: {
          apiVersion: API_VERSION,
          kind: KIND,
          metadata: { name: 'app' },
          spec: { images: [{ repository: 'registry.example.com/team/app', tag: 'v1' }] },
        },
      });
      port = new ClientNodePort(kube.kubeConfigFor(kube.operatorUser), quietLog);
    });
    after(async () => {
      await port?.prewarms.stop();
      await port?.nodes.stop();
    });

    test('informers list and watch ImagePrewarms (all namespaces) and Nodes', async () => {
      await Promise.all([port.prewarms.start(), port.nodes.start()]);
      const ac = AbortSignal.timeout(20_000);
      await Promise.all([port.prewarms.waitForSync(ac), port.nodes.waitForSync(ac)]);
      assert.deepEqual(
        port.prewarms.list().map((p) => p.metadata.name),
        ['app'],
      );
      assert.ok(port.nodes.get('node-a'));
    });

    test('status patch, finalizers, node taint removal, pull-secret read, Lease create/replace', async () => {
      await port.patchPrewarmStatus('default', 'app', { observedGeneration: 1 });
      const cr = (await custom.getNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: 'default',
        plural: PLURAL,
        name: 'app',
      })) as { metadata: { resourceVersion: string }; status?: { observedGeneration?: number } };
      assert.equal(cr.status?.observedGeneration, 1);
      await port.setPrewarmFinalizers(
        'default',
        'app',
        ['prewarm.kube-prewarm.io/cleanup'],
        cr.metadata.resourceVersion,
      );

      const node = await kube.kc.makeApiClient(CoreV1Api).readNode({ name: 'node-a' });
      await port.setNodeTaints('node-a', [], node.metadata!.resourceVersion!);

      const secret = await port.readSecret('default', 'pull');
      assert.equal(secret?.type, 'kubernetes.io/dockerconfigjson');

      const leaseName = `${FULL}-operator`;
      assert.equal(await port.readLease(NAMESPACE, leaseName), undefined);
      const lease: V1Lease = {
        metadata: { name: leaseName, namespace: NAMESPACE },
        spec: { holderIdentity: 'a', leaseDurationSeconds: 15 },
      };
      const created = await port.createLease(NAMESPACE, lease);
      await port.replaceLease(NAMESPACE, leaseName, {
        ...created,
        spec: { ...created.spec, holderIdentity: 'b' },
      });
      assert.equal((await port.readLease(NAMESPACE, leaseName))?.spec?.holderIdentity, 'b');
    });

    test('refused: other Leases, Leases in other namespaces, deleting nodes, listing secrets', async () => {
      const forbidden = async (p: Promise<unknown>, what: string) => {
        await assert.rejects(
          p,
          (err: unknown) => {
            assert.equal(apiStatus(err), 403, `${what}: ${errorBody(err)}`);
            return true;
          },
          what,
        );
      };
      await port.createLease(NAMESPACE, { metadata: { name: 'other' }, spec: { holderIdentity: 'x' } });
      await forbidden(port.readLease(NAMESPACE, 'other'), 'read another Lease');
      await forbidden(
        port.createLease('default', { metadata: { name: `${FULL}-operator` }, spec: {} }),
        'create a Lease outside the release namespace',
      );
      const core = kube.kubeConfigFor(kube.operatorUser).makeApiClient(CoreV1Api);
      await forbidden(core.deleteNode({ name: 'node-a' }), 'delete a node');
      await forbidden(core.listSecretForAllNamespaces(), 'list secrets');
      await forbidden(
        core.createNamespacedPod({
          namespace: 'default',
          body: { metadata: { name: 'p' }, spec: { containers: [{ name: 'c', image: 'x' }] } },
        }),
        'create pods',
      );
    });

    test('the ServiceAccount subjects resolve to the same access (SubjectAccessReview)', async () => {
      const authz = kube.kc.makeApiClient(AuthorizationV1Api);
      const can = async (sa: string, attrs: Record<string, string>) => {
        const r = await authz.createSubjectAccessReview({
          body: {
            spec: {
              user: `system:serviceaccount:${NAMESPACE}:${sa}`,
              groups: [
                'system:serviceaccounts',
                `system:serviceaccounts:${NAMESPACE}`,
                'system:authenticated',
              ],
              resourceAttributes: attrs,
            },
          },
        });
        return r.status?.allowed === true;
      };
      const op = `${FULL}-operator`;
      assert.ok(await can(op, { group: GROUP, resource: PLURAL, verb: 'watch' }));
      assert.ok(
        await can(op, {
          group: GROUP,
          resource: PLURAL,
          subresource: 'status',
          verb: 'patch',
          namespace: 'x',
        }),
      );
      assert.ok(await can(op, { group: '', resource: 'nodes', verb: 'patch', name: 'n' }));
      assert.ok(
        await can(op, {
          group: 'coordination.k8s.io',
          resource: 'leases',
          verb: 'update',
          namespace: NAMESPACE,
          name: op,
        }),
      );
      assert.ok(!(await can(op, { group: '', resource: 'secrets', verb: 'list' })));
      const agent = `${FULL}-agent`;
      assert.ok(
        !(await can(agent, {
          group: '',
          resource: 'secrets',
          verb: 'get',
          namespace: 'default',
          name: 'pull',
        })),
      );
      assert.ok(!(await can(agent, { group: '', resource: 'nodes', verb: 'get', name: 'node-a' })));
      // The uninstall hook's account (its RBAC is rendered as pre-delete hooks).
      const hook = `${FULL}-release-nodes`;
      for (const verb of ['list', 'get', 'patch'])
        assert.ok(
          await can(hook, { group: '', resource: 'nodes', verb, name: verb === 'list' ? '' : 'n' }),
          verb,
        );
      assert.ok(!(await can(hook, { group: '', resource: 'nodes', verb: 'delete', name: 'n' })));
      assert.ok(!(await can(hook, { group: '', resource: 'secrets', verb: 'get', namespace: 'default' })));
    });
  });
});

describe('helm install, upgrade and uninstall against a real kube-apiserver', () => {
  let kube: KubeHandle;
  const helmArgs = (...args: string[]) => [
    ...args,
    '--namespace',
    NAMESPACE,
    '--kubeconfig',
    kube.kubeconfigPath,
  ];

  before(async () => {
    // No CRDs up front: helm installs them from the chart's crds/.
    kube = await startKube({ applyCrds: false });
  });
  after(async () => {
    await kube?.stop();
  });

  /** The generated passwords of the bundled Redis's users, by Secret key. */
  const redisPasswords = async (): Promise<Record<string, string>> => {
    const s = await kube.kc
      .makeApiClient(CoreV1Api)
      .readNamespacedSecret({ namespace: NAMESPACE, name: `${FULL}-redis` });
    return Object.fromEntries(
      Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]),
    );
  };

  test('install creates the CRD and every object; the NOTES example is a valid ImagePrewarm', async () => {
    const r = await helm(helmArgs('install', RELEASE, CHART_DIR, '--create-namespace'), {});
    assert.equal(r.code, 0, r.stderr);
    const crd = await kube.kc
      .makeApiClient(ApiextensionsV1Api)
      .readCustomResourceDefinition({ name: `${PLURAL}.${GROUP}` });
    assert.equal(crd.metadata?.labels?.['app.kubernetes.io/name'], 'kube-prewarm');
    const apps = kube.kc.makeApiClient(AppsV1Api);
    assert.equal(
      (await apps.readNamespacedDeployment({ namespace: NAMESPACE, name: `${FULL}-operator` })).spec
        ?.replicas,
      2,
    );
    await apps.readNamespacedDaemonSet({ namespace: NAMESPACE, name: `${FULL}-agent` });
    await apps.readNamespacedStatefulSet({ namespace: NAMESPACE, name: `${FULL}-redis` });
    const passwords = await redisPasswords();
    assert.deepEqual(Object.keys(passwords).sort(), ['agent-password', 'operator-password']);
    for (const pw of Object.values(passwords)) assert.match(pw, /^[A-Za-z0-9]{32}$/);

    // NOTES.txt shows how to warm a first image: that example must be accepted as written.
    const m = /cat <<'YAML' \| kubectl apply -f -\n([\s\S]*?)\n\s*YAML\n/.exec(r.stdout);
    assert.ok(m, `no ImagePrewarm example in the NOTES:\n${r.stdout}`);
    const example = parseYaml(m[1]!.replace(/^ {2}/gm, '')) as K8sObject;
    assert.equal(example.kind, KIND);
    await KubernetesObjectApi.makeApiClient(kube.kc).create(example);
  });

  test('upgrade keeps the generated Redis passwords and applies changed values', async () => {
    const before = await redisPasswords();
    const r = await helm(helmArgs('upgrade', RELEASE, CHART_DIR), { agent: { logLevel: 'debug' } });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(
      await redisPasswords(),
      before,
      'new passwords would lock the components out until every pod restarted',
    );
    const ds = await kube.kc
      .makeApiClient(AppsV1Api)
      .readNamespacedDaemonSet({ namespace: NAMESPACE, name: `${FULL}-agent` });
    const env = ds.spec?.template.spec?.containers[0]?.env ?? [];
    assert.equal(env.find((e) => e.name === 'KUBE_PREWARM_LOG_LEVEL')?.value, 'debug');
  });

  test('uninstall removes the release but keeps the CRD and the ImagePrewarms', async () => {
    // No controller-manager runs here, so the pre-delete hook's Job would never finish:
    // test/e2e/lifecycle.test.ts runs the hook on a real cluster.
    const r = await helm(helmArgs('uninstall', RELEASE, '--no-hooks'), undefined);
    assert.equal(r.code, 0, r.stderr);
    const apps = kube.kc.makeApiClient(AppsV1Api);
    await assert.rejects(
      apps.readNamespacedDaemonSet({ namespace: NAMESPACE, name: `${FULL}-agent` }),
      (err: unknown) => {
        assert.equal(apiStatus(err), 404);
        return true;
      },
    );
    const left = (await kube.kc
      .makeApiClient(CustomObjectsApi)
      .listClusterCustomObject({ group: GROUP, version: VERSION, plural: PLURAL })) as { items: unknown[] };
    assert.equal(left.items.length, 1, 'Helm never deletes crds/ (nor, therefore, the resources)');
  });
});
