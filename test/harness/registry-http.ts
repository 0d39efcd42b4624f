/**
 * A deliberately small registry HTTP client for the harness and for test assertions.
 *
 * Independent of oci/src on purpose: the harness checks what the registry really holds,
 * and must not share bugs with the client under test. It does the two auth flows the
 * harness registries use (Basic for htpasswd, Bearer via the token realm) per request,
 * with no token cache, and never follows redirects.
 */
import { createHash } from 'node:crypto';
import type { Credentials } from './registry.js';

/** Every manifest media type, for `Accept`. */
export const ALL_MANIFEST_TYPES = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

/** Where to send requests: a registry handle, a fault proxy handle, or just `{ url }`. */
export interface RegistryEndpoint {
  /** `http://127.0.0.1:<port>` */
  url: string;
  /** Used when `creds` is not given per call (a registry handle with htpasswd has them). */
  credentials?: Credentials | undefined;
}

export interface RegistryFetchOptions {
  method?: string;
  headers?: Record<string, string>;
  /** Default: `endpoint.credentials`; `null` forces anonymous. */
  creds?: Credentials | null;
  /**
   * Token scope when the registry asks for a bearer token. Default: the challenge's `scope`,
   * else `repository:<name>:pull` derived from a `/v2/<name>/(manifests|blobs|tags)/` path.
   */
  scope?: string;
}

/**
 * `fetch(endpoint.url + path)` that answers a 401 challenge once: Basic → resend with
 * credentials; Bearer → get a token from the realm (with Basic credentials if any) and resend.
 * Returns the final response (which may still be 401/403: tests assert on it). Throws when the
 * token endpoint refuses, with its status in the message.
 */
export async function registryFetch(
  endpoint: RegistryEndpoint,
  path: string,
  opts: RegistryFetchOptions = {},
): Promise<Response> {
  const creds = opts.creds === null ? undefined : (opts.creds ?? endpoint.credentials);
  const init = (auth?: string): RequestInit => ({
    method: opts.method ?? 'GET',
    redirect: 'manual',
    headers: { ...opts.headers, ...(auth ? { Authorization: auth } : {}) },
  });
  const url = endpoint.url + path;
  const first = await fetch(url, init());
  if (first.status !== 401) return first;
  const challenge = first.headers.get('www-authenticate') ?? '';
  await first.body?.cancel();
  const basic = creds
    ? `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`
    : undefined;
  if (/^basic/i.test(challenge)) {
    return basic ? fetch(url, init(basic)) : fetch(url, init());
  }
  if (!/^bearer/i.test(challenge)) return fetch(url, init());
  const params = parseChallengeParams(challenge);
  const realm = params.realm;
  if (!realm) throw new Error(`registryFetch: bearer challenge without realm: ${challenge}`);
  const tokenUrl = new URL(realm);
  if (params.service) tokenUrl.searchParams.set('service', params.service);
  const scope = opts.scope ?? params.scope ?? scopeFromPath(path);
  if (scope) tokenUrl.searchParams.set('scope', scope);
  const tr = await fetch(tokenUrl, { headers: basic ? { Authorization: basic } : {} });
  if (tr.status !== 200) {
    const text = await tr.text();
    throw new Error(`registryFetch: token endpoint answered ${tr.status}: ${text.slice(0, 200)}`);
  }
  const body = (await tr.json()) as { token?: string; access_token?: string };
  const token = body.token ?? body.access_token;
  if (!token) throw new Error('registryFetch: token endpoint answered no token');
  return fetch(url, init(`Bearer ${token}`));
}

/** A manifest as stored in the registry. */
export interface StoredManifest {
  /** `Docker-Content-Digest`, checked against the body's SHA-256. */
  digest: string;
  /** `Content-Type` as the registry answered it. */
  mediaType: string;
  size: number;
  bytes: Buffer;
  json: Record<string, unknown>;
}

/**
 * GETs a manifest by tag or digest (all manifest types accepted). Throws on a non-200
 * answer, and when the body's SHA-256 differs from `Docker-Content-Digest` or, for a digest
 * reference, from the digest asked for.
 */
export async function getManifest(
  endpoint: RegistryEndpoint,
  repository: string,
  reference: string,
  opts: Omit<RegistryFetchOptions, 'method'> = {},
): Promise<StoredManifest> {
  const res = await registryFetch(endpoint, `/v2/${repository}/manifests/${reference}`, {
    ...opts,
    headers: { Accept: ALL_MANIFEST_TYPES, ...opts.headers },
  });
  const bytes = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) {
    throw new Error(
      `GET manifest ${repository}:${reference}: ${res.status} ${bytes.toString('utf8').slice(0, 300)}`,
    );
  }
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  const header = res.headers.get('docker-content-digest');
  if (header !== digest)
    throw new Error(`GET manifest ${repository}:${reference}: body is ${digest}, header ${header}`);
  if (reference.startsWith('sha256:') && reference !== digest) {
    throw new Error(`GET manifest ${repository}@${reference}: body hashes to ${digest}`);
  }
  return {
    digest,
    mediaType: res.headers.get('content-type') ?? '',
    size: bytes.length,
    bytes,
    json: JSON.parse(bytes.toString('utf8')) as Record<string, unknown>,
  };
}

/**
 * HEADs a blob; returns its size (Content-Length) or throws when it is not 200 or the
 * registry's `Docker-Content-Digest` names another blob.
 */
export async function headBlob(
  endpoint: RegistryEndpoint,
  repository: string,
  digest: string,
  opts: Omit<RegistryFetchOptions, 'method'> = {},
): Promise<number> {
  const res = await registryFetch(endpoint, `/v2/${repository}/blobs/${digest}`, { ...opts, method: 'HEAD' });
  await res.body?.cancel();
  if (res.status !== 200) throw new Error(`HEAD blob ${repository}@${digest}: ${res.status}`);
  const header = res.headers.get('docker-content-digest');
  if (header !== null && header !== digest)
    throw new Error(`HEAD blob ${repository}@${digest}: registry says ${header}`);
  return Number(res.headers.get('content-length'));
}

/** GETs a whole blob into memory and checks its digest. For small blobs (configs, test layers). */
export async function getBlob(
  endpoint: RegistryEndpoint,
  repository: string,
  digest: string,
  opts: Omit<RegistryFetchOptions, 'method'> = {},
): Promise<Buffer> {
  const res = await registryFetch(endpoint, `/v2/${repository}/blobs/${digest}`, opts);
  const bytes = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) throw new Error(`GET blob ${repository}@${digest}: ${res.status}`);
  const actual = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  if (actual !== digest) throw new Error(`GET blob ${repository}@${digest}: body hashes to ${actual}`);
  return bytes;
}

/** `key="value"` pairs of a WWW-Authenticate header (after the scheme). */
export function parseChallengeParams(header: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /([a-zA-Z_]+)="([^"]*)"/g;
  for (let m = re.exec(header); m !== null; m = re.exec(header)) out[m[1]!.toLowerCase()] = m[2]!;
  return out;
}

function scopeFromPath(path: string): string | undefined {
  const m = /^\/v2\/(.+?)\/(?:manifests|blobs|tags)\//.exec(path);
  return m ? `repository:${m[1]}:pull` : undefined;
}
