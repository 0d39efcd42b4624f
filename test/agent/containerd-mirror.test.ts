/**
 * The node mirror with a real containerd (private instance, CRI plugin, `config_path`
 * holding the hosts.toml our installer writes) and the real registry behind a counting
 * proxy (`bytesSent` per path = what the registry served):
 * - cache mode: warm, stop the registry, `ctr images pull --hosts-dir` and CRI PullImage
 *   both succeed, served by the mirror;
 * - unpack mode: ImageStatus shows the image, a second PullImage moves no registry bytes;
 * - a CRI pull racing a half-done prewarm of a 512 MiB image joins it: every blob once;
 * - the mirror process killed: containerd falls back to the upstream.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BlobFetcher } from '../../agent/src/fetch/blob-fetcher.js';
import { ImageWarmer } from '../../agent/src/fetch/image-warmer.js';
import { Mirror } from '../../agent/src/mirror/mirror.js';
import { CriImageService } from '../../agent/src/runtime/cri-image-service.js';
import { HostsTomlInstaller } from '../../agent/src/runtime/hosts-installer.js';
import { unpackImage } from '../../agent/src/runtime/unpack.js';
import { FsBlobStore } from '../../agent/src/store/fs-store.js';
import { RegistryClient } from '../../oci/src/client.js';
import type { Digest } from '../../oci/src/digest.js';
import { parseReference } from '../../oci/src/reference.js';
import { type ContainerdHandle, startContainerd } from '../harness/containerd.js';
import {
  Cleanup,
  type FaultProxyHandle,
  freePort,
  makeTempDir,
  type PushedImage,
  pushImage,
  type RegistryHandle,
  spawnProcess,
  waitForHttp,
} from '../harness/index.js';
import { startProxiedRegistry } from './fixtures.js';

const MiB = 1024 * 1024;
const amd64 = { os: 'linux', architecture: 'amd64' };
const MAIN_TS = fileURLToPath(new URL('../../agent/src/cli/main.ts', import.meta.url));

const cleanup = new Cleanup();
after(() => cleanup.run());

let registry: RegistryHandle;
let proxy: FaultProxyHandle;
let containerd: ContainerdHandle;
let cri: CriImageService;
let store: FsBlobStore;
let storeDir: string;
let client: RegistryClient;
let fetcher: BlobFetcher;
let mirror: Mirror;
let warmer: ImageWarmer;
let installer: HostsTomlInstaller;

before(async () => {
  ({ registry, proxy } = await startProxiedRegistry(cleanup));
  containerd = await startContainerd();
  cleanup.defer(() => containerd.close());
  cri = new CriImageService({ address: containerd.address });
  cleanup.defer(() => cri.close());
  storeDir = await makeTempDir('ctrd-store', cleanup);
  store = await new FsBlobStore(storeDir, { fsync: false }).init();
  client = new RegistryClient({ retry: { attempts: 2, maxDelayMs: 200 } });
  cleanup.defer(() => client.close());
  // Capped, so that the 512 MiB prewarm is still running when the CRI pull comes: 16 s in
  // all, the pull starts at half, with 8 s to spare for containerd to reach the mirror.
  fetcher = new BlobFetcher(store, { bandwidthBytesPerSec: 32 * MiB });
  cleanup.defer(() => fetcher.close());
  mirror = new Mirror({ store, fetcher, client }, { listen: '127.0.0.1:0', deadlineMs: 10_000 });
  await mirror.start();
  cleanup.defer(() => mirror.close());
  warmer = new ImageWarmer(client, fetcher, store);
  installer = new HostsTomlInstaller({ configPath: containerd.certsDir, fsync: false });
  await installer.install([{ registry: proxy.host, server: proxy.url, mirrors: [mirror.url] }]);
});

async function push(repository: string, layers: Parameters<typeof pushImage>[1]['layers']) {
  return pushImage(registry, { repository, tag: 'v1', layers });
}

function warm(img: PushedImage, onProgress?: Parameters<ImageWarmer['warm']>[1]['onProgress']) {
  return warmer.warm(parseReference(`${proxy.host}/${img.repository}:${img.tag}`), {
    platform: amd64,
    ...(onProgress ? { onProgress } : {}),
  });
}

/** Registry body bytes sent for paths matching `re` since the last reset. */
function registryBytes(re: RegExp): number {
  return proxy.bytes(re);
}

test('cache mode: with the registry stopped, ctr pull --hosts-dir and CRI PullImage are served by the mirror', async () => {
  const img = await push('ctrd/cache', [
    { files: { 'etc/motd': 'from the node mirror\n' } },
    { randomBytes: 2 * MiB, seed: 1 },
  ]);
  await warm(img);
  const before = mirror.stats;
  await registry.stop();
  proxy.resetStats();
  try {
    const ref = `${proxy.host}/ctrd/cache:v1`;
    // ctr fetches client-side; its own namespace keeps its content apart from the CRI's.
    await containerd.ctr(['images', 'pull', '--hosts-dir', containerd.certsDir, ref], {
      namespace: 'ctrtest',
    });
    const listed = await containerd.ctr(['images', 'ls', '-q'], { namespace: 'ctrtest' });
    assert.match(listed.stdout, /ctrd\/cache:v1/);
    const imageId = await cri.pullImage(ref);
    assert.equal(imageId, img.manifests[0]!.config.digest);
    const status = await cri.imageStatus(ref);
    assert.equal(status?.id, imageId);
  } finally {
    await registry.start();
  }
  assert.equal(registryBytes(/\/blobs\//), 0, 'no blob bytes from the registry');
  const blobBytes = [img.manifests[0]!.config, ...img.manifests[0]!.layers].reduce((n, b) => n + b.size, 0);
  const after = mirror.stats;
  // Both pulls got every blob from the store.
  assert.ok(after.blobBytesFromStore - before.blobBytesFromStore >= 2 * blobBytes);
  assert.ok(after.tagFallbacks - before.tagFallbacks >= 2, 'tags answered from the store');
});

test('unpack mode: ImageStatus shows the image; a second PullImage moves no bytes from the registry', async () => {
  const img = await push('ctrd/unpack', [{ randomBytes: 3 * MiB, seed: 2 }]);
  const warmed = await warm(img);
  proxy.resetStats();
  const repository = `${proxy.host}/ctrd/unpack`;
  assert.equal(await cri.imageStatus(`${repository}:v1`), undefined);
  const r = await unpackImage(cri, { repository, digest: warmed.record.digest, tag: 'v1' });
  assert.equal(r.imageId, img.manifests[0]!.config.digest);
  assert.equal(r.alreadyPresent, false);
  assert.equal(r.tagMatches, true);
  assert.equal((await cri.imageStatus(`${repository}:v1`))?.id, r.imageId, 'kubelet finds the tag present');
  assert.equal((await cri.imageStatus(`${repository}@${img.digest}`))?.id, r.imageId);
  assert.equal(registryBytes(/\/blobs\//), 0, 'unpack took every blob from the mirror');
  // kubelet's pull of a present image: nothing from the registry.
  proxy.resetStats();
  assert.equal(await cri.pullImage(`${repository}:v1`), r.imageId);
  assert.equal(registryBytes(/./), 0, 'second PullImage: zero registry body bytes');
  assert.equal(proxy.count(/\/blobs\//), 0);
  // unpackImage again: already present, nothing pulled.
  const again = await unpackImage(cri, { repository, digest: warmed.record.digest });
  assert.equal(again.alreadyPresent, true);
});

test('race: a CRI pull of a 512 MiB image during its prewarm joins the download; each blob served once', async () => {
  const img = await push('ctrd/big', [{ randomBytes: 512 * MiB, seed: 3 }]);
  const m = img.manifests[0]!;
  proxy.resetStats();
  const joinedBefore = mirror.stats.blobDownloadsJoined;
  let half!: () => void;
  const halfDone = new Promise<void>((r) => {
    half = r;
  });
  const warming = warm(img, (p) => {
    if (p.bytesTotal > 0 && p.bytesDone >= p.bytesTotal / 2) half();
  });
  warming.catch(() => half());
  await halfDone;
  const ref = `${proxy.host}/ctrd/big@${img.digest}`;
  try {
    const [imageId] = await Promise.all([cri.pullImage(ref), warming]);
    assert.equal(imageId, m.config.digest);
    assert.equal((await cri.imageStatus(ref))?.id, imageId);
    for (const blob of [m.config, ...m.layers]) {
      assert.equal(
        proxy.stats.bytesSent.get(`/v2/ctrd/big/blobs/${blob.digest}`),
        blob.size,
        `registry served ${blob.digest} (${blob.size} bytes) exactly once`,
      );
    }
    assert.ok(mirror.stats.blobDownloadsJoined > joinedBefore, 'the pull joined the prewarm in flight');
  } finally {
    await cri.removeImage(ref).catch(() => undefined);
    await store.delete(m.layers[0]!.digest as Digest);
  }
});

test('mirror process killed: containerd falls back to the upstream', async () => {
  const port = await freePort();
  const logDir = await makeTempDir('serve-log', cleanup);
  const serve = await spawnProcess({
    name: 'kube-prewarm serve',
    command: process.execPath,
    args: [
      '--import',
      'tsx',
      '--input-type=module',
      '-e',
      `const { main } = await import(${JSON.stringify(MAIN_TS)}); process.exitCode = await main(process.argv.slice(1));`,
      'serve',
      '--store',
      storeDir,
      '--listen',
      `127.0.0.1:${port}`,
      // The test registry is on loopback: allowed explicitly (the default reaches public registries only).
      '--upstreams',
      proxy.host,
      '--no-fsync',
      '--log-level',
      'warn',
    ],
    logPath: `${logDir}/serve.log`,
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
  });
  cleanup.defer(async () => {
    await serve.kill();
  });
  await waitForHttp(`http://127.0.0.1:${port}/v2/`, { process: serve, ready: (s) => s === 200 });
  await installer.install([
    { registry: proxy.host, server: proxy.url, mirrors: [`http://127.0.0.1:${port}`] },
  ]);
  try {
    const first = await push('ctrd/served', [{ randomBytes: MiB, seed: 4 }]);
    const second = await push('ctrd/fallback', [{ randomBytes: MiB, seed: 5 }]);
    await warm(first);
    await warm(second);
    proxy.resetStats();
    await cri.pullImage(`${proxy.host}/ctrd/served:v1`);
    assert.equal(registryBytes(/\/blobs\//), 0, 'served by the mirror process while it runs');

    await serve.kill();
    proxy.resetStats();
    const id = await cri.pullImage(`${proxy.host}/ctrd/fallback:v1`);
    assert.equal(id, second.manifests[0]!.config.digest);
    const layer = second.manifests[0]!.layers[0]!;
    assert.equal(
      proxy.stats.bytesSent.get(`/v2/ctrd/fallback/blobs/${layer.digest}`),
      layer.size,
      'containerd fetched the layer from the upstream',
    );
  } finally {
    await installer.install([{ registry: proxy.host, server: proxy.url, mirrors: [mirror.url] }]);
  }
});
