/**
 * Proves each harness piece against the real components it drives: docker-registry
 * (distribution 2.8), skopeo, openssl/htpasswd, redis-server. If these pass, a failing
 * integration test elsewhere is about the code under test, not the harness.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, get, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { Redis } from 'ioredis';
import { SignJWT } from 'jose';
import {
  ALL_MANIFEST_TYPES,
  type BuiltImage,
  buildImage,
  Cleanup,
  freePort,
  getBlob,
  getManifest,
  headBlob,
  makeTempDir,
  type PushedImage,
  pushBuiltImage,
  pushImage,
  type RegistryHandle,
  registryFetch,
  spawnProcess,
  startFaultProxy,
  startRedis,
  startRegistry,
  startTokenServer,
  waitForPort,
  waitUntil,
} from '../harness/index.js';

const execFileP = promisify(execFile);
const MiB = 1024 * 1024;
const amd64 = { os: 'linux', architecture: 'amd64' };
const arm64 = { os: 'linux', architecture: 'arm64', variant: 'v8' };

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function sha256File(path: string): Promise<string> {
  const { stdout } = await execFileP('sha256sum', [path]);
  return `sha256:${stdout.split(' ')[0]}`;
}

/** Extracts one file from a (possibly gzipped) layer tar with the system tar, as a runtime would. */
async function fileFromLayer(layer: Buffer, name: string, dir: string): Promise<string> {
  const path = join(dir, `layer-${sha256(layer).slice(7, 19)}.tar`);
  await writeFile(path, layer);
  const { stdout } = await execFileP('tar', ['-xOf', path, name]);
  return stdout;
}

describe('tmp and process', () => {
  const cleanup = new Cleanup();
  after(() => cleanup.run());

  test('makeTempDir registers removal; freePort gives a bindable loopback port', async () => {
    const local = new Cleanup();
    const dir = await makeTempDir('selftest', local);
    await writeFile(join(dir, 'x'), 'x');
    await local.run();
    assert.equal(existsSync(dir), false);
    const port = await freePort();
    assert.ok(port > 0 && port < 65536);
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    await waitForPort('127.0.0.1', port, { timeoutMs: 2_000 });
    await new Promise((resolve) => server.close(resolve));
  });

  test('readiness timeout and early exit errors carry the log tail', async () => {
    const dir = await makeTempDir('proc', cleanup);
    const sleeper = await spawnProcess({
      name: 'sleeper',
      command: 'sh',
      args: ['-c', 'echo hello-from-child; exec sleep 60'],
      logPath: join(dir, 'sleeper.log'),
    });
    cleanup.defer(() => sleeper.kill().then(() => undefined));
    const port = await freePort();
    await assert.rejects(
      waitForPort('127.0.0.1', port, { timeoutMs: 300, process: sleeper }),
      (err: Error) => {
        assert.match(err.message, /sleeper: not ready after 300 ms/);
        assert.match(err.message, /hello-from-child/);
        return true;
      },
    );
    const status = await sleeper.stop();
    assert.equal(status.signal, 'SIGTERM');

    const crasher = await spawnProcess({
      name: 'crasher',
      command: 'sh',
      args: ['-c', 'echo boom-before-ready; exit 3'],
      logPath: join(dir, 'crasher.log'),
    });
    await assert.rejects(
      waitForPort('127.0.0.1', port, { timeoutMs: 10_000, process: crasher }),
      (err: Error) => {
        assert.match(err.message, /exited \(code 3\) before it was ready/);
        assert.match(err.message, /boom-before-ready/);
        return true;
      },
    );
  });

  test('stop() escalates to SIGKILL when SIGTERM is ignored', async () => {
    const dir = await makeTempDir('proc', cleanup);
    const stubborn = await spawnProcess({
      name: 'stubborn',
      command: 'sh',
      args: ['-c', "trap '' TERM; echo ready; exec sleep 60"],
      logPath: join(dir, 'stubborn.log'),
    });
    await waitUntil('ready line', async () => (await readFile(stubborn.logPath, 'utf8')).includes('ready'));
    const status = await stubborn.stop(200);
    assert.equal(status.signal, 'SIGKILL');
    assert.equal(stubborn.running, false);
  });

  test('spawnProcess rejects when the command does not exist', async () => {
    const dir = await makeTempDir('proc', cleanup);
    // Under setpriv the exec failure surfaces as an early exit; without it, as a spawn error.
    try {
      const p = await spawnProcess({
        name: 'nope',
        command: 'no-such-binary-xyz',
        args: [],
        logPath: join(dir, 'l'),
      });
      const s = await p.exited;
      assert.notEqual(s.code, 0);
    } catch (err) {
      assert.match((err as Error).message, /cannot start/);
    }
  });
});

describe('registry', () => {
  const cleanup = new Cleanup();
  after(() => cleanup.run());

  test('serves /v2/ on 127.0.0.1 without auth', async () => {
    const reg = await startRegistry();
    cleanup.defer(() => reg.close());
    assert.match(reg.host, /^127\.0\.0\.1:\d+$/);
    const res = await fetch(`${reg.url}/v2/`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
  });

  test('htpasswd auth: no creds and wrong password → 401, right password → 200', async () => {
    const reg = await startRegistry({ auth: { htpasswd: { username: 'alice', password: 's3cret' } } });
    cleanup.defer(() => reg.close());
    const anon = await fetch(`${reg.url}/v2/`);
    assert.equal(anon.status, 401);
    assert.match(anon.headers.get('www-authenticate') ?? '', /^Basic realm=/);
    const wrong = await registryFetch(reg, '/v2/', { creds: { username: 'alice', password: 'nope' } });
    assert.equal(wrong.status, 401);
    const ok = await registryFetch(reg, '/v2/');
    assert.equal(ok.status, 200);
    // Pushing with the handle's credentials works; anonymous reads of the result do not.
    const img = await pushImage(reg, {
      repository: 'auth/basic',
      tag: 'v1',
      layers: [{ files: { a: 'a' } }],
    });
    assert.equal((await getManifest(reg, 'auth/basic', 'v1')).digest, img.digest);
    const anonManifest = await registryFetch(reg, '/v2/auth/basic/manifests/v1', { creds: null });
    assert.equal(anonManifest.status, 401);
  });

  test('notifications: a push sends an event with the configured headers', async () => {
    const events: {
      headers: IncomingHttpHeaders;
      body: { events?: { action: string; target: { repository: string } }[] };
    }[] = [];
    const sink = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        events.push({ headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
        res.end();
      });
    });
    await new Promise<void>((resolve) => sink.listen(0, '127.0.0.1', resolve));
    cleanup.defer(() => new Promise<void>((resolve) => sink.close(() => resolve())));
    const reg = await startRegistry({
      notifications: {
        url: `http://127.0.0.1:${(sink.address() as AddressInfo).port}/events`,
        headers: { Authorization: 'Bearer notify-token' },
      },
    });
    cleanup.defer(() => reg.close());
    await pushImage(reg, { repository: 'notify/me', tag: 'v1', layers: [{ files: { a: 'a' } }] });
    const isPush = (e: (typeof events)[number]): boolean =>
      e.body.events?.some((ev) => ev.action === 'push' && ev.target.repository === 'notify/me') ?? false;
    await waitUntil('push event', async () => events.some(isPush), { timeoutMs: 15_000 });
    const ev = events.find(isPush)!;
    assert.equal(ev.headers.authorization, 'Bearer notify-token');
    assert.equal(ev.headers['content-type'], 'application/vnd.docker.distribution.events.v1+json');
  });

  test('stop/start and kill/start keep storage and port; blobDataPath points at the blob', async () => {
    const reg = await startRegistry();
    cleanup.defer(() => reg.close());
    const img = await pushImage(reg, {
      repository: 'restart/me',
      tag: 'v1',
      layers: [{ randomBytes: 100_000, seed: 7 }],
    });
    const layer = img.manifests[0]!.layers[0]!;
    const dataPath = reg.blobDataPath(layer.digest);
    assert.equal((await stat(dataPath)).size, layer.size);
    assert.equal(await sha256File(dataPath), layer.digest);

    await reg.stop();
    assert.equal(reg.process, undefined);
    await assert.rejects(fetch(`${reg.url}/v2/`));
    await reg.start();
    assert.equal((await getManifest(reg, 'restart/me', 'v1')).digest, img.digest);

    await reg.kill();
    await reg.start();
    assert.equal(await headBlob(reg, 'restart/me', layer.digest), layer.size);

    // The registry serves the data file as it is on disk: corrupting it is visible to clients.
    const bytes = await readFile(dataPath);
    bytes[0] = (bytes[0]! + 1) % 256;
    await writeFile(dataPath, bytes);
    const res = await registryFetch(reg, `/v2/restart/me/blobs/${layer.digest}`);
    const served = Buffer.from(await res.arrayBuffer());
    assert.notEqual(sha256(served), layer.digest);

    const root = reg.rootDir;
    await reg.close();
    assert.equal(existsSync(root), false);
  });
});

describe('token auth', () => {
  const cleanup = new Cleanup();
  after(() => cleanup.run());
  const users = {
    pusher: { password: 'push-pw', actions: ['pull', 'push'] },
    reader: { password: 'read-pw' },
  };

  for (const variant of [
    { algorithm: 'RS256', keyHeader: 'kid' },
    { algorithm: 'ES256', keyHeader: 'x5c' },
  ] as const) {
    test(`${variant.algorithm} + ${variant.keyHeader}: push and pull with tokens; bad or no creds denied`, async () => {
      const ts = await startTokenServer({ users, ...variant });
      cleanup.defer(() => ts.stop());
      const reg = await startRegistry({ auth: { token: ts } });
      cleanup.defer(() => reg.close());

      const anon = await fetch(`${reg.url}/v2/`);
      assert.equal(anon.status, 401);
      assert.match(
        anon.headers.get('www-authenticate') ?? '',
        /^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/token"/,
      );

      const img = await pushImage(reg, {
        repository: 'tok/img',
        tag: 'v1',
        layers: [{ files: { 'hello.txt': 'hello' } }],
        creds: { username: 'pusher', password: 'push-pw' },
      });
      assert.ok(
        ts.log.some((r) => r.account === 'pusher' && r.granted.some((g) => g.actions.includes('push'))),
      );

      const before = ts.requests;
      const m = await getManifest(reg, 'tok/img', 'v1', {
        creds: { username: 'reader', password: 'read-pw' },
      });
      assert.equal(m.digest, img.digest);
      assert.ok(ts.requests > before);

      await assert.rejects(
        getManifest(reg, 'tok/img', 'v1', { creds: { username: 'reader', password: 'wrong' } }),
        /token endpoint answered 401/,
      );
      await assert.rejects(getManifest(reg, 'tok/img', 'v1', { creds: null }), /token endpoint answered 401/);

      // A reader's token does not allow pushing.
      const push = await registryFetch(reg, '/v2/tok/img/blobs/uploads/', {
        method: 'POST',
        creds: { username: 'reader', password: 'read-pw' },
        scope: 'repository:tok/img:pull,push',
      });
      assert.equal(push.status, 401);

      // Negative control: a well-formed token from a key the registry does not trust is refused.
      const other = await startTokenServer({ users, ...variant, service: ts.service, issuer: ts.issuer });
      cleanup.defer(() => other.stop());
      const tr = await fetch(`${other.realm}?service=${ts.service}&scope=repository:tok/img:pull`, {
        headers: { Authorization: `Basic ${Buffer.from('reader:read-pw').toString('base64')}` },
      });
      const { token } = (await tr.json()) as { token: string };
      const forged = await fetch(`${reg.url}/v2/tok/img/manifests/v1`, {
        headers: { Authorization: `Bearer ${token}` },
      });
      assert.equal(forged.status, 401);
    });
  }

  test('OAuth2 POST (grant_type=password, as containerd sends with credentials) issues a usable token', async () => {
    const ts = await startTokenServer({ users });
    cleanup.defer(() => ts.stop());
    const reg = await startRegistry({ auth: { token: ts } });
    cleanup.defer(() => reg.close());
    const img = await pushImage(reg, {
      repository: 'oauth/img',
      tag: 'v1',
      layers: [{ files: { a: 'a' } }],
      creds: { username: 'pusher', password: 'push-pw' },
    });
    const form = (password: string): URLSearchParams =>
      new URLSearchParams({
        grant_type: 'password',
        username: 'reader',
        password,
        service: ts.service,
        scope: 'repository:oauth/img:pull',
        client_id: 'selftest',
      });
    const bad = await fetch(ts.realm, { method: 'POST', body: form('wrong') });
    assert.equal(bad.status, 401);
    const tr = await fetch(ts.realm, { method: 'POST', body: form('read-pw') });
    assert.equal(tr.status, 200);
    const { access_token: token } = (await tr.json()) as { access_token: string };
    const res = await fetch(`${reg.url}/v2/oauth/img/manifests/v1`, {
      headers: { Authorization: `Bearer ${token}`, Accept: ALL_MANIFEST_TYPES },
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('docker-content-digest'), img.digest);
    assert.deepEqual(ts.log.at(-1)!.granted, [{ type: 'repository', name: 'oauth/img', actions: ['pull'] }]);
  });

  test('allowAnonymous grants pull only; a token with a JWK-thumbprint kid is refused', async () => {
    const ts = await startTokenServer({ users, allowAnonymous: true });
    cleanup.defer(() => ts.stop());
    const reg = await startRegistry({ auth: { token: ts } });
    cleanup.defer(() => reg.close());
    const img = await pushImage(reg, {
      repository: 'pub/img',
      tag: 'v1',
      layers: [{ files: { a: 'a' } }],
      creds: { username: 'pusher', password: 'push-pw' },
    });
    assert.equal((await getManifest(reg, 'pub/img', 'v1', { creds: null })).digest, img.digest);
    const push = await registryFetch(reg, '/v2/pub/img/blobs/uploads/', {
      method: 'POST',
      creds: null,
      scope: 'repository:pub/img:pull,push',
    });
    assert.equal(push.status, 401);

    // Shows why the kid must be libtrust's: same key, standard JOSE kid → refused.
    const { createPrivateKey } = await import('node:crypto');
    const keyPem = await readFile(join(ts.certPath, '..', 'signing-key.pem'));
    const now = Math.floor(Date.now() / 1000);
    const jwt = await new SignJWT({ access: [{ type: 'repository', name: 'pub/img', actions: ['pull'] }] })
      .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: 'not-a-libtrust-key-id' })
      .setIssuer(ts.issuer)
      .setAudience(ts.service)
      .setSubject('reader')
      .setIssuedAt(now)
      .setNotBefore(now)
      .setExpirationTime(now + 60)
      .setJti('x')
      .sign(createPrivateKey(keyPem));
    const res = await fetch(`${reg.url}/v2/pub/img/manifests/v1`, {
      headers: { Authorization: `Bearer ${jwt}` },
    });
    assert.equal(res.status, 401);
  });
});

describe('images', () => {
  const cleanup = new Cleanup();
  let reg: RegistryHandle;
  let work: string;
  before(async () => {
    reg = await startRegistry();
    cleanup.defer(() => reg.close());
    work = await makeTempDir('images-selftest', cleanup);
  });
  after(() => cleanup.run());

  test('OCI single image: files + random layer, read back from the registry', async () => {
    const img = await pushImage(reg, {
      repository: 'img/oci',
      tag: 'v1',
      mediaTypes: 'oci',
      layers: [
        { files: { 'etc/hello.txt': 'hello\n', 'bin/tool': Buffer.from([0, 1, 2]) } },
        { randomBytes: 5000, seed: 1 },
      ],
    });
    assert.equal(img.ref, `${reg.host}/img/oci:v1`);
    assert.equal(img.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    assert.equal(img.isIndex, false);
    assert.equal(img.manifests.length, 1);
    const m = img.manifests[0]!;
    assert.deepEqual(m.platform, amd64);
    assert.equal(m.digest, img.digest);
    assert.equal(m.config.mediaType, 'application/vnd.oci.image.config.v1+json');
    assert.deepEqual(
      m.layers.map((l) => l.mediaType),
      ['application/vnd.oci.image.layer.v1.tar', 'application/vnd.oci.image.layer.v1.tar'],
    );
    // Uncompressed layers: diff_id = layer digest.
    assert.deepEqual(
      m.diffIds,
      m.layers.map((l) => l.digest),
    );
    const layer0 = await getBlob(reg, 'img/oci', m.layers[0]!.digest);
    assert.equal(await fileFromLayer(layer0, 'etc/hello.txt', work), 'hello\n');
    const layer1 = await getBlob(reg, 'img/oci', m.layers[1]!.digest);
    const tarPath = join(work, 'random-layer.tar');
    await writeFile(tarPath, layer1);
    const { stdout } = await execFileP('tar', ['-tvf', tarPath]);
    assert.match(stdout, /^-rw-r--r-- root\/root\s+5000 2000-01-01 00:00 random\.bin$/m);
    assert.equal(m.layers[1]!.size, 512 + 5120 + 1024); // header + data padded to 512 + end blocks
  });

  test('seeded random layers are reproducible; unseeded ones are not', async () => {
    const build = (seed?: number): Promise<BuiltImage> =>
      buildImage({ layers: [seed === undefined ? { randomBytes: MiB } : { randomBytes: MiB, seed }] });
    const [a, b, c, d] = await Promise.all([build(3), build(3), build(4), build()]);
    try {
      assert.equal(a.digest, b.digest);
      assert.notEqual(a.manifests[0]!.layers[0]!.digest, c.manifests[0]!.layers[0]!.digest);
      assert.notEqual(a.manifests[0]!.layers[0]!.digest, d.manifests[0]!.layers[0]!.digest);
    } finally {
      await Promise.all([a, b, c, d].map((x) => x.remove()));
    }
  });

  test('OCI multi-arch index with buildx-style attestations', async () => {
    const img = await pushImage(reg, {
      repository: 'img/oci-multi',
      tag: 'v1',
      platforms: [amd64, arm64],
      attestation: true,
      layers: (p) => [{ files: { 'arch.txt': p.architecture } }],
    });
    assert.equal(img.mediaType, 'application/vnd.oci.image.index.v1+json');
    assert.equal(img.isIndex, true);
    assert.deepEqual(
      img.manifests.map((m) => m.platform),
      [amd64, arm64],
    );
    assert.notEqual(img.manifests[0]!.layers[0]!.digest, img.manifests[1]!.layers[0]!.digest);
    const arm = await getBlob(reg, 'img/oci-multi', img.manifests[1]!.layers[0]!.digest);
    assert.equal(await fileFromLayer(arm, 'arch.txt', work), 'arm64');

    assert.deepEqual(
      img.attestations.map((a) => a.refersTo),
      img.manifests.map((m) => m.digest),
    );
    const index = await getManifest(reg, 'img/oci-multi', 'v1');
    const entries = index.json.manifests as {
      platform: { os: string; architecture: string };
      annotations?: Record<string, string>;
    }[];
    assert.equal(entries.length, 4);
    const att = entries.filter((e) => e.platform.os === 'unknown' && e.platform.architecture === 'unknown');
    assert.equal(att.length, 2);
    for (const e of att) assert.equal(e.annotations?.['vnd.docker.reference.type'], 'attestation-manifest');
    assert.equal(img.attestations[0]!.layers[0]!.mediaType, 'application/vnd.in-toto+json');
  });

  test('Docker schema2 single image: docker media types in the registry, gzip layer', async () => {
    const img = await pushImage(reg, {
      repository: 'img/docker',
      tag: 'v1',
      mediaTypes: 'docker',
      layers: [{ files: { 'hello.txt': 'hello docker\n' } }],
    });
    assert.equal(img.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    const m = img.manifests[0]!;
    assert.equal(m.config.mediaType, 'application/vnd.docker.container.image.v1+json');
    assert.equal(m.layers[0]!.mediaType, 'application/vnd.docker.image.rootfs.diff.tar.gzip');
    const gz = await getBlob(reg, 'img/docker', m.layers[0]!.digest);
    const tar = gunzipSync(gz);
    assert.equal(sha256(tar), m.diffIds[0]);
    assert.equal(await fileFromLayer(tar, 'hello.txt', work), 'hello docker\n');
    const raw = await getManifest(reg, 'img/docker', img.digest);
    assert.equal(raw.json.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
  });

  test('Docker manifest list', async () => {
    const img = await pushImage(reg, {
      repository: 'img/docker-list',
      tag: 'v1',
      mediaTypes: 'docker',
      platforms: [amd64, arm64],
      layers: [{ files: { 'hello.txt': 'hi' } }, { randomBytes: 3000 }],
    });
    assert.equal(img.mediaType, 'application/vnd.docker.distribution.manifest.list.v2+json');
    assert.equal(img.manifests.length, 2);
    for (const m of img.manifests) {
      assert.equal(m.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
      assert.equal(m.layers.length, 2);
      // The same layer specs are shared by both platforms, so the blobs are too.
      assert.deepEqual(m.layers, img.manifests[0]!.layers);
    }
    const gz = await getBlob(reg, 'img/docker-list', img.manifests[0]!.layers[1]!.digest);
    assert.equal(sha256(gunzipSync(gz)), img.manifests[0]!.diffIds[1]);
  });

  test('one 256 MiB random layer: built streaming, pushed, stored intact', async () => {
    const built = await buildImage({ layers: [{ randomBytes: 256 * MiB, seed: 256 }] });
    cleanup.defer(() => built.remove());
    const img = await pushBuiltImage(reg, built, { repository: 'img/big', tag: 'v1' });
    const layer = img.manifests[0]!.layers[0]!;
    assert.equal(layer.size, 512 + 256 * MiB + 1024);
    assert.equal(layer.digest, built.manifests[0]!.layers[0]!.digest);
    assert.equal(await sha256File(reg.blobDataPath(layer.digest)), layer.digest);
    // The same layout pushes again (e.g. to a second registry) without rebuilding.
    const again = await pushBuiltImage(reg, built, { repository: 'img/big-copy', tag: 'v1' });
    assert.equal(again.digest, img.digest);
  });
});

describe('fault proxy', () => {
  const cleanup = new Cleanup();
  let reg: RegistryHandle;
  let img: PushedImage;
  let blobPath: string;
  let layerDigest: string;
  let layerSize: number;
  before(async () => {
    reg = await startRegistry({ auth: { htpasswd: { username: 'u', password: 'p' } } });
    cleanup.defer(() => reg.close());
    img = await pushImage(reg, {
      repository: 'fp/img',
      tag: 'v1',
      layers: [{ randomBytes: 200_000, seed: 9 }],
    });
    layerDigest = img.manifests[0]!.layers[0]!.digest;
    layerSize = img.manifests[0]!.layers[0]!.size;
    blobPath = `/v2/fp/img/blobs/${layerDigest}`;
  });
  after(() => cleanup.run());

  const startProxy = async () => {
    const proxy = await startFaultProxy({ upstream: reg });
    cleanup.defer(() => proxy.stop());
    return proxy;
  };

  test('passes through (auth included) and counts', async () => {
    const proxy = await startProxy();
    assert.equal(proxy.credentials, reg.credentials);
    const m = await getManifest(proxy, 'fp/img', 'v1');
    assert.equal(m.digest, img.digest);
    const body = await getBlob(proxy, 'fp/img', layerDigest);
    assert.equal(body.length, layerSize);
    assert.equal(proxy.stats.requests.get(blobPath), 2); // 401 challenge, then authorized GET
    assert.ok((proxy.stats.bytesSent.get(blobPath) ?? 0) >= layerSize);
    // Pushing through the proxy works too (upload Location points back at the proxy).
    const pushed = await pushImage(proxy, {
      repository: 'fp/via-proxy',
      tag: 'v1',
      layers: [{ files: { a: 'b' } }],
    });
    assert.equal((await getManifest(reg, 'fp/via-proxy', 'v1')).digest, pushed.digest);
  });

  test('429 with Retry-After for the first N matching requests, then pass-through', async () => {
    const proxy = await startProxy();
    const rule = { method: 'GET', path: /\/manifests\//, status: 429, retryAfterSeconds: 1, times: 2 };
    proxy.rules.fail.push(rule);
    // distribution 2.8 answers 404 for an OCI manifest unless the client accepts its type.
    const auth = {
      Authorization: `Basic ${Buffer.from('u:p').toString('base64')}`,
      Accept: ALL_MANIFEST_TYPES,
    };
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${proxy.url}/v2/fp/img/manifests/v1`, { headers: auth });
      await res.arrayBuffer();
      statuses.push(res.status);
      if (res.status === 429) assert.equal(res.headers.get('retry-after'), '1');
    }
    assert.deepEqual(statuses, [429, 429, 200]);
    assert.equal(proxy.rules.fail[0]!.hits, 2);
    // HEAD does not match a GET-only rule.
    const head = await fetch(`${proxy.url}/v2/fp/img/manifests/v1`, { method: 'HEAD', headers: auth });
    assert.equal(head.status, 200);
    assert.equal(proxy.count(/\/manifests\//), 4);
    proxy.resetStats();
    assert.equal(proxy.rules.fail[0]!.hits, 0);
    assert.equal(proxy.count(/./), 0);
  });

  test('ignoreRange: upstream answers 200 with the whole blob; Range headers are recorded', async () => {
    const proxy = await startProxy();
    const headers = { Range: 'bytes=0-9' };
    const ranged = await registryFetch(proxy, blobPath, { headers });
    assert.equal(ranged.status, 206);
    assert.equal((await ranged.arrayBuffer()).byteLength, 10);
    proxy.rules.ignoreRange = true;
    const full = await registryFetch(proxy, blobPath, { headers });
    assert.equal(full.status, 200);
    assert.equal(sha256(Buffer.from(await full.arrayBuffer())), layerDigest);
    assert.deepEqual(
      proxy.stats.ranges.map((r) => r.range),
      ['bytes=0-9', 'bytes=0-9', 'bytes=0-9', 'bytes=0-9'], // each: 401 challenge, then authorized
    );
  });

  test('redirectBlobsTo: 307 to blob storage, which serves the blob and records headers', async () => {
    const proxy = await startProxy();
    proxy.rules.redirectBlobsTo = proxy.blobStorage.url;
    // Auth is still enforced before redirecting.
    const anon = await registryFetch(proxy, blobPath, { creds: null });
    assert.equal(anon.status, 401);

    const res = await registryFetch(proxy, blobPath);
    assert.equal(res.status, 307);
    const location = res.headers.get('location')!;
    assert.ok(location.startsWith(`${proxy.blobStorage.url}/storage/fp/img/${layerDigest}?`));

    const clean = await fetch(location);
    assert.equal(sha256(Buffer.from(await clean.arrayBuffer())), layerDigest);
    const ranged = await fetch(location, { headers: { Range: 'bytes=100-199' } });
    assert.equal(ranged.status, 206);
    assert.equal((await ranged.arrayBuffer()).byteLength, 100);
    // A client that (wrongly) forwards Authorization is caught by the recorded headers.
    const leaky = await fetch(location, { headers: { Authorization: 'Basic leaked' } });
    await leaky.arrayBuffer();
    assert.deepEqual(
      proxy.blobStorage.requests.map((r) => [
        r.status,
        r.headers.authorization ?? null,
        r.headers.range ?? null,
      ]),
      [
        [200, null, null],
        [206, null, 'bytes=100-199'],
        [200, 'Basic leaked', null],
      ],
    );
    // Node's fetch follows the redirect and drops Authorization across origins.
    proxy.blobStorage.requests.length = 0;
    const followed = await fetch(`${proxy.url}${blobPath}`, {
      headers: { Authorization: `Basic ${Buffer.from('u:p').toString('base64')}` },
    });
    assert.equal(sha256(Buffer.from(await followed.arrayBuffer())), layerDigest);
    assert.equal(proxy.blobStorage.requests.length, 1);
    assert.equal(proxy.blobStorage.requests[0]!.headers.authorization, undefined);
  });

  test('cutAfterBytes: the connection dies after N body bytes, once', async () => {
    const proxy = await startProxy();
    proxy.rules.cutAfterBytes = { path: /\/blobs\//, bytes: 1000, times: 1 };
    const received = await new Promise<{ bytes: number; error: boolean; status: number }>((resolve) => {
      const auth = `Basic ${Buffer.from('u:p').toString('base64')}`;
      const req = get(`${proxy.url}${blobPath}`, { headers: { Authorization: auth } }, (res) => {
        let bytes = 0;
        res.on('data', (c: Buffer) => {
          bytes += c.length;
        });
        res.on('end', () => resolve({ bytes, error: false, status: res.statusCode ?? 0 }));
        res.on('error', () => resolve({ bytes, error: true, status: res.statusCode ?? 0 }));
        res.on('aborted', () => resolve({ bytes, error: true, status: res.statusCode ?? 0 }));
      });
      req.on('error', () => resolve({ bytes: -1, error: true, status: 0 }));
    });
    assert.deepEqual(received, { bytes: 1000, error: true, status: 200 });
    assert.equal(proxy.stats.bytesSent.get(blobPath), 1000);
    assert.equal(proxy.stats.log.at(-1)!.fault, 'cut');
    // times: 1 → the next download is whole.
    assert.equal((await getBlob(proxy, 'fp/img', layerDigest)).length, layerSize);
  });
});

describe('redis', () => {
  const cleanup = new Cleanup();
  after(() => cleanup.run());

  const roundTrip = async (appendonly: boolean): Promise<string | null> => {
    const redis = await startRedis({ appendonly });
    cleanup.defer(() => redis.close());
    const client = new Redis(redis.port, redis.host, { maxRetriesPerRequest: null, lazyConnect: true });
    await client.connect();
    await client.set('kube-prewarm:selftest', 'kept');
    client.disconnect();
    await redis.stop();
    await redis.start();
    const again = new Redis(redis.url, { maxRetriesPerRequest: null, lazyConnect: true });
    await again.connect();
    try {
      return await again.get('kube-prewarm:selftest');
    } finally {
      again.disconnect();
    }
  };

  test('restart with AOF keeps a key', async () => {
    assert.equal(await roundTrip(true), 'kept');
  });

  test('restart without AOF (and no RDB) loses it: the AOF test can fail', async () => {
    assert.equal(await roundTrip(false), null);
  });

  test('kill() is a crash; start() brings it back on the same port', async () => {
    const redis = await startRedis();
    cleanup.defer(() => redis.close());
    const pid = redis.process!.pid;
    await redis.kill();
    assert.equal(redis.process, undefined);
    await redis.start();
    assert.notEqual(redis.process!.pid, pid);
    const c = new Redis(redis.port, '127.0.0.1', { maxRetriesPerRequest: null, lazyConnect: true });
    await c.connect();
    assert.equal(await c.ping(), 'PONG');
    c.disconnect();
  });
});
