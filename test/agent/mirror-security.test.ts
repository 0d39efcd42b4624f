/**
 * The attacks of issue 11 on the node mirror, each against the real components (Debian
 * `docker-registry` with htpasswd or token auth from the harness token server, the harness
 * fault proxy, real Redis for the agent) and each now refused. Every refusal is paired with
 * the legitimate request that still works, so a mirror that refused everything would fail.
 *
 * - the mirror listens on 127.0.0.1 unless told otherwise, and no peer listener runs
 *   without peers;
 * - `?ns=` naming a host the egress policy does not allow (an internal service on
 *   127.0.0.1, a public-looking name resolving to it) → 404 NAME_UNKNOWN, no request sent;
 * - an anonymous client asking a private image by tag, warmed here with credentials → the
 *   upstream's 401 (with its challenge), never the digest recorded in the store; a client
 *   with credentials (Basic, or a token it fetched itself from the realm) gets the image;
 * - an agent holding node-wide credentials does not fetch a private image it never warmed
 *   for an anonymous client;
 * - a blob known only under one repository, asked under another → 404 BLOB_UNKNOWN;
 * - a blob redirect to another loopback host → refused, that host sees no request;
 * - an upstream's error text and address never appear in the mirror's answers;
 * - `kube-prewarm serve` (a real process) refuses loopback upstreams it was not given;
 * - a prewarm job naming a registry that is not allowed fails permanently, sending nothing.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BlobFetcher } from '../../agent/src/fetch/blob-fetcher.js';
import { ImageWarmer } from '../../agent/src/fetch/image-warmer.js';
import { Mirror } from '../../agent/src/mirror/mirror.js';
import { FsBlobStore } from '../../agent/src/store/fs-store.js';
import { StaticCredentials } from '../../oci/src/auth.js';
import { RegistryClient } from '../../oci/src/client.js';
import type { Digest } from '../../oci/src/digest.js';
import { EgressPolicy } from '../../oci/src/egress-policy.js';
import { parseReference } from '../../oci/src/reference.js';
import {
  ALL_MANIFEST_TYPES,
  Cleanup,
  type Credentials,
  type FaultProxyHandle,
  freePort,
  makeTempDir,
  type PushedImage,
  pushImage,
  type RegistryHandle,
  registryFetch,
  spawnProcess,
  startFaultProxy,
  startRegistry,
  startTokenServer,
  type TokenServerHandle,
  waitForHttp,
} from '../harness/index.js';
import { enqueue, startAgent, startTestRedis, waitForJobEnd } from './daemon-fixtures.js';

const MiB = 1024 * 1024;
const amd64 = { os: 'linux', architecture: 'amd64' };
const ACCEPT = { Accept: ALL_MANIFEST_TYPES };
const USER: Credentials = { username: 'puller', password: 'pull-s3cret-pw' };

const cleanup = new Cleanup();
after(() => cleanup.run());

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface Answer {
  status: number;
  headers: Headers;
  body: Buffer;
}

async function get(url: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Answer> {
  const res = await fetch(url, { method, headers, redirect: 'manual' });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

function ociCode(a: Answer): string | undefined {
  try {
    return (JSON.parse(a.body.toString('utf8')) as { errors?: { code?: string }[] }).errors?.[0]?.code;
  } catch {
    return undefined;
  }
}

const basic = (c: Credentials) => `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;

/** A real server on `address` recording every request: an internal service the mirror must not reach. */
async function internalServer(
  address: string,
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ url: string; host: string; hits: string[] }> {
  const hits: string[] = [];
  const server = createServer((req, res) => {
    hits.push(`${req.method} ${req.url}`);
    handler(req, res);
  });
  await new Promise<void>((r) => server.listen(0, address, () => r()));
  cleanup.defer(() => new Promise<void>((r) => server.close(() => r())));
  const port = (server.address() as AddressInfo).port;
  return { url: `http://${address}:${port}`, host: `${address}:${port}`, hits };
}

async function proxied(opts: Parameters<typeof startRegistry>[0] = {}) {
  const registry = await startRegistry(opts);
  cleanup.defer(() => registry.close());
  const proxy = await startFaultProxy({ upstream: registry });
  cleanup.defer(() => proxy.stop());
  return { registry, proxy };
}

/** A mirror as the daemon builds it: a registry client with the egress policy and no credentials. */
async function startMirror(store: FsBlobStore, policy: EgressPolicy, fetcher?: BlobFetcher) {
  const client = new RegistryClient({ egress: policy, retry: { attempts: 1 } });
  cleanup.defer(() => client.close());
  const f = fetcher ?? new BlobFetcher(store, { chunkSize: MiB });
  if (!fetcher) cleanup.defer(() => f.close());
  const mirror = new Mirror({ store, fetcher: f, client }, { listen: '127.0.0.1:0', deadlineMs: 5_000 });
  await mirror.start();
  cleanup.defer(() => mirror.close());
  return mirror;
}

async function newStore(): Promise<FsBlobStore> {
  return new FsBlobStore(await makeTempDir('mirror-sec-store', cleanup), { fsync: false }).init();
}

/** Warms `ref` as a prewarm job does: the node's client, with credentials. */
async function warmWith(store: FsBlobStore, ref: string, creds?: { host: string } & Credentials) {
  const credentials = new StaticCredentials();
  if (creds) credentials.set(creds.host, { username: creds.username, password: creds.password });
  const client = new RegistryClient({ credentials, retry: { attempts: 2, maxDelayMs: 200 } });
  const fetcher = new BlobFetcher(store, { chunkSize: MiB });
  try {
    return await new ImageWarmer(client, fetcher, store).warm(parseReference(ref), { platform: amd64 });
  } finally {
    await fetcher.close();
    await client.close();
  }
}

describe('listeners', () => {
  test('the agent binds its mirror to 127.0.0.1 by default and runs no peer listener without peers', async () => {
    const { redis } = await startTestRedis(cleanup);
    const port = await freePort();
    const a = await startAgent(cleanup, {
      node: 'sec-listen',
      redisUrl: redis.url,
      extra: { KUBE_PREWARM_MIRROR_PORT: String(port) },
    });
    assert.equal(a.config.mirrorHost, '127.0.0.1');
    assert.equal(a.daemon.mirrorAddress, `127.0.0.1:${port}`);
    assert.equal(a.daemon.peerAddress, undefined);
  });
});

describe('upstreams the mirror may contact', () => {
  let proxy: FaultProxyHandle;
  let store: FsBlobStore;
  before(async () => {
    ({ proxy } = await proxied());
    store = await newStore();
  });

  test('?ns= naming an internal service on 127.0.0.1 is refused with 404 NAME_UNKNOWN; nothing is sent', async () => {
    const svc = await internalServer('127.0.0.1', (_q, r) => r.end('{"internal":"admin api"}'));
    for (const policy of [
      new EgressPolicy({ allowedRegistries: ['_default'] }),
      new EgressPolicy({ allowedRegistries: [proxy.host] }),
    ]) {
      const mirror = await startMirror(store, policy);
      for (const path of ['/v2/x/manifests/latest', `/v2/x/blobs/sha256:${'1'.repeat(64)}`]) {
        for (const method of ['GET', 'HEAD']) {
          const a = await get(`${mirror.url}${path}?ns=${svc.host}`, ACCEPT, method);
          assert.equal(a.status, 404, `${method} ${path}`);
          if (method === 'GET') assert.equal(ociCode(a), 'NAME_UNKNOWN');
        }
      }
      assert.ok(mirror.stats.upstreamsRefused >= 4);
    }
    assert.deepEqual(svc.hits, [], 'the internal service was never contacted');
  });

  test('a public-looking ?ns= name that resolves to 127.0.0.1 is refused when connecting', async () => {
    const port = new URL(proxy.url).port;
    const mirror = await startMirror(
      store,
      new EgressPolicy({
        allowedRegistries: ['_default'],
        resolve: async () => [{ address: '127.0.0.1', family: 4 }],
      }),
    );
    proxy.resetStats();
    const a = await get(`${mirror.url}/v2/x/manifests/latest?ns=registry.example.test:${port}`, ACCEPT);
    assert.equal(a.status, 404);
    assert.equal(ociCode(a), 'NAME_UNKNOWN');
    assert.equal(proxy.stats.log.length, 0, 'no connection reached the registry');
  });

  test('the allowed registry is still served (control)', async () => {
    const img = await pushImage(proxy, {
      repository: 'sec/public',
      tag: 'v1',
      layers: [{ randomBytes: 10_000, seed: 1 }],
    });
    const mirror = await startMirror(store, new EgressPolicy({ allowedRegistries: [proxy.host] }));
    const a = await get(`${mirror.url}/v2/sec/public/manifests/v1?ns=${proxy.host}`, ACCEPT);
    assert.equal(a.status, 200);
    assert.equal(a.headers.get('docker-content-digest'), img.digest);
  });

  test('kube-prewarm serve: public registries only by default; --plain-http hosts are allowed', async () => {
    const svc = await internalServer('127.0.0.1', (_q, r) => r.end('{"internal":"admin api"}'));
    const img = await pushImage(proxy, {
      repository: 'sec/serve',
      tag: 'v1',
      layers: [{ randomBytes: 10_000, seed: 3 }],
    });
    const dir = await makeTempDir('serve-sec', cleanup);
    const main = fileURLToPath(new URL('../../agent/src/cli/main.ts', import.meta.url));
    const port = await freePort();
    const serve = await spawnProcess({
      name: 'kube-prewarm serve',
      command: process.execPath,
      args: [
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        `const { main } = await import(${JSON.stringify(main)}); process.exitCode = await main(process.argv.slice(1));`,
        'serve',
        '--store',
        join(dir, 'store'),
        '--listen',
        `127.0.0.1:${port}`,
        '--plain-http',
        proxy.host,
        '--no-fsync',
      ],
      logPath: join(dir, 'serve.log'),
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
    });
    cleanup.defer(async () => {
      await serve.stop();
    });
    const base = `http://127.0.0.1:${port}`;
    await waitForHttp(`${base}/v2/`, { process: serve, ready: (s) => s === 200 });
    const refused = await get(`${base}/v2/x/manifests/latest?ns=${svc.host}`, ACCEPT);
    assert.equal(refused.status, 404);
    assert.equal(ociCode(refused), 'NAME_UNKNOWN');
    assert.deepEqual(svc.hits, []);
    const ok = await get(`${base}/v2/sec/serve/manifests/v1?ns=${proxy.host}`, ACCEPT);
    assert.equal(ok.status, 200);
    assert.equal(ok.headers.get('docker-content-digest'), img.digest);
  });

  test("an upstream's error text and address never reach the client", async () => {
    const banner = 'internal-banner-7f3a: db=10.1.2.3 user=admin';
    const svc = await internalServer('127.0.0.1', (_q, r) => {
      r.writeHead(500, { 'Content-Type': 'application/json' });
      r.end(JSON.stringify({ errors: [{ code: 'UNKNOWN', message: banner }] }));
    });
    // Even an explicitly allowed (internal) upstream is not echoed.
    const mirror = await startMirror(store, new EgressPolicy({ allowedRegistries: [svc.host] }));
    for (const path of ['/v2/x/manifests/latest', `/v2/x/manifests/sha256:${'2'.repeat(64)}`]) {
      const a = await get(`${mirror.url}${path}?ns=${svc.host}`, ACCEPT);
      assert.equal(a.status, 503, path);
      assert.equal(ociCode(a), 'UNAVAILABLE');
      const text = a.body.toString('utf8');
      for (const leak of ['internal-banner', '10.1.2.3', svc.host, '500'])
        assert.ok(!text.includes(leak), `${path}: the answer contains ${leak}: ${text}`);
    }
    assert.ok(svc.hits.length >= 2, 'the upstream was asked (the text is withheld, not unfetched)');
  });

  test('a blob redirect to another loopback host is refused; that host sees no request', async () => {
    const img = await pushImage(proxy, {
      repository: 'sec/redirect',
      tag: 'v1',
      layers: [{ randomBytes: 2 * MiB, seed: 2 }],
    });
    const layer = img.manifests[0]!.layers[0]!;
    const svc = await internalServer('127.0.0.2', (_q, r) => r.end('internal'));
    const mirror = await startMirror(store, new EgressPolicy({ allowedRegistries: [proxy.host] }));
    proxy.rules.redirectBlobsTo = svc.url;
    try {
      const a = await get(`${mirror.url}/v2/sec/redirect/blobs/${layer.digest}?ns=${proxy.host}`);
      assert.notEqual(a.status, 200);
      assert.ok(!a.body.toString('utf8').includes('127.0.0.2'), 'the refused target is not named');
      assert.deepEqual(svc.hits, []);
      assert.equal(await store.stat(layer.digest as Digest), undefined);
      // Control: the redirect to the registry host's own blob storage is followed.
      proxy.rules.redirectBlobsTo = proxy.blobStorage.url;
      const ok = await get(`${mirror.url}/v2/sec/redirect/blobs/${layer.digest}?ns=${proxy.host}`);
      assert.equal(ok.status, 200);
      assert.equal(sha(ok.body), layer.digest);
    } finally {
      proxy.rules.redirectBlobsTo = null;
    }
  });
});

describe('a private registry (htpasswd)', () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let store: FsBlobStore;
  let mirror: Mirror;
  let warmed: PushedImage;
  let other: PushedImage;

  before(async () => {
    ({ registry, proxy } = await proxied({ auth: { htpasswd: USER } }));
    store = await newStore();
    warmed = await pushImage(registry, {
      repository: 'private/app',
      tag: 'v1',
      layers: [{ randomBytes: 300_000, seed: 11 }],
    });
    other = await pushImage(registry, {
      repository: 'private/never-warmed',
      tag: 'v1',
      layers: [{ randomBytes: 200_000, seed: 12 }],
    });
    // The prewarm job, with the node's credentials: the store now has a record of private/app.
    await warmWith(store, `${proxy.host}/private/app:v1`, { host: proxy.host, ...USER });
    mirror = await startMirror(store, new EgressPolicy({ allowedRegistries: [proxy.host] }));
  });

  test('anonymous pull by tag of a warmed private image: the upstream 401 is passed on, not the recorded digest', async () => {
    const url = `${mirror.url}/v2/private/app/manifests/v1?ns=${proxy.host}`;
    for (const method of ['GET', 'HEAD']) {
      const a = await get(url, ACCEPT, method);
      assert.equal(a.status, 401, method);
      assert.match(a.headers.get('www-authenticate') ?? '', /^Basic realm="kube-prewarm-test"/);
      if (method === 'GET') assert.equal(ociCode(a), 'UNAUTHORIZED');
    }
    assert.equal(mirror.stats.tagFallbacks, 0, 'never answered from the store on 401');
    // The client's own credentials, forwarded: served (from the store, the manifest is warm).
    const ok = await get(url, { ...ACCEPT, Authorization: basic(USER) });
    assert.equal(ok.status, 200);
    assert.equal(ok.headers.get('docker-content-digest'), warmed.digest);
    // Wrong credentials are the upstream's 401 too.
    const wrong = await get(url, { ...ACCEPT, Authorization: basic({ ...USER, password: 'nope' }) });
    assert.equal(wrong.status, 401);
  });

  test('anonymous pull of a private image never warmed: 401, and no content leaves the registry', async () => {
    const layer = other.manifests[0]!.layers[0]!;
    proxy.resetStats();
    for (const path of [
      `/v2/private/never-warmed/manifests/v1`,
      `/v2/private/never-warmed/manifests/${other.digest}`,
      `/v2/private/never-warmed/blobs/${layer.digest}`,
    ]) {
      const a = await get(`${mirror.url}${path}?ns=${proxy.host}`, ACCEPT);
      assert.equal(a.status, 401, path);
    }
    assert.equal(proxy.bytes(/\/blobs\//), 0, 'no blob bytes from the registry');
    assert.equal(await store.stat(layer.digest as Digest), undefined, 'nothing stored');
    // With the client's credentials the same blob is fetched, verified and served.
    const ok = await get(`${mirror.url}/v2/private/never-warmed/blobs/${layer.digest}?ns=${proxy.host}`, {
      Authorization: basic(USER),
    });
    assert.equal(ok.status, 200);
    assert.equal(sha(ok.body), layer.digest);
  });

  test('the record answers the tag only while the upstream cannot be reached', async () => {
    await registry.stop();
    try {
      // The proxy answers 502 for the stopped registry: unreachable, not a refusal.
      const a = await get(`${mirror.url}/v2/private/app/manifests/v1?ns=${proxy.host}`, ACCEPT);
      assert.equal(a.status, 200);
      assert.equal(a.headers.get('docker-content-digest'), warmed.digest);
    } finally {
      await registry.start();
    }
  });

  test('a blob known only under private/app is not served under another repository name', async () => {
    const layer = warmed.manifests[0]!.layers[0]!;
    assert.ok(await store.stat(layer.digest as Digest), 'the store holds the layer');
    const cases: Record<string, string>[] = [{}, { Authorization: basic(USER) }];
    for (const auth of cases) {
      const a = await get(`${mirror.url}/v2/someone/else/blobs/${layer.digest}?ns=${proxy.host}`, auth);
      // Anonymous: the upstream's 401 for someone/else; with credentials: its 404.
      assert.equal(a.status, 'Authorization' in auth ? 404 : 401);
      if ('Authorization' in auth) assert.equal(ociCode(a), 'BLOB_UNKNOWN');
    }
    // Under its own repository the record ties it: served without asking the upstream.
    proxy.resetStats();
    const ok = await get(`${mirror.url}/v2/private/app/blobs/${layer.digest}?ns=${proxy.host}`);
    assert.equal(ok.status, 200);
    assert.equal(sha(ok.body), layer.digest);
    assert.equal(proxy.stats.log.length, 0);
  });
});

describe('a private registry (bearer tokens)', () => {
  let token: TokenServerHandle;
  let proxy: FaultProxyHandle;
  let store: FsBlobStore;
  let img: PushedImage;
  before(async () => {
    token = await startTokenServer({
      users: {
        pusher: { password: 'push-pw', actions: ['pull', 'push'] },
        [USER.username]: { password: USER.password },
      },
    });
    cleanup.defer(() => token.stop());
    ({ proxy } = await proxied({ auth: { token } }));
    img = await pushImage(proxy, {
      repository: 'tok/app',
      tag: 'v1',
      layers: [{ randomBytes: 100_000, seed: 21 }],
      creds: { username: 'pusher', password: 'push-pw' },
    });
    store = await newStore();
  });

  test("anonymous → the registry's bearer challenge; containerd's flow (token from the realm, retry) works", async () => {
    const mirror = await startMirror(store, new EgressPolicy({ allowedRegistries: [proxy.host] }));
    const path = `/v2/tok/app/manifests/v1?ns=${proxy.host}`;
    const anon = await get(`${mirror.url}${path}`, ACCEPT);
    assert.equal(anon.status, 401);
    const challenge = anon.headers.get('www-authenticate') ?? '';
    assert.ok(challenge.startsWith(`Bearer realm="${token.realm}"`), challenge);
    assert.match(challenge, /scope="repository:tok\/app:pull"/);
    // What containerd does with it: ask the realm with its own credentials, retry with the token.
    const before = token.log.length;
    const res = await registryFetch({ url: mirror.url, credentials: USER }, path, { headers: ACCEPT });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('docker-content-digest'), img.digest);
    const issued = token.log.slice(before).filter((r) => r.status === 200);
    assert.deepEqual(
      issued.map((r) => r.account),
      [USER.username],
      'the only token was the client’s own; the mirror fetched none',
    );
  });
});

describe('the agent with node-wide credentials', () => {
  test('does not fetch a private image it never warmed for an anonymous client', async () => {
    const { proxy } = await proxied({ auth: { htpasswd: USER } });
    const img = await pushImage(proxy, {
      repository: 'node/creds',
      tag: 'v1',
      layers: [{ randomBytes: 150_000, seed: 31 }],
      creds: USER,
    });
    const layer = img.manifests[0]!.layers[0]!;
    const { redis } = await startTestRedis(cleanup);
    const dir = await makeTempDir('node-creds', cleanup);
    const dockerConfig = join(dir, 'config.json');
    await writeFile(
      dockerConfig,
      JSON.stringify({ auths: { [proxy.host]: { auth: basic(USER).slice(6) } } }),
    );
    const port = await freePort();
    const a = await startAgent(cleanup, {
      node: 'sec-creds',
      redisUrl: redis.url,
      extra: {
        KUBE_PREWARM_MIRROR_PORT: String(port),
        KUBE_PREWARM_DOCKER_CONFIG: dockerConfig,
        KUBE_PREWARM_ALLOWED_REGISTRIES: proxy.host,
      },
    });
    const base = `http://${a.daemon.mirrorAddress}`;
    proxy.resetStats();
    for (const path of [
      `/v2/node/creds/manifests/v1`,
      `/v2/node/creds/manifests/${img.digest}`,
      `/v2/node/creds/blobs/${layer.digest}`,
    ]) {
      const r = await get(`${base}${path}?ns=${proxy.host}`, ACCEPT);
      assert.equal(r.status, 401, path);
    }
    assert.equal(proxy.bytes(/\/blobs\//), 0, 'no blob bytes left the registry');
    // No request of the mirror carried the node's credentials: every one was answered 401.
    assert.ok(proxy.stats.log.length > 0);
    assert.ok(
      proxy.stats.log.every((e) => e.status === 401),
      JSON.stringify(proxy.stats.log.map((e) => [e.method, e.path, e.status])),
    );
    // The client with its own credentials is served.
    const ok = await get(`${base}/v2/node/creds/blobs/${layer.digest}?ns=${proxy.host}`, {
      Authorization: basic(USER),
    });
    assert.equal(ok.status, 200);
    assert.equal(sha(ok.body), layer.digest);
  });
});

describe("the agent's prewarm jobs", () => {
  test('a job naming a registry that is not allowed fails permanently; nothing is sent there', async () => {
    const { proxy } = await proxied();
    const img = await pushImage(proxy, {
      repository: 'jobs/app',
      tag: 'v1',
      layers: [{ randomBytes: 20_000, seed: 41 }],
    });
    const svc = await internalServer('127.0.0.1', (_q, r) => r.end('{"internal":"admin api"}'));
    const { redis, conn } = await startTestRedis(cleanup);
    await startAgent(cleanup, {
      node: 'sec-jobs',
      redisUrl: redis.url,
      extra: { KUBE_PREWARM_ALLOWED_REGISTRIES: proxy.host },
    });
    const refused = await enqueue(
      conn,
      { node: 'sec-jobs', repository: `${svc.host}/jobs/app`, tag: 'v1', digest: img.digest },
      { attempts: 3 },
    );
    const r = await waitForJobEnd(conn, 'sec-jobs', refused);
    assert.equal(r.state, 'failed');
    assert.match(r.failedReason ?? '', /^PW_ERR_EGRESS_DENIED: /);
    assert.equal(r.attemptsMade, 1, 'permanent: not retried');
    assert.deepEqual(svc.hits, []);
    // Control: the allowed registry's job completes (another image: job ids derive from the digest).
    const allowed = await pushImage(proxy, {
      repository: 'jobs/allowed',
      tag: 'v1',
      layers: [{ randomBytes: 20_000, seed: 42 }],
    });
    const ok = await enqueue(conn, {
      node: 'sec-jobs',
      repository: `${proxy.host}/jobs/allowed`,
      tag: 'v1',
      digest: allowed.digest,
    });
    const done = await waitForJobEnd(conn, 'sec-jobs', ok);
    assert.equal(done.state, 'completed', done.failedReason);
  });
});
