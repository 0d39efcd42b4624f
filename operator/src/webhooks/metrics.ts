/**
 * Prometheus metrics of the webhook endpoints. Registered on the registry the caller
 * passes; registering twice on the same registry (two handlers in one process, tests)
 * reuses the existing collectors instead of throwing.
 */
import { Counter, Gauge, type Registry } from 'prom-client';

/** Deliveries (HTTP requests) by source and answered status code. */
export const DELIVERIES_METRIC = 'kprw_webhook_deliveries_total';
/** Push events found in accepted deliveries, by source and what became of them. */
export const EVENTS_METRIC = 'kprw_webhook_events_total';

/**
 * What became of one event found in an authenticated delivery:
 * - `dispatched`: `onPush` resolved (and did not say it matched nothing);
 * - `unwatched`: `onPush` resolved with `matched: 0`, no ImagePrewarm watches it;
 * - `duplicate`: already taken within the dedup TTL (sender retry or replay);
 * - `ignored`: not a push we act on (pull, delete, chart, blob, untagged, ping, …);
 * - `stale`: its timestamp is outside the replay window;
 * - `dispatch_error`: `onPush` rejected (logged; the dedup claim is released);
 * - `dedup_error`: the dedup store failed; the event was dispatched anyway.
 */
export type EventOutcome =
  | 'dispatched'
  | 'unwatched'
  | 'duplicate'
  | 'ignored'
  | 'stale'
  | 'dispatch_error'
  | 'dedup_error';

export class WebhookMetrics {
  readonly deliveries: Counter<'source' | 'status'>;
  readonly events: Counter<'source' | 'outcome'>;

  constructor(registry: Registry) {
    this.deliveries = getOrCreateCounter(
      registry,
      DELIVERIES_METRIC,
      'Webhook deliveries by source and HTTP status answered',
      ['source', 'status'],
    );
    this.events = getOrCreateCounter(
      registry,
      EVENTS_METRIC,
      'Registry push events received by webhook, by source and outcome',
      ['source', 'outcome'],
    );
  }

  delivery(source: string, status: number): void {
    this.deliveries.inc({ source, status: String(status) });
  }

  event(source: string, outcome: EventOutcome, n = 1): void {
    if (n > 0) this.events.inc({ source, outcome }, n);
  }
}

/** The counter `name` on `registry`, created on first use. */
export function getOrCreateCounter<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: L[],
): Counter<L> {
  const existing = registry.getSingleMetric(name);
  if (existing instanceof Counter) return existing as Counter<L>;
  return new Counter<L>({ name, help, labelNames, registers: [registry] });
}

/**
 * A gauge whose value is read at scrape time from `read`, created on first use. A second
 * call on the same registry (a reloaded handler, a second server in tests) keeps the first
 * reader: each registry belongs to one process and one server.
 */
export function getOrCreateGauge(registry: Registry, name: string, help: string, read: () => number): Gauge {
  const existing = registry.getSingleMetric(name);
  if (existing instanceof Gauge) return existing;
  return new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(read());
    },
  });
}
