import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { RegistryClient } from '../../oci/src/client.js';
import type { Digest } from '../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';
import { parseReference } from '../../oci/src/reference.js';
import {
  Cleanup,
  type FaultProxyHandle,
  makeTempDir,
  type PushedImage,
  pushImage,
  type RegistryHandle,
  startTokenServer,
} from '../harness/index.js';
import { assertStored, warmImage } from './fetch-helpers.js';
import { startProxiedRegistry, startTestRegistry } from './fixtures.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

const MiB = 1024 * 1024;
const amd64 = { os: 'linux', architecture: 'amd64' } as const;
const arm64 = { os: 'linux', architecture: 'arm64' } as const;

function allBlobs(img: PushedImage, i = 0): string[] {
  const m = img.manifests[i]!;
  return [m.config.digest, ...m.layers.map((l) => l.digest)];
}

function layerPath(img: PushedImage, digest: string): RegExp {
  return new RegExp(`/v2/${img.repository}/blobs/${digest}$`);
}

describe('fetcher against a real registry (anonymous)', () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let oci: PushedImage;
  before(async () => {
    ({ registry, proxy } = await startProxiedRegistry(cleanup));
    oci = await pushImage(registry, {
      repository: 'kp/oci',
      tag: 'v1',
      layers: [
        { files: { 'etc/hello.txt': 'hello\n' } },
        { randomBytes: 24 * MiB, seed: 1 },
        { files: { 'app/run.sh': '#!/bin/sh\n' } },
      ],
    });
  });

  it('warms a multi-layer OCI image: every blob verified, manifests and image record stored', async () => {
    const dir = await makeTempDir('store', cleanup);
    const { result, store } = await warmImage(oci.ref, dir);
    assert.equal(result.record.manifestDigest, oci.digest);
    assert.deepEqual(result.record.blobs, allBlobs(oci));
    await assertStored(store, [...allBlobs(oci), oci.digest]);
    assert.equal(result.bytesFromRegistry, result.bytesTotal);
    const rec = await store.getImage(`${registry.host}/kp/oci`, 'v1', 'linux/amd64');
    assert.equal(rec?.digest, oci.digest);
    assert.deepEqual(await readdir(join(dir, 'ingest')), [], 'no partial downloads left');

    const again = await warmImage(oci.ref, dir);
    assert.equal(again.result.bytesFromRegistry, 0, 'a second warm fetches nothing');
    assert.equal(again.result.bytesAlreadyPresent, again.result.bytesTotal);
  });

  it('resolves a tag to its digest with HEAD', async () => {
    proxy.resetStats();
    const client = new RegistryClient();
    try {
      const r = await client.resolve(parseReference(`${proxy.host}/kp/oci:v1`));
      assert.equal(r.digest, oci.digest);
      assert.equal(proxy.count(/\/manifests\/v1$/, 'HEAD'), 1);
      assert.equal(proxy.count(/\/manifests\//, 'GET'), 0);
      const byDigest = await client.resolve(parseReference(`${proxy.host}/kp/oci@${oci.digest}`));
      assert.equal(byDigest.digest, oci.digest);
    } finally {
      await client.close();
    }
  });

  it('picks the node platform from a multi-arch OCI index and skips attestations', async () => {
    const img = await pushImage(registry, {
      repository: 'kp/multi',
      tag: 'v1',
      platforms: [amd64, arm64],
      attestation: true,
      layers: (p) => [
        { files: { 'arch.txt': p.architecture } },
        { randomBytes: 2 * MiB, seed: p.architecture === 'amd64' ? 2 : 3 },
      ],
    });
    assert.ok(img.isIndex && img.attestations.length > 0);
    const armIndex = img.manifests.findIndex((m) => m.platform.architecture === 'arm64');
    const dir = await makeTempDir('store', cleanup);
    const { result, store } = await warmImage(img.ref, dir, { platform: arm64 });
    assert.equal(result.record.digest, img.digest);
    assert.equal(result.record.manifestDigest, img.manifests[armIndex]!.digest);
    await assertStored(store, [img.digest, ...allBlobs(img, armIndex)]);
    for (const a of img.attestations)
      for (const l of a.layers) assert.equal(await store.stat(l.digest as Digest), undefined);
    const amdLayer = img.manifests[1 - armIndex]!.layers[1]!.digest as Digest;
    assert.equal(await store.stat(amdLayer), undefined, 'other platforms are not fetched');

    await assert.rejects(
      warmImage(img.ref, await makeTempDir('store', cleanup), {
        platform: { os: 'linux', architecture: 's390x' },
      }),
      (e) => isPrewarmError(e, ErrorCodes.PLATFORM_NOT_FOUND),
    );
  });

  it('warms Docker schema 2 images and manifest lists', async () => {
    const single = await pushImage(registry, {
      repository: 'kp/docker',
      tag: 'single',
      mediaTypes: 'docker',
      layers: [{ files: { 'a.txt': 'a' } }, { randomBytes: 3 * MiB, seed: 4 }],
    });
    assert.equal(single.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    const list = await pushImage(registry, {
      repository: 'kp/docker',
      tag: 'list',
      mediaTypes: 'docker',
      platforms: [amd64, arm64],
      layers: (p) => [{ files: { 'p.txt': p.architecture } }],
    });
    assert.equal(list.mediaType, 'application/vnd.docker.distribution.manifest.list.v2+json');
    for (const img of [single, list]) {
      const dir = await makeTempDir('store', cleanup);
      const { result, store } = await warmImage(img.ref, dir);
      const i = img.manifests.findIndex((m) => m.platform.architecture === 'amd64');
      assert.equal(result.record.manifestDigest, img.manifests[i]!.digest);
      await assertStored(store, allBlobs(img, i));
    }
  });

  it('reports an unknown tag and an unknown repository as PW_ERR_MANIFEST_UNKNOWN', async () => {
    for (const ref of [`${registry.host}/kp/oci:nope`, `${registry.host}/kp/missing:v1`]) {
      await assert.rejects(warmImage(ref, await makeTempDir('store', cleanup)), (e) =>
        isPrewarmError(e, ErrorCodes.MANIFEST_UNKNOWN),
      );
    }
  });

  it('falls back to one stream when the server ignores Range', async () => {
    proxy.rules.ignoreRange = true;
    try {
      const dir = await makeTempDir('store', cleanup);
      const { result, store } = await warmImage(`${proxy.host}/kp/oci:v1`, dir);
      await assertStored(store, allBlobs(oci));
      const big = result.blobs.find((b) => b.size > 20 * MiB);
      assert.equal(big?.ranged, false);
    } finally {
      proxy.rules.ignoreRange = false;
    }
  });

  it('retries 429 and 503 honouring Retry-After, then succeeds', async () => {
    proxy.resetStats();
    const big = oci.manifests[0]!.layers[1]!.digest;
    proxy.rules.fail = [
      { path: layerPath(oci, big), status: 429, retryAfterSeconds: 1, times: 2 },
      { path: /\/manifests\//, method: 'GET', status: 503, retryAfterSeconds: 1, times: 1 },
      { path: layerPath(oci, big), status: 503, times: 2 },
    ];
    try {
      const { store } = await warmImage(`${proxy.host}/kp/oci:v1`, await makeTempDir('store', cleanup));
      await assertStored(store, allBlobs(oci));
      assert.deepEqual(
        proxy.rules.fail.map((r) => r.hits),
        [2, 1, 2],
      );
    } finally {
      proxy.rules.fail = [];
    }
  });

  it('follows blob redirects without sending Authorization to the other origin', async () => {
    const { registry: auth, proxy: p } = await startProxiedRegistry(cleanup, {
      auth: { htpasswd: { username: 'alice', password: 's3cret' } },
    });
    const img = await pushImage(auth, {
      repository: 'kp/redir',
      tag: 'v1',
      layers: [{ randomBytes: 6 * MiB, seed: 5 }],
    });
    p.rules.redirectBlobsTo = p.blobStorage.url;
    const { store } = await warmImage(`${p.host}/kp/redir:v1`, await makeTempDir('store', cleanup), {
      creds: { host: p.host, username: 'alice', password: 's3cret' },
    });
    await assertStored(store, allBlobs(img));
    const redirected = p.blobStorage.requests.filter((r) => r.method === 'GET');
    assert.ok(redirected.length >= 2, `blob storage served ${redirected.length} requests`);
    for (const r of redirected)
      assert.equal(r.headers.authorization, undefined, `Authorization leaked to ${r.url}`);
    assert.ok(p.stats.log.some((e) => e.fault === 'redirect'));
  });

  it('fails a blob corrupted in the registry with a digest error and leaves nothing under its name', async () => {
    const img = await pushImage(registry, {
      repository: 'kp/corrupt',
      tag: 'v1',
      layers: [{ randomBytes: 5 * MiB, seed: 6 }],
    });
    const layer = img.manifests[0]!.layers[0]!.digest as Digest;
    const fh = await open(registry.blobDataPath(layer), 'r+');
    try {
      await fh.write(Buffer.from([0xff, 0x00, 0xff]), 0, 3, 3 * MiB);
    } finally {
      await fh.close();
    }
    const dir = await makeTempDir('store', cleanup);
    await assert.rejects(warmImage(img.ref, dir), (e) => isPrewarmError(e, ErrorCodes.DIGEST_MISMATCH));
    assert.equal(existsSync(join(dir, 'blobs', 'sha256', layer.slice(7))), false);
    assert.equal(existsSync(join(dir, 'ingest', layer.slice(7))), false, 'the bad partial is discarded');
  });

  it('resumes after the registry dies mid-download, fetching only the missing ranges', async () => {
    const { registry: reg, proxy: p } = await startProxiedRegistry(cleanup);
    const size = 64 * MiB;
    const img = await pushImage(reg, {
      repository: 'kp/resume',
      tag: 'v1',
      layers: [{ randomBytes: size, seed: 7 }],
    });
    const layer = img.manifests[0]!.layers[0]!;
    p.resetStats();
    let killed: Promise<void> | undefined;
    const dir = await makeTempDir('store', cleanup);
    const warm = warmImage(`${p.host}/kp/resume:v1`, dir, {
      fetcher: { bandwidthBytesPerSec: 32 * MiB, retry: { attempts: 30, baseDelayMs: 50, maxDelayMs: 500 } },
      onProgress: (pr) => {
        if (!killed && pr.bytesDone > size * 0.4) {
          killed = (async () => {
            await reg.kill();
            await sleep(1000);
            await reg.start();
          })();
        }
      },
    });
    const { result, store } = await warm;
    await killed;
    assert.ok(killed, 'the registry was killed mid-download');
    await assertStored(store, allBlobs(img));
    const served = p.bytes(layerPath(img, layer.digest));
    // Restarting from zero would need ≥ 1.4× the layer; resuming needs the layer once plus
    // whatever was in flight in socket buffers when the registry died.
    assert.ok(served < size * 1.15, `proxy served ${served} bytes for a ${size}-byte layer`);
    assert.equal(result.blobs[1]!.bytesFromRegistry, layer.size, 'each byte written once');
  });
});

describe('fetcher with registry auth', () => {
  it('uses basic auth from credentials and rejects missing or wrong ones with PW_ERR_AUTH_DENIED', async () => {
    const reg = await startTestRegistry(cleanup, {
      auth: { htpasswd: { username: 'bob', password: 'pw-basic' } },
    });
    const img = await pushImage(reg, {
      repository: 'kp/basic',
      tag: 'v1',
      layers: [{ randomBytes: 3 * MiB, seed: 8 }],
    });
    const { store } = await warmImage(img.ref, await makeTempDir('store', cleanup), {
      creds: { host: reg.host, username: 'bob', password: 'pw-basic' },
    });
    await assertStored(store, allBlobs(img));
    await assert.rejects(warmImage(img.ref, await makeTempDir('store', cleanup)), (e) =>
      isPrewarmError(e, ErrorCodes.AUTH_DENIED),
    );
    await assert.rejects(
      warmImage(img.ref, await makeTempDir('store', cleanup), {
        creds: { host: reg.host, username: 'bob', password: 'wrong' },
      }),
      (e) => isPrewarmError(e, ErrorCodes.AUTH_DENIED),
    );
  });

  it('uses bearer tokens from the token server, one token per repository scope', async () => {
    const token = await startTokenServer({
      users: { pusher: { password: 'push-pw', actions: ['pull', 'push'] }, reader: { password: 'read-pw' } },
    });
    cleanup.defer(() => token.stop());
    const reg = await startTestRegistry(cleanup, { auth: { token } });
    const img = await pushImage(reg, {
      repository: 'kp/token',
      tag: 'v1',
      layers: [{ randomBytes: 12 * MiB, seed: 9 }],
      creds: { username: 'pusher', password: 'push-pw' },
    });
    const before = token.log.length;
    const { store } = await warmImage(img.ref, await makeTempDir('store', cleanup), {
      creds: { host: reg.host, username: 'reader', password: 'read-pw' },
    });
    await assertStored(store, allBlobs(img));
    const issued = token.log.slice(before).filter((r) => r.status === 200);
    assert.equal(issued.length, 1, 'one token serves every chunk request of the repository');
    assert.equal(issued[0]!.account, 'reader');
    await assert.rejects(
      warmImage(img.ref, await makeTempDir('store', cleanup), {
        creds: { host: reg.host, username: 'reader', password: 'nope' },
      }),
      (e) => isPrewarmError(e, ErrorCodes.AUTH_DENIED),
    );
    await assert.rejects(warmImage(img.ref, await makeTempDir('store', cleanup)), (e) =>
      isPrewarmError(e, ErrorCodes.AUTH_DENIED),
    );
  });
});
