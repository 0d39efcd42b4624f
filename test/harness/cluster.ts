/**
 * A real Kubernetes cluster on this machine for end-to-end tests (test/e2e/) and
 * bench/pod-start-real: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
 * CoreDNS, and per node containerd + runc, kubelet and kube-proxy (test/harness/cluster-node.ts),
 * all v1.34.2 binaries built by `scripts/go-tools.sh` (cached), plus Debian's docker-registry
 * behind a counting proxy. TESTBED.md ("A real node") lists what each piece needed here.
 *
 * Layout (test/harness/cluster-net.ts): every node has its own network and mount
 * namespace; node 1 also runs the control plane and DNS. Pods get addresses on their
 * node's bridge (bridge CNI, test/harness/cluster-net.ts), Services work through kube-proxy, Service
 * names through CoreDNS, so the Helm chart installs unchanged. The registry listens on
 * 127.0.0.1 here; pods and containerd reach it through `proxy` on the cluster bridge
 * (`registryHost`), which counts every byte it serves. containerd speaks plain HTTP to it
 * because each node has an administrator's `hosts.toml` for it, as an insecure in-cluster
 * registry would.
 *
 * `close()` undoes everything in the order TESTBED.md gives: pods' processes and shims,
 * kubelets, containerd, kube-proxy, control plane, namespaces (their mounts, addresses and
 * iptables rules go with them), cgroups, the bridge, and the sysctls the kubelet changed.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type KubeConfig,
  type KubernetesObject,
  KubernetesObjectApi,
  type V1Node,
} from '@kubernetes/client-node';
import {
  CLUSTER_NET,
  createBridge,
  createNodeNet,
  deleteBridge,
  deleteNodeNet,
  removeStaleClusterNet,
} from './cluster-net.js';
import { ClusterNode, type NodeSpec } from './cluster-node.js';
import { type FaultProxyHandle, startFaultProxy } from './fault-proxy.js';
import { pushImage } from './images.js';
import { firstServiceIp, issueCert, type KubeHandle, type KubeUser, startKube, testBinDir } from './kube.js';
import { type ManagedProcess, spawnProcess, waitForPort, waitUntil } from './process.js';
import { type RegistryHandle, type RegistryNotifications, startRegistry } from './registry.js';
import { makeTempDir, removeTempDir } from './tmp.js';

/** Sysctls the kubelet sets machine-wide (saved before, restored after). */
const KUBELET_SYSCTLS = ['vm/overcommit_memory', 'kernel/panic', 'kernel/panic_on_oops'];

/** The pause (sandbox) image: busybox sleeping, pushed to the test registry. */
const PAUSE_REPOSITORY = 'kube-prewarm-test/pause';

export interface ClusterOptions {
  /** Nodes started with the cluster. Default one; more are added with `addNode`. */
  nodes?: readonly Omit<NodeSpec, 'index'>[];
  /** Registry push notifications (e.g. to the in-cluster webhook receiver's NodePort). */
  registryNotifications?: RegistryNotifications;
  /** Per component readiness timeout. Default 120 s (2 slow shared cores). */
  readyTimeoutMs?: number;
}

export interface ClusterHandle {
  /** Admin access (kubeconfig, raw requests); the apiserver listens on node 1's address. */
  readonly kube: KubeHandle;
  readonly kc: KubeConfig;
  /** Generic object client (create/read/patch/delete any kind) as the admin. */
  readonly api: KubernetesObjectApi;
  readonly nodes: ClusterNode[];
  /** The real registry on 127.0.0.1 (push here with skopeo, or through `proxy`). */
  readonly registry: RegistryHandle;
  /** The counting proxy pods and containerd pull through. */
  readonly proxy: FaultProxyHandle;
  /** `<bridge ip>:<port>` of `proxy`: the registry host in image references. */
  readonly registryHost: string;
  /** A node's cluster DNS and Service addresses, for values that need them. */
  readonly dnsIp: string;
  readonly serviceCidr: string;
  /** Starts one more node; resolves once it is Ready (or registered, with `waitReady: false`). */
  addNode(spec: Omit<NodeSpec, 'index'>, opts?: { waitReady?: boolean }): Promise<ClusterNode>;
  /** Resolves when the Node's Ready condition is True; the error names the last conditions seen. */
  waitNodeReady(name: string, timeoutMs?: number): Promise<V1Node>;
  /** Stops everything and restores the machine. Safe to call twice. */
  close(): Promise<void>;
}

function bin(name: string): string {
  const path = join(testBinDir(), name);
  if (!existsSync(path))
    throw new Error(
      `${name} not found at ${path}: build it with \`bash scripts/go-tools.sh\` (cached afterwards)`,
    );
  return path;
}

/** The admin-written hosts.toml that lets containerd pull from the plain-HTTP test registry. */
export function registryHostsToml(registryHost: string): string {
  return `# written by the test cluster (an administrator's insecure registry)\nserver = "http://${registryHost}"\n\n[host."http://${registryHost}"]\n  capabilities = ["pull", "resolve", "push"]\n`;
}

/**
 * Starts the cluster; resolves once every node is Ready. Rejects, after undoing what it
 * started, with the failing component's log tail. Needs root, the binaries of
 * `scripts/go-tools.sh`, and Debian's containerd, runc, containernetworking-plugins,
 * docker-registry, skopeo and busybox-static.
 */
export async function startCluster(opts: ClusterOptions = {}): Promise<ClusterHandle> {
  if (process.getuid?.() !== 0) throw new Error('startCluster needs root (namespaces, cgroups, mounts)');
  const bins = {
    kubelet: bin('kubelet'),
    scheduler: bin('kube-scheduler'),
    kcm: bin('kube-controller-manager'),
    kubeProxy: bin('kube-proxy'),
    coredns: bin('coredns'),
  };
  if (!existsSync('/bin/busybox')) throw new Error('/bin/busybox missing: apt-get install busybox-static');
  const readyTimeoutMs = opts.readyTimeoutMs ?? 120_000;
  const teardown: (() => Promise<unknown>)[] = [];
  const undo = async (): Promise<void> => {
    const errors: unknown[] = [];
    for (let f = teardown.pop(); f; f = teardown.pop()) {
      try {
        await f();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0)
      throw new AggregateError(errors, `cluster teardown: ${errors.length} step(s) failed`);
  };
  try {
    const sysctls = new Map<string, string>();
    for (const s of KUBELET_SYSCTLS) sysctls.set(s, await readFile(`/proc/sys/${s}`, 'utf8'));
    teardown.push(async () => {
      for (const [s, v] of sysctls) await writeFile(`/proc/sys/${s}`, v).catch(() => undefined);
    });

    const dir = await makeTempDir('cluster');
    teardown.push(() => removeTempDir(dir));
    await removeStaleClusterNet();
    await createBridge();
    teardown.push(() => deleteBridge());

    const registry = await startRegistry(
      opts.registryNotifications ? { notifications: opts.registryNotifications } : {},
    );
    teardown.push(() => registry.close());
    const proxy = await startFaultProxy({ upstream: registry, listenHost: CLUSTER_NET.hostIp });
    teardown.push(() => proxy.stop());
    const registryHost = proxy.host;
    const pause = await pushImage(registry, {
      repository: PAUSE_REPOSITORY,
      tag: '1',
      layers: [{ files: { 'bin/busybox': await readFile('/bin/busybox') }, executables: ['bin/busybox'] }],
      config: { Entrypoint: ['/bin/busybox', 'sleep', '2147483647'] },
    });
    const sandboxImage = `${registryHost}/${PAUSE_REPOSITORY}@${pause.digest}`;

    const token = (): string => randomBytes(24).toString('hex');
    const users = {
      scheduler: { name: 'system:kube-scheduler', token: token(), groups: [] },
      kcm: { name: 'system:kube-controller-manager', token: token(), groups: [] },
      kubeProxy: { name: 'system:kube-proxy', token: token(), groups: [] },
    } satisfies Record<string, KubeUser>;
    let kube: KubeHandle | undefined;
    const kubeletCredentials = async (name: string): Promise<{ cert: string; key: string }> => {
      if (!kube) throw new Error('the control plane is not up yet');
      const base = `kubelet-${name}`;
      await issueCert(kube.dir, base, `/O=system:nodes/CN=system:node:${name}`, [
        'extendedKeyUsage=clientAuth',
        'keyUsage=digitalSignature,keyEncipherment',
      ]);
      return { cert: join(kube.dir, `${base}.crt`), key: join(kube.dir, `${base}.key`) };
    };
    const specs = opts.nodes ?? [{ name: 'node-1' }];

    const nodes: ClusterNode[] = [];
    const newNode = async (spec: Omit<NodeSpec, 'index'>): Promise<ClusterNode> => {
      const index = nodes.length + 1;
      const netnsPath = await createNodeNet(
        index,
        nodes.map((n) => n.index),
      );
      teardown.push(() => deleteNodeNet(index));
      const node = new ClusterNode(
        { ...spec, index },
        {
          dir: join(dir, `node${index}`),
          server: `https://${CLUSTER_NET.nodeIp(1)}:6443`,
          caPath: join(dir, 'node-ca.crt'),
          kubeletCredentials,
          kubeProxyToken: users.kubeProxy.token,
          sandboxImage,
          dnsIp: CLUSTER_NET.nodeIp(1),
          kubeletBin: bins.kubelet,
          kubeProxyBin: bins.kubeProxy,
          readyTimeoutMs,
        },
      );
      teardown.push(() => node.close());
      await node.init(netnsPath);
      await node.writeFileInNode(
        `/etc/containerd/certs.d/${registryHost}/hosts.toml`,
        registryHostsToml(registryHost),
      );
      nodes.push(node);
      return node;
    };

    const first = await newNode(specs[0] ?? { name: 'node-1' });
    kube = await startKube({
      readyTimeoutMs,
      nodes: {
        address: first.ip,
        port: 6443,
        serviceCidr: CLUSTER_NET.serviceCidr,
        exec: first.exec,
        users: [users.scheduler, users.kcm, users.kubeProxy],
      },
    });
    const k = kube;
    teardown.push(() => k.stop());
    await writeFile(join(dir, 'node-ca.crt'), await readFile(k.pki.ca));

    const controlPlane = async (
      name: string,
      command: string,
      args: string[],
      user: KubeUser,
    ): Promise<ManagedProcess> => {
      const kubeconfig = await k.writeKubeconfig(user, `${name}.kubeconfig`);
      const p = await spawnProcess({
        name,
        ...first.exec(command, [`--kubeconfig=${kubeconfig}`, ...args]),
        logPath: join(k.dir, `${name}.log`),
      });
      teardown.push(() => p.stop());
      return p;
    };
    await controlPlane(
      'kube-controller-manager',
      bins.kcm,
      [
        '--bind-address=127.0.0.1',
        '--secure-port=10257',
        '--leader-elect=false',
        '--use-service-account-credentials=true',
        `--service-account-private-key-file=${k.pki.saKey}`,
        `--root-ca-file=${k.pki.ca}`,
        `--cluster-signing-cert-file=${k.pki.ca}`,
        `--cluster-signing-key-file=${k.pki.caKey}`,
        `--service-cluster-ip-range=${CLUSTER_NET.serviceCidr}`,
        `--cluster-cidr=${CLUSTER_NET.podCidr}`,
        '--allocate-node-cidrs=false',
        // Quick reactions in tests: a lost node is noticed in 20 s, not 40.
        '--node-monitor-grace-period=20s',
        '--v=1',
      ],
      users.kcm,
    );
    await controlPlane(
      'kube-scheduler',
      bins.scheduler,
      ['--bind-address=127.0.0.1', '--secure-port=10259', '--leader-elect=false', '--v=1'],
      users.scheduler,
    );
    const corefile = join(k.dir, 'Corefile');
    await writeFile(
      corefile,
      [
        '.:53 {',
        `  bind ${first.ip}`,
        '  errors',
        '  health 127.0.0.1:18080',
        '  ready 127.0.0.1:18181',
        '  kubernetes cluster.local in-addr.arpa ip6.arpa {',
        `    kubeconfig ${k.kubeconfigPath} test`,
        '    pods insecure',
        '    fallthrough in-addr.arpa ip6.arpa',
        '  }',
        '  cache 5',
        '}',
        '',
      ].join('\n'),
    );
    const dns = await spawnProcess({
      name: 'coredns',
      ...first.exec(bins.coredns, ['-conf', corefile]),
      logPath: join(k.dir, 'coredns.log'),
    });
    teardown.push(() => dns.stop());
    await waitForPort(first.ip, 53, { process: dns, timeoutMs: readyTimeoutMs });

    const kc = k.kc;
    const api = KubernetesObjectApi.makeApiClient(kc);
    const waitNodeReady = async (name: string, timeoutMs = readyTimeoutMs): Promise<V1Node> => {
      let last = 'not registered';
      let node: V1Node | undefined;
      const kubelet = nodes.find((n) => n.name === name)?.kubelet;
      await waitUntil(
        `node ${name} Ready`,
        async () => {
          const got = await k.request('GET', `/api/v1/nodes/${name}`);
          if (got.status !== 200) return false;
          node = got.body as V1Node;
          const conds = node.status?.conditions ?? [];
          last = conds.map((c) => `${c.type}=${c.status}${c.reason ? ` (${c.reason})` : ''}`).join(', ');
          if (conds.some((c) => c.type === 'Ready' && c.status === 'True')) return true;
          throw new Error(last || 'no conditions');
        },
        { timeoutMs, intervalMs: 500, ...(kubelet ? { process: kubelet } : {}) },
      );
      return node!;
    };
    const bringUp = async (node: ClusterNode, waitReady: boolean): Promise<void> => {
      await node.startKubeProxy();
      await node.startKubelet();
      if (waitReady) await waitNodeReady(node.name);
    };

    await bringUp(first, true);
    // Pods are refused until the controller-manager has made a namespace's default
    // ServiceAccount; new namespaces get theirs within a second.
    await waitUntil(
      'the default ServiceAccount of namespace default',
      async () =>
        (await k.request('GET', '/api/v1/namespaces/default/serviceaccounts/default')).status === 200,
      { timeoutMs: readyTimeoutMs, intervalMs: 250 },
    );
    for (const spec of specs.slice(1)) await bringUp(await newNode(spec), true);

    let closed: Promise<void> | undefined;
    return {
      kube: k,
      kc,
      api,
      nodes,
      registry,
      proxy,
      registryHost,
      dnsIp: CLUSTER_NET.nodeIp(1),
      serviceCidr: CLUSTER_NET.serviceCidr,
      async addNode(spec, o = {}) {
        const node = await newNode(spec);
        await bringUp(node, o.waitReady ?? true);
        return node;
      },
      waitNodeReady,
      close() {
        closed ??= undo();
        return closed;
      },
    };
  } catch (err) {
    await undo().catch(() => undefined);
    throw err;
  }
}

export type { KubernetesObject };
/** Re-exported for tests that reason about the Service range. */
export { CLUSTER_NET, firstServiceIp };
