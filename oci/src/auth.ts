import { readFile } from 'node:fs/promises';
import { ErrorCodes, PrewarmError } from './errors.js';

/** Credentials for one registry host. Never logged: `toJSON` hides them. */
export interface Credential {
  username?: string;
  password?: string;
  /** A refresh token (`identitytoken` in docker config), exchanged at the token endpoint. */
  identityToken?: string;
}

/** Looks up credentials by registry host (`host[:port]`). */
export interface CredentialProvider {
  get(host: string): Credential | undefined;
}

export class StaticCredentials implements CredentialProvider {
  readonly #byHost = new Map<string, Credential>();

  set(host: string, cred: Credential): this {
    this.#byHost.set(normaliseHost(host), cred);
    return this;
  }

  get(host: string): Credential | undefined {
    return this.#byHost.get(normaliseHost(host));
  }

  /** Merges another provider's entries (later wins). */
  merge(other: StaticCredentials): this {
    for (const [h, c] of other.#byHost) this.#byHost.set(h, c);
    return this;
  }

  get size(): number {
    return this.#byHost.size;
  }

  toJSON(): string {
    return `[${this.#byHost.size} credential(s) hidden]`;
  }
}

/** `https://index.docker.io/v1/` → `docker.io`; `https://host:5000/x` → `host:5000`. */
export function normaliseHost(key: string): string {
  let h = key.trim().replace(/^[a-z]+:\/\//i, '');
  h = h.split('/')[0] ?? h;
  h = h.toLowerCase();
  if (h === 'index.docker.io' || h === 'registry-1.docker.io' || h === 'registry.hub.docker.com')
    return 'docker.io';
  return h;
}

/**
 * Parses a Kubernetes `kubernetes.io/dockerconfigjson` secret's `.dockerconfigjson`
 * (or a `~/.docker/config.json`): `{auths: {host: {auth | username+password | identitytoken}}}`.
 * Throws PW_ERR_INVALID_CONFIG on malformed input, naming the host but never the secret.
 */
export function parseDockerConfig(json: string): StaticCredentials {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (err) {
    throw new PrewarmError(ErrorCodes.INVALID_CONFIG, 'docker config is not JSON', { cause: err });
  }
  const auths = (doc as { auths?: unknown } | null)?.auths;
  if (typeof auths !== 'object' || auths === null) {
    throw new PrewarmError(ErrorCodes.INVALID_CONFIG, 'docker config has no "auths" object');
  }
  const creds = new StaticCredentials();
  for (const [host, entry] of Object.entries(auths as Record<string, unknown>)) {
    if (typeof entry !== 'object' || entry === null) continue;
    const e = entry as Record<string, unknown>;
    const cred: Credential = {};
    if (typeof e.auth === 'string' && e.auth.length > 0) {
      const decoded = Buffer.from(e.auth, 'base64').toString('utf8');
      const i = decoded.indexOf(':');
      if (i < 0)
        throw new PrewarmError(
          ErrorCodes.INVALID_CONFIG,
          `docker config: auth for ${host} is not base64(user:password)`,
        );
      cred.username = decoded.slice(0, i);
      cred.password = decoded.slice(i + 1);
    }
    if (typeof e.username === 'string') cred.username = e.username;
    if (typeof e.password === 'string') cred.password = e.password;
    if (typeof e.identitytoken === 'string' && e.identitytoken.length > 0)
      cred.identityToken = e.identitytoken;
    creds.set(host, cred);
  }
  return creds;
}

export async function loadDockerConfigFile(path: string): Promise<StaticCredentials> {
  return parseDockerConfig(await readFile(path, 'utf8'));
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` (quoted or token values). */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const m = /^\s*([A-Za-z]+)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))/g;
  for (const p of (m[2] ?? '').matchAll(re)) {
    const key = p[1]?.toLowerCase();
    if (key) params[key] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
  }
  return { scheme: (m[1] ?? '').toLowerCase(), params };
}

export function basicHeader(cred: Credential): string {
  return `Basic ${Buffer.from(`${cred.username ?? ''}:${cred.password ?? ''}`).toString('base64')}`;
}
