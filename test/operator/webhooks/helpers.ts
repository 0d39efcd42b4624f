/**
 * Shared set-up for the webhook tests: a real HTTP server (createWebhookServer on
 * 127.0.0.1:0) with a fixed clock, a recording `onPush`, and small HTTP/metrics helpers.
 */
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { Registry } from 'prom-client';
import {
  createWebhookServer,
  type DedupStore,
  MemoryDedupStore,
  type PushEvent,
  silentLogger,
  type WebhookDeps,
  type WebhookServer,
  type WebhookServerOptions,
} from '../../../operator/src/webhooks/index.js';
import { waitUntil } from '../../harness/process.js';

/** The tests' clock: one minute after the fixtures' pushes. */
export const NOW = Date.parse('2024-05-14T09:31:00Z');
export const NOW_ISO = new Date(NOW).toISOString();

const FIXTURES = new URL('../../fixtures/webhooks/', import.meta.url);

/** Raw bytes of `test/fixtures/webhooks/<path>`. */
export function fixture(path: string): Buffer {
  return readFileSync(new URL(path, FIXTURES));
}

export function fixtureJson(path: string): Record<string, unknown> {
  return JSON.parse(fixture(path).toString('utf8')) as Record<string, unknown>;
}

export interface Response {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json: Record<string, unknown> & { error?: { code: string; message: string; source: string } };
}

export interface PostOptions {
  contentType?: string | null;
  headers?: Record<string, string>;
  query?: Record<string, string>;
  method?: string;
  /** Send this Content-Length header instead of the real one (and let the socket close). */
  path?: string;
}

export interface Harness {
  readonly base: string;
  readonly port: number;
  readonly server: WebhookServer;
  readonly events: PushEvent[];
  readonly registry: Registry;
  readonly dedup: DedupStore;
  /** Sends a request to `<basePath>/<source>` (or `opts.path`). */
  post(source: string, body: Buffer | string, opts?: PostOptions): Promise<Response>;
  /** Resolves once no dispatch is queued or running. */
  settle(): Promise<void>;
  /** Current value of a counter with exactly these labels (0 when never incremented). */
  counter(name: string, labels: Record<string, string>): Promise<number>;
  close(): Promise<void>;
}

export interface HarnessOptions {
  options: WebhookServerOptions;
  onPush?: WebhookDeps['onPush'];
  dedup?: DedupStore;
  now?: () => number;
}

export async function startHarness(h: HarnessOptions): Promise<Harness> {
  const events: PushEvent[] = [];
  const registry = new Registry();
  const dedup = h.dedup ?? new MemoryDedupStore({ now: h.now ?? (() => NOW) });
  const server = createWebhookServer(
    {
      onPush:
        h.onPush ??
        (async (e) => {
          events.push(e);
        }),
      dedup,
      logger: silentLogger(),
      metrics: registry,
      now: h.now ?? (() => NOW),
    },
    { host: '127.0.0.1', port: 0, ...h.options },
  );
  const addr = await server.start();
  const basePath = server.handler.basePath;
  return {
    base: `http://127.0.0.1:${addr.port}${basePath}`,
    port: addr.port,
    server,
    events,
    registry,
    dedup,
    post: (source, body, opts = {}) => send(addr.port, opts.path ?? `${basePath}/${source}`, body, opts),
    settle: () =>
      waitUntil('webhook dispatches to finish', async () => server.handler.pending === 0, {
        timeoutMs: 10_000,
      }),
    counter: async (name, labels) => {
      const metric = registry.getSingleMetric(name);
      if (metric === undefined) return 0;
      const { values } = await metric.get();
      const want = Object.entries(labels);
      const hit = values.find(
        (v) => want.every(([k, val]) => v.labels[k] === val) && Object.keys(v.labels).length === want.length,
      );
      return hit?.value ?? 0;
    },
    close: () => server.close(5000),
  };
}

/** A plain node:http request (no client-side magic around bodies and content types). */
export function send(
  port: number,
  path: string,
  body: Buffer | string,
  opts: PostOptions = {},
): Promise<Response> {
  const buf = typeof body === 'string' ? Buffer.from(body) : body;
  const qs = opts.query ? `?${new URLSearchParams(opts.query).toString()}` : '';
  const headers: Record<string, string> = {
    'Content-Length': String(buf.byteLength),
    ...(opts.headers ?? {}),
  };
  if (opts.contentType !== null) headers['Content-Type'] = opts.contentType ?? 'application/json';
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path: path + qs, method: opts.method ?? 'POST', headers },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: Response['json'] = {};
          try {
            json = JSON.parse(text) as Response['json'];
          } catch {
            // Non-JSON answers are asserted on by status/body in the tests.
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text, json });
        });
        res.on('error', reject);
      },
    );
    // The server may answer (413, 401) and close before the whole body is written.
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err);
    });
    req.end(buf);
  });
}

/** Asserts the shape every rejection has, and returns its code. */
export function errorCode(r: Response): string | undefined {
  return r.json.error?.code;
}
