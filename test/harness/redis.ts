/**
 * A private `redis-server` on 127.0.0.1 for BullMQ/ioredis tests, with its own temp dir.
 * No RDB snapshots; AOF on request (the Redis-restart fault test needs data to survive).
 */
import { connect } from 'node:net';
import { join } from 'node:path';
import { type ManagedProcess, spawnProcess, waitUntil } from './process.js';
import { freePort, makeTempDir, removeTempDir } from './tmp.js';

export interface RedisOptions {
  /** `--appendonly yes` (AOF in the temp dir, so data survives `stop()`/`start()`). Default false. */
  appendonly?: boolean;
  /** Port on 127.0.0.1. Default: a free one. */
  port?: number;
  /** Readiness timeout. Default 20 s. */
  readyTimeoutMs?: number;
}

export interface RedisHandle {
  /** `127.0.0.1` */
  host: string;
  port: number;
  /** `redis://127.0.0.1:<port>` */
  url: string;
  /** The server's `--dir` (AOF and any dump live here). */
  dir: string;
  logPath: string;
  /** The running process; undefined while stopped. */
  readonly process: ManagedProcess | undefined;
  /** SIGTERM (Redis flushes the AOF on a clean shutdown), SIGKILL after 5 s. No-op when stopped. */
  stop(): Promise<void>;
  /** Starts again with the same port and dir; resolves once it answers PING. No-op when running. */
  start(): Promise<void>;
  /** SIGKILL: a crash (writes not yet fsynced to the AOF may be lost, as in production). */
  kill(): Promise<void>;
  /** Stops it and removes its dir. */
  close(): Promise<void>;
}

/**
 * Starts `redis-server --port <p> --bind 127.0.0.1 --dir <tmp> --save '' --appendonly no|yes`
 * and resolves once it answers `PING` with `PONG` (not `-LOADING`). Rejects with the log tail
 * when it does not come up.
 */
export async function startRedis(opts: RedisOptions = {}): Promise<RedisHandle> {
  const dir = await makeTempDir('redis');
  try {
    const port = opts.port ?? (await freePort());
    const logPath = join(dir, 'redis.log');
    const args = [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--dir',
      dir,
      '--save',
      '',
      '--appendonly',
      opts.appendonly ? 'yes' : 'no',
      '--daemonize',
      'no',
      // Log to stdout, which spawnProcess sends to logPath.
      '--logfile',
      '',
    ];
    let proc: ManagedProcess | undefined;
    const start = async (): Promise<void> => {
      if (proc?.running) return;
      proc = await spawnProcess({ name: `redis 127.0.0.1:${port}`, command: 'redis-server', args, logPath });
      await waitUntil(`PING on 127.0.0.1:${port}`, () => pingRedis(port), {
        process: proc,
        timeoutMs: opts.readyTimeoutMs ?? 20_000,
      });
    };
    try {
      await start();
    } catch (err) {
      await proc?.kill();
      throw err;
    }
    return {
      host: '127.0.0.1',
      port,
      url: `redis://127.0.0.1:${port}`,
      dir,
      logPath,
      get process() {
        return proc;
      },
      start,
      async stop() {
        await proc?.stop();
        proc = undefined;
      },
      async kill() {
        await proc?.kill();
        proc = undefined;
      },
      async close() {
        await proc?.stop();
        proc = undefined;
        await removeTempDir(dir);
      },
    };
  } catch (err) {
    await removeTempDir(dir);
    throw err;
  }
}

/** One inline `PING`; true on `+PONG`, throws with the reply otherwise (e.g. `-LOADING`). */
function pingRedis(port: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port });
    let reply = '';
    sock.setTimeout(2_000, () => sock.destroy(new Error('PING timeout')));
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      reply += d.toString('latin1');
      if (!reply.includes('\r\n')) return;
      sock.destroy();
      if (reply.startsWith('+PONG')) resolve(true);
      else reject(new Error(`PING answered ${reply.trim()}`));
    });
    sock.once('error', reject);
    sock.once('close', () => reject(new Error('connection closed before PING reply')));
  });
}
