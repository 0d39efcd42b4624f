/**
 * eStargz test layers and images, written from scratch (no Go, no Docker).
 *
 * `writeEstargzLayer` lays a layer out the way eStargz writers do: the tar stream is cut
 * into gzip members so that every non-empty regular file's payload (and every chunk of a
 * large file) starts a new member, whose blob offset the TOC records; tar headers and
 * padding ride in whatever member is open. Prioritized files come first, in the order
 * given, then the `.prefetch.landmark` entry (one byte, 0x0f), then the other files; a
 * layer without prioritized files starts with `.no.prefetch.landmark` instead. The TOC
 * (`stargz.index.json`, the last tar entry, with the tar end-of-archive blocks) is a member
 * of its own, and the 51-byte footer (an empty gzip member whose Extra field holds
 * `%016xSTARGZ` with the TOC offset) ends the blob. Concatenated gzip members are one
 * valid gzip stream, so `tar -tzf` reads the layer as an ordinary tar.gz.
 *
 * `buildEstargzImage` writes an OCI layout whose layer descriptors carry the
 * `containerd.io/snapshot/stargz/toc.digest` and `io.containers.estargz.uncompressed-size`
 * annotations, returned as a `BuiltImage` so `pushBuiltImage` (skopeo, digests preserved)
 * pushes it like any harness image.
 */
import { createCipheriv, createHash, randomUUID } from 'node:crypto';
import { type FileHandle, mkdir, open, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import type { Platform } from '../../oci/src/platform.js';
import {
  type BlobInfo,
  type BuiltImage,
  filesTar,
  IMAGE_MEDIA_TYPES,
  type PushedImage,
  type PushOptions,
  type PushTarget,
  pushBuiltImage,
} from './images.js';
import { makeTempDir, removeTempDir } from './tmp.js';

export const TOC_DIGEST_ANNOTATION = 'containerd.io/snapshot/stargz/toc.digest';
export const UNCOMPRESSED_SIZE_ANNOTATION = 'io.containers.estargz.uncompressed-size';

/** File content: bytes, text, or incompressible bytes generated from a seed (never held whole in memory beyond one chunk). */
export type EstargzContent = string | Buffer | { randomBytes: number; seed?: number };

/** One TOC entry as written (fields per the eStargz spec). */
export interface TocJsonEntry {
  name: string;
  type: 'dir' | 'reg' | 'chunk';
  size?: number;
  modtime?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  offset?: number;
  chunkOffset?: number;
  chunkSize?: number;
  chunkDigest?: string;
  digest?: string;
}

export interface TocJson {
  version: number;
  entries: TocJsonEntry[];
}

export interface EstargzLayerSpec {
  /** Files a container reads at startup, in access order; they precede the prefetch landmark. */
  prioritized?: [path: string, content: EstargzContent][];
  /** Everything else, after the landmark. */
  rest?: [path: string, content: EstargzContent][];
  /** Largest payload per gzip member; bigger files are split into `chunk` entries. Default 4 MiB (estargz's default). */
  chunkSize?: number;
  /** Deflate level for file payloads. Default 6; random payloads always use 0 (stored), which is valid and fast. */
  level?: number;
  tamper?: {
    /** Edits the TOC before its digest is taken: a consistent TOC that lies (the annotation matches it). */
    toc?: (toc: TocJson) => void;
    /** Edits the TOC written into the blob after the annotation was computed: the annotation no longer matches. */
    tocAfterAnnotation?: (toc: TocJson) => void;
  };
}

/** A layer as `writeEstargzLayer` wrote it. */
export interface BuiltEstargzLayer {
  /** The blob file. */
  path: string;
  digest: string;
  size: number;
  mediaType: string;
  /** sha256 of the uncompressed tar. */
  diffId: string;
  uncompressedSize: number;
  /** Digest of the TOC JSON that the annotation carries (the pre-tamper TOC when `tocAfterAnnotation` is used). */
  tocDigest: string;
  tocOffset: number;
  /** Offset of the prefetch landmark's payload member: the end of the prefetch region. 0 without prioritized files. */
  landmarkOffset: number;
  /** The TOC as written into the blob. */
  toc: TocJson;
  annotations: Record<string, string>;
}

const MTIME = 946_684_800; // 2000-01-01T00:00:00Z, as images.ts uses, so builds are reproducible.
const MODTIME = '2000-01-01T00:00:00Z';
const DEFAULT_CHUNK = 4 * 1024 * 1024;
const LANDMARK_BYTE = Buffer.from([0x0f]);

/**
 * Writes one eStargz layer into `dir` (as `blobs/sha256/<hex>` when `dir` is an OCI
 * layout's blob dir) and returns what it wrote. Throws on bad paths or duplicate files.
 */
export async function writeEstargzLayer(dir: string, spec: EstargzLayerSpec): Promise<BuiltEstargzLayer> {
  const chunkSize = spec.chunkSize ?? DEFAULT_CHUNK;
  const level = spec.level ?? 6;
  const tmp = join(dir, `.tmp-estargz-${randomUUID()}`);
  const fh = await open(tmp, 'w');
  const w = new MemberWriter(fh);
  try {
    const entries: TocJsonEntry[] = [];
    const dirs = new Set<string>();
    const seen = new Set<string>();
    const addFile = async (
      rawPath: string,
      content: EstargzContent,
      isRandom = typeof content === 'object' && !Buffer.isBuffer(content),
    ) => {
      const path = cleanPath(rawPath);
      if (seen.has(path)) throw new Error(`writeEstargzLayer: ${path} twice`);
      seen.add(path);
      const parts = path.split('/');
      for (let i = 1; i < parts.length; i++) {
        const d = `${parts.slice(0, i).join('/')}/`;
        if (dirs.has(d)) continue;
        dirs.add(d);
        w.appendPlain(ustarHeader(d, 0, '5'));
        entries.push({ name: d, type: 'dir', modtime: MODTIME, mode: 0o40755, uid: 0, gid: 0 });
      }
      const size = contentSize(content);
      w.appendPlain(ustarHeader(path, size, '0'));
      const reg: TocJsonEntry = {
        name: path,
        type: 'reg',
        size,
        modtime: MODTIME,
        mode: 0o100644,
        uid: 0,
        gid: 0,
      };
      entries.push(reg);
      if (size === 0) return;
      const fileHash = createHash('sha256');
      let written = 0;
      let ent = reg;
      for (const piece of contentPieces(content, chunkSize)) {
        const offset = await w.startMember();
        w.appendPlain(piece);
        fileHash.update(piece);
        ent.offset = offset;
        if (written > 0) ent.chunkOffset = written;
        // Every chunk but the last records its size; the last (or only) one records 0, meaning "to the end".
        if (written + piece.length < size) ent.chunkSize = piece.length;
        ent.chunkDigest = `sha256:${createHash('sha256').update(piece).digest('hex')}`;
        w.level = isRandom ? 0 : level;
        written += piece.length;
        if (written < size) {
          ent = { name: path, type: 'chunk' };
          entries.push(ent);
        }
      }
      reg.digest = `sha256:${fileHash.digest('hex')}`;
      w.appendPlain(Buffer.alloc(pad512(size)));
    };

    const prioritized = spec.prioritized ?? [];
    let landmarkOffset = 0;
    if (prioritized.length === 0) {
      await addFile('.no.prefetch.landmark', LANDMARK_BYTE, false);
    } else {
      for (const [p, c] of prioritized) await addFile(p, c);
      await addFile('.prefetch.landmark', LANDMARK_BYTE, false);
      landmarkOffset = entries.find((e) => e.name === '.prefetch.landmark')?.offset ?? 0;
    }
    for (const [p, c] of spec.rest ?? []) await addFile(p, c);

    // The TOC member: header, JSON, padding and the tar end-of-archive blocks.
    const toc: TocJson = { version: 1, entries };
    spec.tamper?.toc?.(toc);
    const annotatedJson = Buffer.from(JSON.stringify(toc));
    const tocDigest = `sha256:${createHash('sha256').update(annotatedJson).digest('hex')}`;
    let json = annotatedJson;
    if (spec.tamper?.tocAfterAnnotation) {
      spec.tamper.tocAfterAnnotation(toc);
      json = Buffer.from(JSON.stringify(toc));
    }
    const tocOffset = await w.startMember();
    w.level = level;
    w.appendPlain(ustarHeader('stargz.index.json', json.length, '0'));
    w.appendPlain(json);
    w.appendPlain(Buffer.alloc(pad512(json.length) + 1024));
    await w.startMember(); // flushes the TOC member
    await w.writeRaw(estargzFooter(tocOffset));
    await fh.close();
    const digest = `sha256:${w.blobHash.digest('hex')}`;
    const final = join(dir, digest.slice(7));
    await rename(tmp, final);
    const diffId = `sha256:${w.tarHash.digest('hex')}`;
    return {
      path: final,
      digest,
      size: w.position,
      mediaType: IMAGE_MEDIA_TYPES.oci.layerGzip,
      diffId,
      uncompressedSize: w.tarBytes,
      tocDigest,
      tocOffset,
      landmarkOffset,
      toc,
      annotations: {
        [TOC_DIGEST_ANNOTATION]: tocDigest,
        [UNCOMPRESSED_SIZE_ANNOTATION]: String(w.tarBytes),
      },
    };
  } catch (err) {
    await fh.close().catch(() => undefined);
    await removeTempDir(tmp).catch(() => undefined);
    throw err;
  }
}

/** Accumulates the open member's uncompressed bytes; each `startMember` gzips and writes it. */
class MemberWriter {
  readonly blobHash = createHash('sha256');
  readonly tarHash = createHash('sha256');
  position = 0;
  tarBytes = 0;
  /** Deflate level of the member being accumulated. */
  level = 6;
  #open: Buffer[] = [];

  constructor(readonly fh: FileHandle) {}

  appendPlain(b: Buffer): void {
    if (b.length === 0) return;
    this.#open.push(b);
    this.tarHash.update(b);
    this.tarBytes += b.length;
  }

  /** Closes the open member (if it holds anything) and returns the offset where the next one starts. */
  async startMember(): Promise<number> {
    if (this.#open.length > 0) {
      const gz = gzipSync(Buffer.concat(this.#open), { level: this.level });
      this.#open = [];
      await this.writeRaw(gz);
    }
    return this.position;
  }

  async writeRaw(b: Buffer): Promise<void> {
    await this.fh.write(b, 0, b.length, this.position);
    this.blobHash.update(b);
    this.position += b.length;
  }
}

/** The 51-byte eStargz footer for a TOC at `tocOffset`. */
export function estargzFooter(tocOffset: number): Buffer {
  const f = Buffer.alloc(51);
  f.set([0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff]); // magic, deflate, FEXTRA, mtime 0, xfl 0, OS unknown
  f.writeUInt16LE(26, 10); // XLEN
  f.write('SG', 12, 'latin1');
  f.writeUInt16LE(22, 14);
  f.write(`${tocOffset.toString(16).padStart(16, '0')}STARGZ`, 16, 'latin1');
  f.set([0x01, 0x00, 0x00, 0xff, 0xff], 38); // final stored block, length 0
  // CRC32 and ISIZE of empty content are 0 (already zero).
  return f;
}

function contentSize(c: EstargzContent): number {
  if (typeof c === 'string') return Buffer.byteLength(c);
  if (Buffer.isBuffer(c)) return c.length;
  return c.randomBytes;
}

function* contentPieces(c: EstargzContent, chunkSize: number): Generator<Buffer> {
  if (typeof c === 'string' || Buffer.isBuffer(c)) {
    const b = typeof c === 'string' ? Buffer.from(c) : c;
    for (let i = 0; i < b.length; i += chunkSize) yield b.subarray(i, i + chunkSize);
    return;
  }
  const key = createHash('sha256')
    .update(`kube-prewarm-estargz-seed:${c.seed ?? Math.random()}`)
    .digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  for (let left = c.randomBytes; left > 0; left -= chunkSize) {
    yield cipher.update(Buffer.alloc(Math.min(chunkSize, left)));
  }
}

function cleanPath(raw: string): string {
  const p = raw.replace(/^\.?\/+/, '');
  if (p === '' || p.endsWith('/') || p.split('/').some((s) => s === '' || s === '.' || s === '..')) {
    throw new Error(`writeEstargzLayer: bad path ${JSON.stringify(raw)}`);
  }
  return p;
}

function pad512(n: number): number {
  return (512 - (n % 512)) % 512;
}

/** A 512-byte ustar header (fixed owner and mtime). Paths longer than 100 bytes use the prefix field. */
function ustarHeader(path: string, size: number, type: '0' | '5'): Buffer {
  const h = Buffer.alloc(512);
  let name = path;
  let prefix = '';
  if (Buffer.byteLength(path) > 100) {
    const cut = path.lastIndexOf('/', path.length - 2);
    if (cut < 0) throw new Error(`ustar: path too long: ${path}`);
    prefix = path.slice(0, cut);
    name = path.slice(cut + 1);
    if (Buffer.byteLength(name) > 100 || Buffer.byteLength(prefix) > 155)
      throw new Error(`ustar: path too long: ${path}`);
  }
  const oct = (n: number, width: number) => `${n.toString(8).padStart(width, '0')}\0`;
  h.write(name, 0, 100, 'utf8');
  h.write(oct(type === '5' ? 0o755 : 0o644, 7), 100, 'latin1');
  h.write(oct(0, 7), 108, 'latin1');
  h.write(oct(0, 7), 116, 'latin1');
  h.write(oct(size, 11), 124, 'latin1');
  h.write(oct(MTIME, 11), 136, 'latin1');
  h.write('        ', 148, 'latin1');
  h.write(type, 156, 'latin1');
  h.write('ustar\u000000', 257, 'latin1');
  h.write('root', 265, 'latin1');
  h.write('root', 297, 'latin1');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

/** A layer of an eStargz test image: eStargz, or a plain gzip tar of small files. */
export type EstargzImageLayer = EstargzLayerSpec | { plainFiles: Record<string, string | Buffer> };

export interface EstargzImageSpec {
  layers: readonly EstargzImageLayer[];
  platform?: Platform;
  /** Drop the eStargz annotations from the manifest (the blobs stay eStargz). */
  omitAnnotations?: boolean;
}

export interface BuiltEstargzImage extends BuiltImage {
  /** Per layer, in manifest order; undefined for plain layers. */
  estargz: (BuiltEstargzLayer | undefined)[];
}

/**
 * Writes an OCI layout (one linux/amd64 manifest unless `platform` says otherwise) with
 * the given layers; eStargz layer descriptors carry the eStargz annotations. Returns a
 * `BuiltImage` for `pushBuiltImage`, plus what was written for each eStargz layer.
 */
export async function buildEstargzImage(
  spec: EstargzImageSpec,
  opts: { dir?: string } = {},
): Promise<BuiltEstargzImage> {
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? (await makeTempDir('estargz-image'));
  const mt = IMAGE_MEDIA_TYPES.oci;
  const platform = spec.platform ?? { os: 'linux', architecture: 'amd64' };
  try {
    const blobs = join(dir, 'blobs', 'sha256');
    await mkdir(blobs, { recursive: true });
    const layers: (BlobInfo & { annotations?: Record<string, string> })[] = [];
    const diffIds: string[] = [];
    const estargz: (BuiltEstargzLayer | undefined)[] = [];
    for (const l of spec.layers) {
      if ('plainFiles' in l) {
        const tar = filesTar(l.plainFiles);
        const gz = gzipSync(tar);
        const info = await writeBlob(blobs, gz, mt.layerGzip);
        layers.push(info);
        diffIds.push(`sha256:${createHash('sha256').update(tar).digest('hex')}`);
        estargz.push(undefined);
      } else {
        const built = await writeEstargzLayer(blobs, l);
        layers.push({
          digest: built.digest,
          size: built.size,
          mediaType: built.mediaType,
          ...(spec.omitAnnotations ? {} : { annotations: built.annotations }),
        });
        diffIds.push(built.diffId);
        estargz.push(built);
      }
    }
    const config = await writeBlob(
      blobs,
      Buffer.from(
        JSON.stringify({
          created: MODTIME,
          architecture: platform.architecture,
          os: platform.os,
          config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'] },
          rootfs: { type: 'layers', diff_ids: diffIds },
          history: layers.map(() => ({ created: MODTIME, created_by: 'kube-prewarm estargz harness' })),
        }),
      ),
      mt.config,
    );
    const manifest = await writeBlob(
      blobs,
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: mt.manifest,
          config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
          layers: layers.map((l) => ({
            mediaType: l.mediaType,
            digest: l.digest,
            size: l.size,
            ...(l.annotations ? { annotations: l.annotations } : {}),
          })),
        }),
      ),
      mt.manifest,
    );
    await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    await writeFile(
      join(dir, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        mediaType: mt.index,
        manifests: [
          {
            mediaType: manifest.mediaType,
            digest: manifest.digest,
            size: manifest.size,
            annotations: { 'org.opencontainers.image.ref.name': 'latest' },
          },
        ],
      }),
    );
    return {
      dir,
      layoutTag: 'latest',
      mediaTypes: 'oci',
      digest: manifest.digest,
      size: manifest.size,
      mediaType: manifest.mediaType,
      isIndex: false,
      manifests: [
        {
          platform,
          digest: manifest.digest,
          size: manifest.size,
          mediaType: manifest.mediaType,
          config,
          layers: layers.map((l) => ({ digest: l.digest, size: l.size, mediaType: l.mediaType })),
          diffIds,
        },
      ],
      attestations: [],
      estargz,
      remove: async () => {
        if (ownDir) await removeTempDir(dir);
      },
    };
  } catch (err) {
    if (ownDir) await removeTempDir(dir);
    throw err;
  }
}

export interface PushedEstargzImage extends PushedImage {
  estargz: (BuiltEstargzLayer | undefined)[];
}

/** `buildEstargzImage` into a temp dir, push it with skopeo, remove the temp dir. */
export async function pushEstargzImage(
  target: PushTarget,
  spec: EstargzImageSpec & PushOptions,
): Promise<PushedEstargzImage> {
  const image = await buildEstargzImage(spec);
  try {
    const pushed = await pushBuiltImage(target, image, spec);
    return { ...pushed, estargz: image.estargz.map((l) => (l ? { ...l, path: '' } : undefined)) };
  } finally {
    await image.remove();
  }
}

async function writeBlob(blobs: string, bytes: Buffer, mediaType: string): Promise<BlobInfo> {
  const hex = createHash('sha256').update(bytes).digest('hex');
  await writeFile(join(blobs, hex), bytes);
  return { digest: `sha256:${hex}`, size: bytes.length, mediaType };
}
