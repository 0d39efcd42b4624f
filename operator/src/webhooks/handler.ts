/**
 * The webhook router: `POST <basePath>/<source>` for every configured source, one shared
 * pipeline in front of the source modules:
 *
 *   method → content type → header credentials (shared secrets, query tokens, OIDC JWT)
 *   → room in the body budget → body (per-source size limit, time) → source (signature,
 *   parse, replay window) → untagged filter → backlog room → dedup claim → 202 → onPush,
 *   asynchronously
 *
 * Nothing is buffered for a sender that a header could have refused: a source that can
 * authenticate from headers does so before the body is read, and every body read holds a
 * reservation in a process-wide `BodyBudget` until the delivery is answered.
 *
 * Every rejection is a JSON 4xx/5xx body (see errors.ts) and dispatches nothing. A 202
 * means "authenticated and parsed"; whether any ImagePrewarm cares is `onPush`'s
 * business and shows only in the metrics (`unwatched`).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import { BodyBudget, DEFAULT_MAX_INFLIGHT_BODY_BYTES } from './body-budget.js';
import { checkKnownKeys, checkSecrets, nonNegativeInt, positiveInt } from './config.js';
import type { DedupStore } from './dedup-store.js';
import { Dispatcher } from './dispatcher.js';
import { isWebhookError, WebhookError, WebhookErrorCodes } from './errors.js';
import { checkContentType, headerValue, readBody } from './http-body.js';
import type { WebhookLogger } from './logger.js';
import { WebhookMetrics } from './metrics.js';
import type { PushDispatchResult, PushEvent, WebhookSourceName } from './push-event.js';
import { type AcrSourceOptions, acrSource } from './sources/acr.js';
import { type DistributionSourceOptions, distributionSource } from './sources/distribution.js';
import { type DockerHubSourceOptions, dockerHubSource } from './sources/dockerhub.js';
import { type EcrEventBridgeSourceOptions, ecrEventBridgeSource } from './sources/ecr.js';
import { type GcrPubSubSourceOptions, gcrPubSubSource } from './sources/gcr.js';
import { type GitHubSourceOptions, gitHubSource } from './sources/github.js';
import { type HarborSourceOptions, harborSource } from './sources/harbor.js';
import { type EcrSnsSourceOptions, ecrSnsSource } from './sources/sns.js';
import {
  BODY_AUTH_DEFAULT_MAX_BYTES,
  type HeaderContext,
  type SourceContext,
  type SourceEvent,
  type SourceOutcome,
  type WebhookSource,
} from './sources/source.js';

/** Which sources are enabled, each with its credentials. Omitted sources answer 404. */
export interface WebhookSourcesOptions {
  /** Azure Container Registry webhooks, at `<basePath>/acr`. */
  acr?: AcrSourceOptions;
  /** Amazon ECR via an EventBridge API destination, at `<basePath>/ecr`. */
  ecr?: EcrEventBridgeSourceOptions;
  /** Amazon ECR via EventBridge → SNS topic → HTTPS subscription, at `<basePath>/ecr-sns`. */
  ecrSns?: EcrSnsSourceOptions;
  /** Google Artifact Registry / Container Registry via Pub/Sub push, at `<basePath>/gcr`. */
  gcr?: GcrPubSubSourceOptions;
  /** CNCF distribution notifications (also GitLab's registry), at `<basePath>/distribution`. */
  distribution?: DistributionSourceOptions;
  /** Harbor project webhooks, at `<basePath>/harbor`. */
  harbor?: HarborSourceOptions;
  /** Docker Hub repository webhooks, at `<basePath>/dockerhub?token=…`. */
  dockerhub?: DockerHubSourceOptions;
  /** GitHub `package` events (GHCR), at `<basePath>/github`. */
  github?: GitHubSourceOptions;
}

export interface WebhookOptions {
  sources: WebhookSourcesOptions;
  /** URL path prefix. Default `/webhooks`. */
  basePath?: string;
  /**
   * Largest body read from an authenticated sender, bytes. Default 1 MiB (registry push
   * payloads are a few KiB). Sources that authenticate by the body (github, ecrSns) default
   * to the smaller of this and 64 KiB; every source takes its own `maxBodyBytes` too.
   */
  maxBodyBytes?: number;
  /** Time allowed for the whole body to arrive, ms. Default 10 000. */
  bodyTimeoutMs?: number;
  /**
   * Replay window: events whose own timestamp is older are refused (or, inside a
   * distribution envelope, dropped). Default 3600 s; ECR (EventBridge retries for 24 h)
   * and GCR (Pub/Sub retries for days) default to 86 400 s. Per-source options override.
   */
  maxEventAgeSeconds?: number;
  /** How far in the future an event's timestamp may be. Default 300 s. */
  maxClockSkewSeconds?: number;
  /**
   * How long an event id is remembered. Must cover the longest replay window plus the
   * clock skew, or a replay could slip in after its id is forgotten; default is exactly
   * that plus 10 minutes.
   */
  dedupTtlSeconds?: number;
  /** `onPush` calls running at once. Default 4. */
  dispatchConcurrency?: number;
  /** Events waiting for or in dispatch beyond which deliveries get 503. Default 1000. */
  maxPendingEvents?: number;
  /**
   * How long a dedup claim may take before the event is dispatched without it (counted as
   * `dedup_error`), ms. Default 2000: a Redis client that queues commands while reconnecting
   * must not hold the sender's request open.
   */
  dedupTimeoutMs?: number;
  /**
   * Forward pushes that carry no tag (pushes by digest, the child manifests of an index
   * push). Default false: ImagePrewarms watch tags, and an index push then counts once.
   */
  forwardUntagged?: boolean;
}

export interface WebhookDeps {
  /**
   * Called once per accepted, non-duplicate push event, after the sender has its 202.
   * Must match the event against ImagePrewarms and re-resolve the tag itself; the event's
   * digest is an untrusted hint. A rejection is logged, counted as `dispatch_error` and
   * releases the dedup claim so a redelivery can try again.
   */
  // biome-ignore lint/suspicious/noConfusingVoidType: a plain `async (e) => {}` returns Promise<void>, which must fit.
  onPush(event: PushEvent): Promise<void | PushDispatchResult>;
  /** Shared dedup memory: `RedisDedupStore` in the operator, `MemoryDedupStore` in unit tests. */
  dedup: DedupStore;
  /** pino-compatible logger; a child with `{ component: 'webhooks' }` is derived from it. */
  logger: WebhookLogger;
  /** Registry the `kprw_webhook_*` counters are registered on. */
  metrics: Registry;
  /** Clock, ms since the epoch. Default `Date.now` (tests inject a fixed time). */
  now?: () => number;
  /**
   * The process-wide budget for bodies being read. Share one between the handlers a
   * process builds over time (configuration reloads). Default: a budget of its own of
   * 16 MiB.
   */
  bodyBudget?: BodyBudget;
}

export interface WebhookHandler {
  /** The normalised base path, e.g. `/webhooks`. */
  readonly basePath: string;
  /** Enabled sources (each at `<basePath>/<name>`). */
  readonly sources: readonly WebhookSourceName[];
  /** True when `url` (a request's `req.url`) is under `basePath`: mount with `if (h.matches(req.url)) h.handle(req, res)`. */
  matches(url: string | undefined): boolean;
  /** Node request listener for paths under `basePath`. Never throws; answers every request. */
  handle(req: IncomingMessage, res: ServerResponse): void;
  /** Dispatches queued or running. */
  readonly pending: number;
  /** Deliveries being read or processed (not yet answered). */
  readonly inflight: number;
  /**
   * Stops accepting (new deliveries get 503, senders retry elsewhere or later) and waits up
   * to `timeoutMs` (default 10 s) for deliveries being read and for queued dispatches.
   * Resolves true when all finished.
   */
  close(timeoutMs?: number): Promise<boolean>;
}

const SOURCE_DEFAULT_MAX_AGE: Partial<Record<WebhookSourceName, number>> = { ecr: 86_400, gcr: 86_400 };

interface Route {
  source: WebhookSource;
  maxEventAgeMs: number;
  maxBodyBytes: number;
}

/** The per-source settings every source options type has (see SOURCE_OPTION_KEYS). */
interface PerSourceLimits {
  maxEventAgeSeconds?: number | undefined;
  maxBodyBytes?: number | undefined;
}

/**
 * Builds the webhook router. Throws PW_ERR_INVALID_CONFIG (PrewarmError) when a source is
 * configured without credentials, a secret is shorter than 16 characters, or a number
 * option is out of range: a webhook endpoint anyone can call must not start half-configured.
 */
export function createWebhookHandler(deps: WebhookDeps, options: WebhookOptions): WebhookHandler {
  checkKnownKeys(options, WEBHOOK_OPTION_KEYS, 'options');
  checkKnownKeys(options.sources, SOURCE_KEYS, 'sources');
  const basePath = normaliseBasePath(options.basePath ?? '/webhooks');
  const maxBodyBytes = positiveInt(options.maxBodyBytes ?? 1024 * 1024, 'maxBodyBytes');
  const bodyTimeoutMs = positiveInt(options.bodyTimeoutMs ?? 10_000, 'bodyTimeoutMs');
  const defaultMaxAge = positiveInt(options.maxEventAgeSeconds ?? 3600, 'maxEventAgeSeconds');
  const skewSeconds = nonNegativeInt(options.maxClockSkewSeconds ?? 300, 'maxClockSkewSeconds');
  const forwardUntagged = options.forwardUntagged ?? false;
  const dedupTimeoutMs = positiveInt(options.dedupTimeoutMs ?? 2000, 'dedupTimeoutMs');
  const now = deps.now ?? Date.now;
  const log = deps.logger.child({ component: 'webhooks' });
  const metrics = new WebhookMetrics(deps.metrics);

  const budget = deps.bodyBudget ?? new BodyBudget({ maxBytes: DEFAULT_MAX_INFLIGHT_BODY_BYTES });

  const routes = new Map<WebhookSourceName, Route>();
  const add = (source: WebhookSource, limits: PerSourceLimits): void => {
    const seconds = positiveInt(
      limits.maxEventAgeSeconds ?? SOURCE_DEFAULT_MAX_AGE[source.name] ?? defaultMaxAge,
      `${source.name}.maxEventAgeSeconds`,
    );
    const bodyLimit = positiveInt(
      limits.maxBodyBytes ??
        (source.authenticatedBy === 'body'
          ? Math.min(maxBodyBytes, BODY_AUTH_DEFAULT_MAX_BYTES)
          : maxBodyBytes),
      `${source.name}.maxBodyBytes`,
    );
    routes.set(source.name, { source, maxEventAgeMs: seconds * 1000, maxBodyBytes: bodyLimit });
  };
  const s = options.sources;
  for (const [key, known] of Object.entries(SOURCE_OPTION_KEYS)) {
    const o = s[key as keyof WebhookSourcesOptions];
    if (o !== undefined) checkKnownKeys(o, known, `sources.${key}`);
  }
  if (s.acr) add(acrSource(checkSecrets(s.acr, 'acr')), s.acr);
  if (s.ecr) add(ecrEventBridgeSource(checkSecrets(s.ecr, 'ecr')), s.ecr);
  if (s.ecrSns) add(ecrSnsSource(s.ecrSns), s.ecrSns);
  if (s.gcr) add(gcrPubSubSource(s.gcr), s.gcr);
  if (s.distribution) add(distributionSource(checkSecrets(s.distribution, 'distribution')), s.distribution);
  if (s.harbor) add(harborSource(checkSecrets(s.harbor, 'harbor')), s.harbor);
  if (s.dockerhub) add(dockerHubSource(s.dockerhub), s.dockerhub);
  if (s.github) add(gitHubSource(checkSecrets(s.github, 'github')), s.github);

  const longestWindow = Math.max(0, ...[...routes.values()].map((r) => r.maxEventAgeMs / 1000));
  const minTtl = longestWindow + skewSeconds;
  const dedupTtlSeconds = positiveInt(options.dedupTtlSeconds ?? minTtl + 600, 'dedupTtlSeconds');
  if (dedupTtlSeconds < minTtl) {
    throw new PrewarmError(
      ErrorCodes.INVALID_CONFIG,
      `webhooks: dedupTtlSeconds (${dedupTtlSeconds}) must be at least the longest replay window plus clock skew (${minTtl})`,
    );
  }

  const dispatcher = new Dispatcher({
    concurrency: positiveInt(options.dispatchConcurrency ?? 4, 'dispatchConcurrency'),
    maxPending: positiveInt(options.maxPendingEvents ?? 1000, 'maxPendingEvents'),
  });
  const shutdown = new AbortController();
  let closing = false;
  let inflight = 0;
  let inflightIdle: (() => void)[] = [];
  const deliveryDone = (): void => {
    inflight--;
    if (inflight > 0) return;
    const waiters = inflightIdle;
    inflightIdle = [];
    for (const w of waiters) w();
  };
  const inflightDrained = (timeoutMs: number): Promise<boolean> =>
    inflight === 0
      ? Promise.resolve(true)
      : new Promise((resolve) => {
          const timer = setTimeout(() => {
            inflightIdle = inflightIdle.filter((w) => w !== done);
            resolve(false);
          }, timeoutMs);
          const done = (): void => {
            clearTimeout(timer);
            resolve(true);
          };
          inflightIdle.push(done);
        });

  const dispatch = (name: WebhookSourceName, item: SourceEvent): void => {
    dispatcher.run(async () => {
      const elog = log.child({ source: name, eventId: item.event.eventId });
      try {
        const result = await deps.onPush(item.event);
        const unwatched = result !== undefined && result !== null && result.matched === 0;
        metrics.event(name, unwatched ? 'unwatched' : 'dispatched');
        elog.debug(
          {
            registry: item.event.registry,
            repository: item.event.repository,
            tag: item.event.tag,
            unwatched,
          },
          'push event dispatched',
        );
      } catch (err) {
        metrics.event(name, 'dispatch_error');
        elog.error(
          { err, registry: item.event.registry, repository: item.event.repository, tag: item.event.tag },
          'onPush failed',
        );
        await deps.dedup.release(item.dedupKey).catch((relErr: unknown) => {
          elog.warn({ err: relErr }, 'could not release dedup claim after failed dispatch');
        });
      }
    });
  };

  const processDelivery = async (
    req: IncomingMessage,
    res: ServerResponse,
    name: WebhookSourceName,
    route: Route,
  ): Promise<void> => {
    if (req.method !== 'POST') {
      throw new WebhookError(
        WebhookErrorCodes.METHOD_NOT_ALLOWED,
        `${req.method ?? '?'} is not allowed; use POST`,
        {
          headers: { Allow: 'POST' },
        },
      );
    }
    if (closing) throw unavailable('shutting down');
    const { source } = route;
    const query = new URL(req.url ?? '/', 'http://localhost').searchParams;
    checkContentType(req.headers, source.contentTypes);
    const hctx: HeaderContext = {
      headers: req.headers,
      query,
      nowMs: now(),
      maxEventAgeMs: route.maxEventAgeMs,
      maxClockSkewMs: skewSeconds * 1000,
      signal: shutdown.signal,
      log: log.child({ source: name }),
    };
    // Authenticates every sender a header can prove, before a byte of body is read.
    await source.checkHeaders?.(hctx);
    const reservation = budget.tryReserve(
      bodyReservation(req, route.maxBodyBytes),
      source.authenticatedBy === 'headers',
    );
    if (reservation === undefined) throw unavailable('too many request bodies are being read');
    try {
      await receive(req, res, name, route, hctx);
    } finally {
      reservation.release();
    }
  };

  const receive = async (
    req: IncomingMessage,
    res: ServerResponse,
    name: WebhookSourceName,
    route: Route,
    hctx: HeaderContext,
  ): Promise<void> => {
    const body = await readBody(req, route.maxBodyBytes, bodyTimeoutMs);
    const ctx: SourceContext = { ...hctx, body, nowMs: now() };
    const outcome: SourceOutcome = await route.source.handle(ctx);

    let ignored = outcome.ignored;
    const candidates = outcome.events.filter((e) => {
      if (e.event.tag === undefined && !forwardUntagged) {
        ignored++;
        return false;
      }
      return true;
    });
    if (!dispatcher.tryReserve(candidates.length)) {
      throw unavailable(`${dispatcher.pending} push events are waiting for dispatch`);
    }
    let accepted = 0;
    let duplicates = 0;
    for (const item of candidates) {
      let first: boolean;
      try {
        first = await withTimeout(deps.dedup.claim(item.dedupKey, dedupTtlSeconds), dedupTimeoutMs);
      } catch (err) {
        // Fail open: the operator's enqueue is idempotent, a lost push is not recoverable.
        ctx.log.warn({ err }, 'dedup store unavailable; dispatching without deduplication');
        metrics.event(name, 'dedup_error');
        first = true;
      }
      if (first) {
        accepted++;
        dispatch(name, item);
      } else {
        duplicates++;
        dispatcher.unreserve(1);
      }
    }
    metrics.event(name, 'duplicate', duplicates);
    metrics.event(name, 'ignored', ignored);
    metrics.event(name, 'stale', outcome.stale);
    if (accepted + duplicates + ignored + outcome.stale > 0) {
      ctx.log.info({ accepted, duplicates, ignored, stale: outcome.stale }, 'webhook delivery accepted');
    }
    sendJson(res, 202, {
      status: 'accepted',
      source: name,
      accepted,
      duplicates,
      ignored,
      stale: outcome.stale,
      ...(outcome.note === undefined ? {} : { note: outcome.note }),
    });
    metrics.delivery(name, 202);
  };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const name = routeName(req.url, basePath);
    const route = name === undefined ? undefined : routes.get(name as WebhookSourceName);
    if (name === undefined || route === undefined) {
      reject(
        req,
        res,
        'unknown',
        new WebhookError(WebhookErrorCodes.NOT_FOUND, 'no webhook source is configured at this path'),
      );
      return;
    }
    const sourceName = name as WebhookSourceName;
    inflight++;
    processDelivery(req, res, sourceName, route)
      .catch((err: unknown) => reject(req, res, sourceName, err))
      .finally(deliveryDone);
  };

  const reject = (req: IncomingMessage, res: ServerResponse, source: string, err: unknown): void => {
    const werr = isWebhookError(err)
      ? err
      : new WebhookError(WebhookErrorCodes.UNAVAILABLE, 'internal error while handling the webhook', {
          cause: err,
        });
    if (!isWebhookError(err)) log.error({ err, source }, 'webhook handler failed');
    else {
      log.warn(
        {
          source,
          code: werr.code,
          status: werr.status,
          reason: werr.message,
          remote: req.socket.remoteAddress,
        },
        'webhook delivery rejected',
      );
    }
    metrics.delivery(source, werr.status);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const bodyUnread = !req.readableEnded;
    sendJson(res, werr.status, { error: { code: werr.code, message: werr.message, source } }, werr.headers);
    if (bodyUnread) drainBriefly(req);
  };

  return {
    basePath,
    sources: [...routes.keys()],
    matches: (url) => {
      const path = (url ?? '').split('?', 1)[0]!;
      return path === basePath || path.startsWith(`${basePath}/`);
    },
    handle,
    get pending() {
      return dispatcher.pending;
    },
    get inflight() {
      return inflight;
    },
    close: async (timeoutMs = 10_000) => {
      closing = true;
      const deadline = Date.now() + timeoutMs;
      const answered = await inflightDrained(timeoutMs);
      const drained = (await dispatcher.drain(Math.max(0, deadline - Date.now()))) && answered;
      shutdown.abort(new PrewarmError(ErrorCodes.ABORTED, 'webhook handler closed'));
      await Promise.all([...routes.values()].map((r) => r.source.close?.()));
      return drained;
    },
  };
}

/** Every key of WebhookOptions (a configuration file may hold these and no others). */
export const WEBHOOK_OPTION_KEYS: readonly (keyof WebhookOptions)[] = [
  'sources',
  'basePath',
  'maxBodyBytes',
  'bodyTimeoutMs',
  'maxEventAgeSeconds',
  'maxClockSkewSeconds',
  'dedupTtlSeconds',
  'dedupTimeoutMs',
  'dispatchConcurrency',
  'maxPendingEvents',
  'forwardUntagged',
];
const SOURCE_KEYS: readonly (keyof WebhookSourcesOptions)[] = [
  'acr',
  'ecr',
  'ecrSns',
  'gcr',
  'distribution',
  'harbor',
  'dockerhub',
  'github',
];

const LIMIT_KEYS = ['maxEventAgeSeconds', 'maxBodyBytes'] as const;
const SOURCE_OPTION_KEYS: Record<keyof WebhookSourcesOptions, readonly string[]> = {
  acr: ['header', 'secrets', 'registry', ...LIMIT_KEYS],
  ecr: ['header', 'secrets', 'accounts', ...LIMIT_KEYS],
  ecrSns: ['topicArns', 'certificates', 'certificateFetch', 'autoConfirm', 'accounts', ...LIMIT_KEYS],
  gcr: ['tokens', 'oidc', 'subscriptions', ...LIMIT_KEYS],
  distribution: ['header', 'secrets', 'registry', ...LIMIT_KEYS],
  harbor: ['header', 'secrets', 'registry', ...LIMIT_KEYS],
  dockerhub: ['tokens', 'registry', ...LIMIT_KEYS],
  github: ['secrets', 'registry', ...LIMIT_KEYS],
};

/**
 * What a body may hold at most: its announced length when it announces one within the
 * limit (Node's parser never delivers more than Content-Length), otherwise the limit
 * (chunked bodies; over-long announcements are refused by readBody before reading).
 */
function bodyReservation(req: IncomingMessage, limit: number): number {
  const announced = Number(headerValue(req.headers, 'content-length'));
  return Number.isInteger(announced) && announced >= 0 && announced <= limit ? announced : limit;
}

/** How long, and how much, of a refused request's body is read (and discarded) before closing. */
const LINGER_MS = 1000;
const LINGER_BYTES = 64 * 1024;

/**
 * A refused sender may still be writing the body we did not read. Closing at once would
 * answer its remaining bytes with a TCP reset, which can destroy our answer before it reads
 * it (a registry would see a connection error instead of the 401 or 503 + Retry-After); so
 * the rest is read and discarded, never buffered, for a moment. A body that ends in time
 * leaves the connection usable (Node's parser keeps the framing); one that does not, or that
 * keeps coming past LINGER_BYTES, gets the connection closed.
 */
function drainBriefly(req: IncomingMessage): void {
  const socket = req.socket;
  let drained = 0;
  const timer = setTimeout(() => socket.destroy(), LINGER_MS);
  timer.unref();
  req.on('data', (chunk: Buffer) => {
    drained += chunk.byteLength;
    if (drained > LINGER_BYTES) socket.destroy();
  });
  req.once('end', () => clearTimeout(timer));
  socket.once('close', () => clearTimeout(timer));
  req.resume();
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`dedup store did not answer within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

function unavailable(why: string): WebhookError {
  return new WebhookError(WebhookErrorCodes.UNAVAILABLE, `not accepting webhooks right now: ${why}`, {
    headers: { 'Retry-After': '5' },
  });
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(text);
}

/** The source segment of `<basePath>/<source>[/]`, or undefined for any other path. */
function routeName(url: string | undefined, basePath: string): string | undefined {
  const path = (url ?? '').split('?', 1)[0]!;
  if (!path.startsWith(`${basePath}/`)) return undefined;
  const rest = path.slice(basePath.length + 1).replace(/\/$/, '');
  return /^[a-z-]{1,32}$/.test(rest) ? rest : undefined;
}

function normaliseBasePath(p: string): string {
  const trimmed = p.replace(/\/+$/, '');
  if (!/^(\/[A-Za-z0-9._-]+)+$/.test(trimmed)) {
    throw new PrewarmError(
      ErrorCodes.INVALID_CONFIG,
      `webhooks: basePath ${JSON.stringify(p)} must look like /a/b`,
    );
  }
  return trimmed;
}
