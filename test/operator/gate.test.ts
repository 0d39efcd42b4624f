/**
 * Startup gating's deadline (fail open) and the runtime re-warm count, as pure functions
 * with plain objects: gateDeadlineMs, gateDecision, what plan() puts in the status and
 * `gateExpired`, and the job-hash reader's `evictions` for completed jobs.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Digest } from '../../oci/src/digest.js';
import { prewarmJobId } from '../../oci/src/job-contract.js';
import type { ImagePrewarmSpec } from '../../operator/src/api/types.js';
import type { NodeView } from '../../operator/src/kube/node-view.js';
import { parseJobHash } from '../../operator/src/queue/bull-job-queue.js';
import type { JobObservation } from '../../operator/src/queue/types.js';
import { gateDeadlineMs, gateDecision } from '../../operator/src/reconcile/gate.js';
import { type PlanInput, plan } from '../../operator/src/reconcile/plan.js';

const D = (c: string): Digest => `sha256:${c.repeat(64)}` as Digest;
const NOW = Date.parse('2026-01-01T00:00:00Z');
const owner = { namespace: 'ns', name: 'p', uid: 'uid-p' };
const MIN = 60_000;

function node(name: string, extra: Partial<NodeView> = {}): NodeView {
  return {
    name,
    labels: { pool: 'a' },
    taints: [],
    ready: true,
    unschedulable: false,
    platform: { os: 'linux', architecture: 'amd64' },
    gated: false,
    ...extra,
  };
}

const gated = (name: string): NodeView =>
  node(name, { gated: true, taints: [{ key: 'kube-prewarm.io/warming', effect: 'NoSchedule' }] });

const gateSpec = (extra: Partial<NonNullable<ImagePrewarmSpec['startup']>> = {}): ImagePrewarmSpec => ({
  images: [{ repository: 'r.example.com/app', tag: 'v1' }],
  startup: { gateNodes: true, ...extra },
});

function input(over: Partial<PlanInput> = {}): PlanInput {
  return {
    owner,
    generation: 1,
    spec: gateSpec(),
    status: undefined,
    images: [
      {
        name: 'r.example.com/app:v1',
        repository: 'r.example.com/app',
        registry: 'r.example.com',
        tag: 'v1',
        current: { digest: D('1'), resolvedAt: new Date(NOW - 20 * MIN).toISOString() },
        previous: [],
        dropped: [],
      },
    ],
    nodes: [],
    jobs: new Map(),
    slots: { cluster: 1000, registry: new Map() },
    now: NOW,
    options: { failedRetryAfterMs: 30 * MIN, maxFailingNodes: 20, progressPollMs: 1000 },
    ...over,
  };
}

const id = (n: string, mode: 'cache' | 'unpack' = 'cache') => prewarmJobId(D('1'), n, mode);
const failed: JobObservation = {
  state: 'failed',
  owners: [owner],
  failedReason:
    'PW_ERR_DISK_FULL: not enough room within the store budget; store uses 0 B of a 51.2 MiB budget',
  finishedOn: NOW - MIN,
};
const completed = (extra: Partial<JobObservation> = {}): JobObservation => ({
  state: 'completed',
  owners: [owner],
  finishedOn: NOW - MIN,
  result: {
    phase: 'unpacked',
    manifestDigest: D('9'),
    bytesTotal: 100,
    bytesFromRegistry: 100,
    bytesFromPeers: 0,
    bytesAlreadyPresent: 0,
    durationMs: 10,
  },
  ...extra,
});

describe('gate deadline', () => {
  test('default 600 s, the spec value, never beyond the operator cap', () => {
    assert.equal(gateDeadlineMs(gateSpec()), 600_000);
    assert.equal(gateDeadlineMs(gateSpec({ gateDeadlineSeconds: 45 })), 45_000);
    assert.equal(gateDeadlineMs(gateSpec({ gateDeadlineSeconds: 86_400 })), 3_600_000, 'default cap 1 h');
    assert.equal(gateDeadlineMs(gateSpec({ gateDeadlineSeconds: 900 }), 120_000), 120_000);
  });

  test('gateDecision: released when warm or past the deadline, held while waiting, cap as backstop', () => {
    const base = { gatedSince: NOW - 10 * MIN, now: NOW, capMs: 60 * MIN };
    assert.deepEqual(gateDecision({ ...base, gating: [] }), { release: 'ungated', notWarm: [] });
    assert.deepEqual(gateDecision({ ...base, gating: [{ key: 'a/x', state: 'warm' }] }), {
      release: 'warm',
      notWarm: [],
    });
    assert.deepEqual(
      gateDecision({
        ...base,
        gating: [
          { key: 'a/x', state: 'warm' },
          { key: 'a/y', state: 'expired' },
        ],
      }),
      { release: 'deadline', notWarm: ['a/y'] },
    );
    // One ImagePrewarm expired, another still within its own deadline: held.
    assert.deepEqual(
      gateDecision({
        ...base,
        gating: [
          { key: 'a/y', state: 'expired' },
          { key: 'a/z', state: 'waiting' },
          { key: 'a/u', state: 'unknown' },
        ],
      }),
      { release: undefined, refresh: ['a/u'], requeueAfterMs: 50 * MIN },
    );
    assert.deepEqual(
      gateDecision({ ...base, now: NOW + 50 * MIN, gating: [{ key: 'a/u', state: 'unknown' }] }),
      { release: 'cap', notWarm: ['a/u'] },
    );
  });

  test('plan: a gated node is held until its deadline, then listed as expired with the reason', () => {
    const spec = gateSpec({ gateDeadlineSeconds: 300 });
    const nodes = [gated('g1'), gated('g2'), gated('g3')];
    const jobs = new Map<string, JobObservation>([
      [id('g1'), failed],
      [id('g2'), { state: 'active', owners: [owner], progress: progress('fetching') }],
      [id('g3'), completed({ result: { ...completed().result!, phase: 'warm' } })],
    ]);
    const gatedSince = new Map([
      ['g1', NOW - 4 * MIN],
      ['g2', NOW - 4 * MIN],
      ['g3', NOW - 60 * MIN],
    ]);
    const early = plan(input({ spec, nodes, jobs, gatedSince }));
    assert.deepEqual([...early.gateExpired], []);
    assert.equal(early.status.expiredGates, undefined);
    assert.notEqual(
      early.status.conditions?.find((c) => c.type === 'Degraded')?.reason,
      'GateDeadlineExceeded',
    );
    // Requeued at the deadline at the latest (in flight: the poll interval is sooner).
    assert.ok((early.requeueAfterMs ?? Number.POSITIVE_INFINITY) <= MIN);

    const late = plan(input({ spec, nodes, jobs, gatedSince, now: NOW + 2 * MIN }));
    assert.deepEqual([...late.gateExpired].sort(), ['g1', 'g2'], 'the warm node g3 never expires');
    const expired = late.status.expiredGates ?? [];
    assert.deepEqual(
      expired.map((e) => [e.node, e.time]),
      [
        ['g1', new Date(NOW + MIN).toISOString()],
        ['g2', new Date(NOW + MIN).toISOString()],
      ],
    );
    assert.match(expired[0]!.message, /not warm 300s after joining.*failed: PW_ERR_DISK_FULL/);
    assert.match(expired[1]!.message, /fetching/);
    const degraded = late.status.conditions?.find((c) => c.type === 'Degraded');
    assert.equal(degraded?.status, 'True');
    assert.equal(degraded?.reason, 'GateDeadlineExceeded');
    assert.match(degraded!.message, /gate deadline \(300s\) passed on 2 node\(s\).*g1 \(.*PW_ERR_DISK_FULL/);
    assert.equal(late.status.conditions?.find((c) => c.type === 'Ready')?.status, 'False');
    assert.equal(late.nodeWarmth.get('g1'), 'failed', 'expiry does not pretend the node is warm');
  });

  test('plan: an expired entry stays (same time) after the taint is gone, until the node is warm', () => {
    const spec = gateSpec({ gateDeadlineSeconds: 60 });
    const first = plan(
      input({
        spec,
        nodes: [gated('g1')],
        jobs: new Map([[id('g1'), failed]]),
        gatedSince: new Map([['g1', NOW - 2 * MIN]]),
      }),
    );
    const time = first.status.expiredGates?.[0]?.time;
    assert.ok(time);
    // The taint is gone (the node reconcile released it): still listed, still Degraded.
    const released = plan(
      input({
        spec,
        nodes: [node('g1')],
        status: first.status,
        jobs: new Map([[id('g1'), failed]]),
        now: NOW + MIN,
      }),
    );
    assert.deepEqual(
      released.status.expiredGates?.map((e) => [e.node, e.time]),
      [['g1', time]],
    );
    assert.equal(
      released.status.conditions?.find((c) => c.type === 'Degraded')?.reason,
      'GateDeadlineExceeded',
    );
    assert.deepEqual([...released.gateExpired], [], 'only gated nodes are released by the deadline');
    // Warming went on and succeeded: the entry and the condition go.
    const warm = plan(
      input({
        spec,
        nodes: [node('g1')],
        status: released.status,
        jobs: new Map([[id('g1'), completed({ result: { ...completed().result!, phase: 'warm' } })]]),
        now: NOW + 2 * MIN,
      }),
    );
    assert.equal(warm.status.expiredGates, undefined);
    assert.equal(warm.status.conditions?.find((c) => c.type === 'Degraded')?.reason, 'AsExpected');
  });

  test('plan: without gateNodes, or for a node with no known gate start, nothing expires', () => {
    const jobs = new Map([[id('g1'), failed]]);
    const noGate = plan(
      input({
        spec: { images: gateSpec().images },
        nodes: [gated('g1')],
        jobs,
        gatedSince: new Map([['g1', NOW - 60 * MIN]]),
      }),
    );
    assert.deepEqual([...noGate.gateExpired], []);
    assert.equal(noGate.status.expiredGates, undefined);
    const unknownStart = plan(input({ nodes: [gated('g1')], jobs }));
    assert.deepEqual([...unknownStart.gateExpired], []);
  });

  test('plan: the operator cap shortens a longer spec deadline', () => {
    const p = plan(
      input({
        spec: gateSpec({ gateDeadlineSeconds: 3_600 }),
        nodes: [gated('g1')],
        jobs: new Map([[id('g1'), failed]]),
        gatedSince: new Map([['g1', NOW - 3 * MIN]]),
        options: { ...input().options, maxGateDeadlineMs: 2 * MIN },
      }),
    );
    assert.deepEqual([...p.gateExpired], ['g1']);
    assert.match(p.status.expiredGates?.[0]?.message ?? '', /not warm 120s after joining/);
  });
});

describe('runtime re-warm count', () => {
  test('status.images[].rewarms sums the evictions of the current digest over the target nodes', () => {
    const spec: ImagePrewarmSpec = { images: gateSpec().images, mode: 'unpack' };
    const p = plan(
      input({
        spec,
        nodes: [node('a'), node('b'), node('c')],
        jobs: new Map([
          [id('a', 'unpack'), completed({ evictions: 2 })],
          [id('b', 'unpack'), completed({ evictions: 1 })],
          [id('c', 'unpack'), completed()],
        ]),
      }),
    );
    assert.equal(p.status.images?.[0]?.rewarms, 3);
    assert.equal(p.status.warmNodes, 3);
    const none = plan(input({ spec, nodes: [node('a')], jobs: new Map([[id('a', 'unpack'), completed()]]) }));
    assert.equal(none.status.images?.[0]?.rewarms, 0);
  });

  test("the job-hash reader takes a completed job's evictions from its progress", () => {
    const data = JSON.stringify({ owners: [owner], triggeredAt: 1, trigger: 'spec' });
    const h = (o: Partial<Parameters<typeof parseJobHash>[0]>) =>
      parseJobHash({
        timestamp: '1',
        data,
        progress: null,
        returnvalue: JSON.stringify(completed().result),
        failedReason: null,
        finishedOn: '5',
        processedOn: '2',
        ...o,
      })?.obs;
    const p = (evictions?: unknown) => JSON.stringify({ ...progress('unpacked'), evictions });
    assert.equal(h({ progress: p(3) })?.evictions, 3);
    assert.equal(h({ progress: p(3) })?.progress, undefined, 'a completed job carries no progress');
    assert.equal(h({ progress: p() })?.evictions, undefined);
    assert.equal(h({ progress: p('x') })?.evictions, undefined);
    assert.equal(h({ progress: '17' })?.evictions, undefined);
    assert.equal(h({ progress: p(3), returnvalue: null })?.evictions, undefined, 'failed jobs: none');
  });
});

function progress(phase: 'fetching' | 'unpacked') {
  return { phase, bytesDone: 1, bytesTotal: 2, layersDone: 0, layersTotal: 1 };
}
