import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { parseJournal } from '../../agent/src/store/fs-store.js';
import {
  Cleanup,
  type FaultProxyHandle,
  makeTempDir,
  type PushedImage,
  pushImage,
  type RegistryHandle,
  startRegistry,
  waitUntil,
} from '../harness/index.js';
import { hashFile } from './fetch-helpers.js';
import { startProxiedRegistry, startTestRegistry } from './fixtures.js';

const execFileP = promisify(execFile);
const cleanup = new Cleanup();
after(() => cleanup.run());
const MiB = 1024 * 1024;
const CLI = ['--import', 'tsx', 'agent/src/cli/run.ts'];

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(args: string[]): Promise<Run> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [...CLI, ...args], { maxBuffer: 16 * MiB });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('kube-prewarm warm (CLI)', () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;
  let img: PushedImage;
  before(async () => {
    ({ registry, proxy } = await startProxiedRegistry(cleanup));
    img = await pushImage(registry, {
      repository: 'kp/cli',
      tag: 'v1',
      layers: [{ files: { 'hello.txt': 'hi' } }, { randomBytes: 96 * MiB, seed: 11 }],
    });
  });

  it('warms an image and prints a JSON summary', async () => {
    const store = await makeTempDir('store', cleanup);
    const r = await cli(['warm', img.ref, '--store', store, '--json', '--no-fsync']);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      ok: boolean;
      record: { manifestDigest: string; blobs: string[] };
      bytesTotal: number;
    };
    assert.equal(out.ok, true);
    assert.equal(out.record.manifestDigest, img.digest);
    for (const d of out.record.blobs)
      assert.equal(await hashFile(join(store, 'blobs/sha256', d.slice(7))), d);
  });

  it('prints progress and a human summary without --json', async () => {
    const r = await cli(['warm', img.ref, '--store', await makeTempDir('store', cleanup), '--no-fsync']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /layers \d+\/2/);
    assert.match(r.stderr, /fetched 96\.\d MiB \(96\.\d MiB registry, 0 B peers\)/);
  });

  it('exits with distinct codes and clear messages for bad input', async () => {
    const store = await makeTempDir('store', cleanup);
    const indexed = await pushImage(registry, {
      repository: 'kp/cli-index',
      tag: 'v1',
      index: true,
      layers: [{ files: { a: 'a' } }],
    });
    const cases: [string[], number, RegExp][] = [
      [['warm'], 2, /exactly one image reference/],
      [['warm', 'Bad Ref!', '--store', store], 2, /PW_ERR_INVALID_REFERENCE/],
      [
        ['warm', img.ref, '--store', store, '--concurrency', '0'],
        2,
        /--concurrency must be a positive integer/,
      ],
      [['warm', img.ref, '--store', store, '--platform', 'linux'], 2, /invalid platform/],
      [['warm', `${registry.host}/kp/cli:missing`, '--store', store], 3, /PW_ERR_MANIFEST_UNKNOWN/],
      [
        ['warm', indexed.ref, '--store', store, '--platform', 'linux/riscv64'],
        3,
        /PW_ERR_PLATFORM_NOT_FOUND.*linux\/amd64/,
      ],
      [['bogus'], 2, /unknown command/],
    ];
    for (const [args, code, msg] of cases) {
      const r = await cli(args);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, msg);
    }
  });

  it('exits 4 on auth failure and 6 when the registry is unreachable', async () => {
    const auth = await startTestRegistry(cleanup, { auth: { htpasswd: { username: 'u', password: 'p' } } });
    const store = await makeTempDir('store', cleanup);
    const r = await cli(['warm', `${auth.host}/kp/x:v1`, '--store', store]);
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr, /PW_ERR_AUTH_DENIED/);
    const down = await startRegistry();
    await down.close();
    const r2 = await cli(['warm', `${down.host}/kp/x:v1`, '--store', store, '--retries', '1']);
    assert.equal(r2.code, 6, r2.stderr);
    assert.match(r2.stderr, /PW_ERR_NETWORK.*ECONNREFUSED/);
  });

  it('exits 5 on a digest mismatch and keeps nothing under the final name', async () => {
    const bad = await pushImage(registry, {
      repository: 'kp/cli-bad',
      tag: 'v1',
      layers: [{ randomBytes: 2 * MiB, seed: 12 }],
    });
    const layer = bad.manifests[0]!.layers[0]!.digest;
    const { open } = await import('node:fs/promises');
    const fh = await open(registry.blobDataPath(layer), 'r+');
    await fh.write(Buffer.from('XX'), 0, 2, 1000);
    await fh.close();
    const store = await makeTempDir('store', cleanup);
    const r = await cli(['warm', bad.ref, '--store', store, '--json']);
    assert.equal(r.code, 5, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'PW_ERR_DIGEST_MISMATCH');
    assert.equal(existsSync(join(store, 'blobs/sha256', layer.slice(7))), false);
  });

  it('exits 7 when the store disk is full, without a partial blob under its final name', async (t) => {
    if (process.getuid?.() !== 0) {
      t.skip('needs root to mount a tmpfs');
      return;
    }
    const store = await makeTempDir('store-tmpfs', cleanup);
    await execFileP('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', store]);
    cleanup.defer(() => execFileP('umount', ['-l', store]).then(() => undefined));
    const r = await cli(['warm', img.ref, '--store', store, '--json']);
    assert.equal(r.code, 7, r.stderr);
    assert.match(r.stderr, /PW_ERR_DISK_FULL/);
    const big = img.manifests[0]!.layers[1]!.digest;
    assert.equal(existsSync(join(store, 'blobs/sha256', big.slice(7))), false);
    // What fit is still there and valid.
    const small = img.manifests[0]!.config.digest;
    assert.equal(await hashFile(join(store, 'blobs/sha256', small.slice(7))), small);
  });

  it('resumes after being killed with SIGKILL: the rerun fetches only what was not durable', async () => {
    const store = await makeTempDir('store', cleanup);
    const big = img.manifests[0]!.layers[1]!;
    const ingestJournal = join(store, 'ingest', big.digest.slice(7), 'journal');
    proxy.resetStats();
    const child = spawn(
      process.execPath,
      [
        ...CLI,
        'warm',
        `${proxy.host}/kp/cli:v1`,
        '--store',
        store,
        '--bandwidth',
        '24MiB',
        '--chunk-size',
        '4MiB',
      ],
      {
        stdio: 'ignore',
      },
    );
    cleanup.defer(() => {
      child.kill('SIGKILL');
    });
    await waitUntil(
      'a third of the layer durable',
      async () => {
        const text = await readFile(ingestJournal, 'utf8').catch(() => '');
        return parseJournal(text, big.size).size > big.size * 0.3;
      },
      { timeoutMs: 60_000, intervalMs: 50 },
    );
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const durable = parseJournal(await readFile(ingestJournal, 'utf8'), big.size).size;
    const firstRun = proxy.bytes(new RegExp(`${big.digest}$`));
    assert.ok(firstRun < big.size, 'killed before the end');
    proxy.resetStats();

    const r = await cli(['warm', `${proxy.host}/kp/cli:v1`, '--store', store, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      bytesAlreadyPresent: number;
      blobs: { digest: string; bytesAlreadyPresent: number }[];
    };
    const resumed = out.blobs.find((b) => b.digest === big.digest)!;
    assert.ok(
      resumed.bytesAlreadyPresent >= durable,
      `${resumed.bytesAlreadyPresent} resumed, ${durable} were durable`,
    );
    const secondRun = proxy.bytes(new RegExp(`${big.digest}$`));
    assert.equal(
      secondRun,
      big.size - resumed.bytesAlreadyPresent,
      'the rerun requested exactly the missing bytes',
    );
    assert.equal(await hashFile(join(store, 'blobs/sha256', big.digest.slice(7))), big.digest);
    assert.deepEqual(await readdir(join(store, 'ingest')), []);
  });
});
