/**
 * The mirror's pure parts: Range parsing (Go http.ServeContent semantics, as distribution
 * serves), request routing and validation (no path tricks), the listen address, and the
 * OCI error mapping. The HTTP behaviour against a real registry is in mirror-conformance.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseListen } from '../../agent/src/mirror/mirror.js';
import { MirrorHttpError, relayableChallenge, toMirrorHttpError } from '../../agent/src/mirror/oci-errors.js';
import { parseRange } from '../../agent/src/mirror/range.js';
import { parseMirrorPath, parseNamespace, parsePeerPath } from '../../agent/src/mirror/routes.js';
import { ErrorCodes, PrewarmError } from '../../oci/src/errors.js';

const D = `sha256:${'ab'.repeat(32)}`;

describe('parseRange', () => {
  const size = 1000;
  const cases: [string | undefined, ReturnType<typeof parseRange>][] = [
    [undefined, { kind: 'none' }],
    ['bytes=0-9', { kind: 'range', start: 0, end: 9 }],
    ['bytes=100-', { kind: 'range', start: 100, end: 999 }],
    ['bytes=-10', { kind: 'range', start: 990, end: 999 }],
    ['bytes=-5000', { kind: 'range', start: 0, end: 999 }],
    ['bytes=999-', { kind: 'range', start: 999, end: 999 }],
    ['bytes=900-5000', { kind: 'range', start: 900, end: 999 }],
    ['bytes=0-999', { kind: 'range', start: 0, end: 999 }],
    ['bytes=1000-', { kind: 'unsatisfiable' }],
    ['bytes=5000-6000', { kind: 'unsatisfiable' }],
    ['bytes=-0', { kind: 'unsatisfiable' }],
    ['bytes=5-2', { kind: 'invalid' }],
    ['bytes=abc', { kind: 'invalid' }],
    ['bytes=-', { kind: 'invalid' }],
    ['items=0-2', { kind: 'invalid' }],
    ['bytes=1-2-3', { kind: 'invalid' }],
    // Several ranges: answered with the whole blob (RFC 9110 allows ignoring Range).
    ['bytes=0-1,5-6', { kind: 'none' }],
    ['bytes=2000-,3000-', { kind: 'unsatisfiable' }],
    ['bytes=0-1,x', { kind: 'invalid' }],
  ];
  for (const [header, want] of cases) {
    test(`${header ?? '(none)'} → ${want.kind}`, () => assert.deepEqual(parseRange(header, size), want));
  }
  test('an empty blob satisfies no range', () => {
    assert.deepEqual(parseRange('bytes=0-', 0), { kind: 'unsatisfiable' });
    assert.deepEqual(parseRange('bytes=-1', 0), { kind: 'unsatisfiable' });
    assert.deepEqual(parseRange(undefined, 0), { kind: 'none' });
  });
});

describe('parseMirrorPath', () => {
  test('routes', () => {
    assert.deepEqual(parseMirrorPath('/v2/'), { kind: 'base' });
    assert.deepEqual(parseMirrorPath('/v2'), { kind: 'base' });
    assert.deepEqual(parseMirrorPath('/v2/library/nginx/manifests/1.27'), {
      kind: 'manifest',
      name: 'library/nginx',
      tag: '1.27',
    });
    assert.deepEqual(parseMirrorPath(`/v2/a/b/c/manifests/${D}`), {
      kind: 'manifest',
      name: 'a/b/c',
      digest: D,
    });
    assert.deepEqual(parseMirrorPath(`/v2/app/blobs/${D}`), { kind: 'blob', name: 'app', digest: D });
    // A repository may itself contain "manifests" or "blobs" as a component.
    assert.deepEqual(parseMirrorPath(`/v2/x/blobs/y/blobs/${D}`), {
      kind: 'blob',
      name: 'x/blobs/y',
      digest: D,
    });
  });

  const refused: [string, number, string][] = [
    ['/v2/Demo/App/manifests/v1', 404, 'NAME_INVALID'],
    ['/v2/demo/../x/manifests/v1', 404, 'NAME_INVALID'],
    ['/v2/../../etc/manifests/v1', 404, 'NAME_INVALID'],
    ['/v2/demo/%2e%2e/x/manifests/v1', 404, 'NAME_INVALID'],
    ['/v2/demo/..%2fx/blobs/' + D, 404, 'NAME_INVALID'],
    ['/v2//app/manifests/v1', 404, 'NAME_INVALID'],
    ['/v2/app/manifests/bad$tag', 404, 'TAG_INVALID'],
    ['/v2/app/manifests/sha256:zzz', 400, 'DIGEST_INVALID'],
    ['/v2/app/blobs/sha256:zzz', 400, 'DIGEST_INVALID'],
    [`/v2/app/blobs/sha256:${'A'.repeat(64)}`, 400, 'DIGEST_INVALID'],
    ['/v2/app/blobs/md5:abc', 400, 'DIGEST_INVALID'],
    ['/v2/app/blobs/latest', 404, 'UNSUPPORTED'],
    ['/v2/app/tags/list', 404, 'UNSUPPORTED'],
    ['/v2/_catalog', 404, 'UNSUPPORTED'],
    ['/foo', 404, 'UNSUPPORTED'],
  ];
  for (const [path, status, code] of refused) {
    test(`refuses ${path} with ${status} ${code}`, () => {
      assert.throws(
        () => parseMirrorPath(path),
        (e: unknown) => e instanceof MirrorHttpError && e.status === status && e.ociCode === code,
      );
    });
  }

  test('ns must be a registry host', () => {
    assert.equal(parseNamespace(new URLSearchParams('ns=docker.io')), 'docker.io');
    assert.equal(parseNamespace(new URLSearchParams('ns=127.0.0.1:5000')), '127.0.0.1:5000');
    assert.equal(parseNamespace(new URLSearchParams('')), undefined);
    for (const bad of ['../x', 'a/b', 'host:99999999', 'a b'])
      assert.throws(() => parseNamespace(new URLSearchParams({ ns: bad })), MirrorHttpError);
  });
});

test('parseListen', () => {
  assert.deepEqual(parseListen('127.0.0.1:5055'), { host: '127.0.0.1', port: 5055 });
  assert.deepEqual(parseListen('0.0.0.0:0'), { host: '0.0.0.0', port: 0 });
  assert.deepEqual(parseListen('[::1]:80'), { host: '::1', port: 80 });
  for (const bad of ['127.0.0.1', ':80', '1.2.3.4:70000', 'a:b'])
    assert.throws(
      () => parseListen(bad),
      (e: unknown) => e instanceof PrewarmError && e.code === ErrorCodes.INVALID_CONFIG,
    );
});

test('errors map to OCI codes with fixed messages: nothing the upstream said is echoed', () => {
  const upstreamText = 'GET http://10.0.0.7:8080/v2/x: registry answered 500 (secret internal banner)';
  const map = (code: (typeof ErrorCodes)[keyof typeof ErrorCodes]) => {
    const e = toMirrorHttpError(new PrewarmError(code, upstreamText));
    assert.doesNotMatch(e.message, /10\.0\.0\.7|banner|500/, `${code}: message echoes the upstream`);
    assert.doesNotMatch(JSON.stringify(e.detail ?? {}), /10\.0\.0\.7|banner/);
    return [e.status, e.ociCode];
  };
  assert.deepEqual(map(ErrorCodes.BLOB_UNKNOWN), [404, 'BLOB_UNKNOWN']);
  assert.deepEqual(map(ErrorCodes.MANIFEST_UNKNOWN), [404, 'MANIFEST_UNKNOWN']);
  assert.deepEqual(map(ErrorCodes.INVALID_DIGEST), [400, 'DIGEST_INVALID']);
  assert.deepEqual(map(ErrorCodes.EGRESS_DENIED), [404, 'NAME_UNKNOWN']);
  assert.deepEqual(map(ErrorCodes.NETWORK), [503, 'UNAVAILABLE']);
  assert.deepEqual(map(ErrorCodes.REGISTRY_ERROR), [503, 'UNAVAILABLE']);
  assert.deepEqual(map(ErrorCodes.AUTH_FAILED), [503, 'UNAVAILABLE']);
  assert.deepEqual(map(ErrorCodes.DIGEST_MISMATCH), [502, 'UNKNOWN']);
  assert.deepEqual([toMirrorHttpError(new Error('boom')).status], [500]);
});

test('an upstream 401/403 is passed on, 401 with a re-serialised challenge', () => {
  const challenge =
    'Bearer realm="https://auth.example.com/token",service="reg",scope="repository:a/b:pull",error="invalid_token"';
  const e401 = toMirrorHttpError(
    new PrewarmError(ErrorCodes.AUTH_DENIED, 'x', { status: 401, detail: { challenge } }),
  );
  assert.deepEqual([e401.status, e401.ociCode], [401, 'UNAUTHORIZED']);
  assert.equal(
    e401.headers['WWW-Authenticate'],
    'Bearer realm="https://auth.example.com/token",service="reg",scope="repository:a/b:pull"',
  );
  const e403 = toMirrorHttpError(new PrewarmError(ErrorCodes.AUTH_DENIED, 'x', { status: 403 }));
  assert.deepEqual([e403.status, e403.ociCode], [403, 'DENIED']);
  assert.equal(relayableChallenge('Basic realm="kube-prewarm-test"'), 'Basic realm="kube-prewarm-test"');
  for (const bad of [
    'Bearer realm="file:///etc/passwd"',
    'Bearer service="x"',
    'Negotiate abc',
    'Bearer realm="https://a/\r\nSet-Cookie: x"',
    undefined,
  ])
    assert.equal(relayableChallenge(bad), undefined, String(bad));
});

test('parsePeerPath: blobs by digest only', () => {
  assert.equal(parsePeerPath(`/peer/v1/blobs/${D}`), D);
  for (const [path, status] of [
    [`/v2/app/blobs/${D}`, 404],
    [`/v2/app/manifests/${D}`, 404],
    ['/peer/v1/blobs/sha256:zz', 400],
    [`/peer/v1/blobs/${D}/x`, 404],
    ['/v2/', 404],
  ] as const)
    assert.throws(
      () => parsePeerPath(path),
      (e: unknown) => e instanceof MirrorHttpError && e.status === status,
      path,
    );
});
