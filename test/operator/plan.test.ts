/**
 * The pure parts of the operator, with plain objects: node selection, plan(), digest
 * retention, push matching, schedules, quantities, configuration, the work queue and
 * the job-hash reader.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Digest } from '../../oci/src/digest.js';
import { prewarmJobId } from '../../oci/src/job-contract.js';
import type { ImagePrewarm, ImagePrewarmSpec, ImageStatus } from '../../operator/src/api/types.js';
import { configTable, loadConfig, SETTINGS } from '../../operator/src/config.js';
import type { NodeView } from '../../operator/src/kube/node-view.js';
import { parseJobHash } from '../../operator/src/queue/bull-job-queue.js';
import type { JobObservation } from '../../operator/src/queue/types.js';
import { exclusion, selectNodes, tolerates } from '../../operator/src/reconcile/nodes.js';
import {
  jobNode,
  jobRefsToObserve,
  type PlanInput,
  parseQuantity,
  plan,
  type ResolvedImage,
  splitFailure,
} from '../../operator/src/reconcile/plan.js';
import { globToRegExp, matchPush } from '../../operator/src/reconcile/push-match.js';
import { advance } from '../../operator/src/reconcile/retention.js';
import { evaluateSchedule } from '../../operator/src/reconcile/schedule.js';
import { WorkQueue } from '../../operator/src/reconcile/work-queue.js';
import { REPO_ROOT } from '../harness/kube.js';

const D = (c: string): Digest => `sha256:${c.repeat(64)}` as Digest;
const NOW = Date.parse('2026-01-01T00:00:00Z');
const owner = { namespace: 'ns', name: 'p', uid: 'uid-p' };

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

function image(digest: Digest, extra: Partial<ResolvedImage> = {}): ResolvedImage {
  return {
    name: 'r.example.com/app:v1',
    repository: 'r.example.com/app',
    registry: 'r.example.com',
    tag: 'v1',
    current: { digest, resolvedAt: new Date(NOW - 60_000).toISOString() },
    previous: [],
    dropped: [],
    lastTrigger: { type: 'push', source: 'acr', time: new Date(NOW - 60_000).toISOString() },
    ...extra,
  };
}

function input(over: Partial<PlanInput> = {}): PlanInput {
  return {
    owner,
    generation: 3,
    spec: { images: [{ repository: 'r.example.com/app', tag: 'v1' }] },
    status: undefined,
    images: [image(D('1'))],
    nodes: [node('a'), node('b'), node('c')],
    jobs: new Map(),
    slots: { cluster: 1000, registry: new Map() },
    now: NOW,
    options: { failedRetryAfterMs: 60_000, maxFailingNodes: 20, progressPollMs: 1000 },
    ...over,
  };
}

const done = (extra: Partial<JobObservation> = {}): JobObservation => ({
  state: 'completed',
  owners: [owner],
  finishedOn: NOW - 1000,
  triggeredAt: NOW - 5000,
  result: {
    phase: 'warm',
    manifestDigest: D('9'),
    bytesTotal: 100,
    bytesFromRegistry: 60,
    bytesFromPeers: 40,
    bytesAlreadyPresent: 0,
    durationMs: 10,
  },
  ...extra,
});

describe('node selection', () => {
  const spec: ImagePrewarmSpec = { images: [], nodeSelector: { pool: 'a' } };

  test('Ready, schedulable, matching nodes only', () => {
    const nodes = [
      node('ok'),
      node('notready', { ready: false }),
      node('cordoned', { unschedulable: true }),
      node('other', { labels: { pool: 'b' } }),
    ];
    assert.deepEqual(
      selectNodes(spec, nodes).map((n) => n.name),
      ['ok'],
    );
    assert.equal(exclusion(spec, nodes[1]!), 'not-ready');
    assert.equal(exclusion(spec, nodes[2]!), 'cordoned');
    assert.equal(exclusion(spec, nodes[3]!), 'placement');
  });

  test('taints need tolerations; PreferNoSchedule and the startup taint do not', () => {
    const gpu = node('gpu', { taints: [{ key: 'gpu', value: 'true', effect: 'NoSchedule' }] });
    const soft = node('soft', { taints: [{ key: 'x', effect: 'PreferNoSchedule' }] });
    const warming = node('warming', {
      taints: [{ key: 'kube-prewarm.io/warming', effect: 'NoSchedule' }],
      gated: true,
    });
    assert.equal(exclusion(spec, gpu), 'taint');
    assert.equal(exclusion(spec, soft), undefined);
    assert.equal(exclusion(spec, warming), undefined);
    assert.equal(
      exclusion({ ...spec, tolerations: [{ key: 'gpu', operator: 'Equal', value: 'true' }] }, gpu),
      undefined,
    );
    assert.equal(
      exclusion({ ...spec, tolerations: [{ key: 'gpu', operator: 'Equal', value: 'no' }] }, gpu),
      'taint',
    );
    assert.equal(exclusion({ ...spec, tolerations: [{ operator: 'Exists' }] }, gpu), undefined);
    assert.equal(
      tolerates(
        { key: 'gpu', operator: 'Exists', effect: 'NoExecute' },
        { key: 'gpu', effect: 'NoSchedule' },
      ),
      false,
    );
  });

  test('required node affinity: terms ORed, expressions ANDed, fields by name', () => {
    const aff = (terms: NonNullable<NonNullable<ImagePrewarmSpec['affinity']>['nodeAffinity']>) => ({
      images: [],
      affinity: { nodeAffinity: terms },
    });
    const n = node('n1', { labels: { zone: 'z1', cpus: '16' } });
    const req = (terms: unknown[]) =>
      aff({ requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: terms as never } });
    assert.equal(
      exclusion(req([{ matchExpressions: [{ key: 'zone', operator: 'In', values: ['z1'] }] }]), n),
      undefined,
    );
    assert.equal(
      exclusion(req([{ matchExpressions: [{ key: 'zone', operator: 'NotIn', values: ['z1'] }] }]), n),
      'placement',
    );
    assert.equal(
      exclusion(req([{ matchExpressions: [{ key: 'cpus', operator: 'Gt', values: ['8'] }] }]), n),
      undefined,
    );
    assert.equal(
      exclusion(req([{ matchExpressions: [{ key: 'cpus', operator: 'Lt', values: ['8'] }] }]), n),
      'placement',
    );
    assert.equal(
      exclusion(req([{ matchExpressions: [{ key: 'gpu', operator: 'DoesNotExist' }] }]), n),
      undefined,
    );
    assert.equal(
      exclusion(req([{ matchFields: [{ key: 'metadata.name', operator: 'In', values: ['n1'] }] }]), n),
      undefined,
    );
    assert.equal(
      exclusion(
        req([
          { matchExpressions: [{ key: 'zone', operator: 'In', values: ['z9'] }] },
          { matchExpressions: [{ key: 'zone', operator: 'Exists' }] },
        ]),
        n,
      ),
      undefined,
    );
    assert.equal(exclusion(req([{}]), n), 'placement', 'an empty term matches nothing');
  });
});

describe('plan()', () => {
  test('enqueues one job per targeted node, with the contract fields', () => {
    const p = plan(input());
    assert.deepEqual(
      p.enqueue.map((j) => j.jobId),
      ['a', 'b', 'c'].map((n) => prewarmJobId(D('1'), n, 'cache')),
    );
    const data = p.enqueue[0]!.data;
    assert.equal(data.v, 1);
    assert.deepEqual(data.owners, [owner]);
    assert.equal(data.repository, 'r.example.com/app');
    assert.equal(data.tag, 'v1');
    assert.equal(data.platform, 'linux/amd64');
    assert.equal(data.trigger, 'push:acr');
    assert.equal(data.triggeredAt, NOW - 60_000);
    assert.equal(p.status.warm, '0/3');
    assert.equal(p.status.conditions?.find((c) => c.type === 'Ready')?.reason, 'RollingOut');
    assert.equal(p.status.conditions?.find((c) => c.type === 'Progressing')?.status, 'True');
    assert.equal(p.requeueAfterMs, 1000);
  });

  test('is idempotent: existing jobs are never enqueued again', () => {
    const jobs = new Map<string, JobObservation>([
      [prewarmJobId(D('1'), 'a', 'cache'), done()],
      [prewarmJobId(D('1'), 'b', 'cache'), { state: 'active', owners: [owner] }],
    ]);
    const p = plan(input({ jobs }));
    assert.deepEqual(
      p.enqueue.map((j) => j.node),
      ['c'],
    );
    const again = plan(
      input({
        jobs: new Map([...jobs, [prewarmJobId(D('1'), 'c', 'cache'), { state: 'pending', owners: [owner] }]]),
      }),
    );
    assert.deepEqual(again.enqueue, []);
  });

  test('Ready with every node warm; bytes fetched summed; lastTransitionTime kept', () => {
    const jobs = new Map(['a', 'b', 'c'].map((n) => [prewarmJobId(D('1'), n, 'cache'), done()] as const));
    const p = plan(input({ jobs }));
    assert.deepEqual(p.enqueue, []);
    assert.equal(p.status.warm, '3/3');
    assert.equal(p.status.images?.[0]?.bytesFetched, 300);
    const ready = p.status.conditions?.find((c) => c.type === 'Ready');
    assert.equal(ready?.status, 'True');
    assert.equal(ready?.reason, 'AllNodesWarm');
    assert.equal(p.requeueAfterMs, undefined);
    assert.equal(p.completed.length, 3);
    const later = plan(input({ jobs, status: p.status, now: NOW + 10_000 }));
    assert.equal(
      later.status.conditions?.find((c) => c.type === 'Ready')?.lastTransitionTime,
      ready?.lastTransitionTime,
    );
  });

  test('maxParallelNodes counts nodes in flight; gated nodes go first', () => {
    const spec: ImagePrewarmSpec = { ...input().spec, rollout: { maxParallelNodes: 2 } };
    const nodes = [
      node('a'),
      node('b'),
      node('c'),
      node('z', { gated: true, taints: [{ key: 'kube-prewarm.io/warming', effect: 'NoSchedule' }] }),
    ];
    const p = plan(input({ spec, nodes }));
    assert.deepEqual(
      p.enqueue.map((j) => j.node),
      ['z', 'a'],
    );
    const jobs = new Map<string, JobObservation>([
      [prewarmJobId(D('1'), 'z', 'cache'), { state: 'active', owners: [owner] }],
    ]);
    assert.deepEqual(
      plan(input({ spec, nodes, jobs })).enqueue.map((j) => j.node),
      ['a'],
    );
  });

  test('cluster and registry slots cap new jobs', () => {
    assert.equal(plan(input({ slots: { cluster: 1, registry: new Map() } })).enqueue.length, 1);
    assert.equal(
      plan(input({ slots: { cluster: 10, registry: new Map([['r.example.com', 2]]) } })).enqueue.length,
      2,
    );
    assert.equal(
      plan(input({ slots: { cluster: 10, registry: new Map([['other.io', 0]]) } })).enqueue.length,
      3,
    );
  });

  test('failed jobs: reported per node, retried after the delay', () => {
    const failed: JobObservation = {
      state: 'failed',
      owners: [owner],
      failedReason: 'PW_ERR_DISK_FULL: no space left',
      finishedOn: NOW - 10_000,
    };
    const jobs = new Map([
      [prewarmJobId(D('1'), 'a', 'cache'), failed],
      [prewarmJobId(D('1'), 'b', 'cache'), done()],
      [prewarmJobId(D('1'), 'c', 'cache'), done()],
    ]);
    const p = plan(input({ jobs }));
    assert.deepEqual(p.retry, []);
    assert.deepEqual(p.status.images?.[0]?.failingNodes?.[0], {
      node: 'a',
      reason: 'PW_ERR_DISK_FULL',
      message: 'no space left',
      time: new Date(NOW - 10_000).toISOString(),
    });
    assert.equal(p.status.conditions?.find((c) => c.type === 'Degraded')?.reason, 'NodesFailing');
    assert.equal(p.status.conditions?.find((c) => c.type === 'Ready')?.reason, 'NodesFailing');
    assert.equal(p.status.conditions?.find((c) => c.type === 'Progressing')?.reason, 'Stalled');
    assert.equal(p.nodeWarmth.get('a'), 'failed');
    assert.equal(p.requeueAfterMs, 50_000);
    const later = plan(input({ jobs, now: NOW + 60_000 }));
    assert.deepEqual(later.retry, [{ node: 'a', jobId: prewarmJobId(D('1'), 'a', 'cache') }]);
  });

  test('retained digests stay pinned, dropped ones and deselected nodes are unpinned', () => {
    const img = image(D('3'), { previous: [{ digest: D('2') }], dropped: [D('1')] });
    const jobs = new Map<string, JobObservation>([
      [prewarmJobId(D('1'), 'a', 'cache'), done()],
      [prewarmJobId(D('2'), 'a', 'cache'), done()],
      [prewarmJobId(D('3'), 'a', 'cache'), done()],
      [prewarmJobId(D('3'), 'gone', 'cache'), done()],
      [
        prewarmJobId(D('1'), 'b', 'cache'),
        done({ owners: [{ namespace: 'x', name: 'other', uid: 'uid-x' }] }),
      ],
    ]);
    const nodes = [node('a'), node('gone', { labels: { pool: 'b' } })];
    const spec: ImagePrewarmSpec = { images: [], nodeSelector: { pool: 'a' } };
    const p = plan(input({ spec, images: [img], nodes, jobs }));
    assert.deepEqual(
      p.unpin.map((r) => r.jobId).sort(),
      [prewarmJobId(D('1'), 'a', 'cache'), prewarmJobId(D('3'), 'gone', 'cache')].sort(),
    );
    assert.deepEqual(p.enqueue, []);
    assert.deepEqual(p.status.images?.[0]?.previousDigests, [{ digest: D('2') }]);
  });

  test('another owner’s job gets this owner added', () => {
    const jobs = new Map([
      [prewarmJobId(D('1'), 'a', 'cache'), done({ owners: [{ namespace: 'x', name: 'o', uid: 'u2' }] })],
    ]);
    const p = plan(input({ jobs, nodes: [node('a')] }));
    assert.deepEqual(p.addOwner, [{ node: 'a', jobId: prewarmJobId(D('1'), 'a', 'cache') }]);
    assert.equal(p.status.warm, '1/1');
  });

  test('an index without the node’s platform is a per-node failure, no job', () => {
    const img = image(D('1'), {
      current: {
        digest: D('1'),
        resolvedAt: new Date(NOW).toISOString(),
        platforms: ['linux/amd64', 'linux/arm64'],
      },
    });
    const nodes = [
      node('amd'),
      node('arm', { platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } }),
      node('s390', { platform: { os: 'linux', architecture: 's390x' } }),
    ];
    const p = plan(input({ images: [img], nodes }));
    assert.deepEqual(
      p.enqueue.map((j) => [j.node, j.data.platform]),
      [
        ['amd', 'linux/amd64'],
        ['arm', 'linux/arm64/v8'],
      ],
    );
    assert.equal(p.status.images?.[0]?.failingNodes?.[0]?.reason, 'PlatformNotFound');
    assert.equal(p.nodeWarmth.get('s390'), 'failed');
  });

  test('onNodeJoin=false leaves nodes created after the resolution alone', () => {
    const spec: ImagePrewarmSpec = { ...input().spec, triggers: { onNodeJoin: false } };
    const created = new Map([
      ['a', NOW - 3_600_000],
      ['b', NOW],
    ]);
    const p = plan(input({ spec, nodes: [node('a'), node('b')], nodeCreatedAt: created }));
    assert.deepEqual(
      p.enqueue.map((j) => j.node),
      ['a'],
    );
    const joined = plan(input({ nodes: [node('a'), node('b')], nodeCreatedAt: created }));
    assert.equal(joined.enqueue.find((j) => j.node === 'b')?.data.trigger, 'node-join');
  });

  test('unresolved images, resolve errors, deadline and extra problems reach the conditions', () => {
    const waiting = plan(
      input({
        images: [
          image(D('1'), { current: undefined, waiting: { reason: 'AwaitingPush', message: 'no tag yet' } }),
        ],
      }),
    );
    assert.equal(waiting.status.conditions?.find((c) => c.type === 'Ready')?.reason, 'AwaitingPush');
    assert.deepEqual(waiting.enqueue, []);
    const broken = plan(
      input({
        images: [image(D('1'), { error: { reason: 'ResolveFailed', message: 'PW_ERR_NETWORK: refused' } })],
      }),
    );
    const degraded = broken.status.conditions?.find((c) => c.type === 'Degraded');
    assert.equal(degraded?.reason, 'ResolveFailed');
    assert.match(degraded?.message ?? '', /refused/);
    assert.equal(broken.enqueue.length, 3, 'the last good digest keeps rolling out');
    const late = plan(input({ spec: { ...input().spec, rollout: { deadlineSeconds: 30 } } }));
    assert.equal(
      late.status.conditions?.find((c) => c.type === 'Degraded')?.reason,
      'RolloutDeadlineExceeded',
    );
    const cron = plan(input({ problems: [{ reason: 'InvalidSchedule', message: 'bad' }] }));
    assert.equal(cron.status.conditions?.find((c) => c.type === 'Degraded')?.reason, 'InvalidSchedule');
  });

  test('job data carries bandwidth, startup paths, pull secrets and mode', () => {
    const spec: ImagePrewarmSpec = {
      ...input().spec,
      mode: 'unpack',
      rollout: { maxBandwidthPerNode: '50Mi' },
      startup: { paths: ['/bin/app'] },
    };
    const p = plan(input({ spec, options: { ...input().options, pullSecrets: ['ns/regcred'] } }));
    const data = p.enqueue[0]!.data;
    assert.equal(data.mode, 'unpack');
    assert.equal(p.enqueue[0]!.jobId, prewarmJobId(D('1'), 'a', 'unpack'));
    assert.equal(data.bandwidthBytesPerSec, 50 * 1024 * 1024);
    assert.deepEqual(data.startupPaths, ['/bin/app']);
    assert.deepEqual(data.pullSecrets, ['ns/regcred']);
  });

  test('pending jobs it alone owns follow a changed bandwidth cap, startup paths and pull secrets', () => {
    const spec: ImagePrewarmSpec = {
      ...input().spec,
      rollout: { maxBandwidthPerNode: '20Mi' },
      startup: { paths: ['/bin/new'] },
    };
    const old = { bandwidthBytesPerSec: 50 * 1024 * 1024, startupPaths: ['/bin/old'] };
    const other = { namespace: 'ns', name: 'q', uid: 'uid-q' };
    const jobs = new Map<string, JobObservation>([
      [prewarmJobId(D('1'), 'a', 'cache'), { state: 'pending', owners: [owner], settings: old }],
      [prewarmJobId(D('1'), 'b', 'cache'), { state: 'active', owners: [owner], settings: old }],
      [prewarmJobId(D('1'), 'c', 'cache'), { state: 'pending', owners: [owner, other], settings: old }],
    ]);
    const opts = { ...input().options, pullSecrets: ['ns/regcred'] };
    const p = plan(input({ spec, jobs, options: opts }));
    const want = {
      bandwidthBytesPerSec: 20 * 1024 * 1024,
      startupPaths: ['/bin/new'],
      pullSecrets: ['ns/regcred'],
    };
    // Only the pending job with this owner alone: an agent already read the active one, and
    // a shared job cannot honour two specs.
    assert.deepEqual(p.update, [{ node: 'a', jobId: prewarmJobId(D('1'), 'a', 'cache'), settings: want }]);

    const same = new Map<string, JobObservation>([
      [prewarmJobId(D('1'), 'a', 'cache'), { state: 'pending', owners: [owner], settings: want }],
    ]);
    assert.deepEqual(plan(input({ spec, jobs: same, options: opts })).update, []);
    // Settings not read (an observation without them) are never "changed".
    const unread = new Map<string, JobObservation>([
      [prewarmJobId(D('1'), 'a', 'cache'), { state: 'pending', owners: [owner] }],
    ]);
    assert.deepEqual(plan(input({ spec, jobs: unread, options: opts })).update, []);
  });

  test('jobRefsToObserve covers current, retained and dropped digests on every node', () => {
    const refs = jobRefsToObserve(
      [image(D('3'), { previous: [{ digest: D('2') }], dropped: [D('1')] })],
      [node('a'), node('b')],
      ['cache'],
    );
    assert.equal(refs.length, 6);
    assert.equal(jobNode(prewarmJobId(D('1'), 'node.with.dots', 'cache')), 'node.with.dots');
  });
});

describe('retention', () => {
  const rec = (digest: string, prev: string[] = []): ImageStatus => ({
    name: 'x',
    digest,
    previousDigests: prev.map((d) => ({ digest: d })),
  });
  test('a moving tag retains the newest digests and drops the rest', () => {
    assert.deepEqual(advance(rec(D('2'), [D('1')]), D('3'), 1), {
      previous: [{ digest: D('2') }],
      dropped: [D('1')],
    });
    assert.deepEqual(advance(rec(D('2'), [D('1')]), D('3'), 2), {
      previous: [{ digest: D('2') }, { digest: D('1') }],
      dropped: [],
    });
    assert.deepEqual(advance(rec(D('2'), [D('1')]), D('3'), 0), { previous: [], dropped: [D('2'), D('1')] });
    assert.deepEqual(advance(rec(D('2'), [D('1')]), D('2'), 1), {
      previous: [{ digest: D('1') }],
      dropped: [],
    });
    assert.deepEqual(
      advance(rec(D('2'), [D('1')]), D('1'), 1),
      { previous: [{ digest: D('2') }], dropped: [] },
      'going back',
    );
    assert.deepEqual(advance(undefined, D('1'), 1), { previous: [], dropped: [] });
  });
});

describe('push matching', () => {
  const pw = (name: string, spec: Partial<ImagePrewarmSpec>): ImagePrewarm => ({
    apiVersion: 'prewarm.kube-prewarm.io/v1alpha1',
    kind: 'ImagePrewarm',
    metadata: { name, namespace: 'ns', uid: name },
    spec: { images: [], ...spec },
  });
  const ev = (registry: string, repository: string, tag?: string) => ({
    registry,
    repository,
    ...(tag ? { tag } : {}),
    source: 'distribution',
  });
  test('exact tags, globs, docker.io names; digests and onPush:false never match', () => {
    const list = [
      pw('exact', { images: [{ repository: 'r.io/team/app', tag: 'v1' }] }),
      pw('glob', { images: [{ repository: 'r.io/team/app', tagGlob: 'v1.*' }] }),
      pw('hub', { images: [{ repository: 'docker.io/library/nginx', tag: 'latest' }] }),
      pw('pinned', { images: [{ repository: 'r.io/team/app', digest: D('1') }] }),
      pw('off', { images: [{ repository: 'r.io/team/app', tag: 'v1' }], triggers: { onPush: false } }),
    ];
    assert.deepEqual(
      matchPush(ev('r.io', 'team/app', 'v1'), list).map((m) => m.prewarm.metadata.name),
      ['exact'],
    );
    assert.deepEqual(
      matchPush(ev('r.io', 'team/app', 'v1.2'), list).map((m) => m.prewarm.metadata.name),
      ['glob'],
    );
    assert.deepEqual(
      matchPush(ev('docker.io', 'library/nginx', 'latest'), list).map((m) => m.prewarm.metadata.name),
      ['hub'],
    );
    assert.deepEqual(matchPush(ev('r.io', 'team/app'), list), []);
    assert.deepEqual(matchPush(ev('r.io', 'team/other', 'v1'), list), []);
    assert.ok(globToRegExp('a.b*').test('a.b-rc1'));
    assert.ok(!globToRegExp('a.b*').test('axb'));
  });
});

describe('schedules, quantities, failures', () => {
  test('cron evaluation', () => {
    const every5 = evaluateSchedule('*/5 * * * *', undefined, NOW, NOW + 60_000);
    assert.deepEqual(every5, { kind: 'valid', due: false, next: NOW + 300_000 });
    assert.equal(
      (evaluateSchedule('*/5 * * * *', undefined, NOW, NOW + 300_000) as { due: boolean }).due,
      true,
    );
    assert.equal(evaluateSchedule('61 * * * *', undefined, NOW, NOW).kind, 'invalid');
    assert.equal(evaluateSchedule('* * *', undefined, NOW, NOW).kind, 'invalid');
    assert.equal(evaluateSchedule('* * * * *', 'Mars/Olympus', NOW, NOW).kind, 'invalid');
    assert.equal(evaluateSchedule(undefined, undefined, NOW, NOW).kind, 'none');
  });
  test('quantities and failure reasons', () => {
    assert.equal(parseQuantity('50Mi'), 52_428_800);
    assert.equal(parseQuantity('200M'), 200_000_000);
    assert.equal(parseQuantity('1.5Ki'), 1536);
    assert.equal(parseQuantity('fast'), undefined);
    assert.deepEqual(splitFailure('PW_ERR_AUTH_DENIED: 401'), {
      reason: 'PW_ERR_AUTH_DENIED',
      message: '401',
    });
    assert.deepEqual(splitFailure('boom'), { reason: 'JobFailed', message: 'boom' });
  });
});

describe('configuration', () => {
  test('defaults, validation and the README table', () => {
    const cfg = loadConfig({});
    assert.equal(cfg.redisUrl, 'redis://127.0.0.1:6379');
    assert.equal(cfg.leaseDurationMs, 15_000);
    assert.match(cfg.identity, /-[a-z0-9]+$/);
    assert.deepEqual(
      loadConfig({ KUBE_PREWARM_REGISTRY_MAX_INFLIGHT: 'r.io=10, 127.0.0.1:5000=2' }).registryMaxInFlight,
      {
        'r.io': 10,
        '127.0.0.1:5000': 2,
      },
    );
    assert.throws(
      () =>
        loadConfig({
          KUBE_PREWARM_HTTP_PORT: 'x',
          KUBE_PREWARM_REDIS_URL: 'http://h',
          KUBE_PREWARM_LOG_LEVEL: 'loud',
        }),
      (err: Error & { code?: string }) =>
        err.code === 'PW_ERR_INVALID_CONFIG' &&
        /KUBE_PREWARM_HTTP_PORT/.test(err.message) &&
        /KUBE_PREWARM_REDIS_URL/.test(err.message) &&
        /KUBE_PREWARM_LOG_LEVEL/.test(err.message),
    );
    assert.throws(
      () => loadConfig({ KUBE_PREWARM_LEASE_DURATION_MS: '5000', KUBE_PREWARM_RENEW_DEADLINE_MS: '6000' }),
      /RENEW_DEADLINE/,
    );
    const readme = readFileSync(join(REPO_ROOT, 'operator/README.md'), 'utf8');
    for (const s of Object.values(SETTINGS))
      assert.ok(readme.includes(`\`${s.env}\``), `README documents ${s.env}`);
    assert.ok(configTable().split('\n').length === Object.keys(SETTINGS).length + 2);
  });
});

describe('work queue', () => {
  test('deduplicates keys and never runs one key twice at once', async () => {
    const q = new WorkQueue({ baseDelayMs: 10 });
    const ac = new AbortController();
    const seen: string[] = [];
    let running = 0;
    let maxSameKey = 0;
    const inFlight = new Map<string, number>();
    const run = q.run(
      3,
      async (key) => {
        running++;
        inFlight.set(key, (inFlight.get(key) ?? 0) + 1);
        maxSameKey = Math.max(maxSameKey, inFlight.get(key)!);
        seen.push(key);
        await sleep(20);
        if (key === 'a' && seen.filter((k) => k === 'a').length === 1) q.add('a'); // re-added while running
        inFlight.set(key, inFlight.get(key)! - 1);
        running--;
      },
      ac.signal,
    );
    q.add('a');
    q.add('a');
    q.add('b');
    await sleep(150);
    ac.abort();
    await run;
    assert.equal(maxSameKey, 1);
    assert.deepEqual(seen.filter((k) => k === 'a').length, 2, 'dirty key processed again after it finished');
    assert.equal(seen.filter((k) => k === 'b').length, 1);
    assert.equal(running, 0);
  });
  test('rate limiting doubles and forget resets', () => {
    const q = new WorkQueue({ baseDelayMs: 100, maxDelayMs: 250 });
    assert.equal(q.addRateLimited('k'), 100);
    assert.equal(q.addRateLimited('k'), 200);
    assert.equal(q.addRateLimited('k'), 250);
    q.forget('k');
    assert.equal(q.addRateLimited('k'), 100);
    q.shutdown();
  });
});

describe('job hash reader', () => {
  test('derives states from BullMQ job hash fields', () => {
    const data = JSON.stringify({ owners: [owner], triggeredAt: 5, trigger: 'push:acr' });
    const h = (o: Partial<Parameters<typeof parseJobHash>[0]>) =>
      parseJobHash({
        timestamp: '1',
        data,
        progress: null,
        returnvalue: null,
        failedReason: null,
        finishedOn: null,
        processedOn: null,
        ...o,
      });
    assert.equal(h({ timestamp: null, data: null }), undefined);
    assert.equal(h({})?.obs.state, 'pending');
    assert.equal(h({ progress: '{"phase":"fetching"}', processedOn: '7' })?.obs.state, 'active');
    const ok = h({
      returnvalue: '{"phase":"warm","bytesFromRegistry":1,"bytesFromPeers":2}',
      failedReason: 'old',
      finishedOn: '9',
      processedOn: '7',
    });
    assert.equal(ok?.obs.state, 'completed');
    assert.equal(ok?.obs.finishedOn, 9);
    assert.equal(ok?.obs.trigger, 'push:acr');
    assert.deepEqual(ok?.obs.owners, [owner]);
    const bad = h({ failedReason: 'PW_ERR_X: y', finishedOn: '9', processedOn: '7' });
    assert.equal(bad?.obs.state, 'failed');
    assert.equal(bad?.obs.failedReason, 'PW_ERR_X: y');
    // Known meta stands in for data (not read again).
    const known = parseJobHash(
      {
        timestamp: '1',
        data: null,
        progress: null,
        returnvalue: null,
        failedReason: null,
        finishedOn: null,
        processedOn: null,
      },
      { owners: [owner], trigger: 'spec', settings: {} },
    );
    assert.equal(known?.obs.trigger, 'spec');
  });
});
