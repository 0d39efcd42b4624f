/**
 * The only outbound HTTP the webhooks ever make, and only when an operator configured it:
 * fetching an SNS signing certificate or visiting an SNS SubscribeURL. Both URLs come from
 * a payload, so the URL must be https, carry no credentials, and name a host:port that is
 * exactly on the configured allow-list; no redirects are followed and the answer is capped.
 */
import { Agent, request } from 'undici';
import { forbidden } from '../errors.js';

export interface OutboundOptions {
  /** Exact `host` or `host:port` values allowed (e.g. `sns.us-east-1.amazonaws.com`). */
  allowedHosts: string[];
  /** Extra CA certificates (PEM) to trust, for private endpoints and tests. Default: the system's. */
  ca?: string;
  /** Whole-request timeout, ms. Default 5000. */
  timeoutMs?: number;
}

export class OutboundFetcher {
  readonly #allowed: ReadonlySet<string>;
  readonly #timeoutMs: number;
  readonly #agent: Agent | undefined;

  constructor(opts: OutboundOptions) {
    this.#allowed = new Set(opts.allowedHosts.map((h) => h.toLowerCase()));
    this.#timeoutMs = opts.timeoutMs ?? 5000;
    this.#agent = opts.ca === undefined ? undefined : new Agent({ connect: { ca: opts.ca } });
  }

  /** Throws 403 unless `raw` is an https URL on the allow-list; returns the parsed URL. */
  check(raw: string, what: string): URL {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw forbidden(`${what} is not a URL`);
    }
    if (
      url.protocol !== 'https:' ||
      url.username !== '' ||
      url.password !== '' ||
      !this.#allowed.has(url.host.toLowerCase())
    ) {
      throw forbidden(`${what} host ${JSON.stringify(url.host)} is not on the allow-list (or not https)`);
    }
    return url;
  }

  /** GETs `url` (already checked) and returns the body as text; rejects on non-200 or over `maxBytes`. */
  async getText(url: URL, maxBytes: number, signal: AbortSignal): Promise<string> {
    const res = await request(url, {
      method: 'GET',
      signal: AbortSignal.any([signal, AbortSignal.timeout(this.#timeoutMs)]),
      ...(this.#agent === undefined ? {} : { dispatcher: this.#agent }),
    });
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new Error(`GET ${url.origin}${url.pathname} answered ${res.statusCode}`);
    }
    const parts: Buffer[] = [];
    let n = 0;
    for await (const chunk of res.body) {
      n += (chunk as Buffer).byteLength;
      if (n > maxBytes) {
        res.body.destroy();
        throw new Error(`GET ${url.origin}${url.pathname}: answer exceeds ${maxBytes} bytes`);
      }
      parts.push(chunk as Buffer);
    }
    return Buffer.concat(parts).toString('utf8');
  }

  async close(): Promise<void> {
    await this.#agent?.close();
  }
}
