import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseChallenge, parseDockerConfig } from '../../oci/src/auth.js';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';
import { MAX_MANIFEST_BYTES, parseManifest, selectPlatform } from '../../oci/src/manifest.js';
import { MediaTypes } from '../../oci/src/media-types.js';
import { parseRetryAfter } from '../../oci/src/retry.js';

const d = (c: string) => `sha256:${c.repeat(64)}`;
const enc = (o: unknown) => Buffer.from(JSON.stringify(o));

const index = {
  schemaVersion: 2,
  mediaType: MediaTypes.OCI_INDEX,
  manifests: [
    {
      mediaType: MediaTypes.OCI_MANIFEST,
      digest: d('1'),
      size: 10,
      platform: { os: 'linux', architecture: 'amd64' },
    },
    {
      mediaType: MediaTypes.OCI_MANIFEST,
      digest: d('2'),
      size: 10,
      platform: { os: 'linux', architecture: 'arm', variant: 'v6' },
    },
    {
      mediaType: MediaTypes.OCI_MANIFEST,
      digest: d('3'),
      size: 10,
      platform: { os: 'linux', architecture: 'arm', variant: 'v7' },
    },
    {
      mediaType: MediaTypes.OCI_MANIFEST,
      digest: d('4'),
      size: 10,
      platform: { os: 'linux', architecture: 'arm64' },
    },
    {
      mediaType: MediaTypes.OCI_MANIFEST,
      digest: d('5'),
      size: 10,
      platform: { os: 'unknown', architecture: 'unknown' },
      annotations: { 'vnd.docker.reference.type': 'attestation-manifest' },
    },
  ],
};

describe('parseManifest', () => {
  it('parses an OCI index and chooses platforms, variants and skips attestations', () => {
    const m = parseManifest(enc(index));
    assert.equal(m.kind, 'index');
    if (m.kind !== 'index') return;
    assert.equal(selectPlatform(m, { os: 'linux', architecture: 'amd64' }).digest, d('1'));
    assert.equal(selectPlatform(m, { os: 'linux', architecture: 'arm', variant: 'v7' }).digest, d('3'));
    assert.equal(selectPlatform(m, { os: 'linux', architecture: 'arm64', variant: 'v8' }).digest, d('4'));
    assert.throws(
      () => selectPlatform(m, { os: 'linux', architecture: 's390x' }),
      (e) =>
        isPrewarmError(e, ErrorCodes.PLATFORM_NOT_FOUND) &&
        /linux\/amd64/.test(e.message) &&
        !/unknown/.test(e.message),
    );
  });

  it('parses a Docker schema 2 manifest using Content-Type when mediaType is absent', () => {
    const body = {
      schemaVersion: 2,
      config: { mediaType: MediaTypes.DOCKER_CONFIG, digest: d('c'), size: 5 },
      layers: [{ mediaType: MediaTypes.DOCKER_LAYER_GZIP, digest: d('e'), size: 7 }],
    };
    const m = parseManifest(enc(body), `${MediaTypes.DOCKER_MANIFEST}; charset=utf-8`);
    assert.equal(m.kind, 'manifest');
    assert.equal(m.mediaType, MediaTypes.DOCKER_MANIFEST);
  });

  it('rejects malformed, schema 1, oversize and bad-digest manifests with distinct codes', () => {
    const code = (bytes: Buffer, ct?: string) => {
      try {
        parseManifest(bytes, ct);
        return 'ok';
      } catch (e) {
        return isPrewarmError(e) ? e.code : 'other';
      }
    };
    assert.equal(code(Buffer.from('{not json')), ErrorCodes.MANIFEST_INVALID);
    assert.equal(code(enc({ schemaVersion: 1, fsLayers: [] })), ErrorCodes.UNSUPPORTED_MEDIA_TYPE);
    assert.equal(code(Buffer.alloc(MAX_MANIFEST_BYTES + 1, 32)), ErrorCodes.MANIFEST_TOO_LARGE);
    assert.equal(
      code(
        enc({
          schemaVersion: 2,
          mediaType: MediaTypes.OCI_MANIFEST,
          config: { mediaType: 'x', digest: 'sha256:../../etc', size: 1 },
          layers: [],
        }),
      ),
      ErrorCodes.MANIFEST_INVALID,
    );
    assert.equal(
      code(enc({ schemaVersion: 2, mediaType: 'application/x-unknown' })),
      ErrorCodes.UNSUPPORTED_MEDIA_TYPE,
    );
  });
});

describe('auth helpers', () => {
  it('parses bearer challenges with quoted commas', () => {
    const c = parseChallenge(
      'Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push"',
    );
    assert.deepEqual(c, {
      scheme: 'bearer',
      params: {
        realm: 'https://auth.example/token',
        service: 'reg.example',
        scope: 'repository:a/b:pull,push',
      },
    });
    assert.equal(parseChallenge('Basic realm="Registry"')?.scheme, 'basic');
    assert.equal(parseChallenge(undefined), undefined);
  });

  it('reads dockerconfigjson auth, username/password and identity tokens, normalising hosts', () => {
    const creds = parseDockerConfig(
      JSON.stringify({
        auths: {
          'https://index.docker.io/v1/': { auth: Buffer.from('hub:pa:ss').toString('base64') },
          'reg.example:5000': { username: 'u', password: 'p' },
          'acr.example': { identitytoken: 'refresh' },
        },
      }),
    );
    assert.deepEqual(creds.get('docker.io'), { username: 'hub', password: 'pa:ss' });
    assert.deepEqual(creds.get('reg.example:5000'), { username: 'u', password: 'p' });
    assert.equal(creds.get('acr.example')?.identityToken, 'refresh');
    assert.ok(!JSON.stringify(creds).includes('pa:ss'), 'credentials must not serialise');
    assert.throws(
      () => parseDockerConfig('{"nope":1}'),
      (e) => isPrewarmError(e, ErrorCodes.INVALID_CONFIG),
    );
  });

  it('reads Retry-After as seconds or HTTP date', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    const now = Date.parse('2026-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:05 GMT', now), 5000);
    assert.equal(parseRetryAfter('soon'), undefined);
  });
});
