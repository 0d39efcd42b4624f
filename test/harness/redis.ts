/**
 * A private `redis-server` on 127.0.0.1 for BullMQ/ioredis tests, with its own temp dir.
 * No RDB snapshots; AOF on request (the Redis-restart fault test needs data to survive);
 * ACL users and TLS on request (the chart's per-role users, rediss:// with a test CA).
 */
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { type ManagedProcess, spawnProcess, waitUntil } from './process.js';
import { freePort, makeTempDir, removeTempDir } from './tmp.js';

export interface RedisOptions {
  /** `--appendonly yes` (AOF in the temp dir, so data survives `stop()`/`start()`). Default false. */
  appendonly?: boolean;
  /** Port on 127.0.0.1. Default: a free one. */
  port?: number;
  /** Readiness timeout. Default 20 s. */
  readyTimeoutMs?: number;
  /**
   * ACL users, each the tokens of one `user` directive as `redis-server --user` takes them
   * (`['alice', 'on', '>pw', '~k:*', '+get']`). Give `default` among them to restrict it;
   * the readiness PING then authenticates as `auth`.
   */
  users?: string[][];
  /** Who the readiness PING authenticates as (needed when `default` cannot PING). */
  auth?: { username: string; password: string };
  /**
   * TLS only (`--port 0 --tls-port <port>`): the server's certificate and key, and the CA
   * that client certificates must chain to (also what the readiness check trusts).
   * `clientCert` (+ `clientKey`) is what the readiness check presents when `authClients`
   * is `yes` (the default is `no`: no client certificate asked for).
   */
  tls?: {
    certFile: string;
    keyFile: string;
    caFile: string;
    authClients?: 'yes' | 'no' | 'optional';
    clientCert?: string;
    clientKey?: string;
  };
  /** More `redis-server` arguments, appended last. */
  extraArgs?: string[];
}

export interface RedisHandle {
  /** `127.0.0.1` */
  host: string;
  port: number;
  /** `redis://127.0.0.1:<port>` (`rediss://` with `tls`), no credentials. */
  url: string;
  /** `url` with `username:password@` (percent-encoded). */
  urlFor(username: string, password: string): string;
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
 * (plus `--user` directives and TLS when asked) and resolves once it answers `PING` with
 * `PONG` (not `-LOADING`), authenticated as `opts.auth` when given. Rejects with the log tail
 * when it does not come up.
 */
export async function startRedis(opts: RedisOptions = {}): Promise<RedisHandle> {
  const dir = await makeTempDir('redis');
  try {
    const port = opts.port ?? (await freePort());
    const logPath = join(dir, 'redis.log');
    const args = [
      ...(opts.tls
        ? [
            '--port',
            '0',
            '--tls-port',
            String(port),
            '--tls-cert-file',
            opts.tls.certFile,
            '--tls-key-file',
            opts.tls.keyFile,
            '--tls-ca-cert-file',
            opts.tls.caFile,
            '--tls-auth-clients',
            opts.tls.authClients ?? 'no',
          ]
        : ['--port', String(port)]),
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
      ...(opts.users ?? []).flatMap((u) => ['--user', ...u]),
      ...(opts.extraArgs ?? []),
    ];
    const probe = pingOptions(port, opts);
    let proc: ManagedProcess | undefined;
    const start = async (): Promise<void> => {
      if (proc?.running) return;
      proc = await spawnProcess({ name: `redis 127.0.0.1:${port}`, command: 'redis-server', args, logPath });
      await waitUntil(`PING on 127.0.0.1:${port}`, () => pingRedis(probe), {
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
    const scheme = opts.tls ? 'rediss' : 'redis';
    return {
      host: '127.0.0.1',
      port,
      url: `${scheme}://127.0.0.1:${port}`,
      urlFor: (username, password) =>
        `${scheme}://${encodeURIComponent(username)}:${encodeURIComponent(password)}@127.0.0.1:${port}`,
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

interface PingOptions {
  port: number;
  auth?: { username: string; password: string } | undefined;
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer } | undefined;
}

function pingOptions(port: number, opts: RedisOptions): PingOptions {
  const t = opts.tls;
  return {
    port,
    auth: opts.auth,
    tls: t
      ? {
          ca: readFileSync(t.caFile),
          ...(t.clientCert ? { cert: readFileSync(t.clientCert) } : {}),
          ...(t.clientKey ? { key: readFileSync(t.clientKey) } : {}),
        }
      : undefined,
  };
}

/** Encodes one command in RESP (credentials may hold any byte). */
function resp(args: string[]): string {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
}

/**
 * One `PING` (after `AUTH` when credentials are given, over TLS when asked); true on
 * `+PONG`, throws with the reply otherwise (e.g. `-LOADING`, `-WRONGPASS`).
 */
function pingRedis(o: PingOptions): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const sock: Socket = o.tls
      ? tlsConnect({ host: '127.0.0.1', port: o.port, servername: 'localhost', ...o.tls })
      : connect({ host: '127.0.0.1', port: o.port });
    const request = (o.auth ? resp(['AUTH', o.auth.username, o.auth.password]) : '') + resp(['PING']);
    const lines = o.auth ? 2 : 1;
    let reply = '';
    sock.setTimeout(2_000, () => sock.destroy(new Error('PING timeout')));
    sock.once(o.tls ? 'secureConnect' : 'connect', () => sock.write(request));
    sock.on('data', (d) => {
      reply += d.toString('latin1');
      const got = reply.split('\r\n').slice(0, -1);
      if (got.length < lines) return;
      sock.destroy();
      if (o.auth && got[0] !== '+OK') reject(new Error(`AUTH answered ${got[0]}`));
      else if (got[lines - 1]?.startsWith('+PONG')) resolve(true);
      else reject(new Error(`PING answered ${got[lines - 1]}`));
    });
    sock.once('error', reject);
    sock.once('close', () => reject(new Error('connection closed before PING reply')));
  });
}
