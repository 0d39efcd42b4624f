/**
 * The images scripts/build-image.sh builds without Docker, as a kubelet would meet them:
 * - the OCI layout: an index of linux/amd64 and linux/arm64/v8 manifests, four layers each
 *   (base, node, node_modules, app), the config (user 65532, entrypoint, env, labels);
 * - the layers, read with a tar reader of our own: no shell, no npm, numeric owner 0 (the
 *   users' homes excepted), fixed mtimes, /tmp 1777, and /app exactly what the Dockerfile
 *   stages (package.json, bin/, a .js and .js.map per compiled .ts, the non-TS runtime files);
 * - they run: `umoci unpack` makes a runc bundle of this host's image, `runc run` starts
 *   `kube-prewarm --help`, `warm --help`, and `warm` of an image from a real registry (the
 *   Redis image, pushed there by the script's --push); the Redis image answers PING (also
 *   through `redis-cli`, the chart's probe) as user 999;
 * - reproducible: a rebuild with --no-cache in another cache directory that shares only
 *   the downloads (so it compiles, runs npm ci and compresses again) gives the same digests.
 * Downloads are cached in ~/.cache/kube-prewarm-image, so only a machine's first run
 * fetches anything. Needs root (runc), umoci, runc, skopeo (scripts/deps.sh).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { homedir } from 'node:os';
import { join, relative } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { REPO_ROOT } from '../harness/kube.js';
import { readLogTail, spawnProcess, waitUntil } from '../harness/process.js';
import { startRegistry } from '../harness/registry.js';
import { Cleanup, freePort, makeTempDir } from '../harness/tmp.js';

const execFileP = promisify(execFile);
const HOST_ARCH = process.arch === 'arm64' ? 'arm64' : 'amd64';
const BUILD_TIMEOUT_MS = 20 * 60_000; // a machine's first build downloads ~150 MB
const RUN_TIMEOUT_MS = 120_000;

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { architecture: string; os: string; variant?: string };
  annotations?: Record<string, string>;
}
interface Manifest {
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
}
interface ImageConfig {
  created: string;
  architecture: string;
  os: string;
  variant?: string;
  config: {
    User: string;
    Env: string[];
    Entrypoint: string[];
    Cmd: string[];
    WorkingDir: string;
    Labels: Record<string, string>;
  };
  rootfs: { type: string; diff_ids: string[] };
}
interface Built {
  layout: string;
  log: string;
  tag: string;
  index: string;
  /** The commit the labels name and its time (SOURCE_DATE_EPOCH), and a hash of the compiled sources. */
  revision: string;
  created: string;
  sources: string;
  manifests: Map<string, string>; // arch -> manifest digest
}

/** Runs a command to completion; never rejects on a non-zero exit. */
async function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP(cmd, args, {
      cwd: opts.cwd ?? REPO_ROOT,
      timeout: opts.timeoutMs ?? RUN_TIMEOUT_MS,
      maxBuffer: 64 * 1024 * 1024,
      env: opts.env ?? process.env,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string; killed?: boolean };
    if (typeof e.code !== 'number' && !e.killed) throw err;
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** `bash scripts/build-image.sh <args>`, its output in `<log>`; throws with the log's tail. */
async function buildImage(
  args: string[],
  layout: string,
  log: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Built> {
  const r = await run('bash', ['scripts/build-image.sh', ...args, '--out', layout], {
    timeoutMs: BUILD_TIMEOUT_MS,
    env,
  });
  await writeFile(log, `${r.stderr}\n--- stdout ---\n${r.stdout}`);
  if (r.code !== 0)
    throw new Error(`build-image.sh ${args.join(' ')} exited ${r.code}:\n${readLogTail(log, 40)}`);
  const summary = JSON.parse(await readFile(join(layout, 'build.json'), 'utf8')) as {
    tag: string;
    index: string;
    revision: string;
    created: string;
    sources: string;
    manifests: Descriptor[];
  };
  const manifests = new Map(summary.manifests.map((m) => [m.platform!.architecture, m.digest]));
  // The script's last lines name the index and each platform's manifest.
  assert.match(r.stdout, new RegExp(`^\\S+:${summary.tag} ${summary.index}$`, 'm'));
  const { tag, index, revision, created, sources } = summary;
  return { layout, log, tag, index, revision, created, sources, manifests };
}

const blobPath = (layout: string, digest: string): string =>
  join(layout, 'blobs', 'sha256', digest.replace(/^sha256:/, ''));
async function blobJson<T>(layout: string, digest: string): Promise<T> {
  const bytes = await readFile(blobPath(layout, digest));
  assert.equal(`sha256:${createHash('sha256').update(bytes).digest('hex')}`, digest, 'blob digest');
  return JSON.parse(bytes.toString('utf8')) as T;
}

interface TarEntry {
  path: string;
  type: string; // '0' file, '5' dir, '2' symlink, '1' hard link
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size: number;
  linkname: string;
}

/** The entries of a tar (ustar headers with pax extended headers), as a map by path. */
function readTar(buf: Buffer): Map<string, TarEntry> {
  const entries = new Map<string, TarEntry>();
  const str = (off: number, len: number): string => {
    const s = buf.subarray(off, off + len);
    const nul = s.indexOf(0);
    return s.subarray(0, nul === -1 ? len : nul).toString('utf8');
  };
  const oct = (off: number, len: number): number => Number.parseInt(str(off, len).trim() || '0', 8);
  let pax: Record<string, string> = {};
  let off = 0;
  while (off + 512 <= buf.length) {
    if (buf.subarray(off, off + 512).every((b) => b === 0)) break;
    const size = oct(off + 124, 12);
    const type = str(off + 156, 1) || '0';
    const body = off + 512;
    if (type === 'x') {
      const text = buf.subarray(body, body + size).toString('utf8');
      let i = 0;
      while (i < text.length) {
        const sp = text.indexOf(' ', i);
        const len = Number.parseInt(text.slice(i, sp), 10);
        const rec = text.slice(sp + 1, i + len - 1);
        const eq = rec.indexOf('=');
        pax[rec.slice(0, eq)] = rec.slice(eq + 1);
        i += len;
      }
    } else if (type !== 'g') {
      const prefix = str(off + 345, 155);
      const name = pax.path ?? (prefix ? `${prefix}/${str(off, 100)}` : str(off, 100));
      const path = name.replace(/^\.\//, '').replace(/\/$/, '');
      entries.set(path, {
        path,
        type,
        mode: oct(off + 100, 8),
        uid: pax.uid === undefined ? oct(off + 108, 8) : Number(pax.uid),
        gid: pax.gid === undefined ? oct(off + 116, 8) : Number(pax.gid),
        mtime: pax.mtime === undefined ? oct(off + 136, 12) : Number(pax.mtime),
        size: pax.size === undefined ? size : Number(pax.size),
        linkname: pax.linkpath ?? str(off + 157, 100),
      });
      pax = {};
    }
    off = body + Math.ceil(size / 512) * 512;
  }
  return entries;
}
async function readLayer(layout: string, d: Descriptor): Promise<Map<string, TarEntry>> {
  return readTar(gunzipSync(await readFile(blobPath(layout, d.digest))));
}

/** Walks a directory: files (and symlinks) relative to `root`. */
function walk(root: string, dir = root, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(root, p, out);
    else out.push(relative(root, p));
  }
  return out;
}

/** The parts of a runc bundle's config.json (OCI runtime spec) this test changes. */
interface RuncConfig {
  process: { terminal: boolean; args: string[]; user: { uid: number; gid: number } };
  root: { readonly: boolean };
  linux: { namespaces: { type: string }[] };
  mounts: { destination: string; type: string; source: string; options?: string[] }[];
}

/** A runc bundle of `<layout>:<ref>` (umoci unpack), its config.json patched by `patch`. */
async function bundle(
  layout: string,
  ref: string,
  dir: string,
  patch: (cfg: RuncConfig) => void,
): Promise<string> {
  const r = await run('umoci', ['unpack', '--image', `${layout}:${ref}`, dir]);
  assert.equal(r.code, 0, `umoci unpack ${ref}: ${r.stderr}`);
  const cfgPath = join(dir, 'config.json');
  const cfg = JSON.parse(await readFile(cfgPath, 'utf8')) as RuncConfig;
  cfg.process.terminal = false;
  cfg.root.readonly = true;
  patch(cfg);
  await writeFile(cfgPath, JSON.stringify(cfg, null, 2));
  return dir;
}
const hostNetwork = (cfg: RuncConfig): void => {
  cfg.linux.namespaces = cfg.linux.namespaces.filter((n) => n.type !== 'network');
};

function redisPing(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port });
    let data = '';
    sock.setTimeout(2_000, () => sock.destroy(new Error('no answer to PING in 2 s')));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (b) => {
      data += b.toString('utf8');
      if (data.includes('\r\n')) {
        sock.destroy();
        resolve(data.trim());
      }
    });
    sock.on('error', reject);
  });
}

describe('images built without Docker (scripts/build-image.sh)', {
  skip: process.getuid?.() !== 0 && 'needs root (runc)',
}, () => {
  const cleanup = new Cleanup();
  after(() => cleanup.run());
  let dir: string;
  let runcRoot: string;
  let kp: Built;
  let redis: Built;
  let ids = 0;
  const containerIds: string[] = [];
  const containerId = (): string => {
    const id = `kp-image-test-${process.pid}-${++ids}`;
    containerIds.push(id);
    return id;
  };
  const runc = (args: string[], timeoutMs?: number) =>
    run('runc', ['--root', runcRoot, ...args], timeoutMs === undefined ? {} : { timeoutMs });
  /** `runc run` to completion in <bundle>, with <args> as the process. */
  const runIn = async (b: string, args: string[]) => {
    const cfgPath = join(b, 'config.json');
    const cfg = JSON.parse(await readFile(cfgPath, 'utf8')) as RuncConfig;
    cfg.process.args = args;
    await writeFile(cfgPath, JSON.stringify(cfg, null, 2));
    return runc(['run', '--bundle', b, containerId()]);
  };

  before(
    async () => {
      dir = await makeTempDir('image-test', cleanup);
      runcRoot = join(dir, 'runc');
      cleanup.defer(async () => {
        for (const id of containerIds) await runc(['delete', '--force', id]);
      });
      kp = await buildImage(['--arch', 'amd64,arm64'], join(dir, 'kube-prewarm'), join(dir, 'build-kp.log'));
      redis = await buildImage(
        ['redis', '--arch', HOST_ARCH],
        join(dir, 'redis'),
        join(dir, 'build-redis.log'),
      );
    },
    { timeout: 2 * BUILD_TIMEOUT_MS },
  );

  test('the layout: an index of linux/amd64 and linux/arm64/v8, four layers each, the config', async () => {
    const index = await blobJson<{ manifests: Descriptor[] }>(kp.layout, kp.index);
    const layoutIndex = JSON.parse(await readFile(join(kp.layout, 'index.json'), 'utf8')) as {
      manifests: Descriptor[];
    };
    const top = layoutIndex.manifests.find(
      (m) => m.annotations?.['org.opencontainers.image.ref.name'] === kp.tag,
    );
    assert.equal(top?.digest, kp.index);
    assert.equal(top?.mediaType, 'application/vnd.oci.image.index.v1+json');
    assert.deepEqual(
      index.manifests.map((m) => m.platform),
      [
        { architecture: 'amd64', os: 'linux' },
        { architecture: 'arm64', os: 'linux', variant: 'v8' },
      ],
    );
    const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    assert.equal(kp.tag, pkg.version);
    // Other commits may land while this runs: the labels name the commit built, and its time.
    const epoch = Number((await run('git', ['show', '-s', '--format=%ct', kp.revision])).stdout.trim());
    assert.ok(epoch > 0, `revision ${kp.revision} is no commit here`);
    const layersByArch = new Map<string, Descriptor[]>();
    for (const m of index.manifests) {
      const manifest = await blobJson<Manifest>(kp.layout, m.digest);
      assert.equal(manifest.mediaType, 'application/vnd.oci.image.manifest.v1+json');
      assert.equal(manifest.layers.length, 4, 'base, node, node_modules, app');
      for (const l of manifest.layers) {
        assert.equal(l.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
        assert.equal(statSync(blobPath(kp.layout, l.digest)).size, l.size);
      }
      layersByArch.set(m.platform!.architecture, manifest.layers);
      const cfg = await blobJson<ImageConfig>(kp.layout, manifest.config.digest);
      assert.equal(cfg.architecture, m.platform!.architecture);
      assert.equal(cfg.variant, m.platform!.variant);
      assert.equal(cfg.config.User, '65532:65532');
      assert.deepEqual(cfg.config.Entrypoint, ['kube-prewarm']);
      assert.deepEqual(cfg.config.Cmd, ['--help']);
      assert.equal(cfg.config.WorkingDir, '/app');
      assert.ok(cfg.config.Env.includes('NODE_ENV=production'));
      assert.equal(cfg.rootfs.diff_ids.length, 4);
      const created = new Date(epoch * 1000).toISOString().replace(/\.000Z$/, 'Z');
      assert.equal(cfg.created, created);
      const labels = cfg.config.Labels;
      assert.equal(labels['org.opencontainers.image.version'], pkg.version);
      assert.equal(labels['org.opencontainers.image.created'], created);
      assert.equal(labels['org.opencontainers.image.revision'], kp.revision);
      assert.match(labels['org.opencontainers.image.source'] ?? '', /^https:\/\//);
    }
    // One app layer for both architectures; the rest per architecture.
    const [a, b] = [layersByArch.get('amd64')!, layersByArch.get('arm64')!];
    assert.equal(a[3]!.digest, b[3]!.digest);
    for (const i of [0, 1, 2]) assert.notEqual(a[i]!.digest, b[i]!.digest);
  });

  test('the layers: no shell, no npm, owners, mtimes, and /app as the Dockerfile stages it', async () => {
    const manifest = await blobJson<Manifest>(kp.layout, kp.manifests.get(HOST_ARCH)!);
    const [base, node, deps, app] = await Promise.all(manifest.layers.map((l) => readLayer(kp.layout, l)));
    const all = [base!, node!, deps!, app!];
    const every = all.flatMap((m) => [...m.values()]);
    for (const e of every) {
      const name = e.path.split('/').at(-1)!;
      assert.ok(
        !['sh', 'bash', 'dash', 'ash', 'busybox', 'npm', 'npx', 'corepack'].includes(name),
        `${e.path} in the image`,
      );
      assert.notEqual(e.type, '1', `${e.path}: hard link`);
    }
    const epoch = Date.parse(kp.created) / 1000;
    for (const [i, layer] of all.entries())
      for (const e of layer.values()) assert.equal(e.mtime, i === 3 ? epoch : 0, `${e.path} mtime`);
    const owned: Record<string, number> = { 'home/nonroot': 65532 };
    for (const e of every) {
      assert.equal(e.uid, owned[e.path] ?? 0, `${e.path} uid`);
      assert.equal(e.gid, owned[e.path] ?? 0, `${e.path} gid`);
    }

    // base: libraries, users, CA bundle, nsswitch.conf, /tmp.
    assert.equal(base!.get('tmp')?.mode, 0o1777);
    for (const p of [
      'etc/passwd',
      'etc/group',
      'etc/nsswitch.conf',
      'etc/ssl/certs/ca-certificates.crt',
      'usr/bin/env',
    ])
      assert.ok(base!.has(p), `base has ${p}`);
    assert.ok([...base!.keys()].some((p) => /(^|\/)libc\.so\.6$/.test(p)));
    assert.ok([...base!.keys()].some((p) => /(^|\/)libstdc\+\+\.so\.6$/.test(p)));
    assert.ok(base!.get('etc/ssl/certs/ca-certificates.crt')!.size > 100_000);
    // node: the binary and the command.
    assert.equal(node!.get('usr/local/bin/node')?.mode, 0o755);
    assert.deepEqual(
      [node!.get('usr/local/bin/kube-prewarm')?.type, node!.get('usr/local/bin/kube-prewarm')?.linkname],
      ['2', '/app/bin/kube-prewarm.js'],
    );
    // node_modules: only /app/node_modules, production packages only.
    for (const p of deps!.keys()) assert.ok(p === 'app' || p.startsWith('app/node_modules'), p);
    assert.ok(deps!.has('app/node_modules/bullmq/package.json'));
    assert.ok(!deps!.has('app/node_modules/typescript'), 'a dev dependency in the image');

    // app: what the Dockerfile copies, derived from the sources here (stage.sh does both).
    const build = JSON.parse(await readFile(join(REPO_ROOT, 'tsconfig.build.json'), 'utf8')) as {
      include: string[];
    };
    const expected = new Set([
      'app/package.json',
      ...walk(join(REPO_ROOT, 'bin')).map((p) => `app/bin/${p}`),
    ]);
    for (const tree of build.include)
      for (const p of walk(join(REPO_ROOT, tree)).map((f) => `${tree}/${f}`)) {
        if (!p.endsWith('.ts')) expected.add(`app/${p}`);
        else if (!p.endsWith('.d.ts')) {
          expected.add(`app/dist/${p.replace(/\.ts$/, '.js')}`);
          expected.add(`app/dist/${p.replace(/\.ts$/, '.js.map')}`);
        }
      }
    const files = [...app!.values()].filter((e) => e.type !== '5').map((e) => e.path);
    assert.deepEqual(files.sort(), [...expected].sort());
    assert.ok(app!.has('app/agent/src/runtime/cri.proto'));
    assert.equal(app!.get('app/bin/kube-prewarm.js')?.mode, 0o755);
  });

  test(`runs kube-prewarm (${HOST_ARCH}) under runc: --help, warm --help, no /bin/sh`, async () => {
    const b = await bundle(kp.layout, `${kp.tag}-${HOST_ARCH}`, join(dir, 'bundle-kp'), () => {});
    const help = await runIn(b, ['kube-prewarm', '--help']);
    assert.equal(help.code, 0, `kube-prewarm --help: ${help.stderr}`);
    assert.match(help.stdout, /^Usage: kube-prewarm <command>/m);
    assert.match(help.stdout, /^\s+agent\s/m);
    assert.match(help.stdout, /^\s+operator\s/m);
    // `warm --help` prints the usage with warm's options (today as a usage error, exit 2).
    const warmHelp = await runIn(b, ['kube-prewarm', 'warm', '--help']);
    assert.ok([0, 2].includes(warmHelp.code), `exit ${warmHelp.code}: ${warmHelp.stderr}`);
    assert.match(warmHelp.stdout + warmHelp.stderr, /^warm options:/m);
    // Node 24, as user 65532, with the CA bundle.
    const probe = await runIn(b, [
      'node',
      '-e',
      "const n=require('fs').readFileSync(process.env.SSL_CERT_FILE,'utf8').match(/BEGIN CERTIFICATE/g).length;" +
        'console.log(JSON.stringify({v:process.version,uid:process.getuid(),gid:process.getgid(),certs:n,cwd:process.cwd()}))',
    ]);
    assert.equal(probe.code, 0, probe.stderr);
    const facts = JSON.parse(probe.stdout) as {
      v: string;
      uid: number;
      gid: number;
      certs: number;
      cwd: string;
    };
    const nodeVersion = /^NODE_VERSION=(\S+)$/m.exec(
      await readFile(join(REPO_ROOT, 'scripts/build-image.sh'), 'utf8'),
    )?.[1];
    assert.equal(facts.v, `v${nodeVersion}`);
    assert.deepEqual([facts.uid, facts.gid, facts.cwd], [65532, 65532, '/app']);
    assert.ok(facts.certs > 100, `${facts.certs} certificates`);
    const sh = await runIn(b, ['/bin/sh', '-c', 'true']);
    assert.notEqual(sh.code, 0);
    assert.match(sh.stderr, /no such file or directory/);
  });

  test(`the Redis image (${HOST_ARCH}) answers PING under runc as user 999`, async () => {
    const port = await freePort();
    const id = containerId();
    const b = await bundle(redis.layout, `${redis.tag}-${HOST_ARCH}`, join(dir, 'bundle-redis'), (cfg) => {
      hostNetwork(cfg);
      cfg.process.args = [
        'redis-server',
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--save',
        '',
        '--appendonly',
        'no',
      ];
    });
    assert.equal(
      (JSON.parse(await readFile(join(b, 'config.json'), 'utf8')) as RuncConfig).process.user.uid,
      999,
    );
    const proc = await spawnProcess({
      name: 'redis (runc)',
      command: 'runc',
      args: ['--root', runcRoot, 'run', '--bundle', b, id],
      logPath: join(dir, 'redis-runc.log'),
    });
    cleanup.defer(async () => {
      await proc.stop();
    });
    await waitUntil('PONG from the Redis container', async () => (await redisPing(port)) === '+PONG', {
      process: proc,
      timeoutMs: 60_000,
    });
    // The chart's exec probe.
    const cli = await runc(['exec', id, 'redis-cli', '-p', String(port), 'ping']);
    assert.equal(cli.stdout.trim(), 'PONG', cli.stderr);
    const ps = await runc(['exec', id, 'redis-cli', '-p', String(port), 'config', 'get', 'dir']);
    assert.match(ps.stdout, /^\/data$/m);
    await runc(['kill', id, 'TERM']);
    const status = await Promise.race([
      proc.exited,
      new Promise<null>((r) => setTimeout(() => r(null), 30_000).unref()),
    ]);
    assert.ok(status, `redis did not stop on SIGTERM within 30 s:\n${proc.logTail()}`);
    assert.match(proc.logTail(), /Ready to accept connections/);
  });

  test('--push to a registry keeps the digest; kube-prewarm warm in the container fetches it from there', async () => {
    const registry = await startRegistry();
    cleanup.defer(() => registry.close());
    const ref = `${registry.host}/kube-prewarm-redis:${redis.tag}`;
    const pushed = await buildImage(
      ['redis', '--arch', HOST_ARCH, '--push', ref],
      join(dir, 'redis-push'),
      join(dir, 'push.log'),
    );
    assert.equal(pushed.index, redis.index, 'a cached rebuild gives the same digest');
    assert.match(
      await readFile(pushed.log, 'utf8'),
      new RegExp(`^pushed ${registry.host}/kube-prewarm-redis@${redis.index}$`, 'm'),
    );
    const raw = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`]);
    assert.equal(raw.code, 0, raw.stderr);
    assert.equal(`sha256:${createHash('sha256').update(raw.stdout).digest('hex')}`, redis.index);

    const b = await bundle(kp.layout, `${kp.tag}-${HOST_ARCH}`, join(dir, 'bundle-warm'), (cfg) => {
      hostNetwork(cfg);
      cfg.mounts.push({
        destination: '/tmp',
        type: 'tmpfs',
        source: 'tmpfs',
        options: ['nosuid', 'nodev', 'mode=1777', 'size=128m'],
      });
    });
    const warm = await runIn(b, ['kube-prewarm', 'warm', ref, '--store', '/tmp/store', '--json']);
    assert.equal(warm.code, 0, `warm exited ${warm.code}:\n${warm.stderr}\n${warm.stdout}`);
    const summary = JSON.parse(warm.stdout) as Record<string, unknown>;
    assert.match(JSON.stringify(summary), new RegExp(redis.manifests.get(HOST_ARCH)!));
  });

  test('reproducible: rebuilds with --no-cache, elsewhere, give the same digests', {
    timeout: BUILD_TIMEOUT_MS * 2,
  }, async (t) => {
    // Another cache directory holding only the downloads (Node, .debs, apt state): nothing
    // staged, compiled or compressed is reused, and no path of the first build can leak in.
    const shared =
      process.env.KUBE_PREWARM_IMAGE_CACHE ??
      join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'kube-prewarm-image');
    const cache = join(dir, 'other-cache');
    await mkdir(cache);
    for (const d of ['node', 'debs', 'apt']) await symlink(join(shared, d), join(cache, d));
    const env = { ...process.env, KUBE_PREWARM_IMAGE_CACHE: cache };
    const again = await buildImage(
      ['--arch', HOST_ARCH, '--no-cache'],
      join(dir, 'kube-prewarm-again'),
      join(dir, 'build-again.log'),
      env,
    );
    assert.match(await readFile(again.log, 'utf8'), /tsc -p tsconfig\.build\.json/, 'the rebuild compiled');
    const [m1, m2] = await Promise.all(
      [kp, again].map((b) => blobJson<Manifest>(b.layout, b.manifests.get(HOST_ARCH)!)),
    );
    // base, node, node_modules do not depend on the commit or the sources.
    assert.deepEqual(
      m2!.layers.slice(0, 3).map((l) => l.digest),
      m1!.layers.slice(0, 3).map((l) => l.digest),
    );
    // In a shared checkout a commit or an edit may land between the two builds; with the
    // same commit and sources, the app layer and so the manifest are the same too.
    if (again.revision === kp.revision && again.sources === kp.sources) {
      assert.equal(m2!.layers[3]!.digest, m1!.layers[3]!.digest);
      assert.equal(again.manifests.get(HOST_ARCH), kp.manifests.get(HOST_ARCH));
    } else {
      t.diagnostic('the commit or the sources changed between the builds: app layer not compared');
    }
    const redisAgain = await buildImage(
      ['redis', '--arch', HOST_ARCH, '--no-cache'],
      join(dir, 'redis-again'),
      join(dir, 'build-redis-again.log'),
      env,
    );
    assert.equal(redisAgain.index, redis.index);
  });
});
