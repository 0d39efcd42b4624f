/**
 * The operator's tenancy policy and pull-credential copies as pure functions, with plain
 * objects (as in plan.test.ts): which namespaces may gate nodes, the per-namespace
 * pinned-image quota and what plan() does with a refused entry, the policy settings; and
 * which copy is current, which jobs are pointed at it and which copies may go, plus the
 * issuer over the in-memory Kubernetes port.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { StaticCredentials } from '../../oci/src/auth.js';
import type { Digest } from '../../oci/src/digest.js';
import { prewarmJobId } from '../../oci/src/job-contract.js';
import { PULL_CREDENTIALS_ANNOTATIONS, PULL_CREDENTIALS_LABEL } from '../../oci/src/kube-secret.js';
import { loadConfig } from '../../operator/src/config.js';
import {
  type CredentialCopy,
  chooseCopy,
  collectable,
  desiredCopy,
  PullCredentialIssuer,
  repointJobs,
} from '../../operator/src/credentials/pull-credentials.js';
import { MemoryKubePort } from '../../operator/src/kube/memory-port.js';
import type { NodeView } from '../../operator/src/kube/node-view.js';
import { silentLogger } from '../../operator/src/logger.js';
import type { JobObservation } from '../../operator/src/queue/types.js';
import { type PlanInput, plan, type ResolvedImage } from '../../operator/src/reconcile/plan.js';
import {
  gateNodesAllowed,
  pinnedQuotaFor,
  type QuotaEntry,
  quotaKey,
  quotaRefusals,
} from '../../operator/src/reconcile/tenancy.js';

const D = (c: string): Digest => `sha256:${c.repeat(64)}` as Digest;
const NOW = Date.parse('2026-01-01T00:00:00Z');
const GiB = 1024 ** 3;
const owner = { namespace: 'ns', name: 'p', uid: 'uid-p' };

function node(name: string): NodeView {
  return {
    name,
    labels: {},
    taints: [],
    ready: true,
    unschedulable: false,
    platform: { os: 'linux', architecture: 'amd64' },
    gated: false,
  };
}

function image(name: string, digest: Digest, extra: Partial<ResolvedImage> = {}): ResolvedImage {
  return {
    name,
    repository: `r.example.com/${name}`,
    registry: 'r.example.com',
    tag: 'v1',
    current: { digest, resolvedAt: new Date(NOW - 60_000).toISOString() },
    previous: [],
    dropped: [],
    ...extra,
  };
}

function input(over: Partial<PlanInput> = {}): PlanInput {
  return {
    owner,
    generation: 1,
    spec: {
      images: [
        { repository: 'r.example.com/a', tag: 'v1' },
        { repository: 'r.example.com/b', tag: 'v1' },
      ],
    },
    status: undefined,
    images: [image('a', D('1')), image('b', D('2'))],
    nodes: [node('n1'), node('n2')],
    jobs: new Map(),
    slots: { cluster: 1000, registry: new Map() },
    now: NOW,
    options: { failedRetryAfterMs: 60_000, maxFailingNodes: 20, progressPollMs: 1000 },
    ...over,
  };
}

const entry = (over: Partial<QuotaEntry>): QuotaEntry => ({
  prewarm: 'ns/p',
  created: NOW,
  index: 0,
  name: 'a',
  digest: D('1'),
  bytes: GiB,
  ...over,
});

describe('gating policy', () => {
  test('only listed namespaces may gate; * allows all; empty allows none', () => {
    const policy = { gateNodesNamespaces: ['ml', 'ci'], pinnedQuotaBytes: 0 };
    assert.equal(gateNodesAllowed(policy, 'ml'), true);
    assert.equal(gateNodesAllowed(policy, 'team-a'), false);
    assert.equal(gateNodesAllowed({ ...policy, gateNodesNamespaces: ['*'] }, 'team-a'), true);
    assert.equal(gateNodesAllowed({ ...policy, gateNodesNamespaces: [] }, 'ml'), false);
  });
});

describe('pinned-image quota', () => {
  test('no quota: nothing refused', () => {
    assert.equal(quotaRefusals([entry({}), entry({ name: 'b', bytes: 100 * GiB })], 0).size, 0);
  });

  test('oldest first; the first entry that does not fit and every newer one are refused', () => {
    const entries = [
      entry({ prewarm: 'ns/new', created: NOW + 2000, name: 'small', digest: D('4'), bytes: 1 }),
      entry({ prewarm: 'ns/old', created: NOW, index: 0, name: 'a', digest: D('1'), bytes: 4 * GiB }),
      entry({ prewarm: 'ns/old', created: NOW, index: 1, name: 'b', digest: D('2'), bytes: 4 * GiB }),
      entry({ prewarm: 'ns/mid', created: NOW + 1000, name: 'c', digest: D('3'), bytes: 3 * GiB }),
    ];
    const refused = quotaRefusals(entries, 10 * GiB);
    assert.deepEqual([...refused.keys()].sort(), [quotaKey('ns/mid', 'c'), quotaKey('ns/new', 'small')]);
    const why = refused.get(quotaKey('ns/mid', 'c'))!;
    assert.equal(why.reason, 'QuotaExceeded');
    assert.match(why.message, /may use 10 GiB \(8\.0 GiB used by older entries\)/);
    assert.match(why.message, /c \(ns\/mid, 3\.0 GiB\) would bring the namespace to 11 GiB/);
    // The small newer entry would fit, but "newest first" is a prefix rule: no reshuffling.
    assert.ok(refused.has(quotaKey('ns/new', 'small')));
  });

  test('a digest counts once; an entry without a digest counts nothing; an unknown size is refused alone', () => {
    const entries = [
      entry({ prewarm: 'ns/a', created: NOW, name: 'x', digest: D('1'), bytes: 6 * GiB }),
      entry({ prewarm: 'ns/b', created: NOW + 1, name: 'same', digest: D('1'), bytes: 6 * GiB }),
      entry({ prewarm: 'ns/c', created: NOW + 2, name: 'nodigest', digest: undefined, bytes: undefined }),
      entry({ prewarm: 'ns/d', created: NOW + 3, name: 'unknown', digest: D('5'), bytes: undefined }),
      entry({ prewarm: 'ns/e', created: NOW + 4, name: 'fits', digest: D('6'), bytes: 3 * GiB }),
    ];
    const refused = quotaRefusals(entries, 10 * GiB);
    assert.deepEqual([...refused.keys()], [quotaKey('ns/d', 'unknown')]);
    assert.match(refused.get(quotaKey('ns/d', 'unknown'))!.message, /size is not known yet/);
  });

  test('per-namespace quotas override the default', () => {
    const policy = { gateNodesNamespaces: [], pinnedQuotaBytes: 5 * GiB, pinnedQuotaNamespaces: { ml: 0 } };
    assert.equal(pinnedQuotaFor(policy, 'team-a'), 5 * GiB);
    assert.equal(pinnedQuotaFor(policy, 'ml'), 0);
  });

  test('plan(): a refused entry gets no jobs, its jobs are unpinned, Ready=False and Degraded say QuotaExceeded', () => {
    const blocked = { reason: 'QuotaExceeded', message: 'b: not warmed or pinned: over quota' };
    const jobs = new Map<string, JobObservation>([
      [prewarmJobId(D('2'), 'n1', 'cache'), { state: 'completed', owners: [owner] }],
    ]);
    const p = plan(input({ images: [image('a', D('1')), image('b', D('2'), { blocked })], jobs }));
    assert.deepEqual(
      p.enqueue.map((j) => j.data.digest),
      [D('1'), D('1')],
      'only the admitted entry is warmed',
    );
    assert.deepEqual(p.unpin, [{ node: 'n1', jobId: prewarmJobId(D('2'), 'n1', 'cache') }]);
    const ready = p.status.conditions?.find((c) => c.type === 'Ready');
    const degraded = p.status.conditions?.find((c) => c.type === 'Degraded');
    assert.equal(ready?.status, 'False');
    assert.equal(ready?.reason, 'QuotaExceeded');
    assert.equal(degraded?.reason, 'QuotaExceeded');
    assert.match(degraded?.message ?? '', /over quota/);
    assert.equal(p.status.images?.[1]?.targetNodes, 0);
  });

  test('plan(): with the same entries admitted nothing is refused (the control case)', () => {
    const p = plan(input());
    assert.equal(p.enqueue.length, 4);
    assert.notEqual(p.status.conditions?.find((c) => c.type === 'Degraded')?.reason, 'QuotaExceeded');
  });
});

describe('policy settings', () => {
  test('defaults: no namespace may gate, no quota, no credential copies', () => {
    const c = loadConfig({});
    assert.deepEqual(c.gateNodesNamespaces, []);
    assert.equal(c.pinnedQuotaBytes, 0);
    assert.deepEqual(c.pinnedQuotaNamespaces, {});
    assert.equal(c.pullCredentialsNamespace, '');
  });

  test('lists, sizes and per-namespace sizes parse; bad ones are refused by name', () => {
    const c = loadConfig({
      KUBE_PREWARM_GATE_NODES_NAMESPACES: 'ml, ci',
      KUBE_PREWARM_PINNED_QUOTA: '50Gi',
      KUBE_PREWARM_PINNED_QUOTA_NAMESPACES: 'ml=200Gi,ci=0',
      KUBE_PREWARM_PULL_CREDENTIALS_NAMESPACE: 'kube-prewarm-pull-credentials',
    });
    assert.deepEqual(c.gateNodesNamespaces, ['ml', 'ci']);
    assert.equal(c.pinnedQuotaBytes, 50 * GiB);
    assert.deepEqual(c.pinnedQuotaNamespaces, { ml: 200 * GiB, ci: 0 });
    assert.throws(
      () =>
        loadConfig({
          KUBE_PREWARM_GATE_NODES_NAMESPACES: 'Not_A_Namespace',
          KUBE_PREWARM_PINNED_QUOTA: 'lots',
          KUBE_PREWARM_PINNED_QUOTA_NAMESPACES: 'ml:5Gi',
        }),
      (err: Error) =>
        /KUBE_PREWARM_GATE_NODES_NAMESPACES/.test(err.message) &&
        /KUBE_PREWARM_PINNED_QUOTA:/.test(err.message) &&
        /KUBE_PREWARM_PINNED_QUOTA_NAMESPACES/.test(err.message),
    );
  });
});

describe('pull-credential copies', () => {
  const creds = new StaticCredentials()
    .set('r.example.com', { username: 'u', password: 'p1' })
    .set('other.example.com', { username: 'o', password: 'p2' })
    .set('unused.example.com', { username: 'x', password: 'p3' });
  const copy = (name: string, content: Buffer, created: number): CredentialCopy => ({
    name,
    ownerUid: owner.uid,
    created,
    expires: created + 7_200_000,
    content,
  });

  test('a copy holds exactly the registries the images name, sorted, and nothing else', () => {
    const d = desiredCopy(creds, ['r.example.com', 'nocreds.example.com', 'r.example.com']);
    assert.deepEqual(d?.registries, ['r.example.com']);
    assert.deepEqual(JSON.parse(d!.content.toString()), {
      auths: { 'r.example.com': { auth: Buffer.from('u:p1').toString('base64') } },
    });
    assert.equal(desiredCopy(creds, ['nocreds.example.com']), undefined);
    assert.equal(desiredCopy(undefined, ['r.example.com']), undefined);
    const two = desiredCopy(creds, ['other.example.com', 'r.example.com']);
    assert.deepEqual(two?.registries, ['other.example.com', 'r.example.com']);
    assert.ok(!two!.content.toString().includes(Buffer.from('x:p3').toString('base64')));
  });

  test('current = newest copy with the same content younger than the max age; otherwise a new one', () => {
    const d = desiredCopy(creds, ['r.example.com'])!;
    const old = copy('old', d.content, NOW - 4_000_000);
    const fresh = copy('fresh', d.content, NOW - 1000);
    const changed = copy('changed', Buffer.from('{}'), NOW - 500);
    const r = chooseCopy([old, fresh, changed], d, NOW, 3_600_000);
    assert.equal(r.current, fresh);
    assert.deepEqual(r.stale.map((c) => c.name).sort(), ['changed', 'old']);
    assert.equal(chooseCopy([old, changed], d, NOW, 3_600_000).current, 'create', 'too old or other content');
    assert.deepEqual(
      chooseCopy([fresh], undefined, NOW, 3_600_000).stale.map((c) => c.name),
      ['fresh'],
      'nothing to copy: every copy is stale',
    );
  });

  test('jobs are pointed at the current copy: sole owner always, shared only when they name our copies', () => {
    const other = { namespace: 'ns2', name: 'q', uid: 'uid-q' };
    const cur = 'creds/kprw-pull-new';
    const mine = new Set(['creds/kprw-pull-old', cur]);
    const obs = (owners: (typeof owner)[], pullSecrets: string[], state: JobObservation['state']) => ({
      state,
      owners,
      settings: { pullSecrets, bandwidthBytesPerSec: 1000 },
    });
    const id = (n: string) => prewarmJobId(D('1'), n, 'cache');
    const jobs = new Map<string, JobObservation>([
      [id('sole-stale'), obs([owner], ['creds/kprw-pull-old'], 'completed')],
      [id('sole-legacy'), obs([owner], ['ns/regcred'], 'failed')],
      [id('current'), obs([owner], [cur], 'pending')],
      [id('shared-ours'), obs([owner, other], ['creds/kprw-pull-old'], 'active')],
      [id('shared-theirs'), obs([other, owner], ['creds/kprw-pull-theirs'], 'pending')],
      [id('not-ours'), obs([other], ['creds/kprw-pull-old'], 'pending')],
      [id('planned'), obs([owner], ['creds/kprw-pull-old'], 'pending')],
    ]);
    const got = repointJobs(owner, jobs, [cur], mine, new Set([id('planned')]));
    assert.deepEqual(got.map((u) => u.node).sort(), ['sole-legacy', 'sole-stale', 'shared-ours'].sort());
    for (const u of got) assert.deepEqual(u.settings, { pullSecrets: [cur], bandwidthBytesPerSec: 1000 });
    const none = repointJobs(owner, jobs, [], mine);
    assert.deepEqual(none.find((u) => u.node === 'sole-stale')?.settings, { bandwidthBytesPerSec: 1000 });
  });

  test('a stale copy is collectable only when no pending or running job names it', () => {
    const a = copy('a', Buffer.from('x'), NOW);
    const b = copy('b', Buffer.from('x'), NOW);
    const c = copy('c', Buffer.from('x'), NOW);
    const jobs = new Map<string, JobObservation>([
      ['1', { state: 'pending', owners: [owner], settings: { pullSecrets: ['creds/a'] } }],
      ['2', { state: 'active', owners: [owner], settings: { pullSecrets: ['creds/b'] } }],
      ['3', { state: 'completed', owners: [owner], settings: { pullSecrets: ['creds/c'] } }],
    ]);
    assert.deepEqual(
      collectable([a, b, c], jobs, 'creds').map((x) => x.name),
      ['c'],
    );
  });

  test('the issuer makes one immutable copy per content, replaces it when the credentials change, removes it', async () => {
    const kube = new MemoryKubePort();
    let now = NOW;
    const issuer = new PullCredentialIssuer(kube, {
      namespace: 'creds',
      maxAgeMs: 3_600_000,
      log: silentLogger(),
      now: () => now,
    });
    const d1 = desiredCopy(creds, ['r.example.com'])!;
    const first = await issuer.ensure(owner, d1);
    assert.equal(first.refs.length, 1);
    assert.match(first.refs[0]!, /^creds\/kprw-pull-[0-9a-f]{32}$/);
    const stored = kube.managedSecrets.get(first.refs[0]!)!;
    assert.equal(stored.type, 'kubernetes.io/dockerconfigjson');
    assert.equal(stored.labels[PULL_CREDENTIALS_LABEL], owner.uid);
    assert.equal(stored.annotations[PULL_CREDENTIALS_ANNOTATIONS.owner], 'ns/p');
    assert.equal(stored.annotations[PULL_CREDENTIALS_ANNOTATIONS.registries], 'r.example.com');
    assert.equal(
      stored.annotations[PULL_CREDENTIALS_ANNOTATIONS.expires],
      new Date(NOW + 7_200_000).toISOString(),
    );
    assert.deepEqual((await issuer.ensure(owner, d1)).refs, first.refs, 'same content: same copy');

    // A fresh issuer (restart) finds it by label and keeps it.
    const again = new PullCredentialIssuer(kube, { namespace: 'creds', log: silentLogger(), now: () => now });
    assert.deepEqual((await again.ensure(owner, d1)).refs, first.refs);

    const d2 = desiredCopy(
      new StaticCredentials().set('r.example.com', { username: 'u', password: 'rotated' }),
      ['r.example.com'],
    )!;
    const second = await issuer.ensure(owner, d2);
    assert.notDeepEqual(second.refs, first.refs, 'new credentials: a new name');
    assert.deepEqual(
      second.stale.map((c) => `creds/${c.name}`),
      first.refs,
    );
    assert.ok(second.ownRefs.has(first.refs[0]!) && second.ownRefs.has(second.refs[0]!));
    await issuer.collect(owner.uid, second.stale, new Map());
    assert.equal(kube.managedSecrets.has(first.refs[0]!), false, 'unreferenced stale copy deleted');

    now += 3_600_001;
    const third = await issuer.ensure(owner, d2);
    assert.notDeepEqual(third.refs, second.refs, 'older than the max age: replaced');

    await issuer.removeAll(owner.uid);
    assert.equal(kube.managedSecrets.size, 0);
    await issuer.ensure(owner, d2);
    assert.equal(await issuer.sweep(new Set(['someone-else'])), 1, 'copies of a vanished owner swept');
    assert.equal(kube.managedSecrets.size, 0);
  });
});
