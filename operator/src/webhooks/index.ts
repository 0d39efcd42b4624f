/**
 * Registry push webhooks: the public surface the operator's main mounts.
 *
 * ```ts
 * const webhooks = createWebhookHandler(
 *   { onPush, dedup: new RedisDedupStore(redis), logger, metrics: promRegistry },
 *   { sources: { distribution: { secrets: [token] }, acr: { secrets: [acrSecret] } } },
 * );
 * http.createServer((req, res) => (webhooks.matches(req.url) ? webhooks.handle(req, res) : other(req, res)));
 * // on SIGTERM: await webhooks.close(10_000);
 * ```
 * or, standalone on its own port: `createWebhookServer(deps, { ...options, host, port })`,
 * which is what the receiver process (`kube-prewarm webhooks`, operator/src/webhooks-main.ts)
 * runs, with connection and body-budget caps.
 */

export {
  BodyBudget,
  type BodyBudgetOptions,
  type BodyReservation,
  DEFAULT_MAX_INFLIGHT_BODY_BYTES,
} from './body-budget.js';
export { MIN_SECRET_LENGTH } from './config.js';
export { type DedupStore, MemoryDedupStore, type MemoryDedupStoreOptions } from './dedup-store.js';
export { isWebhookError, WebhookError, type WebhookErrorCode, WebhookErrorCodes } from './errors.js';
export {
  createWebhookHandler,
  type WebhookDeps,
  type WebhookHandler,
  type WebhookOptions,
  type WebhookSourcesOptions,
} from './handler.js';
export { type LogFn, silentLogger, type WebhookLogger } from './logger.js';
export { DELIVERIES_METRIC, EVENTS_METRIC, type EventOutcome } from './metrics.js';
export { parseWebhookOptionsFile } from './options-file.js';
export {
  type PushDispatchResult,
  type PushEvent,
  WEBHOOK_SOURCES,
  type WebhookSourceName,
} from './push-event.js';
export { RedisDedupStore, type RedisDedupStoreOptions } from './redis-dedup-store.js';
export { createWebhookServer, type WebhookServer, type WebhookServerOptions } from './server.js';
export type { AcrSourceOptions } from './sources/acr.js';
export type { DistributionSourceOptions } from './sources/distribution.js';
export type { DockerHubSourceOptions } from './sources/dockerhub.js';
export type { EcrEventBridgeSourceOptions } from './sources/ecr.js';
export type { GcrOidcOptions, GcrPubSubSourceOptions } from './sources/gcr.js';
export type { GitHubSourceOptions } from './sources/github.js';
export type { HarborSourceOptions } from './sources/harbor.js';
export type { OutboundOptions } from './sources/outbound.js';
export type { EcrSnsSourceOptions } from './sources/sns.js';
