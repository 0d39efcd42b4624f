/**
 * The chunk scheduler (agent/src/fetch/chunk-scheduler.ts) with plain objects: which range a
 * download claims next, given what is on disk, in flight, prioritized and held.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  type ChunkState,
  chunkLength,
  nextChunk,
  unclaimed,
  unclaimedPriority,
} from '../../agent/src/fetch/chunk-scheduler.js';
import { type ByteRange, RangeSet } from '../../agent/src/store/ranges.js';

const MiB = 1024 * 1024;
const policy = { chunkSize: 16 * MiB, minChunkSize: MiB };

function state(o: {
  size: number;
  done?: ByteRange[];
  inFlight?: ByteRange[];
  priority?: ByteRange[];
  holding?: boolean;
  connections?: number;
}): ChunkState {
  return {
    size: o.size,
    done: new RangeSet(o.done ?? []),
    inFlight: new RangeSet(o.inFlight ?? []),
    priority: new RangeSet(o.priority ?? []),
    holding: o.holding ?? false,
    connections: o.connections ?? 4,
  };
}

/** Claims until nothing is left, as workers would (each claim becomes in flight). */
function drain(s: ChunkState): ByteRange[] {
  const out: ByteRange[] = [];
  for (let r = nextChunk(s, policy); r; r = nextChunk(s, policy)) {
    out.push(r);
    s.inFlight.add(r.start, r.end);
  }
  return out;
}

describe('chunk scheduler', () => {
  it('a fresh blob: full chunks from offset 0 while much is left', () => {
    assert.deepEqual(nextChunk(state({ size: 256 * MiB }), policy), { start: 0, end: 16 * MiB });
  });

  it('chunks shrink toward the end so the connections finish together, never below the minimum', () => {
    // 8 MiB over 4 connections: 2 MiB each.
    assert.deepEqual(nextChunk(state({ size: 8 * MiB }), policy), { start: 0, end: 2 * MiB });
    // 2 MiB over 4 connections would be 512 KiB: the minimum (1 MiB) applies.
    assert.deepEqual(nextChunk(state({ size: 2 * MiB }), policy), { start: 0, end: MiB });
    // A gap shorter than the minimum is claimed whole, not past its end.
    const s = state({
      size: 10 * MiB,
      done: [{ start: 0, end: 5 * MiB + 100 }],
      inFlight: [{ start: 5 * MiB + 300, end: 10 * MiB }],
    });
    assert.deepEqual(nextChunk(s, policy), { start: 5 * MiB + 100, end: 5 * MiB + 300 });
  });

  it('chunkLength: remainder over connections, clamped to [min, max]', () => {
    assert.equal(chunkLength(policy, 1000 * MiB, 4), 16 * MiB);
    assert.equal(chunkLength(policy, 12 * MiB, 4), 3 * MiB);
    assert.equal(chunkLength(policy, 100, 4), MiB);
    assert.equal(chunkLength(policy, 12 * MiB + 1, 4), 3 * MiB + 1);
  });

  it('skips what is on disk and what is in flight: the lowest unclaimed offset first', () => {
    const s = state({
      size: 64 * MiB,
      done: [{ start: 0, end: 8 * MiB }],
      inFlight: [{ start: 8 * MiB, end: 24 * MiB }],
    });
    const r = nextChunk(s, policy);
    assert.equal(r?.start, 24 * MiB);
    assert.deepEqual(unclaimed(s).ranges, [{ start: 24 * MiB, end: 64 * MiB }]);
  });

  it('claims every byte exactly once, in offset order', () => {
    const s = state({ size: 50 * MiB + 7, done: [{ start: 3 * MiB, end: 9 * MiB }] });
    const claimed = drain(s);
    const all = new RangeSet([...claimed, { start: 3 * MiB, end: 9 * MiB }]);
    assert.deepEqual(all.ranges, [{ start: 0, end: 50 * MiB + 7 }]);
    const total = claimed.reduce((n, r) => n + r.end - r.start, 0);
    assert.equal(total, 50 * MiB + 7 - 6 * MiB, 'no byte claimed twice');
    for (let i = 1; i < claimed.length; i++) assert.ok(claimed[i]!.start > claimed[i - 1]!.start);
  });

  it('nothing left: undefined (all done, or all in flight)', () => {
    assert.equal(nextChunk(state({ size: 4 * MiB, done: [{ start: 0, end: 4 * MiB }] }), policy), undefined);
    assert.equal(
      nextChunk(state({ size: 4 * MiB, inFlight: [{ start: 0, end: 4 * MiB }] }), policy),
      undefined,
    );
    assert.equal(nextChunk(state({ size: 0 }), policy), undefined);
  });

  it('priority ranges first, lowest offset first, sized by the priority bytes left', () => {
    const s = state({
      size: 100 * MiB,
      priority: [
        { start: 90 * MiB, end: 94 * MiB },
        { start: 40 * MiB, end: 44 * MiB },
      ],
    });
    // 8 MiB of priority over 4 connections: 2 MiB chunks, at 40 MiB first.
    assert.deepEqual(nextChunk(s, policy), { start: 40 * MiB, end: 42 * MiB });
    // Then 6 MiB left: 1.5 MiB chunks, and so on; all of the priority before any other byte.
    const claimed = drain(s);
    const pri = new RangeSet([
      { start: 40 * MiB, end: 44 * MiB },
      { start: 90 * MiB, end: 94 * MiB },
    ]);
    const firstBulk = claimed.findIndex((r) => !pri.covers(r.start, r.end));
    assert.deepEqual(new RangeSet(claimed.slice(0, firstBulk)).ranges, pri.ranges);
    assert.deepEqual(claimed[1], { start: 42 * MiB, end: 42 * MiB + 1.5 * MiB });
    for (let i = 1; i < firstBulk; i++) assert.ok(claimed[i]!.start > claimed[i - 1]!.start);
    assert.equal(claimed[firstBulk]?.start, 0, 'then the rest from offset 0');
  });

  it('a priority chunk never runs past its priority range', () => {
    const s = state({
      size: 100 * MiB,
      priority: [{ start: 10 * MiB, end: 10 * MiB + 512 }],
      connections: 1,
    });
    assert.deepEqual(nextChunk(s, policy), { start: 10 * MiB, end: 10 * MiB + 512 });
  });

  it('priority bytes already on disk or in flight are not claimed again', () => {
    const s = state({
      size: 100 * MiB,
      priority: [{ start: 0, end: 8 * MiB }],
      done: [{ start: 0, end: 2 * MiB }],
      inFlight: [{ start: 2 * MiB, end: 4 * MiB }],
    });
    assert.deepEqual(unclaimedPriority(s), [{ start: 4 * MiB, end: 8 * MiB }]);
    assert.deepEqual(nextChunk(s, policy), { start: 4 * MiB, end: 5 * MiB });
  });

  it('holding: only priority bytes are claimed; none left means undefined, not the bulk', () => {
    const s = state({ size: 100 * MiB, priority: [{ start: 50 * MiB, end: 52 * MiB }], holding: true });
    const claimed = drain(s);
    assert.deepEqual(claimed, [
      { start: 50 * MiB, end: 51 * MiB },
      { start: 51 * MiB, end: 52 * MiB },
    ]);
    assert.equal(nextChunk(s, policy), undefined);
    assert.equal(unclaimed(s).size, 98 * MiB, 'the bulk is still to claim once the hold lifts');
    assert.deepEqual(nextChunk({ ...s, holding: false }, policy), { start: 0, end: 16 * MiB });
  });

  it('the connections the ramp allows size the chunks', () => {
    assert.deepEqual(nextChunk(state({ size: 16 * MiB, connections: 1 }), policy), {
      start: 0,
      end: 16 * MiB,
    });
    assert.deepEqual(nextChunk(state({ size: 16 * MiB, connections: 16 }), policy), { start: 0, end: MiB });
  });
});
