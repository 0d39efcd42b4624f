/**
 * The operator's and the webhook receiver's Redis connection: one function from the
 * configured URL and TLS files to ioredis options, so both binaries verify a `rediss://`
 * server the same way (the agent has its own, agent/src/daemon/redis-options.ts: the two
 * sides never import each other). Each binary connects as its own ACL user, the one in
 * its URL (docs/security.md, Redis).
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import type { RedisOptions } from 'ioredis';
import { ErrorCodes, PrewarmError } from '../../oci/src/errors.js';

/** PEM files for a `rediss://` connection; empty = not used. */
export interface RedisTlsFiles {
  /** CA bundle the server's certificate must chain to. Empty: Node's bundled CAs. */
  caFile: string;
  /** Client certificate, for a server with `tls-auth-clients`. */
  certFile: string;
  /** The client certificate's private key. */
  keyFile: string;
}

/**
 * ioredis options for `redis://[user:password@]host:port[/db]` or `rediss://…`, merged
 * over `extra` (the caller's retry and pipelining choices). With `rediss://` the server's
 * certificate is verified against `tls.caFile` (or Node's CAs) and the URL's host (never
 * skipped); `certFile`/`keyFile` are presented when set. Reads the files now: call at start.
 *
 * Throws PW_ERR_INVALID_CONFIG (naming the variables) when TLS files are set for a
 * `redis://` URL, a certificate comes without its key or the reverse, or a file cannot be
 * read.
 */
export function redisConnectionOptions(
  url: string,
  tls: RedisTlsFiles,
  extra: RedisOptions = {},
): RedisOptions {
  const u = new URL(url);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0;
  const anyTls = tls.caFile !== '' || tls.certFile !== '' || tls.keyFile !== '';
  if (u.protocol !== 'rediss:' && anyTls)
    throw invalidConfig(
      'KUBE_PREWARM_REDIS_TLS_* files are set but KUBE_PREWARM_REDIS_URL is not rediss://: the connection would not use TLS',
    );
  if ((tls.certFile === '') !== (tls.keyFile === ''))
    throw invalidConfig(
      'KUBE_PREWARM_REDIS_TLS_CERT_FILE and KUBE_PREWARM_REDIS_TLS_KEY_FILE go together: set both or neither',
    );
  let tlsOptions: ConnectionOptions | undefined;
  if (u.protocol === 'rediss:') {
    tlsOptions = {
      // An IP address is not a valid SNI name; its certificate is checked against the IP.
      ...(isIP(host) === 0 ? { servername: host } : {}),
      ...(tls.caFile ? { ca: readPem('KUBE_PREWARM_REDIS_TLS_CA_FILE', tls.caFile) } : {}),
      ...(tls.certFile ? { cert: readPem('KUBE_PREWARM_REDIS_TLS_CERT_FILE', tls.certFile) } : {}),
      ...(tls.keyFile ? { key: readPem('KUBE_PREWARM_REDIS_TLS_KEY_FILE', tls.keyFile) } : {}),
    };
  }
  return {
    ...extra,
    host,
    port: u.port ? Number(u.port) : 6379,
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(Number.isInteger(db) && db > 0 ? { db } : {}),
    ...(tlsOptions ? { tls: tlsOptions } : {}),
  };
}

function invalidConfig(message: string): PrewarmError {
  return new PrewarmError(ErrorCodes.INVALID_CONFIG, message);
}

function readPem(variable: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw invalidConfig(
      `${variable}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    );
  }
}
