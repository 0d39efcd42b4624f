import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { eachLimited } from '../../oci/src/concurrency.js';

describe('eachLimited', () => {
  it('runs every item once, starts them in order, never more than the limit at once', async () => {
    const started: number[] = [];
    let running = 0;
    let peak = 0;
    await eachLimited([1, 2, 3, 4, 5, 6, 7], 3, async (n) => {
      started.push(n);
      running++;
      peak = Math.max(peak, running);
      await sleep(5 * (n % 3));
      running--;
    });
    assert.deepEqual(started, [1, 2, 3, 4, 5, 6, 7]);
    assert.equal(peak, 3);
  });

  it('rejects with the first error, and runs one at a time for a limit below 1', async () => {
    const seen: number[] = [];
    await assert.rejects(
      eachLimited([1, 2, 3], 0, async (n) => {
        seen.push(n);
        if (n === 2) throw new Error('boom 2');
      }),
      /boom 2/,
    );
    assert.deepEqual(seen, [1, 2]);
    await eachLimited([], 4, async () => assert.fail('no items, no calls'));
  });
});
