import { Agent, type Dispatcher, request } from 'undici';
import type { BlobResponse, ForwardedAuth, RegistryClient } from '../../../oci/src/client.js';
import { header, toNetworkError } from '../../../oci/src/client.js';
import type { Digest } from '../../../oci/src/digest.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';

/** A blob to fetch: where it lives and what it must hash to. */
export interface BlobTarget {
  /** Registry host (`registry.example.com`, `127.0.0.1:5000`). */
  registry: string;
  repository: string;
  digest: Digest;
  /** Size from the descriptor; the download must be exactly this long. */
  size: number;
  mediaType?: string;
}

/** Somewhere blob bytes can come from: the registry, or a peer agent's mirror. */
export interface BlobSource {
  /** `registry` or `peer`; counted separately in metrics and results. */
  readonly kind: 'registry' | 'peer';
  /** For logs: the host. */
  readonly name: string;
  /** Opens [start, end] (inclusive). Resolves to a 200 or 206 response; throws PrewarmError otherwise. */
  open(target: BlobTarget, range: { start: number; end: number }, signal: AbortSignal): Promise<BlobResponse>;
}

export interface RegistrySourceOptions {
  /**
   * Send this downstream client's authorization instead of the client's own credentials
   * (the mirror filling a miss on behalf of containerd). Default: the client's credentials.
   */
  forward?: ForwardedAuth;
}

/** The registry itself, through the registry client (and so its egress policy). */
export class RegistrySource implements BlobSource {
  readonly kind = 'registry';
  readonly name: string;
  readonly #forward: ForwardedAuth | undefined;

  constructor(
    readonly client: RegistryClient,
    registry: string,
    opts: RegistrySourceOptions = {},
  ) {
    this.name = registry;
    this.#forward = opts.forward;
  }

  open(
    target: BlobTarget,
    range: { start: number; end: number },
    signal: AbortSignal,
  ): Promise<BlobResponse> {
    return this.client.blob({
      registry: target.registry,
      repository: target.repository,
      digest: target.digest,
      range,
      signal,
      ...(this.#forward ? { forward: this.#forward } : {}),
    });
  }
}

/** The path a peer listener serves a blob on (`PeerServer`): by digest only. */
export function peerBlobPath(digest: Digest): string {
  return `/peer/v1/blobs/${digest}`;
}

export interface PeerSourceOptions {
  /** Time to get headers from a peer before trying the next source. Default 2 s. */
  headersTimeoutMs?: number;
  dispatcher?: Dispatcher;
  /**
   * The cluster's peer token, sent as `Authorization: Bearer <token>`; peers refuse
   * requests without it (401). Default none (every peer will refuse).
   */
  token?: string;
}

/**
 * Another node's peer listener (`http://<node-ip>:<peer port>`, agent/src/mirror/
 * peer-server.ts). Peers only serve blobs they hold, by digest, and never go upstream on
 * our behalf; we verify again anyway (the digest check at commit), so a lying peer costs a
 * retry from the registry, never a bad blob.
 */
export class PeerSource implements BlobSource {
  readonly kind = 'peer';
  readonly #dispatcher: Dispatcher;
  readonly #headersTimeout: number;
  readonly #authorization: string | undefined;

  constructor(
    readonly name: string,
    readonly baseUrl: string,
    opts: PeerSourceOptions = {},
  ) {
    this.#dispatcher =
      opts.dispatcher ?? new Agent({ keepAliveTimeout: 10_000, connect: { timeout: 2_000 } });
    this.#headersTimeout = opts.headersTimeoutMs ?? 2_000;
    this.#authorization = opts.token ? `Bearer ${opts.token}` : undefined;
  }

  async open(
    target: BlobTarget,
    range: { start: number; end: number },
    signal: AbortSignal,
  ): Promise<BlobResponse> {
    const url = new URL(peerBlobPath(target.digest), this.baseUrl);
    const headers: Record<string, string> = { range: `bytes=${range.start}-${range.end}` };
    if (this.#authorization) headers.authorization = this.#authorization;
    let res: Awaited<ReturnType<typeof request>>;
    try {
      res = await request(url, {
        method: 'GET',
        headers,
        dispatcher: this.#dispatcher,
        signal,
        headersTimeout: this.#headersTimeout,
        bodyTimeout: 10_000,
      });
    } catch (err) {
      throw toNetworkError(err, `peer ${this.name}`);
    }
    if (res.statusCode === 200 || res.statusCode === 206) return res;
    await res.body.dump();
    throw new PrewarmError(ErrorCodes.BLOB_UNKNOWN, `peer ${this.name} answered ${res.statusCode}`, {
      status: res.statusCode,
      detail: { contentType: header(res.headers, 'content-type') },
    });
  }
}
