/**
 * One real Kubernetes node of the test cluster (test/harness/cluster.ts): containerd +
 * runc, kubelet and kube-proxy, in a network namespace (test/harness/cluster-net.ts) and a
 * mount namespace of its own.
 *
 * The mount namespace is a slave of this machine's, held open by a `sleep` process, with
 * the node's own directories bind-mounted over `/var/lib`, `/var/log`, `/run` and
 * `/etc/containerd`. So everything a node keeps in those places stays per node and the
 * chart's default host paths (`/var/lib/kube-prewarm`, `/etc/containerd/certs.d`,
 * `/run/containerd/containerd.sock`) and the kubelet's hard-coded ones (`/var/log/containers`,
 * `/var/lib/kubelet`) work unchanged, two nodes side by side. Mounts the kubelet and
 * containerd make (volumes, overlay snapshots, pod network namespaces) live in that
 * namespace and disappear with it; this machine's mount table never sees them.
 * `hostPath(p)` maps a path inside the node to where this process reads it.
 *
 * What the kubelet changes outside the node (TESTBED.md) is undone by `close()`: its
 * cgroups under `/kp<k>-node<i>` in every hierarchy (created here first, as the kubelet
 * requires on cgroup v1) are emptied and removed depth first. The sysctls it sets are
 * machine-wide; the cluster saves and restores them.
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdir, readdir, readFile, readlink, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { CLUSTER_NET } from './cluster-net.js';
import { type ContainerdHandle, startContainerd } from './containerd.js';
import { type ManagedProcess, spawnProcess, waitUntil } from './process.js';

const execFileP = promisify(execFile);

/** Directories of this machine replaced inside a node by the node's own. */
const NODE_BINDS = ['/var/lib', '/var/log', '/run', '/etc/containerd'] as const;

/** cgroup v1 hierarchies under /sys/fs/cgroup the kubelet needs its root in (not `unified`). */
async function cgroupHierarchies(): Promise<string[]> {
  const entries = await readdir('/sys/fs/cgroup', { withFileTypes: true });
  return entries.filter((e) => e.isDirectory() && e.name !== 'unified').map((e) => e.name);
}

export interface NodeSpec {
  /** 1-based; decides the namespace, addresses and pod range. */
  index: number;
  /** Node name (`--hostname-override`). */
  name: string;
  /** `--register-with-taints`, e.g. `prewarm.kube-prewarm.io/not-ready=:NoSchedule`. */
  taints?: readonly string[];
  /** `--node-labels`. */
  labels?: Readonly<Record<string, string>>;
  /** KubeletConfiguration fields over the harness's defaults (e.g. image GC thresholds). */
  kubelet?: Readonly<Record<string, unknown>>;
}

export interface NodeDeps {
  /** The node's directory (removed by the cluster). */
  dir: string;
  /** `https://<apiserver>`, the cluster CA, and kube-proxy's token. */
  server: string;
  caPath: string;
  kubeProxyToken: string;
  /** A client certificate for `system:node:<name>` (group system:nodes): paths of cert and key. */
  kubeletCredentials: (name: string) => Promise<{ cert: string; key: string }>;
  /** CRI sandbox image (the pause image in the test registry). */
  sandboxImage: string;
  /** The cluster DNS server's address (kubelet `clusterDNS`). */
  dnsIp: string;
  kubeletBin: string;
  kubeProxyBin: string;
  readyTimeoutMs: number;
}

/** A running node: see the module comment. */
export class ClusterNode {
  readonly index: number;
  readonly name: string;
  readonly ip: string;
  readonly dir: string;
  readonly spec: NodeSpec;
  readonly #deps: NodeDeps;
  #holder: ManagedProcess | undefined;
  #containerd: ContainerdHandle | undefined;
  #kubelet: ManagedProcess | undefined;
  #kubeProxy: ManagedProcess | undefined;
  #kubeletOverrides: Readonly<Record<string, unknown>>;
  #cgroupRoot: string;

  constructor(spec: NodeSpec, deps: NodeDeps) {
    this.spec = spec;
    this.index = spec.index;
    this.name = spec.name;
    this.ip = CLUSTER_NET.nodeIp(spec.index);
    this.dir = deps.dir;
    this.#deps = deps;
    this.#kubeletOverrides = spec.kubelet ?? {};
    this.#cgroupRoot = CLUSTER_NET.cgroupRoot(spec.index);
  }

  /** The node's containerd (its `ctr()` and `address` work from this process). */
  get containerd(): ContainerdHandle {
    if (!this.#containerd) throw new Error(`${this.name}: containerd not started`);
    return this.#containerd;
  }

  get kubelet(): ManagedProcess | undefined {
    return this.#kubelet;
  }

  /** Where this process finds a path of the node's (`/var/lib/kube-prewarm` → `<dir>/var-lib/kube-prewarm`). */
  hostPath(path: string): string {
    for (const b of NODE_BINDS) {
      if (path === b || path.startsWith(`${b}/`)) return join(this.dir, bindDirName(b), path.slice(b.length));
    }
    return path;
  }

  /** Wraps `command args` to run inside the node's mount and network namespaces. */
  exec = (command: string, args: string[]): { command: string; args: string[] } => {
    if (!this.#holder) throw new Error(`${this.name}: not started`);
    return {
      command: 'nsenter',
      args: [`--target=${this.#holder.pid}`, '--mount', '--net', '--', command, ...args],
    };
  };

  /** Runs a command inside the node and resolves with its stdout; rejects with its stderr. */
  async run(command: string, args: string[], timeoutMs = 60_000): Promise<string> {
    const e = this.exec(command, args);
    try {
      const { stdout } = await execFileP(e.command, e.args, { timeout: timeoutMs, maxBuffer: 16 << 20 });
      return stdout;
    } catch (err) {
      const x = err as { stderr?: string; message: string };
      throw new Error(`${this.name}: ${command} ${args.join(' ')}: ${x.stderr?.trim() || x.message}`, {
        cause: err,
      });
    }
  }

  /**
   * Creates the namespaces (the network one must exist: `cluster-net.ts createNodeNet`) and
   * the node's directories, then starts containerd. The kubelet and kube-proxy need the
   * control plane: `startKubelet()`, `startKubeProxy()`.
   */
  async init(netnsPath: string): Promise<void> {
    for (const b of NODE_BINDS) await mkdir(join(this.dir, bindDirName(b)), { recursive: true });
    await mkdir(this.hostPath('/etc/containerd/certs.d'), { recursive: true });
    await mkdir(this.hostPath('/var/lib/kubelet'), { recursive: true });
    await mkdir(join(this.dir, 'cni'), { recursive: true });
    const ownMnt = await readlink('/proc/self/ns/mnt');
    this.#holder = await spawnProcess({
      name: `${this.name} namespaces`,
      command: 'nsenter',
      args: [
        `--net=${netnsPath}`,
        '--',
        'unshare',
        '--mount',
        '--propagation',
        'slave',
        '--',
        'sleep',
        'infinity',
      ],
      logPath: join(this.dir, 'holder.log'),
    });
    const holder = this.#holder;
    await waitUntil(
      `${this.name}'s mount namespace`,
      async () => (await readlink(`/proc/${holder.pid}/ns/mnt`)) !== ownMnt,
      { process: holder, timeoutMs: 10_000 },
    );
    for (const b of NODE_BINDS) await this.run('mount', ['--bind', join(this.dir, bindDirName(b)), b]);

    // Pods on the node's bridge; loopback in each pod comes from containerd's CRI itself.
    await writeFile(
      join(this.dir, 'cni', '10-kp.conflist'),
      JSON.stringify({
        cniVersion: '0.4.0',
        name: 'kp',
        plugins: [
          {
            type: 'bridge',
            bridge: 'cni0',
            isGateway: true,
            ipMasq: false,
            hairpinMode: true,
            ipam: {
              type: 'host-local',
              ranges: [[{ subnet: CLUSTER_NET.nodePodCidr(this.index) }]],
              routes: [{ dst: '0.0.0.0/0' }],
              dataDir: '/var/lib/cni/networks',
            },
          },
        ],
      }),
    );
    this.#containerd = await startContainerd({
      node: {
        dir: this.dir,
        exec: this.exec,
        address: '/run/containerd/containerd.sock',
        hostAddress: this.hostPath('/run/containerd/containerd.sock'),
        certsDir: '/etc/containerd/certs.d',
        hostCertsDir: this.hostPath('/etc/containerd/certs.d'),
        sandboxImage: this.#deps.sandboxImage,
        cniConfDir: join(this.dir, 'cni'),
      },
      readyTimeoutMs: this.#deps.readyTimeoutMs,
    });
    await this.#makeCgroupRoot();
  }

  async #makeCgroupRoot(): Promise<void> {
    for (const h of await cgroupHierarchies()) {
      const dir = join('/sys/fs/cgroup', h, this.#cgroupRoot);
      await mkdir(dir, { recursive: true });
      if (h === 'cpuset') {
        for (const f of ['cpuset.cpus', 'cpuset.mems'])
          await writeFile(join(dir, f), await readFile(join('/sys/fs/cgroup/cpuset', f)));
      }
    }
  }

  #kubeconfig(user: string, auth: Record<string, string>): string {
    return JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [
        { name: 'kp', cluster: { server: this.#deps.server, 'certificate-authority': this.#deps.caPath } },
      ],
      users: [{ name: user, user: auth }],
      contexts: [{ name: 'kp', context: { cluster: 'kp', user } }],
      'current-context': 'kp',
    });
  }

  /**
   * Starts the kubelet (again), with `overrides` over the spec's KubeletConfiguration when
   * given (e.g. to force image GC). Resolves once its process runs; `waitReady` on the
   * cluster waits for the Node to be Ready.
   */
  async startKubelet(overrides?: Readonly<Record<string, unknown>>): Promise<void> {
    if (this.#kubelet?.running) return;
    if (overrides) this.#kubeletOverrides = { ...this.#kubeletOverrides, ...overrides };
    const d = this.#deps;
    const creds = await d.kubeletCredentials(this.name);
    await writeFile(
      join(this.dir, 'kubelet.kubeconfig'),
      this.#kubeconfig(`system:node:${this.name}`, {
        'client-certificate': creds.cert,
        'client-key': creds.key,
      }),
      { mode: 0o600 },
    );
    await writeFile(join(this.dir, 'resolv.conf'), '# kube-prewarm test node: cluster DNS only\n');
    const config = {
      apiVersion: 'kubelet.config.k8s.io/v1beta1',
      kind: 'KubeletConfiguration',
      address: this.ip,
      port: 10250,
      healthzBindAddress: '127.0.0.1',
      healthzPort: 10248,
      readOnlyPort: 0,
      authentication: {
        anonymous: { enabled: false },
        webhook: { enabled: true },
        x509: { clientCAFile: d.caPath },
      },
      authorization: { mode: 'Webhook' },
      cgroupDriver: 'cgroupfs',
      cgroupRoot: this.#cgroupRoot,
      failCgroupV1: false,
      failSwapOn: false,
      makeIPTablesUtilChains: false,
      clusterDNS: [d.dnsIp],
      clusterDomain: 'cluster.local',
      resolvConf: join(this.dir, 'resolv.conf'),
      containerRuntimeEndpoint: 'unix:///run/containerd/containerd.sock',
      serializeImagePulls: false,
      // Low thresholds: a shared CI disk must not make the node evict the test's pods.
      evictionHard: {
        'memory.available': '100Mi',
        'nodefs.available': '1%',
        'nodefs.inodesFree': '1%',
        'imagefs.available': '1%',
      },
      imageGCHighThresholdPercent: 100,
      imageGCLowThresholdPercent: 99,
      // The node's status reaches the control plane quickly (pods scheduled sooner).
      nodeStatusUpdateFrequency: '5s',
      syncFrequency: '10s',
      ...this.#kubeletOverrides,
    };
    await writeFile(join(this.dir, 'kubelet.yaml'), JSON.stringify(config, null, 2));
    const labels = Object.entries(this.spec.labels ?? {}).map(([k, v]) => `${k}=${v}`);
    const args = [
      `--config=${join(this.dir, 'kubelet.yaml')}`,
      `--kubeconfig=${join(this.dir, 'kubelet.kubeconfig')}`,
      `--hostname-override=${this.name}`,
      `--node-ip=${this.ip}`,
      '--v=1',
      ...(this.spec.taints?.length ? [`--register-with-taints=${this.spec.taints.join(',')}`] : []),
      ...(labels.length ? [`--node-labels=${labels.join(',')}`] : []),
    ];
    this.#kubelet = await spawnProcess({
      name: `kubelet ${this.name}`,
      ...this.exec(d.kubeletBin, args),
      logPath: join(this.dir, 'kubelet.log'),
    });
  }

  /** SIGTERM to the kubelet (pods keep running, as on a real node). */
  async stopKubelet(): Promise<void> {
    await this.#kubelet?.stop(15_000);
  }

  /** Starts kube-proxy (iptables mode, rules inside the node's network namespace). */
  async startKubeProxy(): Promise<void> {
    const d = this.#deps;
    await writeFile(
      join(this.dir, 'kube-proxy.kubeconfig'),
      this.#kubeconfig('system:kube-proxy', { token: d.kubeProxyToken }),
      {
        mode: 0o600,
      },
    );
    const config = {
      apiVersion: 'kubeproxy.config.k8s.io/v1alpha1',
      kind: 'KubeProxyConfiguration',
      clientConnection: { kubeconfig: join(this.dir, 'kube-proxy.kubeconfig') },
      hostnameOverride: this.name,
      mode: 'iptables',
      clusterCIDR: CLUSTER_NET.podCidr,
      healthzBindAddress: '127.0.0.1:10256',
      metricsBindAddress: '127.0.0.1:10249',
      nodePortAddresses: [`${this.ip}/32`],
      // 0 = leave the (machine-wide) conntrack sysctls alone.
      conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: '0s', tcpCloseWaitTimeout: '0s' },
      iptables: { syncPeriod: '10s', minSyncPeriod: '0s' },
    };
    await writeFile(join(this.dir, 'kube-proxy.yaml'), JSON.stringify(config, null, 2));
    this.#kubeProxy = await spawnProcess({
      name: `kube-proxy ${this.name}`,
      ...this.exec(d.kubeProxyBin, [`--config=${join(this.dir, 'kube-proxy.yaml')}`, '--v=1']),
      logPath: join(this.dir, 'kube-proxy.log'),
    });
  }

  /**
   * Stops everything of the node: the kubelet, every process left in its pods' cgroups
   * and its mount namespace (containers, containerd-shims, which outlive containerd),
   * containerd, kube-proxy and the namespace holder; then removes its cgroups depth first.
   * Each step runs even when an earlier one failed; the errors are thrown together.
   */
  async close(): Promise<void> {
    const errors: unknown[] = [];
    const step = async (f: () => Promise<unknown>): Promise<void> => {
      try {
        await f();
      } catch (err) {
        errors.push(err);
      }
    };
    await step(() => this.stopKubelet());
    // Pods' processes and containerd-shims (which outlive containerd) first, then the rest.
    await step(() => this.#killLeftovers([this.#containerd?.process, this.#kubeProxy]));
    await step(async () => this.#containerd?.close());
    await step(async () => this.#kubeProxy?.stop());
    await step(() => this.#killLeftovers());
    await step(async () => this.#holder?.kill());
    await step(() => this.#removeCgroups());
    if (errors.length > 0) throw new AggregateError(errors, `${this.name}: teardown failed`);
  }

  /**
   * SIGKILLs every process in the node's cgroups and mount namespace except the holder and
   * `keep`, until none is left (or 10 s have passed: then the cgroup removal reports it).
   */
  async #killLeftovers(keep: readonly (ManagedProcess | undefined)[] = []): Promise<void> {
    const holder = this.#holder;
    if (!holder?.running) return;
    const mnt = await readlink(`/proc/${holder.pid}/ns/mnt`).catch(() => undefined);
    const spared = new Set([holder.pid, process.pid, ...keep.filter((p) => p?.running).map((p) => p!.pid)]);
    for (let round = 0; round < 50; round++) {
      const pids = new Set(await cgroupPids(join('/sys/fs/cgroup/pids', this.#cgroupRoot)));
      if (mnt) {
        for (const e of await readdir('/proc')) {
          const pid = Number(e);
          if (Number.isInteger(pid) && (await readlink(`/proc/${pid}/ns/mnt`).catch(() => '')) === mnt)
            pids.add(pid);
        }
      }
      for (const pid of spared) pids.delete(pid);
      if (pids.size === 0) return;
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Gone already.
        }
      }
      await sleep(200);
    }
  }

  async #removeCgroups(): Promise<void> {
    for (const h of await cgroupHierarchies().catch(() => [] as string[])) {
      await rmdirDeep(join('/sys/fs/cgroup', h, this.#cgroupRoot));
    }
    await rmdirDeep(join('/sys/fs/cgroup/unified', this.#cgroupRoot));
  }

  /** Copies a file into the node (e.g. a hosts.toml an admin wrote before the chart came). */
  async writeFileInNode(path: string, content: string | Buffer): Promise<void> {
    const host = this.hostPath(path);
    await mkdir(join(host, '..'), { recursive: true });
    await writeFile(host, content);
  }

  /** Copies a file of this machine into the node at `path`. */
  async copyIntoNode(from: string, path: string): Promise<void> {
    const host = this.hostPath(path);
    await mkdir(join(host, '..'), { recursive: true });
    await copyFile(from, host);
  }
}

function bindDirName(bind: string): string {
  return bind.slice(1).replaceAll('/', '-');
}

/** Every pid in a cgroup v1 directory and its descendants. */
async function cgroupPids(dir: string): Promise<number[]> {
  const out: number[] = [];
  const procs = await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => '');
  for (const l of procs.split('\n')) if (l.trim()) out.push(Number(l));
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) if (e.isDirectory()) out.push(...(await cgroupPids(join(dir, e.name))));
  return out;
}

/** Removes a cgroup directory tree (cgroup dirs are removed with rmdir, children first). */
async function rmdirDeep(dir: string): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => undefined);
  if (!entries) return;
  for (const e of entries) if (e.isDirectory()) await rmdirDeep(join(dir, e.name));
  for (let i = 0; ; i++) {
    try {
      await rmdir(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      // EBUSY while the last processes are still exiting.
      if (i >= 50) throw new Error(`cannot remove cgroup ${dir}: ${code}`, { cause: err });
      await sleep(100);
    }
  }
}
