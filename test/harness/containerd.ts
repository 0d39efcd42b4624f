/**
 * A private containerd (Debian 1.6) for integration tests: its own root, state, sockets,
 * CRI plugin and registry `config_path` (`certs.d/`), all under one short temp dir, so
 * several instances can run side by side with the host's containerd (if any) untouched.
 *
 * Layout of the temp dir (kept short: unix socket paths must stay under 108 bytes):
 * `config.toml`, `root/`, `state/`, `c.sock` (gRPC, also CRI), `t.sock` (ttrpc),
 * `d.sock` (debug), `opt/`, `certs.d/` (hosts.toml per registry), `containerd.log`.
 *
 * The CRI plugin needs no network for image pulls; its "no network config found" CNI
 * error in the log is harmless. Snapshotter: overlayfs (the temp dir is on ext4 here).
 *
 * The benchmarks use it too: `cri: false` for a content-store-only daemon (`ctr content
 * fetch`), `netns` to run it inside a shaped network namespace.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { type ManagedProcess, spawnProcess, waitUntil } from './process.js';
import { makeTempDir, removeTempDir } from './tmp.js';

const execFileP = promisify(execFile);

export interface ContainerdOptions {
  /** Snapshotter for the CRI plugin and `ctr`. Default `overlayfs`. */
  snapshotter?: 'overlayfs' | 'native';
  /** containerd's log level. Default `info` (CRI logs each PullImage). */
  logLevel?: 'debug' | 'info' | 'warn';
  /** Readiness timeout. Default 30 s. */
  readyTimeoutMs?: number;
  /**
   * Load the CRI plugin. Default true. False: a content-store-only daemon, so that a
   * benchmark measuring its CPU does not count the CRI plugin's background work.
   */
  cri?: boolean;
  /**
   * Network namespace to run containerd in (`ip netns exec <netns> containerd …`), so its
   * pulls cross that namespace's links. Default: this process's. The sockets stay
   * reachable from here: unix sockets live in the filesystem.
   */
  netns?: string;
  /** Run it as a kubelet's runtime (test/harness/cluster.ts): see `ContainerdNodeOptions`. */
  node?: ContainerdNodeOptions;
}

/**
 * containerd as the runtime of a real kubelet node. It runs inside the node's mount and
 * network namespaces (`exec`), where the node's own directories are bind-mounted over
 * `/run/containerd` and `/etc/containerd/certs.d`, so the chart's default host paths work
 * unchanged. The CRI settings are those a kubelet on this machine needs (TESTBED.md):
 * `restrict_oom_score_adj` (no CAP_SYS_RESOURCE here), a pause image from the test
 * registry, netns mounts under the state dir, runc v2 with cgroupfs, and CNI plugins from
 * Debian's containernetworking-plugins.
 */
export interface ContainerdNodeOptions {
  /** The node's directory; containerd's root, state and config go below it. */
  dir: string;
  /** Wraps a command so it runs in the node's namespaces. */
  exec: (command: string, args: string[]) => { command: string; args: string[] };
  /** gRPC socket as the node sees it (`/run/containerd/containerd.sock`)... */
  address: string;
  /** ...and the same socket as this process reaches it (through the bind mount's source). */
  hostAddress: string;
  /** containerd's registry `config_path` inside the node, and the same directory from here. */
  certsDir: string;
  hostCertsDir: string;
  /** CRI `sandbox_image`. */
  sandboxImage: string;
  /** CNI config directory (conflists); binaries come from /usr/lib/cni. */
  cniConfDir: string;
}

export interface CtrResult {
  stdout: string;
  stderr: string;
}

export interface ContainerdHandle {
  /** The temp dir holding everything. */
  readonly dir: string;
  /** gRPC socket path (CRI too): `unix://<address>` for grpc-js. */
  readonly address: string;
  readonly configPath: string;
  /** CRI `registry.config_path`: put `<host>/hosts.toml` files here. */
  readonly certsDir: string;
  readonly logPath: string;
  /** The content store's directory (`blobs/`, `ingest/`) under the daemon's root. */
  readonly contentDir: string;
  readonly snapshotter: string;
  readonly process: ManagedProcess | undefined;
  /**
   * Runs `ctr --address <sock> -n <namespace> <args…>` (namespace default `k8s.io`, the
   * CRI's) and resolves with its output; rejects with stderr when it exits non-zero.
   */
  ctr(args: readonly string[], opts?: { namespace?: string; timeoutMs?: number }): Promise<CtrResult>;
  /** SIGTERM (SIGKILL after 5 s). The dir stays, `start()` brings it back. */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Stops it, unmounts anything left under its root, and removes the dir. */
  close(): Promise<void>;
}

/**
 * Writes a config for a private instance and starts `containerd --config <dir>/config.toml`;
 * resolves once `ctr version` answers on its socket. Rejects with the log tail otherwise.
 */
export async function startContainerd(opts: ContainerdOptions = {}): Promise<ContainerdHandle> {
  const node = opts.node;
  const dir = node ? join(node.dir, 'containerd') : await makeTempDir('ctrd');
  try {
    const snapshotter = opts.snapshotter ?? 'overlayfs';
    const root = join(dir, 'root');
    const state = join(dir, 'state');
    const certsDir = node?.certsDir ?? join(dir, 'certs.d');
    const hostCertsDir = node?.hostCertsDir ?? certsDir;
    const address = node?.address ?? join(dir, 'c.sock');
    const hostAddress = node?.hostAddress ?? address;
    const cniBin = node ? '/usr/lib/cni' : join(dir, 'cni-bin');
    const cniConf = node?.cniConfDir ?? join(dir, 'cni-conf');
    for (const a of [address, hostAddress])
      if (Buffer.byteLength(a) >= 100) throw new Error(`containerd socket path too long: ${a}`);
    for (const d of [root, state, hostCertsDir, cniConf, ...(node ? [] : [cniBin])])
      await mkdir(d, { recursive: true });
    const configPath = join(dir, 'config.toml');
    const q = (s: string): string => JSON.stringify(s);
    const cri = opts.cri ?? true;
    await writeFile(
      configPath,
      [
        'version = 2',
        `root = ${q(root)}`,
        `state = ${q(state)}`,
        // Plugins that need special filesystems or would talk to the network on start.
        'disabled_plugins = [',
        ...(cri ? [] : ['  "io.containerd.grpc.v1.cri",']),
        '  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",',
        '  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",',
        '  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",',
        ']',
        '[grpc]',
        `  address = ${q(address)}`,
        '[ttrpc]',
        `  address = ${q(join(dir, 't.sock'))}`,
        '[debug]',
        `  address = ${q(join(dir, 'd.sock'))}`,
        `  level = ${q(opts.logLevel ?? 'info')}`,
        // Namespaces do not share content: a pull in one namespace never borrows blobs
        // another namespace fetched, so tests see what each pull really transferred.
        '[plugins."io.containerd.metadata.v1.bolt"]',
        '  content_sharing_policy = "isolated"',
        '[plugins."io.containerd.internal.v1.opt"]',
        `  path = ${q(join(dir, 'opt'))}`,
        ...(cri
          ? [
              '[plugins."io.containerd.grpc.v1.cri"]',
              '  disable_tcp_service = true',
              // The streaming server (exec/attach) binds a TCP port: loopback, any free port.
              '  stream_server_address = "127.0.0.1"',
              '  stream_server_port = "0"',
              ...(node
                ? [
                    `  sandbox_image = ${q(node.sandboxImage)}`,
                    // The sandbox lacks CAP_SYS_RESOURCE: without this every pod sandbox
                    // fails in runc (oom_score_adj: permission denied).
                    '  restrict_oom_score_adj = true',
                    '  netns_mounts_under_state_dir = true',
                  ]
                : []),
              '  [plugins."io.containerd.grpc.v1.cri".containerd]',
              `    snapshotter = ${q(snapshotter)}`,
              ...(node
                ? [
                    '    default_runtime_name = "runc"',
                    '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
                    '      runtime_type = "io.containerd.runc.v2"',
                    '      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
                    '        SystemdCgroup = false',
                  ]
                : []),
              '  [plugins."io.containerd.grpc.v1.cri".cni]',
              `    bin_dir = ${q(cniBin)}`,
              `    conf_dir = ${q(cniConf)}`,
              '  [plugins."io.containerd.grpc.v1.cri".registry]',
              `    config_path = ${q(certsDir)}`,
            ]
          : []),
        '',
      ].join('\n'),
    );
    const logPath = join(dir, 'containerd.log');
    let proc: ManagedProcess | undefined;

    const ctr = async (
      args: readonly string[],
      o: { namespace?: string; timeoutMs?: number } = {},
    ): Promise<CtrResult> => {
      try {
        const { stdout, stderr } = await execFileP(
          'ctr',
          ['--address', hostAddress, '-n', o.namespace ?? 'k8s.io', ...args],
          { timeout: o.timeoutMs ?? 120_000, maxBuffer: 16 * 1024 * 1024 },
        );
        return { stdout, stderr };
      } catch (err) {
        const e = err as Error & { stderr?: string };
        throw new Error(`ctr ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`, { cause: err });
      }
    };

    const start = async (): Promise<void> => {
      if (proc?.running) return;
      const argv = ['containerd', '--config', configPath];
      proc = await spawnProcess({
        name: `containerd ${hostAddress}`,
        // `ip netns exec` execs containerd: the pid (for CPU accounting, signals) is its own.
        ...(node
          ? node.exec('containerd', argv.slice(1))
          : {
              command: opts.netns === undefined ? 'containerd' : 'ip',
              args: opts.netns === undefined ? argv.slice(1) : ['netns', 'exec', opts.netns, ...argv],
            }),
        logPath,
      });
      const p = proc;
      await waitUntil(
        `ctr version on ${hostAddress}`,
        async () => {
          await execFileP('ctr', ['--address', hostAddress, 'version'], { timeout: 5_000 });
          return true;
        },
        { process: p, timeoutMs: opts.readyTimeoutMs ?? 30_000, intervalMs: 100 },
      );
    };
    const stop = async (): Promise<void> => {
      await proc?.stop();
      proc = undefined;
    };
    try {
      await start();
    } catch (err) {
      await proc?.kill();
      throw err;
    }
    return {
      dir,
      address: hostAddress,
      configPath,
      certsDir: hostCertsDir,
      logPath,
      contentDir: join(root, 'io.containerd.content.v1.content'),
      snapshotter,
      get process() {
        return proc;
      },
      ctr,
      stop,
      start,
      async close() {
        await stop();
        // A node's containerd mounts live in the node's mount namespace and go with it;
        // the node removes its own directory.
        if (node) return;
        await unmountUnder(dir);
        await removeTempDir(dir);
      },
    };
  } catch (err) {
    if (!node) {
      await unmountUnder(dir);
      await removeTempDir(dir);
    }
    throw err;
  }
}

/**
 * Unmounts every mount point below `dir` (deepest first). containerd unmounts its own
 * snapshot mounts on a clean stop; this catches what a killed daemon leaves behind, so
 * removing the dir never fails with EBUSY.
 */
async function unmountUnder(dir: string): Promise<void> {
  let mounts: string;
  try {
    mounts = await readFile('/proc/self/mounts', 'utf8');
  } catch {
    return;
  }
  const points = mounts
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    // /proc/self/mounts escapes spaces as \040; our dirs have none.
    .filter((p) => p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const p of points) await execFileP('umount', ['-l', p]).catch(() => undefined);
}
