/**
 * The webhooks' logging surface is the operator's (operator/src/logger.ts: a subset of
 * pino's Logger, import-free, so the receiver process stays light). Secrets, tokens and
 * signatures are never passed to it.
 */
export { type LogFn, type Logger as WebhookLogger, silentLogger } from '../logger.js';
