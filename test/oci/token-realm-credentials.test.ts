/**
 * Basic credentials and bearer token realms (issue 11): a registry's challenge names the
 * realm its client sends the credentials to, so whoever answers or rewrites that challenge
 * chooses where they go. Against the real registry (Debian `docker-registry`, token auth)
 * and the harness's real token server on another port — another origin, over plain HTTP:
 * the credentials are sent only when that origin is configured for plain HTTP, and
 * otherwise the token server receives nothing at all.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { StaticCredentials } from '../../oci/src/auth.js';
import { RegistryClient } from '../../oci/src/client.js';
import { EgressPolicy } from '../../oci/src/egress-policy.js';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';
import { parseReference } from '../../oci/src/reference.js';
import {
  Cleanup,
  type PushedImage,
  pushImage,
  type RegistryHandle,
  startRegistry,
  startTokenServer,
  type TokenServerHandle,
} from '../harness/index.js';

const USER = { username: 'puller', password: 'realm-test-pw-4711' };
const cleanup = new Cleanup();
after(() => cleanup.run());

let token: TokenServerHandle;
let registry: RegistryHandle;
let img: PushedImage;

before(async () => {
  token = await startTokenServer({
    users: {
      pusher: { password: 'push-pw', actions: ['pull', 'push'] },
      [USER.username]: { password: USER.password },
    },
  });
  cleanup.defer(() => token.stop());
  registry = await startRegistry({ auth: { token } });
  cleanup.defer(() => registry.close());
  img = await pushImage(registry, {
    repository: 'realm/app',
    tag: 'v1',
    layers: [{ randomBytes: 4096, seed: 3 }],
    creds: { username: 'pusher', password: 'push-pw' },
  });
});

function client(policy: EgressPolicy): RegistryClient {
  const credentials = new StaticCredentials().set(registry.host, USER);
  const c = new RegistryClient({ egress: policy, credentials, retry: { attempts: 1 } });
  cleanup.defer(() => c.close());
  return c;
}

describe('credentials and a plain-HTTP bearer realm on another origin', () => {
  test('the realm is another origin over plain HTTP (sanity of the setup)', () => {
    const realm = new URL(token.realm);
    assert.equal(realm.protocol, 'http:');
    assert.notEqual(realm.origin, registry.url);
    assert.equal(realm.hostname, '127.0.0.1', 'same host, other port: another origin');
  });

  test('not configured for plain HTTP: refused before the token server sees a request', async () => {
    // The registry is allowed (and spoken to over HTTP: a loopback entry listed explicitly);
    // the realm's port is not.
    const policy = new EgressPolicy({ allowedRegistries: [registry.host] });
    assert.equal(policy.plainHttp(registry.host), true);
    assert.equal(policy.plainHttp(new URL(token.realm).host), false);
    const before = token.log.length;
    const err = await client(policy)
      .resolve(parseReference(`${registry.host}/realm/app:v1`))
      .then(
        () => assert.fail('resolved without a token'),
        (e: unknown) => e,
      );
    assert.ok(isPrewarmError(err, ErrorCodes.AUTH_FAILED), String(err));
    assert.match(
      err.message,
      /credentials not sent: the bearer realm http:\/\/127\.0\.0\.1:\d+ is plain HTTP/,
    );
    assert.equal(err.detail?.permanent, true);
    assert.doesNotMatch(err.message, new RegExp(USER.password));
    assert.deepEqual(token.log.slice(before), [], 'the token server received no request');
  });

  test('configured for plain HTTP (the realm host listed): the credentials are sent and work', async () => {
    // `127.0.0.1` without a port: every port of the host, the realm's included.
    const policy = new EgressPolicy({ allowedRegistries: ['127.0.0.1'] });
    assert.equal(policy.plainHttp(new URL(token.realm).host), true);
    const before = token.log.length;
    const got = await client(policy).resolve(parseReference(`${registry.host}/realm/app:v1`));
    assert.equal(got.digest, img.digest);
    const issued = token.log.slice(before).filter((r) => r.status === 200);
    assert.deepEqual([...new Set(issued.map((r) => r.account))], [USER.username]);
  });

  test('without credentials nothing is withheld: the anonymous token request goes out', async () => {
    const policy = new EgressPolicy({ allowedRegistries: [registry.host] });
    const c = new RegistryClient({ egress: policy, retry: { attempts: 1 } });
    cleanup.defer(() => c.close());
    const before = token.log.length;
    const err = await c.resolve(parseReference(`${registry.host}/realm/app:v1`)).then(
      () => assert.fail('anonymous pull of a private image'),
      (e: unknown) => e,
    );
    assert.ok(isPrewarmError(err, ErrorCodes.AUTH_DENIED), String(err));
    const seen = token.log.slice(before);
    assert.ok(seen.length >= 1, 'the anonymous token request reached the token server');
    assert.ok(seen.every((r) => r.account === undefined));
  });
});
