/**
 * The receiver binary's contract: one validated config (docs/webhooks.md's table in step
 * with it), no way to reach the Kubernetes API (nothing in its import graph can), and a
 * configuration file it refuses without ever printing the file's content.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { isPrewarmError } from '../../../oci/src/errors.js';
import { parseWebhookOptionsFile } from '../../../operator/src/webhooks/index.js';
import { loadReceiverConfig, RECEIVER_SETTINGS } from '../../../operator/src/webhooks/receiver-config.js';
import { REPO_ROOT } from '../../harness/kube.js';
import { Cleanup, makeTempDir } from '../../harness/tmp.js';

const execFileP = promisify(execFile);

describe('receiver configuration', () => {
  it('has defaults, validates every variable and requires the configuration file', () => {
    const cfg = loadReceiverConfig({
      KUBE_PREWARM_WEBHOOKS_CONFIG: '/etc/kube-prewarm/webhooks/webhooks.yaml',
    });
    assert.equal(cfg.webhooksPort, 8080);
    assert.equal(cfg.httpPort, 9090);
    assert.equal(cfg.maxConnections, 256);
    assert.equal(cfg.maxInflightBodyBytes, 16 * 1024 * 1024);
    assert.throws(
      () => loadReceiverConfig({}),
      (err: unknown) => isPrewarmError(err, 'PW_ERR_INVALID_CONFIG'),
    );
    assert.throws(
      () =>
        loadReceiverConfig({
          KUBE_PREWARM_WEBHOOKS_CONFIG: '/x',
          KUBE_PREWARM_WEBHOOKS_MAX_CONNECTIONS: '0',
          KUBE_PREWARM_REDIS_URL: 'http://redis',
        }),
      (err: unknown) =>
        isPrewarmError(err, 'PW_ERR_INVALID_CONFIG') &&
        /KUBE_PREWARM_WEBHOOKS_MAX_CONNECTIONS/.test((err as Error).message) &&
        /KUBE_PREWARM_REDIS_URL/.test((err as Error).message),
    );
  });

  it('is documented variable by variable in docs/webhooks.md', () => {
    const doc = readFileSync(join(REPO_ROOT, 'docs/webhooks.md'), 'utf8');
    for (const s of Object.values(RECEIVER_SETTINGS))
      assert.match(doc, new RegExp(`\\| \`${s.env}\` +\\|`), `docs/webhooks.md documents ${s.env}`);
  });

  it('refuses a configuration file with unknown keys or bad YAML without quoting it', () => {
    const secret = 'quoted-secret-0123456789abcdef';
    for (const text of [
      `sources:\n  acr: { secrets: ["${secret}"\n`,
      `port: 1\nsources: { acr: { secrets: ["${secret}"] } }\n`,
      `- "${secret}"\n`,
    ]) {
      assert.throws(
        () => parseWebhookOptionsFile(text),
        (err: unknown) =>
          isPrewarmError(err, 'PW_ERR_INVALID_CONFIG') && !(err as Error).message.includes(secret),
      );
    }
    assert.deepEqual(parseWebhookOptionsFile('{"sources": {}}'), { sources: {} });
  });
});

describe('the receiver process', () => {
  const cleanup = new Cleanup();
  after(() => cleanup.run());

  it('exits with PW_ERR_INVALID_CONFIG on a bad file, printing none of it', async () => {
    const dir = await makeTempDir('webhook-badconfig', cleanup);
    const secret = 'printed-secret-0123456789abcdef';
    const file = join(dir, 'webhooks.yaml');
    await writeFile(file, `sources:\n  acr: { secrets: ["${secret}"\n`);
    const r = await execFileP(process.execPath, ['--import', 'tsx', 'operator/src/webhooks-main.ts'], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? '', KUBE_PREWARM_WEBHOOKS_CONFIG: file },
    }).then(
      () => ({ code: 0, out: '' }),
      (err: { code: number; stdout: string; stderr: string }) => ({
        code: err.code,
        out: err.stdout + err.stderr,
      }),
    );
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /PW_ERR_INVALID_CONFIG/);
    assert.ok(!r.out.includes(secret), r.out);
  });

  it('cannot reach the Kubernetes API: nothing in its import graph is a Kubernetes client', () => {
    const seen = new Set<string>();
    const packages = new Set<string>();
    const visit = (file: string): void => {
      if (seen.has(file)) return;
      seen.add(file);
      const text = readFileSync(file, 'utf8');
      // Type-only imports are erased at compile time; everything else is loaded.
      for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\s+(type\s+)?[^;]*?from\s+'([^']+)'/g)) {
        if (m[1]) continue;
        const spec = m[2]!;
        if (spec.startsWith('.')) visit(resolve(dirname(file), spec.replace(/\.js$/, '.ts')));
        else packages.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
      }
      for (const m of text.matchAll(/import\(\s*'([^']+)'\s*\)/g)) packages.add(m[1]!);
    };
    visit(join(REPO_ROOT, 'operator/src/webhooks-main.ts'));
    assert.ok(seen.size > 10, `walked ${seen.size} files`);
    assert.ok(packages.has('ioredis'), 'the walk sees the packages it uses');
    assert.ok(!packages.has('@kubernetes/client-node'), [...packages].join(', '));
    const kubeFiles = [...seen].filter((f) => /operator\/src\/(kube|leader|reconcile)\//.test(f));
    assert.deepEqual(kubeFiles, [], 'no Kubernetes port, election or controller code');
  });
});
