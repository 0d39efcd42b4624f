/** Byte-level views over lists of buffers (vectored writes): no copies. */

/** The first `n` bytes of `buffers` (views, no copy). */
export function takeBytes(buffers: readonly Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  let left = n;
  for (const b of buffers) {
    if (left <= 0) break;
    out.push(b.byteLength <= left ? b : b.subarray(0, left));
    left -= b.byteLength;
  }
  return out;
}

/** `buffers` without their first `n` bytes (views, no copy). */
export function dropBytes(buffers: readonly Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = n;
  for (const b of buffers) {
    if (skip >= b.byteLength) {
      skip -= b.byteLength;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}
