/**
 * The operator's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (the process is
 * alive), `/readyz` (caches synced and Redis reachable: safe to receive webhooks), and
 * anything a mounted handler claims (the registry webhooks under `/webhooks`).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

export interface Readiness {
  ready: boolean;
  /** Why not, for the 503 body. */
  reasons: string[];
}

export interface MountedHandler {
  matches(url: string | undefined): boolean;
  handle(req: IncomingMessage, res: ServerResponse): void;
}

export interface OperatorHttpOptions {
  host: string;
  port: number;
  metrics: Registry;
  readiness: () => Readiness | Promise<Readiness>;
  mounts?: MountedHandler[];
}

export class OperatorHttpServer {
  readonly #server: Server;
  readonly #opts: OperatorHttpOptions;

  constructor(opts: OperatorHttpOptions) {
    this.#opts = opts;
    this.#server = createServer((req, res) => void this.#route(req, res));
    // Slow-client guards: the endpoint may be reachable from outside (webhooks).
    this.#server.headersTimeout = 10_000;
    this.#server.requestTimeout = 30_000;
    this.#server.keepAliveTimeout = 5_000;
  }

  async #route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      for (const m of this.#opts.mounts ?? []) {
        if (m.matches(req.url)) {
          m.handle(req, res);
          return;
        }
      }
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        send(res, 405, 'text/plain', 'method not allowed\n');
        return;
      }
      if (path === '/healthz' || path === '/livez') {
        send(res, 200, 'text/plain', 'ok\n');
      } else if (path === '/readyz') {
        const r = await this.#opts.readiness();
        send(res, r.ready ? 200 : 503, 'application/json', `${JSON.stringify(r)}\n`);
      } else if (path === '/metrics') {
        send(res, 200, this.#opts.metrics.contentType, await this.#opts.metrics.metrics());
      } else {
        send(res, 404, 'text/plain', 'not found\n');
      }
    } catch (err) {
      if (!res.headersSent) send(res, 500, 'text/plain', `${(err as Error).message}\n`);
      else res.destroy();
    }
  }

  start(): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host: this.#opts.host, port: this.#opts.port }, () => {
        this.#server.off('error', reject);
        resolve(this.#server.address() as AddressInfo);
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeIdleConnections();
      setTimeout(() => this.#server.closeAllConnections(), 2_000).unref();
    });
  }
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}
