/**
 * The agent's Prometheus metrics, on a registry of their own (one per daemon, so two
 * daemons in one test process do not share counters). Store gauges are computed at
 * scrape time from a callback, so they are never stale.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export type JobOutcome = 'completed' | 'failed' | 'retry' | 'requeued' | 'cancelled';

/** What the store gauges read at scrape time. */
export interface StoreStats {
  usedBytes: number;
  blobs: number;
  ingestBytes: number;
  budgetBytes: number;
}

/** The mirror's cumulative counters the metrics read at scrape time (agent/src/mirror `MirrorStats`). */
export interface MirrorCounters {
  requests: number;
  manifestsFromStore: number;
  manifestsFromUpstream: number;
  blobBytesFromStore: number;
  blobBytesFromInflight: number;
  blobMisses: number;
}

export class AgentMetrics {
  readonly registry: Registry;
  /** Blob bytes by where they came from: `registry` (live, per HTTP chunk), `peer`, `present` (per job). */
  readonly bytesFetched: Counter<'source'>;
  /** One blob HTTP request (a ranged chunk or a whole blob) from request to last byte. */
  readonly chunkDuration: Histogram<'kind' | 'status'>;
  readonly jobs: Counter<'outcome' | 'mode'>;
  readonly jobDuration: Histogram<'outcome'>;
  readonly jobsActive: Gauge;
  readonly gcRuns: Counter<'reason' | 'result'>;
  readonly gcEvictions: Counter<'kind'>;
  readonly gcFreedBytes: Counter;
  /** Images the runtime (or the store) lost after they were warm, and were re-warmed. */
  readonly rewarms: Counter<'cause'>;
  readonly #registers: Registry[];

  constructor(readStore?: () => Promise<StoreStats>) {
    const registry = new Registry();
    this.registry = registry;
    const registers = [registry];
    this.bytesFetched = new Counter({
      name: 'kprw_agent_bytes_fetched_total',
      help: 'Blob bytes made present on this node, by source (registry, peer, present = already in the store)',
      labelNames: ['source'],
      registers,
    });
    this.chunkDuration = new Histogram({
      name: 'kprw_agent_chunk_duration_seconds',
      help: 'Duration of one blob HTTP request (ranged chunk or whole blob), request to last byte',
      labelNames: ['kind', 'status'],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.jobs = new Counter({
      name: 'kprw_agent_jobs_total',
      help: 'Prewarm job attempts by outcome (completed, failed = final, retry = will be retried, requeued = handed back on shutdown, cancelled)',
      labelNames: ['outcome', 'mode'],
      registers,
    });
    this.jobDuration = new Histogram({
      name: 'kprw_agent_job_duration_seconds',
      help: 'Duration of one prewarm job attempt',
      labelNames: ['outcome'],
      buckets: [0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800],
      registers,
    });
    this.jobsActive = new Gauge({
      name: 'kprw_agent_jobs_active',
      help: 'Prewarm jobs being processed now',
      registers,
    });
    this.gcRuns = new Counter({
      name: 'kprw_agent_gc_runs_total',
      help: 'Garbage collection passes by reason and result (ok, short = could not make the room asked for, pins_unknown, error)',
      labelNames: ['reason', 'result'],
      registers,
    });
    this.gcEvictions = new Counter({
      name: 'kprw_agent_gc_evictions_total',
      help: 'Images and blobs evicted by garbage collection',
      labelNames: ['kind'],
      registers,
    });
    this.gcFreedBytes = new Counter({
      name: 'kprw_agent_gc_freed_bytes_total',
      help: 'Blob bytes deleted by garbage collection',
      registers,
    });
    this.rewarms = new Counter({
      name: 'kprw_agent_rewarms_total',
      help: 'Warm images found missing and re-warmed, by cause (runtime = the container runtime lost it, store = the store lost it)',
      labelNames: ['cause'],
      registers,
    });
    this.#registers = registers;
    if (readStore) {
      let pending: Promise<StoreStats | undefined> | undefined;
      // One store walk per scrape, shared by the four gauges.
      const read = () => {
        pending ??= readStore()
          .catch(() => undefined)
          .finally(() => {
            setImmediate(() => {
              pending = undefined;
            });
          });
        return pending;
      };
      const gauge = (name: string, help: string, pick: (s: StoreStats) => number) =>
        new Gauge({
          name,
          help,
          registers,
          async collect() {
            const s = await read();
            if (s) this.set(Number.isFinite(pick(s)) ? pick(s) : -1);
          },
        });
      gauge(
        'kprw_agent_store_bytes',
        'Bytes of committed blobs and partial downloads in the store',
        (s) => s.usedBytes,
      );
      gauge('kprw_agent_store_blobs', 'Committed blobs in the store', (s) => s.blobs);
      gauge('kprw_agent_store_ingest_bytes', 'Bytes of partial downloads in the store', (s) => s.ingestBytes);
      gauge(
        'kprw_agent_store_budget_bytes',
        "The store's disk budget in bytes (-1 = unlimited)",
        (s) => s.budgetBytes,
      );
    }
  }

  /**
   * Exports the mirror's counters (read at scrape time): requests, manifests by source
   * (store = hit, upstream), blob bytes by source (store = hit, inflight = joined a
   * download) and blob misses (a download had to start).
   */
  attachMirror(read: () => MirrorCounters): void {
    const registers = this.#registers;
    let last: MirrorCounters = {
      requests: 0,
      manifestsFromStore: 0,
      manifestsFromUpstream: 0,
      blobBytesFromStore: 0,
      blobBytesFromInflight: 0,
      blobMisses: 0,
    };
    let current = last;
    // Counters only go up: each scrape adds what the mirror counted since the last one.
    const refresh = () => {
      current = read();
    };
    const counter = <L extends string>(
      name: string,
      help: string,
      labelNames: L[],
      apply: (c: Counter<L>, now: MirrorCounters, before: MirrorCounters) => void,
    ) =>
      new Counter<L>({
        name,
        help,
        labelNames,
        registers,
        collect() {
          apply(this, current, last);
        },
      });
    const delta = (now: number, before: number) => Math.max(0, now - before);
    counter('kprw_agent_mirror_requests_total', 'Requests to the node-local mirror', [], (c, n, b) => {
      // The first collector of a scrape reads the mirror's counters once for all four.
      refresh();
      c.inc(delta(current.requests, b.requests));
      void n;
    });
    counter(
      'kprw_agent_mirror_manifests_total',
      'Manifests served by the mirror by source (store = hit, upstream = miss)',
      ['source'],
      (c, n, b) => {
        c.inc({ source: 'store' }, delta(n.manifestsFromStore, b.manifestsFromStore));
        c.inc({ source: 'upstream' }, delta(n.manifestsFromUpstream, b.manifestsFromUpstream));
      },
    );
    counter(
      'kprw_agent_mirror_blob_bytes_total',
      'Blob bytes served by the mirror by source (store = hit, inflight = from a download in progress)',
      ['source'],
      (c, n, b) => {
        c.inc({ source: 'store' }, delta(n.blobBytesFromStore, b.blobBytesFromStore));
        c.inc({ source: 'inflight' }, delta(n.blobBytesFromInflight, b.blobBytesFromInflight));
      },
    );
    counter(
      'kprw_agent_mirror_blob_misses_total',
      'Blob requests the mirror found neither in the store nor in flight (a download started)',
      [],
      (c, n, b) => {
        c.inc(delta(n.blobMisses, b.blobMisses));
        last = n;
      },
    );
  }
}
