/**
 * The node mirror over HTTP, against the real registry (distribution 2.8): the same
 * requests go to both and the answers are compared (status, the headers a client relies
 * on, body bytes, OCI error codes). Then what only the mirror does: tag fallback when the
 * upstream is down, a miss streamed through the fetcher, a pull joining a download in
 * flight (registry serves the blob once), content that fails verification never completing
 * a body, and a hung upstream answered 503 (records still served). The attacks the mirror
 * refuses are in mirror-security.test.ts.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { type IncomingHttpHeaders, request } from 'node:http';
import { createServer as createTcpServer, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { BlobFetcher } from '../../agent/src/fetch/blob-fetcher.js';
import { ImageWarmer } from '../../agent/src/fetch/image-warmer.js';
import { Mirror } from '../../agent/src/mirror/mirror.js';
import { FsBlobStore } from '../../agent/src/store/fs-store.js';
import { RegistryClient } from '../../oci/src/client.js';
import type { Digest } from '../../oci/src/digest.js';
import { parseReference } from '../../oci/src/reference.js';
import {
  ALL_MANIFEST_TYPES,
  Cleanup,
  type FaultProxyHandle,
  makeTempDir,
  type PushedImage,
  pushImage,
  type RegistryHandle,
} from '../harness/index.js';
import { startProxiedRegistry } from './fixtures.js';

const MiB = 1024 * 1024;
const amd64 = { os: 'linux', architecture: 'amd64' };
const arm64 = { os: 'linux', architecture: 'arm64', variant: 'v8' };
const UNKNOWN = `sha256:${'0'.repeat(64)}`;

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** Set when the connection broke before the body was complete. */
  error?: Error;
}

/** One raw HTTP request (node:http sends the path as given: no client-side normalisation). */
function raw(
  base: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, method, path, headers, agent: false }, (res) => {
      const parts: Buffer[] = [];
      const done = (error?: Error) =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(parts),
          ...(error ? { error } : {}),
        });
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => done());
      res.on('error', (e) => done(e));
      res.on('aborted', () => done(new Error('aborted')));
    });
    req.on('error', reject);
    req.end();
  });
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function ociCode(a: Answer): string | undefined {
  try {
    return (JSON.parse(a.body.toString('utf8')) as { errors?: { code?: string }[] }).errors?.[0]?.code;
  } catch {
    return undefined;
  }
}

const cleanup = new Cleanup();
after(() => cleanup.run());

let registry: RegistryHandle;
let proxy: FaultProxyHandle;
let store: FsBlobStore;
let client: RegistryClient;
let fetcher: BlobFetcher;
let mirror: Mirror;
let warmer: ImageWarmer;
let oci: PushedImage;
let docker: PushedImage;
let multi: PushedImage;

before(async () => {
  ({ registry, proxy } = await startProxiedRegistry(cleanup));
  const dir = await makeTempDir('mirror-store', cleanup);
  store = await new FsBlobStore(dir, { fsync: false }).init();
  client = new RegistryClient({ retry: { attempts: 2, maxDelayMs: 200 } });
  cleanup.defer(() => client.close());
  fetcher = new BlobFetcher(store, { chunkSize: MiB });
  cleanup.defer(() => fetcher.close());
  mirror = new Mirror({ store, fetcher, client }, { listen: '127.0.0.1:0', deadlineMs: 3_000 });
  await mirror.start();
  cleanup.defer(() => mirror.close());
  warmer = new ImageWarmer(client, fetcher, store);

  oci = await pushImage(registry, {
    repository: 'conf/app',
    tag: 'v1',
    layers: [{ files: { 'etc/hello.txt': 'hello\n' } }, { randomBytes: 300_000, seed: 11 }],
  });
  docker = await pushImage(registry, {
    repository: 'conf/docker',
    tag: 'v1',
    mediaTypes: 'docker',
    layers: [{ files: { 'a.txt': 'docker media types\n' } }],
  });
  multi = await pushImage(registry, {
    repository: 'conf/multi',
    tag: 'v1',
    platforms: [amd64, arm64],
    layers: (p) => [{ files: { 'arch.txt': p.architecture } }],
  });
  for (const img of [oci, docker, multi])
    await warmer.warm(parseReference(`${proxy.host}/${img.repository}:${img.tag}`), { platform: amd64 });
});

/** The same request to the registry and to the mirror (which reaches the registry through the proxy). */
async function both(method: string, path: string, headers: Record<string, string> = {}) {
  const sep = path.includes('?') ? '&' : '?';
  const [reg, mir] = await Promise.all([
    raw(registry.url, method, path, headers),
    raw(mirror.url, method, `${path}${sep}ns=${proxy.host}`, headers),
  ]);
  return { reg, mir };
}

const ACCEPT = { Accept: ALL_MANIFEST_TYPES };

function assertSameSuccess(reg: Answer, mir: Answer, what: string): void {
  assert.equal(mir.status, reg.status, `${what}: status (registry ${reg.status})`);
  for (const h of ['content-length', 'content-range', 'docker-content-digest', 'content-type'])
    assert.equal(mir.headers[h], reg.headers[h], `${what}: ${h}`);
  assert.ok(mir.body.equals(reg.body), `${what}: body bytes`);
  assert.equal(mir.headers['docker-distribution-api-version'], 'registry/2.0');
}

describe('conformance with the registry', () => {
  test('GET /v2/', async () => {
    const { reg, mir } = await both('GET', '/v2/');
    assert.equal(reg.status, 200);
    assertSameSuccess(reg, mir, 'GET /v2/');
  });

  test('manifests by tag and by digest (OCI, Docker, index), HEAD and GET', async () => {
    for (const img of [oci, docker, multi]) {
      for (const ref of [img.tag, img.digest, ...img.manifests.map((m) => m.digest)]) {
        for (const method of ['HEAD', 'GET']) {
          const what = `${method} ${img.repository}:${ref}`;
          const { reg, mir } = await both(method, `/v2/${img.repository}/manifests/${ref}`, ACCEPT);
          assert.equal(reg.status, 200, what);
          assertSameSuccess(reg, mir, what);
        }
      }
    }
  });

  test('blobs: HEAD, GET, and Range (206) for config and layers', async () => {
    const m = oci.manifests[0]!;
    const layer = m.layers[1]!;
    for (const blob of [m.config, ...m.layers]) {
      for (const method of ['HEAD', 'GET']) {
        const { reg, mir } = await both(method, `/v2/${oci.repository}/blobs/${blob.digest}`);
        assert.equal(reg.status, 200);
        assertSameSuccess(reg, mir, `${method} blob ${blob.digest}`);
      }
    }
    const ranges = [
      'bytes=0-9',
      'bytes=100-',
      'bytes=-10',
      `bytes=${layer.size - 1}-`,
      `bytes=0-${layer.size + 100}`,
      `bytes=4096-${4096 + 65535}`,
    ];
    for (const range of ranges) {
      for (const method of ['GET', 'HEAD']) {
        const { reg, mir } = await both(method, `/v2/${oci.repository}/blobs/${layer.digest}`, {
          Range: range,
        });
        assert.equal(reg.status, 206, `${method} ${range}`);
        assertSameSuccess(reg, mir, `${method} ${range}`);
      }
    }
  });

  test('416 for ranges past the end and malformed ranges', async () => {
    const layer = oci.manifests[0]!.layers[1]!;
    for (const range of [`bytes=${layer.size}-`, `bytes=${layer.size + 1000}-${layer.size + 2000}`]) {
      const { reg, mir } = await both('GET', `/v2/${oci.repository}/blobs/${layer.digest}`, { Range: range });
      assert.equal(reg.status, 416, range);
      assert.equal(mir.status, 416, range);
      assert.equal(mir.headers['content-range'], reg.headers['content-range'], `${range}: Content-Range`);
      // distribution declares the blob's size as Content-Length on its 416 and sends a short
      // text; the mirror's length matches its body.
      assert.equal(Number(mir.headers['content-length']), mir.body.length);
    }
    for (const range of ['bytes=5-2', 'bytes=abc', 'items=0-2']) {
      const { reg, mir } = await both('GET', `/v2/${oci.repository}/blobs/${layer.digest}`, { Range: range });
      assert.equal(reg.status, 416, range);
      assert.equal(mir.status, 416, range);
    }
  });

  test('unknown digest, unknown tag, blob of another repository: same status and OCI code', async () => {
    const layer = oci.manifests[0]!.layers[1]!;
    const cases: [string, string, Record<string, string>][] = [
      // Held in the store for conf/app only: the registry does not link it to conf/docker.
      ['GET', `/v2/${docker.repository}/blobs/${layer.digest}`, {}],
      ['HEAD', `/v2/${docker.repository}/blobs/${layer.digest}`, {}],
      ['GET', `/v2/${oci.repository}/blobs/${UNKNOWN}`, {}],
      ['HEAD', `/v2/${oci.repository}/blobs/${UNKNOWN}`, {}],
      ['GET', `/v2/${oci.repository}/manifests/${UNKNOWN}`, ACCEPT],
      ['HEAD', `/v2/${oci.repository}/manifests/${UNKNOWN}`, ACCEPT],
      ['GET', `/v2/${oci.repository}/manifests/no-such-tag`, ACCEPT],
      ['GET', `/v2/conf/no-such-repo/manifests/v1`, ACCEPT],
    ];
    for (const [method, path, headers] of cases) {
      const { reg, mir } = await both(method, path, headers);
      assert.equal(reg.status, 404, `${method} ${path}`);
      assert.equal(mir.status, 404, `${method} ${path}`);
      if (method === 'GET') assert.equal(ociCode(mir), ociCode(reg), `${method} ${path}: OCI code`);
    }
  });

  test('bad names, tags and digests: same status', async () => {
    const cases = [
      `/v2/Conf/App/manifests/v1`,
      `/v2/conf/app/manifests/bad$tag`,
      `/v2/conf/app/blobs/latest`,
      `/v2/conf/app/blobs/sha256:zzz`,
      `/v2/conf/app/blobs/md5:abc`,
      `/v2/conf/app/blobs/sha256:${'A'.repeat(64)}`,
      `/v2/nothing`,
    ];
    for (const path of cases) {
      const { reg, mir } = await both('GET', path, ACCEPT);
      assert.ok(reg.status >= 400 && reg.status < 500, `${path}: registry ${reg.status}`);
      assert.equal(mir.status, reg.status, path);
      if (reg.status === 400) assert.equal(ociCode(mir), ociCode(reg), `${path}: OCI code`);
    }
  });

  test('deliberate differences from distribution', async () => {
    // A malformed digest as a manifest reference: distribution looks it up as a tag and fails with 500.
    const badRef = await both('GET', `/v2/${oci.repository}/manifests/sha256:zzz`, ACCEPT);
    assert.equal(badRef.mir.status, 400);
    assert.equal(ociCode(badRef.mir), 'DIGEST_INVALID');
    // Escaped dot segments: distribution redirects to the cleaned path; the mirror refuses.
    const escaped = await both('GET', `/v2/conf/%2e%2e/app/manifests/v1`, ACCEPT);
    assert.equal(escaped.mir.status, 404);
    assert.equal(ociCode(escaped.mir), 'NAME_INVALID');
    // Several ranges: distribution answers multipart/byteranges; the mirror sends the whole blob.
    const layer = oci.manifests[0]!.layers[1]!;
    const multiRange = await both('GET', `/v2/${oci.repository}/blobs/${layer.digest}`, {
      Range: 'bytes=0-1,5-6',
    });
    assert.equal(multiRange.mir.status, 200);
    assert.equal(sha(multiRange.mir.body), layer.digest);
    // Write verbs: the mirror is read-only and sends nothing upstream.
    const before = proxy.stats.log.length;
    for (const method of ['PUT', 'POST', 'DELETE', 'PATCH']) {
      const a = await raw(mirror.url, method, `/v2/${oci.repository}/manifests/v1?ns=${proxy.host}`);
      assert.equal(a.status, 405, method);
      assert.equal(a.headers.allow, 'GET, HEAD');
      assert.equal(ociCode(a), 'UNSUPPORTED');
    }
    assert.equal(proxy.stats.log.length, before, 'no upstream request for write verbs');
  });
});

describe('mirror behaviour', () => {
  test('a miss is streamed through the fetcher and stored; the registry serves it once', async () => {
    const img = await pushImage(registry, {
      repository: 'conf/miss',
      tag: 'v1',
      layers: [{ randomBytes: 3 * MiB, seed: 31 }],
    });
    const layer = img.manifests[0]!.layers[0]!;
    assert.equal(await store.stat(layer.digest as Digest), undefined);
    proxy.resetStats();
    const path = `/v2/conf/miss/blobs/${layer.digest}`;
    const first = await raw(mirror.url, 'GET', `${path}?ns=${proxy.host}`);
    assert.equal(first.status, 200);
    assert.equal(first.headers['docker-content-digest'], layer.digest);
    assert.equal(sha(first.body), layer.digest);
    assert.equal((await store.stat(layer.digest as Digest))?.size, layer.size);
    const second = await raw(mirror.url, 'GET', `${path}?ns=${proxy.host}`, { Range: 'bytes=10-19' });
    assert.equal(second.status, 206);
    assert.ok(second.body.equals(first.body.subarray(10, 20)));
    assert.equal(proxy.stats.bytesSent.get(path), layer.size, 'registry blob bytes');
  });

  test('tags: upstream first; the store answers while the registry is down; a deleted tag is not served', async () => {
    proxy.resetStats();
    const up = await raw(mirror.url, 'GET', `/v2/${oci.repository}/manifests/v1?ns=${proxy.host}`, ACCEPT);
    assert.equal(up.status, 200);
    assert.ok(proxy.count(/\/manifests\/v1$/) >= 1, 'tag resolved upstream');
    const fallbacksBefore = mirror.stats.tagFallbacks;
    await registry.stop();
    try {
      const down = await raw(
        mirror.url,
        'GET',
        `/v2/${oci.repository}/manifests/v1?ns=${proxy.host}`,
        ACCEPT,
      );
      assert.equal(down.status, 200);
      assert.equal(down.headers['docker-content-digest'], oci.digest);
      assert.equal(mirror.stats.tagFallbacks, fallbacksBefore + 1);
      // Not warmed, upstream down: an error that sends containerd to the next host.
      const unknown = await raw(mirror.url, 'GET', `/v2/conf/never/manifests/v1?ns=${proxy.host}`, ACCEPT);
      assert.ok(unknown.status >= 500, `status ${unknown.status}`);
    } finally {
      await registry.start();
    }
    const gone = await pushImage(registry, {
      repository: 'conf/gone',
      tag: 'v1',
      layers: [{ files: { 'gone.txt': 'soon deleted' } }],
    });
    await warmer.warm(parseReference(`${proxy.host}/conf/gone:v1`), { platform: amd64 });
    const del = await raw(registry.url, 'DELETE', `/v2/conf/gone/manifests/${gone.digest}`);
    assert.equal(del.status, 202);
    const after = await raw(mirror.url, 'GET', `/v2/conf/gone/manifests/v1?ns=${proxy.host}`, ACCEPT);
    assert.equal(after.status, 404, 'a tag deleted upstream must not be served from the store');
    // By digest it is still content-addressed and verified: served.
    const byDigest = await raw(
      mirror.url,
      'GET',
      `/v2/conf/gone/manifests/${gone.digest}?ns=${proxy.host}`,
      ACCEPT,
    );
    assert.equal(byDigest.status, 200);
  });

  test('store-first policy answers known tags without asking upstream', async () => {
    const m2 = new Mirror({ store, fetcher, client }, { listen: '127.0.0.1:0', tagPolicy: 'store-first' });
    await m2.start();
    try {
      proxy.resetStats();
      const a = await raw(m2.url, 'HEAD', `/v2/${docker.repository}/manifests/v1?ns=${proxy.host}`, ACCEPT);
      assert.equal(a.status, 200);
      assert.equal(a.headers['docker-content-digest'], docker.digest);
      assert.equal(a.headers['content-type'], docker.mediaType);
      assert.equal(proxy.stats.log.length, 0);
    } finally {
      await m2.close();
    }
  });

  test('a pull racing a download joins it: the registry serves the blob once', async () => {
    const img = await pushImage(registry, {
      repository: 'conf/race',
      tag: 'v1',
      layers: [{ randomBytes: 24 * MiB, seed: 41 }],
    });
    const layer = img.manifests[0]!.layers[0]!;
    // A slow fetcher (bandwidth cap) so the download is still running when the pull comes.
    const slow = new BlobFetcher(store, { chunkSize: MiB, bandwidthBytesPerSec: 8 * MiB });
    const m2 = new Mirror({ store, fetcher: slow, client }, { listen: '127.0.0.1:0', deadlineMs: 10_000 });
    await m2.start();
    try {
      proxy.resetStats();
      let resolveStarted!: () => void;
      const started = new Promise<void>((r) => {
        resolveStarted = r;
      });
      const warm = new ImageWarmer(client, slow, store).warm(parseReference(`${proxy.host}/conf/race:v1`), {
        platform: amd64,
        onProgress: (p) => {
          const b = p.blobs.find((x) => x.digest === layer.digest);
          if (b && b.bytesDone > 0 && b.bytesDone < b.size) resolveStarted();
        },
      });
      await started;
      // From here the registry holds every further chunk until the pull has joined, so the
      // download cannot finish first however slow the machine is.
      let release!: () => void;
      proxy.rules.hold = { method: 'GET', path: /\/blobs\//, until: new Promise<void>((r) => (release = r)) };
      const path = `/v2/conf/race/blobs/${layer.digest}`;
      const pulling = raw(m2.url, 'GET', `${path}?ns=${proxy.host}`);
      const deadline = Date.now() + 120_000;
      while (m2.stats.blobDownloadsJoined < 1) {
        if (Date.now() > deadline) {
          release();
          assert.fail(`the pull never joined the download; mirror stats: ${JSON.stringify(m2.stats)}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      release();
      proxy.rules.hold = null;
      const pulled = await pulling;
      await warm;
      assert.equal(pulled.status, 200);
      assert.equal(sha(pulled.body), layer.digest);
      assert.equal(m2.stats.blobDownloadsJoined, 1);
      assert.ok(m2.stats.blobBytesFromInflight > 0, 'served while downloading');
      assert.equal(proxy.stats.bytesSent.get(path), layer.size, 'registry served the blob exactly once');
    } finally {
      await m2.close();
      await slow.close();
    }
  });

  test('content that fails verification never completes a response', async () => {
    const img = await pushImage(registry, {
      repository: 'conf/corrupt',
      tag: 'v1',
      layers: [{ randomBytes: 4 * MiB, seed: 51 }],
    });
    const layer = img.manifests[0]!.layers[0]!;
    const file = registry.blobDataPath(layer.digest);
    const data = await readFile(file);
    const mid = Math.floor(data.length / 2);
    data[mid] = (data[mid] ?? 0) ^ 0xff;
    await writeFile(file, data);
    // A slow download, so the mirror keeps up with the bytes as they land and reaches the
    // end of the blob before the fetcher finds the mismatch.
    const slow = new BlobFetcher(store, {
      chunkSize: MiB,
      concurrencyPerBlob: 1,
      bandwidthBytesPerSec: 8 * MiB,
    });
    const m2 = new Mirror({ store, fetcher: slow, client }, { listen: '127.0.0.1:0', deadlineMs: 10_000 });
    await m2.start();
    let a: Answer;
    try {
      a = await raw(m2.url, 'GET', `/v2/conf/corrupt/blobs/${layer.digest}?ns=${proxy.host}`);
    } finally {
      await m2.close();
      await slow.close();
    }
    // Headers went out (the first bytes were there in time), then the body was cut before
    // its last byte: a client can never take unverified bytes for the blob.
    assert.equal(a.status, 200);
    assert.ok(a.body.length < layer.size, `got ${a.body.length} of ${layer.size} bytes`);
    assert.ok(a.error, 'the connection must break');
    assert.equal(await store.stat(layer.digest as Digest), undefined, 'nothing stored');
  });

  test('a hung upstream is answered 503 within the deadline (containerd then falls back)', async () => {
    const sockets = new Set<Socket>();
    const hung = createTcpServer((s) => {
      sockets.add(s);
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => hung.listen(0, '127.0.0.1', () => r()));
    const port = (hung.address() as { port: number }).port;
    const m2 = new Mirror({ store, fetcher, client }, { listen: '127.0.0.1:0', deadlineMs: 500 });
    await m2.start();
    const ns = `127.0.0.1:${port}`;
    const held = oci.manifests[0]!.layers[1]!;
    // A record of an image from the hung registry that uses a blob the store holds.
    const record = {
      repository: `${ns}/x`,
      digest: oci.digest as Digest,
      manifestDigest: oci.manifests[0]!.digest as Digest,
      platform: 'linux/amd64',
      manifests: [oci.manifests[0]!.digest as Digest],
      blobs: [held.digest as Digest],
      size: held.size,
      warmedAt: Date.now(),
    };
    try {
      const blob = await raw(m2.url, 'GET', `/v2/x/blobs/${UNKNOWN}?ns=${ns}`);
      assert.equal(blob.status, 503);
      assert.equal(ociCode(blob), 'UNAVAILABLE');
      const tag = await raw(m2.url, 'GET', `/v2/x/manifests/v1?ns=${ns}`, ACCEPT);
      assert.equal(tag.status, 503);
      // Held but not tied to x by any record: the upstream would have to confirm it.
      const unconfirmed = await raw(m2.url, 'GET', `/v2/x/blobs/${held.digest}?ns=${ns}`);
      assert.equal(unconfirmed.status, 503);
      // What a record ties to the repository is still served while the upstream hangs.
      await store.putImage(record);
      const ok = await raw(m2.url, 'GET', `/v2/x/blobs/${held.digest}?ns=${ns}`);
      assert.equal(ok.status, 200);
      assert.equal(sha(ok.body), held.digest);
    } finally {
      await store.deleteImage(record);
      await m2.close();
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => hung.close(() => r()));
    }
  });
});
