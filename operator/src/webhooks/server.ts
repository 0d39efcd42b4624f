/**
 * A standalone HTTP server for the webhooks, for when the operator does not mount the
 * handler on a server of its own. Answers only `<basePath>/…`; anything else is 404 JSON.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  createWebhookHandler,
  type WebhookDeps,
  type WebhookHandler,
  type WebhookOptions,
} from './handler.js';

export interface WebhookServerOptions extends WebhookOptions {
  /** Listen address. Default `0.0.0.0` (the webhook Service targets the pod). */
  host?: string;
  /** Listen port; 0 picks a free one. Default 8080 (plain HTTP; TLS terminates at the Ingress). */
  port?: number;
  /** Time a client may take to send all headers, ms. Default 10 000 (slowloris guard). */
  headersTimeoutMs?: number;
  /** Keep-alive idle timeout, ms. Default 5000. */
  keepAliveTimeoutMs?: number;
}

export interface WebhookServer {
  readonly handler: WebhookHandler;
  /** Starts listening; resolves with the bound address. `signal` aborting closes the server. */
  start(signal?: AbortSignal): Promise<AddressInfo>;
  /** Stops accepting, drains dispatches (up to `timeoutMs`, default 10 s), closes connections. */
  close(timeoutMs?: number): Promise<void>;
}

export function createWebhookServer(deps: WebhookDeps, options: WebhookServerOptions): WebhookServer {
  const { host, port, headersTimeoutMs, keepAliveTimeoutMs, ...handlerOptions } = options;
  const handler = createWebhookHandler(deps, handlerOptions);
  // The handler answers 404 JSON for paths outside its base path too.
  const server: Server = createServer((req, res) => handler.handle(req, res));
  server.headersTimeout = headersTimeoutMs ?? 10_000;
  server.requestTimeout = (options.bodyTimeoutMs ?? 10_000) + server.headersTimeout;
  server.keepAliveTimeout = keepAliveTimeoutMs ?? 5000;
  let closed: Promise<void> | undefined;

  const close = (timeoutMs = 10_000): Promise<void> => {
    closed ??= (async () => {
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await handler.close(timeoutMs);
      server.closeAllConnections();
      await stopped;
    })();
    return closed;
  };

  return {
    handler,
    start: (signal) =>
      new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: host ?? '0.0.0.0', port: port ?? 8080 }, () => {
          server.off('error', reject);
          signal?.addEventListener('abort', () => void close(), { once: true });
          resolve(server.address() as AddressInfo);
        });
      }),
    close,
  };
}
