/**
 * CNCF distribution notifications (`docker-registry`, GitLab's container registry and other
 * distribution forks): a JSON envelope `{ events: [...] }`, one event per manifest or blob
 * push/pull/mount/delete, sent with the endpoint's configured headers.
 *
 * Only `action: push` of a manifest is an image push; pulls (every manifest GET/HEAD sends
 * one) and blob events are ignored. An index push arrives as one event per child manifest
 * (pushed by digest, no tag) plus one for the index under its tag: the untagged ones are
 * dropped by the router unless `forwardUntagged`, so an index push is one PushEvent.
 *
 * distribution retries a failed envelope forever and blocks its queue meanwhile, so events
 * outside the replay window, and events without a timestamp, are dropped one by one
 * (counted as stale) while the envelope is still acknowledged; a 4xx there would wedge the
 * registry's notification queue.
 */

import { PUSHABLE_MANIFEST_TYPES } from './manifest-types.js';
import {
  asArray,
  asObject,
  checkDigest,
  checkRegistry,
  checkRepository,
  checkTag,
  headerSecretCheck,
  isFresh,
  makeEvent,
  optString,
  parseJsonObject,
  parseTimestamp,
  reqString,
  type SourceContext,
  type SourceEvent,
  type SourceOutcome,
  safeId,
  type WebhookSource,
} from './source.js';

export interface DistributionSourceOptions {
  /** Header carrying the shared secret (`notifications.endpoints[].headers`). Default `authorization`. */
  header?: string;
  /** Accepted secrets (several for rotation). The header may be `<secret>` or `Bearer <secret>`. */
  secrets: string[];
  /**
   * Registry host to report instead of the event's `request.host` (use when clients reach
   * the registry under another name than the one ImagePrewarms use).
   */
  registry?: string;
  /** Replay window for this source, seconds. Default: the router's `maxEventAgeSeconds`. */
  maxEventAgeSeconds?: number;
  /** Largest body, bytes (checked after the sender is authenticated). Default: the router's `maxBodyBytes`. */
  maxBodyBytes?: number;
}

/** Media types distribution versions and forks send envelopes with. */
export const DISTRIBUTION_CONTENT_TYPES = [
  'application/vnd.docker.distribution.events.v1+json',
  'application/vnd.docker.distribution.events.v2+json',
  'application/json',
] as const;

export function distributionSource(opts: DistributionSourceOptions): WebhookSource {
  return {
    name: 'distribution',
    authenticatedBy: 'headers',
    contentTypes: DISTRIBUTION_CONTENT_TYPES,
    checkHeaders: headerSecretCheck(opts),
    handle: async (ctx) => parseEnvelope(ctx, opts.registry),
  };
}

function parseEnvelope(ctx: SourceContext, registryOverride: string | undefined): SourceOutcome {
  const envelope = parseJsonObject(ctx.body);
  const items = asArray(envelope.events, 'events');
  const out: SourceOutcome = { events: [], ignored: 0, stale: 0 };
  items.forEach((raw, i) => {
    const path = `events[${i}]`;
    const ev = asObject(raw, path);
    const action = reqString(ev, 'action', path);
    if (action !== 'push') {
      out.ignored++;
      return;
    }
    const target = asObject(ev.target, `${path}.target`);
    const mediaType = optString(target, 'mediaType', `${path}.target`);
    const tag = optString(target, 'tag', `${path}.target`);
    // Blob pushes carry a layer/config media type and never a tag.
    if (tag === undefined && (mediaType === undefined || !PUSHABLE_MANIFEST_TYPES.has(mediaType))) {
      out.ignored++;
      return;
    }
    const id = reqString(ev, 'id', path);
    // Every distribution release stamps each event. One without a usable time cannot be
    // placed in the replay window, so it is dropped like a stale one: a replayed envelope
    // with its timestamps cut out must not move a tag back.
    const tsMs = parseTimestamp(ev.timestamp);
    if (tsMs === undefined || !isFresh(tsMs, ctx)) {
      out.stale++;
      return;
    }
    const repository = checkRepository(
      reqString(target, 'repository', `${path}.target`),
      `${path}.target.repository`,
    );
    const digestRaw = optString(target, 'digest', `${path}.target`);
    let registry = registryOverride;
    if (registry === undefined) {
      const request = asObject(ev.request, `${path}.request`);
      registry = checkRegistry(reqString(request, 'host', `${path}.request`), `${path}.request.host`);
    }
    const event: SourceEvent = {
      dedupKey: `distribution:${safeId(id)}`,
      event: makeEvent(
        {
          registry,
          repository,
          tag: tag === undefined ? undefined : checkTag(tag, `${path}.target.tag`),
          digest: digestRaw === undefined ? undefined : checkDigest(digestRaw, `${path}.target.digest`),
          mediaType,
          source: 'distribution',
          eventId: id,
          timestampMs: tsMs,
        },
        ctx,
      ),
    };
    out.events.push(event);
  });
  return out;
}
