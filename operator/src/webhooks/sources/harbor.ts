/**
 * Harbor project webhooks (HTTP notify type), in either payload format:
 * - Default: `{ type: "PUSH_ARTIFACT", occur_at, operator, event_data: { resources: [{ digest,
 *   tag, resource_url }], repository: { repo_full_name, namespace, name } } }`;
 * - CloudEvents: `{ specversion, id, type: "harbor.artifact.pushed", time, data: { …same
 *   event_data… } }`.
 * Authentication: the webhook's "Auth Header" value, which Harbor sends as `Authorization`.
 * The registry host is the Harbor host, from configuration (`registry`) or, when absent,
 * the host part of `resource_url` (parsed, never fetched).
 */
import { createHash } from 'node:crypto';
import { malformed } from '../errors.js';
import {
  asArray,
  asObject,
  checkDigest,
  checkRegistry,
  checkRepository,
  checkTag,
  emptyOutcome,
  freshTimestamp,
  headerSecretCheck,
  isDigestLike,
  type JsonObject,
  makeEvent,
  optString,
  parseJsonObject,
  reqString,
  type SourceContext,
  type SourceOutcome,
  safeId,
  type WebhookSource,
} from './source.js';

export interface HarborSourceOptions {
  /** Header carrying the secret. Default `authorization` (Harbor's "Auth Header"). */
  header?: string;
  /** Accepted values (several for rotation); `Bearer <secret>` is accepted too. */
  secrets: string[];
  /** Harbor's registry host as ImagePrewarms name it (e.g. `harbor.example.com`). Default: from `resource_url`. */
  registry?: string;
  /** Replay window, seconds (by `occur_at` / `time`). Default: the router's. */
  maxEventAgeSeconds?: number;
  /** Largest body, bytes (checked after the sender is authenticated). Default: the router's `maxBodyBytes`. */
  maxBodyBytes?: number;
}

export function harborSource(opts: HarborSourceOptions): WebhookSource {
  return {
    name: 'harbor',
    authenticatedBy: 'headers',
    contentTypes: ['application/json', 'application/cloudevents+json'],
    checkHeaders: headerSecretCheck(opts),
    handle: async (ctx) => parseHarbor(ctx, opts.registry),
  };
}

function parseHarbor(ctx: SourceContext, registryOverride: string | undefined): SourceOutcome {
  const p = parseJsonObject(ctx.body);
  let data: JsonObject;
  let time: unknown;
  let baseId: string;
  if (p.specversion !== undefined) {
    if (p.type !== 'harbor.artifact.pushed') return emptyOutcome(1);
    data = asObject(p.data, 'data');
    time = p.time;
    baseId = `ce-${safeId(reqString(p, 'id', '$'))}`;
  } else {
    if (p.type !== 'PUSH_ARTIFACT') return emptyOutcome(1);
    data = asObject(p.event_data, 'event_data');
    time = p.occur_at;
    // The default format has no event id: the stable fields of the push stand in for one.
    baseId = '';
  }
  const tsMs = freshTimestamp(time, ctx, 'event time (occur_at / time) is missing or not a date', 'event');
  const repo = asObject(data.repository, 'event_data.repository');
  const repository = checkRepository(
    reqString(repo, 'repo_full_name', 'event_data.repository'),
    'event_data.repository.repo_full_name',
  );
  const resources = asArray(data.resources, 'event_data.resources');
  const out: SourceOutcome = { events: [], ignored: 0, stale: 0 };
  resources.forEach((raw, i) => {
    const path = `event_data.resources[${i}]`;
    const r = asObject(raw, path);
    const digest = optString(r, 'digest', path);
    const tagRaw = optString(r, 'tag', path);
    // Harbor reports a push by digest with the digest in `tag`.
    const tag = tagRaw === undefined || isDigestLike(tagRaw) ? undefined : checkTag(tagRaw, `${path}.tag`);
    const registry = registryOverride ?? hostOf(optString(r, 'resource_url', path), `${path}.resource_url`);
    const id =
      baseId !== ''
        ? `${baseId}-${i}`
        : `d-${createHash('sha256')
            .update(`${p.occur_at}\n${repository}\n${digest ?? ''}\n${tag ?? ''}`)
            .digest('hex')}`;
    out.events.push({
      dedupKey: `harbor:${id}`,
      event: makeEvent(
        {
          registry,
          repository,
          tag,
          digest: digest === undefined ? undefined : checkDigest(digest, `${path}.digest`),
          source: 'harbor',
          eventId: id,
          timestampMs: tsMs,
        },
        ctx,
      ),
    });
  });
  return out;
}

/** The host of `harbor.example.com/library/nginx:1.0` (resource_url has no scheme). */
function hostOf(resourceUrl: string | undefined, path: string): string {
  if (resourceUrl === undefined)
    throw malformed(`${path} is missing and no registry is configured for harbor`);
  const withoutScheme = resourceUrl.replace(/^[a-z]+:\/\//i, '');
  const host = withoutScheme.split('/', 1)[0]!;
  if (host === withoutScheme) throw malformed(`${path} has no repository part`);
  return checkRegistry(host, path);
}
