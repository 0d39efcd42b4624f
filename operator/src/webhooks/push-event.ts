/**
 * The one type every registry webhook is turned into. A `PushEvent` says "something was
 * pushed under this name"; it is a hint, never a fact: the operator matches it against
 * ImagePrewarm specs and re-resolves the tag against the registry before it warms
 * anything, so a forged or stale event can at worst cause one extra resolve of a
 * registry an ImagePrewarm already names. It can never plant a digest.
 */
import type { Digest } from '../../../oci/src/digest.js';

/**
 * Where a push event came in (also the URL path segment under the webhook base path and
 * the `source` label of the webhook metrics).
 */
export type WebhookSourceName =
  | 'acr'
  | 'ecr'
  | 'ecr-sns'
  | 'gcr'
  | 'distribution'
  | 'harbor'
  | 'dockerhub'
  | 'github';

export const WEBHOOK_SOURCES: readonly WebhookSourceName[] = [
  'acr',
  'ecr',
  'ecr-sns',
  'gcr',
  'distribution',
  'harbor',
  'dockerhub',
  'github',
];

export interface PushEvent {
  /**
   * Registry host as image references name it, with port when not 443
   * (`myreg.azurecr.io`, `123456789012.dkr.ecr.us-west-2.amazonaws.com`, `127.0.0.1:5000`).
   * Taken from the payload unless the source is configured with a fixed `registry`.
   */
  registry: string;
  /** Repository path inside the registry (`team/app`); validated against the reference grammar. */
  repository: string;
  /** The tag pushed. Absent for pushes by digest (only forwarded with `forwardUntagged`). */
  tag?: string;
  /**
   * Digest the payload claims was pushed. Untrusted: for logs and as a hint only; the
   * operator must re-resolve `tag` itself. Absent for sources that send none (Docker Hub).
   */
  digest?: Digest;
  /** Manifest media type the payload claims (an index means "resolve per node platform later"). */
  mediaType?: string;
  /** `os/arch[/variant]` when the source names one (none of the supported sources does today). */
  platform?: string;
  source: WebhookSourceName;
  /**
   * Id of the event at its source (distribution event id, SNS/Pub/Sub message id, …), or a
   * hash of the signed payload where the source has none. Used for deduplication.
   */
  eventId: string;
  /** When the source says the push happened (ISO 8601); the receive time when it says nothing usable. */
  timestamp: string;
  /** When this process received the delivery (ISO 8601). */
  receivedAt: string;
}

/**
 * What `onPush` may report back; returning nothing counts as "dispatched". `matched: 0`
 * counts the event as `unwatched` in the metrics (accepted, nothing to do).
 */
export interface PushDispatchResult {
  /** How many ImagePrewarm resources the event matched. */
  matched: number;
}
