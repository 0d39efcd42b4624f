import type { IncomingMessage, ServerResponse } from 'node:http';
import pino, { type Logger } from 'pino';
import { type ForwardedAuth, header, type RegistryClient } from '../../../oci/src/client.js';
import type { Digest } from '../../../oci/src/digest.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import { hostPlatform } from '../../../oci/src/platform.js';
import { isValidRegistryHost } from '../../../oci/src/reference.js';
import type { Fetcher, InflightBlob } from '../fetch/fetcher.js';
import { type BlobTarget, RegistrySource } from '../fetch/sources.js';
import type { BlobStore } from '../store/blob-store.js';
import {
  type BlobOrigin,
  blobHeaders,
  sendCommittedBlob,
  sliceFor,
  streamInflightBlob,
  waitForFirstByte,
} from './blob-responder.js';
import { API_VERSION_HEADER, HttpListener, send, sendOciError } from './http-listener.js';
import { ManifestSource, type ServedManifest } from './manifest-source.js';
import type { MirrorOptions, TagPolicy } from './mirror-options.js';
import { MirrorHttpError, toMirrorHttpError } from './oci-errors.js';
import { parseRange } from './range.js';
import { RecordIndex } from './record-index.js';
import { parseMirrorPath, parseNamespace } from './routes.js';

export { parseListen } from './http-listener.js';

/** What the mirror needs: the node's store, the fetcher that fills it, and a registry client for upstreams. */
export interface MirrorDeps {
  store: BlobStore;
  /** The same fetcher the prewarm jobs use, so a pull joins their downloads (single-flight). */
  fetcher: Fetcher;
  /**
   * Reaches upstreams; its egress policy decides which (`client.egress`). The mirror only
   * ever sends the requesting client's own authorization, never this client's credentials:
   * give it a client without any (the daemon does).
   */
  client: RegistryClient;
}

/** Counters since start (cheap to read; the daemon exports them as metrics). */
export interface MirrorStats {
  requests: number;
  /** Answers by status class, e.g. `{ '2xx': 10, '4xx': 1 }`. */
  responses: Record<string, number>;
  manifestsFromStore: number;
  manifestsFromUpstream: number;
  /** Tags answered from the store because the upstream could not be reached. */
  tagFallbacks: number;
  /** Blob body bytes sent from committed files. */
  blobBytesFromStore: number;
  /** Blob body bytes sent from downloads in flight (before they committed). */
  blobBytesFromInflight: number;
  /** Blob requests found neither committed nor in flight: a download was started through the fetcher. */
  blobMisses: number;
  /** Requests that joined a download already in flight. */
  blobDownloadsJoined: number;
  /** Bodies cut short (download failed/stalled/restarted, client gone). */
  streamsAborted: number;
  /** Requests refused because `?ns=` (or the default registry) is not allowed by the egress policy. */
  upstreamsRefused: number;
  /** Upstream 401/403 answers passed on to the client. */
  authRelayed: number;
}

const DEFAULT_LISTEN = '127.0.0.1:5055';
/** Longest client `Authorization` header forwarded upstream. */
const MAX_AUTHORIZATION = 8 * 1024;

/**
 * The node-local OCI mirror: a read-only distribution server that containerd reaches
 * through hosts.toml. Manifests and blobs come from the store; a blob miss is downloaded
 * through the shared fetcher while it is being served (a pull racing a prewarm joins that
 * download); a tag is resolved upstream with a short timeout, or from the store's record
 * while the upstream cannot be reached. It fails fast (503 within `deadlineMs`) so
 * containerd falls back to the next host, and it only ever completes a response with
 * verified content.
 *
 * Access: content is served under `/v2/<name>/…?ns=<registry>` without asking the upstream
 * only when an image record of `<registry>/<name>` ties it to that repository (warmed here
 * on purpose); anything else must be confirmed by the upstream for that repository with the
 * client's own `Authorization`, which the mirror forwards (it never uses the node's
 * credentials), and a 401/403 from the upstream is passed on. Upstreams are limited by the
 * client's egress policy: a `?ns=` it does not allow is answered 404 `NAME_UNKNOWN`.
 *
 * Lifecycle: `start(signal)` listens (aborting `signal` closes); `close()` stops accepting,
 * lets responses finish for `closeGraceMs`, then cuts connections. Downloads started by the
 * mirror are not aborted by `close()` (they belong to the fetcher; close it separately).
 */
export class Mirror {
  readonly #deps: MirrorDeps;
  readonly #log: Logger;
  readonly #tagPolicy: TagPolicy;
  readonly #deadlineMs: number;
  readonly #stallTimeoutMs: number;
  readonly #defaultRegistry: string | undefined;
  readonly #peers: NonNullable<MirrorOptions['peers']>;
  readonly #records: RecordIndex;
  readonly #manifests: ManifestSource;
  readonly #listener: HttpListener;
  readonly #stats: MirrorStats = {
    requests: 0,
    responses: {},
    manifestsFromStore: 0,
    manifestsFromUpstream: 0,
    tagFallbacks: 0,
    blobBytesFromStore: 0,
    blobBytesFromInflight: 0,
    blobMisses: 0,
    blobDownloadsJoined: 0,
    streamsAborted: 0,
    upstreamsRefused: 0,
    authRelayed: 0,
  };

  /** Throws PW_ERR_INVALID_CONFIG for a malformed `listen` or `defaultRegistry`. */
  constructor(deps: MirrorDeps, opts: MirrorOptions = {}) {
    this.#deps = deps;
    this.#log = opts.logger ?? pino({ enabled: false });
    this.#tagPolicy = opts.tagPolicy ?? 'upstream-first';
    this.#deadlineMs = opts.deadlineMs ?? 5_000;
    this.#stallTimeoutMs = opts.stallTimeoutMs ?? 30_000;
    if (opts.defaultRegistry !== undefined && !isValidRegistryHost(opts.defaultRegistry))
      throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `invalid default registry ${opts.defaultRegistry}`);
    this.#defaultRegistry = opts.defaultRegistry;
    this.#peers = opts.peers ?? (() => []);
    this.#records = new RecordIndex(deps.store);
    this.#manifests = new ManifestSource(deps.store, deps.client, this.#records, {
      tagPolicy: this.#tagPolicy,
      resolveTimeoutMs: opts.resolveTimeoutMs ?? 2_000,
      platforms: opts.platforms ?? [hostPlatform()],
      logger: this.#log,
    });
    this.#listener = new HttpListener((req, res) => this.#handle(req, res), {
      listen: opts.listen ?? DEFAULT_LISTEN,
      keepAliveTimeoutMs: opts.keepAliveTimeoutMs ?? 65_000,
      closeGraceMs: opts.closeGraceMs ?? 5_000,
      logger: this.#log,
      name: 'mirror',
    });
  }

  /** `host:port` actually bound (after `start()`); useful with port 0. */
  get address(): string {
    return this.#listener.address;
  }

  /** `http://host:port`, the URL to put in hosts.toml. */
  get url(): string {
    return `http://${this.address}`;
  }

  /** A snapshot of the counters. */
  get stats(): MirrorStats {
    return { ...this.#stats, responses: { ...this.#stats.responses } };
  }

  /**
   * Binds and listens; resolves with the bound `host:port`. Aborting `signal` closes the
   * mirror. Throws the listen error (EADDRINUSE, EADDRNOTAVAIL) as is.
   */
  async start(signal?: AbortSignal): Promise<string> {
    const address = await this.#listener.start();
    const egress = this.#deps.client.egress;
    this.#log.info(
      { address, tagPolicy: this.#tagPolicy, allowedRegistries: egress.allowedRegistries },
      'mirror listening',
    );
    signal?.addEventListener('abort', () => void this.close(), { once: true });
    return address;
  }

  /** Stops accepting, waits up to `closeGraceMs` for responses in progress, then cuts connections. Idempotent. */
  async close(): Promise<void> {
    await this.#listener.close();
    this.#log.info('mirror closed');
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.#stats.requests++;
    const started = performance.now();
    const method = req.method ?? 'GET';
    // The path is taken raw: WHATWG URL parsing would resolve `%2e%2e` into `..` and hide it.
    const rawUrl = req.url ?? '/';
    const q = rawUrl.indexOf('?');
    const pathname = q < 0 ? rawUrl : rawUrl.slice(0, q);
    const query = new URLSearchParams(q < 0 ? '' : rawUrl.slice(q + 1));
    // One signal per request: the client going away or the mirror closing stops its work.
    const reqAbort = new AbortController();
    const onClose = () => {
      if (!res.writableFinished) reqAbort.abort(new PrewarmError(ErrorCodes.ABORTED, 'client went away'));
    };
    res.once('close', onClose);
    const signal = AbortSignal.any([reqAbort.signal, this.#listener.closing]);
    let outcome = '';
    try {
      if (method !== 'GET' && method !== 'HEAD') {
        res.setHeader('Allow', 'GET, HEAD');
        throw new MirrorHttpError(405, 'UNSUPPORTED', 'the node mirror is read-only');
      }
      const head = method === 'HEAD';
      const route = parseMirrorPath(pathname);
      if (route.kind === 'base') {
        send(
          res,
          200,
          { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': '2' },
          head ? undefined : '{}',
        );
        outcome = 'base';
        return;
      }
      const registry = parseNamespace(query) ?? this.#defaultRegistry;
      if (registry !== undefined && !this.#deps.client.egress.allowsRegistry(registry)) {
        // Not an upstream this node may contact: nothing is looked up or sent anywhere.
        this.#stats.upstreamsRefused++;
        throw toMirrorHttpError(
          new PrewarmError(ErrorCodes.EGRESS_DENIED, `upstream ${registry} not allowed`, {
            detail: { reason: 'registry-not-allowed', host: registry },
          }),
        );
      }
      const ctx: RequestContext = {
        registry,
        upstream: registry,
        name: route.name,
        forward: { authorization: clientAuthorization(req) },
        signal,
      };
      if (route.kind === 'manifest') {
        const m = await this.#manifest(ctx, route);
        send(
          res,
          200,
          {
            'Content-Type': m.mediaType,
            'Content-Length': String(m.bytes.byteLength),
            'Docker-Content-Digest': m.digest,
            ETag: `"${m.digest}"`,
          },
          head ? undefined : m.bytes,
        );
        outcome = `manifest:${m.origin}`;
        return;
      }
      outcome = await this.#blob(req, res, ctx, route.digest, head);
    } catch (err) {
      const e = toMirrorHttpError(err);
      if (e.status === 401 || e.status === 403) this.#stats.authRelayed++;
      if (!res.headersSent) {
        sendOciError(res, e, method);
        outcome = `error:${e.ociCode}`;
      } else {
        // Mid-body: the only honest signal left is a short body on a closed connection.
        this.#stats.streamsAborted++;
        outcome = 'aborted';
        res.destroy();
      }
      // What the upstream said stays here, never in the answer.
      if (e.status >= 500 || res.headersSent)
        this.#log.warn({ err: e.cause ?? e, path: pathname, ns: query.get('ns') }, e.message);
      else if (e.cause !== undefined)
        this.#log.info({ err: e.cause, path: pathname, ns: query.get('ns'), status: e.status }, e.message);
    } finally {
      res.off('close', onClose);
      const cls = `${Math.floor(res.statusCode / 100)}xx`;
      this.#stats.responses[cls] = (this.#stats.responses[cls] ?? 0) + 1;
      this.#log.debug(
        {
          method,
          path: pathname,
          ns: query.get('ns') ?? undefined,
          status: res.statusCode,
          outcome,
          ms: Math.round(performance.now() - started),
        },
        'mirror request',
      );
    }
  }

  async #manifest(
    ctx: RequestContext,
    ref: { tag?: string | undefined; digest?: Digest | undefined },
  ): Promise<ServedManifest> {
    const deadline = AbortSignal.any([ctx.signal, AbortSignal.timeout(this.#deadlineMs)]);
    const req = { ...ctx, signal: deadline };
    const m = ref.digest
      ? await this.#manifests.byDigest(req, ref.digest)
      : await this.#manifests.byTag(req, ref.tag as string);
    if (m.origin === 'upstream') this.#stats.manifestsFromUpstream++;
    else this.#stats.manifestsFromStore++;
    if (m.origin === 'store-fallback') this.#stats.tagFallbacks++;
    return m;
  }

  /** Serves a blob; returns an outcome label for the request log. */
  async #blob(
    req: IncomingMessage,
    res: ServerResponse,
    ctx: RequestContext,
    digest: Digest,
    head: boolean,
  ): Promise<string> {
    const { store, fetcher } = this.#deps;
    const { signal } = ctx;
    const rangeHeader = header(req.headers, 'range');
    const served = (origin: BlobOrigin, n: number) => {
      if (origin === 'store') this.#stats.blobBytesFromStore += n;
      else this.#stats.blobBytesFromInflight += n;
    };
    const deadline = () => AbortSignal.any([signal, AbortSignal.timeout(this.#deadlineMs)]);
    // 0. Entitlement: a record ties the digest to this repository, or the upstream confirms
    //    it for this repository and this client (HEAD with the client's authorization).
    const tied =
      ctx.registry !== undefined && (await this.#records.ties(`${ctx.registry}/${ctx.name}`, digest));
    let upstreamSize: number | undefined;
    if (!tied) {
      if (!ctx.upstream)
        throw new MirrorHttpError(404, 'BLOB_UNKNOWN', 'blob unknown to the node mirror', digest);
      upstreamSize = await this.#upstreamBlobSize(ctx, digest, deadline());
    }
    // 1. Committed: verified, on disk.
    if (await store.stat(digest)) {
      const n = await this.#sendCommitted(res, digest, rangeHeader, head);
      served('store', n);
      return 'blob:store';
    }
    // 2. In flight: join the download. 3. Miss: start one through the fetcher, then join it.
    let blob = fetcher.inflight(digest);
    if (blob) this.#stats.blobDownloadsJoined++;
    else {
      if (!ctx.upstream)
        throw new MirrorHttpError(404, 'BLOB_UNKNOWN', 'blob unknown to the node mirror', digest);
      const size = upstreamSize ?? (await this.#upstreamBlobSize(ctx, digest, deadline()));
      if (head) {
        // HEAD of a miss answers from the upstream's metadata without downloading.
        const slice = sliceFor(parseRange(rangeHeader, size), size);
        send(res, slice.status, blobHeaders(digest, slice), undefined);
        return 'blob:upstream-head';
      }
      this.#stats.blobMisses++;
      const started = await this.#startDownload(
        { registry: ctx.upstream, repository: ctx.name, digest, size },
        ctx.forward,
      );
      if (started === 'committed') {
        const n = await this.#sendCommitted(res, digest, rangeHeader, head);
        served('store', n);
        return 'blob:store';
      }
      blob = started;
    }
    const slice = sliceFor(parseRange(rangeHeader, blob.size), blob.size);
    if (head) {
      send(res, slice.status, blobHeaders(digest, slice), undefined);
      return 'blob:inflight-head';
    }
    await waitForFirstByte(blob, slice, this.#deadlineMs, signal);
    res.writeHead(slice.status, { ...API_VERSION_HEADER, ...blobHeaders(digest, slice) });
    if (slice.end < slice.start) {
      res.end();
      return 'blob:inflight';
    }
    const n = await streamInflightBlob(res, store, blob, slice, {
      stallTimeoutMs: this.#stallTimeoutMs,
      signal,
    });
    served('inflight', n);
    return 'blob:inflight';
  }

  async #sendCommitted(
    res: ServerResponse,
    digest: Digest,
    rangeHeader: string | undefined,
    head: boolean,
  ): Promise<number> {
    const store = this.#deps.store as BlobStore & { touch?: (d: Digest) => Promise<void> };
    // Reads count as use for LRU garbage collection (FsBlobStore has touch; others may not).
    void store.touch?.(digest).catch(() => undefined);
    return sendCommittedBlob(res, store, digest, rangeHeader, head, API_VERSION_HEADER);
  }

  /**
   * The blob's size from an upstream HEAD with the client's authorization, bounded by
   * `signal`: also the upstream's confirmation that this client may read the blob under
   * this repository. Throws MirrorHttpError (401/403 passed on, 404 BLOB_UNKNOWN, 5xx).
   */
  async #upstreamBlobSize(ctx: RequestContext, digest: Digest, signal: AbortSignal): Promise<number> {
    try {
      const res = await this.#deps.client.blob({
        registry: ctx.upstream as string,
        repository: ctx.name,
        digest,
        method: 'HEAD',
        signal,
        forward: ctx.forward,
      });
      await res.body.dump();
      const size = Number(header(res.headers, 'content-length'));
      if (!Number.isSafeInteger(size) || size < 0)
        throw new MirrorHttpError(502, 'UNKNOWN', 'upstream sent no usable Content-Length for the blob');
      return size;
    } catch (err) {
      throw toMirrorHttpError(err);
    }
  }

  /**
   * Starts (or joins) the fetcher's download of `target` and returns it, or `committed` when
   * the blob was committed meanwhile (a download that just finished). The registry is asked
   * with the client's authorization. The download runs to completion even if this client
   * goes away: the next pull will want the same blob. Its failure reaches this request
   * through the download itself ('error', see waitForFirstByte and streamInflightBlob).
   */
  async #startDownload(target: BlobTarget, forward: ForwardedAuth): Promise<InflightBlob | 'committed'> {
    const { store, fetcher, client } = this.#deps;
    // A peer directory outage must not fail a pull: the registry is always the last source.
    const peers = await Promise.resolve()
      .then(() => this.#peers(target))
      .catch(() => []);
    if (await store.stat(target.digest)) return 'committed';
    const sources = [...peers, new RegistrySource(client, target.registry, { forward })];
    // Registered before startOrJoin returns: nothing to wait for between starting and reading.
    const { blob, result } = fetcher.startOrJoin(target, { sources });
    result.catch((err: unknown) =>
      this.#log.warn({ err, digest: target.digest }, 'mirror-started download failed'),
    );
    return blob;
  }
}

/** One request's upstream, repository and the client's authorization. */
interface RequestContext {
  /** Keys the store's records (`?ns=` or the default registry). */
  registry: string | undefined;
  /** Allowed upstream to contact; undefined: records only. */
  upstream: string | undefined;
  name: string;
  forward: ForwardedAuth;
  signal: AbortSignal;
}

/** The client's `Authorization` when it is a Bearer or Basic credential of sane size; else none. */
function clientAuthorization(req: IncomingMessage): string | undefined {
  const a = header(req.headers, 'authorization');
  if (!a || a.length > MAX_AUTHORIZATION || !/^(?:Bearer|Basic) [\x21-\x7e]+$/i.test(a)) return undefined;
  return a;
}
