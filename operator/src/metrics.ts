/**
 * The operator's Prometheus metrics, registered on a Registry the caller owns (no
 * global default registry: two operators in one test process must not collide).
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export class OperatorMetrics {
  readonly reconciles: Counter<'result'>;
  readonly reconcileSeconds: Histogram;
  readonly jobsEnqueued: Counter<'trigger'>;
  readonly nodesWarm: Gauge<'namespace' | 'prewarm' | 'image'>;
  readonly nodesTarget: Gauge<'namespace' | 'prewarm' | 'image'>;
  readonly triggerToWarmSeconds: Histogram<'trigger'>;
  readonly queueDepth: Gauge<'state'>;
  readonly resolves: Counter<'result'>;
  readonly pushEvents: Counter<'result'>;
  readonly leader: Gauge;
  readonly gateReleases: Counter;
  readonly bytesFetched: Counter<'source'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.reconciles = new Counter({
      name: 'kprw_reconciles_total',
      help: 'ImagePrewarm reconciles by result (ok, error)',
      labelNames: ['result'],
      registers,
    });
    this.reconcileSeconds = new Histogram({
      name: 'kprw_reconcile_duration_seconds',
      help: 'Time one ImagePrewarm reconcile took',
      buckets: [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.jobsEnqueued = new Counter({
      name: 'kprw_jobs_enqueued_total',
      help: 'Per-node prewarm jobs enqueued, by trigger (spec, push, schedule, refresh, node-join)',
      labelNames: ['trigger'],
      registers,
    });
    this.nodesWarm = new Gauge({
      name: 'kprw_nodes_warm',
      help: 'Nodes with the current digest of an image warm',
      labelNames: ['namespace', 'prewarm', 'image'],
      registers,
    });
    this.nodesTarget = new Gauge({
      name: 'kprw_nodes_target',
      help: 'Nodes an image is meant to be warm on',
      labelNames: ['namespace', 'prewarm', 'image'],
      registers,
    });
    this.triggerToWarmSeconds = new Histogram({
      name: 'kprw_trigger_to_warm_seconds',
      help: 'Time from a trigger (push, schedule, spec change, node join) to the image being warm on a node',
      labelNames: ['trigger'],
      buckets: [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600],
      registers,
    });
    this.queueDepth = new Gauge({
      name: 'kprw_queue_depth',
      help: 'Prewarm jobs in flight across all node queues as last observed (pending, active)',
      labelNames: ['state'],
      registers,
    });
    this.resolves = new Counter({
      name: 'kprw_resolves_total',
      help: 'Tag to digest resolutions by result (changed, unchanged, error)',
      labelNames: ['result'],
      registers,
    });
    this.pushEvents = new Counter({
      name: 'kprw_push_events_total',
      help: 'Push events handled by the leader, by result (matched, unmatched)',
      labelNames: ['result'],
      registers,
    });
    this.leader = new Gauge({ name: 'kprw_leader', help: '1 while this replica is the leader', registers });
    this.gateReleases = new Counter({
      name: 'kprw_startup_taint_removals_total',
      help: 'Startup taints removed from nodes once their images were warm',
      registers,
    });
    this.bytesFetched = new Counter({
      name: 'kprw_bytes_fetched_total',
      help: 'Bytes agents fetched for completed jobs, by source (registry, peers)',
      labelNames: ['source'],
      registers,
    });
  }
}
