import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import {
  type Credential,
  type CredentialProvider,
  parseDockerConfig,
  StaticCredentials,
} from '../../../oci/src/auth.js';
import { ErrorCodes, isPrewarmError, PrewarmError } from '../../../oci/src/errors.js';
import { kubeApiStatus, readSecretData, type SecretData } from '../../../oci/src/kube-secret.js';

export type { SecretData };

/**
 * Reads one Secret. Resolves `undefined` when it does not exist; rejects with an error
 * carrying the HTTP status in `code` or `statusCode` (client-node's ApiException does)
 * for anything else, e.g. 403 when the agent may not get secrets.
 */
export interface SecretReader {
  read(namespace: string, name: string): Promise<SecretData | undefined>;
}

/**
 * SecretReader over the Kubernetes API (CoreV1Api.readNamespacedSecret). `kubeconfigPath`
 * empty: `KubeConfig.loadFromDefault()`, which is the in-cluster service account inside
 * a pod.
 */
export class KubeSecretReader implements SecretReader {
  readonly #core: CoreV1Api;

  constructor(opts: { kubeconfigPath?: string } = {}) {
    const kc = new KubeConfig();
    if (opts.kubeconfigPath) kc.loadFromFile(opts.kubeconfigPath);
    else kc.loadFromDefault();
    this.#core = kc.makeApiClient(CoreV1Api);
  }

  read(namespace: string, name: string): Promise<SecretData | undefined> {
    return readSecretData(() => this.#core.readNamespacedSecret({ namespace, name }));
  }
}

/** Credentials looked up in each provider in turn; the first that knows the host wins. */
export class ChainedCredentials implements CredentialProvider {
  readonly #providers: readonly CredentialProvider[];

  constructor(providers: readonly CredentialProvider[]) {
    this.#providers = providers;
  }

  get(host: string): Credential | undefined {
    for (const p of this.#providers) {
      const c = p.get(host);
      if (c) return c;
    }
    return undefined;
  }

  toJSON(): string {
    return '[credentials hidden]';
  }
}

export interface PullSecretResolverOptions {
  /** How long a Secret read is reused (so a burst of jobs reads it once). Default 60 s. */
  ttlMs?: number;
  /** Clock, for tests. Default `Date.now`. */
  now?: () => number;
}

const SECRET_REF = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$/;

/**
 * Turns a job's `pullSecrets` (`namespace/name` of `kubernetes.io/dockerconfigjson` or
 * legacy `kubernetes.io/dockercfg` Secrets) into credentials for that job only. Reads go
 * through `reader` and are cached for `ttlMs` (successes only: a Secret created after a
 * failure is seen by the next job).
 *
 * `credentials(refs)` resolves the merged credentials, the first listed Secret winning
 * for a host. It throws PW_ERR_AUTH_FAILED with message `pull secret <ns>/<name>: <why>`:
 * permanent (`detail.permanent`) when the Secret is missing, forbidden, malformed or of
 * the wrong type; retryable when the API could not be reached. Secret contents never
 * appear in errors.
 */
export class PullSecretResolver {
  readonly #reader: SecretReader;
  readonly #ttlMs: number;
  readonly #now: () => number;
  readonly #cache = new Map<string, { expires: number; creds: Promise<StaticCredentials> }>();

  constructor(reader: SecretReader, opts: PullSecretResolverOptions = {}) {
    this.#reader = reader;
    this.#ttlMs = opts.ttlMs ?? 60_000;
    this.#now = opts.now ?? Date.now;
  }

  async credentials(refs: readonly string[]): Promise<StaticCredentials> {
    const all = await Promise.all(refs.map((r) => this.#one(r)));
    // StaticCredentials.merge lets later entries win: merge in reverse so the first listed wins.
    const out = new StaticCredentials();
    for (const c of all.reverse()) out.merge(c);
    return out;
  }

  #one(ref: string): Promise<StaticCredentials> {
    const now = this.#now();
    for (const [k, e] of this.#cache) if (e.expires <= now) this.#cache.delete(k);
    const hit = this.#cache.get(ref);
    if (hit) return hit.creds;
    const creds = this.#read(ref);
    this.#cache.set(ref, { expires: now + this.#ttlMs, creds });
    creds.catch(() => this.#cache.delete(ref));
    return creds;
  }

  async #read(ref: string): Promise<StaticCredentials> {
    const m = SECRET_REF.exec(ref);
    if (!m) throw failure(ref, 'not a namespace/name reference', true);
    const [namespace, name] = [m[1] as string, m[3] as string];
    let secret: SecretData | undefined;
    try {
      secret = await this.#reader.read(namespace, name);
    } catch (err) {
      const status = kubeApiStatus(err);
      if (status === 403 || status === 401)
        throw failure(
          ref,
          `the agent may not read it (HTTP ${status}; grant secrets get, chart: agent.rbac.readPullSecrets)`,
          true,
          err,
        );
      const why = status !== undefined ? `HTTP ${status}` : (err as Error).message;
      throw failure(ref, `cannot read it from the Kubernetes API (${why})`, false, err);
    }
    if (!secret) throw failure(ref, 'not found', true);
    try {
      if (secret.type === 'kubernetes.io/dockerconfigjson' || secret.data['.dockerconfigjson']) {
        const raw = secret.data['.dockerconfigjson'];
        if (!raw) throw failure(ref, 'has no .dockerconfigjson key', true);
        return parseDockerConfig(raw.toString('utf8'));
      }
      if (secret.type === 'kubernetes.io/dockercfg' || secret.data['.dockercfg']) {
        const raw = secret.data['.dockercfg'];
        if (!raw) throw failure(ref, 'has no .dockercfg key', true);
        // The legacy format is the `auths` object alone.
        return parseDockerConfig(`{"auths":${raw.toString('utf8')}}`);
      }
    } catch (err) {
      if (isPrewarmError(err, ErrorCodes.AUTH_FAILED)) throw err;
      // parseDockerConfig's messages name hosts, never credentials.
      throw failure(ref, (err as Error).message, true, err);
    }
    throw failure(ref, `is of type ${secret.type}, not kubernetes.io/dockerconfigjson`, true);
  }
}

function failure(ref: string, why: string, permanent: boolean, cause?: unknown): PrewarmError {
  return new PrewarmError(ErrorCodes.AUTH_FAILED, `pull secret ${ref}: ${why}`, {
    ...(cause !== undefined ? { cause } : {}),
    detail: { pullSecret: ref, permanent },
  });
}
