/**
 * The registry client under an egress policy, against the real registry (Debian
 * `docker-registry`) behind the harness fault proxy, and small real HTTP servers standing
 * in for internal services (one on 127.0.0.2, a loopback address that is not the
 * registry's host). Each case is an attack that worked before: the internal server's
 * request count shows the client never reached it, and a control case shows the same
 * request does work where the policy allows it.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { StaticCredentials } from '../../oci/src/auth.js';
import { RegistryClient } from '../../oci/src/client.js';
import type { Digest } from '../../oci/src/digest.js';
import { EgressPolicy } from '../../oci/src/egress-policy.js';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';
import { parseReference } from '../../oci/src/reference.js';
import {
  Cleanup,
  type FaultProxyHandle,
  type PushedImage,
  pushImage,
  type RegistryHandle,
  startFaultProxy,
  startRegistry,
} from '../harness/index.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

interface Internal {
  url: string;
  host: string;
  hits: string[];
}

/** A real server on `address` that records every request (an internal service to be protected). */
async function internalServer(
  address: string,
  handler: (req: IncomingMessage, res: ServerResponse) => void = (_q, r) => r.end('secret'),
): Promise<Internal> {
  const hits: string[] = [];
  const server: Server = createServer((req, res) => {
    hits.push(`${req.method} ${req.url}`);
    handler(req, res);
  });
  await new Promise<void>((r) => server.listen(0, address, () => r()));
  cleanup.defer(() => new Promise<void>((r) => server.close(() => r())));
  const port = (server.address() as AddressInfo).port;
  return { url: `http://${address}:${port}`, host: `${address}:${port}`, hits };
}

const denied = (reason: string) => (e: unknown) =>
  isPrewarmError(e, ErrorCodes.EGRESS_DENIED) && e.detail?.reason === reason;

let registry: RegistryHandle;
let proxy: FaultProxyHandle;
let img: PushedImage;

before(async () => {
  registry = await startRegistry();
  cleanup.defer(() => registry.close());
  proxy = await startFaultProxy({ upstream: registry });
  cleanup.defer(() => proxy.stop());
  img = await pushImage(registry, {
    repository: 'egress/app',
    tag: 'v1',
    layers: [{ randomBytes: 64 * 1024, seed: 7 }],
  });
});

function client(policy: EgressPolicy): RegistryClient {
  const c = new RegistryClient({ egress: policy, retry: { attempts: 1 } });
  cleanup.defer(() => c.close());
  return c;
}

async function readBlob(c: RegistryClient, digest: string): Promise<Buffer> {
  const res = await c.blob({ registry: proxy.host, repository: 'egress/app', digest: digest as Digest });
  const parts: Buffer[] = [];
  for await (const chunk of res.body) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

describe('registries', () => {
  test('a registry on loopback is refused under _default, before any request; listed explicitly it works', async () => {
    proxy.resetStats();
    const strict = client(new EgressPolicy({ allowedRegistries: ['_default'] }));
    await assert.rejects(
      strict.resolve(parseReference(`${proxy.host}/egress/app:v1`)),
      denied('registry-not-allowed'),
    );
    assert.equal(proxy.stats.log.length, 0, 'nothing reached the registry');
    const explicit = client(new EgressPolicy({ allowedRegistries: [proxy.host] }));
    const got = await explicit.resolve(parseReference(`${proxy.host}/egress/app:v1`));
    assert.equal(got.digest, img.digest);
  });

  test('another port of an allowed loopback host (an internal service) is refused', async () => {
    const svc = await internalServer('127.0.0.1');
    const c = client(new EgressPolicy({ allowedRegistries: [proxy.host] }));
    await assert.rejects(c.resolve(parseReference(`${svc.host}/x:v1`)), denied('registry-not-allowed'));
    assert.deepEqual(svc.hits, []);
  });

  test('a public-looking name that resolves to 127.0.0.1 is refused when connecting', async () => {
    const port = new URL(proxy.url).port;
    const c = client(
      new EgressPolicy({
        allowedRegistries: ['_default'],
        // What a DNS record pointing a public name at 127.0.0.1 answers.
        resolve: async () => [{ address: '127.0.0.1', family: 4 }],
      }),
    );
    proxy.resetStats();
    await assert.rejects(
      c.resolve(parseReference(`registry.example.test:${port}/egress/app:v1`)),
      denied('address-not-allowed'),
    );
    assert.equal(proxy.stats.log.length, 0, 'no connection reached the registry');
  });

  test('loopback is spoken to over plain HTTP only when listed explicitly', () => {
    const strict = client(new EgressPolicy({ allowedRegistries: ['_default'] }));
    assert.equal(strict.baseUrl('127.0.0.1:5000'), 'https://127.0.0.1:5000');
    const explicit = client(new EgressPolicy({ allowedRegistries: ['127.0.0.1:5000'] }));
    assert.equal(explicit.baseUrl('127.0.0.1:5000'), 'http://127.0.0.1:5000');
    assert.equal(explicit.baseUrl('docker.io'), 'https://registry-1.docker.io');
  });
});

describe('redirects', () => {
  test('a blob redirect to the blob storage on the registry host is followed and the bytes verify', async () => {
    proxy.rules.redirectBlobsTo = proxy.blobStorage.url;
    try {
      proxy.resetStats();
      const c = client(new EgressPolicy({ allowedRegistries: [proxy.host] }));
      const layer = img.manifests[0]!.layers[0]!;
      const body = await readBlob(c, layer.digest);
      assert.equal(`sha256:${createHash('sha256').update(body).digest('hex')}`, layer.digest);
      assert.ok(proxy.blobStorage.requests.length >= 1, 'the redirect was followed');
    } finally {
      proxy.rules.redirectBlobsTo = null;
    }
  });

  test('a blob redirect to another loopback host is refused; that host sees no request', async () => {
    const svc = await internalServer('127.0.0.2');
    proxy.rules.redirectBlobsTo = svc.url;
    try {
      const c = client(new EgressPolicy({ allowedRegistries: [proxy.host] }));
      await assert.rejects(
        readBlob(c, img.manifests[0]!.layers[0]!.digest),
        (e: unknown) => denied('redirect-not-allowed')(e) && /loopback address/.test((e as Error).message),
      );
      assert.deepEqual(svc.hits, []);
      // The unrestricted client refuses it too: the follow rules hold for every client.
      await assert.rejects(
        readBlob(client(EgressPolicy.permissive()), img.manifests[0]!.layers[0]!.digest),
        denied('redirect-not-allowed'),
      );
      assert.deepEqual(svc.hits, []);
    } finally {
      proxy.rules.redirectBlobsTo = null;
    }
  });

  test('a manifest redirect to another host is refused', async () => {
    const target = await internalServer('127.0.0.2');
    // A registry that answers every manifest with a redirect elsewhere.
    const evil = await internalServer('127.0.0.1', (req, res) => {
      res.writeHead(307, { Location: `${target.url}${req.url}` });
      res.end();
    });
    const c = client(new EgressPolicy({ allowedRegistries: [evil.host] }));
    await assert.rejects(
      c.fetchManifest(parseReference(`${evil.host}/x:v1`)),
      denied('redirect-not-allowed'),
    );
    assert.equal(evil.hits.length, 1);
    assert.deepEqual(target.hits, []);
  });

  test('a bearer realm on an internal address is not fetched (no credentials sent there)', async () => {
    const realm = await internalServer('127.0.0.2', (_q, r) => r.end('{"token":"t"}'));
    const evil = await internalServer('127.0.0.1', (_req, res) => {
      res.writeHead(401, { 'WWW-Authenticate': `Bearer realm="${realm.url}/token",service="x"` });
      res.end();
    });
    const c = new RegistryClient({
      egress: new EgressPolicy({ allowedRegistries: [evil.host] }),
      credentials: new StaticCredentials().set(evil.host, { username: 'u', password: 'p' }),
      retry: { attempts: 1 },
    });
    cleanup.defer(() => c.close());
    await assert.rejects(c.resolve(parseReference(`${evil.host}/x:v1`)), denied('redirect-not-allowed'));
    assert.deepEqual(realm.hits, []);
  });
});
