/**
 * Docker Hub repository webhooks: `{ callback_url, push_data: { pushed_at, pusher, tag },
 * repository: { repo_name, … } }`. Docker Hub signs nothing and lets you set no header, so
 * the only credential is a token in the webhook URL (`…/dockerhub?token=<token>`). The
 * payload has no digest and no event id: the operator resolves the tag itself, and dedup
 * keys on (repository, tag, pushed_at). `callback_url` is never called.
 */
import { createHash } from 'node:crypto';
import { checkSecretList } from '../config.js';
import {
  asObject,
  checkQueryToken,
  checkRepository,
  checkTag,
  freshTimestamp,
  oneEvent,
  parseJsonObject,
  reqString,
  type WebhookSource,
} from './source.js';

export interface DockerHubSourceOptions {
  /** Tokens accepted in the `token` query parameter (several for rotation). */
  tokens: string[];
  /** Registry host to report. Default `docker.io`. */
  registry?: string;
  /** Replay window, seconds (by `pushed_at`). Default: the router's. */
  maxEventAgeSeconds?: number;
  /** Largest body, bytes (checked after the sender is authenticated). Default: the router's `maxBodyBytes`. */
  maxBodyBytes?: number;
}

export function dockerHubSource(opts: DockerHubSourceOptions): WebhookSource {
  const tokens = checkSecretList(opts.tokens, 'dockerhub token');
  const registry = opts.registry ?? 'docker.io';
  return {
    name: 'dockerhub',
    authenticatedBy: 'headers',
    contentTypes: ['application/json'],
    checkHeaders: (ctx) => checkQueryToken(ctx, tokens),
    handle: async (ctx) => {
      const p = parseJsonObject(ctx.body);
      const pushData = asObject(p.push_data, 'push_data');
      const repo = asObject(p.repository, 'repository');
      let name = reqString(repo, 'repo_name', 'repository');
      // Official images are `library/<name>` in references.
      if (!name.includes('/')) name = `library/${name}`;
      const repository = checkRepository(name, 'repository.repo_name');
      const tag = checkTag(reqString(pushData, 'tag', 'push_data'), 'push_data.tag');
      const tsMs = freshTimestamp(
        pushData.pushed_at,
        ctx,
        'push_data.pushed_at must be Unix seconds',
        'push',
      );
      const id = `p-${createHash('sha256')
        .update(`${repository}\n${tag}\n${String(pushData.pushed_at)}`)
        .digest('hex')}`;
      return oneEvent(
        `dockerhub:${id}`,
        { registry, repository, tag, source: 'dockerhub', eventId: id, timestampMs: tsMs },
        ctx,
      );
    },
  };
}
