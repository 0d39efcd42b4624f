/**
 * Replay protection with a clock the test moves: a captured, correctly signed GitHub
 * delivery is a duplicate inside the window (its dedup key lives at least as long as the
 * window) and refused as stale after it; deliveries without a usable signed time are
 * refused; and the dedup TTL can never be configured shorter than a replay window.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { isPrewarmError } from '../../../oci/src/errors.js';
import {
  createWebhookHandler,
  MemoryDedupStore,
  silentLogger,
  WebhookErrorCodes,
} from '../../../operator/src/webhooks/index.js';
import { hmacSha256Hex } from '../../../operator/src/webhooks/secrets.js';
import { errorCode, fixture, fixtureJson, NOW, startHarness } from './helpers.js';

const GH = 'gh-secret-0123456789abcdef';
const WINDOW_S = 3600;

function signedHeaders(body: Buffer, delivery: string) {
  return {
    headers: {
      'X-GitHub-Event': 'package',
      'X-GitHub-Delivery': delivery,
      'X-Hub-Signature-256': `sha256=${hmacSha256Hex(GH, body)}`,
    },
  };
}

describe('GitHub replay window', () => {
  it('takes a captured delivery once, as a duplicate inside the window, and refuses it after the window', async () => {
    let clock = NOW;
    const h = await startHarness({
      options: { maxEventAgeSeconds: WINDOW_S, sources: { github: { secrets: [GH] } } },
      now: () => clock,
      dedup: new MemoryDedupStore({ now: () => clock }),
    });
    try {
      const body = fixture('github/package-published.json');
      const first = await h.post('github', body, signedHeaders(body, 'd-1'));
      assert.equal(first.status, 202, first.body);
      assert.equal(first.json.accepted, 1);

      // The attacker replays the same bytes; the delivery id header is not signed, so it
      // changes it at will. Inside the window the body hash dedups it.
      clock = NOW + 30 * 60 * 1000;
      const inside = await h.post('github', body, signedHeaders(body, 'd-2-forged'));
      assert.equal(inside.status, 202);
      assert.equal(inside.json.duplicates, 1);

      // After the window (the package's updated_at is a minute before NOW).
      clock = NOW + WINDOW_S * 1000 + 1000;
      const late = await h.post('github', body, signedHeaders(body, 'd-3-forged'));
      assert.equal(late.status, 400, late.body);
      assert.equal(errorCode(late), WebhookErrorCodes.STALE);
      await h.settle();
      assert.equal(h.events.length, 1, 'dispatched exactly once');
    } finally {
      await h.close();
    }
  });

  it('refuses a signed delivery with no usable time, and one from the future', async () => {
    const h = await startHarness({ options: { sources: { github: { secrets: [GH] } } } });
    try {
      const p = fixtureJson('github/package-published.json');
      const pkg = p.package as Record<string, unknown>;
      const undated = Buffer.from(
        JSON.stringify({ ...p, package: { ...pkg, updated_at: '0001-01-01T00:00:00Z' } }),
      );
      const r1 = await h.post('github', undated, signedHeaders(undated, 'u-1'));
      assert.equal(r1.status, 400, r1.body);
      assert.equal(errorCode(r1), WebhookErrorCodes.STALE);
      const future = Buffer.from(
        JSON.stringify({ ...p, package: { ...pkg, updated_at: new Date(NOW + 3600_000).toISOString() } }),
      );
      const r2 = await h.post('github', future, signedHeaders(future, 'f-1'));
      assert.equal(errorCode(r2), WebhookErrorCodes.STALE);
      await h.settle();
      assert.deepEqual(h.events, []);
    } finally {
      await h.close();
    }
  });

  it('uses a fresh package_version time over an old package time', async () => {
    const h = await startHarness({ options: { sources: { github: { secrets: [GH] } } } });
    try {
      const p = fixtureJson('github/package-published.json');
      const pkg = p.package as Record<string, unknown>;
      const version = pkg.package_version as Record<string, unknown>;
      const body = Buffer.from(
        JSON.stringify({
          ...p,
          package: {
            ...pkg,
            updated_at: '2023-01-01T00:00:00Z',
            package_version: { ...version, created_at: '2024-05-14T09:30:50Z' },
          },
        }),
      );
      const r = await h.post('github', body, signedHeaders(body, 'v-1'));
      assert.equal(r.status, 202, r.body);
      await h.settle();
      assert.equal(h.events[0]?.timestamp, '2024-05-14T09:30:50.000Z');
    } finally {
      await h.close();
    }
  });
});

describe('dedup TTL and replay windows', () => {
  const deps = {
    onPush: async () => {},
    dedup: new MemoryDedupStore(),
    logger: silentLogger(),
    metrics: new Registry(),
  };

  it('refuses a dedup TTL shorter than the longest window (GitHub’s own included) plus skew', () => {
    assert.throws(
      () =>
        createWebhookHandler(deps, {
          dedupTtlSeconds: 4000,
          maxClockSkewSeconds: 300,
          sources: { github: { secrets: [GH], maxEventAgeSeconds: 7200 } },
        }),
      (err: unknown) => isPrewarmError(err, 'PW_ERR_INVALID_CONFIG'),
    );
    // Exactly window + skew is enough.
    const ok = createWebhookHandler(deps, {
      dedupTtlSeconds: 7500,
      maxClockSkewSeconds: 300,
      sources: { github: { secrets: [GH], maxEventAgeSeconds: 7200 } },
    });
    void ok.close(100);
  });
});
