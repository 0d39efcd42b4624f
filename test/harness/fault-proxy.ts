/**
 * A fault-injecting HTTP proxy in front of a real registry, plus a "blob storage" server to
 * redirect blob downloads to (like S3/GCS behind Docker Hub, GHCR, ECR).
 *
 * The proxy streams requests and responses (keep-alive on both sides) and applies the
 * mutable `rules` object at the moment each request arrives, so a test can change them
 * between (or during) downloads. Counters are updated before bytes are written, so a test
 * that has received a response can assert on them without waiting.
 *
 * Request paths are matched without the query string. The upstream sees the client's
 * `Host` header, so the registry's `Location` headers (blob uploads) point back at the proxy
 * and pushes through the proxy work.
 */
import { randomBytes } from 'node:crypto';
import {
  Agent,
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  request,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Credentials } from './registry.js';
import { type RegistryEndpoint, registryFetch } from './registry-http.js';

/** Answer matching requests with an error status for the first `times` matches. */
export interface FailRule {
  /** HTTP method to match (upper case). Default: any. */
  method?: string;
  /** Matched against the path (no query). */
  path: RegExp;
  /** E.g. 429, 503, 500. */
  status: number;
  /** Sets `Retry-After: <seconds>`. */
  retryAfterSeconds?: number;
  /** How many matching requests get the error before the rule passes requests through. `Infinity` = always. */
  times: number;
  /** Response body. Default: an OCI error JSON naming the fault. */
  body?: string;
  /** Requests this rule has answered so far (kept by the proxy; starts at 0). */
  hits?: number;
}

/** Destroy the client connection after `bytes` body bytes of a matching response. */
export interface CutRule {
  method?: string;
  /** Default: every path. */
  path?: RegExp;
  bytes: number;
  /** How many responses to cut. Default `Infinity`. */
  times?: number;
  /** Responses cut so far (kept by the proxy). */
  hits?: number;
}

/** Requests whose path matches wait, unanswered and not yet forwarded, until `until` settles. */
export interface HoldRule {
  /** Upper case; default any. */
  method?: string;
  path: RegExp;
  until: Promise<unknown>;
}

export interface FaultRules {
  /** Checked in order; the first rule that matches and still has `times` left answers. */
  fail: FailRule[];
  /** Strip `Range` (and `If-Range`) before forwarding: `true` for all paths, or a path RegExp. */
  ignoreRange: boolean | RegExp;
  /**
   * When set to an origin (`http://127.0.0.1:<port>`, normally `proxy.blobStorage.url`), a blob
   * GET that the upstream would answer 200/206 (checked with a HEAD carrying the client's headers,
   * so auth is still enforced) is answered `307` to `<origin>/storage/<name>/<digest>?sig=...`.
   */
  redirectBlobsTo: string | null;
  cutAfterBytes: CutRule | null;
  /**
   * Holds matching requests (checked before every other rule; they enter the stats when
   * released): makes "the download is still running when X happens" a condition, not a race.
   */
  hold: HoldRule | null;
}

export interface ProxyLogEntry {
  method: string;
  path: string;
  /** The client's Range header, if any (before `ignoreRange`). */
  range: string | undefined;
  /** Status sent to the client (0 until headers are sent). */
  status: number;
  /** Body bytes sent to the client. */
  bytes: number;
  /** Which rule acted, if any. */
  fault: 'fail' | 'redirect' | 'cut' | 'ignoreRange' | undefined;
}

export interface ProxyStats {
  /** Requests received, by path. */
  requests: Map<string, number>;
  /** Response body bytes sent to clients, by path. */
  bytesSent: Map<string, number>;
  /** Every Range header seen, in arrival order. */
  ranges: { path: string; range: string }[];
  /** One entry per request, in arrival order. */
  log: ProxyLogEntry[];
  /** Requests open at once (received, response not yet closed), by path: now and at most. */
  inFlight: Map<string, number>;
  peakInFlight: Map<string, number>;
}

/** What the blob storage server received, per request. */
export interface BlobStorageRequest {
  method: string;
  /** Path and query as received. */
  url: string;
  headers: IncomingHttpHeaders;
  status: number;
}

export interface BlobStorageHandle {
  /** `http://127.0.0.1:<port>` */
  url: string;
  host: string;
  /** Every request received, with its headers (to assert Authorization was not forwarded). */
  requests: BlobStorageRequest[];
  stop(): Promise<void>;
}

export interface FaultProxyHandle {
  /** `127.0.0.1:<port>`: use in image references to go through the proxy. */
  host: string;
  url: string;
  /** The upstream's credentials, so `pushImage(proxy, ...)` and `registryFetch(proxy, ...)` work. */
  credentials: Credentials | undefined;
  /** Mutable: change fields at any time. */
  rules: FaultRules;
  stats: ProxyStats;
  /** The redirect target the harness provides (serves upstream blobs without auth). */
  blobStorage: BlobStorageHandle;
  /** Number of requests whose path matches `path` (and `method`, if given). */
  count(path: RegExp, method?: string): number;
  /** Response body bytes sent for paths matching `path` (e.g. one blob, or every blob). */
  bytes(path: RegExp): number;
  /** Clears stats, `blobStorage.requests` and rule hit counters (rules stay). */
  resetStats(): void;
  stop(): Promise<void>;
}

export interface FaultProxyOptions {
  /** The real registry (its `url`, and `credentials` for the blob storage's upstream reads). */
  upstream: RegistryEndpoint;
  /** Initial rules; missing fields default to "no fault". */
  rules?: Partial<FaultRules>;
  /** Port on 127.0.0.1. Default: a free one. */
  port?: number;
  /**
   * Address to listen on. Default 127.0.0.1. The cluster harness puts it on its bridge so
   * that containerd and pods in node namespaces reach the registry through it.
   */
  listenHost?: string;
}

const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'upgrade',
];
const BLOB_GET_RE = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/;

function stripHopByHop<T extends IncomingHttpHeaders | OutgoingHttpHeaders>(h: T): T {
  const out = { ...h };
  for (const k of HOP_BY_HOP) delete out[k];
  return out;
}

function listen(server: Server, port: number, host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve((server.address() as AddressInfo).port));
  });
}

function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve()));
}

/**
 * Starts a server that serves `GET|HEAD /storage/<name>/<digest>` from the upstream registry's
 * blob endpoint (authenticating to the upstream itself), forwarding Range, and records
 * every request's headers. It needs no auth from its clients, like a presigned URL.
 */
export async function startBlobStorage(opts: {
  upstream: RegistryEndpoint;
  port?: number;
}): Promise<BlobStorageHandle> {
  const requests: BlobStorageRequest[] = [];
  const server = createServer((req, res) => {
    const entry: BlobStorageRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      status: 0,
    };
    requests.push(entry);
    const send = (status: number, body: string): void => {
      entry.status = status;
      res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    };
    const path = new URL(req.url ?? '/', 'http://storage.invalid').pathname;
    const m = /^\/storage\/(.+)\/(sha256:[a-f0-9]{64})$/.exec(path);
    if (!m || (req.method !== 'GET' && req.method !== 'HEAD')) {
      send(404, 'no such object\n');
      return;
    }
    const headers: Record<string, string> = {};
    if (typeof req.headers.range === 'string') headers.Range = req.headers.range;
    registryFetch(opts.upstream, `/v2/${m[1]}/blobs/${m[2]}`, { method: req.method, headers })
      .then(async (up) => {
        entry.status = up.status;
        const out: OutgoingHttpHeaders = { 'Content-Type': 'application/octet-stream', ETag: `"${m[2]}"` };
        for (const h of ['content-length', 'content-range', 'accept-ranges']) {
          const v = up.headers.get(h);
          if (v !== null) out[h] = v;
        }
        res.writeHead(up.status, out);
        if (up.body === null || req.method === 'HEAD') {
          await up.body?.cancel();
          res.end();
          return;
        }
        for await (const chunk of up.body) {
          if (!res.write(chunk)) await new Promise((resolve) => res.once('drain', resolve));
          if (res.destroyed) break;
        }
        res.end();
      })
      .catch((err: unknown) => {
        if (!res.headersSent) send(502, `upstream error: ${String(err)}\n`);
        else res.destroy();
      });
  });
  const port = await listen(server, opts.port ?? 0);
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    requests,
    stop: () => closeServer(server),
  };
}

/**
 * Starts the proxy (and its blob storage server) on 127.0.0.1 in front of `opts.upstream`.
 * Upstream connection errors are answered 502 (before headers) or by destroying the client
 * connection (mid-body), as a real load balancer would.
 */
export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxyHandle> {
  const upstream = new URL(opts.upstream.url);
  const agent = new Agent({ keepAlive: true, maxSockets: 64 });
  const rules: FaultRules = {
    fail: [],
    ignoreRange: false,
    redirectBlobsTo: null,
    cutAfterBytes: null,
    hold: null,
    ...opts.rules,
  };
  const stats: ProxyStats = {
    requests: new Map(),
    bytesSent: new Map(),
    ranges: [],
    log: [],
    inFlight: new Map(),
    peakInFlight: new Map(),
  };
  const blobStorage = await startBlobStorage({ upstream: opts.upstream });

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const hold = rules.hold;
    if (
      hold &&
      (hold.method === undefined || hold.method === req.method) &&
      hold.path.test(new URL(req.url ?? '/', 'http://proxy.invalid').pathname)
    ) {
      req.pause();
      const go = () => {
        if (!res.destroyed) serve(req, res);
      };
      hold.until.then(go, go);
      return;
    }
    serve(req, res);
  };

  const serve = (req: IncomingMessage, res: ServerResponse): void => {
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://proxy.invalid').pathname;
    const range = typeof req.headers.range === 'string' ? req.headers.range : undefined;
    const entry: ProxyLogEntry = { method, path, range, status: 0, bytes: 0, fault: undefined };
    stats.log.push(entry);
    stats.requests.set(path, (stats.requests.get(path) ?? 0) + 1);
    if (range !== undefined) stats.ranges.push({ path, range });
    const open = (stats.inFlight.get(path) ?? 0) + 1;
    stats.inFlight.set(path, open);
    stats.peakInFlight.set(path, Math.max(stats.peakInFlight.get(path) ?? 0, open));
    res.once('close', () => {
      stats.inFlight.set(path, (stats.inFlight.get(path) ?? 1) - 1);
    });

    const writeHead = (status: number, headers: OutgoingHttpHeaders): void => {
      entry.status = status;
      res.writeHead(status, headers);
    };
    const countBytes = (n: number): void => {
      entry.bytes += n;
      stats.bytesSent.set(path, (stats.bytesSent.get(path) ?? 0) + n);
    };

    // 1. Injected error statuses.
    const failRule = rules.fail.find(
      (r) => (r.method === undefined || r.method === method) && r.path.test(path) && (r.hits ?? 0) < r.times,
    );
    if (failRule) {
      failRule.hits = (failRule.hits ?? 0) + 1;
      entry.fault = 'fail';
      req.resume(); // drain any request body so the connection stays usable
      const body =
        failRule.body ??
        JSON.stringify({
          errors: [
            {
              code: failRule.status === 429 ? 'TOOMANYREQUESTS' : 'UNAVAILABLE',
              message: `fault proxy: injected ${failRule.status}`,
            },
          ],
        });
      const headers: OutgoingHttpHeaders = {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(body),
      };
      if (failRule.retryAfterSeconds !== undefined)
        headers['Retry-After'] = String(failRule.retryAfterSeconds);
      writeHead(failRule.status, headers);
      if (method !== 'HEAD') countBytes(Buffer.byteLength(body));
      res.end(method === 'HEAD' ? undefined : body);
      return;
    }

    const outHeaders = stripHopByHop(req.headers);
    const ignore = rules.ignoreRange;
    if (range !== undefined && (ignore === true || (ignore instanceof RegExp && ignore.test(path)))) {
      delete outHeaders.range;
      delete outHeaders['if-range'];
      entry.fault = 'ignoreRange';
    }

    const blob = method === 'GET' ? BLOB_GET_RE.exec(path) : null;
    const redirectTo = rules.redirectBlobsTo;
    const cut = rules.cutAfterBytes;
    const cutThis =
      cut !== null &&
      (cut.method === undefined || cut.method === method) &&
      (cut.path === undefined || cut.path.test(path)) &&
      (cut.hits ?? 0) < (cut.times ?? Number.POSITIVE_INFINITY);

    const sendUpstreamError = (err: Error): void => {
      if (!res.headersSent) {
        const body = `fault proxy: upstream error: ${err.message}\n`;
        writeHead(502, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
        countBytes(Buffer.byteLength(body));
        res.end(body);
      } else {
        res.destroy();
      }
    };
    // 2. Redirect blob GETs to the blob storage (after the upstream accepted the request).
    if (blob && redirectTo !== null) {
      const head = request({
        host: upstream.hostname,
        port: upstream.port,
        method: 'HEAD',
        path: req.url,
        headers: outHeaders,
        agent,
      });
      head.on('response', (up) => {
        up.resume();
        req.resume();
        // 206: the client asked for a range; the storage serves ranges too.
        if (up.statusCode === 200 || up.statusCode === 206) {
          entry.fault = 'redirect';
          const sig = randomBytes(12).toString('hex');
          writeHead(307, {
            Location: `${redirectTo}/storage/${blob[1]}/${blob[2]}?sig=${sig}`,
            'Content-Length': 0,
          });
          res.end();
        } else {
          // Relay the refusal (401 challenge, 404) without the HEAD's body length.
          const headers = stripHopByHop(up.headers);
          delete headers['content-length'];
          delete headers['transfer-encoding'];
          writeHead(up.statusCode ?? 502, { ...headers, 'Content-Length': 0 });
          res.end();
        }
      });
      head.on('error', (err) => sendUpstreamError(err));
      head.end();
      return;
    }

    // 3. Pass through, streaming, with optional cut.
    const upReq = request({
      host: upstream.hostname,
      port: upstream.port,
      method,
      path: req.url,
      headers: outHeaders,
      agent,
    });
    upReq.on('error', sendUpstreamError);
    req.pipe(upReq);
    res.on('close', () => {
      if (!res.writableFinished) upReq.destroy();
    });
    upReq.on('response', (up) => {
      writeHead(up.statusCode ?? 502, stripHopByHop(up.headers));
      let cutLeft = cutThis && method !== 'HEAD' ? cut.bytes : Number.POSITIVE_INFINITY;
      if (cutLeft !== Number.POSITIVE_INFINITY) cut!.hits = (cut!.hits ?? 0) + 1;
      const cutNow = (): void => {
        entry.fault = 'cut';
        up.destroy();
        res.flushHeaders();
        // end() flushes what was written (headers and the allowed bytes) and sends FIN, so the
        // client gets a short body on a closed connection; destroy() alone could drop them.
        const sock = res.socket;
        if (sock) {
          sock.once('finish', () => sock.destroy());
          sock.end();
        }
      };
      if (cutLeft === 0) {
        countBytes(0);
        cutNow();
        return;
      }
      up.on('data', (chunk: Buffer) => {
        if (chunk.length >= cutLeft) {
          const part = chunk.subarray(0, cutLeft);
          countBytes(part.length);
          cutLeft = 0;
          res.write(part);
          cutNow();
          return;
        }
        cutLeft -= chunk.length;
        countBytes(chunk.length);
        if (!res.write(chunk)) {
          up.pause();
          res.once('drain', () => up.resume());
        }
      });
      up.on('end', () => {
        if (cutLeft !== 0) res.end();
      });
      up.on('error', () => res.destroy());
    });
  };

  const server = createServer(handle);
  server.keepAliveTimeout = 30_000;
  const listenHost = opts.listenHost ?? '127.0.0.1';
  const port = await listen(server, opts.port ?? 0, listenHost);

  return {
    host: `${listenHost}:${port}`,
    url: `http://${listenHost}:${port}`,
    credentials: opts.upstream.credentials,
    rules,
    stats,
    blobStorage,
    count(pathRe: RegExp, method?: string): number {
      return stats.log.filter((e) => pathRe.test(e.path) && (method === undefined || e.method === method))
        .length;
    },
    bytes(pathRe: RegExp): number {
      let n = 0;
      for (const [p, b] of stats.bytesSent) if (pathRe.test(p)) n += b;
      return n;
    },
    resetStats(): void {
      stats.requests.clear();
      stats.bytesSent.clear();
      stats.ranges.length = 0;
      stats.log.length = 0;
      stats.peakInFlight = new Map(stats.inFlight);
      blobStorage.requests.length = 0;
      for (const r of rules.fail) r.hits = 0;
      if (rules.cutAfterBytes) rules.cutAfterBytes.hits = 0;
    },
    async stop(): Promise<void> {
      await closeServer(server);
      agent.destroy();
      await blobStorage.stop();
    },
  };
}
