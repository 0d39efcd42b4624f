/**
 * The Helm chart (helm/kube-prewarm): `helm lint`, `helm template` with several value
 * sets, and the wiring that matters, checked against the code it configures rather than
 * against copied strings:
 * - the rendered env of each container goes through the binaries' own config loaders
 *   (operator/src/config.ts, agent/src/daemon/config.ts), so a renamed variable or a
 *   value the binary would refuse fails here;
 * - the rendered webhook Secret goes through the operator's own webhook router builder;
 * - the CRD in the chart is byte-identical to crds/;
 * - values.schema.json refuses bad values with the offending path.
 * The real-apiserver checks (server-side dry-run, RBAC through the authorizer) are in
 * chart-apiserver.test.ts.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { describe, test } from 'node:test';
import { Registry } from 'prom-client';
import { parse as parseYaml } from 'yaml';
import { AGENT_SETTINGS, loadConfig as loadAgentConfig } from '../../agent/src/daemon/config.js';
import { STARTUP_TAINT_KEY } from '../../operator/src/api/types.js';
import {
  loadConfig as loadOperatorConfig,
  SETTINGS as OPERATOR_SETTINGS,
} from '../../operator/src/config.js';
import { parseReleaseNodesArgs } from '../../operator/src/release-nodes.js';
import {
  createWebhookHandler,
  MemoryDedupStore,
  parseWebhookOptionsFile,
  silentLogger,
} from '../../operator/src/webhooks/index.js';
import { loadReceiverConfig, RECEIVER_SETTINGS } from '../../operator/src/webhooks/receiver-config.js';
import { REPO_ROOT } from '../harness/kube.js';
import {
  all,
  allows,
  CHART_DIR,
  containerEnv,
  envNames,
  helm,
  type K8sObject,
  KUBE_VERSION,
  NAMESPACE,
  one,
  RELEASE,
  render,
  renderError,
} from './render.js';

const FULL = `${RELEASE}-kube-prewarm`;
const SECRET_A = 'a-webhook-secret-0123456789';
const SECRET_B = 'another-webhook-secret-9876';
const SERVICE_MONITOR = 'monitoring.coreos.com/v1/ServiceMonitor';

const operatorEnvNames = new Set(Object.values(OPERATOR_SETTINGS).map((s) => s.env));
const agentEnvNames = new Set(Object.values(AGENT_SETTINGS).map((s) => s.env));
const receiverEnvNames = new Set(Object.values(RECEIVER_SETTINGS).map((s) => s.env));

/** Env vars a chart container sets that are not settings themselves (helpers for $(...)). */
// Variables the chart sets for the runtime rather than for our config modules.
const HELPER_ENV = new Set(['REDIS_PASSWORD', 'NODE_OPTIONS', 'NODE_IP']);

const container = (o: K8sObject, name: string) => {
  const c = o.spec.template.spec.containers.find((x: { name: string }) => x.name === name);
  assert.ok(c, `${o.kind} ${o.metadata.name} has no container ${name}`);
  return c;
};

/** Secret data (base64 `data` or `stringData`) of the rendered Secrets, by `name/key`. */
function secretFacts(objs: K8sObject[], extra: Record<string, string> = {}): Record<string, string> {
  const out: Record<string, string> = { ...extra };
  for (const s of all(objs, 'Secret')) {
    for (const [k, v] of Object.entries((s.data ?? {}) as Record<string, string>))
      out[`${s.metadata.name}/${k}`] = Buffer.from(v, 'base64').toString('utf8');
    for (const [k, v] of Object.entries((s.stringData ?? {}) as Record<string, string>))
      out[`${s.metadata.name}/${k}`] = v;
  }
  return out;
}

function operatorEnv(objs: K8sObject[], extraSecrets: Record<string, string> = {}) {
  const dep = one(objs, 'Deployment', '-operator');
  return containerEnv(container(dep, 'operator'), {
    fields: { 'metadata.name': `${FULL}-operator-5d9c7-abcde`, 'metadata.namespace': NAMESPACE },
    secrets: secretFacts(objs, extraSecrets),
  });
}

function agentEnv(objs: K8sObject[], extraSecrets: Record<string, string> = {}) {
  const ds = one(objs, 'DaemonSet', '-agent');
  return containerEnv(container(ds, 'agent'), {
    fields: { 'spec.nodeName': 'node-a.example', 'status.hostIP': '10.1.2.3' },
    secrets: secretFacts(objs, extraSecrets),
  });
}

describe('helm lint', () => {
  const valueSets: Record<string, unknown> = {
    defaults: {},
    externalRedis: {
      redis: { enabled: false, external: { url: 'rediss://redis.example:6380/2', passwordSecret: 'r' } },
    },
    webhooks: {
      webhooks: {
        enabled: true,
        sources: { distribution: { secrets: [SECRET_A] } },
        ingress: { enabled: true },
      },
    },
    everything: {
      operator: { watchNamespace: 'team-a' },
      agent: { rbac: { readPullSecrets: true }, priorityClassName: 'system-node-critical' },
      monitoring: { serviceMonitor: { enabled: true } },
      networkPolicy: { enabled: true, redisNodeCidrs: ['10.0.0.0/16'] },
      webhooks: {
        enabled: true,
        sources: { github: { secrets: [SECRET_A] } },
        ingress: { enabled: true },
        receiver: { ingressFrom: [{ podSelector: {} }] },
      },
    },
  };
  for (const [name, values] of Object.entries(valueSets)) {
    test(`passes --strict with ${name} values`, async () => {
      const r = await helm(['lint', '--strict', CHART_DIR, '--kube-version', '1.34.0'], values);
      assert.equal(r.code, 0, `helm lint failed:\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
    });
  }
});

describe('CRDs', () => {
  test('the chart ships exactly the repository crds/, byte for byte', async () => {
    const repo = (await readdir(join(REPO_ROOT, 'crds'))).filter((f) => /\.ya?ml$/.test(f)).sort();
    const chart = (await readdir(join(CHART_DIR, 'crds'))).filter((f) => /\.ya?ml$/.test(f)).sort();
    assert.deepEqual(chart, repo, 'run helm/sync-crds.sh');
    for (const f of repo) {
      const a = await readFile(join(REPO_ROOT, 'crds', f), 'utf8');
      const b = await readFile(join(CHART_DIR, 'crds', f), 'utf8');
      assert.ok(a === b, `helm/kube-prewarm/crds/${f} differs from crds/${f}: run helm/sync-crds.sh`);
    }
  });

  test('helm template does not template them (Helm installs crds/ itself)', async () => {
    const objs = await render();
    assert.equal(all(objs, 'CustomResourceDefinition').length, 0);
    const withCrds = await render({}, { args: ['--include-crds'] });
    const crd = one(withCrds, 'CustomResourceDefinition');
    assert.equal(crd.metadata.name, 'imageprewarms.prewarm.kube-prewarm.io');
  });
});

describe('default values', () => {
  test('render the operator, agents, bundled Redis, RBAC and a PDB, and no optional extras', async () => {
    const objs = await render();
    const kinds = objs.map((o) => `${o.kind}/${o.metadata.name}`).sort();
    for (const want of [
      `Deployment/${FULL}-operator`,
      `DaemonSet/${FULL}-agent`,
      `StatefulSet/${FULL}-redis`,
      `Service/${FULL}-operator`,
      `Service/${FULL}-agent`,
      `Service/${FULL}-redis`,
      `Secret/${FULL}-redis`,
      `ConfigMap/${FULL}-redis`,
      `ServiceAccount/${FULL}-operator`,
      `ServiceAccount/${FULL}-agent`,
      `ClusterRole/${FULL}-operator`,
      `ClusterRoleBinding/${FULL}-operator`,
      `Role/${FULL}-leader-election`,
      `RoleBinding/${FULL}-leader-election`,
      `PodDisruptionBudget/${FULL}-operator`,
    ])
      assert.ok(kinds.includes(want), `missing ${want} in ${kinds.join(', ')}`);
    for (const absent of ['ServiceMonitor', 'NetworkPolicy', 'Ingress'])
      assert.equal(all(objs, absent).length, 0, `${absent} rendered by default`);
    assert.equal(
      objs.filter((o) => o.metadata.name.includes('webhooks')).length,
      0,
      'webhook objects without webhooks.enabled',
    );
    for (const o of objs) {
      if (['ClusterRole', 'ClusterRoleBinding'].includes(o.kind)) continue;
      assert.equal(o.metadata.namespace, NAMESPACE, `${o.kind}/${o.metadata.name} namespace`);
      assert.equal(o.metadata.labels?.['app.kubernetes.io/instance'], RELEASE);
    }
  });

  test('operator: 2 replicas, probes on /healthz and /readyz, env accepted by operator/src/config.ts', async () => {
    const objs = await render();
    const dep = one(objs, 'Deployment', '-operator');
    assert.equal(dep.spec.replicas, 2);
    const c = container(dep, 'operator');
    assert.deepEqual(c.args, ['operator']);
    assert.equal(c.livenessProbe.httpGet.path, '/healthz');
    assert.equal(c.readinessProbe.httpGet.path, '/readyz');
    assert.equal(c.readinessProbe.httpGet.port, 'http');
    const port = c.ports.find((p: { name: string }) => p.name === 'http').containerPort;

    for (const name of envNames(c))
      assert.ok(operatorEnvNames.has(name) || HELPER_ENV.has(name), `operator env ${name} is not a setting`);
    assert.equal(
      c.env.find((e: { name: string }) => e.name === 'NODE_OPTIONS')?.value,
      '--max-old-space-size=128',
    );
    const env = operatorEnv(objs);
    const cfg = loadOperatorConfig(env);
    assert.equal(cfg.httpPort, port, 'the probes and the Service target the port the operator listens on');
    assert.equal(cfg.leaseNamespace, NAMESPACE);
    assert.equal(cfg.leaseName, `${FULL}-operator`);
    assert.equal(cfg.identity, `${FULL}-operator-5d9c7-abcde`, 'the pod name is the Lease identity');
    assert.equal(cfg.watchNamespace, '');
    assert.ok(cfg.leaseDurationMs > cfg.renewDeadlineMs && cfg.renewDeadlineMs > cfg.retryPeriodMs);

    // Redis: the operator's own ACL user; its password comes from the generated Secret and
    // reaches the URL through $(REDIS_PASSWORD).
    const redisUrl = new URL(cfg.redisUrl);
    assert.equal(redisUrl.host, `${FULL}-redis.${NAMESPACE}.svc:6379`);
    assert.equal(redisUrl.username, 'operator');
    const secret = one(objs, 'Secret', '-redis');
    const password = Buffer.from(secret.data['operator-password'], 'base64').toString();
    assert.match(password, /^[A-Za-z0-9]{32}$/);
    assert.equal(redisUrl.password, password);
    assert.ok(!JSON.stringify(dep).includes(password), 'the password is not in the Deployment');

    const svc = one(objs, 'Service', '-operator');
    assert.equal(svc.spec.ports[0].targetPort, 'http');
    assert.deepEqual(svc.spec.selector, dep.spec.selector.matchLabels);
    assert.equal(
      dep.spec.template.spec.terminationGracePeriodSeconds * 1000 > cfg.shutdownTimeoutMs,
      true,
      'the grace period outlasts the graceful shutdown',
    );
    const pdb = one(objs, 'PodDisruptionBudget', '-operator');
    assert.deepEqual(pdb.spec.selector.matchLabels, dep.spec.selector.matchLabels);
  });

  test('agent DaemonSet: host network, downward API node name, store/socket/certs.d mounts, env accepted by agent config', async () => {
    const objs = await render();
    const ds = one(objs, 'DaemonSet', '-agent');
    const pod = ds.spec.template.spec;
    const c = container(ds, 'agent');
    assert.deepEqual(c.args, ['agent']);
    assert.equal(pod.hostNetwork, true, 'containerd reaches the mirror on the node loopback');
    assert.equal(
      pod.dnsPolicy,
      'ClusterFirstWithHostNet',
      'the Redis Service name must resolve on the host network',
    );
    assert.deepEqual(pod.tolerations, [{ operator: 'Exists' }], 'runs on every node');
    assert.equal(pod.automountServiceAccountToken, false, 'no API token unless it reads pull secrets');
    assert.deepEqual(c.securityContext.capabilities.drop, ['ALL']);
    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
    assert.ok(c.resources.requests.cpu && c.resources.limits.memory);

    const nodeVar = c.env.find((e: { name: string }) => e.name === AGENT_SETTINGS.nodeName.env);
    assert.equal(nodeVar?.valueFrom?.fieldRef?.fieldPath, 'spec.nodeName');
    for (const name of envNames(c))
      assert.ok(agentEnvNames.has(name) || HELPER_ENV.has(name), `agent env ${name} is not a setting`);
    const cfg = loadAgentConfig(agentEnv(objs));
    assert.equal(cfg.nodeName, 'node-a.example');
    assert.equal(new URL(cfg.redisUrl).host, `${FULL}-redis.${NAMESPACE}.svc:6379`);

    const mounts = new Map<string, string>(
      c.volumeMounts.map((m: { name: string; mountPath: string }) => [m.mountPath, m.name]),
    );
    const volumes = new Map<string, { hostPath?: { path: string; type: string } }>(
      pod.volumes.map((v: { name: string }) => [v.name, v]),
    );
    /** The hostPath behind the mount that holds `path` inside the container. */
    const hostPathOf = (path: string) => {
      let best = '';
      for (const m of mounts.keys())
        if ((path === m || path.startsWith(`${m}/`)) && m.length > best.length) best = m;
      assert.ok(best, `nothing mounted at ${path}`);
      return { mount: best, volume: volumes.get(mounts.get(best)!)! };
    };
    const store = hostPathOf(cfg.storePath);
    assert.equal(store.volume.hostPath?.path, '/var/lib/kube-prewarm');
    assert.equal(store.volume.hostPath?.type, 'DirectoryOrCreate');
    // Least privilege by default: cache mode needs no containerd socket, and only the
    // hosts-toml container (test/helm/hosts-toml.test.ts) has containerd's certs.d.
    assert.equal(cfg.containerdSocket, '', 'no containerd socket without agent.unpack.enabled');
    assert.ok(
      ![...mounts.keys()].some((m) => m.startsWith('/etc/containerd') || m.startsWith('/run/containerd')),
      `agent mounts: ${[...mounts.keys()].join(', ')}`,
    );
    assert.ok(hostPathOf('/tmp/x').volume, 'a writable /tmp next to the read-only root');
    assert.equal(cfg.mirrorHost, '127.0.0.1', 'the mirror is node-private');

    const unpack = await render({ agent: { unpack: { enabled: true } } });
    const uc = container(one(unpack, 'DaemonSet', '-agent'), 'agent');
    const ucfg = loadAgentConfig(agentEnv(unpack));
    const sockMount = uc.volumeMounts.find(
      (m: { mountPath: string }) => m.mountPath === ucfg.containerdSocket,
    );
    assert.ok(sockMount, 'unpack mode mounts the socket where the agent looks for it');
    const sockVol = one(unpack, 'DaemonSet', '-agent').spec.template.spec.volumes.find(
      (v: { name: string }) => v.name === sockMount.name,
    );
    assert.deepEqual(sockVol.hostPath, { path: '/run/containerd/containerd.sock', type: 'Socket' });
    // An unpack waits until containerd pulls through the mirror: it reads certs.d, read-only.
    const certsMount = uc.volumeMounts.find((m: { mountPath: string }) => m.mountPath === ucfg.hostsTomlDir);
    assert.equal(ucfg.hostsTomlDir, '/etc/containerd/certs.d');
    assert.equal(certsMount?.readOnly, true, JSON.stringify(certsMount));
    const hostsC = container(one(unpack, 'DaemonSet', '-agent'), 'hosts-toml');
    const regs = hostsC.args
      .find((a: string) => a.startsWith('--registries='))!
      .slice('--registries='.length);
    assert.deepEqual(
      ucfg.hostsTomlRegistries,
      regs.split(','),
      'the registries the hosts-toml container writes',
    );
    assert.equal(cfg.hostsTomlDir, '', 'cache mode does not wait and does not mount certs.d');

    const ports = new Map(
      c.ports.map((p: { name: string; containerPort: number }) => [p.name, p.containerPort]),
    );
    assert.equal(ports.get('http'), cfg.httpPort);
    assert.equal(ports.get('mirror'), cfg.mirrorPort);
    assert.ok(ds.spec.template.spec.terminationGracePeriodSeconds * 1000 > cfg.shutdownTimeoutMs);
  });

  test('bundled Redis: one replica, AOF on a PVC, noeviction, passwords from the Secret', async () => {
    const objs = await render();
    const sts = one(objs, 'StatefulSet', '-redis');
    assert.equal(sts.spec.replicas, 1);
    const conf = one(objs, 'ConfigMap', '-redis').data['redis.conf'] as string;
    assert.match(conf, /^appendonly yes$/m);
    assert.match(conf, /^maxmemory-policy noeviction$/m, 'BullMQ requires noeviction');
    assert.match(conf, /^dir \/data$/m);
    const pvc = sts.spec.volumeClaimTemplates[0];
    assert.equal(pvc.metadata.name, 'data');
    assert.equal(pvc.spec.resources.requests.storage, '2Gi');
    const c = container(sts, 'redis');
    assert.ok(
      c.volumeMounts.some(
        (m: { name: string; mountPath: string }) => m.name === 'data' && m.mountPath === '/data',
      ),
    );
    assert.ok(!c.args.includes('--requirepass'), 'ACL users, not one shared password');
    const pw = c.env.find((e: { name: string }) => e.name === 'REDIS_AGENT_PASSWORD');
    assert.deepEqual(pw.valueFrom.secretKeyRef, { name: `${FULL}-redis`, key: 'agent-password' });
    assert.ok(
      c.env.some((e: { name: string }) => e.name === 'REDISCLI_AUTH'),
      'probes authenticate',
    );

    const ephemeral = await render({ redis: { persistence: { enabled: false }, auth: { enabled: false } } });
    const sts2 = one(ephemeral, 'StatefulSet', '-redis');
    assert.equal(sts2.spec.volumeClaimTemplates, undefined);
    assert.ok(
      sts2.spec.template.spec.volumes.some(
        (v: { name: string; emptyDir?: object }) => v.name === 'data' && v.emptyDir,
      ),
    );
    assert.equal(all(ephemeral, 'Secret').length, 0);
    assert.equal(
      loadOperatorConfig(operatorEnv(ephemeral)).redisUrl,
      `redis://${FULL}-redis.${NAMESPACE}.svc:6379/0`,
    );
  });
});

describe('RBAC', () => {
  test('operator: ImagePrewarms, status, finalizers, nodes (incl. patch), secrets get, events, its one Lease', async () => {
    const objs = await render();
    const cr = one(objs, 'ClusterRole', '-operator');
    const g = 'prewarm.kube-prewarm.io';
    for (const v of ['get', 'list', 'watch', 'patch'])
      assert.ok(allows(cr.rules, g, 'imageprewarms', v), `imageprewarms ${v}`);
    for (const v of ['get', 'patch'])
      assert.ok(allows(cr.rules, g, 'imageprewarms/status', v), `status ${v}`);
    assert.ok(allows(cr.rules, g, 'imageprewarms/finalizers', 'update'));
    for (const v of ['get', 'list', 'watch', 'patch'])
      assert.ok(allows(cr.rules, '', 'nodes', v), `nodes ${v}`);
    assert.ok(allows(cr.rules, '', 'secrets', 'get'));
    assert.ok(!allows(cr.rules, '', 'secrets', 'list'), 'never list secrets');
    assert.ok(allows(cr.rules, '', 'events', 'create'));
    assert.ok(!allows(cr.rules, '', 'nodes', 'delete'));
    assert.ok(!allows(cr.rules, '', 'pods', 'create'), 'the operator starts no pods (no Job per node×image)');

    const binding = one(objs, 'ClusterRoleBinding', '-operator');
    assert.equal(binding.roleRef.name, cr.metadata.name);
    assert.deepEqual(binding.subjects, [
      { kind: 'ServiceAccount', name: `${FULL}-operator`, namespace: NAMESPACE },
    ]);

    const leaseName = loadOperatorConfig(operatorEnv(objs)).leaseName;
    const role = one(objs, 'Role', '-leader-election');
    const cl = 'coordination.k8s.io';
    assert.ok(allows(role.rules, cl, 'leases', 'create'));
    assert.ok(allows(role.rules, cl, 'leases', 'get', leaseName));
    assert.ok(allows(role.rules, cl, 'leases', 'update', leaseName));
    assert.ok(!allows(role.rules, cl, 'leases', 'update', 'someone-elses-lease'));
    assert.equal(one(objs, 'RoleBinding', '-leader-election').subjects[0].name, `${FULL}-operator`);
  });

  test('defaults: no cluster-wide Secret access for anyone but the operator, and the operator only gets', async () => {
    for (const values of [{}, { agent: { rbac: { readPullSecrets: true }, peers: { enabled: true } } }]) {
      const objs = await render(values);
      const grants = secretGrants(objs);
      const clusterWide = grants.filter((g) => g.namespace === '*');
      assert.deepEqual(
        clusterWide.map((g) => `${g.subject}: ${g.verbs.join(',')}`),
        [`ServiceAccount ${NAMESPACE}/${FULL}-operator: get`],
        `cluster-wide Secret access with ${JSON.stringify(values)}`,
      );
      // Namespaced: nothing by default; with readPullSecrets only the copies' namespace.
      const namespaced = grants.filter((g) => g.namespace !== '*').map((g) => g.namespace);
      assert.ok(
        namespaced.every((ns) => ns === `${NAMESPACE}-pull-credentials`),
        `Secret access in ${namespaced.join(', ')}`,
      );
      if (Object.keys(values).length === 0) assert.deepEqual(namespaced, []);
    }
  });

  test('agent: no role, no token by default; with readPullSecrets only get on the pull-credentials namespace', async () => {
    const objs = await render();
    assert.equal(objs.filter((o) => o.kind.endsWith('Role') && o.metadata.name.includes('-agent')).length, 0);
    assert.equal(one(objs, 'DaemonSet').spec.template.spec.automountServiceAccountToken, false);
    assert.equal(objs.filter((o) => o.kind === 'Namespace').length, 0);
    assert.equal(loadAgentConfig(agentEnv(objs)).readPullSecrets, false);

    const withSecrets = await render({ agent: { rbac: { readPullSecrets: true } } });
    const credNs = `${NAMESPACE}-pull-credentials`;
    assert.equal(
      withSecrets.filter((o) => o.kind.startsWith('Cluster') && o.metadata.name.includes('-agent')).length,
      0,
      'no ClusterRole for the agent (the unused nodes get is gone too)',
    );
    const agentRole = withSecrets.find((o) => o.kind === 'Role' && o.metadata.name === `${FULL}-agent`)!;
    assert.equal(agentRole.metadata.namespace, credNs);
    assert.deepEqual(agentRole.rules, [{ apiGroups: [''], resources: ['secrets'], verbs: ['get'] }]);
    const agentBinding = withSecrets.find(
      (o) => o.kind === 'RoleBinding' && o.metadata.name === `${FULL}-agent`,
    )!;
    assert.equal(agentBinding.metadata.namespace, credNs);
    assert.deepEqual(agentBinding.subjects, [
      { kind: 'ServiceAccount', name: `${FULL}-agent`, namespace: NAMESPACE },
    ]);
    const opRole = withSecrets.find(
      (o) => o.kind === 'Role' && o.metadata.name === `${FULL}-pull-credentials`,
    )!;
    assert.equal(opRole.metadata.namespace, credNs);
    for (const v of ['get', 'list', 'create', 'delete']) assert.ok(allows(opRole.rules, '', 'secrets', v), v);
    assert.ok(!allows(opRole.rules, '', 'secrets', 'update'), 'copies are immutable');
    const ns = one(withSecrets, 'Namespace');
    assert.equal(ns.metadata.name, credNs);
    assert.equal(ns.metadata.labels?.['pod-security.kubernetes.io/enforce'], 'restricted');
    assert.equal(one(withSecrets, 'DaemonSet').spec.template.spec.automountServiceAccountToken, true);
    // Both binaries are told the same namespace.
    const agentCfg = loadAgentConfig(agentEnv(withSecrets));
    assert.equal(agentCfg.readPullSecrets, true);
    assert.equal(agentCfg.pullCredentialsNamespace, credNs);
    assert.equal(loadOperatorConfig(operatorEnv(withSecrets)).pullCredentialsNamespace, credNs);

    const own = await render({
      agent: {
        rbac: { readPullSecrets: true, pullCredentials: { namespace: 'creds', createNamespace: false } },
      },
    });
    assert.equal(own.filter((o) => o.kind === 'Namespace').length, 0);
    assert.equal(loadAgentConfig(agentEnv(own)).pullCredentialsNamespace, 'creds');
    assert.match(
      await renderError({
        agent: { rbac: { readPullSecrets: true, pullCredentials: { namespace: NAMESPACE } } },
      }),
      /must not be the release namespace/,
    );
  });

  test('watchNamespace: namespaced access becomes a Role there; nodes stay cluster-wide', async () => {
    const objs = await render({
      operator: { watchNamespace: 'team-a' },
      agent: { rbac: { readPullSecrets: true } },
    });
    const cr = one(objs, 'ClusterRole', '-operator');
    assert.ok(allows(cr.rules, '', 'nodes', 'patch'));
    assert.ok(!allows(cr.rules, 'prewarm.kube-prewarm.io', 'imageprewarms', 'list'));
    assert.ok(!allows(cr.rules, '', 'secrets', 'get'));
    const role = objs.find((o) => o.kind === 'Role' && o.metadata.name === `${FULL}-operator`);
    assert.equal(role?.metadata.namespace, 'team-a');
    assert.ok(allows(role!.rules, 'prewarm.kube-prewarm.io', 'imageprewarms', 'watch'));
    assert.ok(allows(role!.rules, '', 'secrets', 'get'));
    // The agents' access does not follow watchNamespace: it is the copies' namespace only.
    const agentRole = objs.find((o) => o.kind === 'Role' && o.metadata.name === `${FULL}-agent`);
    assert.equal(agentRole?.metadata.namespace, `${NAMESPACE}-pull-credentials`);
    assert.equal(loadOperatorConfig(operatorEnv(objs)).watchNamespace, 'team-a');
  });

  test('rbac.create=false renders no roles or bindings', async () => {
    const objs = await render({ rbac: { create: false } });
    assert.equal(objs.filter((o) => /Role(Binding)?$/.test(o.kind)).length, 0);
  });
});

describe('agent peers', () => {
  test('defaults: no peer listener, env, port, token or Secret', async () => {
    const objs = await render();
    const c = container(one(objs, 'DaemonSet'), 'agent');
    assert.deepEqual(
      envNames(c).filter((n) => /PEER|NODE_IP/.test(n)),
      [],
    );
    assert.ok(!c.ports.some((p: { name: string }) => p.name === 'peer'));
    assert.ok(!(c.volumeMounts ?? []).some((m: { name: string }) => m.name === 'peer-token'));
    assert.equal(all(objs, 'Secret').filter((s) => s.metadata.name.endsWith('-peers')).length, 0);
    assert.equal(loadAgentConfig(agentEnv(objs)).peerUrl, '');
  });

  test('enabled: the token Secret is mounted read-only without subPath and named in the env; URL on the node IP', async () => {
    const objs = await render({ agent: { peers: { enabled: true } } });
    const ds = one(objs, 'DaemonSet');
    const c = container(ds, 'agent');
    const cfg = loadAgentConfig(agentEnv(objs));
    assert.equal(cfg.peerUrl, 'http://10.1.2.3:5051', 'from the downward API status.hostIP');
    assert.equal(cfg.peerHost, '10.1.2.3', 'the listener binds the node address only');
    assert.equal(cfg.peerPort, 5051);
    const nodeIp = c.env.find((e: { name: string }) => e.name === 'NODE_IP');
    assert.deepEqual(nodeIp.valueFrom, { fieldRef: { fieldPath: 'status.hostIP' } });
    assert.ok(
      envNames(c).indexOf('NODE_IP') < envNames(c).indexOf('KUBE_PREWARM_PEER_URL'),
      'NODE_IP is defined before $(NODE_IP) is used',
    );
    assert.deepEqual(
      c.ports.find((p: { name: string }) => p.name === 'peer'),
      { name: 'peer', containerPort: 5051, protocol: 'TCP' },
    );
    const mount = c.volumeMounts.find((m: { name: string }) => m.name === 'peer-token');
    assert.equal(mount.readOnly, true);
    assert.equal(mount.subPath, undefined, 'no subPath: a rotated token reaches the file');
    assert.equal(cfg.peerTokenFile, `${mount.mountPath}/token`);
    const vol = ds.spec.template.spec.volumes.find((v: { name: string }) => v.name === 'peer-token');
    assert.equal(vol.secret.secretName, `${FULL}-peers`);
    assert.deepEqual(vol.secret.items, [{ key: 'token', path: 'token' }]);
    const secret = one(objs, 'Secret', '-peers');
    const token = Buffer.from(secret.data.token, 'base64').toString();
    assert.match(token, /^[A-Za-z0-9]{48}$/, 'generated, at least 32 characters');
    assert.ok(!JSON.stringify(ds).includes(token), 'the token is in no pod spec');
    // The token is not put in an environment variable of any container.
    for (const k of ds.spec.template.spec.containers)
      for (const e of k.env ?? []) assert.ok(!/TOKEN$/.test(e.name) || e.name.endsWith('_FILE'), e.name);
  });

  test('existingSecret: nothing rendered, that Secret mounted; bad combinations refused', async () => {
    const objs = await render({
      agent: { peers: { enabled: true, existingSecret: 'my-peer-token', port: 6061 } },
    });
    assert.equal(all(objs, 'Secret').filter((s) => s.metadata.name.endsWith('-peers')).length, 0);
    const vol = one(objs, 'DaemonSet').spec.template.spec.volumes.find(
      (v: { name: string }) => v.name === 'peer-token',
    );
    assert.equal(vol.secret.secretName, 'my-peer-token');
    assert.equal(loadAgentConfig(agentEnv(objs)).peerUrl, 'http://10.1.2.3:6061');
    assert.match(
      await renderError({
        agent: { peers: { enabled: true }, hostNetwork: false, mirror: { hostsToml: { install: false } } },
      }),
      /agent.peers.enabled needs agent.hostNetwork/,
    );
    assert.match(
      await renderError({ agent: { peers: { enabled: true, port: 5050 } } }),
      /must differ from agent.mirror.port/,
    );
    assert.match(await renderError({ agent: { peers: { enabled: true, port: 0 } } }), /agent\/peers\/port/);
  });
});

describe('tenancy policy', () => {
  test('defaults: no namespace may gate nodes, no pinned-image quota', async () => {
    const cfg = loadOperatorConfig(operatorEnv(await render()));
    assert.deepEqual(cfg.gateNodesNamespaces, []);
    assert.equal(cfg.pinnedQuotaBytes, 0);
    assert.deepEqual(cfg.pinnedQuotaNamespaces, {});
  });

  test('values reach the operator as its config reads them', async () => {
    const objs = await render({
      operator: {
        policy: {
          gateNodesNamespaces: ['ml', 'ci'],
          pinnedQuota: { default: '50Gi', namespaces: { ml: '200Gi', ci: '0' } },
        },
      },
    });
    const cfg = loadOperatorConfig(operatorEnv(objs));
    assert.deepEqual(cfg.gateNodesNamespaces, ['ml', 'ci']);
    assert.equal(cfg.pinnedQuotaBytes, 50 * 1024 ** 3);
    assert.deepEqual(cfg.pinnedQuotaNamespaces, { ml: 200 * 1024 ** 3, ci: 0 });
    assert.deepEqual(
      loadOperatorConfig(operatorEnv(await render({ operator: { policy: { gateNodesNamespaces: ['*'] } } })))
        .gateNodesNamespaces,
      ['*'],
    );
    assert.match(
      await renderError({ operator: { policy: { pinnedQuota: { default: 'lots' } } } }),
      /pinnedQuota\/default/,
    );
    assert.match(
      await renderError({ operator: { policy: { gateNodesNamespaces: ['Bad_NS'] } } }),
      /gateNodesNamespaces/,
    );
  });
});

describe('external Redis', () => {
  test('URL plus password Secret: no bundled Redis, password substituted into the URL both binaries read', async () => {
    const values = {
      redis: {
        enabled: false,
        external: { url: 'rediss://redis.example.com:6380/2', passwordSecret: 'my-redis' },
      },
    };
    const objs = await render(values);
    assert.equal(all(objs, 'StatefulSet').length, 0);
    assert.equal(objs.filter((o) => o.metadata.name.endsWith('-redis')).length, 0);
    const secrets = { 'my-redis/redis-password': 's3cret' };
    const op = loadOperatorConfig(operatorEnv(objs, secrets));
    const ag = loadAgentConfig(agentEnv(objs, secrets));
    for (const url of [op.redisUrl, ag.redisUrl])
      assert.equal(url, 'rediss://:s3cret@redis.example.com:6380/2');
  });

  test('an ACL user in the URL keeps its name and gets the password', async () => {
    const objs = await render({
      redis: {
        enabled: false,
        external: { url: 'redis://prewarm@redis.example.com:6379', passwordSecret: 'p' },
      },
    });
    assert.equal(
      loadAgentConfig(agentEnv(objs, { 'p/redis-password': 'pw' })).redisUrl,
      'redis://prewarm:pw@redis.example.com:6379',
    );
  });

  test('urlSecret: the whole URL comes from a Secret', async () => {
    const objs = await render({ redis: { enabled: false, external: { urlSecret: 'redis-url' } } });
    const dep = one(objs, 'Deployment');
    const v = container(dep, 'operator').env.find(
      (e: { name: string }) => e.name === 'KUBE_PREWARM_REDIS_URL',
    );
    assert.deepEqual(v.valueFrom.secretKeyRef, { name: 'redis-url', key: 'redis-url' });
    const facts = { 'redis-url/redis-url': 'redis://:x@10.1.2.3:6379' };
    assert.equal(loadOperatorConfig(operatorEnv(objs, facts)).redisUrl, 'redis://:x@10.1.2.3:6379');
    assert.equal(loadAgentConfig(agentEnv(objs, facts)).redisUrl, 'redis://:x@10.1.2.3:6379');
  });

  test('no password: the URL is used as given', async () => {
    const objs = await render({ redis: { enabled: false, external: { url: 'redis://10.0.0.5:6379' } } });
    assert.equal(loadOperatorConfig(operatorEnv(objs)).redisUrl, 'redis://10.0.0.5:6379');
    assert.ok(!envNames(container(one(objs, 'Deployment'), 'operator')).includes('REDIS_PASSWORD'));
  });
});

/** The bundled Redis's `--user` directives (its StatefulSet's args): user → the tokens after its name. */
function redisUsers(objs: K8sObject[]): Map<string, string[]> {
  const args = container(one(objs, 'StatefulSet', '-redis'), 'redis').args as string[];
  const users = new Map<string, string[]>();
  let cur: string[] | undefined;
  for (let i = 1; i < args.length; i++) {
    if (args[i] === '--user') {
      cur = [];
      users.set(args[++i]!, cur);
    } else cur?.push(args[i]!);
  }
  return users;
}

/** A user's ACL rules as one string: its tokens after `on >$(…)`. */
function aclRules(tokens: string[]): string {
  assert.equal(tokens[0], 'on');
  assert.match(tokens[1]!, /^>\$\(REDIS_[A-Z]+_PASSWORD\)$/);
  return tokens.slice(2).join(' ');
}

describe('Redis: one ACL user per component, protected mode, maxmemory, PDB, stable renders', () => {
  const withWebhooks = { webhooks: { enabled: true, sources: { distribution: { secrets: [SECRET_A] } } } };
  const receiverEnvOf = (objs: K8sObject[], extra: Record<string, string> = {}) =>
    containerEnv(container(one(objs, 'Deployment', '-webhooks'), 'webhooks'), {
      fields: {},
      secrets: secretFacts(objs, extra),
    });
  const redisConf = (objs: K8sObject[]) => one(objs, 'ConfigMap', '-redis').data['redis.conf'] as string;

  test('each component connects as its own user, with the password Redis defines that user with', async () => {
    const objs = await render(withWebhooks);
    const users = redisUsers(objs);
    assert.deepEqual([...users.keys()], ['operator', 'agent', 'webhooks']);
    const redis = container(one(objs, 'StatefulSet', '-redis'), 'redis');
    const redisEnv = containerEnv(redis, { fields: {}, secrets: secretFacts(objs) });
    const urls: Record<string, string> = {
      operator: loadOperatorConfig(operatorEnv(objs)).redisUrl,
      agent: loadAgentConfig(agentEnv(objs)).redisUrl,
      webhooks: loadReceiverConfig(receiverEnvOf(objs)).redisUrl,
    };
    const passwords = new Set<string>();
    for (const [role, url] of Object.entries(urls)) {
      const u = new URL(url);
      assert.equal(u.username, role, `${role} connects as its own user`);
      const tokens = users.get(role)!;
      aclRules(tokens);
      const variable = /^>\$\((\w+)\)$/.exec(tokens[1]!)![1]!;
      assert.equal(redisEnv[variable], decodeURIComponent(u.password), `${role}: the password of its user`);
      assert.match(redisEnv[variable]!, /^[A-Za-z0-9]{32}$/);
      passwords.add(redisEnv[variable]!);
    }
    assert.equal(passwords.size, 3, 'every user has a password of its own');
    // The default user cannot be logged in to, so protected mode refuses nobody who authenticates.
    assert.match(redisConf(objs), /^protected-mode yes$/m);
    // Off and without a password (no client can be it); its permissions only serve the AOF replay.
    assert.match(redisConf(objs), /^user default off resetpass ~\* &\* \+@all$/m);
    // The probes authenticate (the default user is off) without a password on their command line.
    assert.deepEqual(redis.readinessProbe.exec.command, ['redis-cli', '--user', 'operator', 'ping']);
    assert.equal(redisEnv.REDISCLI_AUTH, decodeURIComponent(new URL(urls.operator!).password));
  });

  test('rules: the operator all kprw: keys but no @dangerous command; agents the node queues and the peer directory; the receiver dedup keys and write-only XADD', async () => {
    const users = redisUsers(await render(withWebhooks));
    const op = aclRules(users.get('operator')!).split(' ');
    assert.deepEqual(op, ['resetkeys', 'resetchannels', '~kprw:*', '+@all', '-@dangerous', '+info']);
    const agent = aclRules(users.get('agent')!);
    assert.match(agent, /^resetkeys resetchannels ~kprw:node\.\* -@all /);
    assert.doesNotMatch(agent, /~kprw:\*|\+@all|\+@write|\+@read|\+keys|\+config|\+flushall|\+acl/);
    assert.ok(
      agent.endsWith('(~kprw:holders:* +smembers +sadd +srem +expire)'),
      'the peer directory only through its set commands',
    );
    assert.equal(
      aclRules(users.get('webhooks')!),
      'resetkeys resetchannels ~kprw:webhook:dedup:* -@all +ping +select +set +del (%W~kprw:operator:push-events +xadd)',
    );
    const plain = await render();
    assert.deepEqual([...redisUsers(plain).keys()], ['operator', 'agent'], 'no receiver, no receiver user');
    assert.deepEqual(Object.keys(one(plain, 'Secret', '-redis').data), [
      'operator-password',
      'agent-password',
    ]);
  });

  test('auth.enabled=false: no users, no password, and protected mode off (it would refuse every pod)', async () => {
    const objs = await render({ redis: { auth: { enabled: false } } });
    assert.equal(redisUsers(objs).size, 0);
    assert.match(redisConf(objs), /^protected-mode no$/m);
    assert.doesNotMatch(redisConf(objs), /^user /m);
    assert.deepEqual(container(one(objs, 'StatefulSet', '-redis'), 'redis').readinessProbe.exec.command, [
      'redis-cli',
      'ping',
    ]);
  });

  test('maxmemory stays below the container memory limit: 70% of it unless set, refused at or above it', async () => {
    const maxmemory = (objs: K8sObject[]) => Number(/^maxmemory (\d+)$/m.exec(redisConf(objs))?.[1]);
    const defaults = await render();
    const limit = container(one(defaults, 'StatefulSet', '-redis'), 'redis').resources.limits.memory;
    assert.equal(limit, '512Mi');
    assert.equal(maxmemory(defaults), Math.floor(512 * 1024 * 1024 * 0.7));
    assert.ok(maxmemory(defaults) < 512 * 1024 * 1024);
    assert.match(redisConf(defaults), /^maxmemory-policy noeviction$/m);
    const big = await render({ redis: { resources: { limits: { memory: '2Gi' } } } });
    assert.equal(maxmemory(big), Math.floor(2 * 1024 ** 3 * 0.7));
    assert.equal(maxmemory(await render({ redis: { maxmemory: '100Mi' } })), 100 * 1024 * 1024);
    assert.match(
      await renderError({ redis: { maxmemory: '512Mi' } }),
      /must be below redis\.resources\.limits\.memory/,
    );
    assert.match(await renderError({ redis: { maxmemory: '1G' } }), /must be below/);
    assert.match(await renderError({ redis: { maxmemory: 'lots' } }), /redis\/maxmemory/);
    assert.match(
      await renderError({ redis: { resources: { limits: { memory: null } } } }),
      /set resources\.limits\.memory .* or redis\.maxmemory/,
    );
  });

  test('a PodDisruptionBudget for the single Redis replica that never holds an unhealthy pod', async () => {
    const objs = await render();
    const pdb = one(objs, 'PodDisruptionBudget', '-redis');
    assert.equal(pdb.spec.minAvailable, 1);
    assert.equal(pdb.spec.unhealthyPodEvictionPolicy, 'AlwaysAllow');
    assert.deepEqual(
      pdb.spec.selector.matchLabels,
      one(objs, 'StatefulSet', '-redis').spec.selector.matchLabels,
    );
    const off = await render({ redis: { podDisruptionBudget: { enabled: false } } });
    assert.equal(all(off, 'PodDisruptionBudget').filter((p) => p.metadata.name.endsWith('-redis')).length, 0);
  });

  test('existingSecret: two renders are identical (no lookup, no random password); without it only the generated Secret differs', async () => {
    const template = [
      'template',
      RELEASE,
      CHART_DIR,
      '--namespace',
      NAMESPACE,
      '--kube-version',
      KUBE_VERSION,
    ];
    const values = { ...withWebhooks, redis: { auth: { existingSecret: 'kp-redis-users' } } };
    const [a, b] = [await helm(template, values), await helm(template, values)];
    assert.equal(a.code, 0, a.stderr);
    assert.equal(a.stdout, b.stdout, 'helm template with existingSecret is stable');
    const objs = await render(values);
    assert.equal(all(objs, 'Secret').filter((s) => s.metadata.name.endsWith('-redis')).length, 0);
    const ref = (c: { env: { name: string; valueFrom?: { secretKeyRef?: object } }[] }, name: string) =>
      c.env.find((e) => e.name === name)?.valueFrom?.secretKeyRef;
    assert.deepEqual(ref(container(one(objs, 'DaemonSet', '-agent'), 'agent'), 'REDIS_PASSWORD'), {
      name: 'kp-redis-users',
      key: 'agent-password',
    });
    const redis = container(one(objs, 'StatefulSet', '-redis'), 'redis');
    assert.deepEqual(ref(redis, 'REDIS_WEBHOOKS_PASSWORD'), {
      name: 'kp-redis-users',
      key: 'webhooks-password',
    });
    const renamed = await render({
      redis: { auth: { existingSecret: 's', existingSecretKeys: { agent: 'node-agents' } } },
    });
    assert.deepEqual(ref(container(one(renamed, 'DaemonSet', '-agent'), 'agent'), 'REDIS_PASSWORD'), {
      name: 's',
      key: 'node-agents',
    });

    // The fallback: `lookup` sees no cluster under `helm template`, so each render generates
    // new passwords. That Secret's data is the only difference.
    const [x, y] = [await render(withWebhooks), await render(withWebhooks)];
    const strip = (objs: K8sObject[]) =>
      JSON.stringify(objs.map((o) => (o.kind === 'Secret' && o.metadata.name === `${FULL}-redis` ? {} : o)));
    assert.equal(strip(x), strip(y));
    assert.notDeepEqual(one(x, 'Secret', '-redis').data, one(y, 'Secret', '-redis').data);
  });

  test('external Redis: each component may have its own user and password key, or its own URL key', async () => {
    const objs = await render({
      ...withWebhooks,
      redis: {
        enabled: false,
        external: {
          url: 'rediss://shared@redis.example.com:6380/0',
          passwordSecret: 'ext',
          users: {
            operator: { username: 'kp-operator', passwordSecretKey: 'operator' },
            agent: { username: 'kp-agent', passwordSecretKey: 'agent' },
          },
        },
      },
    });
    const facts = { 'ext/operator': 'o-pw', 'ext/agent': 'a-pw', 'ext/redis-password': 'shared-pw' };
    assert.equal(
      loadOperatorConfig(operatorEnv(objs, facts)).redisUrl,
      'rediss://kp-operator:o-pw@redis.example.com:6380/0',
    );
    assert.equal(
      loadAgentConfig(agentEnv(objs, facts)).redisUrl,
      'rediss://kp-agent:a-pw@redis.example.com:6380/0',
    );
    assert.equal(
      loadReceiverConfig(receiverEnvOf(objs, facts)).redisUrl,
      'rediss://shared:shared-pw@redis.example.com:6380/0',
      'no user of its own: the shared URL and password',
    );
    const bySecret = await render({
      redis: {
        enabled: false,
        external: { urlSecret: 'urls', users: { agent: { urlSecretKey: 'agent-url' } } },
      },
    });
    const urls = { 'urls/redis-url': 'redis://op:1@r:6379', 'urls/agent-url': 'redis://ag:2@r:6379' };
    assert.equal(loadOperatorConfig(operatorEnv(bySecret, urls)).redisUrl, 'redis://op:1@r:6379');
    assert.equal(loadAgentConfig(agentEnv(bySecret, urls)).redisUrl, 'redis://ag:2@r:6379');
  });

  test('external TLS: the CA and client certificate are mounted into every component where its config reads them', async () => {
    const objs = await render({
      ...withWebhooks,
      redis: {
        enabled: false,
        external: {
          url: 'rediss://redis.example.com:6380/0',
          tls: { caSecret: 'redis-ca', clientCertSecret: 'redis-client' },
        },
      },
    });
    const components: [
      string,
      K8sObject,
      string,
      { redisTlsCaFile: string; redisTlsCertFile: string; redisTlsKeyFile: string },
    ][] = [
      ['operator', one(objs, 'Deployment', '-operator'), 'operator', loadOperatorConfig(operatorEnv(objs))],
      ['agent', one(objs, 'DaemonSet', '-agent'), 'agent', loadAgentConfig(agentEnv(objs))],
      ['webhooks', one(objs, 'Deployment', '-webhooks'), 'webhooks', loadReceiverConfig(receiverEnvOf(objs))],
    ];
    for (const [what, workload, name, cfg] of components) {
      const c = container(workload, name);
      const pod = workload.spec.template.spec;
      /** The Secret/ConfigMap key a file in the container comes from. */
      const source = (file: string) => {
        const mount = c.volumeMounts.find((m: { mountPath: string }) => m.mountPath === dirname(file));
        assert.ok(mount, `${what}: nothing mounted at ${dirname(file)}`);
        const vol = pod.volumes.find((v: { name: string }) => v.name === mount.name);
        const src = vol.secret ?? vol.configMap;
        const item = src.items.find((i: { path: string }) => i.path === file.slice(dirname(file).length + 1));
        assert.ok(item, `${what}: ${file} is not an item of its volume`);
        return `${vol.secret ? vol.secret.secretName : vol.configMap.name}/${item.key}`;
      };
      assert.equal(source(cfg.redisTlsCaFile), 'redis-ca/ca.crt', what);
      assert.equal(source(cfg.redisTlsCertFile), 'redis-client/tls.crt', what);
      assert.equal(source(cfg.redisTlsKeyFile), 'redis-client/tls.key', what);
    }
    const fromConfigMap = await render({
      redis: {
        enabled: false,
        external: { url: 'rediss://r:6380', tls: { caConfigMap: 'ca-bundle', caKey: 'ca.pem' } },
      },
    });
    const agent = loadAgentConfig(agentEnv(fromConfigMap));
    assert.equal(agent.redisTlsCaFile, '/etc/kube-prewarm/redis-tls/ca/ca.pem');
    assert.equal(agent.redisTlsCertFile, '');
    const vol = one(fromConfigMap, 'DaemonSet').spec.template.spec.volumes.find(
      (v: { name: string }) => v.name === 'redis-tls-ca',
    );
    assert.equal(vol.configMap.name, 'ca-bundle');
    // Nothing TLS-related without TLS values.
    assert.equal(loadAgentConfig(agentEnv(await render())).redisTlsCaFile, '');

    for (const [values, expected] of [
      [
        { redis: { enabled: false, external: { url: 'redis://r:6379', tls: { caSecret: 'ca' } } } },
        /needs a rediss:\/\/ URL/,
      ],
      [{ redis: { external: { tls: { caSecret: 'ca' } } } }, /is for an external Redis/],
      [
        {
          redis: {
            enabled: false,
            external: { url: 'rediss://r', tls: { caSecret: 'a', caConfigMap: 'b' } },
          },
        },
        /caSecret or caConfigMap, not both/,
      ],
    ] as [unknown, RegExp][])
      assert.match(await renderError(values), expected);
  });

  test('docs/security.md gives an external Redis the chart’s rules, token for token', async () => {
    const users = redisUsers(await render(withWebhooks));
    const doc = await readFile(join(REPO_ROOT, 'docs', 'security.md'), 'utf8');
    const start = doc.indexOf('\n## Redis\n');
    assert.ok(start >= 0, 'docs/security.md has a "## Redis" section');
    const end = doc.indexOf('\n## ', start + 1);
    const section = doc.slice(start, end < 0 ? undefined : end);
    const lines = [...section.matchAll(/^ACL SETUSER kube-prewarm-(\w+) reset on >\S+ (.+)$/gm)];
    assert.deepEqual(
      lines.map((m) => m[1]),
      ['operator', 'agent', 'webhooks'],
    );
    for (const m of lines) assert.equal(m[2], aclRules(users.get(m[1]!)!), `docs: ${m[1]}`);
  });
});

describe('webhooks', () => {
  const values = {
    webhooks: {
      enabled: true,
      sources: {
        distribution: { secrets: [SECRET_A] },
        acr: { header: 'x-acr-token', secrets: [SECRET_A, SECRET_B], registry: 'myreg.azurecr.io' },
        github: { secrets: [SECRET_B] },
        dockerhub: { tokens: [SECRET_A] },
      },
      options: { maxBodyBytes: 262144 },
      ingress: { enabled: true, host: 'hooks.example.com', className: 'nginx' },
    },
  };
  const RECEIVER = `${FULL}-webhooks`;

  function receiverEnv(objs: K8sObject[], extraSecrets: Record<string, string> = {}) {
    const dep = one(objs, 'Deployment', '-webhooks');
    return containerEnv(container(dep, 'webhooks'), {
      fields: {},
      secrets: secretFacts(objs, extraSecrets),
    });
  }

  test('one Secret with webhooks.yaml that the receiver’s own parser and webhook builder accept', async () => {
    const objs = await render(values);
    const secret = one(objs, 'Secret', '-webhooks');
    assert.deepEqual(Object.keys(secret.stringData), ['webhooks.yaml']);
    const options = parseWebhookOptionsFile(secret.stringData['webhooks.yaml']);
    assert.equal(options.maxBodyBytes, 262144);
    assert.deepEqual(options.sources.acr?.secrets, [SECRET_A, SECRET_B]);
    const handler = createWebhookHandler(
      {
        onPush: async () => undefined,
        dedup: new MemoryDedupStore(),
        logger: silentLogger(),
        metrics: new Registry(),
      },
      options,
    );
    try {
      assert.deepEqual([...handler.sources].sort(), ['acr', 'distribution', 'dockerhub', 'github']);
      assert.equal(handler.basePath, '/webhooks');
    } finally {
      await handler.close(1000);
    }
  });

  test('a receiver Deployment of its own: 2 replicas, non-root, read-only root, no token, env accepted by its config', async () => {
    const objs = await render(values);
    const dep = one(objs, 'Deployment', '-webhooks');
    assert.equal(dep.metadata.name, RECEIVER);
    assert.equal(dep.spec.replicas, 2);
    const pod = dep.spec.template.spec;
    assert.equal(pod.automountServiceAccountToken, false, 'no Kubernetes token in the pod');
    assert.equal(pod.serviceAccountName, RECEIVER);
    assert.equal(pod.securityContext.runAsNonRoot, true);
    const c = container(dep, 'webhooks');
    assert.deepEqual(c.args, ['webhooks']);
    assert.equal(c.securityContext.readOnlyRootFilesystem, true);
    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
    assert.deepEqual(c.securityContext.capabilities.drop, ['ALL']);
    assert.ok(c.resources.limits.memory, 'a memory limit the caps are sized against');

    for (const name of envNames(c))
      assert.ok(receiverEnvNames.has(name) || HELPER_ENV.has(name), `receiver env ${name} is not a setting`);
    const cfg = loadReceiverConfig(receiverEnv(objs));
    assert.equal(new URL(cfg.redisUrl).host, `${FULL}-redis.${NAMESPACE}.svc:6379`);
    assert.equal(cfg.maxInflightBodyBytes, 16 * 1024 * 1024);
    assert.equal(cfg.maxConnections, 256);
    assert.ok(cfg.reloadIntervalMs > 0, 'a changed Secret is applied without a restart');
    const ports = new Map(
      c.ports.map((p: { name: string; containerPort: number }) => [p.name, p.containerPort]),
    );
    assert.equal(ports.get('webhooks'), cfg.webhooksPort);
    assert.equal(ports.get('http'), cfg.httpPort);
    assert.notEqual(cfg.webhooksPort, cfg.httpPort, 'probes answer while the webhook port is at its cap');
    assert.equal(c.readinessProbe.httpGet.port, 'http');
    assert.equal(c.livenessProbe.httpGet.port, 'http');
    assert.ok(pod.terminationGracePeriodSeconds * 1000 > cfg.shutdownTimeoutMs);

    // The Secret: mounted here at the path the receiver reads, whole (no subPath, so updates reach it).
    const mount = c.volumeMounts.find((m: { mountPath: string }) => m.mountPath === dirname(cfg.configPath));
    assert.ok(mount, `nothing mounted at ${dirname(cfg.configPath)}`);
    assert.equal(mount.subPath, undefined);
    const vol = pod.volumes.find((v: { name: string }) => v.name === mount.name);
    assert.equal(vol.secret.secretName, `${FULL}-webhooks`);
    assert.deepEqual(vol.secret.items, [{ key: 'webhooks.yaml', path: 'webhooks.yaml' }]);
    assert.equal(vol.secret.defaultMode, 0o440, 'readable by the pod group (fsGroup), nobody else');

    const pdb = objs.find((o) => o.kind === 'PodDisruptionBudget' && o.metadata.name === RECEIVER);
    assert.deepEqual(pdb?.spec.selector.matchLabels, dep.spec.selector.matchLabels);
    const sa = objs.find((o) => o.kind === 'ServiceAccount' && o.metadata.name === RECEIVER);
    assert.equal(sa?.automountServiceAccountToken, false);
  });

  test('the receiver’s service account is bound to no role at all', async () => {
    for (const v of [values, { ...values, operator: { watchNamespace: 'team-a' } }]) {
      const objs = await render(v);
      const bound = objs
        .filter((o) => o.kind === 'RoleBinding' || o.kind === 'ClusterRoleBinding')
        .filter((b) => (b.subjects ?? []).some((s: { name: string }) => s.name === RECEIVER));
      assert.deepEqual(
        bound.map((b) => `${b.kind}/${b.metadata.name}`),
        [],
      );
    }
  });

  test('the operator serves no webhooks and sees no webhook secret; nothing derived from the secrets in a pod spec', async () => {
    const objs = await render(values);
    const op = one(objs, 'Deployment', '-operator');
    assert.equal(loadOperatorConfig(operatorEnv(objs)).webhooksConfig, '', 'no in-process webhooks');
    const secretVolumes = (op.spec.template.spec.volumes ?? []).filter(
      (v: { secret?: { secretName: string } }) => v.secret?.secretName === `${FULL}-webhooks`,
    );
    assert.deepEqual(secretVolumes, [], 'the webhooks Secret is mounted only into the receiver');
    for (const dep of all(objs, 'Deployment')) {
      const annotations = dep.spec.template.metadata.annotations ?? {};
      assert.equal(
        annotations['checksum/webhooks'],
        undefined,
        `${dep.metadata.name} carries checksum/webhooks`,
      );
    }
    // A rotated secret changes the Secret only: pod templates stay the same (the receiver reloads).
    const rotated = structuredClone(values);
    rotated.webhooks.sources.github.secrets = [SECRET_A];
    const again = await render(rotated);
    for (const name of ['-operator', '-webhooks'])
      assert.deepEqual(
        one(again, 'Deployment', name).spec.template,
        one(objs, 'Deployment', name).spec.template,
        `${name} pod template depends on the secrets`,
      );
    assert.notDeepEqual(
      one(again, 'Secret', '-webhooks').stringData,
      one(objs, 'Secret', '-webhooks').stringData,
    );
  });

  test('the Service and the Ingress reach only the receiver’s webhook port', async () => {
    const objs = await render(values);
    const dep = one(objs, 'Deployment', '-webhooks');
    const svc = objs.find((o) => o.kind === 'Service' && o.metadata.name === RECEIVER)!;
    assert.ok(svc);
    assert.deepEqual(svc.spec.selector, dep.spec.selector.matchLabels);
    const webhooksPort = svc.spec.ports.find((p: { name: string }) => p.name === 'webhooks');
    assert.equal(webhooksPort.targetPort, 'webhooks');
    const ing = one(objs, 'Ingress');
    assert.equal(ing.spec.ingressClassName, 'nginx');
    assert.equal(ing.spec.rules[0].host, 'hooks.example.com');
    assert.deepEqual(
      ing.spec.rules[0].http.paths.map((p: { path: string; pathType: string }) => [p.path, p.pathType]),
      [['/webhooks', 'Prefix']],
    );
    assert.deepEqual(ing.spec.rules[0].http.paths[0].backend.service, {
      name: RECEIVER,
      port: { name: 'webhooks' },
    });
    assert.equal(
      one(objs, 'Service', '-operator').spec.ports.length,
      1,
      'the operator Service: metrics only',
    );
  });

  test('NetworkPolicy: the receiver’s webhook port from ingressFrom, metrics from the monitoring peers; it may reach Redis', async () => {
    const peer = { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'ingress-nginx' } } };
    const objs = await render({
      ...values,
      webhooks: { ...values.webhooks, receiver: { ingressFrom: [peer] } },
      networkPolicy: { enabled: true, redisNodeCidrs: ['10.0.0.0/16'] },
    });
    const np = objs.find((o) => o.kind === 'NetworkPolicy' && o.metadata.name === RECEIVER)!;
    const dep = one(objs, 'Deployment', '-webhooks');
    assert.deepEqual(np.spec.podSelector.matchLabels, dep.spec.selector.matchLabels);
    assert.deepEqual(np.spec.ingress[0], { ports: [{ port: 'webhooks', protocol: 'TCP' }], from: [peer] });
    assert.deepEqual(np.spec.ingress[1].ports, [{ port: 'http', protocol: 'TCP' }]);
    const redis = one(objs, 'NetworkPolicy', '-redis');
    assert.ok(
      redis.spec.ingress[0].from.some(
        (f: { podSelector?: { matchLabels: Record<string, string> } }) =>
          JSON.stringify(f.podSelector?.matchLabels) === JSON.stringify(dep.spec.selector.matchLabels),
      ),
      'the receiver may reach Redis',
    );
  });

  test('existingSecret: mounted into the receiver, not rendered', async () => {
    const objs = await render({ webhooks: { enabled: true, existingSecret: 'my-hooks' } });
    assert.equal(all(objs, 'Secret').filter((s) => s.metadata.name.includes('webhooks')).length, 0);
    const vol = one(objs, 'Deployment', '-webhooks').spec.template.spec.volumes.find(
      (v: { secret?: { secretName: string } }) => v.secret?.secretName === 'my-hooks',
    );
    assert.ok(vol);
  });
});

describe('monitoring and policies', () => {
  test('ServiceMonitors: "auto" follows the cluster’s APIs; true forces them; both select the right Services', async () => {
    assert.equal(all(await render(), 'ServiceMonitor').length, 0);
    const auto = await render({}, { apiVersions: [SERVICE_MONITOR] });
    assert.equal(all(auto, 'ServiceMonitor').length, 2);
    const forced = await render({
      monitoring: { serviceMonitor: { enabled: true, labels: { release: 'prom' } } },
    });
    for (const sm of all(forced, 'ServiceMonitor')) {
      const component = sm.metadata.labels?.['app.kubernetes.io/component'];
      const svc = one(forced, 'Service', `-${component}`);
      assert.deepEqual(
        sm.spec.selector.matchLabels,
        svc.metadata.labels && pick(svc.metadata.labels, Object.keys(sm.spec.selector.matchLabels)),
      );
      assert.deepEqual(svc.spec.selector, sm.spec.selector.matchLabels);
      assert.equal(sm.spec.endpoints[0].port, svc.spec.ports[0].name);
      assert.equal(sm.spec.endpoints[0].path, '/metrics');
      assert.equal(sm.metadata.labels?.release, 'prom');
    }
    assert.equal(
      all(
        await render(
          { monitoring: { serviceMonitor: { enabled: false } } },
          { apiVersions: [SERVICE_MONITOR] },
        ),
        'ServiceMonitor',
      ).length,
      0,
    );
  });

  test('NetworkPolicy: operator port open (or to listed peers), Redis only from operator, agents and node CIDRs', async () => {
    const objs = await render({
      networkPolicy: {
        enabled: true,
        redisNodeCidrs: ['10.0.0.0/16'],
        operatorIngressFrom: [
          { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } },
        ],
      },
    });
    const op = one(objs, 'NetworkPolicy', '-operator');
    assert.equal(op.spec.ingress[0].from.length, 1);
    const redis = one(objs, 'NetworkPolicy', '-redis');
    const from = redis.spec.ingress[0].from;
    assert.deepEqual(from[0].podSelector.matchLabels, one(objs, 'Deployment').spec.selector.matchLabels);
    assert.deepEqual(from[1].podSelector.matchLabels, one(objs, 'DaemonSet').spec.selector.matchLabels);
    assert.deepEqual(from[2], { ipBlock: { cidr: '10.0.0.0/16' } });
  });

  test('priorityClassName, resources and extraEnv reach the pods; extraEnv overrides a chart default', async () => {
    const objs = await render({
      agent: {
        priorityClassName: 'system-node-critical',
        extraEnv: { KUBE_PREWARM_CHUNK_SIZE: '8MiB', KUBE_PREWARM_CONCURRENCY: '4' },
        resources: { limits: { memory: '2Gi' } },
      },
      operator: { extraEnv: { KUBE_PREWARM_RESYNC_MS: 600000 }, replicas: 1 },
    });
    const ds = one(objs, 'DaemonSet');
    assert.equal(ds.spec.template.spec.priorityClassName, 'system-node-critical');
    // Helm merges maps: the override replaces one key, the other defaults stay.
    assert.equal(container(ds, 'agent').resources.limits.memory, '2Gi');
    assert.equal(container(ds, 'agent').resources.requests.cpu, '100m');
    const names = envNames(container(ds, 'agent'));
    assert.equal(names.length, new Set(names).size, 'no duplicate env names');
    const agent = loadAgentConfig(agentEnv(objs));
    assert.equal(agent.chunkSize, 8 * 1024 * 1024);
    assert.equal(agent.concurrency, 4);
    assert.equal(loadOperatorConfig(operatorEnv(objs)).resyncMs, 600000);
    // The bundled Redis's PDB is deliberate (redis.podDisruptionBudget, docs/install.md).
    assert.equal(
      all(objs, 'PodDisruptionBudget').filter((p) => !p.metadata.name.endsWith('-redis')).length,
      0,
      'no PDB that would block every drain with one replica',
    );
  });

  test('image digest wins over the tag', async () => {
    const digest = `sha256:${'b'.repeat(64)}`;
    const objs = await render({ image: { digest } });
    for (const o of [one(objs, 'Deployment'), one(objs, 'DaemonSet')])
      assert.equal(o.spec.template.spec.containers[0].image, `ghcr.io/kube-prewarm/kube-prewarm@${digest}`);
  });
});

describe('values.schema.json and template checks refuse bad values', () => {
  const cases: [string, unknown, RegExp][] = [
    ['a misspelt top-level key', { operater: { replicas: 1 } }, /operater/],
    ['a misspelt nested key', { agent: { stor: {} } }, /stor/],
    ['zero operator replicas', { operator: { replicas: 0 } }, /operator\/replicas/],
    ['an unknown log level', { agent: { logLevel: 'verbose' } }, /agent\/logLevel/],
    [
      'a webhook secret under 16 characters',
      { webhooks: { enabled: true, sources: { acr: { secrets: ['short'] } } } },
      /acr\/secrets\/0/,
    ],
    ['an unknown webhook source', { webhooks: { sources: { quay: { secrets: [SECRET_A] } } } }, /quay/],
    [
      'a gcr source with neither tokens nor oidc',
      { webhooks: { sources: { gcr: { subscriptions: [] } } } },
      /gcr/,
    ],
    [
      'a gcr OIDC source without serviceAccountEmails',
      {
        webhooks: {
          sources: {
            gcr: {
              oidc: {
                jwksUrl: 'https://www.googleapis.com/oauth2/v3/certs',
                audience: 'https://x/webhooks/gcr',
              },
            },
          },
        },
      },
      /serviceAccountEmails/,
    ],
    [
      'a receiver body budget below 64 KiB',
      { webhooks: { receiver: { maxInflightBodyBytes: 1024 } } },
      /webhooks\/receiver\/maxInflightBodyBytes/,
    ],
    [
      'webhooks enabled without sources',
      { webhooks: { enabled: true } },
      /at least one entry in webhooks.sources/,
    ],
    ['an image digest that is not sha256', { image: { digest: 'md5:abc' } }, /image\/digest/],
    ['redis disabled without a URL', { redis: { enabled: false } }, /redis\/external/],
    [
      'a non-redis URL',
      { redis: { enabled: false, external: { url: 'http://redis:6379' } } },
      /redis\/external\/url/,
    ],
    [
      'extraEnv shadowing the downward-API node name',
      { agent: { extraEnv: { KUBE_PREWARM_NODE_NAME: 'x' } } },
      /invalid propertyName 'KUBE_PREWARM_NODE_NAME'/,
    ],
    [
      'extraEnv outside the KUBE_PREWARM_ prefix',
      { operator: { extraEnv: { STORE: '/x' } } },
      /'STORE' does not match pattern '\^KUBE_PREWARM_/,
    ],
    ['a relative store path', { agent: { store: { hostPath: 'var/lib' } } }, /agent\/store\/hostPath/],
    ['a disk budget that is not a size', { agent: { store: { diskBudget: 'lots' } } }, /diskBudget/],
    [
      'no disk budget at all',
      { agent: { store: { diskBudget: '0', diskBudgetPercent: 0 } } },
      /needs a budget/,
    ],
    [
      'NetworkPolicy without node CIDRs for host-network agents',
      { networkPolicy: { enabled: true } },
      /redisNodeCidrs/,
    ],
    [
      'serviceMonitor.enabled neither boolean nor auto',
      { monitoring: { serviceMonitor: { enabled: 'yes' } } },
      /serviceMonitor\/enabled/,
    ],
  ];
  for (const [what, values, expected] of cases) {
    test(what, async () => {
      const stderr = await renderError(values);
      assert.match(stderr, expected);
    });
  }
});

function pick(o: Record<string, string>, keys: string[]): Record<string, string> {
  return Object.fromEntries(keys.map((k) => [k, o[k]!]));
}

describe('uninstall hook (operator.uninstallHook)', () => {
  const HOOK = `${FULL}-release-nodes`;
  const hookObjects = (objs: K8sObject[]) =>
    objs.filter((o) => o.metadata.labels?.['app.kubernetes.io/component'] === 'release-nodes');

  test('pre-delete: a ServiceAccount, ClusterRole and binding first, then the Job running `operator release-nodes`', async () => {
    const objs = hookObjects(await render());
    assert.deepEqual(objs.map((o) => `${o.kind}/${o.metadata.name}`).sort(), [
      `ClusterRole/${HOOK}`,
      `ClusterRoleBinding/${HOOK}`,
      `Job/${HOOK}`,
      `ServiceAccount/${HOOK}`,
    ]);
    for (const o of objs) {
      const a = o.metadata.annotations ?? {};
      assert.equal(a['helm.sh/hook'], 'pre-delete', `${o.kind} is a pre-delete hook`);
      const policy = (a['helm.sh/hook-delete-policy'] ?? '').split(',');
      assert.ok(policy.includes('before-hook-creation') && policy.includes('hook-succeeded'), o.kind);
      // Created before the Job (lower weight), so the Job's pod finds its account and role.
      assert.ok(Number(a['helm.sh/hook-weight']) < (o.kind === 'Job' ? 1 : 0), `${o.kind} weight`);
    }
    const job = one(objs, 'Job');
    assert.ok(
      !job.metadata.annotations?.['helm.sh/hook-delete-policy']?.includes('hook-failed'),
      'a failed Job stays for its logs',
    );
    const pod = job.spec.template.spec;
    assert.equal(pod.serviceAccountName, HOOK);
    assert.equal(pod.restartPolicy, 'Never');
    assert.ok(job.spec.activeDeadlineSeconds < 300, 'fails before helm’s default 5 min timeout');
    const c = pod.containers[0];
    assert.equal(
      c.image,
      one(await render(), 'Deployment', '-operator').spec.template.spec.containers[0].image,
    );
    // What bin/kube-prewarm.js dispatches to the subcommand, with flags it accepts.
    assert.deepEqual(c.args.slice(0, 2), ['operator', 'release-nodes']);
    assert.deepEqual(parseReleaseNodesArgs(c.args.slice(2)), { attempts: 5, logLevel: 'info', help: false });
    assert.equal(c.securityContext.readOnlyRootFilesystem, true);
    assert.equal(pod.securityContext.runAsNonRoot, true);
    // It must run while every node still carries the taint it removes.
    assert.ok(
      pod.tolerations.some(
        (t: { key?: string; operator?: string }) => t.key === STARTUP_TAINT_KEY && t.operator === 'Exists',
      ),
    );
    const binding = one(objs, 'ClusterRoleBinding');
    assert.deepEqual(binding.roleRef, {
      apiGroup: 'rbac.authorization.k8s.io',
      kind: 'ClusterRole',
      name: HOOK,
    });
    assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: HOOK, namespace: NAMESPACE }]);
  });

  test('its role: nodes get, list, patch and nothing else', async () => {
    const rules = one(hookObjects(await render()), 'ClusterRole').rules;
    for (const verb of ['get', 'list', 'patch']) assert.ok(allows(rules, '', 'nodes', verb), verb);
    for (const [group, res, verb] of [
      ['', 'nodes', 'delete'],
      ['', 'nodes', 'update'],
      ['', 'nodes', 'watch'],
      ['', 'nodes/status', 'patch'],
      ['', 'secrets', 'get'],
      ['', 'pods', 'list'],
      ['prewarm.kube-prewarm.io', 'imageprewarms', 'list'],
    ] as const)
      assert.ok(!allows(rules, group, res, verb), `must not ${verb} ${res}`);
  });

  test('operator log level, scheduling and pull secrets reach the Job; off with enabled=false or rbac.create=false', async () => {
    const objs = await render({
      imagePullSecrets: [{ name: 'regcred' }],
      operator: {
        logLevel: 'debug',
        nodeSelector: { pool: 'system' },
        tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'system', effect: 'NoSchedule' }],
        uninstallHook: { resources: { requests: { cpu: '50m' } } },
      },
    });
    const pod = one(objs, 'Job').spec.template.spec;
    assert.ok(pod.containers[0].args.includes('--log-level=debug'));
    assert.deepEqual(pod.nodeSelector, { 'kubernetes.io/os': 'linux', pool: 'system' });
    assert.deepEqual(
      pod.tolerations.map((t: { key: string }) => t.key),
      [STARTUP_TAINT_KEY, 'dedicated'],
    );
    assert.deepEqual(pod.imagePullSecrets, [{ name: 'regcred' }]);
    assert.equal(pod.containers[0].resources.requests.cpu, '50m');
    assert.deepEqual(hookObjects(await render({ operator: { uninstallHook: { enabled: false } } })), []);
    assert.deepEqual(hookObjects(await render({ rbac: { create: false } })), []);
  });
});

describe('webhook receiver Service nodePort', () => {
  const hooks = { enabled: true, sources: { distribution: { secrets: [SECRET_A] } } };
  const port = (objs: K8sObject[]) =>
    one(objs, 'Service', '-webhooks').spec.ports.find((p: { name: string }) => p.name === 'webhooks');

  test('a fixed node port with type NodePort; none by default', async () => {
    const fixed = await render({
      webhooks: { ...hooks, receiver: { service: { type: 'NodePort', nodePort: 30880 } } },
    });
    assert.equal(one(fixed, 'Service', '-webhooks').spec.type, 'NodePort');
    assert.equal(port(fixed).nodePort, 30880);
    assert.equal(port(await render({ webhooks: hooks })).nodePort, undefined);
  });

  test('refused with type ClusterIP, and outside the port range', async () => {
    assert.match(
      await renderError({ webhooks: { ...hooks, receiver: { service: { nodePort: 30880 } } } }),
      /nodePort needs webhooks\.receiver\.service\.type NodePort or LoadBalancer/,
    );
    assert.match(
      await renderError({
        webhooks: { ...hooks, receiver: { service: { type: 'NodePort', nodePort: 70000 } } },
      }),
      /nodePort/,
    );
  });
});

describe('docs/install.md', () => {
  test('its values table covers every key of values.yaml and names no key that does not exist', async () => {
    const values = parseYaml(await readFile(join(CHART_DIR, 'values.yaml'), 'utf8')) as Record<
      string,
      unknown
    >;
    const leaves: string[] = [];
    const walk = (o: unknown, path: string): void => {
      if (o !== null && typeof o === 'object' && !Array.isArray(o) && Object.keys(o).length > 0)
        for (const [k, v] of Object.entries(o)) walk(v, path ? `${path}.${k}` : k);
      else leaves.push(path);
    };
    walk(values, '');
    const doc = await readFile(join(REPO_ROOT, 'docs', 'install.md'), 'utf8');
    const table = doc.slice(doc.indexOf('## Values'));
    const documented = [...table.matchAll(/^\| `([A-Za-z0-9_.]+)` \|/gm)].map((m) => m[1]!);
    // A free-form map (resources, nodeSelector, ...) is documented as a whole.
    const covered = (leaf: string) => documented.some((d) => leaf === d || leaf.startsWith(`${d}.`));
    assert.deepEqual(
      leaves.filter((l) => !covered(l)),
      [],
      'values missing from the docs/install.md table',
    );
    const exists = (key: string) => leaves.some((l) => l === key || l.startsWith(`${key}.`));
    assert.deepEqual(
      documented.filter((d) => !exists(d)),
      [],
      'documented keys that values.yaml does not have',
    );
  });
});

/**
 * Who may do what to Secrets, from the rendered roles and bindings: one entry per
 * (subject, namespace) with the verbs granted on `secrets` (namespace `*`: cluster-wide,
 * through a ClusterRoleBinding).
 */
function secretGrants(objs: K8sObject[]): { subject: string; namespace: string; verbs: string[] }[] {
  const out: { subject: string; namespace: string; verbs: string[] }[] = [];
  const roleOf = (kind: string, name: string, ns?: string) =>
    objs.find(
      (o) => o.kind === kind && o.metadata.name === name && (ns === undefined || o.metadata.namespace === ns),
    );
  for (const b of objs.filter((o) => o.kind === 'ClusterRoleBinding' || o.kind === 'RoleBinding')) {
    const ns = b.kind === 'ClusterRoleBinding' ? '*' : (b.metadata.namespace as string);
    const role =
      b.roleRef.kind === 'ClusterRole'
        ? roleOf('ClusterRole', b.roleRef.name)
        : roleOf('Role', b.roleRef.name, b.metadata.namespace);
    assert.ok(role, `${b.kind} ${b.metadata.name} refers to a role the chart renders`);
    const verbs = new Set<string>();
    for (const r of role.rules ?? [])
      if (
        (r.apiGroups ?? []).some((g: string) => g === '' || g === '*') &&
        (r.resources ?? []).some((x: string) => x === 'secrets' || x === '*')
      )
        for (const v of r.verbs) verbs.add(v);
    if (verbs.size === 0) continue;
    for (const s of b.subjects ?? [])
      out.push({
        subject: `${s.kind} ${s.namespace ?? ''}/${s.name}`,
        namespace: ns,
        verbs: [...verbs].sort(),
      });
  }
  return out;
}
