/**
 * The egress policy (oci/src/egress-policy.ts): host parsing in the URL parser's canonical
 * form (IPv4 written in decimal, octal, hex or short form; IPv6 including IPv4-mapped;
 * trailing dots; ports), address classes, the allow-list with `_default`, plain HTTP, the
 * follow rules for redirects and token realms, and the connect-time check through a real
 * undici Agent against a real server on 127.0.0.1 (names resolved by the system resolver).
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { Agent, request } from 'undici';
import {
  type AddressClass,
  classifyAddress,
  classifyHost,
  EgressPolicy,
  parseHost,
} from '../../oci/src/egress-policy.js';
import { ErrorCodes, isPrewarmError, PrewarmError } from '../../oci/src/errors.js';

const isDenied = (reason: string) => (e: unknown) =>
  isPrewarmError(e, ErrorCodes.EGRESS_DENIED) && e.detail?.reason === reason && e.retryable === false;

describe('parseHost: the canonical form undici connects to', () => {
  const cases: [string, string | undefined, number | undefined][] = [
    ['registry.example.com', 'registry.example.com', undefined],
    ['Registry.Example.COM:5000', 'registry.example.com', 5000],
    ['registry.example.com.', 'registry.example.com', undefined],
    ['registry.example.com.:443', 'registry.example.com', 443],
    ['127.0.0.1:5000', '127.0.0.1', 5000],
    ['127.0.0.1.', '127.0.0.1', undefined],
    ['2130706433', '127.0.0.1', undefined],
    ['2130706433:80', '127.0.0.1', 80],
    ['0177.0.0.1', '127.0.0.1', undefined],
    ['0x7f.1', '127.0.0.1', undefined],
    ['127.1', '127.0.0.1', undefined],
    ['017700000001', '127.0.0.1', undefined],
    ['0xa9fea9fe', '169.254.169.254', undefined],
    ['[::1]', '[::1]', undefined],
    ['[::1]:5000', '[::1]', 5000],
    ['[::FFFF:127.0.0.1]:5000', '[::ffff:7f00:1]', 5000],
    ['[0:0:0:0:0:0:0:1]', '[::1]', undefined],
    ['LOCALHOST.', 'localhost', undefined],
  ];
  for (const [input, hostname, port] of cases) {
    test(`${input} → ${hostname}${port === undefined ? '' : `:${port}`}`, () =>
      assert.deepEqual(parseHost(input), { hostname, port }));
  }
  for (const bad of [
    '',
    '::1',
    'a/b',
    'user@host',
    'host?x',
    'h%2e',
    'host:0',
    'host:65536',
    'host:99999',
    'a b',
    '[::1',
    'host..',
  ]) {
    test(`refuses ${JSON.stringify(bad)}`, () => assert.equal(parseHost(bad), undefined));
  }
});

describe('address classes', () => {
  const cases: [string, AddressClass][] = [
    ['8.8.8.8', 'public'],
    ['1.1.1.1', 'public'],
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['0.0.0.0', 'unspecified'],
    ['10.1.2.3', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['172.32.0.1', 'public'],
    ['192.168.1.1', 'private'],
    ['100.64.0.1', 'private'],
    ['169.254.1.1', 'link-local'],
    ['169.254.169.254', 'metadata'],
    ['169.254.170.2', 'metadata'],
    ['100.100.100.200', 'metadata'],
    ['168.63.129.16', 'metadata'],
    ['224.0.0.1', 'multicast'],
    ['255.255.255.255', 'reserved'],
    ['198.18.0.1', 'reserved'],
    ['::1', 'loopback'],
    ['[::1]', 'loopback'],
    ['::', 'unspecified'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['[::ffff:a9fe:a9fe]', 'metadata'],
    ['::ffff:8.8.8.8', 'public'],
    ['::127.0.0.1', 'reserved'],
    ['64:ff9b::10.0.0.1', 'private'],
    ['64:ff9b::8.8.8.8', 'public'],
    ['2002:7f00:1::', 'loopback'],
    ['2002:808:808::1', 'public'],
    ['fd00::1', 'private'],
    ['fc00::1', 'private'],
    ['fd00:ec2::254', 'metadata'],
    ['fe80::1', 'link-local'],
    ['fe80::1%eth0', 'link-local'],
    ['fec0::1', 'private'],
    ['ff02::1', 'multicast'],
    ['2001:db8::1', 'reserved'],
    ['2001:4860:4860::8888', 'public'],
    ['2606:4700:4700::1111', 'public'],
    ['not-an-ip', 'reserved'],
  ];
  for (const [address, cls] of cases)
    test(`${address} is ${cls}`, () => assert.equal(classifyAddress(address), cls));

  test('host names: localhost is loopback by name, other names are resolved later', () => {
    assert.equal(classifyHost('localhost'), 'loopback');
    assert.equal(classifyHost('registry.localhost'), 'loopback');
    assert.equal(classifyHost('registry.example.com'), 'name');
    assert.equal(classifyHost('[::1]'), 'loopback');
    assert.equal(classifyHost(parseHost('0x7f.1')!.hostname), 'loopback');
  });
});

describe('the allow-list', () => {
  test('_default allows public registries and refuses every special address, however written', () => {
    const p = new EgressPolicy({ allowedRegistries: ['_default'] });
    for (const ok of ['docker.io', 'ghcr.io', 'registry.example.com:5000', '8.8.8.8', '[2606:4700::1]:443'])
      assert.ok(p.allowsRegistry(ok), ok);
    for (const bad of [
      '127.0.0.1:5000',
      '2130706433:5000',
      '0177.0.0.1',
      '0x7f.1:5000',
      '127.1',
      '127.0.0.1.',
      'localhost:5000',
      'LOCALHOST.',
      '[::1]:5000',
      '[::ffff:127.0.0.1]',
      '169.254.169.254',
      '0xa9fea9fe',
      '[fd00:ec2::254]',
      '10.0.0.1:5000',
      '192.168.0.1',
      '0.0.0.0:5000',
      '[fe80::1]',
      'not a host',
    ]) {
      assert.equal(p.allowsRegistry(bad), false, bad);
      assert.throws(() => p.assertRegistry(bad), isDenied('registry-not-allowed'), bad);
    }
  });

  test('explicit entries: with a port only that port, without a port every port', () => {
    const p = new EgressPolicy({
      allowedRegistries: ['127.0.0.1:5000', 'registry.internal', '[fd00::5]:80'],
    });
    assert.ok(p.allowsRegistry('127.0.0.1:5000'));
    assert.ok(p.allowsRegistry('2130706433:5000'), 'the same address written in decimal');
    assert.equal(p.allowsRegistry('127.0.0.1:6379'), false, 'another port of an allowed address');
    assert.equal(p.allowsRegistry('127.0.0.1'), false);
    assert.ok(p.allowsRegistry('registry.internal:8443'));
    assert.ok(p.allowsRegistry('registry.internal.'));
    assert.ok(p.allowsRegistry('[fd00:0::5]:80'));
    assert.equal(p.allowsRegistry('docker.io'), false, 'no _default: nothing else');
  });

  test('unrestricted allows everything; invalid entries are a config error naming them', () => {
    assert.ok(EgressPolicy.permissive().allowsRegistry('127.0.0.1:6379'));
    assert.throws(
      () => new EgressPolicy({ allowedRegistries: ['_default', 'a/b', '*'] }),
      (e: unknown) =>
        e instanceof PrewarmError &&
        e.code === ErrorCodes.INVALID_CONFIG &&
        /"a\/b"/.test(e.message) &&
        /"\*"/.test(e.message),
    );
  });

  test('plain HTTP: configured hosts, and loopback only when listed explicitly', () => {
    const p = new EgressPolicy({
      allowedRegistries: ['_default', '127.0.0.1:5000'],
      plainHttp: ['registry.internal:5000'],
    });
    assert.ok(p.plainHttp('127.0.0.1:5000'));
    assert.equal(p.plainHttp('127.0.0.1:5001'), false);
    assert.ok(p.plainHttp('registry.internal:5000'));
    assert.equal(p.plainHttp('registry.internal'), false);
    assert.equal(p.plainHttp('registry-1.docker.io'), false);
    assert.equal(new EgressPolicy({ allowedRegistries: ['_default'] }).plainHttp('localhost:5000'), false);
    // Unrestricted keeps the old default (loopback), or the function given.
    assert.ok(EgressPolicy.permissive().plainHttp('localhost:5000'));
    assert.equal(EgressPolicy.permissive(() => false).plainHttp('127.0.0.1:5000'), false);
  });
});

describe('following redirects and token realms', () => {
  const p = new EgressPolicy({ allowedRegistries: ['_default', '127.0.0.1:5000'] });
  const https = new URL('https://registry.example.com/');
  const loop = new URL('http://127.0.0.1:5000/');
  test('blob redirects to public storage are followed; to special addresses they are not', () => {
    p.assertFollow(https, new URL('https://bucket.s3.amazonaws.com/x?sig=1'), 'blob-redirect');
    p.assertFollow(https, new URL('https://8.8.8.8/x'), 'blob-redirect');
    for (const bad of [
      'http://127.0.0.1:8080/x',
      'https://2130706433/x',
      'https://[::ffff:7f00:1]/x',
      'https://169.254.169.254/latest/meta-data/',
      'https://0xa9fea9fe/',
      'https://[fd00:ec2::254]/',
      'https://10.0.0.1/x',
      'https://localhost./x',
    ])
      assert.throws(
        () => p.assertFollow(https, new URL(bad), 'blob-redirect'),
        isDenied(bad.startsWith('http:') ? 'plain-http-not-allowed' : 'redirect-not-allowed'),
        bad,
      );
    assert.throws(
      () => p.assertFollow(https, new URL('file:///etc/passwd'), 'blob-redirect'),
      isDenied('redirect-not-allowed'),
    );
    assert.throws(
      () => p.assertFollow(https, new URL('https://u:p@cdn.example.com/'), 'blob-redirect'),
      isDenied('redirect-not-allowed'),
    );
  });
  test('a registry configured at a special address may redirect to that same host only', () => {
    p.assertFollow(loop, new URL('http://127.0.0.1:6000/storage/x'), 'blob-redirect');
    assert.throws(
      () => p.assertFollow(loop, new URL('http://127.0.0.2:6000/x'), 'blob-redirect'),
      isDenied('redirect-not-allowed'),
    );
    assert.throws(
      () => p.assertFollow(loop, new URL('http://169.254.169.254/'), 'token-realm'),
      isDenied('redirect-not-allowed'),
    );
  });
  test('manifest redirects never leave the registry host; https is never left for http', () => {
    p.assertFollow(https, new URL('https://registry.example.com/v2/x/manifests/y'), 'manifest-redirect');
    assert.throws(
      () => p.assertFollow(https, new URL('https://cdn.example.com/m'), 'manifest-redirect'),
      isDenied('redirect-not-allowed'),
    );
    assert.throws(
      () => p.assertFollow(https, new URL('http://cdn.example.com/b'), 'blob-redirect'),
      isDenied('plain-http-not-allowed'),
    );
    // A plain-HTTP registry may redirect to plain HTTP.
    p.assertFollow(loop, new URL('http://cdn.example.com/b'), 'blob-redirect');
  });
});

describe('connect-time check (real undici Agent, real server on 127.0.0.1)', () => {
  let server: Server;
  let port: number;
  let hits = 0;
  before(async () => {
    server = createServer((_req, res) => {
      hits++;
      res.end('internal service');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    port = (server.address() as AddressInfo).port;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  async function get(policy: EgressPolicy, url: string): Promise<unknown> {
    const agent = new Agent({ connect: policy.connector({ timeout: 5_000 }) });
    try {
      const res = await request(url, { dispatcher: agent });
      await res.body.dump();
      return res.statusCode;
    } catch (err) {
      return err;
    } finally {
      await agent.close();
    }
  }

  test('a name the system resolver maps to 127.0.0.1 is refused; listed explicitly it connects', async () => {
    const before = hits;
    const refused = await get(
      new EgressPolicy({ allowedRegistries: ['_default'] }),
      `http://localhost:${port}/`,
    );
    assert.ok(isDenied('address-not-allowed')(refused), `got ${String(refused)}`);
    assert.match((refused as Error).message, /resolves to 127\.0\.0\.1/);
    assert.equal(hits, before, 'the internal server saw no request');
    const ok = await get(new EgressPolicy({ allowedRegistries: ['localhost'] }), `http://localhost:${port}/`);
    assert.equal(ok, 200);
    assert.equal(hits, before + 1);
  });

  test('an IP literal in a special range is refused before connecting, in any spelling', async () => {
    const before = hits;
    const p = new EgressPolicy({ allowedRegistries: ['_default'] });
    for (const host of ['127.0.0.1', '2130706433', '0x7f.0.0.1', '[::ffff:127.0.0.1]']) {
      const refused = await get(p, `http://${host}:${port}/`);
      assert.ok(isDenied('address-not-allowed')(refused), `${host}: ${String(refused)}`);
    }
    assert.equal(hits, before);
  });

  test('a resolver answer that mixes public and internal addresses is refused', async () => {
    const before = hits;
    const p = new EgressPolicy({
      allowedRegistries: ['_default'],
      resolve: async () => [
        { address: '8.8.8.8', family: 4 },
        { address: '127.0.0.1', family: 4 },
      ],
    });
    const refused = await get(p, `http://registry.example.test:${port}/`);
    assert.ok(isDenied('address-not-allowed')(refused), String(refused));
    assert.equal(hits, before);
  });
});
