/**
 * The webhook receiver's HTTP server: answers only `<basePath>/…` (anything else is 404
 * JSON) and bounds what any number of senders can make it hold:
 *
 * - at most `maxConnections` sockets; beyond that new connections are closed at accept
 *   (counted in `kprw_webhook_connections_dropped_total`) before a byte is parsed;
 * - headers must arrive within `headersTimeoutMs` and the whole request within that plus
 *   `bodyTimeoutMs` (checked every second, not every 30 s as Node's default would);
 * - bodies being read hold a reservation in one `BodyBudget` (`maxInflightBodyBytes`),
 *   shared by every handler this server builds, so a configuration reload does not double
 *   it.
 *
 * `reload(options)` swaps in a handler built from new options (new sources, rotated
 * secrets) without dropping a connection; a configuration the builder refuses leaves the
 * running handler in place.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { BodyBudget, DEFAULT_MAX_INFLIGHT_BODY_BYTES } from './body-budget.js';
import { positiveInt } from './config.js';
import {
  createWebhookHandler,
  type WebhookDeps,
  type WebhookHandler,
  type WebhookOptions,
} from './handler.js';
import { getOrCreateCounter, getOrCreateGauge } from './metrics.js';

export interface WebhookServerOptions extends WebhookOptions {
  /** Listen address. Default `0.0.0.0` (the webhook Service targets the pod). */
  host?: string;
  /** Listen port; 0 picks a free one. Default 8080 (plain HTTP; TLS terminates at the Ingress). */
  port?: number;
  /** Time a client may take to send all headers, ms. Default 10 000 (slowloris guard). */
  headersTimeoutMs?: number;
  /** Keep-alive idle timeout, ms. Default 5000. */
  keepAliveTimeoutMs?: number;
  /** Open connections at most; more are closed at accept. Default 256. */
  maxConnections?: number;
  /** Bytes all request bodies being read may hold together (see BodyBudget). Default 16 MiB. */
  maxInflightBodyBytes?: number;
}

export interface WebhookServer {
  /** The handler serving right now (replaced by `reload`). */
  readonly handler: WebhookHandler;
  /** The body budget every handler of this server shares. */
  readonly budget: BodyBudget;
  /** Starts listening; resolves with the bound address. `signal` aborting closes the server. */
  start(signal?: AbortSignal): Promise<AddressInfo>;
  /**
   * Builds a handler from `options` and routes new deliveries to it; the previous handler
   * finishes what it is reading and dispatching (up to `drainTimeoutMs`, default 10 s) in
   * the background. Throws PW_ERR_INVALID_CONFIG, keeping the running handler, when the
   * options are refused.
   */
  reload(options: WebhookOptions, drainTimeoutMs?: number): void;
  /** Stops accepting, drains dispatches (up to `timeoutMs`, default 10 s), closes connections. */
  close(timeoutMs?: number): Promise<void>;
}

export function createWebhookServer(deps: WebhookDeps, options: WebhookServerOptions): WebhookServer {
  // The server-level keys; the rest is the (reloadable) handler's.
  const {
    host,
    port,
    headersTimeoutMs,
    keepAliveTimeoutMs,
    maxConnections,
    maxInflightBodyBytes,
    ...handlerOptions
  } = options;
  const budget =
    deps.bodyBudget ??
    new BodyBudget({
      maxBytes: positiveInt(maxInflightBodyBytes ?? DEFAULT_MAX_INFLIGHT_BODY_BYTES, 'maxInflightBodyBytes'),
    });
  const handlerDeps: WebhookDeps = { ...deps, bodyBudget: budget };
  let handler = createWebhookHandler(handlerDeps, handlerOptions);
  const retiring = new Set<Promise<unknown>>();

  const server: Server = createServer(
    // Node checks headersTimeout/requestTimeout on this interval; its default of 30 s would
    // let a slow sender hold a connection three times longer than configured.
    { connectionsCheckingInterval: 1000 },
    (req, res) => handler.handle(req, res),
  );
  server.headersTimeout = positiveInt(headersTimeoutMs ?? 10_000, 'headersTimeoutMs');
  server.requestTimeout = (options.bodyTimeoutMs ?? 10_000) + server.headersTimeout;
  server.keepAliveTimeout = keepAliveTimeoutMs ?? 5000;
  server.maxConnections = positiveInt(maxConnections ?? 256, 'maxConnections');

  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  const dropped = getOrCreateCounter(
    deps.metrics,
    'kprw_webhook_connections_dropped_total',
    'Connections closed at accept because maxConnections were open',
    [],
  );
  server.on('drop', () => dropped.inc());
  getOrCreateGauge(deps.metrics, 'kprw_webhook_connections', 'Open webhook connections', () => sockets.size);
  getOrCreateGauge(
    deps.metrics,
    'kprw_webhook_inflight_body_bytes',
    'Bytes reserved by webhook request bodies being read',
    () => budget.used,
  );

  let closed: Promise<void> | undefined;
  const close = (timeoutMs = 10_000): Promise<void> => {
    closed ??= (async () => {
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await Promise.all([handler.close(timeoutMs), ...retiring]);
      server.closeAllConnections();
      await stopped;
    })();
    return closed;
  };

  return {
    get handler() {
      return handler;
    },
    budget,
    start: (signal) =>
      new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: host ?? '0.0.0.0', port: port ?? 8080 }, () => {
          server.off('error', reject);
          signal?.addEventListener('abort', () => void close(), { once: true });
          resolve(server.address() as AddressInfo);
        });
      }),
    reload: (next, drainTimeoutMs = 10_000) => {
      const fresh = createWebhookHandler(handlerDeps, next);
      const old = handler;
      handler = fresh;
      const done = old.close(drainTimeoutMs).finally(() => retiring.delete(done));
      retiring.add(done);
    },
    close,
  };
}
