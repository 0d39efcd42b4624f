import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isDigest, parseDigest } from '../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';
import { formatReference, parseReference, registryEndpointHost } from '../../oci/src/reference.js';

const HEX = 'a'.repeat(64);

describe('parseReference', () => {
  it('normalises Docker Hub short names', () => {
    assert.deepEqual(parseReference('nginx'), {
      registry: 'docker.io',
      repository: 'library/nginx',
      tag: 'latest',
    });
    assert.deepEqual(parseReference('bitnami/redis:7'), {
      registry: 'docker.io',
      repository: 'bitnami/redis',
      tag: '7',
    });
    assert.equal(registryEndpointHost('docker.io'), 'registry-1.docker.io');
  });

  it('keeps registry hosts with ports, tags and digests', () => {
    const r = parseReference(`127.0.0.1:5000/team/app:v1.2@sha256:${HEX}`);
    assert.deepEqual(r, {
      registry: '127.0.0.1:5000',
      repository: 'team/app',
      tag: 'v1.2',
      digest: `sha256:${HEX}`,
    });
    assert.equal(formatReference(r), `127.0.0.1:5000/team/app:v1.2@sha256:${HEX}`);
    assert.deepEqual(parseReference('localhost/app'), {
      registry: 'localhost',
      repository: 'app',
      tag: 'latest',
    });
    assert.deepEqual(parseReference('ghcr.io/o/r/deep/name:tag'), {
      registry: 'ghcr.io',
      repository: 'o/r/deep/name',
      tag: 'tag',
    });
  });

  for (const bad of [
    '',
    'reg.io/UPPER:tag',
    'reg.io/../etc/passwd',
    'reg.io/a/../../b',
    'reg.io/a//b',
    'reg.io/a:',
    'reg.io/a:bad/tag',
    `reg.io/a@sha256:${'A'.repeat(64)}`,
    'reg.io/a@sha512:abcd',
    'reg.io/a@sha256:../../x',
    'reg.io/-a',
    'reg.io/a\u0000b',
    `reg.io/${'a'.repeat(300)}`,
  ]) {
    it(`rejects ${JSON.stringify(bad.slice(0, 40))} with PW_ERR_INVALID_REFERENCE`, () => {
      assert.throws(
        () => parseReference(bad),
        (e) => isPrewarmError(e, ErrorCodes.INVALID_REFERENCE),
      );
    });
  }
});

describe('digests', () => {
  it('accepts only sha256 with 64 lower-case hex digits', () => {
    assert.equal(parseDigest(`sha256:${HEX}`), `sha256:${HEX}`);
    for (const bad of [
      `sha256:${HEX.slice(1)}`,
      `sha256:${HEX}0`,
      `SHA256:${HEX}`,
      `sha256:${'g'.repeat(64)}`,
      `sha256:../${HEX}`,
    ]) {
      assert.equal(isDigest(bad), false, bad);
      assert.throws(
        () => parseDigest(bad),
        (e) => isPrewarmError(e, ErrorCodes.INVALID_DIGEST),
      );
    }
  });
});
