import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import { type MirrorHttpError, ociErrorBody } from './oci-errors.js';

export const API_VERSION_HEADER = { 'Docker-Distribution-API-Version': 'registry/2.0' };

/** Sends a complete answer (headers and an optional body). */
export function send(
  res: ServerResponse,
  status: number,
  headers: Record<string, string>,
  body: string | Buffer | undefined,
): void {
  res.writeHead(status, { ...API_VERSION_HEADER, ...headers });
  res.end(body);
}

/** Sends an OCI error answer (no body for HEAD). */
export function sendOciError(res: ServerResponse, e: MirrorHttpError, method: string): void {
  const extra: Record<string, string> = { ...e.headers };
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

export interface HttpListenerOptions {
  /** `host:port` (`[v6]:port`); port 0 picks a free port. */
  listen: string;
  keepAliveTimeoutMs: number;
  closeGraceMs: number;
  logger: Logger;
  /** For logs: `mirror`, `peer listener`. */
  name: string;
}

/**
 * An HTTP/1.1 server with the lifecycle both of the agent's listeners need: `start()`
 * binds, `close()` stops accepting, lets responses finish for `closeGraceMs`, then aborts
 * `closing` and cuts the connections. A handler that throws destroys its connection.
 */
export class HttpListener {
  readonly #opts: HttpListenerOptions;
  readonly #listen: { host: string; port: number };
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #closing = new AbortController();
  #address: string | undefined;
  #closed: Promise<void> | undefined;

  /** Throws PW_ERR_INVALID_CONFIG for a malformed `listen`. */
  constructor(
    handler: (req: IncomingMessage, res: ServerResponse) => Promise<void>,
    opts: HttpListenerOptions,
  ) {
    this.#opts = opts;
    this.#listen = parseListen(opts.listen);
    this.#server = createServer((req, res) => {
      handler(req, res).catch((err: unknown) => {
        opts.logger.error({ err }, `${opts.name} handler failed`);
        res.destroy();
      });
    });
    this.#server.keepAliveTimeout = opts.keepAliveTimeoutMs;
    this.#server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.once('close', () => this.#sockets.delete(s));
    });
  }

  /** Aborted when the listener closes (after the grace period, or at the end of `close()`). */
  get closing(): AbortSignal {
    return this.#closing.signal;
  }

  /** `host:port` actually bound (after `start()`). */
  get address(): string {
    if (!this.#address) throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `${this.#opts.name} not started`);
    return this.#address;
  }

  /** Binds; resolves with the bound `host:port`. Throws the listen error (EADDRINUSE…) as is. */
  async start(): Promise<string> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#listen.port, this.#listen.host, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    const a = this.#server.address() as AddressInfo;
    this.#address = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
    return this.#address;
  }

  /** Idempotent; see the class comment. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      const done = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      this.#server.closeIdleConnections();
      const grace = setTimeout(() => {
        this.#closing.abort(new PrewarmError(ErrorCodes.ABORTED, `${this.#opts.name} closing`));
        for (const s of this.#sockets) s.destroy();
      }, this.#opts.closeGraceMs);
      await done;
      clearTimeout(grace);
      this.#closing.abort(new PrewarmError(ErrorCodes.ABORTED, `${this.#opts.name} closed`));
    })();
    return this.#closed;
  }
}
