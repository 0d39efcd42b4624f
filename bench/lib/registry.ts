/**
 * Debian's `docker-registry` (CNCF distribution 2.8) for benchmarks: its own config, plain
 * HTTP, listening on a given address (127.0.0.1 or an address inside a network namespace
 * this benchmark created), serving a storage dir that may be shared with another instance
 * (a second registry process over the same storage only ever reads it here).
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import type { Cleanup } from './cleanup.js';
import { type Daemon, inNetns, logTail, startDaemon, waitUntil } from './proc.js';

const execFileP = promisify(execFile);

export interface BenchRegistryOptions {
  /** Directory for config.yml and the log. */
  dir: string;
  /** The filesystem driver's root directory. */
  storageDir: string;
  /** `ip:port` to listen on. */
  addr: string;
  ns?: string | undefined;
  /** Instance name used in file names and messages. */
  name: string;
}

export interface BenchRegistry {
  /** `ip:port`, as used in image references. */
  readonly host: string;
  readonly ns: string | undefined;
  readonly daemon: Daemon;
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (racy by nature; fine for a benchmark on its own machine). */
export async function freeLoopbackPort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** Starts the registry and resolves once `GET /v2/` answers 200 from inside its namespace. */
export async function startBenchRegistry(
  cleanup: Cleanup,
  opts: BenchRegistryOptions,
): Promise<BenchRegistry> {
  const configPath = join(opts.dir, `${opts.name}.yml`);
  const logPath = join(opts.dir, `${opts.name}.log`);
  await writeFile(
    configPath,
    stringify({
      version: '0.1',
      log: { level: 'warn', accesslog: { disabled: true } },
      storage: {
        filesystem: { rootdirectory: opts.storageDir },
        // Nothing to purge, and a scan of a shared storage dir at start is wasted time.
        maintenance: { uploadpurging: { enabled: false } },
      },
      http: { addr: opts.addr, secret: 'kube-prewarm-bench' },
    }),
  );
  const daemon = startDaemon(cleanup, {
    name: opts.name,
    argv: ['docker-registry', 'serve', configPath],
    ns: opts.ns,
    logPath,
  });
  const url = `http://${opts.addr}/v2/`;
  await waitUntil(
    async () => {
      if (daemon.exited()) throw new Error('exited');
      const probe = inNetns(opts.ns, ['curl', '-sf', '-o', '/dev/null', '--max-time', '2', url]);
      await execFileP(probe[0]!, probe.slice(1));
      return true;
    },
    15_000,
    () => `${opts.name} not answering on ${url}\n${logTail(logPath)}`,
  ).catch(async (err: unknown) => {
    await daemon.stop();
    throw err;
  });
  return { host: opts.addr, ns: opts.ns, daemon, stop: () => daemon.stop() };
}
