/**
 * Tag → digest resolution and manifest description for the reconciler, through the
 * shared registry client (oci/src/client.ts). Adds what the operator needs on top:
 * a per-registry request budget (token bucket), a cache of immutable manifests by digest,
 * and one client per distinct set of pull-secret credentials.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { CredentialProvider } from '../../../oci/src/auth.js';
import { RegistryClient } from '../../../oci/src/client.js';
import type { Digest } from '../../../oci/src/digest.js';
import { EgressPolicy, PUBLIC_REGISTRIES, type Resolve } from '../../../oci/src/egress-policy.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import { isAttestation, manifestBlobs, selectPlatform } from '../../../oci/src/manifest.js';
import { formatPlatform, type Platform } from '../../../oci/src/platform.js';
import { type ImageReference, parseReference } from '../../../oci/src/reference.js';

export interface ResolverOptions {
  /** Sustained registry requests per second per registry host. Default 20. */
  requestsPerSecond?: number;
  /** Requests a registry host may receive in a burst. Default 40. */
  burst?: number;
  /** Longest wait for budget before a resolve fails with PW_ERR_REGISTRY (retryable). Default 30 s. */
  maxBudgetWaitMs?: number;
  /** Descriptions cached by digest. Default 2 000. */
  cacheSize?: number;
  /**
   * Registries that may be contacted (oci/src/egress-policy.ts): hosts and `_default` (any
   * public registry). Default `['_default']`: loopback, private, link-local and metadata
   * addresses are reached only when listed, so an ImagePrewarm cannot make the operator
   * probe internal services. Operator config: KUBE_PREWARM_ALLOWED_REGISTRIES.
   */
  allowedRegistries?: readonly string[];
  /** Registry hosts spoken to over plain HTTP (KUBE_PREWARM_PLAIN_HTTP). Default none. */
  plainHttpRegistries?: readonly string[];
  /** DNS resolution for the connect-time address check. Default: the system resolver. */
  resolve?: Resolve;
  /**
   * Makes a registry client for a credential set and the egress policy. Default:
   * `new RegistryClient({ credentials, egress })`.
   */
  clientFactory?: (credentials: CredentialProvider | undefined, egress: EgressPolicy) => RegistryClient;
}

export interface Description {
  mediaType: string;
  /** Platforms an index offers (runnable entries); undefined for a single manifest. */
  platforms?: string[];
  /** Compressed bytes (config + layers) per platform asked for and found. */
  bytesByPlatform: Record<string, number>;
}

/** Credentials plus a fingerprint naming them (never the secret itself). */
export interface Credentials {
  fingerprint: string;
  provider: CredentialProvider;
}

class TokenBucket {
  #tokens: number;
  #last: number;
  constructor(
    readonly rate: number,
    readonly burst: number,
  ) {
    this.#tokens = burst;
    this.#last = Date.now();
  }

  /** Ms until a token is available (0: took one). */
  take(): number {
    const now = Date.now();
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#last) / 1000) * this.rate);
    this.#last = now;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.#tokens) / this.rate) * 1000);
  }
}

export class Resolver {
  readonly #opts: Required<
    Omit<ResolverOptions, 'clientFactory' | 'allowedRegistries' | 'plainHttpRegistries' | 'resolve'>
  >;
  readonly #egress: EgressPolicy;
  readonly #factory: (credentials: CredentialProvider | undefined, egress: EgressPolicy) => RegistryClient;
  readonly #clients = new Map<string, RegistryClient>();
  readonly #buckets = new Map<string, TokenBucket>();
  readonly #descriptions = new Map<string, Description>();

  /** Throws PW_ERR_INVALID_CONFIG for an invalid registry list. */
  constructor(opts: ResolverOptions = {}) {
    this.#egress = new EgressPolicy({
      allowedRegistries: opts.allowedRegistries ?? [PUBLIC_REGISTRIES],
      plainHttp: opts.plainHttpRegistries ?? [],
      ...(opts.resolve ? { resolve: opts.resolve } : {}),
    });
    this.#opts = {
      requestsPerSecond: opts.requestsPerSecond ?? 20,
      burst: opts.burst ?? 40,
      maxBudgetWaitMs: opts.maxBudgetWaitMs ?? 30_000,
      cacheSize: opts.cacheSize ?? 2_000,
    };
    this.#factory =
      opts.clientFactory ??
      ((credentials, egress) => new RegistryClient(credentials ? { credentials, egress } : { egress }));
  }

  /** The egress policy every registry request of the operator obeys. */
  get egress(): EgressPolicy {
    return this.#egress;
  }

  #client(creds: Credentials | undefined): RegistryClient {
    const key = creds?.fingerprint ?? '';
    let c = this.#clients.get(key);
    if (!c) {
      c = this.#factory(creds?.provider, this.#egress);
      this.#clients.set(key, c);
      // A handful of distinct secret sets is normal; bound it anyway.
      if (this.#clients.size > 64) {
        const [oldKey, old] = this.#clients.entries().next().value as [string, RegistryClient];
        this.#clients.delete(oldKey);
        void old.close().catch(() => undefined);
      }
    }
    return c;
  }

  /** Waits for the registry's request budget; throws a retryable PW_ERR_REGISTRY when it would wait too long. */
  async #budget(registry: string, signal?: AbortSignal): Promise<void> {
    let bucket = this.#buckets.get(registry);
    if (!bucket) {
      bucket = new TokenBucket(this.#opts.requestsPerSecond, this.#opts.burst);
      this.#buckets.set(registry, bucket);
    }
    const started = Date.now();
    for (;;) {
      const wait = bucket.take();
      if (wait === 0) return;
      if (Date.now() - started + wait > this.#opts.maxBudgetWaitMs) {
        throw new PrewarmError(ErrorCodes.REGISTRY_ERROR, `request budget for ${registry} exhausted`, {
          retryable: true,
          detail: { retryAfterMs: wait },
        });
      }
      await sleep(wait, undefined, signal ? { signal } : undefined);
    }
  }

  /** Parses `repository` (`registry/path`) and tag into a reference; throws PW_ERR_INVALID_REFERENCE. */
  static reference(repository: string, tagOrDigest: { tag?: string; digest?: string }): ImageReference {
    const suffix = tagOrDigest.digest ? `@${tagOrDigest.digest}` : `:${tagOrDigest.tag ?? 'latest'}`;
    return parseReference(`${repository}${suffix}`);
  }

  /**
   * Resolves a tag to the digest it names now (HEAD, `Docker-Content-Digest`). Errors are
   * the registry client's PrewarmErrors (PW_ERR_MANIFEST_UNKNOWN for a missing tag,
   * PW_ERR_AUTH_DENIED, retryable PW_ERR_NETWORK / PW_ERR_REGISTRY), and
   * PW_ERR_EGRESS_DENIED (never retryable) for a registry the egress policy does not allow,
   * before any request or budget is spent.
   */
  async resolveTag(
    repository: string,
    tag: string,
    creds?: Credentials,
    signal?: AbortSignal,
  ): Promise<{ digest: Digest; mediaType?: string }> {
    const ref = Resolver.reference(repository, { tag });
    this.#egress.assertRegistry(ref.registry);
    await this.#budget(ref.registry, signal);
    const got = await this.#client(creds).resolve(ref, signal);
    return { digest: got.digest, ...(got.mediaType ? { mediaType: got.mediaType } : {}) };
  }

  /**
   * Describes a digest for the given node platforms: what it is, which platforms an index
   * offers, and the image size per platform. Cached by (digest, platforms): manifests
   * addressed by digest never change. A platform the index lacks is simply absent from
   * `bytesByPlatform` (the caller reports it per node).
   */
  async describe(
    repository: string,
    digest: Digest,
    platforms: readonly Platform[],
    creds?: Credentials,
    signal?: AbortSignal,
  ): Promise<Description> {
    const wanted = [...new Set(platforms.map(formatPlatform))].sort();
    const cacheKey = `${repository}@${digest}|${wanted.join(',')}`;
    const hit = this.#descriptions.get(cacheKey);
    if (hit) return hit;
    const ref = Resolver.reference(repository, { digest });
    this.#egress.assertRegistry(ref.registry);
    const client = this.#client(creds);
    await this.#budget(ref.registry, signal);
    const top = await client.fetchManifest(ref, digest, signal);
    let description: Description;
    if (top.manifest.kind === 'manifest') {
      const bytes = manifestBlobs(top.manifest).reduce((n, d) => n + d.size, 0);
      const bytesByPlatform: Record<string, number> = {};
      for (const p of wanted) bytesByPlatform[p] = bytes;
      description = { mediaType: top.mediaType, bytesByPlatform };
    } else {
      const index = top.manifest;
      const offered = [
        ...new Set(
          index.manifests
            .filter((d) => !isAttestation(d) && d.platform)
            .map((d) => formatPlatform(d.platform!)),
        ),
      ];
      const bytesByPlatform: Record<string, number> = {};
      for (const p of platforms) {
        const name = formatPlatform(p);
        if (bytesByPlatform[name] !== undefined) continue;
        let entry: ReturnType<typeof selectPlatform>;
        try {
          entry = selectPlatform(index, p);
        } catch {
          continue;
        }
        await this.#budget(ref.registry, signal);
        const image = await client.fetchManifest(ref, entry.digest, signal);
        if (image.manifest.kind === 'manifest') {
          bytesByPlatform[name] = manifestBlobs(image.manifest).reduce((n, d) => n + d.size, 0);
        }
      }
      description = { mediaType: top.mediaType, platforms: offered, bytesByPlatform };
    }
    this.#descriptions.set(cacheKey, description);
    if (this.#descriptions.size > this.#opts.cacheSize) {
      const oldest = this.#descriptions.keys().next().value as string;
      this.#descriptions.delete(oldest);
    }
    return description;
  }

  async close(): Promise<void> {
    const clients = [...this.#clients.values()];
    this.#clients.clear();
    await Promise.allSettled(clients.map((c) => c.close()));
  }
}
