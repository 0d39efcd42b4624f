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
  const dir = await makeTempDir('ctrd');
  try {
    const snapshotter = opts.snapshotter ?? 'overlayfs';
    const root = join(dir, 'root');
    const state = join(dir, 'state');
    const certsDir = join(dir, 'certs.d');
    const address = join(dir, 'c.sock');
    if (Buffer.byteLength(address) >= 100) throw new Error(`containerd socket path too long: ${address}`);
    for (const d of [root, state, certsDir, join(dir, 'cni-bin'), join(dir, 'cni-conf')])
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
              '  [plugins."io.containerd.grpc.v1.cri".containerd]',
              `    snapshotter = ${q(snapshotter)}`,
              '  [plugins."io.containerd.grpc.v1.cri".cni]',
              `    bin_dir = ${q(join(dir, 'cni-bin'))}`,
              `    conf_dir = ${q(join(dir, 'cni-conf'))}`,
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
          ['--address', address, '-n', o.namespace ?? 'k8s.io', ...args],
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
        name: `containerd ${address}`,
        // `ip netns exec` execs containerd: the pid (for CPU accounting, signals) is its own.
        command: opts.netns === undefined ? 'containerd' : 'ip',
        args: opts.netns === undefined ? argv.slice(1) : ['netns', 'exec', opts.netns, ...argv],
        logPath,
      });
      const p = proc;
      await waitUntil(
        `ctr version on ${address}`,
        async () => {
          await execFileP('ctr', ['--address', address, 'version'], { timeout: 5_000 });
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
      address,
      configPath,
      certsDir,
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
        await unmountUnder(dir);
        await removeTempDir(dir);
      },
    };
  } catch (err) {
    await unmountUnder(dir);
    await removeTempDir(dir);
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
