/**
 * The job-failure wire format, one format/parse pair shared by the agent (which writes
 * `failedReason`) and the operator (which reads it into the status).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { JobFailure } from '../../agent/src/daemon/job-processor.js';
import { formatFailure, parseFailure } from '../../oci/src/job-contract.js';
import { splitFailure } from '../../operator/src/reconcile/plan.js';

describe('job failure reasons', () => {
  test('parse inverts format, multi-line messages included', () => {
    for (const [code, message] of [
      ['PW_ERR_DISK_FULL', 'not enough room within the store budget (need 134217728 B, have 53687091 B)'],
      ['PW_ERR_AUTH_DENIED', 'registry answered 401\nsecond line: with a colon'],
      ['PW_ERR_NETWORK', ''],
    ] as const) {
      assert.deepEqual(parseFailure(formatFailure(code, message)), { code, message });
    }
    assert.equal(parseFailure('Error: something else'), undefined);
    assert.equal(parseFailure('pw_err_lower: no'), undefined);
  });

  test('the agent writes and the operator reads the same format', () => {
    const f = new JobFailure('PW_ERR_DISK_FULL', 'no room: 1 B left', true);
    assert.equal(f.message, 'PW_ERR_DISK_FULL: no room: 1 B left');
    assert.equal(f.detail, 'no room: 1 B left');
    assert.deepEqual(splitFailure(f.message), { reason: 'PW_ERR_DISK_FULL', message: 'no room: 1 B left' });
    assert.deepEqual(splitFailure('stalled job'), { reason: 'JobFailed', message: 'stalled job' });
    assert.deepEqual(splitFailure(undefined), { reason: 'JobFailed', message: 'unknown failure' });
  });
});
