/** The daemon's typed configuration: defaults, parsing, validation (plain objects). */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { AGENT_SETTINGS, loadConfig, redactConfig } from '../../agent/src/daemon/config.js';
import { parseDuration } from '../../agent/src/util/format.js';
import { isPrewarmError } from '../../oci/src/errors.js';

function problems(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
    return [];
  } catch (err) {
    assert.ok(isPrewarmError(err, 'PW_ERR_INVALID_CONFIG'));
    return err.detail?.problems as string[];
  }
}

describe('agent config', () => {
  it('needs only the node name; everything else has a documented default', () => {
    const c = loadConfig({ KUBE_PREWARM_NODE_NAME: 'ip-10-0-0-1.ec2.internal' });
    assert.equal(c.nodeName, 'ip-10-0-0-1.ec2.internal');
    assert.equal(c.storePath, '/var/lib/kube-prewarm/store');
    assert.equal(c.concurrency, 2);
    assert.equal(c.chunkSize, 16 * 1024 * 1024);
    assert.equal(c.diskBudgetBytes, 0);
    assert.equal(c.diskBudgetPercent, 80);
    assert.equal(c.lockDurationMs, 30_000);
    assert.equal(c.storeVerify, 'size');
    assert.deepEqual(c.plainHttpRegistries, []);
    for (const s of Object.values(AGENT_SETTINGS)) {
      assert.match(s.env, /^KUBE_PREWARM_[A-Z_]+$/);
      assert.ok(s.description.length > 10, `${s.env} is documented`);
    }
  });

  it('parses sizes, durations, lists and booleans', () => {
    const c = loadConfig({
      KUBE_PREWARM_NODE_NAME: 'n',
      KUBE_PREWARM_DISK_BUDGET: '20GiB',
      KUBE_PREWARM_BANDWIDTH: '50MiB',
      KUBE_PREWARM_GC_INTERVAL: '90s',
      KUBE_PREWARM_STALE_INGEST: '2h',
      KUBE_PREWARM_SHUTDOWN_TIMEOUT: '1500ms',
      KUBE_PREWARM_PLAIN_HTTP: 'registry.local:5000, mirror.internal',
      KUBE_PREWARM_STORE_FSYNC: 'off',
      KUBE_PREWARM_DISK_BUDGET_PERCENT: '50%',
    });
    assert.equal(c.diskBudgetBytes, 20 * 1024 ** 3);
    assert.equal(c.bandwidthBytesPerSec, 50 * 1024 ** 2);
    assert.equal(c.gcIntervalMs, 90_000);
    assert.equal(c.staleIngestMs, 7_200_000);
    assert.equal(c.shutdownTimeoutMs, 1500);
    assert.deepEqual(c.plainHttpRegistries, ['registry.local:5000', 'mirror.internal']);
    assert.equal(c.storeFsync, false);
    assert.equal(c.diskBudgetPercent, 50);
    assert.equal(parseDuration('250'), 250);
    assert.throws(() => parseDuration('soon'));
  });

  it('reports every problem at once, never echoing a secret', () => {
    const got = problems({
      KUBE_PREWARM_CONCURRENCY: '-1',
      KUBE_PREWARM_REDIS_URL: 'http://user:hunter2hunter2@redis:6379',
      KUBE_PREWARM_STORE_VERIFY: 'maybe',
      KUBE_PREWARM_PLATFORM: 'linux',
      KUBE_PREWARM_MIRROR_PORT: '70000',
    });
    assert.equal(got.length, 6);
    assert.match(got.join('\n'), /KUBE_PREWARM_NODE_NAME is required/);
    assert.match(got.join('\n'), /KUBE_PREWARM_STORE_VERIFY \("maybe"\): must be one of none, size, full/);
    assert.match(got.join('\n'), /KUBE_PREWARM_MIRROR_PORT/);
    assert.match(got.join('\n'), /KUBE_PREWARM_PLATFORM/);
    assert.match(got.join('\n'), /KUBE_PREWARM_REDIS_URL: must be a redis:\/\//);
    assert.doesNotMatch(got.join('\n'), /hunter2/);
  });

  it('refuses a store without any budget, and a stalled check far slower than the lock', () => {
    assert.deepEqual(
      problems({
        KUBE_PREWARM_NODE_NAME: 'n',
        KUBE_PREWARM_DISK_BUDGET: '0',
        KUBE_PREWARM_DISK_BUDGET_PERCENT: '0',
      }).length,
      1,
    );
    assert.equal(
      problems({
        KUBE_PREWARM_NODE_NAME: 'n',
        KUBE_PREWARM_JOB_LOCK: '2s',
        KUBE_PREWARM_STALLED_INTERVAL: '60s',
      }).length,
      1,
    );
  });

  it('secure defaults: mirror on loopback, public registries only, no peers without a token', () => {
    const c = loadConfig({ KUBE_PREWARM_NODE_NAME: 'n' });
    assert.equal(c.mirrorHost, '127.0.0.1');
    assert.deepEqual(c.allowedRegistries, ['_default']);
    assert.equal(c.peerUrl, '');
    assert.equal(c.peerPort, 5051);
    const bad = problems({
      KUBE_PREWARM_NODE_NAME: 'n',
      KUBE_PREWARM_PEER_URL: 'http://10.0.0.1:5051',
    });
    assert.equal(bad.length, 1);
    assert.match(bad[0]!, /KUBE_PREWARM_PEER_TOKEN_FILE/);
    assert.deepEqual(
      problems({
        KUBE_PREWARM_NODE_NAME: 'n',
        KUBE_PREWARM_PEER_URL: 'http://10.0.0.1:5051',
        KUBE_PREWARM_PEER_TOKEN_FILE: '/etc/kube-prewarm/peer/token',
      }),
      [],
    );
  });

  it('validates the registry allow-list and keeps plain HTTP within it', () => {
    const c = loadConfig({
      KUBE_PREWARM_NODE_NAME: 'n',
      KUBE_PREWARM_ALLOWED_REGISTRIES: '_default, 10.0.0.5:5000',
      KUBE_PREWARM_PLAIN_HTTP: '10.0.0.5:5000',
    });
    assert.deepEqual(c.allowedRegistries, ['_default', '10.0.0.5:5000']);
    const bad = problems({ KUBE_PREWARM_NODE_NAME: 'n', KUBE_PREWARM_ALLOWED_REGISTRIES: 'docker.io,a/b' });
    assert.equal(bad.length, 1);
    assert.match(bad[0]!, /KUBE_PREWARM_ALLOWED_REGISTRIES.*"a\/b"/);
    const plain = problems({ KUBE_PREWARM_NODE_NAME: 'n', KUBE_PREWARM_PLAIN_HTTP: '127.0.0.1:5000' });
    assert.deepEqual(plain, [
      'KUBE_PREWARM_PLAIN_HTTP: 127.0.0.1:5000 is not allowed by KUBE_PREWARM_ALLOWED_REGISTRIES',
    ]);
  });

  it('hides secrets when logged', () => {
    const c = loadConfig({
      KUBE_PREWARM_NODE_NAME: 'n',
      KUBE_PREWARM_REDIS_URL: 'redis://:pw-very-secret@r:6379',
    });
    assert.equal(c.redisUrl, 'redis://:pw-very-secret@r:6379');
    const shown = JSON.stringify(redactConfig(c));
    assert.doesNotMatch(shown, /pw-very-secret/);
    assert.match(shown, /"redisUrl":"\[hidden\]"/);
  });

  it('is documented in docs/agent.md: one row per variable, with its default and description', () => {
    const doc = readFileSync(new URL('../../docs/agent.md', import.meta.url), 'utf8').split('\n');
    for (const s of Object.values(AGENT_SETTINGS)) {
      const row = doc.find((l) => l.startsWith(`| \`${s.env}\` |`));
      assert.ok(row, `${s.env} has no row in docs/agent.md`);
      const shown =
        s.default === undefined ? '(required)' : s.default === '' ? '(empty)' : `\`${s.default}\``;
      assert.equal(row.split(' | ')[1], shown, `${s.env}: default`);
      assert.ok(row.includes(s.description), `${s.env}: description differs from config.ts`);
    }
  });
});
