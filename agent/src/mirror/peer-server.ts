import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import pino, { type Logger } from 'pino';
import { header } from '../../../oci/src/client.js';
import type { Digest } from '../../../oci/src/digest.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import { MAX_MANIFEST_BYTES, parseManifest } from '../../../oci/src/manifest.js';
import type { Fetcher } from '../fetch/fetcher.js';
import type { BlobStore } from '../store/blob-store.js';
import {
  blobHeaders,
  sendCommittedBlob,
  sliceFor,
  streamInflightBlob,
  waitForFirstByte,
} from './blob-responder.js';
import { API_VERSION_HEADER, HttpListener, send, sendOciError } from './http-listener.js';
import { MirrorHttpError, toMirrorHttpError } from './oci-errors.js';
import { parseRange } from './range.js';
import { parsePeerPath } from './routes.js';

/** Shortest peer token accepted: 32 characters (e.g. `openssl rand -hex 32` gives 64). */
export const MIN_PEER_TOKEN_LENGTH = 32;

/**
 * Reads the peer tokens from `path` (a file mounted from a Secret): one token a line, blank
 * lines ignored. The first is the one this node sends; every line is accepted, so a token
 * is rotated by adding the new one as a second line, rolling out, moving it first, rolling
 * out, and removing the old one. Throws PW_ERR_INVALID_CONFIG (unreadable file, no token,
 * a token shorter than `MIN_PEER_TOKEN_LENGTH`); never echoes a token.
 */
export async function readPeerTokens(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `peer token file ${path}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const tokens = text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  if (tokens.length === 0)
    throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `peer token file ${path} is empty`);
  const short = tokens.findIndex((t) => t.length < MIN_PEER_TOKEN_LENGTH || /\s/.test(t));
  if (short >= 0)
    throw new PrewarmError(
      ErrorCodes.INVALID_CONFIG,
      `peer token file ${path}: token on line ${short + 1} is shorter than ${MIN_PEER_TOKEN_LENGTH} characters or contains spaces`,
    );
  return tokens;
}

export interface PeerServerDeps {
  store: BlobStore;
  /** The node's fetcher: downloads in flight are served to peers as they land. */
  fetcher: Fetcher;
}

export interface PeerServerOptions {
  /** `host:port` to listen on (the node address other agents reach, e.g. `0.0.0.0:5051`). */
  listen: string;
  /** Accepted bearer tokens (`readPeerTokens`); at least one. */
  tokens: readonly string[];
  /** Time to start an answer from a download in flight before 503. Default 5 s. */
  deadlineMs?: number;
  /** Longest wait for a download in flight to progress while streaming. Default 30 s. */
  stallTimeoutMs?: number;
  /** Structured logger (pino). Default: silent. */
  logger?: Logger;
  /** Idle keep-alive connections are closed after this. Default 65 s. */
  keepAliveTimeoutMs?: number;
  /** On `close()`, how long responses may finish before connections are cut. Default 5 s. */
  closeGraceMs?: number;
}

/** Counters since start. */
export interface PeerServerStats {
  requests: number;
  /** Requests refused for a missing or wrong token. */
  unauthorized: number;
  /** Requests for blobs this node neither holds nor is downloading (or manifests). */
  notHeld: number;
  blobBytesFromStore: number;
  blobBytesFromInflight: number;
}

const CHALLENGE = 'Bearer realm="kube-prewarm-peer"';

/**
 * The agent's listener for other agents (peers), apart from the containerd-facing mirror:
 * every request must carry `Authorization: Bearer <cluster peer token>` (compared in
 * constant time; else 401 before the request is looked at), and the only thing it serves is
 * `GET|HEAD /peer/v1/blobs/<digest>`: a blob this node holds committed (verified) or is
 * downloading right now. Never a manifest (nothing that parses as one is served), never a
 * tag, and never anything fetched for the request: there is no upstream behind it, so a
 * peer cannot make this node contact any registry, and agents never fetch on each other's
 * behalf in loops.
 */
export class PeerServer {
  readonly #deps: PeerServerDeps;
  readonly #log: Logger;
  readonly #tokenHashes: Buffer[];
  readonly #deadlineMs: number;
  readonly #stallTimeoutMs: number;
  readonly #listener: HttpListener;
  readonly #stats: PeerServerStats = {
    requests: 0,
    unauthorized: 0,
    notHeld: 0,
    blobBytesFromStore: 0,
    blobBytesFromInflight: 0,
  };

  /** Throws PW_ERR_INVALID_CONFIG for a malformed `listen` or no token. */
  constructor(deps: PeerServerDeps, opts: PeerServerOptions) {
    if (opts.tokens.length === 0 || opts.tokens.some((t) => t.length === 0))
      throw new PrewarmError(ErrorCodes.INVALID_CONFIG, 'the peer listener needs a token');
    this.#deps = deps;
    this.#log = opts.logger ?? pino({ enabled: false });
    this.#tokenHashes = opts.tokens.map(tokenHash);
    this.#deadlineMs = opts.deadlineMs ?? 5_000;
    this.#stallTimeoutMs = opts.stallTimeoutMs ?? 30_000;
    this.#listener = new HttpListener((req, res) => this.#handle(req, res), {
      listen: opts.listen,
      keepAliveTimeoutMs: opts.keepAliveTimeoutMs ?? 65_000,
      closeGraceMs: opts.closeGraceMs ?? 5_000,
      logger: this.#log,
      name: 'peer listener',
    });
  }

  /** `host:port` actually bound (after `start()`). */
  get address(): string {
    return this.#listener.address;
  }

  /** `http://host:port`. */
  get url(): string {
    return `http://${this.address}`;
  }

  get stats(): PeerServerStats {
    return { ...this.#stats };
  }

  /** Binds; resolves with the bound `host:port`. Aborting `signal` closes. */
  async start(signal?: AbortSignal): Promise<string> {
    const address = await this.#listener.start();
    this.#log.info({ address, tokens: this.#tokenHashes.length }, 'peer listener listening');
    signal?.addEventListener('abort', () => void this.close(), { once: true });
    return address;
  }

  /** Idempotent. */
  async close(): Promise<void> {
    await this.#listener.close();
  }

  /** Constant-time against every accepted token (no early exit, equal-length hashes). */
  #authorized(req: IncomingMessage): boolean {
    const m = /^Bearer ([\x21-\x7e]{1,4096})$/.exec(header(req.headers, 'authorization') ?? '');
    const got = tokenHash(m?.[1] ?? '');
    let ok = false;
    for (const want of this.#tokenHashes) ok = timingSafeEqual(got, want) || ok;
    return ok && m !== null;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.#stats.requests++;
    const method = req.method ?? 'GET';
    const rawUrl = req.url ?? '/';
    const q = rawUrl.indexOf('?');
    const pathname = q < 0 ? rawUrl : rawUrl.slice(0, q);
    const abort = new AbortController();
    const onClose = () => {
      if (!res.writableFinished) abort.abort(new PrewarmError(ErrorCodes.ABORTED, 'peer went away'));
    };
    res.once('close', onClose);
    const signal = AbortSignal.any([abort.signal, this.#listener.closing]);
    let outcome = '';
    try {
      if (!this.#authorized(req)) {
        this.#stats.unauthorized++;
        throw new MirrorHttpError(401, 'UNAUTHORIZED', 'peer token required', undefined, undefined, {
          'WWW-Authenticate': CHALLENGE,
        });
      }
      if (method !== 'GET' && method !== 'HEAD') {
        res.setHeader('Allow', 'GET, HEAD');
        throw new MirrorHttpError(405, 'UNSUPPORTED', 'the peer listener is read-only');
      }
      const digest = parsePeerPath(pathname);
      outcome = await this.#blob(req, res, digest, method === 'HEAD', signal);
    } catch (err) {
      const e = toMirrorHttpError(err);
      if (!res.headersSent) {
        sendOciError(res, e, method);
        outcome = `error:${e.ociCode}`;
      } else {
        outcome = 'aborted';
        res.destroy();
      }
      if (e.status >= 500 || res.headersSent)
        this.#log.warn({ err: e.cause ?? e, path: pathname }, e.message);
    } finally {
      res.off('close', onClose);
      this.#log.debug(
        { method, path: pathname, status: res.statusCode, outcome, peer: req.socket.remoteAddress },
        'peer request',
      );
    }
  }

  async #blob(
    req: IncomingMessage,
    res: ServerResponse,
    digest: Digest,
    head: boolean,
    signal: AbortSignal,
  ): Promise<string> {
    const { store, fetcher } = this.#deps;
    const rangeHeader = header(req.headers, 'range');
    const info = await store.stat(digest);
    if (info) {
      if (info.size <= MAX_MANIFEST_BYTES && (await isManifest(store, digest))) throw this.#notHeld(digest);
      this.#stats.blobBytesFromStore += await sendCommittedBlob(
        res,
        store,
        digest,
        rangeHeader,
        head,
        API_VERSION_HEADER,
      );
      return 'blob:store';
    }
    const blob = fetcher.inflight(digest);
    if (!blob) throw this.#notHeld(digest);
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
    this.#stats.blobBytesFromInflight += await streamInflightBlob(res, store, blob, slice, {
      stallTimeoutMs: this.#stallTimeoutMs,
      signal,
    });
    return 'blob:inflight';
  }

  #notHeld(digest: Digest): MirrorHttpError {
    this.#stats.notHeld++;
    return new MirrorHttpError(404, 'BLOB_UNKNOWN', 'blob not held by this node', digest);
  }
}

function tokenHash(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

/** Whether a committed (small) blob is a manifest or index: those are never served to peers. */
async function isManifest(store: BlobStore, digest: Digest): Promise<boolean> {
  const bytes = await store.readBytes(digest, MAX_MANIFEST_BYTES).catch(() => undefined);
  if (!bytes) return false;
  try {
    parseManifest(bytes);
    return true;
  } catch {
    return false;
  }
}
