/**
 * eStargz layers, as far as startup-first fetching needs them: the footer, the TOC, the
 * prefetch landmark and per-chunk verification. eStargz (containerd/stargz-snapshotter,
 * docs/estargz.md there) is a gzip tar layer written so that every regular file's payload
 * starts a new gzip member, prioritized files come first and end at a `.prefetch.landmark`
 * entry, a TOC (`stargz.index.json`, JSON) is the last tar entry in a gzip member of its
 * own, and a 51-byte empty gzip member (the footer) says where the TOC starts. It is still
 * a valid tar.gz, so the same bytes work as a plain layer.
 *
 * Trust: the manifest (verified by digest) carries the TOC's digest in the layer annotation
 * `containerd.io/snapshot/stargz/toc.digest`; a TOC that hashes to it is as trustworthy as
 * the manifest, and so are the chunk digests it lists. Without that annotation the TOC can
 * tell us where things are (useful for ordering) but verifies nothing.
 */
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import { type Digest, isDigest, sha256 } from '../../../oci/src/digest.js';
import { MediaTypes } from '../../../oci/src/media-types.js';
import type { ByteRange } from '../store/ranges.js';
import { cleanName, cString, paxPath, tarChecksumOk, tarName, tarNumber } from './tar-header.js';

// Startup-region verification is ./estargz-verify.ts (not re-exported: it imports this module).

const gunzipP = promisify(gunzip);

export const ESTARGZ = {
  /** Layer annotation: digest of the TOC JSON (the bytes of `stargz.index.json`). */
  tocDigestAnnotation: 'containerd.io/snapshot/stargz/toc.digest',
  /** Layer annotation: size of the uncompressed tar (informational here). */
  uncompressedSizeAnnotation: 'io.containers.estargz.uncompressed-size',
  tocTarName: 'stargz.index.json',
  prefetchLandmark: '.prefetch.landmark',
  noPrefetchLandmark: '.no.prefetch.landmark',
  /** eStargz footer: gzip header + Extra field (SI1 'S', SI2 'G', "%016xSTARGZ") + empty stored block + trailer. */
  footerSize: 51,
  /** The original stargz (CRFS) footer: the same without the RFC 1952 subfield header. */
  legacyFooterSize: 47,
} as const;

/** Layer media types that can be eStargz (gzip only; zstd:chunked is another format). */
export const ESTARGZ_MEDIA_TYPES: ReadonlySet<string> = new Set([
  MediaTypes.OCI_LAYER_GZIP,
  MediaTypes.DOCKER_LAYER_GZIP,
]);

/** Reads blob bytes [start, end). */
export type RangeReader = (start: number, end: number) => Promise<Buffer>;

export interface EstargzFooter {
  /** Offset of the TOC's gzip member in the blob. */
  tocOffset: number;
  footerSize: 51 | 47;
}

/** One TOC entry, with the fields startup-first uses (others are ignored). */
export interface TocEntry {
  name: string;
  type: string;
  /** Uncompressed file size (`reg`); 0 when absent. */
  size: number;
  /** Blob offset of the gzip member holding this payload; undefined for entries without one. */
  offset: number | undefined;
  chunkOffset: number;
  /** Uncompressed chunk size; 0 means "to the end of the file". */
  chunkSize: number;
  /** Offset of the payload inside the decompressed member (several payloads may share one). */
  innerOffset: number;
  chunkDigest: string | undefined;
  digest: string | undefined;
}

/** A payload chunk inside the prefetch region, and how to check it. */
export interface PrefetchChunk {
  name: string;
  /** The gzip member holding it: blob bytes [memberStart, memberEnd). */
  memberStart: number;
  memberEnd: number;
  innerOffset: number;
  length: number;
  digest: Digest;
}

export interface EstargzLayout {
  /** Blob size. */
  size: number;
  tocOffset: number;
  footerSize: 51 | 47;
  /** sha256 of the TOC JSON. */
  tocDigest: Digest;
  /** True when `tocDigest` equals the layer's toc.digest annotation (so the TOC is trusted). */
  tocVerified: boolean;
  /** sha256 of blob bytes [tocOffset, size) (TOC member and footer) as read while probing. */
  tailDigest: Digest;
  landmark: 'prefetch' | 'no-prefetch' | 'none';
  /** End of the prefetch region [0, prefetchEnd): the landmark's offset; 0 without prioritized files. */
  prefetchEnd: number;
  /** Payload chunks inside the prefetch region. */
  prefetchChunks: PrefetchChunk[];
  /**
   * Why the prefetch region cannot be verified chunk by chunk (a chunk without a sha256
   * digest, an unverified TOC); undefined when it can.
   */
  unverifiable: string | undefined;
  /** What a lazy runtime reads before the container starts: the prefetch region, then TOC and footer. */
  startupRanges: ByteRange[];
  entryCount: number;
}

/** Why a layer is handled as a plain blob. */
export type PlainReason =
  | 'not-gzip'
  | 'no-annotation'
  | 'too-small'
  | 'no-footer'
  | 'toc-invalid'
  | 'toc-too-large'
  | 'toc-digest-mismatch';

export type EstargzProbe =
  | { kind: 'estargz'; layout: EstargzLayout }
  | { kind: 'plain'; reason: PlainReason; detail?: string };

export interface ProbeOptions {
  /**
   * Also look for a footer in gzip layers without the toc.digest annotation. Such a TOC is
   * unverified: it can order the download but never makes a layer startup-ready. Default false.
   */
  probeUnannotated?: boolean;
  /** Largest TOC accepted, compressed member and JSON alike. Default 32 MiB. */
  maxTocBytes?: number;
  /** Bytes read from the blob's end in the first request (often the whole TOC). Default 64 KiB. */
  tailBytes?: number;
}

/** The layer descriptor fields a probe needs. */
export interface LayerDescriptor {
  digest: Digest;
  size: number;
  mediaType: string;
  annotations?: Record<string, string>;
}

/**
 * Reads a layer's footer and TOC through `read` (two ranged reads at most) and describes
 * its startup region. Format problems are not errors: they make the layer `plain` with a
 * reason (startup-first is an optimization; the whole-blob digest still decides). Errors
 * of `read` (network, abort) propagate.
 */
export async function probeEstargz(
  layer: LayerDescriptor,
  read: RangeReader,
  opts: ProbeOptions = {},
): Promise<EstargzProbe> {
  if (!ESTARGZ_MEDIA_TYPES.has(layer.mediaType)) return { kind: 'plain', reason: 'not-gzip' };
  const annotated = layer.annotations?.[ESTARGZ.tocDigestAnnotation];
  if (annotated === undefined && !opts.probeUnannotated) return { kind: 'plain', reason: 'no-annotation' };
  const maxToc = opts.maxTocBytes ?? 32 * 1024 * 1024;
  const size = layer.size;
  if (size < ESTARGZ.footerSize + 20) return { kind: 'plain', reason: 'too-small' };

  const tailStart = Math.max(0, size - (opts.tailBytes ?? 64 * 1024));
  let tail = await read(tailStart, size);
  const footer = parseFooter(tail);
  if (!footer) return { kind: 'plain', reason: 'no-footer' };
  const tocEnd = size - footer.footerSize;
  if (footer.tocOffset >= tocEnd)
    return { kind: 'plain', reason: 'no-footer', detail: 'TOC offset past the end' };
  if (tocEnd - footer.tocOffset > maxToc) return { kind: 'plain', reason: 'toc-too-large' };
  if (footer.tocOffset < tailStart) {
    tail = Buffer.concat([await read(footer.tocOffset, tailStart), tail]);
  } else {
    tail = tail.subarray(footer.tocOffset - tailStart);
  }
  const tailDigest = sha256(tail);
  let json: Buffer;
  try {
    json = await tocJsonFromMember(tail.subarray(0, tail.length - footer.footerSize), maxToc);
  } catch (err) {
    return { kind: 'plain', reason: 'toc-invalid', detail: (err as Error).message };
  }
  const tocDigest = sha256(json);
  if (annotated !== undefined && annotated !== tocDigest) {
    return {
      kind: 'plain',
      reason: 'toc-digest-mismatch',
      detail: `annotation ${annotated}, TOC hashes to ${tocDigest}`,
    };
  }
  let entries: TocEntry[];
  try {
    entries = parseToc(json, footer.tocOffset);
  } catch (err) {
    return { kind: 'plain', reason: 'toc-invalid', detail: (err as Error).message };
  }
  const layout = layoutOf(entries, {
    size,
    tocOffset: footer.tocOffset,
    footerSize: footer.footerSize,
    tocDigest,
    tocVerified: annotated !== undefined,
    tailDigest,
  });
  if (typeof layout === 'string') return { kind: 'plain', reason: 'toc-invalid', detail: layout };
  return { kind: 'estargz', layout };
}

/**
 * Finds the footer at the end of `tail` (the blob's last bytes): the 51-byte eStargz form
 * first, then the 47-byte stargz form. Undefined when neither is there.
 */
export function parseFooter(tail: Uint8Array): EstargzFooter | undefined {
  const b = Buffer.from(tail.buffer, tail.byteOffset, tail.byteLength);
  for (const footerSize of [ESTARGZ.footerSize, ESTARGZ.legacyFooterSize] as const) {
    if (b.length < footerSize) continue;
    const f = b.subarray(b.length - footerSize);
    // gzip magic, deflate, only FEXTRA set (what every stargz writer emits).
    if (f[0] !== 0x1f || f[1] !== 0x8b || f[2] !== 8 || f[3] !== 0x04) continue;
    const xlen = f.readUInt16LE(10);
    let field: Buffer;
    if (footerSize === ESTARGZ.footerSize) {
      if (xlen !== 26 || f[12] !== 0x53 || f[13] !== 0x47 || f.readUInt16LE(14) !== 22) continue;
      field = f.subarray(16, 38);
    } else {
      if (xlen !== 22) continue;
      field = f.subarray(12, 34);
    }
    const m = /^([0-9a-f]{16})STARGZ$/.exec(field.toString('latin1'));
    if (!m) continue;
    // The member must be empty: a final stored block of length 0, CRC 0, ISIZE 0.
    const rest = f.subarray(footerSize - 13);
    if (!rest.equals(EMPTY_MEMBER_TAIL)) continue;
    const off = BigInt(`0x${m[1]}`);
    if (off > BigInt(Number.MAX_SAFE_INTEGER)) continue;
    return { tocOffset: Number(off), footerSize };
  }
  return undefined;
}

const EMPTY_MEMBER_TAIL = Buffer.from([0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);

/**
 * Decompresses the TOC's gzip member and returns the bytes of `stargz.index.json`, the
 * first regular entry of the tar inside (PAX and GNU long-name headers are followed).
 * Throws on anything else.
 */
async function tocJsonFromMember(member: Buffer, maxTocBytes: number): Promise<Buffer> {
  let tar: Buffer;
  try {
    tar = await gunzipP(member, { maxOutputLength: maxTocBytes + 64 * 1024 });
  } catch (err) {
    throw new Error(`TOC member does not decompress: ${(err as Error).message}`);
  }
  let pos = 0;
  let longName: string | undefined;
  while (pos + 512 <= tar.length) {
    const h = tar.subarray(pos, pos + 512);
    if (h.every((x) => x === 0)) break;
    if (!tarChecksumOk(h)) throw new Error(`bad tar header checksum at ${pos}`);
    const size = tarNumber(h.subarray(124, 136));
    const type = String.fromCharCode(h[156] ?? 0);
    const dataStart = pos + 512;
    if (dataStart + size > tar.length) throw new Error('tar entry runs past the TOC member');
    const data = tar.subarray(dataStart, dataStart + size);
    pos = dataStart + Math.ceil(size / 512) * 512;
    if (type === 'x') {
      longName = paxPath(data) ?? longName;
      continue;
    }
    if (type === 'L') {
      longName = cString(data);
      continue;
    }
    if (type === 'g') continue;
    const name = longName ?? tarName(h);
    longName = undefined;
    if (type !== '0' && type !== '\0') throw new Error(`unexpected tar entry type ${JSON.stringify(type)}`);
    if (cleanName(name) !== ESTARGZ.tocTarName) throw new Error(`first entry is ${JSON.stringify(name)}`);
    if (size > maxTocBytes) throw new Error(`TOC JSON is ${size} bytes, limit ${maxTocBytes}`);
    return Buffer.from(data);
  }
  throw new Error(`no ${ESTARGZ.tocTarName} in the TOC member`);
}

/** Parses and validates TOC JSON. Throws (with a reason) on a malformed TOC. */
function parseToc(json: Buffer, tocOffset: number): TocEntry[] {
  let doc: unknown;
  try {
    doc = JSON.parse(json.toString('utf8'));
  } catch {
    throw new Error('TOC is not JSON');
  }
  if (typeof doc !== 'object' || doc === null) throw new Error('TOC is not an object');
  const { version, entries } = doc as { version?: unknown; entries?: unknown };
  if (version !== 1) throw new Error(`TOC version ${String(version)}`);
  if (!Array.isArray(entries)) throw new Error('TOC without entries[]');
  return entries.map((raw, i): TocEntry => {
    if (typeof raw !== 'object' || raw === null) throw new Error(`entries[${i}] is not an object`);
    const e = raw as Record<string, unknown>;
    if (typeof e.name !== 'string' || typeof e.type !== 'string')
      throw new Error(`entries[${i}] needs name and type`);
    const num = (k: string): number => {
      const v = e[k];
      if (v === undefined || v === null) return 0;
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
        throw new Error(`entries[${i}].${k} is not a non-negative integer`);
      return v;
    };
    const offset = e.offset === undefined || e.offset === 0 ? undefined : num('offset');
    if (offset !== undefined && offset >= tocOffset) throw new Error(`entries[${i}].offset is past the TOC`);
    const str = (k: string): string | undefined => (typeof e[k] === 'string' ? (e[k] as string) : undefined);
    return {
      name: e.name,
      type: e.type,
      size: num('size'),
      offset,
      chunkOffset: num('chunkOffset'),
      chunkSize: num('chunkSize'),
      innerOffset: num('innerOffset'),
      chunkDigest: str('chunkDigest'),
      digest: str('digest'),
    };
  });
}

/** Builds the layout from validated entries; returns a reason string when they are inconsistent. */
function layoutOf(
  entries: TocEntry[],
  base: Pick<EstargzLayout, 'size' | 'tocOffset' | 'footerSize' | 'tocDigest' | 'tocVerified' | 'tailDigest'>,
): EstargzLayout | string {
  const prefetch = entries.find((e) => cleanName(e.name) === ESTARGZ.prefetchLandmark);
  const noPrefetch = entries.some((e) => cleanName(e.name) === ESTARGZ.noPrefetchLandmark);
  let prefetchEnd = 0;
  if (prefetch) {
    if (prefetch.offset === undefined) return 'prefetch landmark without an offset';
    prefetchEnd = prefetch.offset;
  }
  // Member boundaries: every distinct payload offset, and the TOC's.
  const starts = [
    ...new Set(entries.map((e) => e.offset).filter((o): o is number => o !== undefined)),
    base.tocOffset,
  ].sort((a, b) => a - b);
  const memberEnd = (offset: number): number => {
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((starts[mid] as number) <= offset) lo = mid + 1;
      else hi = mid;
    }
    return starts[lo] as number;
  };
  const fileSize = new Map<string, number>();
  const chunks: PrefetchChunk[] = [];
  let unverifiable: string | undefined = base.tocVerified ? undefined : 'TOC not verified by an annotation';
  for (const e of entries) {
    if (e.type === 'reg') fileSize.set(e.name, e.size);
    if ((e.type !== 'reg' && e.type !== 'chunk') || e.offset === undefined) continue;
    if (e.type === 'reg' && e.size === 0) continue;
    if (e.offset >= prefetchEnd) continue;
    const total = e.type === 'reg' ? e.size : (fileSize.get(e.name) ?? 0);
    const length = e.chunkSize > 0 ? e.chunkSize : total - e.chunkOffset;
    if (length < 0 || e.chunkOffset + length > total)
      return `chunk of ${e.name} at ${e.chunkOffset} is out of bounds`;
    let digest = e.chunkDigest;
    // A file stored in one piece may carry only its whole-file digest, which is the same thing.
    if (digest === undefined && e.type === 'reg' && length === e.size) digest = e.digest;
    if (!isDigest(digest)) {
      unverifiable ??= `no sha256 chunk digest for ${e.name} at ${e.chunkOffset}`;
      continue;
    }
    chunks.push({
      name: e.name,
      memberStart: e.offset,
      memberEnd: memberEnd(e.offset),
      innerOffset: e.innerOffset,
      length,
      digest,
    });
  }
  const startupRanges: ByteRange[] = [];
  if (prefetchEnd > 0) startupRanges.push({ start: 0, end: prefetchEnd });
  startupRanges.push({ start: base.tocOffset, end: base.size });
  return {
    ...base,
    landmark: prefetch ? 'prefetch' : noPrefetch ? 'no-prefetch' : 'none',
    prefetchEnd,
    prefetchChunks: chunks,
    unverifiable,
    startupRanges,
    entryCount: entries.length,
  };
}
