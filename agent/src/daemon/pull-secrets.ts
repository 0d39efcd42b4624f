import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import {
  type Credential,
  type CredentialProvider,
  normaliseHost,
  parseDockerConfig,
  StaticCredentials,
} from '../../../oci/src/auth.js';
import { ErrorCodes, isPrewarmError, PrewarmError } from '../../../oci/src/errors.js';
import type { PrewarmOwnerRef } from '../../../oci/src/job-contract.js';
import {
  kubeApiStatus,
  PULL_CREDENTIALS_ANNOTATIONS,
  readSecretData,
  type SecretData,
} from '../../../oci/src/kube-secret.js';

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
  /**
   * Namespace of the operator's per-ImagePrewarm pull-credential copies
   * (KUBE_PREWARM_PULL_CREDENTIALS_NAMESPACE). A reference there is used only when the
   * copy's annotations name one of the job's owners, the job's registry, and a time not
   * yet past. Empty or absent: jobs may only name Secrets of their owners' namespaces.
   */
  credentialsNamespace?: string;
}

/** What a job says about itself that its pull-secret references are checked against. */
export interface PullSecretJob {
  /** The ImagePrewarms that want the job (job data `owners`). */
  owners: readonly PrewarmOwnerRef[];
  /** Registry host of the job's repository (`host[:port]`). */
  registry: string;
}

interface ReadSecret {
  creds: StaticCredentials;
  annotations: Record<string, string>;
}

const SECRET_REF = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$/;

/**
 * Turns a job's `pullSecrets` (`namespace/name` of `kubernetes.io/dockerconfigjson` or
 * legacy `kubernetes.io/dockercfg` Secrets) into credentials for that job only. Reads go
 * through `reader` and are cached for `ttlMs` (successes only: a Secret created after a
 * failure is seen by the next job).
 *
 * Job data comes from Redis, which the agent cannot authenticate, so before anything is
 * read each reference is checked against the job (`checkPullSecretRefs`): a Secret
 * outside the credentials namespace is read only when one of the job's owners is in its
 * namespace; a copy in the credentials namespace is used only when it was made for one of
 * the job's owners, for the job's registry, and has not expired.
 *
 * `credentials(refs, job)` resolves the merged credentials, the first listed Secret
 * winning for a host. It throws PW_ERR_AUTH_FAILED with message `pull secret
 * <ns>/<name>: <why>`: permanent (`detail.permanent`) when the reference is refused or
 * the Secret is missing, forbidden, malformed or of the wrong type; retryable when the API
 * could not be reached. Secret contents never appear in errors.
 */
export class PullSecretResolver {
  readonly #reader: SecretReader;
  readonly #ttlMs: number;
  readonly #now: () => number;
  readonly #credentialsNamespace: string;
  readonly #cache = new Map<string, { expires: number; creds: Promise<ReadSecret> }>();

  constructor(reader: SecretReader, opts: PullSecretResolverOptions = {}) {
    this.#reader = reader;
    this.#ttlMs = opts.ttlMs ?? 60_000;
    this.#now = opts.now ?? Date.now;
    this.#credentialsNamespace = opts.credentialsNamespace ?? '';
  }

  async credentials(refs: readonly string[], job: PullSecretJob): Promise<StaticCredentials> {
    // Every reference is judged before any is read: a refused one costs no API request.
    checkPullSecretRefs(refs, job, this.#credentialsNamespace);
    const all = await Promise.all(
      refs.map(async (r) => {
        const got = await this.#one(r);
        if (this.#credentialsNamespace !== '' && r.startsWith(`${this.#credentialsNamespace}/`))
          checkCopy(r, got.annotations, job, this.#now());
        return got.creds;
      }),
    );
    // StaticCredentials.merge lets later entries win: merge in reverse so the first listed wins.
    const out = new StaticCredentials();
    for (const c of all.reverse()) out.merge(c);
    return out;
  }

  #one(ref: string): Promise<ReadSecret> {
    const now = this.#now();
    for (const [k, e] of this.#cache) if (e.expires <= now) this.#cache.delete(k);
    const hit = this.#cache.get(ref);
    if (hit) return hit.creds;
    const creds = this.#read(ref);
    this.#cache.set(ref, { expires: now + this.#ttlMs, creds });
    creds.catch(() => this.#cache.delete(ref));
    return creds;
  }

  async #read(ref: string): Promise<ReadSecret> {
    const secret = await this.#get(ref);
    return { creds: parseSecret(ref, secret), annotations: secret.annotations ?? {} };
  }

  async #get(ref: string): Promise<SecretData> {
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
    return secret;
  }
}

/** The credentials of a dockerconfigjson (or legacy dockercfg) Secret. */
function parseSecret(ref: string, secret: SecretData): StaticCredentials {
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

/**
 * Judges a job's pull-secret references against the job before anything is read. Job
 * data is written by whoever can write to Redis, so it is not taken at its word: a
 * reference must be `namespace/name`, and its namespace either the credentials namespace
 * (the copy's own annotations are checked after reading, `checkCopy`) or the namespace of
 * one of the job's owners: a job never makes this node use another namespace's Secret.
 * Throws a permanent PW_ERR_AUTH_FAILED naming the reference and why.
 */
export function checkPullSecretRefs(
  refs: readonly string[],
  job: PullSecretJob,
  credentialsNamespace = '',
): void {
  const namespaces = [...new Set(job.owners.map((o) => o.namespace))].sort();
  for (const ref of refs) {
    const m = SECRET_REF.exec(ref);
    if (!m) throw failure(ref, 'not a namespace/name reference', true);
    const ns = m[1] as string;
    if (credentialsNamespace !== '' && ns === credentialsNamespace) continue;
    if (namespaces.includes(ns)) continue;
    throw failure(
      ref,
      `refused: the job's owners are in ${namespaces.length > 0 ? namespaces.join(', ') : 'no namespace'}, not ${ns}; a job may only use Secrets of its own ImagePrewarm's namespace${credentialsNamespace ? ` or the operator's copies in ${credentialsNamespace}` : ''}`,
      true,
    );
  }
}

/**
 * Checks one of the operator's pull-credential copies against the job: made for one of
 * its owners (uid), holding credentials for its registry, not expired. A job pointing at
 * another ImagePrewarm's copy is refused even though this node could read it.
 */
function checkCopy(ref: string, annotations: Record<string, string>, job: PullSecretJob, now: number): void {
  const A = PULL_CREDENTIALS_ANNOTATIONS;
  const uid = annotations[A.ownerUid];
  if (!uid)
    throw failure(ref, 'refused: not a kube-prewarm pull-credential copy (no owner annotation)', true);
  if (!job.owners.some((o) => o.uid === uid)) {
    const owners = job.owners.map((o) => `${o.namespace}/${o.name}`).join(', ') || 'none';
    throw failure(
      ref,
      `refused: made for ImagePrewarm ${annotations[A.owner] ?? uid}, not for this job's owners (${owners})`,
      true,
    );
  }
  const registries = (annotations[A.registries] ?? '').split(',').filter(Boolean).map(normaliseHost);
  if (!registries.includes(normaliseHost(job.registry)))
    throw failure(
      ref,
      `refused: holds credentials for ${registries.join(', ') || 'no registry'}, not for ${job.registry}`,
      true,
    );
  const expires = Date.parse(annotations[A.expires] ?? '');
  if (!(expires > now))
    throw failure(
      ref,
      `refused: expired at ${annotations[A.expires] ?? '(no expiry)'} (the operator replaces copies before they expire; is it running?)`,
      true,
    );
}

function failure(ref: string, why: string, permanent: boolean, cause?: unknown): PrewarmError {
  return new PrewarmError(ErrorCodes.AUTH_FAILED, `pull secret ${ref}: ${why}`, {
    ...(cause !== undefined ? { cause } : {}),
    detail: { pullSecret: ref, permanent },
  });
}
