/**
 * What one webhook source module implements, and the small parsing helpers they share.
 *
 * A source turns one authenticated HTTP delivery into zero or more `PushEvent`s plus
 * counts of what it skipped. It never performs I/O on behalf of the payload: URLs in a
 * payload (callback_url, resource_url, SigningCertURL, SubscribeURL) are never fetched,
 * except the SNS ones an operator explicitly allow-lists (see sns.ts).
 */
import { createHash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { type Digest, isDigest } from '../../../../oci/src/digest.js';
import { isValidRegistryHost, isValidRepository, isValidTag } from '../../../../oci/src/reference.js';
import { malformed, unauthenticated, WebhookError, WebhookErrorCodes } from '../errors.js';
import { headerValue } from '../http-body.js';
import type { WebhookLogger } from '../logger.js';
import type { PushEvent, WebhookSourceName } from '../push-event.js';
import { matchesAnySecret } from '../secrets.js';

/** Request facts available before the body is read. */
export interface HeaderContext {
  readonly headers: IncomingHttpHeaders;
  /** Query string of the request URL (tokens for senders that cannot set headers). */
  readonly query: URLSearchParams;
  /** Clock, ms since the epoch (injected for tests). */
  readonly nowMs: number;
  /** Events older than this (by their own timestamp) are stale. */
  readonly maxEventAgeMs: number;
  /** Events dated further than this in the future are stale; also the JWT clock tolerance. */
  readonly maxClockSkewMs: number;
  /** Aborted when the server shuts down; for the few allowed outbound calls (JWKS, SNS). */
  readonly signal: AbortSignal;
  readonly log: WebhookLogger;
}

export interface SourceContext extends HeaderContext {
  readonly body: Buffer;
}

/** One event found in a delivery, with the key it is deduplicated under. */
export interface SourceEvent {
  event: PushEvent;
  /**
   * Namespace-qualified id (`<namespace>:<id>`). Sources that can deliver the same event
   * over two paths (ECR via EventBridge and via SNS) use one namespace for both.
   */
  dedupKey: string;
}

export interface SourceOutcome {
  events: SourceEvent[];
  /** Items deliberately not acted on (pulls, deletes, blobs, pings, non-image packages…). */
  ignored: number;
  /** Items skipped because their timestamp is outside the replay window. */
  stale: number;
  /** Extra fields for the 202 body (e.g. an SNS subscription note). Never secrets. */
  note?: string;
}

/**
 * Where a source's sender is authenticated:
 * - `headers`: `checkHeaders` proves the sender (shared secret in a header or the query,
 *   a signed JWT in `Authorization`) before a byte of the body is read;
 * - `body`: the proof covers the body (GitHub's HMAC, SNS's signature), so the body must be
 *   read first. Those bodies get a small default limit and share only part of the
 *   receiver's in-flight body budget (see handler.ts), and `checkHeaders` still refuses
 *   requests that lack the signature's headers before reading.
 */
export type AuthStage = 'headers' | 'body';

/** Default body limit of sources authenticated by the body: their payloads are a few KiB. */
export const BODY_AUTH_DEFAULT_MAX_BYTES = 64 * 1024;

export interface WebhookSource {
  readonly name: WebhookSourceName;
  /** Media types (lower-case, no parameters) this source's sender uses. */
  readonly contentTypes: readonly string[];
  /** Where the sender is authenticated (see `AuthStage`). */
  readonly authenticatedBy: AuthStage;
  /**
   * Runs before the body is read. For `authenticatedBy: 'headers'` it authenticates (throws
   * 401/403), so unauthenticated senders cannot make us buffer anything; for `'body'` it
   * refuses requests that cannot possibly verify (no signature header, unknown topic).
   */
  checkHeaders?(ctx: HeaderContext): void | Promise<void>;
  /**
   * Authenticates what needs the body (signatures), parses, and returns the events.
   * Throws `WebhookError` (4xx) for anything the sender must be told about.
   */
  handle(ctx: SourceContext): Promise<SourceOutcome>;
  /** Releases what the source holds (outbound connection pools). */
  close?(): Promise<void>;
}

export function emptyOutcome(ignored = 0, note?: string): SourceOutcome {
  return { events: [], ignored, stale: 0, ...(note === undefined ? {} : { note }) };
}

// ---------------------------------------------------------------------------------------
// JSON access. Payloads are untrusted: every field is type-checked where it is read, and
// the error names the JSON path so a sender's operator can see what is wrong.

export type JsonObject = Record<string, unknown>;

export function parseJsonObject(body: Buffer | string, what = 'body'): JsonObject {
  let v: unknown;
  try {
    v = JSON.parse(typeof body === 'string' ? body : body.toString('utf8'));
  } catch (err) {
    throw malformed(`${what} is not valid JSON`, err);
  }
  return asObject(v, what);
}

export function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function asObject(v: unknown, path: string): JsonObject {
  if (!isObject(v)) throw malformed(`${path} must be a JSON object`);
  return v;
}

export function asArray(v: unknown, path: string): unknown[] {
  if (!Array.isArray(v)) throw malformed(`${path} must be a JSON array`);
  return v;
}

export function reqString(o: JsonObject, key: string, path: string): string {
  const v = o[key];
  if (typeof v !== 'string' || v.length === 0) throw malformed(`${path}.${key} must be a non-empty string`);
  return v;
}

/** A string field, or undefined when absent, null or empty; any other type is malformed. */
export function optString(o: JsonObject, key: string, path: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string') throw malformed(`${path}.${key} must be a string`);
  return v;
}

// ---------------------------------------------------------------------------------------
// Names. Everything that ends up in a PushEvent is validated against the distribution
// reference grammar, so the operator can build references from it without re-checking.

export function checkRepository(name: string, path: string): string {
  if (!isValidRepository(name))
    throw malformed(`${path}: ${JSON.stringify(name.slice(0, 300))} is not a valid repository name`);
  return name;
}

export function checkTag(tag: string, path: string): string {
  if (!isValidTag(tag)) throw malformed(`${path}: ${JSON.stringify(tag.slice(0, 200))} is not a valid tag`);
  return tag;
}

export function checkRegistry(host: string, path: string): string {
  if (!isValidRegistryHost(host))
    throw malformed(`${path}: ${JSON.stringify(host.slice(0, 300))} is not a valid registry host`);
  return host.toLowerCase();
}

export function checkDigest(d: string, path: string): Digest {
  if (!isDigest(d)) throw malformed(`${path}: ${JSON.stringify(d.slice(0, 100))} is not a sha256 digest`);
  return d;
}

/** Tags that are really digests (Harbor puts the digest in `tag` for pushes by digest). */
export function isDigestLike(tag: string): boolean {
  return tag.startsWith('sha256:');
}

// ---------------------------------------------------------------------------------------
// Time.

/**
 * Milliseconds since the epoch from an RFC 3339 string or a number of Unix seconds;
 * undefined when absent or unparseable.
 */
export function parseTimestamp(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isFinite(v) && v > 0) return v * 1000;
  if (typeof v === 'string' && v.length > 0 && v.length < 64) {
    const ms = Date.parse(v);
    if (Number.isFinite(ms)) return ms;
  }
  return undefined;
}

/** True when `tsMs` is inside the replay window around `ctx.nowMs`. */
export function isFresh(tsMs: number, ctx: SourceContext): boolean {
  return tsMs >= ctx.nowMs - ctx.maxEventAgeMs && tsMs <= ctx.nowMs + ctx.maxClockSkewMs;
}

/** Throws 400 PW_ERR_WEBHOOK_STALE unless `tsMs` is inside the replay window. */
export function assertFresh(tsMs: number, ctx: SourceContext, what: string): void {
  if (!isFresh(tsMs, ctx)) {
    throw new WebhookError(
      WebhookErrorCodes.STALE,
      `${what} timestamp ${new Date(tsMs).toISOString()} is outside the accepted window (max age ${Math.round(ctx.maxEventAgeMs / 1000)} s, max clock skew ${Math.round(ctx.maxClockSkewMs / 1000)} s)`,
    );
  }
}

/**
 * A required timestamp field (see `parseTimestamp`) inside the replay window. Throws 400
 * malformed with `malformedMessage` when it is absent or unparseable, and 400
 * PW_ERR_WEBHOOK_STALE (naming `what`) when it is outside the window.
 */
export function freshTimestamp(
  v: unknown,
  ctx: SourceContext,
  malformedMessage: string,
  what: string,
): number {
  const tsMs = parseTimestamp(v);
  if (tsMs === undefined) throw malformed(malformedMessage);
  assertFresh(tsMs, ctx, what);
  return tsMs;
}

// ---------------------------------------------------------------------------------------
// Ids and credentials.

/** Event ids are attacker-influenced strings that end up in Redis keys: bound and hash them when odd. */
export function safeId(id: string): string {
  return /^[A-Za-z0-9._:@/+=-]{1,128}$/.test(id) ? id : `h-${createHash('sha256').update(id).digest('hex')}`;
}

/** An id for payloads that carry none: a hash of the (authenticated) body. */
export function bodyId(body: Buffer): string {
  return `b-${createHash('sha256').update(body).digest('hex')}`;
}

/**
 * Shared-secret check on one header: 401 when it is missing or matches none of
 * `secrets`. With `allowBearer`, `Bearer <secret>` is accepted too (senders differ in
 * whether they let the user type the scheme).
 */
export function checkHeaderSecret(
  ctx: HeaderContext,
  header: string,
  secrets: readonly string[],
  allowBearer: boolean,
): void {
  const raw = headerValue(ctx.headers, header);
  if (raw === undefined || raw.length === 0) throw unauthenticated(`missing ${header} header`);
  const value = raw.trim();
  let ok = matchesAnySecret(value, secrets);
  if (allowBearer) {
    const m = /^bearer\s+(.+)$/i.exec(value);
    // Always run the second comparison so timing does not reveal the header's shape.
    ok = matchesAnySecret(m ? m[1]! : '', secrets) || ok;
  }
  if (!ok) throw unauthenticated(`${header} header does not match a configured secret`);
}

/**
 * `checkHeaders` of a source whose sender puts a shared secret in one header, as `<secret>`
 * or `Bearer <secret>`: the header is `opts.header` (default `defaultHeader`, any case);
 * `opts.secrets` is read on each request.
 */
export function headerSecretCheck(
  opts: { readonly header?: string | undefined; readonly secrets: readonly string[] },
  defaultHeader = 'authorization',
): (ctx: HeaderContext) => void {
  const header = (opts.header ?? defaultHeader).toLowerCase();
  return (ctx) => checkHeaderSecret(ctx, header, opts.secrets, true);
}

/** Shared-secret check on the `token` query parameter (senders that cannot set headers). */
export function checkQueryToken(ctx: HeaderContext, tokens: readonly string[]): void {
  const t = ctx.query.get('token');
  if (t === null || t.length === 0) throw unauthenticated('missing token query parameter');
  if (!matchesAnySecret(t, tokens))
    throw unauthenticated('token query parameter does not match a configured token');
}

/** The outcome of a delivery that carries exactly one event (see `makeEvent` for `fields`). */
export function oneEvent(
  dedupKey: string,
  fields: Parameters<typeof makeEvent>[0],
  ctx: SourceContext,
): SourceOutcome {
  return { events: [{ dedupKey, event: makeEvent(fields, ctx) }], ignored: 0, stale: 0 };
}

/** Builds the PushEvent fields every source fills the same way. */
export function makeEvent(
  fields: Omit<PushEvent, 'receivedAt' | 'timestamp'> & { timestampMs: number | undefined },
  ctx: SourceContext,
): PushEvent {
  const { timestampMs, ...rest } = fields;
  const e: PushEvent = {
    ...rest,
    timestamp: new Date(timestampMs ?? ctx.nowMs).toISOString(),
    receivedAt: new Date(ctx.nowMs).toISOString(),
  };
  // Drop undefined optionals so events compare and serialise cleanly.
  for (const k of Object.keys(e) as (keyof PushEvent)[]) if (e[k] === undefined) delete e[k];
  return e;
}
