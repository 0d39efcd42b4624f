/**
 * The few tar header fields the eStargz TOC reader needs (names, sizes, checksums, the PAX
 * `path` record), read from 512-byte ustar/GNU headers. Pure.
 */

/** A member name without its leading `./` or `/`. */
export function cleanName(name: string): string {
  return name.replace(/^(\.\/|\/)+/, '');
}

export function cString(b: Buffer): string {
  const z = b.indexOf(0);
  return b.subarray(0, z < 0 ? b.length : z).toString('utf8');
}

export function tarName(h: Buffer): string {
  const name = cString(h.subarray(0, 100));
  const ustar = h.subarray(257, 262).toString('latin1') === 'ustar';
  const prefix = ustar ? cString(h.subarray(345, 500)) : '';
  return prefix ? `${prefix}/${name}` : name;
}

/** Octal (NUL/space terminated) or GNU base-256 numbers. */
export function tarNumber(f: Buffer): number {
  if (((f[0] ?? 0) & 0x80) !== 0) {
    let n = 0n;
    for (let i = 1; i < f.length; i++) n = (n << 8n) | BigInt(f[i] ?? 0);
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error('tar size too large');
    return Number(n);
  }
  const s = f
    .toString('latin1')
    .replace(/[\0 ]+$/, '')
    .trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new Error(`bad tar number ${JSON.stringify(s)}`);
  return Number.parseInt(s, 8);
}

export function tarChecksumOk(h: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : (h[i] as number);
  try {
    return tarNumber(h.subarray(148, 156)) === sum;
  } catch {
    return false;
  }
}

/** The `path` record of a PAX extended header, if any. */
export function paxPath(data: Buffer): string | undefined {
  let pos = 0;
  let path: string | undefined;
  while (pos < data.length) {
    const sp = data.indexOf(0x20, pos);
    if (sp < 0) break;
    const len = Number.parseInt(data.subarray(pos, sp).toString('latin1'), 10);
    if (!Number.isSafeInteger(len) || len <= 0) break;
    const rec = data.subarray(sp + 1, pos + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq > 0 && rec.slice(0, eq) === 'path') path = rec.slice(eq + 1);
    pos += len;
  }
  return path;
}
