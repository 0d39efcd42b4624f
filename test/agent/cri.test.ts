/**
 * The CRI ImageService client (our own minimal proto) and `unpackImage` against a real
 * containerd's CRI plugin: version, pull by digest, status, list, remove, error codes;
 * unpack's tag handling when the tag moved; the start-up check on the real daemon; and a
 * `_default` hosts.toml routing a registry with no entry of its own through the mirror.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { BlobFetcher } from '../../agent/src/fetch/blob-fetcher.js';
import { Mirror } from '../../agent/src/mirror/mirror.js';
import { checkContainerd } from '../../agent/src/runtime/containerd-check.js';
import { CriImageService } from '../../agent/src/runtime/cri-image-service.js';
import { HostsTomlInstaller } from '../../agent/src/runtime/hosts-installer.js';
import { unpackImage } from '../../agent/src/runtime/unpack.js';
import { FsBlobStore } from '../../agent/src/store/fs-store.js';
import { RegistryClient } from '../../oci/src/client.js';
import type { Digest } from '../../oci/src/digest.js';
import { ErrorCodes, PrewarmError } from '../../oci/src/errors.js';
import { type ContainerdHandle, startContainerd } from '../harness/containerd.js';
import {
  Cleanup,
  type FaultProxyHandle,
  makeTempDir,
  pushImage,
  type RegistryHandle,
  startFaultProxy,
} from '../harness/index.js';
import { startTestRegistry } from './fixtures.js';

const MiB = 1024 * 1024;
const cleanup = new Cleanup();
after(() => cleanup.run());

let registry: RegistryHandle;
let containerd: ContainerdHandle;
let cri: CriImageService;
let installer: HostsTomlInstaller;

const code = (c: (typeof ErrorCodes)[keyof typeof ErrorCodes]) => (e: unknown) =>
  e instanceof PrewarmError && e.code === c;

before(async () => {
  registry = await startTestRegistry(cleanup);
  containerd = await startContainerd();
  cleanup.defer(() => containerd.close());
  cri = new CriImageService({ address: containerd.address });
  cleanup.defer(() => cri.close());
  installer = new HostsTomlInstaller({ configPath: containerd.certsDir, fsync: false });
  // No mirror here: the registry itself is the only host (plain HTTP on loopback).
  await installer.install([{ registry: registry.host, server: registry.url, mirrors: [registry.url] }]);
});

test('Version names containerd and CRI v1; the start-up check finds our config_path and no transfer service', async () => {
  const v = await cri.version();
  assert.equal(v.runtimeName, 'containerd');
  assert.equal(v.runtimeApiVersion, 'v1');
  assert.match(v.runtimeVersion, /^v?1\.\d+/);
  const check = checkContainerd(v, {
    configText: await readFile(containerd.configPath, 'utf8'),
    hostsDir: containerd.certsDir,
  });
  assert.equal(check.status, 'ok', check.problems.join('; '));
  assert.equal(check.transferService, false);
  assert.equal(check.criConfigPath, containerd.certsDir);
});

test('PullImage by digest, ImageStatus, ListImages, RemoveImage', async () => {
  const img = await pushImage(registry, {
    repository: 'cri/app',
    tag: 'v1',
    layers: [{ files: { 'bin/app': '#!/bin/sh\necho hi\n' } }, { randomBytes: MiB, seed: 7 }],
  });
  const ref = img.digestRef;
  assert.equal(await cri.imageStatus(ref), undefined, 'absent is not an error');
  const id = await cri.pullImage(ref);
  assert.equal(id, img.manifests[0]!.config.digest);
  const status = await cri.imageStatus(ref);
  assert.equal(status?.id, id);
  assert.ok(status?.repoDigests.includes(ref), `repoDigests ${status?.repoDigests}`);
  assert.ok((status?.size ?? 0) >= MiB);
  assert.ok((await cri.listImages()).some((i) => i.id === id));
  assert.deepEqual(
    (await cri.listImages(ref)).map((i) => i.id),
    [id],
  );
  await cri.removeImage(ref);
  assert.equal(await cri.imageStatus(ref), undefined);
  await cri.removeImage(ref); // absent: still fine
});

test('errors carry stable codes', async () => {
  await assert.rejects(cri.pullImage(`${registry.host}/cri/none:v1`), code(ErrorCodes.MANIFEST_UNKNOWN));
  const aborted = AbortSignal.abort();
  await assert.rejects(cri.imageStatus('x', { signal: aborted }), code(ErrorCodes.ABORTED));
  const nowhere = new CriImageService({
    address: join(containerd.dir, 'no-such.sock'),
    callTimeoutMs: 1_000,
  });
  try {
    await assert.rejects(nowhere.version(), code(ErrorCodes.NETWORK));
  } finally {
    nowhere.close();
  }
});

test('unpackImage: by digest, then the tag; reports a tag that moved upstream', async () => {
  const v1 = await pushImage(registry, {
    repository: 'cri/moving',
    tag: 'v1',
    layers: [{ randomBytes: 4096, seed: 8 }],
  });
  const repository = `${registry.host}/cri/moving`;
  const first = await unpackImage(cri, { repository, digest: v1.digest as Digest, tag: 'v1' });
  assert.equal(first.imageId, v1.manifests[0]!.config.digest);
  assert.equal(first.tagMatches, true);
  // The tag moves upstream and the runtime learns of it (a plain pull of the tag).
  const v2 = await pushImage(registry, {
    repository: 'cri/moving',
    tag: 'v1',
    layers: [{ randomBytes: 4096, seed: 9 }],
  });
  assert.notEqual(v2.digest, v1.digest);
  const newer = await cri.pullImage(`${repository}:v1`);
  assert.equal(newer, v2.manifests[0]!.config.digest);
  // Unpacking the warmed digest still imports exactly that image, and says the tag is elsewhere.
  const again = await unpackImage(
    cri,
    { repository, digest: v1.digest as Digest, tag: 'v1' },
    { force: true },
  );
  assert.equal(again.imageId, first.imageId);
  assert.equal(again.alreadyPresent, false);
  assert.equal(again.tagMatches, false, 'the tag now names the newer image');
  await assert.rejects(
    unpackImage(cri, { repository, digest: 'sha256:nope' as Digest }),
    code(ErrorCodes.INVALID_DIGEST),
  );
  await assert.rejects(
    unpackImage(cri, { repository: 'Bad Repo', digest: v1.digest as Digest }),
    code(ErrorCodes.INVALID_REFERENCE),
  );
});

test('a _default hosts.toml sends a registry without its own entry through the mirror (?ns= names it)', async () => {
  let proxy: FaultProxyHandle | undefined;
  const dir = await makeTempDir('cri-store', cleanup);
  const store = await new FsBlobStore(dir, { fsync: false }).init();
  const client = new RegistryClient({ retry: { attempts: 2 } });
  const fetcher = new BlobFetcher(store);
  const mirror = new Mirror({ store, fetcher, client }, { listen: '127.0.0.1:0' });
  try {
    proxy = await startFaultProxy({ upstream: registry });
    const img = await pushImage(registry, {
      repository: 'cri/default',
      tag: 'v1',
      layers: [{ randomBytes: MiB, seed: 10 }],
    });
    await mirror.start();
    await installer.install([{ registry: '_default', mirrors: [mirror.url] }]);
    // The mirror fetches the miss through the proxy and stores it while containerd pulls.
    const id = await cri.pullImage(`${proxy.host}/cri/default:v1`);
    assert.equal(id, img.manifests[0]!.config.digest);
    assert.ok(mirror.stats.blobMisses >= 2, 'blobs went through the mirror');
    const layer = img.manifests[0]!.layers[0]!;
    assert.equal((await store.stat(layer.digest as Digest))?.size, layer.size, 'and are in the store now');
    assert.equal(proxy.stats.bytesSent.get(`/v2/cri/default/blobs/${layer.digest}`), layer.size);
  } finally {
    await installer.uninstall(['_default']);
    await mirror.close();
    await fetcher.close();
    await client.close();
    await proxy?.stop();
  }
});
