/**
 * The range-response check (agent/src/fetch/range-response.ts) with plain objects: how the
 * fetcher reads a registry's answer to one ranged request.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseContentRange, rangeResponseKind } from '../../agent/src/fetch/range-response.js';
import type { Digest } from '../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';

const digest = `sha256:${'a'.repeat(64)}` as Digest;
const size = 1000;
const range = { start: 100, end: 200 };

function kind(statusCode: number, contentRange: string | undefined, r = range) {
  return rangeResponseKind({ statusCode, contentRange }, r, size, digest);
}

describe('range responses', () => {
  it('parseContentRange: satisfied ranges only', () => {
    assert.deepEqual(parseContentRange('bytes 100-199/1000'), { start: 100, end: 199, total: 1000 });
    assert.deepEqual(parseContentRange('bytes 0-0/*'), { start: 0, end: 0, total: undefined });
    assert.equal(parseContentRange('bytes */1000'), undefined, 'the 416 form names no bytes');
    assert.equal(parseContentRange(undefined), undefined);
    assert.equal(parseContentRange(''), undefined);
    assert.equal(parseContentRange('bytes 100-199'), undefined);
    assert.equal(parseContentRange('items 100-199/1000'), undefined);
    assert.equal(parseContentRange(' bytes 100-199/1000'), undefined);
  });

  it('a 206 with the requested bytes and the right total is read as the range', () => {
    assert.equal(kind(206, 'bytes 100-199/1000'), 'range');
  });

  it('a 206 with an unknown total (`/*`) is accepted', () => {
    assert.equal(kind(206, 'bytes 100-199/*'), 'range');
  });

  it('a 200 to a partial request means the server ignored Range: the whole blob, one stream', () => {
    assert.equal(kind(200, undefined), 'whole');
    assert.equal(kind(200, 'bytes 100-199/1000'), 'whole', 'a 200 is the whole body whatever it says');
  });

  it('a 200 to a request for the whole blob is just the range', () => {
    assert.equal(kind(200, undefined, { start: 0, end: size }), 'range');
  });

  it('a 206 without Content-Range, or with `*/total`, is a retryable registry error', () => {
    for (const cr of [undefined, 'bytes */1000', 'garbage']) {
      assert.throws(
        () => kind(206, cr),
        (e) =>
          isPrewarmError(e, ErrorCodes.REGISTRY_ERROR) &&
          e.retryable &&
          e.message === `blob ${digest}: bad Content-Range ${cr}`,
        String(cr),
      );
    }
  });

  it('a 206 naming other bytes (start or end) is a retryable registry error', () => {
    for (const cr of ['bytes 101-199/1000', 'bytes 100-198/1000', 'bytes 100-200/1000', 'bytes 0-999/1000']) {
      assert.throws(
        () => kind(206, cr),
        (e) => isPrewarmError(e, ErrorCodes.REGISTRY_ERROR) && e.retryable,
        cr,
      );
    }
  });

  it('a 206 naming another total is a size mismatch, not retried', () => {
    assert.throws(
      () => kind(206, 'bytes 100-199/1001'),
      (e) =>
        isPrewarmError(e, ErrorCodes.SIZE_MISMATCH) &&
        !e.retryable &&
        e.message === `blob ${digest}: registry says 1001 bytes, descriptor 1000`,
    );
  });
});
