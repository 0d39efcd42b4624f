/**
 * The ImagePrewarm controller: the side-effecting half of reconciliation around the pure
 * `plan()`. Level-based, as in controller-runtime: every event (ImagePrewarm or Node
 * change, push event, timer) only enqueues a key; `reconcile(key)` re-reads the cached
 * objects and the job states and converges. An error is retried with backoff; a problem
 * that retrying cannot fix (bad schedule, missing tag) is written as a condition.
 *
 * Three key kinds share one work queue: `p/<namespace>/<name>` (an ImagePrewarm),
 * `n/<node>` (a startup-gated node whose taint may be removed) and `d/<node>` (a deleted
 * node whose queue is dropped).
 *
 * In-memory state (pending triggers, the in-flight ledger, per-node warmth) is only an
 * accelerator: after a restart every value is rebuilt from the cluster, the status and
 * Redis by the first reconcile of each key.
 */
import { createHash } from 'node:crypto';
import { parseDockerConfig, StaticCredentials } from '../../../oci/src/auth.js';
import { eachLimited } from '../../../oci/src/concurrency.js';
import type { Digest } from '../../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError } from '../../../oci/src/errors.js';
import type { PrewarmMode, PrewarmOwnerRef } from '../../../oci/src/job-contract.js';
import { formatPlatform, type Platform } from '../../../oci/src/platform.js';
import { parseReference } from '../../../oci/src/reference.js';
import {
  FINALIZER,
  type ImagePrewarm,
  type ImagePrewarmStatus,
  type ImageStatus,
  imageName,
  prewarmKey,
  REFRESH_ANNOTATION,
  type TriggerRecord,
} from '../api/types.js';
import {
  type CredentialCopy,
  desiredCopy,
  type PullCredentialIssuer,
  repointJobs,
} from '../credentials/pull-credentials.js';
import { isStartupTaint, type NodeView } from '../kube/node-view.js';
import { apiStatus, type KubePort } from '../kube/port.js';
import { errFields, type Logger } from '../logger.js';
import type { OperatorMetrics } from '../metrics.js';
import type { JobQueue } from '../queue/job-queue.js';
import type { JobRef, PushEventLike } from '../queue/types.js';
import type { Credentials, Resolver } from '../resolve/resolver.js';
import { DEFAULT_MAX_GATE_DEADLINE_MS, type GateState, gateDecision } from './gate.js';
import { exclusion, selectNodes } from './nodes.js';
import { jobRefsToObserve, type NodeWarmth, type PlanOptions, plan, type ResolvedImage } from './plan.js';
import { matchPush } from './push-match.js';
import { advance, pinnedDigests } from './retention.js';
import { evaluateSchedule } from './schedule.js';
import {
  gateNodesAllowed,
  gateNodesRefusal,
  OPEN_POLICY,
  pinnedQuotaFor,
  type QuotaEntry,
  quotaKey,
  quotaRefusals,
  type TenancyPolicy,
} from './tenancy.js';
import { WorkQueue } from './work-queue.js';
import { type WrittenStatus, withWrittenStatus } from './written-status.js';

export interface ControllerOptions extends PlanOptions {
  /** Reconciles running at once (never two for the same key). Default 4. */
  concurrency?: number;
  /** Every ImagePrewarm is reconciled at least this often. Default 5 min. */
  resyncMs?: number;
  /** Jobs in flight cluster-wide, all ImagePrewarms together. Default 10 000. */
  maxInFlightJobs?: number;
  /** Jobs in flight per registry host (pull budget), e.g. `{ 'registry.example.com': 200 }`. */
  registryMaxInFlight?: Record<string, number>;
  /** First retry after a failed resolve; doubles up to 5 min. Default 5 s. */
  resolveRetryMs?: number;
  /** Push events older than this are ignored. Default 1 h. */
  maxPushAgeMs?: number;
  /** Which namespaces may gate nodes, and their pinned-image quotas (tenancy.ts). Default: no restriction. */
  policy?: TenancyPolicy;
}

interface PendingTrigger {
  trigger: TriggerRecord;
  /** For tagGlob entries: the concrete tag pushed. */
  tag?: string;
  seq: number;
}

const P = 'p/';
/** Job mutations (unpin, owners, retry) in flight at once; each is a couple of Redis round trips. */
const MUTATION_CONCURRENCY = 64;
const N = 'n/';
/** A Node that was deleted: its queue is dropped. */
const D = 'd/';

export class PrewarmController {
  readonly #kube: KubePort;
  readonly #jobs: JobQueue;
  readonly #resolver: Resolver;
  readonly #metrics: OperatorMetrics;
  readonly #log: Logger;
  readonly #policy: TenancyPolicy;
  /** Per-ImagePrewarm pull-credential copies for the agents; absent: jobs name the Secrets. */
  readonly #pull: PullCredentialIssuer | undefined;
  readonly #opts: Required<Omit<ControllerOptions, 'pullSecrets' | 'registryMaxInFlight' | 'policy'>> & {
    registryMaxInFlight: Record<string, number>;
  };
  #queue = new WorkQueue();
  /** Gauge label sets last set per key, so a deleted ImagePrewarm's series go away. */
  readonly #gaugeLabels = new Map<string, { namespace: string; prewarm: string; image: string }[]>();
  readonly #triggers = new Map<string, Map<string, PendingTrigger>>();
  readonly #ledger = new Map<string, { byRegistry: Map<string, number>; pending: number; active: number }>();
  readonly #warmth = new Map<
    string,
    { generation: number; nodes: Map<string, NodeWarmth>; gateExpired: Set<string> }
  >();
  /** Gated nodes without a creation time: when this process first saw them gated (gate deadline). */
  readonly #gatedSeen = new Map<string, number>();
  readonly #written = new Map<string, WrittenStatus>();
  readonly #resolveFailures = new Map<string, number>();
  readonly #seenCompleted = new Set<string>();
  readonly #orphans = new Map<string, JobRef>();
  #seq = 0;
  #running = false;
  #startedAt = 0;

  constructor(
    deps: {
      kube: KubePort;
      jobs: JobQueue;
      resolver: Resolver;
      metrics: OperatorMetrics;
      log: Logger;
      pullCredentials?: PullCredentialIssuer;
    },
    opts: Partial<ControllerOptions> = {},
  ) {
    this.#kube = deps.kube;
    this.#jobs = deps.jobs;
    this.#resolver = deps.resolver;
    this.#metrics = deps.metrics;
    this.#log = deps.log;
    this.#policy = opts.policy ?? OPEN_POLICY;
    this.#pull = deps.pullCredentials;
    this.#opts = {
      concurrency: opts.concurrency ?? 4,
      resyncMs: opts.resyncMs ?? 300_000,
      maxInFlightJobs: opts.maxInFlightJobs ?? 10_000,
      registryMaxInFlight: opts.registryMaxInFlight ?? {},
      resolveRetryMs: opts.resolveRetryMs ?? 5_000,
      maxPushAgeMs: opts.maxPushAgeMs ?? 3_600_000,
      failedRetryAfterMs: opts.failedRetryAfterMs ?? 300_000,
      maxFailingNodes: opts.maxFailingNodes ?? 20,
      progressPollMs: opts.progressPollMs ?? 2_000,
      maxGateDeadlineMs: opts.maxGateDeadlineMs ?? DEFAULT_MAX_GATE_DEADLINE_MS,
    };
    this.#kube.prewarms.onChange((p) => {
      if (this.#running) this.#queue.add(P + prewarmKey(p));
    });
    this.#kube.nodes.onChange((n) => this.#onNode(n));
  }

  #onNode(n: NodeView): void {
    if (!this.#running) return;
    // Any node change may change any selection: enqueue every ImagePrewarm (deduplicated).
    for (const p of this.#kube.prewarms.list()) this.#queue.add(P + prewarmKey(p));
    if (!this.#kube.nodes.get(n.name)) this.#queue.add(D + n.name);
    else if (n.gated) this.#queue.add(N + n.name);
  }

  /**
   * Runs the controller until `signal` aborts (leadership lost or shutdown), then waits for
   * in-flight reconciles to finish. Call again after a new `start`: state is rebuilt.
   */
  async run(signal: AbortSignal): Promise<void> {
    this.#running = true;
    this.#startedAt = Date.now();
    // Another replica may have led meanwhile: cached job states are suspect.
    this.#jobs.invalidate();
    this.#pull?.reset();
    this.#queue = new WorkQueue();
    const resync = setInterval(() => {
      // A full re-read of finished jobs for correctness: agents add to completed jobs'
      // progress (runtime re-warm counts), which the cached observations do not see.
      this.#jobs.forgetFinished();
      this.#enqueueAll();
    }, this.#opts.resyncMs);
    resync.unref();
    // Orphans are swept on every reconcile too, but none may come once the last
    // ImagePrewarm is gone.
    const sweep = setInterval(() => {
      if (this.#orphans.size > 0) void this.#sweepOrphans();
    }, this.#opts.progressPollMs * 5);
    sweep.unref();
    try {
      await Promise.all([this.#kube.prewarms.waitForSync(signal), this.#kube.nodes.waitForSync(signal)]);
      // Orphans another leader (or this process before a restart) could not remove yet.
      for (const ref of await this.#jobs.orphans()) this.#orphans.set(ref.jobId, ref);
      this.#enqueueAll();
      await this.#queue.run(this.#opts.concurrency, (key) => this.#handle(key), signal);
    } catch (err) {
      if (!signal.aborted) throw err;
    } finally {
      clearInterval(resync);
      clearInterval(sweep);
      this.#running = false;
      this.#queue.shutdown();
      this.#ledger.clear();
      this.#warmth.clear();
      this.#written.clear();
    }
  }

  #enqueueAll(): void {
    for (const p of this.#kube.prewarms.list()) this.#queue.add(P + prewarmKey(p));
    for (const n of this.#kube.nodes.list()) if (n.gated) this.#queue.add(N + n.name);
    if (this.#pull) void this.#sweepCredentials();
  }

  /** Deletes pull-credential copies whose ImagePrewarm is gone (a crash before its finalizer ran). */
  async #sweepCredentials(): Promise<void> {
    try {
      const live = new Set(this.#kube.prewarms.list().map((p) => p.metadata.uid));
      const n = await this.#pull!.sweep(live);
      if (n > 0) this.#log.info({ copies: n }, 'pull-credential copies of deleted ImagePrewarms removed');
    } catch (err) {
      this.#log.warn(errFields(err), 'pull-credential sweep failed; retried at the next resync');
    }
  }

  /** Enqueues the other ImagePrewarms of `namespace` (their quota admission may have changed). */
  #enqueueNamespace(namespace: string, except: string): void {
    for (const o of this.#kube.prewarms.list())
      if (o.metadata.namespace === namespace && prewarmKey(o) !== except) this.#queue.add(P + prewarmKey(o));
  }

  /**
   * The namespace's image entries for its pinned-image quota: this ImagePrewarm's with the
   * sizes just read (or, for an unchanged digest whose size could not be read now, the
   * last known), the others' from their status (what their own reconciles computed).
   */
  #quotaEntries(cr: ImagePrewarm, images: readonly ResolvedImage[]): QuotaEntry[] {
    const key = prewarmKey(cr);
    const created = (p: ImagePrewarm) => Date.parse(p.metadata.creationTimestamp ?? '') || 0;
    const known = new Map((cr.status?.images ?? []).map((s) => [s.name, s] as const));
    const out: QuotaEntry[] = images.map((img, index) => {
      const sizes = Object.values(img.current?.bytesByPlatform ?? {});
      const last = known.get(img.name);
      const bytes =
        sizes.length > 0
          ? Math.max(...sizes)
          : last?.digest === img.current?.digest
            ? last?.bytes
            : undefined;
      return {
        prewarm: key,
        created: created(cr),
        index,
        name: img.name,
        ...(img.current ? { digest: img.current.digest } : {}),
        ...(bytes !== undefined ? { bytes } : {}),
      };
    });
    for (const o of this.#kube.prewarms.list()) {
      if (o.metadata.namespace !== cr.metadata.namespace || prewarmKey(o) === key) continue;
      if (o.metadata.deletionTimestamp) continue;
      const order = (o.spec?.images ?? []).map(imageName);
      for (const s of o.status?.images ?? []) {
        const index = order.indexOf(s.name);
        if (index < 0) continue;
        out.push({
          prewarm: prewarmKey(o),
          created: created(o),
          index,
          name: s.name,
          ...(s.digest ? { digest: s.digest } : {}),
          ...(s.bytes !== undefined ? { bytes: s.bytes } : {}),
        });
      }
    }
    return out;
  }

  /**
   * The pull-secret references this ImagePrewarm's jobs carry: with the issuer, its one
   * pull-credential copy (made now if needed; problems when that fails) plus what
   * repointing and collection need; without, its Secrets as `namespace/name`.
   */
  async #pullSecrets(
    cr: ImagePrewarm,
    owner: PrewarmOwnerRef,
    creds: Credentials | undefined,
    images: readonly ResolvedImage[],
    problems: { reason: string; message: string }[],
  ): Promise<{ refs: string[]; ownRefs: Set<string>; stale: CredentialCopy[]; managed: boolean }> {
    const names = (cr.spec.pullSecrets ?? []).map((s) => `${cr.metadata.namespace}/${s.name}`);
    if (!this.#pull) return { refs: names, ownRefs: new Set(), stale: [], managed: false };
    try {
      const want = desiredCopy(
        creds?.provider,
        images.filter((i) => !i.blocked).map((i) => i.registry),
      );
      return { ...(await this.#pull.ensure(owner, want)), managed: true };
    } catch (err) {
      problems.push({
        reason: 'PullCredentialsFailed',
        message: `cannot copy the pull credentials for the agents into namespace ${this.#pull.namespace}: ${(err as Error).message}`,
      });
      return { refs: [], ownRefs: new Set(), stale: [], managed: false };
    }
  }

  /**
   * Records a push event's triggers and enqueues the ImagePrewarms it concerns. Returns
   * how many matched. Cheap and synchronous: resolution happens in the reconcile.
   */
  push(event: PushEventLike): number {
    const at = Date.parse(event.timestamp ?? '') || Date.parse(event.receivedAt ?? '') || Date.now();
    if (Date.now() - at > this.#opts.maxPushAgeMs) {
      this.#metrics.pushEvents.inc({ result: 'stale' });
      return 0;
    }
    const matches = matchPush(event, this.#kube.prewarms.list());
    this.#metrics.pushEvents.inc({ result: matches.length > 0 ? 'matched' : 'unmatched' });
    for (const m of matches) {
      const key = prewarmKey(m.prewarm);
      const pending = this.#triggers.get(key) ?? new Map<string, PendingTrigger>();
      for (const i of m.images) {
        const img = m.prewarm.spec.images[i]!;
        pending.set(imageName(img), {
          trigger: { type: 'push', source: event.source, time: new Date(at).toISOString() },
          ...(img.tagGlob !== undefined ? { tag: event.tag! } : {}),
          seq: ++this.#seq,
        });
      }
      this.#triggers.set(key, pending);
      this.#queue.add(P + key);
    }
    return matches.length;
  }

  async #handle(key: string): Promise<void> {
    const started = process.hrtime.bigint();
    try {
      const requeue = key.startsWith(N)
        ? await this.#reconcileNode(key.slice(N.length))
        : key.startsWith(D)
          ? await this.#dropNode(key.slice(D.length))
          : await this.#reconcile(key.slice(P.length));
      this.#queue.forget(key);
      if (requeue !== undefined) this.#queue.addAfter(key, requeue);
      this.#metrics.reconciles.inc({ result: 'ok' });
    } catch (err) {
      const delay = this.#queue.addRateLimited(key);
      this.#metrics.reconciles.inc({ result: 'error' });
      const level = apiStatus(err) === 409 ? 'debug' : 'warn';
      this.#log[level]({ key, ...errFields(err), retryInMs: delay }, 'reconcile failed; will retry');
    } finally {
      this.#metrics.reconcileSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
    }
  }

  /** Reconciles one ImagePrewarm; returns the requeue delay, if any. */
  async #reconcile(key: string): Promise<number | undefined> {
    const [namespace, name] = splitKey(key);
    const cached = this.#kube.prewarms.get(name, namespace);
    if (!cached) {
      this.#forgetKey(key);
      return undefined;
    }
    const owner: PrewarmOwnerRef = { namespace, name, uid: cached.metadata.uid };
    if (cached.metadata.deletionTimestamp) {
      return this.#finalize(key, cached, owner);
    }
    const finalizers = cached.metadata.finalizers ?? [];
    if (!finalizers.includes(FINALIZER)) {
      await this.#kube.setPrewarmFinalizers(
        namespace,
        name,
        [...finalizers, FINALIZER],
        cached.metadata.resourceVersion ?? '',
      );
      // The update event brings the key back with the finalizer in place.
      return undefined;
    }

    const cr = this.#withWrittenStatus(key, cached);
    const spec = cr.spec;
    const status = cr.status ?? {};
    const now = Date.now();
    const log = this.#log.child({ prewarm: key });
    const nodes = this.#kube.nodes.list();
    const nodeCreatedAt = new Map<string, number>();
    for (const n of nodes) if (n.createdAt !== undefined) nodeCreatedAt.set(n.name, n.createdAt);
    const gatedSince = new Map<string, number>();
    for (const n of nodes) if (n.gated) gatedSince.set(n.name, this.#gatedSinceOf(n, now));
    const problems: { reason: string; message: string }[] = [];

    // Triggers: schedule, refresh annotation, push events (taken now; consumed on success).
    const created = new Date(cr.metadata.creationTimestamp ?? now).getTime();
    const lastRun = status.lastScheduleTime ? Date.parse(status.lastScheduleTime) : created;
    const schedule = evaluateSchedule(spec.triggers?.schedule, spec.triggers?.timeZone, lastRun, now);
    if (schedule.kind === 'invalid') problems.push({ reason: 'InvalidSchedule', message: schedule.message });
    const scheduleDue = schedule.kind === 'valid' && schedule.due;
    const refresh = cr.metadata.annotations?.[REFRESH_ANNOTATION];
    const refreshDue = refresh !== undefined && refresh !== status.lastRefresh;
    const pending = new Map(this.#triggers.get(key) ?? []);
    const seqLimit = this.#seq;

    const creds = await this.#credentials(cr, problems);
    const targeted = selectNodes(spec, nodes);
    const platforms = uniquePlatforms(targeted);
    const retain = spec.retain ?? 1;
    const byName = new Map((status.images ?? []).map((s) => [s.name, s] as const));

    let resolveError: { retryable: boolean } | undefined;
    const images: ResolvedImage[] = [];
    for (const img of spec.images) {
      const nameOf = imageName(img);
      const record = byName.get(nameOf);
      const trig = pending.get(nameOf);
      let registry: string;
      let repository: string;
      try {
        const ref = parseReference(`${img.repository}:x`);
        registry = ref.registry;
        repository = `${ref.registry}/${ref.repository}`;
      } catch (err) {
        images.push({
          name: nameOf,
          repository: img.repository,
          registry: '',
          previous: [],
          dropped: [],
          error: { reason: 'InvalidReference', message: (err as Error).message },
        });
        continue;
      }
      const base = {
        name: nameOf,
        repository,
        registry,
        ...(img.platforms ? { platformFilter: img.platforms } : {}),
      };
      let current: ResolvedImage['current'];
      let tag: string | undefined;
      let lastTrigger = record?.lastTrigger;
      let error: ResolvedImage['error'];
      let waiting: ResolvedImage['waiting'];
      if (img.digest !== undefined) {
        current = {
          digest: img.digest as Digest,
          resolvedAt:
            record?.digest === img.digest && record.resolvedAt
              ? record.resolvedAt
              : new Date(now).toISOString(),
        };
        if (record?.digest !== img.digest) lastTrigger = { type: 'spec', time: new Date(now).toISOString() };
      } else {
        tag = img.tag ?? trig?.tag ?? record?.tag;
        const due = !record?.digest || record.tag !== tag || scheduleDue || refreshDue || trig !== undefined;
        if (record?.digest) {
          current = {
            digest: record.digest as Digest,
            resolvedAt: record.resolvedAt ?? new Date(now).toISOString(),
          };
        }
        if (tag === undefined) {
          waiting = { reason: 'AwaitingPush', message: `no pushed tag has matched ${img.tagGlob} yet` };
        } else if (due) {
          try {
            const got = await this.#resolver.resolveTag(img.repository, tag, creds);
            const changed = got.digest !== record?.digest;
            this.#metrics.resolves.inc({ result: changed ? 'changed' : 'unchanged' });
            if (changed) {
              current = { digest: got.digest, resolvedAt: new Date(now).toISOString() };
              lastTrigger =
                trig?.trigger ??
                (scheduleDue
                  ? { type: 'schedule', time: new Date(now).toISOString() }
                  : refreshDue
                    ? { type: 'refresh', time: new Date(now).toISOString() }
                    : { type: 'spec', time: new Date(now).toISOString() });
              log.info(
                { image: nameOf, digest: got.digest, previous: record?.digest, trigger: lastTrigger.type },
                'tag resolved',
              );
            }
          } catch (err) {
            this.#metrics.resolves.inc({ result: 'error' });
            error = resolveErrorStatus(err);
            resolveError = {
              retryable: resolveError?.retryable === true || !isPrewarmError(err) || err.retryable,
            };
            log.warn({ image: nameOf, ...errFields(err) }, 'tag resolution failed');
          }
        }
      }
      const kept = advance(record, current?.digest, retain);
      if (current) {
        try {
          const d = await this.#resolver.describe(img.repository, current.digest, platforms, creds);
          current = {
            ...current,
            mediaType: d.mediaType,
            ...(d.platforms ? { platforms: d.platforms } : {}),
            bytesByPlatform: d.bytesByPlatform,
          };
        } catch (err) {
          // Sizes and platform lists are informative; agents report a missing platform themselves.
          // A registry the operator may not contact is not: the CR must say so (digest images
          // are never resolved, so this is where they learn it).
          if (isPrewarmError(err, ErrorCodes.EGRESS_DENIED)) error ??= resolveErrorStatus(err);
          log.debug({ image: nameOf, ...errFields(err) }, 'cannot describe digest');
        }
      }
      images.push({
        ...base,
        ...(tag !== undefined ? { tag } : {}),
        ...(current ? { current } : {}),
        previous: kept.previous,
        dropped: kept.dropped,
        ...(lastTrigger ? { lastTrigger } : {}),
        ...(error ? { error } : {}),
        ...(waiting ? { waiting } : {}),
      });
    }

    // Tenancy policy (tenancy.ts): gating only where allowed; pinned bytes within the quota.
    const gateAllowed = gateNodesAllowed(this.#policy, namespace);
    if (spec.startup?.gateNodes === true && !gateAllowed) problems.push(gateNodesRefusal(namespace));
    const quota = pinnedQuotaFor(this.#policy, namespace);
    if (quota > 0) {
      const refused = quotaRefusals(this.#quotaEntries(cr, images), quota);
      for (const img of images) {
        const r = refused.get(quotaKey(key, img.name));
        if (r) img.blocked = r;
      }
    }
    const pull = await this.#pullSecrets(cr, owner, creds, images, problems);

    // Entries removed from the spec: everything they pinned is dropped.
    const specNames = new Set(spec.images.map(imageName));
    const removed: Digest[] = [];
    for (const s of status.images ?? []) if (!specNames.has(s.name)) removed.push(...pinnedDigests(s));
    const mode: PrewarmMode = spec.mode ?? 'cache';
    const modes: PrewarmMode[] =
      status.images && status.mode !== undefined && status.mode !== mode ? ['cache', 'unpack'] : [mode];
    const refs = jobRefsToObserve(removed.length > 0 ? [...images, dropOnly(removed)] : images, nodes, modes);
    const jobs = await this.#jobs.observe(refs);

    const p = plan({
      owner,
      generation: cr.metadata.generation ?? 0,
      // A refused gating ImagePrewarm is planned as one that does not gate.
      spec: gateAllowed ? spec : { ...spec, startup: { ...spec.startup, gateNodes: false } },
      status,
      images,
      nodes,
      nodeCreatedAt,
      gatedSince,
      jobs,
      slots: this.#slots(key),
      now,
      problems,
      options: {
        failedRetryAfterMs: this.#opts.failedRetryAfterMs,
        maxFailingNodes: this.#opts.maxFailingNodes,
        progressPollMs: this.#opts.progressPollMs,
        pullSecrets: pull.refs,
        maxGateDeadlineMs: this.#opts.maxGateDeadlineMs,
      },
    });

    // Apply. New jobs first: push → enqueued is the latency that matters. The status is
    // written last: if anything here fails, the old status (still naming dropped digests)
    // and the untouched triggers make the retry do it all again, idempotently.
    if (p.enqueue.length > 0) {
      await this.#jobs.enqueue(p.enqueue);
      for (const j of p.enqueue)
        this.#metrics.jobsEnqueued.inc({ trigger: j.data.trigger.split(':')[0] ?? 'spec' });
      log.info({ jobs: p.enqueue.length }, 'jobs enqueued');
    }
    await eachLimited(p.unpin, MUTATION_CONCURRENCY, async (ref) => {
      const outcome = await this.#jobs.unpin(ref, owner.uid);
      if (outcome === 'active-orphan') this.#orphans.set(ref.jobId, ref);
    });
    await this.#sweepOrphans();
    await eachLimited(p.addOwner, MUTATION_CONCURRENCY, (ref) => this.#jobs.addOwner(ref, owner));
    // Before retries: a failed job is retried with the current pull-credential copy.
    if (pull.managed) {
      const planned = new Set(p.update.map((u) => u.jobId));
      const repoint = repointJobs(owner, jobs, pull.refs, pull.ownRefs, planned);
      await eachLimited(repoint, MUTATION_CONCURRENCY, (u) => this.#jobs.updateSettings(u, u.settings));
    }
    await eachLimited(p.retry, MUTATION_CONCURRENCY, (ref) => this.#jobs.retry(ref));
    if (p.update.length > 0) {
      await eachLimited(p.update, MUTATION_CONCURRENCY, (u) => this.#jobs.updateSettings(u, u.settings));
      log.info({ jobs: p.update.length }, 'pending jobs updated to the spec');
    }
    this.#recordLedger(key, p.inFlightByRegistry, jobs, p.enqueue.length);
    this.#recordCompletions(p.completed, jobs);

    const newStatus: ImagePrewarmStatus = {
      ...p.status,
      mode,
      ...(schedule.kind === 'valid' ? { nextScheduleTime: new Date(schedule.next).toISOString() } : {}),
      ...(scheduleDue ? { lastScheduleTime: new Date(now).toISOString() } : {}),
      ...(refreshDue ? { lastRefresh: refresh } : {}),
    };
    if (schedule.kind !== 'valid') delete newStatus.nextScheduleTime;
    await this.#writeStatus(key, cr, newStatus);
    if (pull.managed) await this.#pull!.collect(owner.uid, pull.stale, jobs);
    // Sizes moved: the namespace's other entries may be in or out of its quota now.
    const sizes = (s: ImagePrewarmStatus) => JSON.stringify((s.images ?? []).map((i) => [i.digest, i.bytes]));
    if (quota > 0 && sizes(status) !== sizes(newStatus)) this.#enqueueNamespace(namespace, key);

    // Triggers are consumed only once their resolution made it into the status.
    const left = this.#triggers.get(key);
    if (left) {
      for (const [n, t] of left) {
        const failed = images.find((i) => i.name === n)?.error !== undefined;
        if (t.seq <= seqLimit && !failed) left.delete(n);
      }
      if (left.size === 0) this.#triggers.delete(key);
    }

    // Gated nodes this ImagePrewarm targets may be releasable now (warm, or past the gate
    // deadline: the status saying so is written above, before the taint can go).
    const prevWarmth = this.#warmth.get(key)?.nodes;
    this.#warmth.set(key, {
      generation: cr.metadata.generation ?? 0,
      nodes: p.nodeWarmth,
      gateExpired: p.gateExpired,
    });
    for (const n of targeted) {
      if (!n.gated) continue;
      if (
        prevWarmth?.get(n.name) !== p.nodeWarmth.get(n.name) ||
        p.nodeWarmth.get(n.name) === 'warm' ||
        p.gateExpired.has(n.name)
      )
        this.#queue.add(N + n.name);
    }

    this.#clearGauges(key);
    const labelSets: { namespace: string; prewarm: string; image: string }[] = [];
    for (const s of p.status.images ?? []) {
      const labels = { namespace, prewarm: name, image: s.name };
      labelSets.push(labels);
      this.#metrics.nodesWarm.set(labels, s.warmNodes ?? 0);
      this.#metrics.nodesTarget.set(labels, s.targetNodes ?? 0);
    }
    this.#gaugeLabels.set(key, labelSets);

    let requeue = p.requeueAfterMs;
    const sooner = (ms: number): void => {
      requeue = requeue === undefined ? ms : Math.min(requeue, ms);
    };
    if (schedule.kind === 'valid') sooner(Math.max(1_000, schedule.next - Date.now() + 50));
    if (resolveError) {
      const n = this.#resolveFailures.get(key) ?? 0;
      this.#resolveFailures.set(key, n + 1);
      sooner(Math.min(300_000, this.#opts.resolveRetryMs * 2 ** n));
    } else {
      this.#resolveFailures.delete(key);
    }
    if (this.#orphans.size > 0) sooner(this.#opts.progressPollMs * 5);
    return requeue;
  }

  /** The cached object, with the status this controller last wrote if the cache lags behind it. */
  #withWrittenStatus(key: string, cached: ImagePrewarm): ImagePrewarm {
    const { cr, keep } = withWrittenStatus(cached, this.#written.get(key));
    if (!keep) this.#written.delete(key);
    return cr;
  }

  async #writeStatus(key: string, cr: ImagePrewarm, status: ImagePrewarmStatus): Promise<void> {
    const old = (cr.status ?? {}) as Record<string, unknown>;
    if (stableJson(old) === stableJson(status)) return;
    const patch: Record<string, unknown> = { ...status };
    // Merge patch: a field that disappeared must be sent as null.
    for (const k of Object.keys(old)) if (!(k in patch)) patch[k] = null;
    const resourceVersion = await this.#kube.patchPrewarmStatus(
      cr.metadata.namespace,
      cr.metadata.name,
      patch,
    );
    this.#written.set(key, { uid: cr.metadata.uid ?? '', resourceVersion, status });
  }

  /** Credentials from the spec's pull secrets; a missing or malformed one becomes a problem. */
  async #credentials(
    cr: ImagePrewarm,
    problems: { reason: string; message: string }[],
  ): Promise<Credentials | undefined> {
    const names = (cr.spec.pullSecrets ?? []).map((s) => s.name);
    if (names.length === 0) return undefined;
    const merged = new StaticCredentials();
    // The first listed Secret wins for a registry, as on the agents.
    const parsed: StaticCredentials[] = [];
    const hash = createHash('sha256');
    for (const n of names) {
      const secret = await this.#kube.readSecret(cr.metadata.namespace, n);
      const raw = secret?.data['.dockerconfigjson'] ?? secret?.data['.dockercfg'];
      if (!raw) {
        problems.push({
          reason: 'PullSecretMissing',
          message: `secret ${cr.metadata.namespace}/${n} not found or has no .dockerconfigjson`,
        });
        continue;
      }
      try {
        parsed.push(parseDockerConfig(raw.toString('utf8')));
        hash.update(n).update(raw);
      } catch (err) {
        problems.push({
          reason: 'PullSecretInvalid',
          message: `secret ${cr.metadata.namespace}/${n}: ${(err as Error).message}`,
        });
      }
    }
    for (const c of parsed.reverse()) merged.merge(c);
    return merged.size > 0 ? { fingerprint: hash.digest('hex'), provider: merged } : undefined;
  }

  #slots(key: string): { cluster: number; registry: Map<string, number> } {
    let total = 0;
    const byRegistry = new Map<string, number>();
    for (const [k, v] of this.#ledger) {
      if (k === key) continue;
      total += v.pending + v.active;
      for (const [r, n] of v.byRegistry) byRegistry.set(r, (byRegistry.get(r) ?? 0) + n);
    }
    // Jobs this key already has in flight are counted by plan() itself.
    const mine = this.#ledger.get(key);
    const registry = new Map<string, number>();
    for (const [host, limit] of Object.entries(this.#opts.registryMaxInFlight)) {
      registry.set(host, limit - (byRegistry.get(host) ?? 0) - (mine?.byRegistry.get(host) ?? 0));
    }
    return {
      cluster: this.#opts.maxInFlightJobs - total - (mine ? mine.pending + mine.active : 0),
      registry,
    };
  }

  #recordLedger(
    key: string,
    byRegistry: Map<string, number>,
    jobs: ReadonlyMap<string, { state: string; owners: PrewarmOwnerRef[] }>,
    enqueued: number,
  ): void {
    let pending = enqueued;
    let active = 0;
    const [namespace, name] = splitKey(key);
    for (const obs of jobs.values()) {
      if (!obs.owners.some((o) => o.namespace === namespace && o.name === name)) continue;
      if (obs.state === 'pending') pending++;
      else if (obs.state === 'active') active++;
    }
    this.#ledger.set(key, { byRegistry, pending, active });
    let p = 0;
    let a = 0;
    for (const v of this.#ledger.values()) {
      p += v.pending;
      a += v.active;
    }
    this.#metrics.queueDepth.set({ state: 'pending' }, p);
    this.#metrics.queueDepth.set({ state: 'active' }, a);
  }

  #recordCompletions(
    completed: { jobId: string; finishedOn: number; triggeredAt: number; trigger: string }[],
    jobs: ReadonlyMap<
      string,
      { result?: { bytesFromRegistry: number; bytesFromPeers: number }; triggeredAt?: number }
    >,
  ): void {
    for (const c of completed) {
      if (this.#seenCompleted.has(c.jobId)) continue;
      if (this.#seenCompleted.size > 200_000) this.#seenCompleted.clear();
      this.#seenCompleted.add(c.jobId);
      // Completions from before this leadership term were counted by whoever led then.
      if (c.finishedOn < this.#startedAt) continue;
      const obs = jobs.get(c.jobId);
      this.#metrics.triggerToWarmSeconds.observe(
        { trigger: c.trigger },
        Math.max(0, c.finishedOn - c.triggeredAt) / 1000,
      );
      if (obs?.result) {
        this.#metrics.bytesFetched.inc({ source: 'registry' }, obs.result.bytesFromRegistry);
        this.#metrics.bytesFetched.inc({ source: 'peers' }, obs.result.bytesFromPeers);
      }
    }
  }

  async #sweepOrphans(): Promise<void> {
    for (const [id, ref] of this.#orphans) {
      try {
        if (await this.#jobs.removeIfOrphan(ref)) this.#orphans.delete(id);
      } catch (err) {
        this.#log.debug({ jobId: id, ...errFields(err) }, 'orphan removal failed');
      }
    }
  }

  /**
   * Deletion: cancel pending jobs and unpin every digest on every node, then release the
   * finalizer. Jobs shared with other ImagePrewarms only lose this owner.
   */
  async #finalize(key: string, cr: ImagePrewarm, owner: PrewarmOwnerRef): Promise<number | undefined> {
    const finalizers = cr.metadata.finalizers ?? [];
    if (!finalizers.includes(FINALIZER)) {
      this.#forgetKey(key);
      return undefined;
    }
    const digests = new Set<Digest>();
    for (const s of cr.status?.images ?? []) for (const d of pinnedDigests(s)) digests.add(d);
    for (const img of cr.spec.images ?? []) if (img.digest) digests.add(img.digest as Digest);
    const nodes = this.#kube.nodes.list();
    const refs = jobRefsToObserve([dropOnly([...digests])], nodes, ['cache', 'unpack']);
    const jobs = await this.#jobs.observe(refs);
    let removed = 0;
    const owned = refs.filter((ref) => jobs.get(ref.jobId)?.owners.some((o) => o.uid === owner.uid));
    await eachLimited(owned, MUTATION_CONCURRENCY, async (ref) => {
      const outcome = await this.#jobs.unpin(ref, owner.uid);
      if (outcome === 'removed') removed++;
      if (outcome === 'active-orphan') this.#orphans.set(ref.jobId, ref);
    });
    // Its pull-credential copies go with it (before the finalizer: a failure retries).
    await this.#pull?.removeAll(owner.uid);
    if (pinnedQuotaFor(this.#policy, cr.metadata.namespace) > 0)
      this.#enqueueNamespace(cr.metadata.namespace, key);
    await this.#kube.setPrewarmFinalizers(
      cr.metadata.namespace,
      cr.metadata.name,
      finalizers.filter((f) => f !== FINALIZER),
      cr.metadata.resourceVersion ?? '',
    );
    this.#log.info({ prewarm: key, jobsRemoved: removed }, 'finalized: jobs cancelled, digests unpinned');
    this.#forgetKey(key);
    return this.#orphans.size > 0 ? this.#opts.progressPollMs * 5 : undefined;
  }

  #clearGauges(key: string): void {
    for (const labels of this.#gaugeLabels.get(key) ?? []) {
      this.#metrics.nodesWarm.remove(labels);
      this.#metrics.nodesTarget.remove(labels);
    }
    this.#gaugeLabels.delete(key);
  }

  #forgetKey(key: string): void {
    this.#triggers.delete(key);
    this.#ledger.delete(key);
    this.#warmth.delete(key);
    this.#written.delete(key);
    this.#resolveFailures.delete(key);
    this.#clearGauges(key);
    // Gated nodes this ImagePrewarm held may be free now.
    for (const n of this.#kube.nodes.list()) if (n.gated) this.#queue.add(N + n.name);
  }

  /** A deleted node: drop its queue (jobs and pins go with the node). */
  async #dropNode(name: string): Promise<undefined> {
    if (this.#kube.nodes.get(name)) return undefined;
    await this.#jobs.dropNode(name);
    this.#log.info({ node: name }, 'node deleted: its queue was dropped');
    return undefined;
  }

  /** Since when a gated node is gated: its creation time, else when this process first saw it gated. */
  #gatedSinceOf(n: NodeView, now: number): number {
    if (n.createdAt !== undefined) return n.createdAt;
    let seen = this.#gatedSeen.get(n.name);
    if (seen === undefined) {
      seen = now;
      this.#gatedSeen.set(n.name, seen);
    }
    return seen;
  }

  /**
   * A startup-gated node: remove the taint once every ImagePrewarm with
   * `startup.gateNodes` that targets it reports its current digests warm there, or has
   * passed its gate deadline on it (fail open; its status says so); in any case once the
   * operator's cap (`maxGateDeadlineMs`) has passed since the node joined. A node no gating
   * ImagePrewarm targets is released at once (nothing to wait for). See gate.ts.
   */
  async #reconcileNode(name: string): Promise<number | undefined> {
    const view = this.#kube.nodes.get(name);
    if (!view?.gated) {
      this.#gatedSeen.delete(name);
      return undefined;
    }
    // Only a Ready node is targeted; its readiness change brings the key back.
    if (!view.ready) return undefined;
    const gating = this.#kube.prewarms
      .list()
      .filter((p) => p.spec?.startup?.gateNodes === true && !p.metadata.deletionTimestamp)
      // A namespace the policy does not let gate holds no node.
      .filter((p) => gateNodesAllowed(this.#policy, p.metadata.namespace))
      .filter((p) => {
        const why = exclusion(p.spec, view);
        return why === undefined || why === 'cordoned';
      });
    const states = gating.map((p) => {
      const w = this.#warmth.get(prewarmKey(p));
      let state: GateState;
      if (!w || w.generation !== (p.metadata.generation ?? 0)) state = 'unknown';
      else if (w.nodes.get(name) === 'warm') state = 'warm';
      else if (w.gateExpired.has(name)) state = 'expired';
      else state = 'waiting';
      return { key: prewarmKey(p), state };
    });
    const decision = gateDecision({
      gatedSince: this.#gatedSinceOf(view, Date.now()),
      now: Date.now(),
      capMs: this.#opts.maxGateDeadlineMs,
      gating: states,
    });
    if (decision.release === undefined) {
      for (const key of decision.refresh) this.#queue.add(P + key);
      return decision.requeueAfterMs;
    }
    const taints = view.taints
      .filter((t) => !isStartupTaint(t))
      .map((t) => ({ key: t.key, effect: t.effect, ...(t.value !== undefined ? { value: t.value } : {}) }));
    await this.#kube.setNodeTaints(name, taints, view.resourceVersion ?? '');
    this.#gatedSeen.delete(name);
    this.#metrics.gateReleases.inc();
    const fields = { node: name, gatedBy: gating.map(prewarmKey), notWarm: decision.notWarm };
    if (decision.release === 'deadline')
      this.#log.warn(fields, 'startup taint removed: gate deadline passed before the images were warm');
    else if (decision.release === 'cap')
      this.#log.warn(
        { ...fields, capMs: this.#opts.maxGateDeadlineMs },
        'startup taint removed: the operator-wide gate cap passed',
      );
    else this.#log.info(fields, 'startup taint removed: images warm');
    return undefined;
  }
}

function splitKey(key: string): [string, string] {
  const i = key.indexOf('/');
  return [key.slice(0, i), key.slice(i + 1)];
}

function uniquePlatforms(nodes: readonly NodeView[]): Platform[] {
  const seen = new Map<string, Platform>();
  for (const n of nodes) seen.set(formatPlatform(n.platform), n.platform);
  return [...seen.values()];
}

/** A pseudo image that only carries digests to observe and unpin. */
function dropOnly(digests: Digest[]): ResolvedImage {
  return { name: '', repository: '', registry: '', previous: [], dropped: digests };
}

/** JSON with sorted keys, for change detection. */
export function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v && typeof v === 'object' && !(v instanceof Date)) {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stableJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v instanceof Date ? v.toISOString() : v);
}

export type { ImageStatus };

/**
 * The status an image gets when resolving (or describing) it failed: `RegistryNotAllowed`
 * when the egress policy refused the registry (a terminal, configuration problem: the CR
 * names a registry outside KUBE_PREWARM_ALLOWED_REGISTRIES, or one at an internal address),
 * else `ResolveFailed`; the message leads with the error code.
 */
export function resolveErrorStatus(err: unknown): { reason: string; message: string } {
  const code = isPrewarmError(err) ? err.code : 'ERROR';
  const message = `${code}: ${(err as Error).message}`;
  if (isPrewarmError(err, ErrorCodes.EGRESS_DENIED))
    return {
      reason: 'RegistryNotAllowed',
      message: `${message} (the operator's allowed registries: KUBE_PREWARM_ALLOWED_REGISTRIES)`,
    };
  return { reason: 'ResolveFailed', message };
}
