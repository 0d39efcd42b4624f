/**
 * Per-ImagePrewarm pull-credential copies: how a node gets the credentials of the pull
 * secrets an ImagePrewarm names without being able to read any Secret of any tenant.
 *
 * The operator, which may read Secrets of ImagePrewarm namespaces anyway (to resolve tags),
 * writes what one ImagePrewarm's images need — the credentials for exactly the registries
 * its images name, first listed Secret winning per registry — into one immutable Secret
 * with a random name in a namespace that holds nothing else (the credentials namespace),
 * and the jobs carry `<namespace>/<name>` of it: a reference, never a credential. Agents
 * may `get` Secrets in that namespace and nowhere (no list, no watch), so a node can read
 * a copy only when it learned the name from a job.
 *
 * Lifecycle (all decisions here are pure functions, `PullCredentialIssuer` applies them):
 * - a copy is made when an ImagePrewarm with credentials for its registries needs one, and
 *   replaced by a new one (new name) when the credentials change or it is older than
 *   `maxAgeMs`; content never changes in place (immutable), so a name yields only what it
 *   was issued with;
 * - every job the ImagePrewarm owns is pointed at the current copy (`repointJobs`), in any
 *   state, so retries and re-warms find it;
 * - a copy that is not current is deleted once no pending or running job names it
 *   (`collectable`), every copy of an ImagePrewarm when it is deleted, and any copy whose
 *   ImagePrewarm no longer exists (`sweep`);
 * - copies carry their owner's uid (label), `namespace/name`, registries and an expiry of
 *   twice `maxAgeMs` (annotations): the agent refuses a copy that was not made for one of
 *   the job's owners, for the job's registry, or that has expired.
 */
import { randomBytes } from 'node:crypto';
import type { CredentialProvider } from '../../../oci/src/auth.js';
import type { PrewarmOwnerRef } from '../../../oci/src/job-contract.js';
import { PULL_CREDENTIALS_ANNOTATIONS, PULL_CREDENTIALS_LABEL } from '../../../oci/src/kube-secret.js';
import type { Logger } from '../logger.js';
import { type JobObservation, type JobSettings, jobSettings } from '../queue/types.js';
import { jobNode, type UpdateJob } from '../reconcile/plan.js';

/** A Secret of the credentials namespace as the operator lists it. */
export interface ManagedSecret {
  name: string;
  type: string;
  data: Record<string, Buffer>;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

/** A Secret to create (immutable). */
export type NewManagedSecret = ManagedSecret;

/** The Kubernetes calls the copies need (a namespaced Role: get, list, create, delete). */
export interface CredentialSecretsPort {
  /** Secrets of `namespace` matching `labelSelector` (`key=value`). */
  listSecrets(namespace: string, labelSelector: string): Promise<ManagedSecret[]>;
  /** Creates an immutable Secret; 409 when the name exists. */
  createSecret(namespace: string, secret: NewManagedSecret): Promise<void>;
  /** Deletes a Secret; a missing one is not an error. */
  deleteSecret(namespace: string, name: string): Promise<void>;
}

/** One copy, as the lifecycle decisions see it. */
export interface CredentialCopy {
  name: string;
  ownerUid: string;
  /** ms epoch it was made (from its expiry annotation minus the lifetime it was made with). */
  created: number;
  /** ms epoch after which agents refuse it. */
  expires: number;
  /** Its `.dockerconfigjson`. */
  content: Buffer;
}

/** What a copy for one ImagePrewarm should hold: a dockerconfigjson and the registries in it. */
export interface DesiredCopy {
  content: Buffer;
  registries: string[];
}

/**
 * The dockerconfigjson holding `credentials` for exactly `registries` (those it knows;
 * sorted, so equal credentials give equal bytes). Undefined when it knows none of them.
 */
export function desiredCopy(
  credentials: CredentialProvider | undefined,
  registries: readonly string[],
): DesiredCopy | undefined {
  if (!credentials) return undefined;
  const auths: Record<string, Record<string, string>> = {};
  for (const host of [...new Set(registries)].filter(Boolean).sort()) {
    const c = credentials.get(host);
    if (!c) continue;
    const entry: Record<string, string> = {};
    if (c.username !== undefined || c.password !== undefined)
      entry.auth = Buffer.from(`${c.username ?? ''}:${c.password ?? ''}`).toString('base64');
    if (c.identityToken) entry.identitytoken = c.identityToken;
    if (Object.keys(entry).length > 0) auths[host] = entry;
  }
  const hosts = Object.keys(auths);
  if (hosts.length === 0) return undefined;
  return { content: Buffer.from(JSON.stringify({ auths })), registries: hosts };
}

/**
 * Which copy of one ImagePrewarm is current and which are stale: the newest copy holding
 * exactly `desired` and younger than `maxAgeMs` is current; if there is none, a new one is
 * to be made (`create`). Every other copy is stale. No desired content: all are stale.
 */
export function chooseCopy(
  copies: readonly CredentialCopy[],
  desired: DesiredCopy | undefined,
  now: number,
  maxAgeMs: number,
): { current: CredentialCopy | 'create' | undefined; stale: CredentialCopy[] } {
  if (!desired) return { current: undefined, stale: [...copies] };
  const fresh = copies
    .filter((c) => c.content.equals(desired.content) && now - c.created < maxAgeMs)
    .sort((a, b) => b.created - a.created)[0];
  return {
    current: fresh ?? 'create',
    stale: copies.filter((c) => c !== fresh),
  };
}

/**
 * Jobs of `owner` whose pull-secret references should name `refs` now, with the settings
 * to write (their other settings unchanged). A job is repointed when it names something
 * else and either `owner` is its only owner, or what it names are copies of `owner`'s
 * (`ownRefs`: a shared job keeps what its first owner gave it, and that owner keeps it
 * current). Any state: a failed job is retried with it, a completed one re-warmed with it.
 * `skip`: jobs the plan updates already.
 */
export function repointJobs(
  owner: PrewarmOwnerRef,
  jobs: ReadonlyMap<string, JobObservation>,
  refs: readonly string[],
  ownRefs: ReadonlySet<string>,
  skip: ReadonlySet<string> = new Set(),
): UpdateJob[] {
  const want = JSON.stringify([...refs]);
  const out: UpdateJob[] = [];
  for (const [jobId, obs] of jobs) {
    if (skip.has(jobId) || !obs.settings) continue;
    if (!obs.owners.some((o) => o.uid === owner.uid)) continue;
    const named = obs.settings.pullSecrets ?? [];
    if (JSON.stringify(named) === want) continue;
    const sole = obs.owners.length === 1;
    if (!sole && !(named.length > 0 && named.every((r) => ownRefs.has(r)))) continue;
    const node = jobNode(jobId);
    if (node === undefined) continue;
    const settings: JobSettings = jobSettings({ ...obs.settings, pullSecrets: [...refs] });
    out.push({ node, jobId, settings });
  }
  return out;
}

/**
 * Stale copies that may be deleted: those no pending or running job among `jobs` names
 * (`<namespace>/<name>`). A running job read its credentials when it started, but a
 * retry of its attempt would read them again.
 */
export function collectable(
  stale: readonly CredentialCopy[],
  jobs: ReadonlyMap<string, JobObservation>,
  namespace: string,
): CredentialCopy[] {
  const inUse = new Set<string>();
  for (const obs of jobs.values())
    if (obs.state === 'pending' || obs.state === 'active')
      for (const r of obs.settings?.pullSecrets ?? []) inUse.add(r);
  return stale.filter((c) => !inUse.has(`${namespace}/${c.name}`));
}

export interface PullCredentialIssuerOptions {
  /** The credentials namespace (holds nothing but copies). */
  namespace: string;
  /** A copy older than this is replaced. Default 1 h. Copies expire at twice this. */
  maxAgeMs?: number;
  log: Logger;
  /** Clock, for tests. Default `Date.now`. */
  now?: () => number;
}

const ANN = PULL_CREDENTIALS_ANNOTATIONS;

/**
 * Makes, finds and removes the copies (see the module comment). Only the leader calls it,
 * and it is the only writer of the credentials namespace, so the copies it listed once per
 * ImagePrewarm are kept in memory and updated as it writes (`reset` after a leadership
 * change). Never logs or returns credentials: only copy names.
 */
export class PullCredentialIssuer {
  readonly #port: CredentialSecretsPort;
  readonly #namespace: string;
  readonly #maxAgeMs: number;
  readonly #log: Logger;
  readonly #now: () => number;
  /** owner uid → its copies (absent: not listed yet). */
  #byOwner = new Map<string, CredentialCopy[]>();

  constructor(port: CredentialSecretsPort, opts: PullCredentialIssuerOptions) {
    this.#port = port;
    this.#namespace = opts.namespace;
    this.#maxAgeMs = opts.maxAgeMs ?? 3_600_000;
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
  }

  get namespace(): string {
    return this.#namespace;
  }

  /** Forgets what was listed (another replica may have written meanwhile). */
  reset(): void {
    this.#byOwner = new Map();
  }

  /**
   * The references jobs of `owner` should carry for `desired` (one copy, made now if
   * needed; none when there is nothing to copy), `ownRefs` naming every copy of `owner`,
   * and the stale copies to pass to `collect` once jobs have been repointed.
   */
  async ensure(
    owner: PrewarmOwnerRef,
    desired: DesiredCopy | undefined,
  ): Promise<{ refs: string[]; ownRefs: Set<string>; stale: CredentialCopy[] }> {
    const copies = await this.#copies(owner.uid);
    const now = this.#now();
    const { current, stale } = chooseCopy(copies, desired, now, this.#maxAgeMs);
    let made: CredentialCopy | undefined;
    if (current === 'create' && desired) {
      made = {
        name: `kprw-pull-${randomBytes(16).toString('hex')}`,
        ownerUid: owner.uid,
        created: now,
        expires: now + 2 * this.#maxAgeMs,
        content: desired.content,
      };
      await this.#port.createSecret(this.#namespace, {
        name: made.name,
        type: 'kubernetes.io/dockerconfigjson',
        data: { '.dockerconfigjson': desired.content },
        labels: { 'app.kubernetes.io/managed-by': 'kube-prewarm', [PULL_CREDENTIALS_LABEL]: owner.uid },
        annotations: {
          [ANN.owner]: `${owner.namespace}/${owner.name}`,
          [ANN.ownerUid]: owner.uid,
          [ANN.registries]: desired.registries.join(','),
          [ANN.expires]: new Date(made.expires).toISOString(),
          // The lifetime it was made with, so `created` survives a restart.
          'prewarm.kube-prewarm.io/max-age-ms': String(this.#maxAgeMs),
        },
      });
      this.#byOwner.set(owner.uid, [...copies, made]);
      this.#log.info(
        { prewarm: `${owner.namespace}/${owner.name}`, copy: made.name, registries: desired.registries },
        'pull credentials copied for the agents',
      );
    }
    const chosen = made ?? (current === 'create' ? undefined : current);
    const ownRefs = new Set([...copies, ...(made ? [made] : [])].map((c) => this.#ref(c)));
    return { refs: chosen ? [this.#ref(chosen)] : [], ownRefs, stale };
  }

  /** Deletes the stale copies no pending or running job among `jobs` names. */
  async collect(
    ownerUid: string,
    stale: readonly CredentialCopy[],
    jobs: ReadonlyMap<string, JobObservation>,
  ): Promise<void> {
    for (const c of collectable(stale, jobs, this.#namespace)) await this.#delete(ownerUid, c.name);
  }

  /** Deletes every copy of an ImagePrewarm (it is being deleted). */
  async removeAll(ownerUid: string): Promise<void> {
    for (const c of await this.#copies(ownerUid)) await this.#delete(ownerUid, c.name);
    this.#byOwner.delete(ownerUid);
  }

  /** Deletes copies whose ImagePrewarm (by uid) is not in `live` (left by a crash). */
  async sweep(live: ReadonlySet<string>): Promise<number> {
    const all = await this.#port.listSecrets(this.#namespace, 'app.kubernetes.io/managed-by=kube-prewarm');
    let n = 0;
    for (const s of all) {
      const uid = s.labels[PULL_CREDENTIALS_LABEL];
      if (uid === undefined || live.has(uid)) continue;
      await this.#delete(uid, s.name);
      n++;
    }
    return n;
  }

  #ref(c: CredentialCopy): string {
    return `${this.#namespace}/${c.name}`;
  }

  async #copies(ownerUid: string): Promise<CredentialCopy[]> {
    const known = this.#byOwner.get(ownerUid);
    if (known) return known;
    const listed = await this.#port.listSecrets(this.#namespace, `${PULL_CREDENTIALS_LABEL}=${ownerUid}`);
    const copies = listed.map((s) => {
      const expires = Date.parse(s.annotations[ANN.expires] ?? '') || 0;
      const maxAge = Number(s.annotations['prewarm.kube-prewarm.io/max-age-ms']) || this.#maxAgeMs;
      return {
        name: s.name,
        ownerUid,
        created: expires - 2 * maxAge,
        expires,
        content: s.data['.dockerconfigjson'] ?? Buffer.alloc(0),
      };
    });
    this.#byOwner.set(ownerUid, copies);
    return copies;
  }

  async #delete(ownerUid: string, name: string): Promise<void> {
    await this.#port.deleteSecret(this.#namespace, name);
    const left = this.#byOwner.get(ownerUid)?.filter((c) => c.name !== name);
    if (left) this.#byOwner.set(ownerUid, left);
    this.#log.info({ copy: name }, 'pull-credential copy deleted');
  }
}
