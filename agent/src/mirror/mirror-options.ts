import type { Logger } from 'pino';
import type { Platform } from '../../../oci/src/platform.js';
import type { BlobSource, BlobTarget } from '../fetch/sources.js';

/**
 * How a manifest requested by tag is answered.
 * - `upstream-first`: resolve the tag upstream with the client's authorization (bounded by
 *   `resolveTimeoutMs`); only when the upstream cannot be reached (network error, timeout,
 *   5xx) serve the digest the store last recorded for the tag. A 401/403 is passed on to
 *   the client, and a tag the upstream says does not exist (404) is not served from the store.
 * - `store-first`: serve the store's recorded digest without asking upstream (so without
 *   checking the client's access: anyone who reaches the mirror gets warmed tags); ask
 *   upstream only for tags the store does not know.
 */
export type TagPolicy = 'upstream-first' | 'store-first';

/** Options of a `Mirror`; every field has a default. */
export interface MirrorOptions {
  /**
   * `host:port` to listen on (`[v6]:port` for IPv6). Port 0 picks a free port; read it from
   * `Mirror.address` after `start()`. Default `127.0.0.1:5055`.
   */
  listen?: string;
  /** See `TagPolicy`. Default `upstream-first`. */
  tagPolicy?: TagPolicy;
  /** Time allowed to resolve a tag upstream before falling back to the store. Default 2 s. */
  resolveTimeoutMs?: number;
  /**
   * Time allowed to start answering (upstream HEAD, manifest fetch, first byte of a blob
   * being downloaded). Past it the mirror answers 503 so containerd moves on to the next
   * host instead of hanging every pull on the node. Default 5 s.
   */
  deadlineMs?: number;
  /**
   * Once a blob body is streaming from a download in flight, the longest wait for that
   * download to make progress; past it the connection is closed (the body is then short, so
   * the client cannot mistake it for the blob). Default 30 s.
   */
  stallTimeoutMs?: number;
  /**
   * Upstream registry for requests without `?ns=`. Default none: such requests are
   * answered from the store only, and nothing is tied to a repository without a registry,
   * so in effect they get 404. Which upstreams may be contacted at all is the registry
   * client's egress policy (`MirrorDeps.client.egress`).
   */
  defaultRegistry?: string;
  /**
   * Platforms whose image records answer a tag from the store (the record is per platform).
   * Default: this host's platform. Records of other platforms are still found, by a scan.
   */
  platforms?: Platform[];
  /**
   * Peer agents to try before the registry on a miss (never for peer requests), e.g. the
   * holders a peer directory knows of. A lookup that fails means no peers. Default none.
   */
  peers?: (target: BlobTarget) => BlobSource[] | Promise<BlobSource[]>;
  /** Structured logger (pino). Default: silent. */
  logger?: Logger;
  /** Idle keep-alive connections are closed after this. Default 65 s. */
  keepAliveTimeoutMs?: number;
  /** On `close()`, how long responses in progress may finish before their connections are cut. Default 5 s. */
  closeGraceMs?: number;
}
