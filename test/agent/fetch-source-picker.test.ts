/**
 * Source choice (agent/src/fetch/source-picker.ts) with plain-object sources: peers in
 * order, a failed peer skipped for the rest of the blob, the registry never skipped.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SourcePicker } from '../../agent/src/fetch/source-picker.js';
import type { BlobSource, BlobTarget } from '../../agent/src/fetch/sources.js';
import type { BlobResponse } from '../../oci/src/client.js';
import type { Digest } from '../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';

const target: BlobTarget = {
  registry: 'registry.test',
  repository: 'r',
  digest: `sha256:${'b'.repeat(64)}` as Digest,
  size: 100,
};

/** A source that answers with a marker object, or fails while `failing` is set. */
function source(kind: 'peer' | 'registry', name: string) {
  const s = {
    kind,
    name,
    failing: false,
    opened: [] as Array<{ start: number; end: number }>,
    async open(_t: BlobTarget, range: { start: number; end: number }) {
      s.opened.push(range);
      if (s.failing) throw new Error(`${name} down`);
      return { statusCode: 206, name } as unknown as BlobResponse;
    },
  } satisfies BlobSource & Record<string, unknown>;
  return s;
}

describe('source picker', () => {
  it('asks the first source, with an inclusive end', async () => {
    const p1 = source('peer', 'p1');
    const reg = source('registry', 'reg');
    const picker = new SourcePicker([p1, reg]);
    const { source: used } = await picker.open(target, { start: 10, end: 20 }, new AbortController().signal);
    assert.equal(used, p1);
    assert.deepEqual(p1.opened, [{ start: 10, end: 19 }]);
  });

  it('a peer that fails is skipped for the rest of the blob; the next source answers', async () => {
    const p1 = source('peer', 'p1');
    const p2 = source('peer', 'p2');
    const reg = source('registry', 'reg');
    p1.failing = true;
    const picker = new SourcePicker([p1, p2, reg]);
    const signal = new AbortController().signal;
    assert.equal((await picker.open(target, { start: 0, end: 1 }, signal)).source, p2);
    p1.failing = false;
    assert.equal((await picker.open(target, { start: 1, end: 2 }, signal)).source, p2, 'p1 stays skipped');
    assert.equal(p1.opened.length, 1);
  });

  it("the registry's errors go to the caller, and the registry is never skipped", async () => {
    const reg = source('registry', 'reg');
    reg.failing = true;
    const picker = new SourcePicker([reg]);
    const signal = new AbortController().signal;
    await assert.rejects(picker.open(target, { start: 0, end: 1 }, signal), /reg down/);
    picker.skipPeer(reg);
    picker.skipAllPeers();
    reg.failing = false;
    assert.equal((await picker.open(target, { start: 0, end: 1 }, signal)).source, reg);
  });

  it('skipAllPeers (after a mismatch) leaves only the registry', async () => {
    const p1 = source('peer', 'p1');
    const reg = source('registry', 'reg');
    const picker = new SourcePicker([p1, reg]);
    picker.skipAllPeers();
    assert.equal(picker.pick(), reg);
  });

  it('only peers, all failed: the last one is asked again once, and its error reaches the caller', async () => {
    const p1 = source('peer', 'p1');
    const p2 = source('peer', 'p2');
    p1.failing = true;
    p2.failing = true;
    const picker = new SourcePicker([p1, p2]);
    await assert.rejects(picker.open(target, { start: 0, end: 1 }, new AbortController().signal), /p2 down/);
    assert.equal(p1.opened.length, 1);
    assert.equal(p2.opened.length, 2);
  });

  it('an abort is not a peer failure: the peer is not skipped', async () => {
    const p1 = source('peer', 'p1');
    const reg = source('registry', 'reg');
    p1.failing = true;
    const ac = new AbortController();
    ac.abort();
    const picker = new SourcePicker([p1, reg]);
    await assert.rejects(picker.open(target, { start: 0, end: 1 }, ac.signal), /p1 down/);
    assert.equal(picker.pick(), p1);
  });

  it('no source at all: PW_ERR_INVALID_CONFIG', () => {
    assert.throws(
      () => new SourcePicker([]).pick(),
      (e) => isPrewarmError(e, ErrorCodes.INVALID_CONFIG),
    );
  });
});
