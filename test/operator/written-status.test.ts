/**
 * The controller's own last status write against a watch cache that lags by more than one
 * write (pure function, plain objects). The e2e gating test lost `status.expiredGates` this
 * way: after the gate deadline released a node, the next reconcile read a cached object two
 * writes old, saw no expired entry and no taint, and dropped the entry for good.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ImagePrewarm, ImagePrewarmStatus } from '../../operator/src/api/types.js';
import { type WrittenStatus, withWrittenStatus } from '../../operator/src/reconcile/written-status.js';

const obj = (resourceVersion: string, status: ImagePrewarmStatus, uid = 'u1'): ImagePrewarm => ({
  apiVersion: 'prewarm.kube-prewarm.io/v1alpha1',
  kind: 'ImagePrewarm',
  metadata: { name: 'p', namespace: 'ns', uid, resourceVersion },
  spec: { images: [] },
  status,
});

const S0: ImagePrewarmStatus = { warm: '0/1' };
const S1: ImagePrewarmStatus = {
  warm: '0/1',
  expiredGates: [{ node: 'n3', time: '2026-01-01T00:01:00Z', message: 'not warm 60s after joining' }],
};

describe('withWrittenStatus', () => {
  test('a cache two writes behind: the last written status wins, not the older cached one', () => {
    // Writes: S0 took the object 10 → 11, S1 (computed while the cache still said 10) 11 → 12.
    const written: WrittenStatus = { uid: 'u1', resourceVersion: '12', status: S1 };
    for (const cached of [obj('10', {}), obj('11', S0)]) {
      const { cr, keep } = withWrittenStatus(cached, written);
      assert.deepEqual(cr.status, S1, `cache at ${cached.metadata.resourceVersion}`);
      assert.equal(keep, true);
      // Spec and metadata still come from the cache.
      assert.equal(cr.metadata.resourceVersion, cached.metadata.resourceVersion);
    }
  });

  test('the cache at the written version or later is authoritative again', () => {
    const written: WrittenStatus = { uid: 'u1', resourceVersion: '12', status: S1 };
    for (const rv of ['12', '13', '100']) {
      const cached = obj(rv, { warm: '1/1' });
      const { cr, keep } = withWrittenStatus(cached, written);
      assert.equal(cr, cached, `cache at ${rv}`);
      assert.equal(keep, false);
    }
  });

  test('non-numeric versions: only equality means caught up', () => {
    const written: WrittenStatus = { uid: 'u1', resourceVersion: 'b', status: S1 };
    assert.equal(withWrittenStatus(obj('a', S0), written).keep, true);
    assert.deepEqual(withWrittenStatus(obj('a', S0), written).cr.status, S1);
    assert.equal(withWrittenStatus(obj('b', S1), written).keep, false);
  });

  test('a recreated object (other uid) or no version from the server: the cache', () => {
    const cached = obj('5', S0, 'u2');
    assert.equal(withWrittenStatus(cached, { uid: 'u1', resourceVersion: '12', status: S1 }).cr, cached);
    const same = obj('5', S0);
    const r = withWrittenStatus(same, { uid: 'u1', resourceVersion: undefined, status: S1 });
    assert.equal(r.cr, same);
    assert.equal(r.keep, false);
    assert.equal(withWrittenStatus(same, undefined).cr, same);
  });
});
