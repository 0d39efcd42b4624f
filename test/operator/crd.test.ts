/**
 * The ImagePrewarm CRD against a real kube-apiserver: it applies, valid resources get
 * their defaults, and invalid ones are refused by the server with a readable message.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ApiextensionsV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import { GROUP, PLURAL, VERSION } from '../../operator/src/api/types.js';
import { errorBody, type KubeHandle, startKube } from '../harness/kube.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;

describe('ImagePrewarm CRD on a real apiserver', () => {
  let kube: KubeHandle;
  let api: CustomObjectsApi;
  let n = 0;

  before(async () => {
    kube = await startKube();
    api = kube.kc.makeApiClient(CustomObjectsApi);
  });
  after(async () => {
    await kube?.stop();
  });

  const create = (spec: unknown, extra: Record<string, unknown> = {}) =>
    api.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: 'default',
      plural: PLURAL,
      body: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: 'ImagePrewarm',
        metadata: { name: `t${++n}` },
        spec,
        ...extra,
      },
    });

  /** Creates and expects a 422 whose message contains every `expected` fragment. */
  const rejects = async (spec: unknown, ...expected: string[]): Promise<string> => {
    let message = '';
    await assert.rejects(create(spec), (err: unknown) => {
      assert.equal(
        (err as { code?: number }).code,
        422,
        `expected 422, got ${String((err as Error).message)}`,
      );
      message = errorBody(err);
      return true;
    });
    for (const e of expected)
      assert.ok(message.includes(e), `message ${JSON.stringify(message)} lacks ${JSON.stringify(e)}`);
    return message;
  };

  test('is established with the status subresource and printer columns', async () => {
    const crd = await kube.kc
      .makeApiClient(ApiextensionsV1Api)
      .readCustomResourceDefinition({ name: `${PLURAL}.${GROUP}` });
    const v = crd.spec.versions.find((x) => x.name === VERSION);
    assert.ok(v?.subresources?.status, 'status subresource');
    assert.deepEqual(
      v?.additionalPrinterColumns?.map((c) => c.name),
      ['Images', 'Warm', 'Ready', 'Reason', 'Age'],
    );
    assert.equal(crd.spec.scope, 'Namespaced');
  });

  test('a valid resource is accepted and defaulted', async () => {
    const got = (await create({
      images: [
        { repository: 'registry.example.com/team/app', tag: 'v1' },
        { repository: '127.0.0.1:5000/base', digest: DIGEST, platforms: ['linux/arm64/v8'] },
        { repository: 'registry.example.com/team/app', tagGlob: 'release-*' },
      ],
      nodeSelector: { pool: 'gpu' },
      affinity: {
        nodeAffinity: {
          requiredDuringSchedulingIgnoredDuringExecution: {
            nodeSelectorTerms: [{ matchExpressions: [{ key: 'zone', operator: 'In', values: ['a', 'b'] }] }],
          },
        },
      },
      tolerations: [{ key: 'gpu', operator: 'Exists', effect: 'NoSchedule' }],
      triggers: { schedule: '*/5 * * * *' },
      startup: { gateNodes: true, paths: ['/usr/bin/python3'] },
      rollout: { maxParallelNodes: 10, maxBandwidthPerNode: '50Mi', deadlineSeconds: 600 },
      pullSecrets: [{ name: 'regcred' }],
    })) as { spec: Record<string, unknown> & { triggers: Record<string, unknown> } };
    assert.equal(got.spec.mode, 'cache');
    assert.equal(got.spec.retain, 1);
    assert.equal(got.spec.triggers.onPush, true);
    assert.equal(got.spec.triggers.onNodeJoin, true);
  });

  test('images is required and must not be empty', async () => {
    await rejects({}, 'spec.images', 'Required value');
    await rejects({ images: [] }, 'spec.images', 'should have at least 1 items');
  });

  test('an image names exactly one of tag, tagGlob, digest', async () => {
    await rejects(
      { images: [{ repository: 'registry.example.com/app', tag: 'v1', digest: DIGEST }] },
      'exactly one of tag, tagGlob or digest must be set',
    );
    await rejects(
      { images: [{ repository: 'registry.example.com/app' }] },
      'exactly one of tag, tagGlob or digest',
    );
  });

  test('a digest must be sha256 and 64 lower-case hex', async () => {
    await rejects(
      { images: [{ repository: 'registry.example.com/app', digest: 'sha256:abc' }] },
      "digest must be 'sha256:' followed by 64 lower-case hex characters",
    );
    await rejects(
      { images: [{ repository: 'registry.example.com/app', digest: `sha512:${'a'.repeat(64)}` }] },
      "digest must be 'sha256:'",
    );
    await rejects(
      { images: [{ repository: 'registry.example.com/app', digest: `sha256:${'A'.repeat(64)}` }] },
      "digest must be 'sha256:'",
    );
  });

  test('a repository carries no tag or digest and names a registry', async () => {
    await rejects(
      { images: [{ repository: 'registry.example.com/app:v1', tag: 'v1' }] },
      'repository must be',
    );
    await rejects(
      { images: [{ repository: 'nginx', tag: 'v1' }] },
      'repository must be <registry host[:port]>',
    );
    await rejects(
      { images: [{ repository: 'registry.example.com/../etc', tag: 'v1' }] },
      'repository must be',
    );
  });

  test('tags and tag globs are checked', async () => {
    await rejects({ images: [{ repository: 'r.example.com/a', tag: '-bad' }] }, 'tag must match');
    await rejects({ images: [{ repository: 'r.example.com/a', tagGlob: 'v1.0' }] }, 'contain a wildcard');
    await rejects(
      { images: [{ repository: 'r.example.com/a', tagGlob: 'v[12]*' }] },
      'tagGlob must use only',
    );
  });

  test('the same image twice is refused', async () => {
    await rejects(
      {
        images: [
          { repository: 'r.example.com/a', tag: 'v1' },
          { repository: 'r.example.com/a', tag: 'v1' },
        ],
      },
      'must not list the same repository',
    );
  });

  test('enums and ranges', async () => {
    const img = [{ repository: 'r.example.com/a', tag: 'v1' }];
    await rejects({ images: img, mode: 'pull' }, 'spec.mode', 'Unsupported value: "pull"');
    await rejects({ images: img, retain: 11 }, 'spec.retain', 'less than or equal to 10');
    await rejects({ images: img, rollout: { maxParallelNodes: 0 } }, 'spec.rollout.maxParallelNodes');
    await rejects(
      { images: img, rollout: { maxBandwidthPerNode: 'fast' } },
      'maxBandwidthPerNode must be a quantity',
    );
  });

  test('tolerations and node affinity follow the scheduler rules', async () => {
    const img = [{ repository: 'r.example.com/a', tag: 'v1' }];
    await rejects(
      { images: img, tolerations: [{ key: 'k', operator: 'Exists', value: 'v' }] },
      'a toleration with operator Exists must not set a value',
    );
    await rejects(
      { images: img, tolerations: [{ operator: 'Equal', value: 'v' }] },
      'a toleration without a key must use operator Exists',
    );
    const term = (expr: unknown) => ({
      images: img,
      affinity: {
        nodeAffinity: {
          requiredDuringSchedulingIgnoredDuringExecution: {
            nodeSelectorTerms: [{ matchExpressions: [expr] }],
          },
        },
      },
    });
    await rejects(term({ key: 'zone', operator: 'In' }), 'operators In and NotIn need at least one value');
    await rejects(
      term({ key: 'zone', operator: 'Exists', values: ['x'] }),
      'operators Exists and DoesNotExist take no values',
    );
    await rejects(
      term({ key: 'cpu', operator: 'Gt', values: ['many'] }),
      'operators Gt and Lt take exactly one integer value',
    );
  });

  test('startup gating needs onNodeJoin', async () => {
    await rejects(
      {
        images: [{ repository: 'r.example.com/a', tag: 'v1' }],
        startup: { gateNodes: true },
        triggers: { onNodeJoin: false },
      },
      'startup.gateNodes needs triggers.onNodeJoin',
    );
  });

  test('startup paths may not climb out', async () => {
    await rejects(
      {
        images: [{ repository: 'r.example.com/a', tag: 'v1' }],
        startup: { paths: ['/app/../../etc/shadow'] },
      },
      "startup paths must not contain '..'",
    );
  });

  test('status is a subresource: writes through the main resource ignore it', async () => {
    const created = (await create(
      { images: [{ repository: 'r.example.com/a', tag: 'v1' }] },
      { status: { warm: '9/9' } },
    )) as { status?: unknown; metadata: { name: string } };
    assert.equal(created.status, undefined);
  });
});
