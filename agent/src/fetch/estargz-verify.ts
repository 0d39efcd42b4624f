import { createGunzip } from 'node:zlib';
import { sha256 } from '../../../oci/src/digest.js';
import type { EstargzLayout, PrefetchChunk, RangeReader } from './estargz.js';

export type StartupCheck = { ok: true } | { ok: false; reason: string };

/**
 * Verifies a layer's startup region as it lies on disk (read through `read`): the TOC and
 * footer bytes must hash to what was verified while probing, and every payload chunk in
 * the prefetch region must decompress to bytes hashing to its TOC chunk digest. A layout
 * whose TOC is unverified, or that has a chunk without a digest, never passes. Tar headers
 * between payloads have no digest of their own: only the whole-blob digest covers them.
 */
export async function verifyStartupRegion(layout: EstargzLayout, read: RangeReader): Promise<StartupCheck> {
  if (layout.unverifiable !== undefined) return { ok: false, reason: layout.unverifiable };
  const tail = await read(layout.tocOffset, layout.size);
  if (sha256(tail) !== layout.tailDigest)
    return { ok: false, reason: 'TOC bytes on disk differ from the verified TOC' };
  const byMember = new Map<number, PrefetchChunk[]>();
  for (const c of layout.prefetchChunks) {
    const list = byMember.get(c.memberStart);
    if (list) list.push(c);
    else byMember.set(c.memberStart, [c]);
  }
  for (const [start, list] of byMember) {
    const end = (list[0] as PrefetchChunk).memberEnd;
    const need = Math.max(...list.map((c) => c.innerOffset + c.length));
    let plain: Buffer;
    try {
      plain = await inflatePrefix(await read(start, end), need);
    } catch (err) {
      return { ok: false, reason: `member at ${start} (${list[0]?.name}): ${(err as Error).message}` };
    }
    for (const c of list) {
      const actual = sha256(plain.subarray(c.innerOffset, c.innerOffset + c.length));
      if (actual !== c.digest) {
        return { ok: false, reason: `${c.name}: chunk hashes to ${actual}, TOC says ${c.digest}` };
      }
    }
  }
  return { ok: true };
}

/** Decompresses the first `need` bytes of a gzip stream (and stops there). */
function inflatePrefix(gz: Buffer, need: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    if (need === 0) {
      resolve(Buffer.alloc(0));
      return;
    }
    const z = createGunzip();
    const out: Buffer[] = [];
    let got = 0;
    let settled = false;
    const finish = (err?: Error) => {
      if (settled) return;
      settled = true;
      z.destroy();
      if (err) reject(err);
      else resolve(Buffer.concat(out).subarray(0, need));
    };
    z.on('data', (b: Buffer) => {
      out.push(b);
      got += b.length;
      if (got >= need) finish();
    });
    z.on('end', () =>
      finish(got >= need ? undefined : new Error(`decompresses to ${got} bytes, need ${need}`)),
    );
    z.on('error', (err) => finish(err));
    z.end(gz);
  });
}
