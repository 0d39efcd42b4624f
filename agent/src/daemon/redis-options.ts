import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import type { RedisOptions } from 'ioredis';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';

/** PEM files for a `rediss://` connection; empty or absent = not used. */
export interface RedisTlsFiles {
  /**
   * CA bundle the server's certificate must chain to (`KUBE_PREWARM_REDIS_TLS_CA_FILE`).
   * Empty: Node's bundled CAs, which a private CA (the usual case for Redis) is not in.
   */
  caFile?: string;
  /** Client certificate, for a server with `tls-auth-clients` (`KUBE_PREWARM_REDIS_TLS_CERT_FILE`). */
  certFile?: string;
  /** The client certificate's private key (`KUBE_PREWARM_REDIS_TLS_KEY_FILE`). */
  keyFile?: string;
}

/**
 * ioredis options for a `redis://[user:password@]host:port[/db]` or `rediss://` URL,
 * as BullMQ needs them: `maxRetriesPerRequest: null` so a command waits through a
 * Redis restart instead of failing the job, and reconnects forever with a capped
 * backoff (a DaemonSet must outlive any Redis outage). The user is the agent's ACL user
 * (docs/security.md, Redis).
 *
 * With `rediss://` the server's certificate is verified against `tls.caFile` (or Node's
 * CAs) and the URL's host name (never skipped), and `tls.certFile`/`keyFile` are
 * presented when given. The files are read here, once: call at start.
 *
 * Throws PW_ERR_INVALID_CONFIG when TLS files are given for a `redis://` URL, a
 * certificate comes without its key (or the reverse), or a file cannot be read.
 */
export function redisOptionsFromUrl(url: string, tls: RedisTlsFiles = {}): RedisOptions {
  const u = new URL(url);
  const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0;
  const host = u.hostname.replace(/^\[|\]$/g, '');
  return {
    host,
    port: u.port ? Number(u.port) : 6379,
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(Number.isInteger(db) && db > 0 ? { db } : {}),
    ...(u.protocol === 'rediss:' ? { tls: redisTlsOptions(host, tls) } : checkNoTls(tls)),
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    retryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 10), 5_000),
  };
}

/**
 * `tls` options for ioredis (Node's `tls.connect`) to `host`: SNI only for names (an IP
 * address is not a valid SNI name; its certificate is checked against the IP), CA and
 * client certificate from the files. Same contract and errors as `redisOptionsFromUrl`.
 */
export function redisTlsOptions(host: string, files: RedisTlsFiles): ConnectionOptions {
  if (Boolean(files.certFile) !== Boolean(files.keyFile))
    throw new PrewarmError(
      ErrorCodes.INVALID_CONFIG,
      'KUBE_PREWARM_REDIS_TLS_CERT_FILE and KUBE_PREWARM_REDIS_TLS_KEY_FILE go together: set both or neither',
    );
  return {
    ...(isIP(host) === 0 ? { servername: host } : {}),
    ...(files.caFile ? { ca: readPem('KUBE_PREWARM_REDIS_TLS_CA_FILE', files.caFile) } : {}),
    ...(files.certFile ? { cert: readPem('KUBE_PREWARM_REDIS_TLS_CERT_FILE', files.certFile) } : {}),
    ...(files.keyFile ? { key: readPem('KUBE_PREWARM_REDIS_TLS_KEY_FILE', files.keyFile) } : {}),
  };
}

function checkNoTls(files: RedisTlsFiles): Record<string, never> {
  if (files.caFile || files.certFile || files.keyFile)
    throw new PrewarmError(
      ErrorCodes.INVALID_CONFIG,
      'KUBE_PREWARM_REDIS_TLS_* files are set but KUBE_PREWARM_REDIS_URL is not rediss://: the connection would not use TLS',
    );
  return {};
}

function readPem(variable: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new PrewarmError(
      ErrorCodes.INVALID_CONFIG,
      `${variable}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      { cause: err },
    );
  }
}
