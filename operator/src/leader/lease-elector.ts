/**
 * Leader election on a coordination.k8s.io/v1 Lease, with client-go's rules:
 *
 * - A lease held by someone else is only taken once it has not changed for
 *   `leaseDurationMs`, measured on this replica's clock from when this replica last saw
 *   it change (never from the holder's timestamps: clocks differ).
 * - The leader renews every `retryPeriodMs`; if it cannot renew for `renewDeadlineMs`
 *   (< lease duration) it stops leading before anyone else may start, so two replicas
 *   never both act.
 * - Writes are guarded by resourceVersion: of two candidates only one update wins.
 * - On shutdown the leader releases the lease so a standby takes over at once.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { type V1Lease, V1MicroTime } from '@kubernetes/client-node';
import { apiStatus, type KubePort } from '../kube/port.js';
import type { Logger } from '../logger.js';

/** What the elector logs with: the operator's Logger, or anything with its info and warn. */
export type ElectorLogger = Pick<Logger, 'info' | 'warn'>;

export interface LeaseElectorOptions {
  namespace: string;
  /** Lease name. */
  name: string;
  /** This replica's identity (pod name plus a random suffix). */
  identity: string;
  /** Default 15 s. */
  leaseDurationMs?: number;
  /** Default 10 s; must be below the lease duration. */
  renewDeadlineMs?: number;
  /** Default 2 s. */
  retryPeriodMs?: number;
  /**
   * Called when this replica becomes leader. `signal` aborts when leadership is lost or the
   * elector stops; the callback's work must stop acting by then.
   */
  onStartedLeading(signal: AbortSignal): void;
  /** Called after leadership was lost or released. */
  onStoppedLeading?(): void;
  onNewLeader?(identity: string): void;
}

interface Observed {
  holder: string;
  renewTime: string;
  resourceVersion: string;
}

export class LeaseElector {
  readonly #kube: KubePort;
  readonly #opts: LeaseElectorOptions & {
    leaseDurationMs: number;
    renewDeadlineMs: number;
    retryPeriodMs: number;
  };
  readonly #log: ElectorLogger;
  #observed: Observed | undefined;
  #observedAt = 0;
  #lease: V1Lease | undefined;
  #leading = false;
  #leaderAbort: AbortController | undefined;
  #lastLeader = '';

  constructor(kube: KubePort, log: ElectorLogger, opts: LeaseElectorOptions) {
    const leaseDurationMs = opts.leaseDurationMs ?? 15_000;
    const renewDeadlineMs = opts.renewDeadlineMs ?? 10_000;
    const retryPeriodMs = opts.retryPeriodMs ?? 2_000;
    if (!(renewDeadlineMs < leaseDurationMs) || !(retryPeriodMs < renewDeadlineMs)) {
      throw new Error('leader election: need retryPeriod < renewDeadline < leaseDuration');
    }
    this.#kube = kube;
    this.#log = log;
    this.#opts = { ...opts, leaseDurationMs, renewDeadlineMs, retryPeriodMs };
  }

  get isLeader(): boolean {
    return this.#leading;
  }

  /** Runs until `signal` aborts: campaigns, leads, and campaigns again after losing. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await this.#acquire(signal);
      if (signal.aborted) break;
      await this.#lead(signal);
    }
    if (this.#leading) await this.#stopLeading(true);
  }

  async #acquire(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      if (await this.#tryAcquireOrRenew()) {
        this.#leading = true;
        this.#leaderAbort = new AbortController();
        this.#log.info({ identity: this.#opts.identity, lease: this.#opts.name }, 'became leader');
        this.#opts.onStartedLeading(this.#leaderAbort.signal);
        return;
      }
      await sleep(this.#jitter(this.#opts.retryPeriodMs), undefined, { signal }).catch(() => undefined);
    }
  }

  async #lead(signal: AbortSignal): Promise<void> {
    let lastRenew = Date.now();
    while (!signal.aborted) {
      await sleep(this.#opts.retryPeriodMs, undefined, { signal }).catch(() => undefined);
      if (signal.aborted) return;
      if (await this.#tryAcquireOrRenew()) {
        lastRenew = Date.now();
        continue;
      }
      if (Date.now() - lastRenew >= this.#opts.renewDeadlineMs) {
        this.#log.warn({ identity: this.#opts.identity }, 'failed to renew the lease in time; stepping down');
        await this.#stopLeading(false);
        return;
      }
    }
  }

  async #stopLeading(release: boolean): Promise<void> {
    this.#leading = false;
    this.#leaderAbort?.abort(new Error('leadership lost'));
    this.#leaderAbort = undefined;
    if (release && this.#lease) {
      // Hand over at once: an empty holder with a 1 s duration is free to take.
      const lease = this.#lease;
      try {
        await this.#kube.replaceLease(this.#opts.namespace, this.#opts.name, {
          ...lease,
          spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: micro(Date.now()) },
        });
      } catch (err) {
        this.#log.warn({ err: String(err) }, 'could not release the lease');
      }
    }
    this.#opts.onStoppedLeading?.();
  }

  #jitter(ms: number): number {
    return Math.round(ms * (1 + Math.random() * 0.2));
  }

  async #tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, name, identity } = this.#opts;
    const now = Date.now();
    const durationSeconds = Math.ceil(this.#opts.leaseDurationMs / 1000);
    let current: V1Lease | undefined;
    try {
      current = await this.#kube.readLease(namespace, name);
    } catch (err) {
      this.#log.warn({ err: String(err) }, 'cannot read the lease');
      return false;
    }
    if (!current) {
      try {
        this.#lease = await this.#kube.createLease(namespace, {
          apiVersion: 'coordination.k8s.io/v1',
          kind: 'Lease',
          metadata: { name, namespace },
          spec: {
            holderIdentity: identity,
            leaseDurationSeconds: durationSeconds,
            acquireTime: micro(now),
            renewTime: micro(now),
            leaseTransitions: 0,
          },
        });
        this.#see(this.#lease, now);
        return true;
      } catch (err) {
        if (apiStatus(err) !== 409) this.#log.warn({ err: String(err) }, 'cannot create the lease');
        return false;
      }
    }
    this.#see(current, now);
    const holder = current.spec?.holderIdentity ?? '';
    const heldByOther = holder !== '' && holder !== identity;
    const duration = (current.spec?.leaseDurationSeconds ?? durationSeconds) * 1000;
    if (heldByOther && this.#observedAt + duration > now) return false;
    const transitions = current.spec?.leaseTransitions ?? 0;
    const spec = {
      holderIdentity: identity,
      leaseDurationSeconds: durationSeconds,
      acquireTime: holder === identity && current.spec?.acquireTime ? current.spec.acquireTime : micro(now),
      renewTime: micro(now),
      leaseTransitions: holder === identity ? transitions : transitions + 1,
    };
    try {
      this.#lease = await this.#kube.replaceLease(namespace, name, { ...current, spec });
      this.#see(this.#lease, now);
      return true;
    } catch (err) {
      if (apiStatus(err) !== 409) this.#log.warn({ err: String(err) }, 'cannot update the lease');
      return false;
    }
  }

  /** Records the lease as seen now if it changed since last seen. */
  #see(lease: V1Lease, now: number): void {
    const rec: Observed = {
      holder: lease.spec?.holderIdentity ?? '',
      renewTime: String(lease.spec?.renewTime ? new Date(lease.spec.renewTime).getTime() : ''),
      resourceVersion: lease.metadata?.resourceVersion ?? '',
    };
    const o = this.#observed;
    if (
      !o ||
      o.holder !== rec.holder ||
      o.renewTime !== rec.renewTime ||
      o.resourceVersion !== rec.resourceVersion
    ) {
      this.#observed = rec;
      this.#observedAt = now;
    }
    if (rec.holder && rec.holder !== this.#lastLeader) {
      this.#lastLeader = rec.holder;
      this.#opts.onNewLeader?.(rec.holder);
    }
  }
}

/** Lease times are MicroTime: RFC 3339 with exactly six fractional digits. */
function micro(ms: number): V1MicroTime {
  return new V1MicroTime(ms);
}
