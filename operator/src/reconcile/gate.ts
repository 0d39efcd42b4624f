/**
 * Startup gating's deadline, as pure functions. A node carrying the startup taint is held
 * by every ImagePrewarm with `startup.gateNodes` that targets it, each until its current
 * digests are warm there or until its gate deadline (`startup.gateDeadlineSeconds`, counted
 * from the Node's creation, capped by the operator) has passed: then it fails open, so a
 * prewarm that cannot succeed (image missing, full disk, agent failing) never blocks a
 * node pool. `plan()` decides per ImagePrewarm which nodes are past its deadline (and
 * writes why into the status first); `gateDecision()` decides per node whether the taint
 * goes.
 */
import { DEFAULT_GATE_DEADLINE_SECONDS, type ImagePrewarmSpec } from '../api/types.js';

/** Default operator-wide cap on any gate deadline: 1 h. */
export const DEFAULT_MAX_GATE_DEADLINE_MS = 3_600_000;

/**
 * The gate deadline of `spec` in ms: `startup.gateDeadlineSeconds` (default 600 s), at most
 * `capMs` (the operator's `KUBE_PREWARM_MAX_GATE_DEADLINE_MS`).
 */
export function gateDeadlineMs(spec: ImagePrewarmSpec, capMs = DEFAULT_MAX_GATE_DEADLINE_MS): number {
  const s = spec.startup?.gateDeadlineSeconds;
  const want = (typeof s === 'number' && s > 0 ? s : DEFAULT_GATE_DEADLINE_SECONDS) * 1000;
  return Math.min(want, capMs);
}

/**
 * What one gating ImagePrewarm says about a node: `warm` (every current digest is there),
 * `expired` (not warm, but its deadline passed and its status says so), `waiting`, or
 * `unknown` (not reconciled yet for its current generation).
 */
export type GateState = 'warm' | 'expired' | 'waiting' | 'unknown';

export interface GateInput {
  /** ms epoch since which the node is gated (its creation time). */
  gatedSince: number;
  now: number;
  /** The operator's cap: no taint is held longer than this after `gatedSince`, whatever happens. */
  capMs: number;
  /** Every ImagePrewarm with `gateNodes` that targets the node, by key. */
  gating: readonly { key: string; state: GateState }[];
}

export type GateDecision =
  | {
      /**
       * Why the taint goes: `ungated` (no gating ImagePrewarm targets the node), `warm`
       * (all are warm), `deadline` (each is warm or past its own deadline), `cap` (the
       * operator's cap passed while some ImagePrewarm still waited or was never reconciled).
       */
      release: 'ungated' | 'warm' | 'deadline' | 'cap';
      /** Keys that had not finished (expired, waiting or unknown). */
      notWarm: string[];
    }
  | {
      release: undefined;
      /** Keys to reconcile first (their view of the node is missing or stale). */
      refresh: string[];
      /** When to look again even without an event: at the cap. */
      requeueAfterMs: number;
    };

/**
 * Whether a gated node's startup taint is removed now. Contract: never while a gating
 * ImagePrewarm is `waiting` or `unknown`, unless the cap has passed; an `expired`
 * ImagePrewarm has written its reason before it reports `expired`, so the taint never goes
 * on a deadline without a status that says why (the cap is the backstop for an
 * ImagePrewarm whose reconcile keeps failing).
 */
export function gateDecision(input: GateInput): GateDecision {
  const { gating, now, gatedSince, capMs } = input;
  if (gating.length === 0) return { release: 'ungated', notWarm: [] };
  const notWarm = gating.filter((g) => g.state !== 'warm').map((g) => g.key);
  if (notWarm.length === 0) return { release: 'warm', notWarm };
  if (gating.every((g) => g.state === 'warm' || g.state === 'expired'))
    return { release: 'deadline', notWarm };
  const capAt = gatedSince + capMs;
  if (now >= capAt) return { release: 'cap', notWarm };
  return {
    release: undefined,
    refresh: gating.filter((g) => g.state === 'unknown').map((g) => g.key),
    requeueAfterMs: Math.max(1_000, capAt - now),
  };
}
