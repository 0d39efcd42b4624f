/**
 * The ingest writer (agent/src/fetch/ingest-writer.ts) over an in-memory Ingest: batching,
 * ALIGN-cut mid-range writes, durable records every `recordEveryBytes`, a failed write that
 * keeps its bytes, and flushes that never overlap.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RangeWriter } from '../../agent/src/fetch/ingest-writer.js';
import type { Ingest } from '../../agent/src/store/blob-store.js';
import { ALIGN } from '../../agent/src/store/direct-io.js';
import { RangeSet } from '../../agent/src/store/ranges.js';
import type { Digest } from '../../oci/src/digest.js';

interface MemoryIngest extends Ingest {
  data: Buffer;
  writes: Array<{ position: number; length: number }>;
  records: Array<[number, number]>;
  /** Fail the next write with this error. */
  failNext: Error | undefined;
  /** Writes in progress right now (to catch overlapping flushes). */
  active: number;
  maxActive: number;
}

function memoryIngest(size: number): MemoryIngest {
  const ing: MemoryIngest = {
    digest: `sha256:${'0'.repeat(64)}` as Digest,
    size,
    durable: new RangeSet(),
    dataPath: '/nonexistent',
    writeAlignment: ALIGN,
    data: Buffer.alloc(size),
    writes: [],
    records: [],
    failNext: undefined,
    active: 0,
    maxActive: 0,
    async write(buffers, position) {
      ing.active++;
      ing.maxActive = Math.max(ing.maxActive, ing.active);
      try {
        await new Promise((r) => setImmediate(r));
        const err = ing.failNext;
        ing.failNext = undefined;
        if (err) throw err;
        const all = Buffer.concat(buffers);
        all.copy(ing.data, position);
        ing.writes.push({ position, length: all.byteLength });
      } finally {
        ing.active--;
      }
    },
    async read(position, length) {
      return ing.data.subarray(position, position + length);
    },
    async record(start, end) {
      ing.records.push([start, end]);
      ing.durable.add(start, end);
    },
    async commit() {},
    async discard() {},
    async close() {},
  };
  return ing;
}

function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

describe('ingest writer', () => {
  it('batches pushes, cuts mid-range writes at ALIGN, writes the rest at the end', async () => {
    const start = 100;
    const ing = memoryIngest(64 * 1024);
    const landed: Array<[number, number]> = [];
    let flushed = 0;
    const w = new RangeWriter(
      ing,
      start,
      { batchBytes: 3 * ALIGN, recordEveryBytes: 1 << 30 },
      {
        landed: (at, n) => {
          landed.push([at, n]);
          return undefined;
        },
        flushed: () => flushed++,
      },
    );
    const src = bytes(10 * ALIGN, 7);
    for (let off = 0; off < src.length; off += 1000) {
      w.push(src.subarray(off, Math.min(src.length, off + 1000)));
      if (w.full) await w.flush(false);
    }
    await w.flush(true);
    assert.equal(w.position, start + src.length);
    assert.ok(ing.data.subarray(start, start + src.length).equals(src), 'every byte in place');
    // Every write but the last ends on an ALIGN boundary (direct I/O can take it).
    for (const x of ing.writes.slice(0, -1))
      assert.equal((x.position + x.length) % ALIGN, 0, JSON.stringify(x));
    assert.deepEqual(
      landed,
      ing.writes.map((x) => [x.position, x.length]),
    );
    assert.equal(flushed, ing.writes.length);
    assert.equal(w.full, false);
  });

  it('records durable progress every recordEveryBytes within the range', async () => {
    const ing = memoryIngest(1 << 20);
    const w = new RangeWriter(
      ing,
      0,
      { batchBytes: ALIGN, recordEveryBytes: 4 * ALIGN },
      { landed: () => undefined, flushed: () => undefined },
    );
    for (let i = 0; i < 10; i++) {
      w.push(bytes(ALIGN, i));
      await w.flush(false);
    }
    assert.deepEqual(ing.records, [
      [0, 4 * ALIGN],
      [4 * ALIGN, 8 * ALIGN],
    ]);
  });

  it('a failed write keeps its bytes for the next flush and marks nothing', async () => {
    const ing = memoryIngest(1 << 16);
    const landed: number[] = [];
    const w = new RangeWriter(
      ing,
      0,
      { batchBytes: ALIGN, recordEveryBytes: 1 << 30 },
      {
        landed: (_at, n) => {
          landed.push(n);
          return undefined;
        },
        flushed: () => undefined,
      },
    );
    const src = bytes(2 * ALIGN + 10, 3);
    w.push(src);
    ing.failNext = new Error('EIO');
    await assert.rejects(w.flush(false), /EIO/);
    assert.equal(w.position, 0);
    assert.deepEqual(landed, []);
    await w.flush(true);
    assert.equal(w.position, src.length);
    assert.ok(ing.data.subarray(0, src.length).equals(src));
  });

  it('flushes queue behind each other: the error path cannot write what a flush is writing', async () => {
    const ing = memoryIngest(1 << 16);
    const w = new RangeWriter(
      ing,
      0,
      { batchBytes: ALIGN, recordEveryBytes: 1 << 30 },
      { landed: () => undefined, flushed: () => undefined },
    );
    const src = bytes(3 * ALIGN, 9);
    w.push(src.subarray(0, 2 * ALIGN));
    const first = w.flush(false);
    w.push(src.subarray(2 * ALIGN));
    const last = w.flush(true);
    await Promise.all([first, last]);
    assert.equal(ing.maxActive, 1);
    assert.equal(w.position, src.length);
    const total = ing.writes.reduce((n, x) => n + x.length, 0);
    assert.equal(total, src.length, 'no byte written twice');
    assert.ok(ing.data.subarray(0, src.length).equals(src));
  });

  it('a landed hook that returns a promise (the hash drain) is waited for before the record', async () => {
    const ing = memoryIngest(1 << 16);
    const order: string[] = [];
    const w = new RangeWriter(
      ing,
      0,
      { batchBytes: ALIGN, recordEveryBytes: ALIGN },
      {
        landed: async () => {
          await new Promise((r) => setImmediate(r));
          order.push('landed');
        },
        flushed: () => order.push('flushed'),
      },
    );
    const origRecord = ing.record;
    ing.record = async (s, e) => {
      order.push('record');
      await origRecord(s, e);
    };
    w.push(bytes(ALIGN, 1));
    await w.flush(false);
    assert.deepEqual(order, ['landed', 'record', 'flushed']);
  });
});
