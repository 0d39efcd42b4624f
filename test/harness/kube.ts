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
import { type ManagedProcess, spawnProcess, waitForHttp, waitForPort, waitUntil } from './process.js';
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
  /**
   * Run the control plane of a cluster with real nodes (test/harness/cluster.ts) instead of
   * the envtest-style one: see `NodeControlPlane`.
   */
  nodes?: NodeControlPlane;
}

/**
 * The apiserver as a cluster with kubelets needs it: bound to and advertised on a node IP
 * (so pods reach it through the `kubernetes` Service), client certificates accepted
 * (`--client-ca-file`), Node + RBAC authorisation with NodeRestriction, the ServiceAccount
 * and TaintNodesByCondition admission plugins on, the `kubernetes` Service's endpoints
 * maintained, and a client certificate for the apiserver's own calls to kubelets.
 */
export interface NodeControlPlane {
  /** Address the apiserver binds and advertises (the control-plane node's IP). */
  address: string;
  /** Its secure port. */
  port: number;
  /** Service CIDR; its first address is the `kubernetes` Service's. */
  serviceCidr: string;
  /** Wraps a command so it runs in the control-plane node's namespaces. */
  exec: (command: string, args: string[]) => { command: string; args: string[] };
  /** Extra static-token users (kubelets, scheduler, controller-manager, kube-proxy). */
  users: KubeUser[];
}

/** Key material of the cluster, for the components that need more than a token. */
export interface KubePki {
  /** CA certificate: signs the serving certificate, accepted for client certificates. */
  ca: string;
  caKey: string;
  /** Service-account signing key pair. */
  saKey: string;
  saPub: string;
  /** The apiserver's client certificate towards kubelets (O=system:masters). */
  kubeletClientCert: string;
  kubeletClientKey: string;
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
  /** The cluster's temp dir (certificates, token file, kubeconfigs, logs). */
  readonly dir: string;
  readonly pki: KubePki;
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

/**
 * Signs a new key pair for `subject` with the CA in `dir` (`ca.crt`/`ca.key`, as
 * `startKube` leaves them in `KubeHandle.dir`); writes `<name>.crt` and `<name>.key` there.
 * `ext` are x509v3 extension lines.
 */
export async function issueCert(dir: string, name: string, subject: string, ext: string[]): Promise<void> {
  await writeFile(join(dir, `${name}.ext`), `${ext.join('\n')}\n`);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl(['req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject], dir);
  await openssl(
    ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial'].concat([
      '-out',
      `${name}.crt`,
      '-days',
      '2',
      '-extfile',
      `${name}.ext`,
    ]),
    dir,
  );
}

/**
 * CA, serving certificate (127.0.0.1, localhost, the `kubernetes` Service names and any
 * `extraIps`), the apiserver's client certificate towards kubelets, and the service-account
 * key pair.
 */
async function makeCerts(
  dir: string,
  extraIps: readonly string[] = [],
): Promise<KubePki & { cert: string; key: string }> {
  await openssl(
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'].concat([
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
      '-days',
      '2',
      '-subj',
      '/CN=kube-prewarm-test-ca',
    ]),
    dir,
  );
  const ips = ['127.0.0.1', ...extraIps].map((ip) => `IP:${ip}`);
  const dns = ['localhost', 'kubernetes', 'kubernetes.default', 'kubernetes.default.svc']
    .concat(['kubernetes.default.svc.cluster.local'])
    .map((d) => `DNS:${d}`);
  await issueCert(dir, 'serving', '/CN=kube-apiserver', [
    `subjectAltName=${[...ips, ...dns].join(',')}`,
    'extendedKeyUsage=serverAuth',
    'keyUsage=digitalSignature,keyEncipherment',
  ]);
  await issueCert(dir, 'kubelet-client', '/O=system:masters/CN=kube-apiserver-kubelet-client', [
    'extendedKeyUsage=clientAuth',
    'keyUsage=digitalSignature,keyEncipherment',
  ]);
  await openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'sa.key'], dir);
  await openssl(['pkey', '-in', 'sa.key', '-pubout', '-out', 'sa.pub'], dir);
  return {
    ca: join(dir, 'ca.crt'),
    caKey: join(dir, 'ca.key'),
    cert: join(dir, 'serving.crt'),
    key: join(dir, 'serving.key'),
    saKey: join(dir, 'sa.key'),
    saPub: join(dir, 'sa.pub'),
    kubeletClientCert: join(dir, 'kubelet-client.crt'),
    kubeletClientKey: join(dir, 'kubelet-client.key'),
  };
}

export function kubeConfigObject(server: string, caData: string, user: KubeUser): Record<string, unknown> {
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
  const nodes = opts.nodes;
  const exec = nodes?.exec ?? ((command: string, args: string[]) => ({ command, args }));
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
    const certs = await makeCerts(dir, nodes ? [nodes.address, firstServiceIp(nodes.serviceCidr)] : []);
    // In a node's network namespace every port is ours: no race for them there.
    const [etcdPort, etcdPeerPort, apiPort] = nodes
      ? [2379, 2380, nodes.port]
      : [await freePort(), await freePort(), await freePort()];
    const etcdUrl = `http://127.0.0.1:${etcdPort}`;
    const peerUrl = `http://127.0.0.1:${etcdPeerPort}`;
    etcd = await spawnProcess({
      name: 'etcd',
      ...exec(etcdBin, [
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
      ]),
      logPath: join(dir, 'etcd.log'),
    });
    // etcd listens inside the node's namespace when there is one: probe it from there.
    if (nodes) await waitForPortIn(exec, '127.0.0.1', etcdPort, etcd, readyTimeoutMs);
    else
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
    const users = [admin, operatorUser, ...(nodes?.users ?? [])];
    await writeFile(tokenFile, users.map((u) => `${line(u)}\n`).join(''), { mode: 0o600 });
    const host = nodes?.address ?? '127.0.0.1';

    apiserver = await spawnProcess({
      name: 'kube-apiserver',
      ...exec(apiserverBin, [
        `--etcd-servers=${etcdUrl}`,
        `--etcd-prefix=/kube-prewarm-test`,
        `--bind-address=${host}`,
        `--advertise-address=${host}`,
        `--secure-port=${apiPort}`,
        `--cert-dir=${join(dir, 'apiserver-certs')}`,
        `--tls-cert-file=${certs.cert}`,
        `--tls-private-key-file=${certs.key}`,
        `--token-auth-file=${tokenFile}`,
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        `--service-account-key-file=${certs.saPub}`,
        `--service-account-signing-key-file=${certs.saKey}`,
        '--allow-privileged=true',
        '--v=1',
        ...(nodes
          ? [
              `--service-cluster-ip-range=${nodes.serviceCidr}`,
              `--client-ca-file=${certs.ca}`,
              '--authorization-mode=Node,RBAC',
              '--enable-admission-plugins=NodeRestriction',
              `--kubelet-client-certificate=${certs.kubeletClientCert}`,
              `--kubelet-client-key=${certs.kubeletClientKey}`,
              '--kubelet-preferred-address-types=InternalIP,Hostname',
            ]
          : [
              '--service-cluster-ip-range=10.0.0.0/24',
              '--authorization-mode=RBAC',
              '--disable-admission-plugins=ServiceAccount,TaintNodesByCondition',
              // No kubelets, no aggregated APIs: skip the endpoints the apiserver would probe.
              '--endpoint-reconciler-type=none',
            ]),
      ]),
      logPath: join(dir, 'apiserver.log'),
    });
    const server = `https://${host}:${apiPort}`;
    await waitForPort(host, apiPort, { process: apiserver, timeoutMs: readyTimeoutMs });
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
      dir,
      pki: certs,
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

/** The first address of an IPv4 CIDR (`10.0.0.0/24` → `10.0.0.1`): the `kubernetes` Service's. */
export function firstServiceIp(cidr: string): string {
  const [base = ''] = cidr.split('/');
  const octets = base.split('.').map(Number);
  octets[3] = (octets[3] ?? 0) + 1;
  return octets.join('.');
}

/** Waits for a TCP port that only exists inside the namespaces `exec` enters (bash's /dev/tcp). */
async function waitForPortIn(
  exec: NonNullable<KubeOptions['nodes']>['exec'],
  host: string,
  port: number,
  proc: ManagedProcess,
  timeoutMs: number,
): Promise<void> {
  const probe = exec('bash', ['-c', `exec 3<>/dev/tcp/${host}/${port}`]);
  await waitUntil(
    `tcp ${host}:${port}`,
    async () => {
      await execFileP(probe.command, probe.args, { timeout: 5_000 });
      return true;
    },
    { process: proc, timeoutMs, intervalMs: 200 },
  );
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
