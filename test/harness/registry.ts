/**
 * A real OCI registry for integration tests: Debian's `docker-registry` (CNCF distribution
 * 2.8) with a config of its own, its own temp storage, on 127.0.0.1.
 *
 * Layout of the temp dir: `storage/` (the filesystem driver's root, `rootDir`),
 * `config.yml`, `registry.log`, and `htpasswd` when basic auth is on. The dir survives
 * `stop()`/`kill()` so `start()` can bring the same registry back on the same port with the
 * same content; `close()` stops it and removes the dir.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { type ManagedProcess, spawnProcess, waitForHttp } from './process.js';
import { freePort, makeTempDir, removeTempDir } from './tmp.js';
import type { TokenServerHandle } from './token-server.js';

const execFileP = promisify(execFile);

/** Username and password, as used for htpasswd auth and skopeo's `--creds`. */
export interface Credentials {
  username: string;
  password: string;
}

/** Registry authentication: none (omit), htpasswd basic auth, or bearer tokens from a token server. */
export type RegistryAuth = { htpasswd: Credentials } | { token: TokenServerHandle };

export interface RegistryNotifications {
  /** Where the registry POSTs its event envelopes. */
  url: string;
  /** Extra headers on every notification, e.g. `{ Authorization: 'Bearer x' }`. */
  headers?: Record<string, string | readonly string[]>;
  /** Endpoint name in the config. Default `kube-prewarm-test`. */
  name?: string;
}

export interface RegistryOptions {
  auth?: RegistryAuth;
  notifications?: RegistryNotifications;
  /** Port to listen on (127.0.0.1). Default: a free port. */
  port?: number;
  /** distribution's log level. Default `info` (access log on: one line per request). */
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** Readiness timeout for start and restart. Default 20 s. */
  readyTimeoutMs?: number;
}

export interface RegistryHandle {
  /** `127.0.0.1:<port>`, as used in image references. */
  readonly host: string;
  readonly port: number;
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** The storage driver's root directory. */
  readonly rootDir: string;
  readonly configPath: string;
  readonly logPath: string;
  /** The htpasswd user, when `auth.htpasswd` was given (convenient default for pushes). */
  readonly credentials: Credentials | undefined;
  /** The running process; undefined while stopped. */
  readonly process: ManagedProcess | undefined;
  /** SIGTERM (SIGKILL after 5 s). The storage stays. No-op when stopped. */
  stop(): Promise<void>;
  /** Starts it again, same port, config and storage; resolves when /v2/ answers. No-op when running. */
  start(): Promise<void>;
  /** SIGKILL, to simulate a crash. The storage stays. */
  kill(): Promise<void>;
  /** Stops it and removes its temp dir (storage included). */
  close(): Promise<void>;
  /**
   * Path of a blob's data file in the storage (`docker/registry/v2/blobs/sha256/<2>/<64>/data`),
   * e.g. to corrupt or truncate it. The registry serves the file as it is on disk.
   */
  blobDataPath(digest: string): string;
}

/**
 * Starts `docker-registry serve <config.yml>` on 127.0.0.1 and resolves once `GET /v2/`
 * answers (200, or 401 with auth). Rejects with the log tail if it does not come up.
 */
export async function startRegistry(opts: RegistryOptions = {}): Promise<RegistryHandle> {
  const dir = await makeTempDir('registry');
  try {
    const port = opts.port ?? (await freePort());
    const rootDir = join(dir, 'storage');
    const configPath = join(dir, 'config.yml');
    const logPath = join(dir, 'registry.log');

    const config: Record<string, unknown> = {
      version: '0.1',
      log: { level: opts.logLevel ?? 'info', formatter: 'text', accesslog: { disabled: false } },
      storage: {
        filesystem: { rootdirectory: rootDir },
        delete: { enabled: true },
        // The upload purger would scan the storage on start; nothing to purge in a test.
        maintenance: { uploadpurging: { enabled: false } },
      },
      http: {
        addr: `127.0.0.1:${port}`,
        // Without a secret distribution logs a warning and makes a random one per start,
        // which would invalidate in-flight upload state across a restart.
        secret: randomBytes(16).toString('hex'),
      },
    };

    let credentials: Credentials | undefined;
    if (opts.auth && 'htpasswd' in opts.auth) {
      credentials = opts.auth.htpasswd;
      const htpasswdPath = join(dir, 'htpasswd');
      // distribution 2.8 only accepts bcrypt entries.
      const { stdout } = await execFileP('htpasswd', ['-Bbn', credentials.username, credentials.password]);
      await writeFile(htpasswdPath, stdout.trim() + '\n');
      config.auth = { htpasswd: { realm: 'kube-prewarm-test', path: htpasswdPath } };
    } else if (opts.auth && 'token' in opts.auth) {
      const t = opts.auth.token;
      config.auth = {
        token: { realm: t.realm, service: t.service, issuer: t.issuer, rootcertbundle: t.certPath },
      };
    }

    if (opts.notifications) {
      const n = opts.notifications;
      const headers: Record<string, string[]> = {};
      for (const [k, v] of Object.entries(n.headers ?? {})) headers[k] = typeof v === 'string' ? [v] : [...v];
      config.notifications = {
        endpoints: [
          {
            name: n.name ?? 'kube-prewarm-test',
            url: n.url,
            headers,
            timeout: '2s',
            threshold: 3,
            backoff: '1s',
            // Layer pushes would otherwise also send events (blob mounts/pushes).
            ignoredmediatypes: ['application/octet-stream'],
          },
        ],
      };
    }
    await writeFile(configPath, stringify(config));

    // REGISTRY_* variables override the config file; keep the caller's out of it.
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('REGISTRY_')) env[k] = v;

    const readyTimeoutMs = opts.readyTimeoutMs ?? 20_000;
    const url = `http://127.0.0.1:${port}`;
    let proc: ManagedProcess | undefined;

    const start = async (): Promise<void> => {
      if (proc?.running) return;
      proc = await spawnProcess({
        name: `registry ${url}`,
        command: 'docker-registry',
        args: ['serve', configPath],
        logPath,
        env,
      });
      await waitForHttp(`${url}/v2/`, {
        process: proc,
        timeoutMs: readyTimeoutMs,
        ready: (s) => s === 200 || s === 401,
      });
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
      host: `127.0.0.1:${port}`,
      port,
      url,
      rootDir,
      configPath,
      logPath,
      credentials,
      get process() {
        return proc;
      },
      stop,
      start,
      async kill() {
        await proc?.kill();
        proc = undefined;
      },
      async close() {
        await stop();
        await removeTempDir(dir);
      },
      blobDataPath(digest: string): string {
        const m = /^sha256:([a-f0-9]{64})$/.exec(digest);
        if (!m) throw new Error(`blobDataPath: not a sha256 digest: ${digest}`);
        const hex = m[1]!;
        return join(rootDir, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
      },
    };
  } catch (err) {
    await removeTempDir(dir);
    throw err;
  }
}
