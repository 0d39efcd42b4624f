/**
 * Rows, table and summary line of bench/fetch. Units: 1 MB = 1e6 bytes, 1 GB = 1e9 bytes,
 * MiB = 2^20 bytes (sizes only).
 */

export type ProfileName = 'loopback' | 'P1' | 'P2';

export interface FetchRow {
  profile: ProfileName;
  /** Stable id: undici | skopeo | ctr | fetcher | floor | curl-1 | curl-N. */
  method: string;
  /** Human label for the table. */
  label: string;
  /** Set when the method did not run; the reason. Numbers are then meaningless. */
  skipped?: string;
  /** Set when the run failed. */
  error?: string;
  bytes: number;
  /** False when a time limit stopped it: the rate is then measured over a prefix of the blob. */
  complete: boolean;
  /** true/false: the fetched bytes were (not) checked against the digest here; undefined: not by us. */
  digestOk?: boolean;
  wallS: number;
  /**
   * CPU seconds of the fetch itself: in-process span for the Node clients (start-up and
   * module loading excluded), the whole process for external tools (for ctr: ctr plus
   * the containerd daemon's share).
   */
  cpuS: number;
  /** CPU seconds of the whole client process(es), start-up included. */
  procCpuS: number;
}

export const mbps = (r: FetchRow): number => r.bytes / r.wallS / 1e6;
export const cpuPerGB = (r: FetchRow): number => r.cpuS / (r.bytes / 1e9);

function ok(r: FetchRow | undefined): boolean {
  return r !== undefined && r.skipped === undefined && r.error === undefined && r.bytes > 0 && r.wallS > 0;
}

export function findRow(
  rows: readonly FetchRow[],
  profile: ProfileName,
  method: string,
): FetchRow | undefined {
  return rows.find((r) => r.profile === profile && r.method === method);
}

const f = (n: number, digits: number): string => (Number.isFinite(n) ? n.toFixed(digits) : '-');

/** The table: one line per profile × method, aligned columns, ratio against `undici` (one stream). */
export function formatTable(rows: readonly FetchRow[]): string {
  const header = [
    'profile',
    'method',
    'MB/s',
    'vs 1 stream',
    'wall s',
    'MiB',
    'CPU-s',
    'CPU-s/GB',
    'proc CPU-s',
    'note',
  ];
  const lines: string[][] = [header];
  for (const r of rows) {
    if (!ok(r)) {
      lines.push([
        r.profile,
        r.label,
        '-',
        '-',
        '-',
        '-',
        '-',
        '-',
        '-',
        r.skipped ? `skipped: ${r.skipped}` : `error: ${r.error}`,
      ]);
      continue;
    }
    const base = findRow(rows, r.profile, 'undici');
    const ratio = ok(base) ? mbps(r) / mbps(base!) : Number.NaN;
    const notes: string[] = [];
    if (!r.complete) notes.push('time-limited (prefix of the blob)');
    if (r.digestOk === false) notes.push('DIGEST MISMATCH');
    if (r.digestOk === true) notes.push('digest ok');
    lines.push([
      r.profile,
      r.label,
      f(mbps(r), 1),
      Number.isFinite(ratio) ? `${f(ratio, 2)}x` : '-',
      f(r.wallS, 1),
      f(r.bytes / 2 ** 20, 0),
      f(r.cpuS, 2),
      f(cpuPerGB(r), 2),
      f(r.procCpuS, 2),
      notes.join('; '),
    ]);
  }
  const widths = header.map((_, i) => Math.max(...lines.map((l) => (l[i] ?? '').length)));
  const fmt = (l: string[]) =>
    `| ${l.map((c, i) => (i >= 2 && i <= 8 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (i >= 2 && i <= 8 ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`;
  return [fmt(lines[0]!), sep, ...lines.slice(1).map(fmt)].join('\n');
}

export interface Summary {
  /** fetcher ÷ one undici stream, P1. */
  p1Ratio: number | undefined;
  /** fetcher ÷ nominal link rate, P2. */
  p2OfLink: number | undefined;
  /** fetcher CPU-s per GB, loopback. */
  loopbackCpuPerGB: number | undefined;
}

export function summarize(rows: readonly FetchRow[], p2LinkBytesPerS: number): Summary {
  const d1 = findRow(rows, 'P1', 'fetcher');
  const a1 = findRow(rows, 'P1', 'undici');
  const d2 = findRow(rows, 'P2', 'fetcher');
  const dl = findRow(rows, 'loopback', 'fetcher');
  const usable = (r: FetchRow | undefined) => ok(r) && r!.complete && r!.digestOk !== false;
  return {
    p1Ratio: usable(d1) && ok(a1) ? mbps(d1!) / mbps(a1!) : undefined,
    p2OfLink: usable(d2) ? d2!.bytes / d2!.wallS / p2LinkBytesPerS : undefined,
    loopbackCpuPerGB: usable(dl) ? cpuPerGB(dl!) : undefined,
  };
}

/** `fetch: <x>x single-stream (P1), <y> of link (P2), <z> CPU-s/GB (loopback)`; n/a where not measured. */
export function summaryLine(s: Summary): string {
  const x = s.p1Ratio === undefined ? 'n/a' : `${s.p1Ratio.toFixed(1)}x`;
  const y = s.p2OfLink === undefined ? 'n/a' : s.p2OfLink.toFixed(2);
  const z = s.loopbackCpuPerGB === undefined ? 'n/a' : s.loopbackCpuPerGB.toFixed(2);
  return `fetch: ${x} single-stream (P1), ${y} of link (P2), ${z} CPU-s/GB (loopback)`;
}

/** Issue #6's targets, one verdict each. */
export function targetVerdicts(s: Summary): string {
  const v = (value: number | undefined, pass: (n: number) => boolean, text: string) =>
    `${text}: ${value === undefined ? 'not measured' : pass(value) ? 'PASS' : 'FAIL'}`;
  return [
    v(s.p1Ratio, (n) => n >= 9, 'P1 >= 9x single-stream'),
    v(s.p2OfLink, (n) => n >= 0.9, 'P2 >= 0.9 of link'),
    v(s.loopbackCpuPerGB, (n) => n <= 1, 'loopback <= 1 CPU-s/GB'),
  ].join('; ');
}

/**
 * The loopback CPU of the fetcher against the floor measured in the same run (a raw socket
 * that only hashes: no HTTP client, no store); undefined when either is missing.
 */
export function floorLine(rows: readonly FetchRow[]): string | undefined {
  const f = findRow(rows, 'loopback', 'floor');
  const d = findRow(rows, 'loopback', 'fetcher');
  if (!ok(f) || !f!.complete || !ok(d) || !d!.complete) return undefined;
  const fc = cpuPerGB(f!);
  const dc = cpuPerGB(d!);
  return `loopback CPU floor (socket + sha256, nothing stored): ${fc.toFixed(2)} CPU-s/GB; fetcher ${dc.toFixed(2)} = ${(dc / fc).toFixed(2)}x floor`;
}
