import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

/** A named readiness or liveness check: resolves to undefined when fine, or a reason. */
export type HealthCheck = () => Promise<string | undefined> | string | undefined;

export interface HealthServerOptions {
  host: string;
  port: number;
  registry: Registry;
  /** All must pass for `/readyz` to answer 200. */
  readiness: Record<string, HealthCheck>;
  /** All must pass for `/healthz` to answer 200 (keep these cheap and local). */
  liveness: Record<string, HealthCheck>;
  /** Bound on each check. Default 2 s. */
  checkTimeoutMs?: number;
}

/**
 * The agent's operational HTTP endpoint: `GET /metrics` (Prometheus text), `/healthz`
 * (liveness: the process is not wedged) and `/readyz` (readiness: the store is scanned,
 * Redis answers, the worker is running, not shutting down). Both health endpoints
 * answer JSON `{ok, checks: {name: 'ok' | reason}}` with 200 or 503.
 */
export class HealthServer {
  readonly #opts: HealthServerOptions;
  #server: Server | undefined;
  #address: AddressInfo | undefined;

  constructor(opts: HealthServerOptions) {
    this.#opts = opts;
  }

  /** `host:port` actually bound (port 0 picks a free one). */
  get address(): AddressInfo | undefined {
    return this.#address;
  }

  async start(): Promise<AddressInfo> {
    const server = createServer((req, res) => {
      const path = new URL(req.url ?? '/', 'http://agent.invalid').pathname;
      const send = (status: number, type: string, body: string) => {
        res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : body);
      };
      if (req.method !== 'GET' && req.method !== 'HEAD')
        return send(405, 'text/plain', 'method not allowed\n');
      const respond = async () => {
        if (path === '/metrics') {
          const text = await this.#opts.registry.metrics();
          return send(200, this.#opts.registry.contentType, text);
        }
        if (path === '/healthz' || path === '/readyz') {
          const checks = path === '/healthz' ? this.#opts.liveness : this.#opts.readiness;
          const results = await this.#run(checks);
          const ok = Object.values(results).every((r) => r === 'ok');
          return send(ok ? 200 : 503, 'application/json', `${JSON.stringify({ ok, checks: results })}\n`);
        }
        send(404, 'text/plain', 'not found\n');
      };
      respond().catch((err: unknown) => {
        if (!res.headersSent) send(500, 'text/plain', `${String((err as Error)?.message ?? err)}\n`);
        else res.destroy();
      });
    });
    server.keepAliveTimeout = 5_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#opts.port, this.#opts.host, () => resolve());
    });
    this.#server = server;
    this.#address = server.address() as AddressInfo;
    return this.#address;
  }

  async #run(checks: Record<string, HealthCheck>): Promise<Record<string, string>> {
    const timeout = this.#opts.checkTimeoutMs ?? 2_000;
    const entries = await Promise.all(
      Object.entries(checks).map(async ([name, check]) => {
        let timer: NodeJS.Timeout | undefined;
        try {
          const r = await Promise.race([
            Promise.resolve().then(check),
            new Promise<string>((resolve) => {
              timer = setTimeout(() => resolve(`no answer within ${timeout} ms`), timeout);
            }),
          ]);
          return [name, r ?? 'ok'] as const;
        } catch (err) {
          return [name, String((err as Error)?.message ?? err)] as const;
        } finally {
          clearTimeout(timer);
        }
      }),
    );
    return Object.fromEntries(entries);
  }

  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
