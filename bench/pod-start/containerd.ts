/**
 * A private containerd with the CRI plugin for bench/pod-start, optionally inside a network
 * namespace (so its pulls cross the shaped link), with everything under one short dir:
 * root, state, sockets (reachable from the host namespace: unix sockets live in the
 * filesystem), and `certs.d/` as the CRI registry `config_path`.
 */
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Cleanup } from '../lib/cleanup.js';
import { type Daemon, logTail, startDaemon, waitUntil } from '../lib/proc.js';

const execFileP = promisify(execFile);

export interface PodStartContainerd {
  /** gRPC/CRI socket path. */
  readonly address: string;
  /** CRI registry config_path. */
  readonly certsDir: string;
  readonly daemon: Daemon;
  stop(): Promise<void>;
}

export async function startPodStartContainerd(
  cleanup: Cleanup,
  dir: string,
  ns: string | undefined,
): Promise<PodStartContainerd> {
  const root = join(dir, 'root');
  const state = join(dir, 'state');
  const certsDir = join(dir, 'certs.d');
  for (const d of [root, state, certsDir, join(dir, 'cni-bin'), join(dir, 'cni-conf')])
    await mkdir(d, { recursive: true });
  const address = join(dir, 'c.sock');
  if (address.length >= 100) throw new Error(`containerd socket path too long: ${address}`);
  const q = (s: string) => JSON.stringify(s);
  const configPath = join(dir, 'config.toml');
  await writeFile(
    configPath,
    [
      'version = 2',
      `root = ${q(root)}`,
      `state = ${q(state)}`,
      'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",',
      '  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",',
      '  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
      '[grpc]',
      `  address = ${q(address)}`,
      '[ttrpc]',
      `  address = ${q(join(dir, 't.sock'))}`,
      '[debug]',
      `  address = ${q(join(dir, 'd.sock'))}`,
      '  level = "warn"',
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = ${q(join(dir, 'opt'))}`,
      '[plugins."io.containerd.grpc.v1.cri"]',
      '  disable_tcp_service = true',
      '  stream_server_address = "127.0.0.1"',
      '  stream_server_port = "0"',
      '  [plugins."io.containerd.grpc.v1.cri".containerd]',
      '    snapshotter = "overlayfs"',
      '  [plugins."io.containerd.grpc.v1.cri".cni]',
      `    bin_dir = ${q(join(dir, 'cni-bin'))}`,
      `    conf_dir = ${q(join(dir, 'cni-conf'))}`,
      '  [plugins."io.containerd.grpc.v1.cri".registry]',
      `    config_path = ${q(certsDir)}`,
      '',
    ].join('\n'),
  );
  const logPath = join(dir, 'containerd.log');
  const daemon = startDaemon(cleanup, {
    name: 'containerd',
    argv: ['containerd', '--config', configPath],
    ns,
    logPath,
  });
  await waitUntil(
    async () => {
      await execFileP('ctr', ['--address', address, 'version'], { timeout: 5000 });
      return true;
    },
    30_000,
    () => `containerd not answering on ${address}\n${logTail(logPath)}`,
  ).catch(async (err: unknown) => {
    await daemon.stop();
    throw err;
  });
  return {
    address,
    certsDir,
    daemon,
    stop: async () => {
      await daemon.stop();
      // Snapshot mounts a stopped daemon may leave (it unmounts on a clean stop).
      const mounts = await execFileP('cat', ['/proc/self/mounts']).then(
        (r) => r.stdout,
        () => '',
      );
      for (const p of mounts
        .split('\n')
        .map((l) => l.split(' ')[1] ?? '')
        .filter((p) => p.startsWith(`${dir}/`))
        .sort((a, b) => b.length - a.length))
        await execFileP('umount', ['-l', p]).catch(() => undefined);
    },
  };
}
