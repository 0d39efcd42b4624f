/**
 * The chart's `hosts-toml` container (`kube-prewarm hosts-toml run`, beside the agent in the
 * DaemonSet), run as a real process with exactly the arguments the rendered chart gives it:
 * - it writes nothing until the mirror answers, then one hosts.toml per registry (mirror
 *   first, the upstream as `server`), moves a foreign file aside and restores it on stop,
 *   takes its files away while the mirror is down and brings them back, removes stale files
 *   of ours, and refuses invalid hosts;
 * - only that container mounts containerd's certs.d; the agent mounts neither certs.d nor
 *   (unless unpack mode is enabled) the containerd socket;
 * - with a real containerd: an image pulled through the files lands in the node-local
 *   mirror (`kube-prewarm serve`), a second pull works with the registry stopped, and after
 *   the container stops containerd no longer uses the mirror.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type ContainerdHandle, startContainerd } from '../harness/containerd.js';
import { pushImage } from '../harness/images.js';
import { REPO_ROOT } from '../harness/kube.js';
import { type ManagedProcess, spawnProcess, waitForHttp, waitUntil } from '../harness/process.js';
import { type RegistryHandle, startRegistry } from '../harness/registry.js';
import { Cleanup, freePort, makeTempDir } from '../harness/tmp.js';
import { type K8sObject, one, render } from './render.js';

const CERTS_IN_POD = '/etc/containerd/certs.d';
const MARKER = '# kube-prewarm-managed: v1';

/** The rendered `hosts-toml` container's args, with the in-pod certs.d replaced by `certsDir`. */
async function containerArgs(values: unknown, certsDir: string): Promise<string[]> {
  const ds: K8sObject = one(await render(values), 'DaemonSet', '-agent');
  const c = ds.spec.template.spec.containers.find((x: { name: string }) => x.name === 'hosts-toml');
  assert.ok(c, 'the DaemonSet has a hosts-toml container');
  assert.deepEqual(c.args.slice(0, 2), ['hosts-toml', 'run']);
  return (c.args as string[]).map((a) => a.replace(`--certs-dir=${CERTS_IN_POD}`, `--certs-dir=${certsDir}`));
}

/** Starts the container's process from the sources (a short health interval for the test). */
function startHostsToml(args: string[], dir: string, name: string): Promise<ManagedProcess> {
  return spawnProcess({
    name: `hosts-toml ${name}`,
    command: process.execPath,
    args: ['--import', 'tsx', 'agent/src/cli/run.ts', ...args, '--interval=200ms', '--failures=2'],
    cwd: REPO_ROOT,
    logPath: join(dir, `hosts-toml-${name}.log`),
  });
}

/** `kube-prewarm serve` on a free port: the mirror the container checks. */
async function startMirror(dir: string, port: number, upstreams = '_default'): Promise<ManagedProcess> {
  const p = await spawnProcess({
    name: 'kube-prewarm serve',
    command: process.execPath,
    args: ['--import', 'tsx', 'agent/src/cli/run.ts', 'serve', '--store', join(dir, 'store')].concat([
      '--listen',
      `127.0.0.1:${port}`,
      '--no-fsync',
      '--upstreams',
      upstreams,
    ]),
    cwd: REPO_ROOT,
    logPath: join(dir, 'mirror.log'),
  });
  await waitForHttp(`http://127.0.0.1:${port}/v2/`, { process: p, timeoutMs: 60_000 });
  return p;
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const d of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, d.name);
    if (d.isDirectory()) for (const f of await listFiles(p)) out.push(join(d.name, f));
    else out.push(d.name);
  }
  return out.sort();
}

async function waitForFiles(certs: string, want: string[], proc: ManagedProcess): Promise<void> {
  let seen: string[] = [];
  await waitUntil(
    `hosts.toml files ${JSON.stringify(want)}`,
    async () => {
      seen = await listFiles(certs);
      if (JSON.stringify(seen) !== JSON.stringify(want))
        throw new Error(`files now: ${JSON.stringify(seen)}`);
      return true;
    },
    { process: proc, timeoutMs: 60_000, intervalMs: 100 },
  );
}

describe('the hosts-toml container', () => {
  const cleanup = new Cleanup();
  let dir: string;
  let port: number;
  let mirror: ManagedProcess | undefined;
  after(() => cleanup.run());
  before(async () => {
    dir = await makeTempDir('hosts-toml', cleanup);
    port = await freePort();
    cleanup.defer(async () => {
      await mirror?.stop();
    });
  });
  const values = (registries: string[], extra: Record<string, unknown> = {}) => ({
    registries: { plainHttp: ['insecure.local'] },
    agent: { mirror: { port, hostsToml: { registries } } },
    ...extra,
  });

  test('waits for the mirror, writes one file per registry, restores a foreign file on stop', async () => {
    const certs = join(dir, 'a');
    await mkdir(join(certs, 'ghcr.io'), { recursive: true });
    const handWritten =
      'server = "https://ghcr.io"\n[host."https://corp-mirror.example"]\n  capabilities = ["pull"]\n';
    await writeFile(join(certs, 'ghcr.io/hosts.toml'), handWritten);
    const args = await containerArgs(
      values(['docker.io', 'registry.example.com:5000', 'insecure.local', 'ghcr.io', '_default']),
      certs,
    );
    const proc = await startHostsToml(args, dir, 'a');
    cleanup.defer(async () => {
      await proc.stop();
    });
    // No mirror yet: containerd must not be sent to a mirror that does not answer.
    await new Promise((r) => setTimeout(r, 1_500));
    assert.ok(proc.running, proc.logTail());
    assert.deepEqual(await listFiles(certs), ['ghcr.io/hosts.toml']);
    assert.equal(await readFile(join(certs, 'ghcr.io/hosts.toml'), 'utf8'), handWritten);

    mirror = await startMirror(dir, port);
    await waitForFiles(
      certs,
      [
        '_default/hosts.toml',
        'docker.io/hosts.toml',
        'ghcr.io/hosts.toml',
        'ghcr.io/hosts.toml.kube-prewarm-orig',
        'insecure.local/hosts.toml',
        'registry.example.com:5000/hosts.toml',
      ],
      proc,
    );
    const docker = await readFile(join(certs, 'docker.io/hosts.toml'), 'utf8');
    assert.ok(docker.startsWith(`${MARKER}\n`), docker);
    assert.match(docker, /^server = "https:\/\/registry-1\.docker\.io"$/m);
    assert.match(docker, new RegExp(`^\\[host\\."http://127\\.0\\.0\\.1:${port}"\\]$`, 'm'));
    assert.match(docker, /^ {2}capabilities = \["pull", "resolve"\]$/m);
    assert.match(
      await readFile(join(certs, 'registry.example.com:5000/hosts.toml'), 'utf8'),
      /^server = "https:\/\/registry\.example\.com:5000"$/m,
    );
    assert.match(
      await readFile(join(certs, 'insecure.local/hosts.toml'), 'utf8'),
      /^server = "http:\/\/insecure\.local"$/m,
    );
    const def = await readFile(join(certs, '_default/hosts.toml'), 'utf8');
    assert.doesNotMatch(def, /^server/m, '_default falls back to each registry itself');

    const status = await proc.stop();
    assert.equal(status.code, 0, proc.logTail());
    assert.deepEqual(await listFiles(certs), ['ghcr.io/hosts.toml'], 'only the original remains');
    assert.equal(await readFile(join(certs, 'ghcr.io/hosts.toml'), 'utf8'), handWritten);
  });

  test('takes its files away while the mirror is down and brings them back; stale files go', async () => {
    const certs = join(dir, 'b');
    // A file of ours for a registry no longer listed, left by a killed container.
    await mkdir(join(certs, 'quay.io'), { recursive: true });
    await writeFile(join(certs, 'quay.io/hosts.toml'), `${MARKER}\nserver = "https://quay.io"\n`);
    mirror ??= await startMirror(dir, port);
    const proc = await startHostsToml(await containerArgs(values(['docker.io']), certs), dir, 'b');
    cleanup.defer(async () => {
      await proc.stop();
    });
    await waitForFiles(certs, ['docker.io/hosts.toml'], proc);
    await mirror.stop();
    mirror = undefined;
    await waitForFiles(certs, [], proc);
    mirror = await startMirror(dir, port);
    await waitForFiles(certs, ['docker.io/hosts.toml'], proc);
    assert.equal((await proc.stop()).code, 0);
    assert.deepEqual(await listFiles(certs), []);
  });

  test('refuses hosts that would escape the directory', async () => {
    const certs = join(dir, 'c');
    const args = (await containerArgs(values(['ok.example.com']), certs)).map((a) =>
      a.startsWith('--registries=') ? '--registries=../escape,ok.example.com' : a,
    );
    const proc = await startHostsToml(args, dir, 'c');
    const status = await proc.exited;
    assert.equal(status.code, 2, proc.logTail());
    assert.match(proc.logTail(), /"\.\.\/escape" is not a registry host/);
    assert.deepEqual(await listFiles(certs), []);
    assert.equal(existsSync(join(dir, 'escape')), false);
  });

  test('only the hosts-toml container mounts certs.d; the socket only with unpack enabled', async () => {
    const mounts = (c: K8sObject) => (c.volumeMounts ?? []).map((m: { mountPath: string }) => m.mountPath);
    const ds = one(await render({}), 'DaemonSet', '-agent');
    const [agent, hosts] = ['agent', 'hosts-toml'].map((n) =>
      ds.spec.template.spec.containers.find((c: { name: string }) => c.name === n),
    );
    assert.ok(!mounts(agent).includes(CERTS_IN_POD), 'the agent has no certs.d');
    assert.ok(!mounts(agent).includes('/run/containerd/containerd.sock'), 'no socket in cache mode');
    assert.deepEqual(mounts(hosts), [CERTS_IN_POD]);
    assert.equal(agent.lifecycle, undefined, 'no shell hooks');
    const env = Object.fromEntries(agent.env.map((e: { name: string; value?: string }) => [e.name, e.value]));
    assert.equal(env.KUBE_PREWARM_CONTAINERD_SOCKET, '');
    const unpack = one(await render({ agent: { unpack: { enabled: true } } }), 'DaemonSet', '-agent');
    const ua = unpack.spec.template.spec.containers.find((c: { name: string }) => c.name === 'agent');
    assert.ok(mounts(ua).includes('/run/containerd/containerd.sock'));
  });

  test('the chart refuses the installer without the host network', async () => {
    await assert.rejects(render({ agent: { hostNetwork: false } }), /needs agent\.hostNetwork/);
    const objs = await render({ agent: { hostNetwork: false, mirror: { hostsToml: { install: false } } } });
    const names = one(objs, 'DaemonSet').spec.template.spec.containers.map((c: { name: string }) => c.name);
    assert.deepEqual(names, ['agent']);
  });
});

describe('hosts.toml with a real containerd and the node-local mirror', () => {
  const cleanup = new Cleanup();
  let registry: RegistryHandle;
  let containerd: ContainerdHandle;
  let hostsToml: ManagedProcess;
  let imageRef: string;
  let digestRef: string;
  let dir: string;
  after(() => cleanup.run());

  before(async () => {
    dir = await makeTempDir('hosts-e2e', cleanup);
    registry = await startRegistry();
    cleanup.defer(() => registry.close());
    const pushed = await pushImage(registry, {
      repository: 'team/app',
      tag: 'v1',
      layers: [
        { files: { 'etc/hello.txt': 'hello from kube-prewarm\n' } },
        { randomBytes: 256 * 1024, seed: 7 },
      ],
    });
    imageRef = pushed.ref;
    digestRef = pushed.digestRef;
    const port = await freePort();
    const mirror = await startMirror(dir, port, registry.host);
    cleanup.defer(async () => {
      await mirror.stop();
    });
    containerd = await startContainerd();
    cleanup.defer(() => containerd.close());
    const args = await containerArgs(
      {
        registries: { allowed: [registry.host] },
        agent: { mirror: { port, hostsToml: { registries: [registry.host] } } },
      },
      containerd.certsDir,
    );
    hostsToml = await startHostsToml(args, dir, 'ctrd');
    cleanup.defer(async () => {
      await hostsToml.stop();
    });
    await waitForFiles(containerd.certsDir, [`${registry.host}/hosts.toml`], hostsToml);
  });

  const pull = (ref = imageRef) =>
    containerd.ctr(['images', 'pull', '--hosts-dir', containerd.certsDir, ref]);
  const removeImages = () =>
    containerd.ctr(['images', 'rm', '--sync', imageRef, digestRef]).catch(() => undefined);

  test('containerd pulls a warmed image through the mirror; with the registry down the mirror alone serves it', async () => {
    // Warm it into the mirror's store as a prewarm job would (the store records the image,
    // which is what lets the mirror answer for it without the registry).
    const warm = await spawnProcess({
      name: 'kube-prewarm warm',
      command: process.execPath,
      args: [
        '--import',
        'tsx',
        'agent/src/cli/run.ts',
        'warm',
        imageRef,
        '--store',
        join(dir, 'store'),
        '--no-fsync',
      ],
      cwd: REPO_ROOT,
      logPath: join(dir, 'warm.log'),
    });
    assert.equal((await warm.exited).code, 0, warm.logTail());
    await pull();
    await removeImages();
    await registry.stop();
    try {
      await pull(digestRef);
      const { stdout } = await containerd.ctr(['images', 'ls', '-q']);
      assert.ok(stdout.split('\n').includes(digestRef), `image listed after the mirror-only pull: ${stdout}`);
    } finally {
      await registry.start();
    }
  });

  test('after the container stops containerd no longer uses the mirror', async () => {
    assert.equal((await hostsToml.stop()).code, 0, hostsToml.logTail());
    assert.equal(existsSync(join(containerd.certsDir, registry.host)), false);
    await removeImages();
    await registry.stop();
    try {
      await assert.rejects(
        pull(digestRef),
        /failed/,
        'without hosts.toml and with the registry down the pull fails',
      );
    } finally {
      await registry.start();
    }
    await pull(); // and straight from the registry it works
  });
});
