/**
 * A private containerd for `ctr content fetch` baselines: its own root, state and sockets
 * under a temp dir, only the plugins a content fetch needs (no CRI, no snapshotters
 * that need special filesystems). `ctr` itself does the HTTP fetch and streams the bytes
 * into the daemon's content store over gRPC, so a fetch costs CPU in both processes.
 */
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Cleanup } from './cleanup.js';
import { type Daemon, logTail, startDaemon, waitUntil } from './proc.js';

const execFileP = promisify(execFile);

export interface BenchContainerd {
  /** gRPC socket for `ctr --address`. */
  readonly address: string;
  /** The content store's directory (blobs/ and ingest/). */
  readonly contentDir: string;
  readonly daemon: Daemon;
  stop(): Promise<void>;
}

/** Starts containerd with everything under `dir` (path kept short: socket paths < 108 chars). */
export async function startBenchContainerd(cleanup: Cleanup, dir: string): Promise<BenchContainerd> {
  const root = join(dir, 'root');
  const state = join(dir, 'state');
  await mkdir(root, { recursive: true });
  await mkdir(state, { recursive: true });
  const address = join(dir, 'c.sock');
  if (address.length >= 100) throw new Error(`containerd socket path too long: ${address}`);
  const configPath = join(dir, 'config.toml');
  await writeFile(
    configPath,
    [
      'version = 2',
      `root = "${root}"`,
      `state = "${state}"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",',
      '  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",',
      '  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]',
      '[grpc]',
      `  address = "${address}"`,
      '[ttrpc]',
      `  address = "${join(dir, 't.sock')}"`,
      '[debug]',
      `  address = "${join(dir, 'd.sock')}"`,
      '  level = "warn"',
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = "${join(dir, 'opt')}"`,
      '',
    ].join('\n'),
  );
  const logPath = join(dir, 'containerd.log');
  const daemon = startDaemon(cleanup, {
    name: 'containerd',
    argv: ['containerd', '--config', configPath],
    logPath,
  });
  await waitUntil(
    async () => {
      await execFileP('ctr', ['--address', address, 'version'], { timeout: 5000 });
      return true;
    },
    20_000,
    () => `containerd not answering on ${address}\n${logTail(logPath)}`,
  ).catch(async (err: unknown) => {
    await daemon.stop();
    throw err;
  });
  return {
    address,
    contentDir: join(root, 'io.containerd.content.v1.content'),
    daemon,
    stop: () => daemon.stop(),
  };
}
