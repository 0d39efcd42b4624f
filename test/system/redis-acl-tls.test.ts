/**
 * TLS to Redis (issue 11): Debian's redis-server with `--tls-port`, certificates made by
 * openssl for this run (a CA, a server certificate for `localhost` only, a client
 * certificate, and an unrelated CA), client certificates required, and the chart's ACL
 * users. The agent's connection code (agent/src/daemon/redis-options.ts) and the
 * operator's and receiver's (operator/src/redis-connection.ts) must verify the server
 * against the configured CA and the URL's host and present the client certificate; a real
 * agent warms an image over it, and the real receiver process becomes ready over it only
 * with the CA.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { Redis, type RedisOptions } from 'ioredis';
import { type RedisTlsFiles, redisOptionsFromUrl } from '../../agent/src/daemon/redis-options.js';
import { redisConnectionOptions } from '../../operator/src/redis-connection.js';
import { enqueue, startAgent, waitForJobEnd } from '../agent/daemon-fixtures.js';
import { pushImage } from '../harness/images.js';
import { REPO_ROOT } from '../harness/kube.js';
import { spawnProcess } from '../harness/process.js';
import { type RegistryHandle, startRegistry } from '../harness/registry.js';
import { Cleanup, freePort, makeTempDir } from '../harness/tmp.js';
import { eventually } from '../operator/env.js';
import { startReceiver } from '../operator/webhooks/receiver-process.js';
import { type ChartRedis, startChartRedis } from './redis-acl-fixtures.js';

const execFileP = promisify(execFile);
/** Node's words for a server certificate that no trusted CA signed. */
const UNTRUSTED =
  /self-signed certificate in certificate chain|unable to verify the first certificate|unable to get local issuer certificate/;

interface Pki {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A CA that signed nothing here. */
  otherCa: string;
}

/** A CA, a server certificate for DNS:localhost (no IP), a client certificate, and an unrelated CA. */
async function makePki(dir: string): Promise<Pki> {
  const ssl = (...args: string[]) => execFileP('openssl', args, { cwd: dir });
  const p = (f: string) => join(dir, f);
  for (const ca of ['ca', 'other-ca'])
    await ssl(
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '2',
      '-subj',
      `/CN=kube-prewarm test ${ca}`,
      '-keyout',
      p(`${ca}.key`),
      '-out',
      p(`${ca}.crt`),
    );
  const leaf = async (name: string, ext: string) => {
    await writeFile(p(`${name}.ext`), ext);
    await ssl(
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      `/CN=${name}`,
      '-keyout',
      p(`${name}.key`),
      '-out',
      p(`${name}.csr`),
    );
    await ssl(
      'x509',
      '-req',
      '-in',
      p(`${name}.csr`),
      '-CA',
      p('ca.crt'),
      '-CAkey',
      p('ca.key'),
      '-CAcreateserial',
      '-days',
      '2',
      '-extfile',
      p(`${name}.ext`),
      '-out',
      p(`${name}.crt`),
    );
  };
  await leaf('server', 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n');
  await leaf('client', 'extendedKeyUsage=clientAuth\n');
  return {
    ca: p('ca.crt'),
    serverCert: p('server.crt'),
    serverKey: p('server.key'),
    clientCert: p('client.crt'),
    clientKey: p('client.key'),
    otherCa: p('other-ca.crt'),
  };
}

/**
 * Connects once with `options` (no reconnects) and PINGs: 'PONG', or the error that ended
 * the attempt (TLS verification, a refused client certificate, ...).
 */
async function pingOnce(options: RedisOptions): Promise<string> {
  const client = new Redis({
    ...options,
    lazyConnect: true,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
  });
  let lastError = '';
  client.on('error', (err: Error) => {
    lastError ||= err.message;
  });
  try {
    await client.connect();
    return await client.ping();
  } catch (err) {
    return lastError || (err as Error).message;
  } finally {
    client.disconnect();
  }
}

describe('TLS to Redis: the CA, the host name and the client certificate', () => {
  const cleanup = new Cleanup();
  let pki: Pki;
  let r: ChartRedis;
  let registry: RegistryHandle;
  let dir = '';
  /** The agent user's URL by host name (the only name in the server's certificate). */
  let agentUrl = '';
  let operatorUrl = '';

  before(async () => {
    dir = await makeTempDir('redis-tls', cleanup);
    pki = await makePki(dir);
    r = await startChartRedis(cleanup, {
      tls: {
        certFile: pki.serverCert,
        keyFile: pki.serverKey,
        caFile: pki.ca,
        authClients: 'yes',
        clientCert: pki.clientCert,
        clientKey: pki.clientKey,
      },
    });
    agentUrl = `rediss://agent:${r.passwords.agent}@localhost:${r.redis.port}`;
    operatorUrl = `rediss://operator:${r.passwords.operator}@localhost:${r.redis.port}`;
    registry = await startRegistry();
    cleanup.defer(() => registry.close());
  });
  after(() => cleanup.run());

  const good = (): RedisTlsFiles & { caFile: string; certFile: string; keyFile: string } => ({
    caFile: pki.ca,
    certFile: pki.clientCert,
    keyFile: pki.clientKey,
  });
  const connectors: [
    string,
    (url: string, tls: { caFile: string; certFile: string; keyFile: string }) => RedisOptions,
  ][] = [
    ['agent (redis-options.ts)', (url, tls) => redisOptionsFromUrl(url, tls)],
    ['operator and receiver (redis-connection.ts)', (url, tls) => redisConnectionOptions(url, tls)],
  ];

  for (const [who, options] of connectors) {
    test(`${who}: connects with the CA and client certificate; refuses another CA, no CA, a wrong host; the server refuses no certificate`, async (t) => {
      assert.equal(await pingOnce(options(agentUrl, good())), 'PONG');
      assert.match(
        await pingOnce(options(agentUrl, { ...good(), caFile: pki.otherCa })),
        UNTRUSTED,
        'a server whose certificate the configured CA did not sign',
      );
      assert.match(
        await pingOnce(options(agentUrl, { ...good(), caFile: '' })),
        UNTRUSTED,
        'no CA configured: Node’s bundled CAs do not include a private one',
      );
      assert.match(
        await pingOnce(options(`rediss://agent:${r.passwords.agent}@127.0.0.1:${r.redis.port}`, good())),
        /IP: 127\.0\.0\.1 is not in the cert's list/,
        'the host name is checked against the certificate',
      );
      const noCert = await pingOnce(options(agentUrl, { caFile: pki.ca, certFile: '', keyFile: '' }));
      t.diagnostic(`without a client certificate: ${noCert}`);
      // The server's alert, or the reset it closes the connection with (TLS 1.3 reports it late).
      assert.match(
        noCert,
        /alert certificate required|ECONNRESET/,
        'the server requires a client certificate',
      );
    });
  }

  test('misconfiguration fails at start with PW_ERR_INVALID_CONFIG naming the variable', () => {
    for (const [, options] of connectors) {
      assert.throws(
        () => options(`redis://localhost:${r.redis.port}`, good()),
        (e: Error & { code?: string }) =>
          e.code === 'PW_ERR_INVALID_CONFIG' && /not rediss:\/\//.test(e.message),
      );
      assert.throws(
        () => options(agentUrl, { ...good(), keyFile: '' }),
        (e: Error & { code?: string }) =>
          e.code === 'PW_ERR_INVALID_CONFIG' &&
          /TLS_CERT_FILE and KUBE_PREWARM_REDIS_TLS_KEY_FILE/.test(e.message),
      );
      assert.throws(
        () => options(agentUrl, { ...good(), caFile: join(dir, 'missing.crt') }),
        (e: Error & { code?: string }) =>
          e.code === 'PW_ERR_INVALID_CONFIG' &&
          /KUBE_PREWARM_REDIS_TLS_CA_FILE: cannot read .*ENOENT/.test(e.message),
      );
    }
  });

  test('a real agent warms an image over TLS as the agent user, the job enqueued over TLS as the operator', async () => {
    const img = await pushImage(registry, {
      repository: 'tls/app',
      tag: 'v1',
      layers: [{ files: { a: 'over tls' } }],
    });
    await startAgent(cleanup, {
      node: 'tls-a',
      redisUrl: agentUrl,
      extra: {
        KUBE_PREWARM_REDIS_TLS_CA_FILE: pki.ca,
        KUBE_PREWARM_REDIS_TLS_CERT_FILE: pki.clientCert,
        KUBE_PREWARM_REDIS_TLS_KEY_FILE: pki.clientKey,
      },
    });
    const op = new Redis(redisConnectionOptions(operatorUrl, good(), { maxRetriesPerRequest: null }));
    op.on('error', () => undefined);
    cleanup.defer(() => op.disconnect());
    const id = await enqueue(op, {
      node: 'tls-a',
      repository: `${registry.host}/tls/app`,
      digest: img.digest,
    });
    const view = await waitForJobEnd(op, 'tls-a', id, { timeoutMs: 120_000 });
    assert.equal(view.state, 'completed', view.failedReason);
  });

  test('the real webhook receiver process: ready over TLS with the CA; without it, it logs the verification failure and stays unready', async () => {
    const common = {
      dir,
      options: { sources: { distribution: { secrets: ['a-webhook-secret-0123456789'] } } },
    };
    const tlsEnv = {
      KUBE_PREWARM_REDIS_TLS_CERT_FILE: pki.clientCert,
      KUBE_PREWARM_REDIS_TLS_KEY_FILE: pki.clientKey,
    };
    const ok = await startReceiver({
      ...common,
      name: 'receiver-tls',
      redisUrl: `rediss://webhooks:${r.passwords.webhooks}@localhost:${r.redis.port}`,
      env: { ...tlsEnv, KUBE_PREWARM_REDIS_TLS_CA_FILE: pki.ca },
    });
    cleanup.defer(() => ok.stop());
    assert.equal((await fetch(`http://127.0.0.1:${ok.httpPort}/readyz`)).status, 200);

    // Without the CA: the same process, started by hand so the test waits for the log line
    // instead of for a readiness timeout.
    const [webhooksPort, httpPort] = [await freePort(), await freePort()];
    const logPath = join(dir, 'receiver-no-ca.log');
    const proc = await spawnProcess({
      name: 'receiver-no-ca',
      command: process.execPath,
      args: ['--import', 'tsx', join(REPO_ROOT, 'operator/src/webhooks-main.ts')],
      logPath,
      cwd: REPO_ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/root',
        KUBE_PREWARM_REDIS_URL: `rediss://webhooks:${r.passwords.webhooks}@localhost:${r.redis.port}`,
        KUBE_PREWARM_WEBHOOKS_CONFIG: ok.configPath,
        KUBE_PREWARM_WEBHOOKS_HOST: '127.0.0.1',
        KUBE_PREWARM_WEBHOOKS_PORT: String(webhooksPort),
        KUBE_PREWARM_HTTP_HOST: '127.0.0.1',
        KUBE_PREWARM_HTTP_PORT: String(httpPort),
        ...tlsEnv,
      },
    });
    cleanup.defer(async () => {
      await proc.stop();
    });
    await eventually(
      'the receiver logs why Redis refused it',
      async () => UNTRUSTED.test(await readFile(logPath, 'utf8')),
      60_000,
    );
    const ready = await eventually('its readiness endpoint', async () => {
      try {
        return await fetch(`http://127.0.0.1:${httpPort}/readyz`);
      } catch {
        return undefined;
      }
    });
    assert.equal(ready.status, 503);
    assert.match(await ready.text(), /redis/);
  });
});
