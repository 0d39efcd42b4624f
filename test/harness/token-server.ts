/**
 * A token server for distribution's `auth.token` mode (the Docker registry token flow),
 * for tests of bearer-token auth against the real registry.
 *
 * Flow: the registry answers 401 with `WWW-Authenticate: Bearer realm=<realm>,service=<service>,
 * scope=repository:<name>:pull`; the client asks `GET <realm>?service=&scope=` (optionally with
 * Basic credentials) — or, like containerd when it has a password, `POST <realm>` with an
 * OAuth2 `grant_type=password` form — and gets `{token, access_token, expires_in, issued_at}`.
 * The token is a JWT the registry verifies against `rootcertbundle` (`certPath`).
 *
 * What distribution 2.8 checks (registry/auth/token/token.go), and so what we issue:
 * - `iss` must equal the configured issuer; `aud` must equal the service, as a JSON *string*
 *   (2.8's claim set types `aud` as a string; an array fails to parse);
 * - `exp` / `nbf` within 60 s leeway; `iat` and `jti` are carried but not checked;
 * - `access: [{type, name, actions}]` grants the scope;
 * - the signing key is found from the JOSE header, in this order: `x5c` (a certificate chain
 *   that must verify against the rootcertbundle), `jwk`, or `kid`. A `kid` must be the
 *   libtrust key ID of a certificate's public key in the bundle: SHA-256 of the DER
 *   SubjectPublicKeyInfo, first 30 bytes (240 bits), base32 without padding, in 12
 *   colon-separated groups of 4 (`ABCD:EFGH:...`). A JWK thumbprint (RFC 7638) as kid does
 *   NOT work. Default here is `kid` (what docker_auth and most self-hosted token servers
 *   send); `keyHeader: 'x5c'` sends the self-signed leaf certificate instead (Docker Hub's
 *   style). Both are exercised by the harness self-test.
 * - alg: RS256 and ES256 both work (libtrust verifies JWS-style raw r||s ECDSA signatures).
 */
import { execFile } from 'node:child_process';
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  randomUUID,
  X509Certificate,
} from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SignJWT } from 'jose';
import { makeTempDir, removeTempDir } from './tmp.js';

const execFileP = promisify(execFile);

/** A user the token server knows. */
export interface TokenUser {
  password: string;
  /**
   * Actions granted on every repository (intersected with what is asked for). Default
   * `['pull']`. Give `['pull', 'push']` to the user that pushes test images, add `'delete'`
   * for tests that delete manifests, and `'*'` to also grant non-repository scopes
   * (e.g. `registry:catalog:*`).
   */
  actions?: readonly string[];
}

export interface TokenServerOptions {
  /** Known users by name. Default: none. */
  users?: Record<string, TokenUser>;
  /**
   * Whether a request without credentials gets a token (granting `pull` only). Default false:
   * anonymous requests are answered 401, so "no credentials" is denied at the token step.
   */
  allowAnonymous?: boolean;
  /** Signature algorithm. Default RS256. */
  algorithm?: 'RS256' | 'ES256';
  /** How the JWT names its signing key (see the module comment). Default `kid`. */
  keyHeader?: 'kid' | 'x5c';
  /** The registry's service name (JWT `aud`). Default `kube-prewarm-test-registry`. */
  service?: string;
  /** JWT `iss`. Default `kube-prewarm-test-token-issuer`. */
  issuer?: string;
  /** Token lifetime. Default 300 s. */
  expiresInSeconds?: number;
}

/** One access entry of a token, as distribution reads it. */
export interface AccessEntry {
  type: string;
  name: string;
  actions: string[];
}

/** What the token server saw and did for one token request. */
export interface TokenRequestRecord {
  method: 'GET' | 'POST';
  /** Authenticated user; undefined for anonymous requests. */
  account: string | undefined;
  /** The raw `scope` values asked for. */
  scopes: string[];
  /** 200 when a token was issued, else 400/401. */
  status: number;
  granted: AccessEntry[];
}

export interface TokenServerHandle {
  /** Token endpoint URL (`http://127.0.0.1:<port>/token`), the registry's `realm`. */
  readonly realm: string;
  readonly service: string;
  readonly issuer: string;
  /** PEM certificate of the signing key: the registry's `rootcertbundle`. */
  readonly certPath: string;
  /** Number of token requests received so far (any outcome). */
  readonly requests: number;
  /** Every token request, in order. */
  readonly log: readonly TokenRequestRecord[];
  /** Closes the server and removes its temp dir. */
  stop(): Promise<void>;
}

/**
 * Generates a signing key and self-signed certificate (openssl CLI), then serves tokens on
 * 127.0.0.1:<free port>. Pass the handle to `startRegistry({ auth: { token } })`.
 */
export async function startTokenServer(opts: TokenServerOptions = {}): Promise<TokenServerHandle> {
  const algorithm = opts.algorithm ?? 'RS256';
  const keyHeader = opts.keyHeader ?? 'kid';
  const service = opts.service ?? 'kube-prewarm-test-registry';
  const issuer = opts.issuer ?? 'kube-prewarm-test-token-issuer';
  const expiresIn = opts.expiresInSeconds ?? 300;
  const users = opts.users ?? {};

  const dir = await makeTempDir('token-server');
  try {
    const keyPath = join(dir, 'signing-key.pem');
    const certPath = join(dir, 'signing-cert.pem');
    const keyArgs =
      algorithm === 'RS256'
        ? ['-newkey', 'rsa:2048']
        : ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'];
    await execFileP('openssl', [
      'req',
      '-x509',
      ...keyArgs,
      '-nodes',
      '-sha256',
      '-days',
      '2',
      '-subj',
      '/CN=kube-prewarm test token signer',
      '-keyout',
      keyPath,
      '-out',
      certPath,
    ]);
    const privateKey = createPrivateKey(await readFile(keyPath));
    const cert = new X509Certificate(await readFile(certPath));
    const header =
      keyHeader === 'kid'
        ? { alg: algorithm, typ: 'JWT', kid: libtrustKeyId(createPublicKey(privateKey)) }
        : { alg: algorithm, typ: 'JWT', x5c: [cert.raw.toString('base64')] };

    const log: TokenRequestRecord[] = [];
    const sign = async (account: string | undefined, access: AccessEntry[]): Promise<string> => {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ access })
        .setProtectedHeader(header)
        .setIssuer(issuer)
        .setSubject(account ?? '')
        .setAudience(service)
        .setIssuedAt(now)
        .setNotBefore(now)
        .setExpirationTime(now + expiresIn)
        .setJti(randomUUID())
        .sign(privateKey);
    };

    const server = createServer((req, res) => {
      handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) sendJson(res, 500, { error: 'server_error', error_description: String(err) });
        else res.destroy();
      });
    });

    const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
      const url = new URL(req.url ?? '/', 'http://token.invalid');
      if (url.pathname !== '/token' || (req.method !== 'GET' && req.method !== 'POST')) {
        sendJson(res, 404, { error: 'not_found' });
        return;
      }
      const method = req.method;
      let params = url.searchParams;
      let username: string | undefined;
      let password: string | undefined;
      if (method === 'POST') {
        // OAuth2 form (containerd with credentials): grant_type=password&username=&password=&scope=&service=
        params = new URLSearchParams(await readBody(req));
        if (params.get('grant_type') !== 'password') {
          log.push({ method, account: undefined, scopes: params.getAll('scope'), status: 400, granted: [] });
          sendJson(res, 400, { error: 'unsupported_grant_type' });
          return;
        }
        username = params.get('username') ?? undefined;
        password = params.get('password') ?? '';
      } else {
        const basic = parseBasic(req.headers.authorization);
        username = basic?.username;
        password = basic?.password;
      }
      const scopes = params.getAll('scope').flatMap((s) => s.split(' ').filter((x) => x !== ''));
      const record = (status: number, granted: AccessEntry[], account?: string): void => {
        log.push({ method, account, scopes, status, granted });
      };

      if (params.get('service') !== null && params.get('service') !== service) {
        record(400, []);
        sendJson(res, 400, { error: 'invalid_request', error_description: 'unknown service' });
        return;
      }
      let allowed: readonly string[];
      if (username === undefined) {
        if (!opts.allowAnonymous) {
          record(401, []);
          res.setHeader('WWW-Authenticate', 'Basic realm="kube-prewarm-test-token"');
          sendJson(res, 401, { error: 'unauthorized', error_description: 'credentials required' });
          return;
        }
        allowed = ['pull'];
      } else {
        const user = Object.hasOwn(users, username) ? users[username] : undefined;
        if (user === undefined || user.password !== password) {
          record(401, [], username);
          res.setHeader('WWW-Authenticate', 'Basic realm="kube-prewarm-test-token"');
          sendJson(res, 401, { error: 'unauthorized', error_description: 'bad credentials' });
          return;
        }
        allowed = user.actions ?? ['pull'];
      }
      const granted = grant(scopes, allowed);
      const token = await sign(username, granted);
      record(200, granted, username);
      const body: Record<string, unknown> = {
        token,
        access_token: token,
        expires_in: expiresIn,
        issued_at: new Date().toISOString(),
      };
      if (method === 'POST') body.scope = scopes.join(' ');
      sendJson(res, 200, body);
    };

    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const { port } = server.address() as AddressInfo;

    return {
      realm: `http://127.0.0.1:${port}/token`,
      service,
      issuer,
      certPath,
      get requests() {
        return log.length;
      },
      log,
      async stop() {
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        await removeTempDir(dir);
      },
    };
  } catch (err) {
    await removeTempDir(dir);
    throw err;
  }
}

/**
 * Grants, for each `type:name:actions` scope, the requested actions that `allowed` permits.
 * Repository scopes get `allowed ∩ requested`; other types (e.g. `registry:catalog:*`) only
 * when `allowed` includes `*`. Scopes that grant nothing are left out.
 */
function grant(scopes: string[], allowed: readonly string[]): AccessEntry[] {
  const out: AccessEntry[] = [];
  for (const scope of scopes) {
    const first = scope.indexOf(':');
    const last = scope.lastIndexOf(':');
    if (first <= 0 || last <= first) continue;
    const type = scope.slice(0, first);
    const name = scope.slice(first + 1, last);
    const requested = scope.slice(last + 1).split(',');
    const actions =
      type === 'repository'
        ? requested.filter((a) => allowed.includes(a) || allowed.includes('*'))
        : allowed.includes('*')
          ? requested
          : [];
    if (actions.length > 0) out.push({ type, name, actions });
  }
  return out;
}

/**
 * The libtrust key ID distribution uses to look up a `kid` among the rootcertbundle's keys:
 * base32(SHA-256(DER SPKI)[0:30]) without padding, grouped by 4 with ':'.
 */
export function libtrustKeyId(publicKey: KeyObject): string {
  const der = publicKey.export({ type: 'spki', format: 'der' });
  const b32 = base32(createHash('sha256').update(der).digest().subarray(0, 30));
  return b32.match(/.{1,4}/g)!.join(':');
}

const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32, no padding. */
function base32(data: Uint8Array): string {
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of data) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += B32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += B32[(value << (5 - bits)) & 31];
  return out;
}

function parseBasic(header: string | undefined): { username: string; password: string } | undefined {
  if (header === undefined || !/^basic /i.test(header)) return undefined;
  const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > 64 * 1024) throw new Error('token request body too large');
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': data.length });
  res.end(data);
}
