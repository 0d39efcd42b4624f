import type { IncomingHttpHeaders } from 'node:http';
import { Agent, type Dispatcher, request } from 'undici';
import { basicHeader, type Challenge, type CredentialProvider, parseChallenge } from './auth.js';
import { type Digest, isDigest, sha256 } from './digest.js';
import { EgressPolicy, type FollowKind } from './egress-policy.js';
import { type ErrorCode, ErrorCodes, PrewarmError } from './errors.js';
import {
  type ImageManifest,
  MAX_MANIFEST_BYTES,
  type Manifest,
  parseManifest,
  selectPlatform,
} from './manifest.js';
import { MANIFEST_ACCEPT } from './media-types.js';
import type { Platform } from './platform.js';
import { type ImageReference, manifestReference, registryEndpointHost } from './reference.js';
import { parseRetryAfter, type RetryOptions, withRetry } from './retry.js';

export interface RegistryClientOptions {
  /** Where credentials come from (dockerconfigjson, static). Default: anonymous only. */
  credentials?: CredentialProvider;
  /**
   * Where requests may go (oci/src/egress-policy.ts): the registries allowed, plain HTTP,
   * and the address check when connecting. Default: unrestricted (`EgressPolicy.permissive`,
   * what the CLI uses); every component (agent, mirror, operator) passes its configured
   * policy. Redirects and token realms are checked against it either way.
   */
  egress?: EgressPolicy;
  /**
   * Whether to talk plain HTTP to a host. Default: loopback hosts only. With `egress`, a
   * host is spoken to over HTTP only when the policy allows it (and this, when given, agrees).
   */
  plainHttp?: (host: string) => boolean;
  /**
   * undici dispatcher; default an Agent with keep-alive, unlimited connections per origin
   * and `egress.connector()`. A dispatcher passed here must be built with
   * `egress.connector()` too, or connections are not checked by address.
   */
  dispatcher?: Dispatcher;
  /** Retry policy for manifest and HEAD requests (blob chunks are retried by the fetcher). */
  retry?: RetryOptions;
  /** Time allowed to receive response headers. Default 30 s. */
  headersTimeoutMs?: number;
  /** Largest gap between two body chunks before the request fails. Default 60 s. */
  bodyTimeoutMs?: number;
  /** Redirects followed per request. Default 5. */
  maxRedirects?: number;
  userAgent?: string;
}

/** A manifest as fetched: its verified digest, raw bytes and parsed form. */
export interface FetchedManifest {
  digest: Digest;
  mediaType: string;
  bytes: Buffer;
  manifest: Manifest;
}

export interface ResolvedImage {
  /** The digest the tag pointed at (an index's digest for multi-arch images). */
  digest: Digest;
  /** The index, when the reference resolved to one. */
  index?: FetchedManifest;
  /** The platform-specific image manifest. */
  image: FetchedManifest & { manifest: ImageManifest };
}

export interface BlobRequest {
  registry: string;
  repository: string;
  digest: Digest;
  /** Inclusive byte range. Omitted: the whole blob. */
  range?: { start: number; end: number };
  signal?: AbortSignal;
  method?: 'GET' | 'HEAD';
  /** Send a downstream client's authorization instead of this client's credentials. */
  forward?: ForwardedAuth;
}

/**
 * A request made on behalf of someone else (the mirror's client, containerd): exactly this
 * `Authorization` header goes to the registry's origin (none when undefined), and this
 * client's own credentials and tokens are never used. A 401 is not answered by fetching a
 * token: it comes back as PW_ERR_AUTH_DENIED with the registry's challenge in
 * `detail.challenge`, for the caller to pass on.
 */
export interface ForwardedAuth {
  authorization: string | undefined;
}

export interface BlobResponse {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: Dispatcher.ResponseData['body'];
}

interface TokenEntry {
  token: string;
  expiresAt: number;
}

interface SendOptions {
  host: string;
  repository: string;
  path: string;
  method: 'GET' | 'HEAD';
  /** What is asked for: decides which redirects may be followed (see `EgressPolicy.assertFollow`). */
  kind: 'manifest' | 'blob';
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  forward?: ForwardedAuth | undefined;
}

const LOOPBACK_RE = /^(?:localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])(?::\d+)?$/;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const RETRYABLE_STATUS = new Set([408, 425, 429, 500, 502, 503, 504]);
const NETWORK_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
]);

export function isLoopbackHost(host: string): boolean {
  return LOOPBACK_RE.test(host);
}

/** Maps an error thrown by undici or a stream to a PrewarmError (network faults are retryable). */
export function toNetworkError(err: unknown, what: string): PrewarmError {
  if (err instanceof PrewarmError) return err;
  const e = err as { code?: string; name?: string; message?: string; cause?: { code?: string } };
  if (e?.name === 'AbortError' || e?.code === 'UND_ERR_ABORTED' || e?.code === 'ABORT_ERR') {
    return new PrewarmError(ErrorCodes.ABORTED, `${what}: aborted`, { cause: err });
  }
  const code = e?.code ?? e?.cause?.code;
  const retryable = code === undefined || NETWORK_ERROR_CODES.has(code) || e?.name === 'SocketError';
  return new PrewarmError(ErrorCodes.NETWORK, `${what}: ${code ?? e?.message ?? 'network error'}`, {
    cause: err,
    retryable,
  });
}

/**
 * An OCI distribution client over undici: bearer/basic auth with a per-scope token
 * cache, redirects that never carry the registry's Authorization to another origin,
 * manifest digest verification and size caps, and typed errors with retry hints. Every
 * request obeys the egress policy: registries not allowed, redirects and token realms that
 * may not be followed, and connections to special addresses fail with
 * PW_ERR_EGRESS_DENIED before anything is sent.
 */
export class RegistryClient {
  readonly #opts: RegistryClientOptions;
  readonly #egress: EgressPolicy;
  readonly #dispatcher: Dispatcher;
  readonly #ownsDispatcher: boolean;
  /** host → last challenge, so later requests authenticate without a 401 round trip. */
  readonly #challenges = new Map<string, Challenge>();
  readonly #tokens = new Map<string, TokenEntry>();
  readonly #tokenFlights = new Map<string, Promise<TokenEntry>>();

  constructor(opts: RegistryClientOptions = {}) {
    this.#opts = opts;
    this.#egress = opts.egress ?? EgressPolicy.permissive(opts.plainHttp);
    this.#ownsDispatcher = opts.dispatcher === undefined;
    this.#dispatcher =
      opts.dispatcher ??
      new Agent({
        keepAliveTimeout: 30_000,
        connections: null,
        pipelining: 1,
        connect: this.#egress.connector({ timeout: 10_000 }),
      });
  }

  /** The egress policy every request of this client obeys. */
  get egress(): EgressPolicy {
    return this.#egress;
  }

  async close(): Promise<void> {
    if (this.#ownsDispatcher) await this.#dispatcher.close();
  }

  /** Base URL for a registry name (`docker.io` → `https://registry-1.docker.io`). */
  baseUrl(registry: string): string {
    const host = registryEndpointHost(registry);
    const plain =
      this.#opts.egress === undefined
        ? this.#egress.plainHttp(host)
        : this.#egress.plainHttp(host) && (this.#opts.plainHttp?.(host) ?? true);
    return `${plain ? 'http' : 'https'}://${host}`;
  }

  /**
   * Resolves a tag to a manifest digest with HEAD (`Docker-Content-Digest`), falling back
   * to GET and hashing when the registry sends no digest header. A digest reference
   * resolves to itself without a request.
   */
  async resolve(
    ref: ImageReference,
    signal?: AbortSignal,
    forward?: ForwardedAuth,
  ): Promise<{ digest: Digest; mediaType?: string; size?: number }> {
    if (ref.digest) return { digest: ref.digest };
    const reference = manifestReference(ref);
    const head = await this.headManifest(ref, reference, signal, forward);
    if (head) return head;
    const got = await this.fetchManifest(ref, reference, signal, forward);
    return { digest: got.digest, mediaType: got.mediaType, size: got.bytes.byteLength };
  }

  /**
   * HEADs a manifest (tag or digest): what the registry says about it without the body.
   * Undefined when the registry gives no usable answer to HEAD (405, 400, no
   * `Docker-Content-Digest`): GET it instead. Throws like `fetchManifest` (404 →
   * PW_ERR_MANIFEST_UNKNOWN, 401/403 → PW_ERR_AUTH_DENIED, …).
   */
  async headManifest(
    ref: ImageReference,
    reference = manifestReference(ref),
    signal?: AbortSignal,
    forward?: ForwardedAuth,
  ): Promise<{ digest: Digest; mediaType?: string; size?: number } | undefined> {
    return withRetry(
      async () => {
        const res = await this.#send({
          host: ref.registry,
          repository: ref.repository,
          path: `/v2/${ref.repository}/manifests/${reference}`,
          method: 'HEAD',
          kind: 'manifest',
          headers: { accept: MANIFEST_ACCEPT },
          signal,
          forward,
        });
        await res.body.dump();
        if (res.statusCode === 405 || res.statusCode === 400) return undefined;
        if (res.statusCode !== 200)
          throw await this.#statusError(res, ErrorCodes.MANIFEST_UNKNOWN, `HEAD manifest ${reference}`);
        const dcd = header(res.headers, 'docker-content-digest');
        if (!isDigest(dcd)) return undefined;
        const size = Number(header(res.headers, 'content-length'));
        return {
          digest: dcd,
          ...(header(res.headers, 'content-type') ? { mediaType: header(res.headers, 'content-type') } : {}),
          ...(Number.isSafeInteger(size) ? { size } : {}),
        };
      },
      this.#opts.retry,
      signal,
    );
  }

  /**
   * GETs a manifest by tag or digest. The body is capped at 4 MiB and hashed; when
   * fetched by digest (or when the registry sent `Docker-Content-Digest`) the hash must
   * match, else PW_ERR_DIGEST_MISMATCH.
   */
  async fetchManifest(
    ref: ImageReference,
    reference = manifestReference(ref),
    signal?: AbortSignal,
    forward?: ForwardedAuth,
  ): Promise<FetchedManifest> {
    return withRetry(
      async () => {
        const res = await this.#send({
          host: ref.registry,
          repository: ref.repository,
          path: `/v2/${ref.repository}/manifests/${reference}`,
          method: 'GET',
          kind: 'manifest',
          headers: { accept: MANIFEST_ACCEPT },
          signal,
          forward,
        });
        if (res.statusCode !== 200)
          throw await this.#statusError(res, ErrorCodes.MANIFEST_UNKNOWN, `GET manifest ${reference}`);
        const declared = Number(header(res.headers, 'content-length'));
        if (Number.isFinite(declared) && declared > MAX_MANIFEST_BYTES) {
          res.body.destroy();
          throw new PrewarmError(
            ErrorCodes.MANIFEST_TOO_LARGE,
            `manifest ${reference} is ${declared} bytes, limit ${MAX_MANIFEST_BYTES}`,
          );
        }
        const bytes = await readCapped(res.body, MAX_MANIFEST_BYTES, `manifest ${reference}`);
        const digest = sha256(bytes);
        const expected = isDigest(reference) ? reference : header(res.headers, 'docker-content-digest');
        if (isDigest(expected) && expected !== digest) {
          throw new PrewarmError(
            ErrorCodes.DIGEST_MISMATCH,
            `manifest ${reference}: expected ${expected}, got ${digest}`,
            {
              detail: { expected, actual: digest },
            },
          );
        }
        const contentType = header(res.headers, 'content-type');
        const manifest = parseManifest(bytes, contentType);
        return { digest, mediaType: manifest.mediaType, bytes, manifest };
      },
      this.#opts.retry,
      signal,
    );
  }

  /**
   * Resolves a reference to the image manifest for `platform`: follows an index to the
   * matching entry (skipping attestations) and verifies both digests.
   */
  async resolveImage(ref: ImageReference, platform: Platform, signal?: AbortSignal): Promise<ResolvedImage> {
    const top = await this.fetchManifest(ref, manifestReference(ref), signal);
    if (top.manifest.kind === 'manifest') {
      return { digest: top.digest, image: top as ResolvedImage['image'] };
    }
    const chosen = selectPlatform(top.manifest, platform);
    const image = await this.fetchManifest(ref, chosen.digest, signal);
    if (image.manifest.kind !== 'manifest') {
      throw new PrewarmError(ErrorCodes.MANIFEST_INVALID, `index entry ${chosen.digest} is itself an index`);
    }
    return { digest: top.digest, index: top, image: image as ResolvedImage['image'] };
  }

  /**
   * Opens a blob (optionally a byte range). Returns 200 or 206 responses with the body
   * unread; any other status becomes a PrewarmError (404 → PW_ERR_BLOB_UNKNOWN,
   * 416 → PW_ERR_REGISTRY, 429/5xx retryable with `detail.retryAfterMs`). The caller
   * must consume or destroy the body.
   */
  async blob(req: BlobRequest): Promise<BlobResponse> {
    const headers: Record<string, string> = {};
    if (req.range) headers.range = `bytes=${req.range.start}-${req.range.end}`;
    const res = await this.#send({
      host: req.registry,
      repository: req.repository,
      path: `/v2/${req.repository}/blobs/${req.digest}`,
      method: req.method ?? 'GET',
      kind: 'blob',
      headers,
      signal: req.signal,
      forward: req.forward,
    });
    if (res.statusCode === 200 || res.statusCode === 206) return res;
    throw await this.#statusError(res, ErrorCodes.BLOB_UNKNOWN, `blob ${req.digest}`);
  }

  async #send(o: SendOptions): Promise<Dispatcher.ResponseData> {
    this.#egress.assertRegistry(o.host);
    const base = this.baseUrl(o.host);
    const baseUrl = new URL(base);
    const registryOrigin = baseUrl.origin;
    let url = new URL(o.path, base);
    let authRetried = false;
    const maxRedirects = this.#opts.maxRedirects ?? 5;
    const follow: FollowKind = o.kind === 'manifest' ? 'manifest-redirect' : 'blob-redirect';
    for (let hop = 0; ; ) {
      const headers: Record<string, string> = {
        'user-agent': this.#opts.userAgent ?? 'kube-prewarm/0.1',
        ...o.headers,
      };
      // Credentials go only to the registry's own origin, never to a redirect target
      // (S3/GCS/Azure presigned URLs carry their own authorization in the query).
      if (url.origin === registryOrigin) {
        if (o.forward) {
          if (o.forward.authorization) headers.authorization = o.forward.authorization;
        } else {
          const auth = await this.#authorization(o.host, o.repository, o.signal);
          if (auth) headers.authorization = auth;
        }
      }
      let res: Dispatcher.ResponseData;
      try {
        res = await request(url, {
          method: o.method,
          headers,
          dispatcher: this.#dispatcher,
          signal: o.signal,
          headersTimeout: this.#opts.headersTimeoutMs ?? 30_000,
          bodyTimeout: this.#opts.bodyTimeoutMs ?? 60_000,
        });
      } catch (err) {
        throw toNetworkError(err, `${o.method} ${redact(url)}`);
      }
      if (REDIRECTS.has(res.statusCode)) {
        const location = header(res.headers, 'location');
        await res.body.dump();
        if (!location)
          throw new PrewarmError(ErrorCodes.REGISTRY_ERROR, `redirect without Location from ${redact(url)}`);
        if (++hop > maxRedirects) {
          throw new PrewarmError(
            ErrorCodes.TOO_MANY_REDIRECTS,
            `more than ${maxRedirects} redirects for ${o.path}`,
          );
        }
        let next: URL;
        try {
          next = new URL(location, url);
        } catch {
          throw new PrewarmError(ErrorCodes.REGISTRY_ERROR, `unusable redirect Location from ${redact(url)}`);
        }
        this.#egress.assertFollow(baseUrl, next, follow);
        url = next;
        continue;
      }
      if (res.statusCode === 401 && url.origin === registryOrigin && !authRetried && !o.forward) {
        const challenge = parseChallenge(header(res.headers, 'www-authenticate'));
        await res.body.dump();
        if (challenge && (challenge.scheme === 'bearer' || challenge.scheme === 'basic')) {
          this.#challenges.set(o.host, challenge);
          this.#dropTokens(o.host, o.repository);
          authRetried = true;
          url = new URL(o.path, base);
          continue;
        }
        throw new PrewarmError(ErrorCodes.AUTH_DENIED, `${o.host}: 401 without a usable challenge`, {
          status: 401,
        });
      }
      return res;
    }
  }

  /** The Authorization header for (host, repository), fetching a token if needed. */
  async #authorization(host: string, repository: string, signal?: AbortSignal): Promise<string | undefined> {
    const challenge = this.#challenges.get(host);
    if (!challenge) return undefined;
    const cred = this.#opts.credentials?.get(host);
    if (challenge.scheme === 'basic') {
      if (!cred?.username && !cred?.password) {
        throw new PrewarmError(
          ErrorCodes.AUTH_DENIED,
          `${host} requires credentials and none are configured`,
          { status: 401 },
        );
      }
      return basicHeader(cred);
    }
    const key = this.#tokenKey(host, repository);
    const cached = this.#tokens.get(key);
    if (cached && cached.expiresAt > Date.now()) return `Bearer ${cached.token}`;
    let flight = this.#tokenFlights.get(key);
    if (!flight) {
      flight = this.#fetchToken(host, repository, challenge, signal).finally(() =>
        this.#tokenFlights.delete(key),
      );
      this.#tokenFlights.set(key, flight);
    }
    const entry = await flight;
    this.#tokens.set(key, entry);
    return `Bearer ${entry.token}`;
  }

  #tokenKey(host: string, repository: string): string {
    return `${host}|repository:${repository}:pull`;
  }

  #dropTokens(host: string, repository: string): void {
    this.#tokens.delete(this.#tokenKey(host, repository));
  }

  async #fetchToken(
    host: string,
    repository: string,
    challenge: Challenge,
    signal?: AbortSignal,
  ): Promise<TokenEntry> {
    const realm = challenge.params.realm;
    if (!realm) throw new PrewarmError(ErrorCodes.AUTH_FAILED, `${host}: bearer challenge without realm`);
    let tokenUrl: URL;
    try {
      tokenUrl = new URL(realm);
    } catch (err) {
      throw new PrewarmError(ErrorCodes.AUTH_FAILED, `${host}: bearer realm is not a URL`, { cause: err });
    }
    if (tokenUrl.protocol !== 'https:' && tokenUrl.protocol !== 'http:') {
      throw new PrewarmError(ErrorCodes.AUTH_FAILED, `${host}: bearer realm must be http(s)`);
    }
    // The realm is named by the registry: it may not send us (and the credentials) to an
    // internal address or off TLS, any more than a redirect may.
    const registryUrl = new URL(this.baseUrl(host));
    this.#egress.assertFollow(registryUrl, tokenUrl, 'token-realm');
    if (challenge.params.service) tokenUrl.searchParams.set('service', challenge.params.service);
    tokenUrl.searchParams.set('scope', `repository:${repository}:pull`);
    const cred = this.#opts.credentials?.get(host);
    if (
      (cred?.username || cred?.password || cred?.identityToken) &&
      cleartextElsewhere(registryUrl, tokenUrl, this.#egress)
    ) {
      // Whoever can answer (or rewrite) the registry's challenge names the realm: credentials
      // in the clear to an origin nobody configured would hand them to that party, and to
      // everyone on the path. Refuse before anything is sent.
      throw new PrewarmError(
        ErrorCodes.AUTH_FAILED,
        `${host}: credentials not sent: the bearer realm ${tokenUrl.origin} is plain HTTP on another origin than the registry (configure that host for plain HTTP to allow it)`,
        { detail: { permanent: true } },
      );
    }
    const headers: Record<string, string> = { 'user-agent': this.#opts.userAgent ?? 'kube-prewarm/0.1' };
    if (cred?.identityToken) {
      // Refresh tokens are exchanged with a POST (OAuth2 grant), per the distribution token spec.
      return this.#postRefreshToken(
        tokenUrl,
        cred.identityToken,
        challenge.params.service ?? '',
        repository,
        signal,
      );
    }
    if (cred?.username || cred?.password) headers.authorization = basicHeader(cred);
    return withRetry(
      async () => {
        let res: Dispatcher.ResponseData;
        try {
          res = await request(tokenUrl, {
            method: 'GET',
            headers,
            dispatcher: this.#dispatcher,
            signal,
            headersTimeout: 30_000,
          });
        } catch (err) {
          throw toNetworkError(err, `token request to ${tokenUrl.origin}`);
        }
        return this.#readToken(res, host);
      },
      this.#opts.retry,
      signal,
    );
  }

  async #postRefreshToken(
    url: URL,
    refresh: string,
    service: string,
    repository: string,
    signal?: AbortSignal,
  ): Promise<TokenEntry> {
    const form = new URLSearchParams({
      grant_type: 'refresh_token',
      refresh_token: refresh,
      service,
      scope: `repository:${repository}:pull`,
      client_id: 'kube-prewarm',
    });
    let res: Dispatcher.ResponseData;
    try {
      res = await request(new URL(url.pathname, url), {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: form.toString(),
        dispatcher: this.#dispatcher,
        signal,
      });
    } catch (err) {
      throw toNetworkError(err, `token request to ${url.origin}`);
    }
    return this.#readToken(res, url.host);
  }

  async #readToken(res: Dispatcher.ResponseData, host: string): Promise<TokenEntry> {
    if (res.statusCode === 401 || res.statusCode === 403) {
      await res.body.dump();
      throw new PrewarmError(
        ErrorCodes.AUTH_DENIED,
        `${host}: token endpoint refused the credentials (${res.statusCode})`,
        {
          status: res.statusCode,
        },
      );
    }
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new PrewarmError(ErrorCodes.AUTH_FAILED, `${host}: token endpoint answered ${res.statusCode}`, {
        status: res.statusCode,
        retryable: RETRYABLE_STATUS.has(res.statusCode),
      });
    }
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      doc = JSON.parse((await readCapped(res.body, 1 << 20, 'token response')).toString('utf8'));
    } catch (err) {
      throw new PrewarmError(ErrorCodes.AUTH_FAILED, `${host}: token response is not JSON`, { cause: err });
    }
    const token =
      typeof doc.token === 'string'
        ? doc.token
        : typeof doc.access_token === 'string'
          ? doc.access_token
          : undefined;
    if (!token) throw new PrewarmError(ErrorCodes.AUTH_FAILED, `${host}: token response has no token`);
    // The spec's default lifetime is 60 s; renew 10 s early so in-flight chunks never race expiry.
    const lifetime = typeof doc.expires_in === 'number' && doc.expires_in > 0 ? doc.expires_in : 60;
    return { token, expiresAt: Date.now() + Math.max(5, lifetime - 10) * 1000 };
  }

  /** Turns a non-success response into a PrewarmError, reading the OCI error body (capped). */
  async #statusError(res: Dispatcher.ResponseData, notFound: ErrorCode, what: string): Promise<PrewarmError> {
    let message = '';
    try {
      const body = await readCapped(res.body, 16 * 1024, 'error body', true);
      const doc = JSON.parse(body.toString('utf8')) as { errors?: { code?: string; message?: string }[] };
      message = (doc.errors ?? []).map((e) => `${e.code ?? ''}: ${e.message ?? ''}`).join('; ');
    } catch {
      // Not an OCI error document; the status says enough.
    }
    const status = res.statusCode;
    const suffix = message ? ` (${message})` : '';
    if (status === 404) return new PrewarmError(notFound, `${what}: not found${suffix}`, { status });
    if (status === 401 || status === 403) {
      const challenge = header(res.headers, 'www-authenticate');
      return new PrewarmError(ErrorCodes.AUTH_DENIED, `${what}: access denied (${status})${suffix}`, {
        status,
        ...(challenge ? { detail: { challenge: challenge.slice(0, 2048) } } : {}),
      });
    }
    const retryAfterMs = parseRetryAfter(res.headers['retry-after']);
    return new PrewarmError(ErrorCodes.REGISTRY_ERROR, `${what}: registry answered ${status}${suffix}`, {
      status,
      retryable: RETRYABLE_STATUS.has(status),
      detail: retryAfterMs !== undefined ? { retryAfterMs } : {},
    });
  }
}

export function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * Whether sending credentials to the token realm `realm` would put them in the clear on an
 * origin other than the registry's: a plain-HTTP realm on another origin whose host the
 * egress policy does not list for plain HTTP. (A realm on the registry's own origin gets
 * what the registry already gets; an https realm is protected by TLS.)
 */
export function cleartextElsewhere(registry: URL, realm: URL, egress: EgressPolicy): boolean {
  return realm.protocol === 'http:' && realm.origin !== registry.origin && !egress.plainHttp(realm.host);
}

/** URL without query (presigned URLs carry credentials there). */
function redact(url: URL): string {
  return `${url.origin}${url.pathname}`;
}

/** Reads a body into memory, failing past `limit` bytes (or truncating when `truncate`). */
export async function readCapped(
  body: AsyncIterable<Buffer>,
  limit: number,
  what: string,
  truncate = false,
): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of body) {
    n += chunk.byteLength;
    if (n > limit) {
      if (truncate) break;
      throw new PrewarmError(ErrorCodes.MANIFEST_TOO_LARGE, `${what} exceeds ${limit} bytes`);
    }
    parts.push(chunk);
  }
  return Buffer.concat(parts);
}
