/**
 * What a `Range` header asks of a blob of `size` bytes, with Go `http.ServeContent`'s
 * semantics (what distribution serves), except that several ranges are answered with the
 * whole blob (RFC 9110 lets a server ignore Range; multipart answers are optional).
 *
 * - `none`: no usable Range, send 200 and everything;
 * - `range`: send 206 with [start, end] (inclusive);
 * - `unsatisfiable`: 416 — well-formed, but starts at or past the end;
 * - `invalid`: 416 — malformed (bad unit, bad numbers, start > end), like distribution.
 */
export type RangeRequest =
  | { kind: 'none' }
  | { kind: 'range'; start: number; end: number }
  | { kind: 'unsatisfiable' }
  | { kind: 'invalid' };

const SPEC_RE = /^\s*(\d*)\s*-\s*(\d*)\s*$/;

export function parseRange(header: string | undefined, size: number): RangeRequest {
  if (header === undefined || header === '') return { kind: 'none' };
  if (!header.startsWith('bytes=')) return { kind: 'invalid' };
  const specs = header.slice('bytes='.length).split(',');
  const parsed: RangeRequest[] = specs.map((s) => parseOne(s, size));
  if (parsed.some((p) => p.kind === 'invalid')) return { kind: 'invalid' };
  const satisfiable = parsed.filter((p) => p.kind === 'range');
  if (satisfiable.length === 0) return { kind: 'unsatisfiable' };
  if (parsed.length > 1) return { kind: 'none' };
  return satisfiable[0] as RangeRequest;
}

function parseOne(spec: string, size: number): RangeRequest {
  const m = SPEC_RE.exec(spec);
  if (!m) return { kind: 'invalid' };
  const [, a = '', b = ''] = m;
  if (a === '' && b === '') return { kind: 'invalid' };
  if (a === '') {
    // Suffix: the last `b` bytes.
    const n = Number(b);
    if (!Number.isSafeInteger(n)) return { kind: 'invalid' };
    if (n === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'range', start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(a);
  if (!Number.isSafeInteger(start)) return { kind: 'invalid' };
  if (b === '') {
    return start >= size ? { kind: 'unsatisfiable' } : { kind: 'range', start, end: size - 1 };
  }
  const end = Number(b);
  if (!Number.isSafeInteger(end) || start > end) return { kind: 'invalid' };
  if (start >= size) return { kind: 'unsatisfiable' };
  return { kind: 'range', start, end: Math.min(end, size - 1) };
}
