/**
 * A real Kubernetes control plane for integration tests, in the spirit of
 * controller-runtime's envtest: etcd on a temp dir plus kube-apiserver with a self-signed
 * serving certificate, static-token authentication, RBAC authorisation and
 * service-account signing keys, both on 127.0.0.1 free ports. No controller-manager and
 * no scheduler run, so nothing acts on the objects but the code under test.
 *
 * Binaries come from `scripts/go-tools.sh` (pinned versions, cached under
 * `$KP_TESTBIN` or `~/.cache/kube-prewarm-testbin`); a missing binary is an error that
 * says how to build it, not a silent skip.
 *
 * Admission: the default plugins run except `TaintNodesByCondition` (which would put
 * `node.kubernetes.io/not-ready` on every new Node, a taint only the absent node-lifecycle
 * controller removes) and `ServiceAccount` (needs the token controller).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { KubeConfig, type V1CustomResourceDefinition } from '@kubernetes/client-node';
import { Agent, request } from 'undici';
import { parseAllDocuments } from 'yaml';
import { type ManagedProcess, spawnProcess, waitForHttp, waitForPort } from './process.js';
import { freePort, makeTempDir, removeTempDir } from './tmp.js';

const execFileP = promisify(execFile);

/** Repository root (this file is test/harness/kube.ts). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** Where scripts/go-tools.sh caches binaries. */
export function testBinDir(): string {
  return process.env.KP_TESTBIN ?? join(homedir(), '.cache', 'kube-prewarm-testbin');
}

export interface KubeOptions {
  /** Apply every `crds/*.yaml` and wait until Established. Default true. */
  applyCrds?: boolean;
  /** Extra CRD manifest files to apply. */
  extraCrdFiles?: string[];
  /** Readiness timeout for etcd and the apiserver, each. Default 60 s (2 slow cores). */
  readyTimeoutMs?: number;
}

/** A user in the static token file. */
export interface KubeUser {
  name: string;
  token: string;
  groups: string[];
}

export interface KubeHandle {
  /** A kubeconfig for the cluster-admin user (`system:masters`). */
  readonly kubeconfigPath: string;
  /** The same, loaded. */
  readonly kc: KubeConfig;
  /** `https://127.0.0.1:<port>`. */
  readonly server: string;
  /** PEM CA that signed the serving certificate. */
  readonly caPath: string;
  readonly admin: KubeUser;
  /**
   * A user with no group but `system:authenticated`: no permissions until a test binds a
   * role to `kube-prewarm-operator` (to check the chart's RBAC is sufficient).
   */
  readonly operatorUser: KubeUser;
  readonly apiserver: ManagedProcess;
  readonly etcd: ManagedProcess;
  /**
   * A raw JSON request as the admin (no client-side model: client-node's typed serializer
   * drops fields it maps under other names, e.g. a schema's `default`). Resolves with
   * the status and parsed body.
   */
  request(method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }>;
  /** A KubeConfig for another user from the token file. */
  kubeConfigFor(user: KubeUser): KubeConfig;
  /** Writes a kubeconfig file for `user` into the cluster's temp dir; returns its path. */
  writeKubeconfig(user: KubeUser, fileName: string): Promise<string>;
  /** Stops the apiserver, then etcd, and removes the temp dir. Safe to call twice. */
  stop(): Promise<void>;
}

function binary(name: string): string {
  const path = join(testBinDir(), name);
  if (!existsSync(path)) {
    throw new Error(
      `${name} not found at ${path}: build it with \`bash scripts/go-tools.sh ${name}\` (cached afterwards)`,
    );
  }
  return path;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await execFileP('openssl', args, { cwd });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`openssl ${args[0]} failed: ${e.stderr ?? e.message}`, { cause: err });
  }
}

/** CA, serving cert for 127.0.0.1/localhost, and the service-account key pair. */
async function makeCerts(
  dir: string,
): Promise<{ ca: string; cert: string; key: string; saKey: string; saPub: string }> {
  await openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
      '-days',
      '2',
      '-subj',
      '/CN=kube-prewarm-test-ca',
    ],
    dir,
  );
  await writeFile(
    join(dir, 'serving.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' +
      'extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n',
  );
  await openssl(
    [
      'req',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      'serving.key',
      '-out',
      'serving.csr',
      '-subj',
      '/CN=kube-apiserver',
    ],
    dir,
  );
  await openssl(
    [
      'x509',
      '-req',
      '-in',
      'serving.csr',
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      'serving.crt',
      '-days',
      '2',
      '-extfile',
      'serving.ext',
    ],
    dir,
  );
  await openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'sa.key'], dir);
  await openssl(['pkey', '-in', 'sa.key', '-pubout', '-out', 'sa.pub'], dir);
  return {
    ca: join(dir, 'ca.crt'),
    cert: join(dir, 'serving.crt'),
    key: join(dir, 'serving.key'),
    saKey: join(dir, 'sa.key'),
    saPub: join(dir, 'sa.pub'),
  };
}

function kubeConfigObject(server: string, caData: string, user: KubeUser): Record<string, unknown> {
  return {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'test', cluster: { server, 'certificate-authority-data': caData } }],
    users: [{ name: user.name, user: { token: user.token } }],
    contexts: [{ name: 'test', context: { cluster: 'test', user: user.name, namespace: 'default' } }],
    'current-context': 'test',
  };
}

/**
 * Starts etcd and kube-apiserver and, unless `applyCrds: false`, applies the project's
 * CRDs. Rejects (after stopping what it started) with the failing component's log tail.
 */
export async function startKube(opts: KubeOptions = {}): Promise<KubeHandle> {
  // freePort() can race with other processes on a shared machine (a port picked here is
  // taken before etcd or the apiserver binds it): start over on fresh ports then.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startKubeOnce(opts);
    } catch (err) {
      // An early exit is what a lost port race looks like (the bind error is not always in
      // the log tail); a real misconfiguration fails the same way three times.
      if (attempt >= 3 || !/address already in use|exited \(/i.test((err as Error).message)) throw err;
    }
  }
}

async function startKubeOnce(opts: KubeOptions): Promise<KubeHandle> {
  const etcdBin = binary('etcd');
  const apiserverBin = binary('kube-apiserver');
  const readyTimeoutMs = opts.readyTimeoutMs ?? 60_000;
  const dir = await makeTempDir('kube');
  let etcd: ManagedProcess | undefined;
  let apiserver: ManagedProcess | undefined;
  const stopHooks: (() => Promise<void>)[] = [];
  const stopAll = async (): Promise<void> => {
    for (const h of stopHooks) await h().catch(() => undefined);
    await apiserver?.stop();
    await etcd?.stop();
    await removeTempDir(dir);
  };
  try {
    const certs = await makeCerts(dir);
    const [etcdPort, etcdPeerPort, apiPort] = [await freePort(), await freePort(), await freePort()];
    const etcdUrl = `http://127.0.0.1:${etcdPort}`;
    const peerUrl = `http://127.0.0.1:${etcdPeerPort}`;
    etcd = await spawnProcess({
      name: 'etcd',
      command: etcdBin,
      args: [
        '--name=test',
        `--data-dir=${join(dir, 'etcd')}`,
        `--listen-client-urls=${etcdUrl}`,
        `--advertise-client-urls=${etcdUrl}`,
        `--listen-peer-urls=${peerUrl}`,
        `--initial-advertise-peer-urls=${peerUrl}`,
        `--initial-cluster=test=${peerUrl}`,
        // Throwaway data: fsync only slows a shared CI disk down.
        '--unsafe-no-fsync=true',
        '--log-level=warn',
      ],
      logPath: join(dir, 'etcd.log'),
    });
    await waitForHttp(`${etcdUrl}/health`, {
      process: etcd,
      timeoutMs: readyTimeoutMs,
      ready: (s) => s === 200,
    });

    const admin: KubeUser = {
      name: 'test-admin',
      token: randomBytes(24).toString('hex'),
      groups: ['system:masters'],
    };
    const operatorUser: KubeUser = {
      name: 'kube-prewarm-operator',
      token: randomBytes(24).toString('hex'),
      groups: [],
    };
    const tokenFile = join(dir, 'tokens.csv');
    const line = (u: KubeUser): string =>
      `${u.token},${u.name},${u.name}-uid${u.groups.length ? `,"${u.groups.join(',')}"` : ''}`;
    await writeFile(tokenFile, `${line(admin)}\n${line(operatorUser)}\n`, { mode: 0o600 });

    apiserver = await spawnProcess({
      name: 'kube-apiserver',
      command: apiserverBin,
      args: [
        `--etcd-servers=${etcdUrl}`,
        `--etcd-prefix=/kube-prewarm-test`,
        '--bind-address=127.0.0.1',
        '--advertise-address=127.0.0.1',
        `--secure-port=${apiPort}`,
        `--cert-dir=${join(dir, 'apiserver-certs')}`,
        `--tls-cert-file=${certs.cert}`,
        `--tls-private-key-file=${certs.key}`,
        `--token-auth-file=${tokenFile}`,
        '--authorization-mode=RBAC',
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        `--service-account-key-file=${certs.saPub}`,
        `--service-account-signing-key-file=${certs.saKey}`,
        '--service-cluster-ip-range=10.0.0.0/24',
        '--disable-admission-plugins=ServiceAccount,TaintNodesByCondition',
        '--allow-privileged=true',
        // No kubelets, no aggregated APIs: skip the endpoints the apiserver would probe.
        '--endpoint-reconciler-type=none',
        '--v=1',
      ],
      logPath: join(dir, 'apiserver.log'),
    });
    const server = `https://127.0.0.1:${apiPort}`;
    await waitForPort('127.0.0.1', apiPort, { process: apiserver, timeoutMs: readyTimeoutMs });
    const caData = Buffer.from(await readFile(certs.ca)).toString('base64');

    const kubeConfigFor = (user: KubeUser): KubeConfig => {
      const kc = new KubeConfig();
      kc.loadFromString(JSON.stringify(kubeConfigObject(server, caData, user)));
      return kc;
    };
    const writeKubeconfig = async (user: KubeUser, fileName: string): Promise<string> => {
      const path = join(dir, fileName);
      await writeFile(path, JSON.stringify(kubeConfigObject(server, caData, user), null, 2), { mode: 0o600 });
      return path;
    };
    const kubeconfigPath = await writeKubeconfig(admin, 'kubeconfig');
    const kc = kubeConfigFor(admin);
    const httpAgent = new Agent({ connect: { ca: await readFile(certs.ca, 'utf8') } });
    const raw: RawRequest = async (method, path, body) => {
      const res = await request(`${server}${path}`, {
        method: method as 'GET',
        headers: {
          authorization: `Bearer ${admin.token}`,
          'content-type': 'application/json',
          accept: 'application/json',
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        dispatcher: httpAgent,
      });
      const text = await res.body.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // Not JSON: keep the text.
      }
      return { status: res.statusCode, body: parsed };
    };
    stopHooks.push(() => httpAgent.close());

    // /readyz turns 200 once the post-start hooks (RBAC bootstrap roles, priority and
    // fairness config, CRD controllers) have run; before that writes may be refused.
    await waitForReadyz(server, certs.ca, admin.token, apiserver, readyTimeoutMs);

    if (opts.applyCrds ?? true) {
      const files = (await readdir(join(REPO_ROOT, 'crds')))
        .filter((f) => f.endsWith('.yaml') || f.endsWith('.yml'))
        .map((f) => join(REPO_ROOT, 'crds', f));
      await applyCrdFiles(raw, [...files, ...(opts.extraCrdFiles ?? [])]);
    }

    let stopped: Promise<void> | undefined;
    const apiserverProc = apiserver;
    const etcdProc = etcd;
    return {
      kubeconfigPath,
      kc,
      server,
      caPath: certs.ca,
      admin,
      operatorUser,
      apiserver: apiserverProc,
      etcd: etcdProc,
      kubeConfigFor,
      writeKubeconfig,
      request: raw,
      stop() {
        stopped ??= stopAll();
        return stopped;
      },
    };
  } catch (err) {
    await stopAll().catch(() => undefined);
    throw err;
  }
}

async function waitForReadyz(
  server: string,
  caPath: string,
  token: string,
  proc: ManagedProcess,
  timeoutMs: number,
): Promise<void> {
  // fetch() cannot take a custom CA; use an undici Agent with it.
  const agent = new Agent({ connect: { ca: await readFile(caPath, 'utf8') } });
  try {
    const { waitUntil } = await import('./process.js');
    await waitUntil(
      `${server}/readyz`,
      async () => {
        const res = await request(`${server}/readyz`, {
          headers: { authorization: `Bearer ${token}` },
          dispatcher: agent,
        });
        const body = await res.body.text();
        if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}: ${body.slice(0, 500)}`);
        return true;
      },
      { process: proc, timeoutMs, intervalMs: 200 },
    );
  } finally {
    await agent.close();
  }
}

/** Reads CRD manifests (multi-document YAML) from files. */
export async function readCrdFiles(files: string[]): Promise<V1CustomResourceDefinition[]> {
  const out: V1CustomResourceDefinition[] = [];
  for (const file of files) {
    for (const doc of parseAllDocuments(await readFile(file, 'utf8'))) {
      if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
      const obj = doc.toJS({ maxAliasCount: 1000 }) as V1CustomResourceDefinition | null;
      if (obj?.kind === 'CustomResourceDefinition') out.push(obj);
    }
  }
  return out;
}

export type RawRequest = (
  method: string,
  path: string,
  body?: unknown,
) => Promise<{ status: number; body: unknown }>;

const CRD_PATH = '/apis/apiextensions.k8s.io/v1/customresourcedefinitions';

/**
 * Creates (or replaces) each CRD and waits until it is Established and its names are
 * accepted. Rejects with the server's message when the apiserver refuses a CRD (an
 * invalid schema or CEL rule is a test failure, not something to skip).
 */
export async function applyCrdFiles(raw: RawRequest, files: string[], timeoutMs = 30_000): Promise<void> {
  const crds = await readCrdFiles(files);
  for (const crd of crds) {
    const name = crd.metadata?.name ?? '';
    const created = await raw('POST', CRD_PATH, crd);
    if (created.status === 409) {
      const existing = await raw('GET', `${CRD_PATH}/${name}`);
      const rv = (existing.body as { metadata?: { resourceVersion?: string } }).metadata?.resourceVersion;
      const replaced = await raw('PUT', `${CRD_PATH}/${name}`, {
        ...crd,
        metadata: { ...crd.metadata, resourceVersion: rv },
      });
      if (replaced.status >= 300) throw new Error(`CRD ${name} refused: ${statusMessage(replaced.body)}`);
    } else if (created.status >= 300) {
      throw new Error(`CRD ${name} refused: ${statusMessage(created.body)}`);
    }
  }
  const deadline = Date.now() + timeoutMs;
  for (const crd of crds) {
    const name = crd.metadata?.name ?? '';
    for (;;) {
      const got = await raw('GET', `${CRD_PATH}/${name}`);
      const conds =
        (got.body as { status?: { conditions?: { type: string; status: string }[] } }).status?.conditions ??
        [];
      const established = conds.some((c) => c.type === 'Established' && c.status === 'True');
      const named = conds.some((c) => c.type === 'NamesAccepted' && c.status === 'True');
      if (established && named) break;
      if (Date.now() > deadline) throw new Error(`CRD ${name} not established: ${JSON.stringify(conds)}`);
      await sleep(100);
    }
  }
}

function statusMessage(body: unknown): string {
  const m = (body as { message?: string } | null)?.message;
  return m ?? JSON.stringify(body).slice(0, 2000);
}

/** The apiserver's error text from a client-node ApiException (its `body` is the Status JSON). */
export function errorBody(err: unknown): string {
  const e = err as { body?: unknown; message?: string };
  if (typeof e.body === 'string') {
    try {
      const status = JSON.parse(e.body) as { message?: string };
      if (status.message) return status.message;
    } catch {
      return e.body;
    }
    return e.body;
  }
  return e.message ?? String(err);
}
