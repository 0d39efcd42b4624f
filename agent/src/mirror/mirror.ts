import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import pino, { type Logger } from 'pino';
import { header, type RegistryClient } from '../../../oci/src/client.js';
import type { Digest } from '../../../oci/src/digest.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import { hostPlatform } from '../../../oci/src/platform.js';
import { isValidRegistryHost } from '../../../oci/src/reference.js';
import type { BlobFetcher, InflightBlob } from '../fetch/blob-fetcher.js';
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
import { ManifestSource, type ServedManifest } from './manifest-source.js';
import type { MirrorOptions, TagPolicy } from './mirror-options.js';
import { MirrorHttpError, ociErrorBody, toMirrorHttpError } from './oci-errors.js';
import { parseRange } from './range.js';
import { parseMirrorPath, parseNamespace } from './routes.js';

/** Header a peer agent's fetcher sends (PeerSource): answer from the store or downloads in flight only. */
export const PEER_HEADER = 'x-kube-prewarm-peer';

/** What the mirror needs: the node's store, the fetcher that fills it, and a registry client for upstreams. */
export interface MirrorDeps {
  store: BlobStore;
  /** The same fetcher the prewarm jobs use, so a pull joins their downloads (single-flight). */
  fetcher: BlobFetcher;
  client: RegistryClient;
}

/** Counters since start (cheap to read; the daemon exports them as metrics). */
export interface MirrorStats {
  requests: number;
  /** Answers by status class, e.g. `{ '2xx': 10, '4xx': 1 }`. */
  responses: Record<string, number>;
  manifestsFromStore: number;
  manifestsFromUpstream: number;
  /** Tags answered from the store because the upstream could not resolve them. */
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
}

const DEFAULT_LISTEN = '127.0.0.1:5055';
const API_VERSION_HEADER = { 'Docker-Distribution-API-Version': 'registry/2.0' };

/**
 * The node-local OCI mirror: a read-only distribution server that containerd reaches
 * through hosts.toml. Manifests and blobs come from the store; a blob miss is downloaded
 * through the shared fetcher while it is being served (a pull racing a prewarm joins that
 * download); a tag is resolved upstream with a short timeout, or from the store's record.
 * It fails fast (503 within `deadlineMs`) so containerd falls back to the next host, and it
 * only ever completes a response with verified content.
 *
 * Lifecycle: `start(signal)` listens (aborting `signal` closes); `close()` stops accepting,
 * lets responses finish for `closeGraceMs`, then cuts connections. Downloads started by the
 * mirror are not aborted by `close()` (they belong to the fetcher; close it separately).
 */
export class Mirror {
  readonly #deps: MirrorDeps;
  readonly #log: Logger;
  readonly #listen: { host: string; port: number };
  readonly #tagPolicy: TagPolicy;
  readonly #deadlineMs: number;
  readonly #stallTimeoutMs: number;
  readonly #defaultRegistry: string | undefined;
  readonly #allowUpstream: (host: string) => boolean;
  readonly #peers: NonNullable<MirrorOptions['peers']>;
  readonly #closeGraceMs: number;
  readonly #manifests: ManifestSource;
  readonly #closing = new AbortController();
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
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
  };
  #address: string | undefined;
  #closed: Promise<void> | undefined;

  /** Throws PW_ERR_INVALID_CONFIG for a malformed `listen` or `defaultRegistry`. */
  constructor(deps: MirrorDeps, opts: MirrorOptions = {}) {
    this.#deps = deps;
    this.#log = opts.logger ?? pino({ enabled: false });
    this.#listen = parseListen(opts.listen ?? DEFAULT_LISTEN);
    this.#tagPolicy = opts.tagPolicy ?? 'upstream-first';
    this.#deadlineMs = opts.deadlineMs ?? 5_000;
    this.#stallTimeoutMs = opts.stallTimeoutMs ?? 30_000;
    if (opts.defaultRegistry !== undefined && !isValidRegistryHost(opts.defaultRegistry))
      throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `invalid default registry ${opts.defaultRegistry}`);
    this.#defaultRegistry = opts.defaultRegistry;
    this.#allowUpstream = opts.allowUpstream ?? (() => true);
    this.#peers = opts.peers ?? (() => []);
    this.#closeGraceMs = opts.closeGraceMs ?? 5_000;
    this.#manifests = new ManifestSource(deps.store, deps.client, {
      tagPolicy: this.#tagPolicy,
      resolveTimeoutMs: opts.resolveTimeoutMs ?? 2_000,
      platforms: opts.platforms ?? [hostPlatform()],
      logger: this.#log,
    });
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        this.#log.error({ err }, 'mirror handler failed');
        res.destroy();
      });
    });
    this.#server.keepAliveTimeout = opts.keepAliveTimeoutMs ?? 65_000;
    this.#server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.once('close', () => this.#sockets.delete(s));
    });
  }

  /** `host:port` actually bound (after `start()`); useful with port 0. */
  get address(): string {
    if (!this.#address) throw new PrewarmError(ErrorCodes.INVALID_CONFIG, 'mirror not started');
    return this.#address;
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
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#listen.port, this.#listen.host, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    const a = this.#server.address() as AddressInfo;
    this.#address = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
    this.#log.info({ address: this.#address, tagPolicy: this.#tagPolicy }, 'mirror listening');
    signal?.addEventListener('abort', () => void this.close(), { once: true });
    return this.#address;
  }

  /** Stops accepting, waits up to `closeGraceMs` for responses in progress, then cuts connections. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      const done = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      this.#server.closeIdleConnections();
      const grace = setTimeout(() => {
        this.#closing.abort(new PrewarmError(ErrorCodes.ABORTED, 'mirror closing'));
        for (const s of this.#sockets) s.destroy();
      }, this.#closeGraceMs);
      await done;
      clearTimeout(grace);
      this.#closing.abort(new PrewarmError(ErrorCodes.ABORTED, 'mirror closed'));
      this.#log.info('mirror closed');
    })();
    return this.#closed;
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
    const peer = header(req.headers, PEER_HEADER) === '1';
    // One signal per request: the client going away or the mirror closing stops its work.
    const reqAbort = new AbortController();
    const onClose = () => {
      if (!res.writableFinished) reqAbort.abort(new PrewarmError(ErrorCodes.ABORTED, 'client went away'));
    };
    res.once('close', onClose);
    const signal = AbortSignal.any([reqAbort.signal, this.#closing.signal]);
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
      const ns = parseNamespace(query);
      const registry = ns ?? this.#defaultRegistry;
      const upstream =
        !peer && registry !== undefined && this.#allowUpstream(registry) ? registry : undefined;
      if (route.kind === 'manifest') {
        const m = await this.#manifest(registry, upstream, route.name, route, signal);
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
      outcome = await this.#blob(req, res, route.name, route.digest, upstream, head, signal);
    } catch (err) {
      const e = toMirrorHttpError(err);
      if (!res.headersSent) {
        const extra: Record<string, string> = {};
        if (e.status === 416) {
          const size = (e.detail as { size?: number } | undefined)?.size;
          if (size !== undefined) extra['Content-Range'] = `bytes */${size}`;
        }
        const body = ociErrorBody(e.ociCode, e.message, e.detail);
        send(
          res,
          e.status,
          {
            'Content-Type': 'application/json; charset=utf-8',
            'Content-Length': String(Buffer.byteLength(body)),
            ...extra,
          },
          method === 'HEAD' ? undefined : body,
        );
        outcome = `error:${e.ociCode}`;
      } else {
        // Mid-body: the only honest signal left is a short body on a closed connection.
        this.#stats.streamsAborted++;
        outcome = 'aborted';
        res.destroy();
      }
      if (e.status >= 500 || res.headersSent)
        this.#log.warn({ err: e.cause ?? e, path: pathname, ns: query.get('ns') }, e.message);
    } finally {
      res.off('close', onClose);
      const cls = `${Math.floor(res.statusCode / 100)}xx`;
      this.#stats.responses[cls] = (this.#stats.responses[cls] ?? 0) + 1;
      this.#log.debug(
        {
          method,
          path: pathname,
          ns: query.get('ns') ?? undefined,
          peer,
          status: res.statusCode,
          outcome,
          ms: Math.round(performance.now() - started),
        },
        'mirror request',
      );
    }
  }

  async #manifest(
    registry: string | undefined,
    upstream: string | undefined,
    name: string,
    ref: { tag?: string | undefined; digest?: Digest | undefined },
    signal: AbortSignal,
  ): Promise<ServedManifest> {
    const deadline = AbortSignal.any([signal, AbortSignal.timeout(this.#deadlineMs)]);
    const req = { registry, upstream, name, signal: deadline };
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
    name: string,
    digest: Digest,
    upstream: string | undefined,
    head: boolean,
    signal: AbortSignal,
  ): Promise<string> {
    const { store, fetcher } = this.#deps;
    const rangeHeader = header(req.headers, 'range');
    const served = (origin: BlobOrigin, n: number) => {
      if (origin === 'store') this.#stats.blobBytesFromStore += n;
      else this.#stats.blobBytesFromInflight += n;
    };
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
      if (!upstream)
        throw new MirrorHttpError(404, 'BLOB_UNKNOWN', 'blob unknown to the node mirror', digest);
      const deadline = AbortSignal.any([signal, AbortSignal.timeout(this.#deadlineMs)]);
      const size = await this.#upstreamBlobSize(upstream, name, digest, deadline);
      if (head) {
        // HEAD of a miss answers from the upstream's metadata without downloading.
        const slice = sliceFor(parseRange(rangeHeader, size), size);
        send(res, slice.status, blobHeaders(digest, slice), undefined);
        return 'blob:upstream-head';
      }
      this.#stats.blobMisses++;
      const started = await this.#startDownload({ registry: upstream, repository: name, digest, size });
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

  /** The blob's size from an upstream HEAD, bounded by `signal`. Throws MirrorHttpError. */
  async #upstreamBlobSize(
    upstream: string,
    name: string,
    digest: Digest,
    signal: AbortSignal,
  ): Promise<number> {
    try {
      const res = await this.#deps.client.blob({
        registry: upstream,
        repository: name,
        digest,
        method: 'HEAD',
        signal,
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
   * Starts (or joins) the fetcher's download of `target` and returns it once it is in
   * flight, or `committed` if it finished first. The download runs to completion even if
   * this client goes away: the next pull will want the same blob.
   */
  async #startDownload(target: BlobTarget): Promise<InflightBlob | 'committed'> {
    const { fetcher, client } = this.#deps;
    // A peer directory outage must not fail a pull: the registry is always the last source.
    const peers = await Promise.resolve()
      .then(() => this.#peers(target))
      .catch(() => []);
    const sources = [...peers, new RegistrySource(client, target.registry)];
    let settled: 'ok' | 'failed' | undefined;
    let failure: unknown;
    const p = fetcher.fetch(target, { sources });
    p.then(
      () => {
        settled = 'ok';
      },
      (err: unknown) => {
        settled = 'failed';
        failure = err;
        this.#log.warn({ err, digest: target.digest }, 'mirror-started download failed');
      },
    );
    // fetch() registers the download after an async stat of the store: wait for either.
    for (;;) {
      const blob = fetcher.inflight(target.digest);
      if (blob) return blob;
      if (settled === 'ok') return 'committed';
      if (settled === 'failed') throw toMirrorHttpError(failure);
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
}

function send(
  res: ServerResponse,
  status: number,
  headers: Record<string, string>,
  body: string | Buffer | undefined,
): void {
  res.writeHead(status, { ...API_VERSION_HEADER, ...headers });
  res.end(body);
}

/** Parses `host:port` / `[v6]:port`; throws PW_ERR_INVALID_CONFIG. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(listen);
  const port = Number(m?.[3]);
  if (!m || port > 65535)
    throw new PrewarmError(
      ErrorCodes.INVALID_CONFIG,
      `invalid listen address ${JSON.stringify(listen)} (want host:port)`,
    );
  return { host: (m[1] ?? m[2]) as string, port };
}
