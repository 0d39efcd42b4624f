/**
 * One operator replica: informers and the HTTP endpoint run on every replica (standbys
 * stay warm and answer webhooks); the controller and the push-event consumer run only
 * while this replica holds the Lease.
 *
 * Push events arrive through the shared push inbox (a Redis stream): the webhook receiver
 * (`kube-prewarm webhooks`, a separate process without Kubernetes credentials) appends to
 * it, and the leader consumes it, records the triggers and reconciles: PushEvent →
 * matching ImagePrewarms → re-resolve → enqueue. `onPush(event)` is the same seam for a
 * webhook handler mounted in this process (development and tests): it appends to the
 * inbox and answers with how many ImagePrewarms it matches locally.
 */
import type { Redis } from 'ioredis';
import type { Registry } from 'prom-client';
import type { ImagePrewarm } from './api/types.js';
import { PullCredentialIssuer } from './credentials/pull-credentials.js';
import { type MountedHandler, OperatorHttpServer } from './http/server.js';
import type { KubePort } from './kube/port.js';
import { LeaseElector } from './leader/lease-elector.js';
import { errFields, type Logger } from './logger.js';
import { OperatorMetrics } from './metrics.js';
import { BullJobQueue, type BullJobQueueOptions } from './queue/bull-job-queue.js';
import type { JobQueue } from './queue/job-queue.js';
import { PushInbox, type PushInboxOptions } from './queue/push-inbox.js';
import type { PushEventLike } from './queue/types.js';
import { type ControllerOptions, PrewarmController } from './reconcile/controller.js';
import { matchPush } from './reconcile/push-match.js';
import type { Resolver } from './resolve/resolver.js';

export interface OperatorDeps {
  kube: KubePort;
  /** Shared non-blocking connection (`maxRetriesPerRequest: null`); the caller closes it. */
  redis: Redis;
  resolver: Resolver;
  log: Logger;
  metrics: Registry;
  /** Default: a BullJobQueue on `redis`. */
  jobs?: JobQueue;
}

export interface OperatorOptions {
  /** This replica's identity in the Lease. */
  identity: string;
  leaseNamespace: string;
  leaseName: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  controller?: Partial<ControllerOptions>;
  jobQueue?: BullJobQueueOptions;
  pushInbox?: PushInboxOptions;
  /** Serve /metrics, /healthz, /readyz (and mounts) here; omitted: no HTTP server. */
  http?: { host: string; port: number };
  /** Handlers mounted on the HTTP server before the built-in routes (the webhooks). */
  mounts?: MountedHandler[];
  /**
   * Keep per-ImagePrewarm copies of the pull credentials jobs need in this namespace and
   * name them in the jobs (credentials/pull-credentials.ts). Omitted: jobs name the
   * ImagePrewarm's own Secrets.
   */
  pullCredentials?: { namespace: string; maxAgeMs?: number };
}

export class Operator {
  readonly metrics: OperatorMetrics;
  readonly controller: PrewarmController;
  readonly jobs: JobQueue;
  readonly #deps: OperatorDeps;
  readonly #opts: OperatorOptions;
  readonly #inbox: PushInbox;
  readonly #elector: LeaseElector;
  readonly #log: Logger;
  #http: OperatorHttpServer | undefined;
  #abort: AbortController | undefined;
  #running: Promise<void>[] = [];
  #leaderWork: Promise<void> | undefined;
  #mounts: MountedHandler[];

  constructor(deps: OperatorDeps, opts: OperatorOptions) {
    this.#deps = deps;
    this.#opts = opts;
    this.#log = deps.log;
    this.#mounts = [...(opts.mounts ?? [])];
    this.metrics = new OperatorMetrics(deps.metrics);
    this.jobs = deps.jobs ?? new BullJobQueue(deps.redis, opts.jobQueue);
    this.#inbox = new PushInbox(deps.redis, opts.pushInbox);
    this.controller = new PrewarmController(
      {
        kube: deps.kube,
        jobs: this.jobs,
        resolver: deps.resolver,
        metrics: this.metrics,
        log: deps.log.child({ component: 'controller' }),
        ...(opts.pullCredentials
          ? {
              pullCredentials: new PullCredentialIssuer(deps.kube, {
                namespace: opts.pullCredentials.namespace,
                ...(opts.pullCredentials.maxAgeMs !== undefined
                  ? { maxAgeMs: opts.pullCredentials.maxAgeMs }
                  : {}),
                log: deps.log.child({ component: 'pull-credentials' }),
              }),
            }
          : {}),
      },
      opts.controller,
    );
    this.#elector = new LeaseElector(deps.kube, deps.log.child({ component: 'leader' }), {
      namespace: opts.leaseNamespace,
      name: opts.leaseName,
      identity: opts.identity,
      ...(opts.leaseDurationMs !== undefined ? { leaseDurationMs: opts.leaseDurationMs } : {}),
      ...(opts.renewDeadlineMs !== undefined ? { renewDeadlineMs: opts.renewDeadlineMs } : {}),
      ...(opts.retryPeriodMs !== undefined ? { retryPeriodMs: opts.retryPeriodMs } : {}),
      onStartedLeading: (signal) => this.#lead(signal),
      onStoppedLeading: () => this.metrics.leader.set(0),
      onNewLeader: (id) => this.#log.info({ leader: id }, 'leader observed'),
    });
  }

  get isLeader(): boolean {
    return this.#elector.isLeader;
  }

  /** Mounts a handler (the webhooks) on the HTTP server; call before `start`. */
  mount(handler: MountedHandler): void {
    this.#mounts.push(handler);
  }

  /**
   * The webhook seam. Records the event for the leader and returns how many ImagePrewarms
   * it matches here (the leader re-matches against its own cache). Rejects when Redis is
   * unreachable, so the webhook layer can release its dedup claim and let the sender retry.
   */
  async onPush(event: PushEventLike): Promise<{ matched: number }> {
    const matched = matchPush(event, this.#deps.kube.prewarms.list() as ImagePrewarm[]).length;
    await this.#inbox.record(event);
    return { matched };
  }

  /** Starts informers, the HTTP endpoint and the election. Resolves once the HTTP server listens. */
  async start(): Promise<{ httpPort?: number }> {
    this.#abort = new AbortController();
    const signal = this.#abort.signal;
    const { kube } = this.#deps;
    await Promise.all([kube.prewarms.start(), kube.nodes.start()]);
    let httpPort: number | undefined;
    if (this.#opts.http) {
      this.#http = new OperatorHttpServer({
        host: this.#opts.http.host,
        port: this.#opts.http.port,
        metrics: this.#deps.metrics,
        readiness: () => this.#readiness(),
        mounts: this.#mounts,
      });
      httpPort = (await this.#http.start()).port;
    }
    this.#running.push(
      this.#elector.run(signal).catch((err) => this.#log.error(errFields(err), 'leader election stopped')),
    );
    return httpPort !== undefined ? { httpPort } : {};
  }

  #lead(signal: AbortSignal): void {
    this.metrics.leader.set(1);
    const log = this.#log.child({ component: 'leader-work' });
    this.#leaderWork = Promise.all([
      this.controller.run(signal).catch((err) => log.error(errFields(err), 'controller stopped')),
      this.#inbox
        .consume(
          signal,
          (event) => {
            this.controller.push(event);
          },
          (err) => log.warn(errFields(err), 'push inbox read failed'),
        )
        .catch((err) => log.error(errFields(err), 'push inbox stopped')),
    ]).then(() => undefined);
  }

  async #readiness(): Promise<{ ready: boolean; reasons: string[] }> {
    const reasons: string[] = [];
    if (!this.#deps.kube.prewarms.synced) reasons.push('ImagePrewarm cache not synced');
    if (!this.#deps.kube.nodes.synced) reasons.push('Node cache not synced');
    if (this.#deps.redis.status !== 'ready') reasons.push(`redis ${this.#deps.redis.status}`);
    return { ready: reasons.length === 0, reasons };
  }

  /**
   * Graceful stop: release the Lease (a standby takes over at once), let in-flight
   * reconciles finish, stop watches and the HTTP server. Does not close `redis`.
   */
  async close(): Promise<void> {
    this.#abort?.abort();
    await Promise.all(this.#running);
    await this.#leaderWork;
    await Promise.allSettled([
      this.#deps.kube.prewarms.stop(),
      this.#deps.kube.nodes.stop(),
      this.#http?.close(),
    ]);
    await this.jobs.close();
  }
}
