/** The worker's progress reporter and job-data validation, as plain objects (no I/O). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseJobData } from '../../agent/src/daemon/job-data.js';
import { classifyFailure } from '../../agent/src/daemon/job-processor.js';
import { ProgressReporter } from '../../agent/src/daemon/progress-reporter.js';
import { ErrorCodes, PrewarmError } from '../../oci/src/errors.js';
import type { PrewarmJobProgress } from '../../oci/src/job-contract.js';

const p = (
  phase: PrewarmJobProgress['phase'],
  bytesDone: number,
  extra: Partial<PrewarmJobProgress> = {},
) => ({
  phase,
  bytesDone,
  bytesTotal: 100,
  layersDone: 0,
  layersTotal: 2,
  ...extra,
});

/** A send that records and stays pending until released, to control interleaving. */
function gatedSend() {
  const sent: PrewarmJobProgress[] = [];
  let release: (() => void) | undefined;
  const send = async (x: PrewarmJobProgress) => {
    sent.push(x);
    await new Promise<void>((r) => {
      release = r;
    });
  };
  return {
    sent,
    send,
    release: () => {
      const r = release;
      release = undefined;
      r?.();
    },
  };
}

describe('ProgressReporter', () => {
  it('sends one at a time, in order, coalescing byte updates but never a phase change', async () => {
    const g = gatedSend();
    const r = new ProgressReporter(g.send, { minIntervalMs: 0 });
    r.update(p('resolving', 0, { bytesTotal: 0, layersTotal: 0 }));
    // While the first send is pending: a phase change and several byte updates.
    r.update(p('fetching', 10));
    r.update(p('fetching', 20));
    r.update(p('fetching', 30));
    r.update(p('warm', 100, { layersDone: 2 }));
    assert.equal(g.sent.length, 1);
    const flushed = r.flush();
    for (let i = 0; i < 5 && g.sent.length < 3; i++) {
      g.release();
      await new Promise((res) => setImmediate(res));
    }
    g.release();
    await flushed;
    assert.deepEqual(
      g.sent.map((x) => [x.phase, x.bytesDone]),
      [
        ['resolving', 0],
        ['fetching', 30],
        ['warm', 100],
      ],
    );
  });

  it('never goes backwards, from a floor left by an earlier attempt', async () => {
    const sent: PrewarmJobProgress[] = [];
    const r = new ProgressReporter(
      async (x) => {
        sent.push(x);
      },
      { minIntervalMs: 0, floor: p('fetching', 60, { evictions: 2 }) },
    );
    r.update(p('resolving', 0, { bytesTotal: 0, layersTotal: 0 }));
    r.update(p('fetching', 40));
    r.update(p('fetching', 70, { layersDone: 1 }));
    r.update(p('fetching', 65));
    r.update(p('warm', 100, { layersDone: 2 }));
    await r.close();
    r.update(p('unpacked', 100));
    assert.deepEqual(
      sent.map((x) => [x.phase, x.bytesDone, x.layersDone, x.evictions]),
      [
        ['fetching', 70, 1, 2],
        ['warm', 100, 2, 2],
      ],
    );
  });

  it('a failing send is reported and dropped; later updates still go out', async () => {
    const errors: unknown[] = [];
    const sent: PrewarmJobProgress[] = [];
    let fail = true;
    const r = new ProgressReporter(
      async (x) => {
        if (fail) {
          fail = false;
          throw new Error('redis down');
        }
        sent.push(x);
      },
      { minIntervalMs: 0, onError: (e) => errors.push(e) },
    );
    r.update(p('resolving', 0));
    await r.flush();
    r.update(p('fetching', 5));
    await r.flush();
    assert.equal(errors.length, 1);
    assert.deepEqual(
      sent.map((x) => x.phase),
      ['fetching'],
    );
  });
});

describe('job data and failure classification', () => {
  const data = {
    v: 1,
    owners: [{ namespace: 'ns', name: 'ip', uid: 'u1' }],
    repository: 'registry.example.com/team/app',
    tag: 'v1',
    digest: `sha256:${'a'.repeat(64)}`,
    platform: 'linux/arm64/v8',
    node: 'node-a',
    mode: 'cache',
    triggeredAt: 1,
    trigger: 'spec',
  };

  it('parses a contract-shaped job for this node', () => {
    const j = parseJobData(data, 'node-a', 'linux/amd64');
    assert.equal(j.ref.registry, 'registry.example.com');
    assert.equal(j.ref.repository, 'team/app');
    assert.equal(j.ref.digest, data.digest);
    assert.deepEqual(j.platform, { os: 'linux', architecture: 'arm64', variant: 'v8' });
    assert.equal(
      parseJobData({ ...data, platform: '' }, 'node-a', 'linux/amd64').data.platform,
      'linux/amd64',
    );
  });

  it('rejects another node, a newer schema, bad fields: permanent INVALID_CONFIG / INVALID_REFERENCE', () => {
    const code = (raw: unknown) => {
      try {
        parseJobData(raw, 'node-a', 'linux/amd64');
        return 'ok';
      } catch (err) {
        const f = classifyFailure(err);
        return `${f.code}${f.permanent ? '!' : ''}`;
      }
    };
    assert.equal(code({ ...data, node: 'node-b' }), 'PW_ERR_INVALID_CONFIG!');
    assert.equal(code({ ...data, v: 2 }), 'PW_ERR_INVALID_CONFIG!');
    assert.equal(code({ ...data, mode: 'eager' }), 'PW_ERR_INVALID_CONFIG!');
    assert.equal(code({ ...data, digest: 'sha256:xyz' }), 'PW_ERR_INVALID_CONFIG!');
    assert.equal(code({ ...data, repository: 'registry.example.com/../etc' }), 'PW_ERR_INVALID_REFERENCE!');
    assert.equal(code(null), 'PW_ERR_INVALID_CONFIG!');
  });

  it('classifies: permanent by code, DISK_FULL by its detail, unknown errors as internal and retryable', () => {
    const c = (e: unknown) => classifyFailure(e);
    assert.equal(c(new PrewarmError(ErrorCodes.AUTH_DENIED, 'no')).permanent, true);
    assert.equal(c(new PrewarmError(ErrorCodes.NETWORK, 'reset', { retryable: true })).permanent, false);
    assert.equal(c(new PrewarmError(ErrorCodes.DISK_FULL, 'full')).permanent, false);
    assert.equal(
      c(new PrewarmError(ErrorCodes.DISK_FULL, 'too big', { detail: { permanent: true } })).permanent,
      true,
    );
    const internal = c(new TypeError('boom'));
    assert.equal(internal.message, 'PW_ERR_INTERNAL: boom');
    assert.equal(internal.permanent, false);
    assert.equal(
      c(new PrewarmError(ErrorCodes.MANIFEST_UNKNOWN, 'gone')).message,
      'PW_ERR_MANIFEST_UNKNOWN: gone',
    );
  });
});
