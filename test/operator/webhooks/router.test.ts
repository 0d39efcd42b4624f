/**
 * The shared pipeline in front of the sources: routing, method, size limit, body timeout,
 * backpressure, dedup failure modes, dispatch outcomes, shutdown, and config validation.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { isPrewarmError } from '../../../oci/src/errors.js';
import {
  createWebhookHandler,
  type DedupStore,
  EVENTS_METRIC,
  MemoryDedupStore,
  type PushEvent,
  silentLogger,
  WebhookErrorCodes,
} from '../../../operator/src/webhooks/index.js';
import { errorCode, fixture, fixtureJson, startHarness } from './helpers.js';

const TOKEN = 'dist-token-0123456789abcdef';
const auth = {
  contentType: 'application/vnd.docker.distribution.events.v1+json',
  headers: { Authorization: `Bearer ${TOKEN}` },
};

/** A distribution envelope with one tagged manifest push under `id`. */
function pushEnvelope(id: string, tag = '1.0'): string {
  const env = fixtureJson('distribution/push-manifest.json');
  const events = env.events as Record<string, unknown>[];
  return JSON.stringify({
    events: [{ ...events[1], id, target: { ...(events[1]!.target as object), tag } }],
  });
}

/** A promise that dispatches wait on, and the function that settles it. */
function openGate(): { gate: Promise<void>; release: () => void } {
  let release!: () => void;
  const gate = new Promise<void>((r) => {
    release = r;
  });
  return { gate, release };
}

describe('routing and HTTP checks', () => {
  it('answers 404 for unconfigured sources and foreign paths, 405 for GET', async () => {
    const h = await startHarness({ options: { sources: { distribution: { secrets: [TOKEN] } } } });
    try {
      const acr = await h.post('acr', '{}', auth);
      assert.equal(acr.status, 404);
      assert.equal(errorCode(acr), WebhookErrorCodes.NOT_FOUND);
      const other = await h.post('', '{}', { ...auth, path: '/metrics' });
      assert.equal(other.status, 404);
      const get = await h.post('distribution', '', { method: 'GET' });
      assert.equal(get.status, 405);
      assert.equal(get.headers.allow, 'POST');
      assert.equal(errorCode(get), WebhookErrorCodes.METHOD_NOT_ALLOWED);
      const slash = await h.post('', pushEnvelope('trailing-slash'), {
        ...auth,
        path: '/webhooks/distribution/',
      });
      assert.equal(slash.status, 202);
    } finally {
      await h.close();
    }
  });

  it('refuses bodies over the limit with 413, announced or streamed, without dispatching', async () => {
    const h = await startHarness({
      options: { maxBodyBytes: 4096, sources: { distribution: { secrets: [TOKEN] } } },
    });
    try {
      // A valid envelope padded with whitespace past the limit: only the size is wrong.
      const big = pushEnvelope('oversize-1') + ' '.repeat(8192);
      const announced = await h.post('distribution', big, auth);
      assert.equal(announced.status, 413, announced.body);
      assert.equal(errorCode(announced), WebhookErrorCodes.PAYLOAD_TOO_LARGE);
      // Chunked: no Content-Length, the limit trips while reading.
      const streamed = await rawRequest(
        h.port,
        [
          'POST /webhooks/distribution HTTP/1.1',
          'Host: x',
          `Authorization: Bearer ${TOKEN}`,
          `Content-Type: ${auth.contentType}`,
          'Transfer-Encoding: chunked',
          '',
          `${big.length.toString(16)}\r\n${big}\r\n0\r\n\r\n`,
        ].join('\r\n'),
      );
      assert.match(streamed, /^HTTP\/1\.1 413 /);
      assert.match(streamed, /PW_ERR_WEBHOOK_PAYLOAD_TOO_LARGE/);
      await h.settle();
      assert.deepEqual(h.events, []);
      // Exactly at the limit is fine.
      const exact = pushEnvelope('exact-1');
      const ok = await h.post('distribution', exact + ' '.repeat(4096 - Buffer.byteLength(exact)), auth);
      assert.equal(ok.status, 202);
    } finally {
      await h.close();
    }
  });

  it('answers 408 when the body does not arrive in time', async () => {
    const h = await startHarness({
      options: { bodyTimeoutMs: 200, sources: { distribution: { secrets: [TOKEN] } } },
    });
    try {
      const body = pushEnvelope('slow-1');
      // Announce the full length, send half, then wait for the server to give up.
      const answer = await rawRequest(
        h.port,
        [
          'POST /webhooks/distribution HTTP/1.1',
          'Host: x',
          `Authorization: Bearer ${TOKEN}`,
          `Content-Type: ${auth.contentType}`,
          `Content-Length: ${Buffer.byteLength(body)}`,
          '',
          body.slice(0, 50),
        ].join('\r\n'),
      );
      assert.match(answer, /^HTTP\/1\.1 408 /);
      assert.match(answer, /PW_ERR_WEBHOOK_BODY_TIMEOUT/);
      assert.deepEqual(h.events, []);
    } finally {
      await h.close();
    }
  });
});

describe('dispatch', () => {
  it('answers 202 before onPush finishes, and counts matched:0 as unwatched', async () => {
    const { gate, release } = openGate();
    const seen: PushEvent[] = [];
    const h = await startHarness({
      options: { sources: { distribution: { secrets: [TOKEN] } } },
      onPush: async (e) => {
        seen.push(e);
        await gate;
        return { matched: e.tag === 'watched' ? 1 : 0 };
      },
    });
    try {
      const a = await h.post('distribution', pushEnvelope('async-1', 'watched'), auth);
      const b = await h.post('distribution', pushEnvelope('async-2', 'nobody-cares'), auth);
      assert.equal(a.status, 202);
      assert.equal(b.status, 202);
      assert.equal(h.server.handler.pending, 2, 'both dispatches still wait on the gate after the 202s');
      release();
      await h.settle();
      assert.equal(seen.length, 2);
      assert.equal(await h.counter(EVENTS_METRIC, { source: 'distribution', outcome: 'dispatched' }), 1);
      assert.equal(await h.counter(EVENTS_METRIC, { source: 'distribution', outcome: 'unwatched' }), 1);
    } finally {
      await h.close();
    }
  });

  it('releases the dedup claim when onPush fails, so a redelivery is dispatched again', async () => {
    let calls = 0;
    const h = await startHarness({
      options: { sources: { distribution: { secrets: [TOKEN] } } },
      onPush: async () => {
        calls++;
        if (calls === 1) throw new Error('apiserver unavailable');
      },
    });
    try {
      const body = pushEnvelope('flaky-1');
      assert.equal((await h.post('distribution', body, auth)).status, 202);
      await h.settle();
      assert.equal(await h.counter(EVENTS_METRIC, { source: 'distribution', outcome: 'dispatch_error' }), 1);
      const again = await h.post('distribution', body, auth);
      assert.equal(again.json.accepted, 1);
      await h.settle();
      assert.equal(calls, 2);
      const third = await h.post('distribution', body, auth);
      assert.equal(third.json.duplicates, 1);
      await h.settle();
      assert.equal(calls, 2);
    } finally {
      await h.close();
    }
  });

  const failingStores: { title: string; dedup: DedupStore; dedupTimeoutMs?: number; id: string }[] = [
    {
      title: 'dispatches anyway when the dedup store fails (fail open), and counts it',
      dedup: {
        claim: async () => {
          throw new Error('redis down');
        },
        release: async () => {},
      },
      id: 'no-dedup-1',
    },
    {
      title: 'does not let a hanging dedup store hold the request: dispatches after dedupTimeoutMs',
      dedup: { claim: () => new Promise(() => {}), release: async () => {} },
      dedupTimeoutMs: 50,
      id: 'hang-1',
    },
  ];
  for (const { title, dedup, dedupTimeoutMs, id } of failingStores) {
    it(title, async () => {
      const h = await startHarness({
        options: {
          ...(dedupTimeoutMs === undefined ? {} : { dedupTimeoutMs }),
          sources: { distribution: { secrets: [TOKEN] } },
        },
        dedup,
      });
      try {
        const r = await h.post('distribution', pushEnvelope(id), auth);
        assert.equal(r.status, 202);
        await h.settle();
        assert.equal(h.events.length, 1);
        assert.equal(await h.counter(EVENTS_METRIC, { source: 'distribution', outcome: 'dedup_error' }), 1);
      } finally {
        await h.close();
      }
    });
  }

  it('answers 503 with Retry-After when the backlog is full, without claiming the events', async () => {
    const { gate, release } = openGate();
    const dedup = new MemoryDedupStore();
    const h = await startHarness({
      options: {
        maxPendingEvents: 1,
        dispatchConcurrency: 1,
        sources: { distribution: { secrets: [TOKEN] } },
      },
      dedup,
      onPush: async () => gate,
    });
    try {
      assert.equal((await h.post('distribution', pushEnvelope('bp-1'), auth)).status, 202);
      const full = await h.post('distribution', pushEnvelope('bp-2'), auth);
      assert.equal(full.status, 503);
      assert.equal(full.headers['retry-after'], '5');
      assert.equal(errorCode(full), WebhookErrorCodes.UNAVAILABLE);
      // A pull-only envelope needs no room and is still answered.
      assert.equal((await h.post('distribution', fixture('distribution/pull-only.json'), auth)).status, 202);
      release();
      await h.settle();
      const retry = await h.post('distribution', pushEnvelope('bp-2'), auth);
      assert.equal(retry.json.accepted, 1, 'the refused event was not marked as seen');
    } finally {
      await h.close();
    }
  });

  it('forwards untagged pushes only when asked', async () => {
    const h = await startHarness({
      options: { forwardUntagged: true, sources: { distribution: { secrets: [TOKEN] } } },
    });
    try {
      const r = await h.post('distribution', fixture('distribution/push-index.json'), auth);
      assert.equal(r.json.accepted, 3);
      await h.settle();
      assert.deepEqual(
        h.events.map((e) => e.tag),
        [undefined, undefined, '1.9.0'],
      );
    } finally {
      await h.close();
    }
  });

  it('refuses new deliveries with 503 once closing, after draining dispatches', async () => {
    const { gate, release } = openGate();
    let finished = 0;
    const h = await startHarness({
      options: { sources: { distribution: { secrets: [TOKEN] } } },
      onPush: async () => {
        await gate;
        finished++;
      },
    });
    assert.equal((await h.post('distribution', pushEnvelope('drain-1'), auth)).status, 202);
    const closing = h.server.handler.close(5000);
    const late = await h.post('distribution', pushEnvelope('drain-2'), auth);
    assert.equal(late.status, 503);
    release();
    assert.equal(await closing, true);
    assert.equal(finished, 1);
    await h.close();
  });
});

describe('configuration', () => {
  const deps = {
    onPush: async () => {},
    dedup: new MemoryDedupStore(),
    logger: silentLogger(),
    metrics: new Registry(),
  };
  const invalid = (fn: () => unknown): void => {
    assert.throws(fn, (err: unknown) => isPrewarmError(err, 'PW_ERR_INVALID_CONFIG'));
  };

  it('refuses sources without usable credentials and inconsistent windows', () => {
    invalid(() => createWebhookHandler(deps, { sources: { acr: { secrets: [] } } }));
    invalid(() => createWebhookHandler(deps, { sources: { acr: { secrets: ['short'] } } }));
    invalid(() => createWebhookHandler(deps, { sources: { dockerhub: { tokens: [] } } }));
    invalid(() => createWebhookHandler(deps, { sources: { gcr: {} } }));
    invalid(() =>
      createWebhookHandler(deps, {
        sources: {
          gcr: { oidc: { audience: 'x', serviceAccountEmails: ['push@p.iam.gserviceaccount.com'] } },
        },
      }),
    );
    invalid(() =>
      createWebhookHandler(deps, {
        sources: { ecrSns: { topicArns: ['arn:aws:sns:eu-west-1:210987654321:t'] } },
      }),
    );
    invalid(() =>
      createWebhookHandler(deps, { sources: { ecrSns: { topicArns: ['t'], certificates: ['not a pem'] } } }),
    );
    invalid(() =>
      createWebhookHandler(deps, { dedupTtlSeconds: 60, sources: { acr: { secrets: [TOKEN] } } }),
    );
    invalid(() => createWebhookHandler(deps, { basePath: 'webhooks', sources: {} }));
    invalid(() => createWebhookHandler(deps, { maxBodyBytes: 0, sources: {} }));
    // Misspelt keys from a YAML file must fail rather than silently fall back to defaults.
    invalid(() => createWebhookHandler(deps, { sources: { quay: {} } } as never));
    invalid(() => createWebhookHandler(deps, { maxbodybytes: 10, sources: {} } as never));
    invalid(() =>
      createWebhookHandler(deps, { sources: { acr: { secrets: [TOKEN], headr: 'x-key' } } } as never),
    );
  });

  it('registers its counters once per registry', () => {
    const registry = new Registry();
    createWebhookHandler({ ...deps, metrics: registry }, { sources: {} });
    createWebhookHandler({ ...deps, metrics: registry }, { sources: {} });
    assert.ok(registry.getSingleMetric(EVENTS_METRIC));
  });
});

/** Writes raw bytes, returns everything the server answers until it closes or 5 s pass. */
function rawRequest(port: number, raw: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    sock.setTimeout(5000, () => sock.destroy());
    sock.on('data', (c) => {
      chunks.push(c);
      // One response is all we wait for.
      const text = Buffer.concat(chunks).toString('utf8');
      const m = /\r\ncontent-length: (\d+)\r\n/i.exec(text);
      const headEnd = text.indexOf('\r\n\r\n');
      if (m && headEnd >= 0 && Buffer.byteLength(text) >= headEnd + 4 + Number(m[1])) sock.destroy();
    });
    sock.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
    sock.on('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNRESET' ? undefined : reject(err)));
    sock.write(raw);
  });
}
