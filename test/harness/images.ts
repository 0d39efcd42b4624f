/**
 * Test images built from scratch (no Docker) and pushed to a real registry with skopeo.
 *
 * `buildImage` writes an OCI image layout (oci-layout, index.json, blobs/sha256/...):
 * layer tars are written here (ustar headers, mode/uid/mtime fixed, so the same spec gives
 * the same digests), streamed through SHA-256 (and gzip when asked) straight to disk, so a
 * 1 GiB random layer never sits in memory. `pushBuiltImage` runs
 * `skopeo copy --all --preserve-digests oci:<dir>:<tag> docker://<host>/<repo>:<tag>` and then
 * reads everything back from the registry: what it returns is what the registry serves
 * (digests, sizes, media types), not what we computed, and a mismatch between the two throws.
 *
 * Docker media types: the manifests are written with Docker schema2 media types
 * (`...distribution.manifest.v2+json`, `...manifest.list.v2+json`, `...rootfs.diff.tar.gzip`,
 * `...container.image.v1+json`). skopeo 1.9's `oci:` transport only looks up index.json
 * entries typed as OCI manifest/index, and when such an entry holds a Docker manifest list it
 * insists on converting it to an OCI index, which `--preserve-digests` forbids. So Docker
 * images are pushed from skopeo's `dir:` transport instead (a view of the same blobs, hard
 * linked: `manifest.json`, `<hex>.manifest.json` per instance, `<hex>` per blob, `version`),
 * which copies them byte for byte; the self-test reads the registry's Content-Type to prove it.
 */
import { execFile } from 'node:child_process';
import { createCipheriv, createHash, randomBytes, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { copyFile, link, mkdir, readdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { createGzip } from 'node:zlib';
import type { Platform } from '../../oci/src/platform.js';
import type { Credentials } from './registry.js';
import { getBlob, getManifest, headBlob, type RegistryEndpoint } from './registry-http.js';
import { makeTempDir, removeTempDir } from './tmp.js';

const execFileP = promisify(execFile);

export const IMAGE_MEDIA_TYPES = {
  oci: {
    manifest: 'application/vnd.oci.image.manifest.v1+json',
    index: 'application/vnd.oci.image.index.v1+json',
    config: 'application/vnd.oci.image.config.v1+json',
    layer: 'application/vnd.oci.image.layer.v1.tar',
    layerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  },
  docker: {
    manifest: 'application/vnd.docker.distribution.manifest.v2+json',
    index: 'application/vnd.docker.distribution.manifest.list.v2+json',
    config: 'application/vnd.docker.container.image.v1+json',
    layer: 'application/vnd.docker.image.rootfs.diff.tar',
    layerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  },
} as const;

/** buildx's attestation manifests: platform unknown/unknown, in-toto layers. */
export const ATTESTATION = {
  platform: { os: 'unknown', architecture: 'unknown' } as Platform,
  layerMediaType: 'application/vnd.in-toto+json',
  refDigestAnnotation: 'vnd.docker.reference.digest',
  refTypeAnnotation: 'vnd.docker.reference.type',
} as const;

/** A layer of plain files. Paths are relative (`etc/hello.txt`); parent dirs are added. */
export interface FilesLayerSpec {
  files: Record<string, string | Buffer>;
  /** Paths (as in `files`) written with mode 0755, e.g. a busybox binary a pod runs. */
  executables?: readonly string[];
  /** Default: `none` for OCI images, `gzip` for Docker images (which require it). */
  compression?: 'none' | 'gzip';
}

/**
 * A layer holding one file of `randomBytes` incompressible bytes (AES-256-CTR keystream).
 * With a `seed` the content (so the digest) is the same on every build; without, it is new
 * each time. Generated in 1 MiB chunks: any size works without holding it in memory.
 */
export interface RandomLayerSpec {
  randomBytes: number;
  seed?: number;
  /** Name of the file in the tar. Default `random.bin`. */
  fileName?: string;
  /** As for files; gzip of random data uses deflate level 0 (stored), which is valid and fast. */
  compression?: 'none' | 'gzip';
}

export type LayerSpec = FilesLayerSpec | RandomLayerSpec;

export interface ImageSpec {
  /** Layers bottom-up; a function gives each platform its own layers. */
  layers: readonly LayerSpec[] | ((platform: Platform) => readonly LayerSpec[]);
  /** Default `oci`. */
  mediaTypes?: 'oci' | 'docker';
  /**
   * Default `[linux/amd64]`. More than one → an OCI index / Docker manifest list with one
   * manifest per platform.
   */
  platforms?: readonly Platform[];
  /** Make an index / manifest list even for a single platform. Default: only for >1 platform. */
  index?: boolean;
  /**
   * Add a buildx-style attestation manifest per platform (index entry with platform
   * unknown/unknown and `vnd.docker.reference.*` annotations). OCI only; implies an index.
   */
  attestation?: boolean;
  /** Extra image config (`config` section of the image config JSON), e.g. `{ Env: [...] }`. */
  config?: Record<string, unknown>;
}

/** A content descriptor as the harness reports it. */
export interface BlobInfo {
  digest: string;
  size: number;
  mediaType: string;
}

/** One platform's image manifest. */
export interface ImageManifestInfo {
  platform: Platform;
  digest: string;
  size: number;
  mediaType: string;
  config: BlobInfo;
  layers: BlobInfo[];
  /** `rootfs.diff_ids` of the config (uncompressed layer digests). */
  diffIds: string[];
}

export interface AttestationInfo {
  digest: string;
  size: number;
  mediaType: string;
  /** Digest of the image manifest it describes. */
  refersTo: string;
  layers: BlobInfo[];
}

/** An image written to an OCI layout by `buildImage`, as computed locally. */
export interface BuiltImage {
  /** The OCI layout directory. */
  dir: string;
  /** The `org.opencontainers.image.ref.name` of the image in the layout. */
  layoutTag: string;
  mediaTypes: 'oci' | 'docker';
  /** Top-level manifest or index digest. */
  digest: string;
  size: number;
  mediaType: string;
  isIndex: boolean;
  manifests: ImageManifestInfo[];
  attestations: AttestationInfo[];
  /** Removes `dir` (when `buildImage` made it). */
  remove(): Promise<void>;
}

/** An image as the registry holds it after a push. */
export interface PushedImage {
  /** `<host>/<repository>:<tag>` */
  ref: string;
  /** `<host>/<repository>@<digest>` */
  digestRef: string;
  host: string;
  repository: string;
  tag: string;
  /** Top-level manifest or index digest as stored in the registry. */
  digest: string;
  size: number;
  /** Content-Type the registry serves for it. */
  mediaType: string;
  isIndex: boolean;
  /** One entry per platform (attestation manifests excluded). */
  manifests: ImageManifestInfo[];
  attestations: AttestationInfo[];
}

/** Where to push: a registry handle, or a fault proxy in front of one (`host` = its host:port). */
export interface PushTarget extends RegistryEndpoint {
  host: string;
}

export interface PushOptions {
  repository: string;
  tag: string;
  /** Default: the target's `credentials` (set on htpasswd registries). */
  creds?: Credentials;
}

const TAR_MTIME = 946_684_800; // 2000-01-01T00:00:00Z: fixed, so layers are reproducible.
const CREATED = '2000-01-01T00:00:00Z';
const CHUNK = 1024 * 1024;
const DEFAULT_PLATFORMS: readonly Platform[] = [{ os: 'linux', architecture: 'amd64' }];

/**
 * Writes an OCI image layout for `spec` into `opts.dir` (default: a new temp dir) and returns
 * what it wrote. Identical layer specs (the same object) are written once. Throws on an
 * invalid spec (attestation with Docker media types, bad file paths, no platforms).
 */
export async function buildImage(
  spec: ImageSpec,
  opts: { dir?: string; layoutTag?: string } = {},
): Promise<BuiltImage> {
  const kind = spec.mediaTypes ?? 'oci';
  const mt = IMAGE_MEDIA_TYPES[kind];
  const platforms = spec.platforms ?? DEFAULT_PLATFORMS;
  if (platforms.length === 0) throw new Error('buildImage: no platforms');
  if (spec.attestation && kind === 'docker') throw new Error('buildImage: attestations need OCI media types');
  const isIndex = platforms.length > 1 || spec.index === true || spec.attestation === true;
  const layoutTag = opts.layoutTag ?? 'latest';

  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? (await makeTempDir('image'));
  try {
    const blobs = join(dir, 'blobs', 'sha256');
    await mkdir(blobs, { recursive: true });
    const layerCache = new Map<LayerSpec, { info: BlobInfo; diffId: string }>();
    const manifests: ImageManifestInfo[] = [];
    const attestations: AttestationInfo[] = [];

    for (const platform of platforms) {
      const specs = typeof spec.layers === 'function' ? spec.layers(platform) : spec.layers;
      const layers: BlobInfo[] = [];
      const diffIds: string[] = [];
      for (const ls of specs) {
        let done = layerCache.get(ls);
        if (!done) {
          done = await writeLayer(blobs, ls, kind);
          layerCache.set(ls, done);
        }
        layers.push(done.info);
        diffIds.push(done.diffId);
      }
      const configJson = {
        created: CREATED,
        architecture: platform.architecture,
        os: platform.os,
        ...(platform.variant ? { variant: platform.variant } : {}),
        config: {
          Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
          ...spec.config,
        },
        rootfs: { type: 'layers', diff_ids: diffIds },
        history: specs.map(() => ({ created: CREATED, created_by: 'kube-prewarm test harness' })),
      };
      const config = await writeJsonBlob(blobs, configJson, mt.config);
      const manifest = await writeJsonBlob(
        blobs,
        {
          schemaVersion: 2,
          mediaType: mt.manifest,
          config: descriptor(config),
          layers: layers.map(descriptor),
        },
        mt.manifest,
      );
      manifests.push({ platform, ...manifest, config, layers, diffIds });

      if (spec.attestation) {
        const statement = {
          _type: 'https://in-toto.io/Statement/v0.1',
          predicateType: 'https://spdx.dev/Document',
          subject: [{ name: 'kube-prewarm-test', digest: { sha256: manifest.digest.slice(7) } }],
          predicate: { spdxVersion: 'SPDX-2.3', name: `kube-prewarm-test-${platform.architecture}` },
        };
        const layer = await writeJsonBlob(blobs, statement, ATTESTATION.layerMediaType);
        const attConfig = await writeJsonBlob(
          blobs,
          {
            architecture: 'unknown',
            os: 'unknown',
            config: {},
            rootfs: { type: 'layers', diff_ids: [layer.digest] },
          },
          IMAGE_MEDIA_TYPES.oci.config,
        );
        const attManifest = await writeJsonBlob(
          blobs,
          {
            schemaVersion: 2,
            mediaType: IMAGE_MEDIA_TYPES.oci.manifest,
            config: descriptor(attConfig),
            layers: [
              { ...descriptor(layer), annotations: { 'in-toto.io/predicate-type': statement.predicateType } },
            ],
          },
          IMAGE_MEDIA_TYPES.oci.manifest,
        );
        attestations.push({ ...attManifest, refersTo: manifest.digest, layers: [layer] });
      }
    }

    let top: BlobInfo;
    if (isIndex) {
      const entries: Record<string, unknown>[] = manifests.map((m) => ({
        ...descriptor(m),
        platform: platformJson(m.platform),
      }));
      for (const a of attestations) {
        entries.push({
          ...descriptor(a),
          annotations: {
            [ATTESTATION.refDigestAnnotation]: a.refersTo,
            [ATTESTATION.refTypeAnnotation]: 'attestation-manifest',
          },
          platform: platformJson(ATTESTATION.platform),
        });
      }
      top = await writeJsonBlob(
        blobs,
        { schemaVersion: 2, mediaType: mt.index, manifests: entries },
        mt.index,
      );
    } else {
      top = manifests[0]!;
    }

    await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    await writeFile(
      join(dir, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        mediaType: IMAGE_MEDIA_TYPES.oci.index,
        manifests: [{ ...descriptor(top), annotations: { 'org.opencontainers.image.ref.name': layoutTag } }],
      }),
    );
    return {
      dir,
      layoutTag,
      mediaTypes: kind,
      digest: top.digest,
      size: top.size,
      mediaType: top.mediaType,
      isIndex,
      manifests,
      attestations,
      remove: async () => {
        if (ownDir) await removeTempDir(dir);
      },
    };
  } catch (err) {
    if (ownDir) await removeTempDir(dir);
    throw err;
  }
}

/**
 * Pushes a built image with skopeo (`--all --preserve-digests`) and returns what the registry
 * then serves (see `readImage`). Throws with skopeo's output when the copy fails, and when
 * the registry's top-level digest differs from the one built.
 */
export async function pushBuiltImage(
  target: PushTarget,
  image: BuiltImage,
  opts: PushOptions,
): Promise<PushedImage> {
  const creds = opts.creds ?? target.credentials;
  const view = image.mediaTypes === 'docker' ? await dirTransportView(image) : undefined;
  const source = view ? `dir:${view}` : `oci:${image.dir}:${image.layoutTag}`;
  const args = [
    '--insecure-policy',
    'copy',
    '--all',
    '--preserve-digests',
    '--quiet',
    '--dest-tls-verify=false',
    ...(creds ? ['--dest-creds', `${creds.username}:${creds.password}`] : []),
    source,
    `docker://${target.host}/${opts.repository}:${opts.tag}`,
  ];
  try {
    await execFileP('skopeo', args, { maxBuffer: 16 * 1024 * 1024 });
  } catch (err) {
    const e = err as Error & { stderr?: string; stdout?: string };
    throw new Error(
      `skopeo copy to ${target.host}/${opts.repository}:${opts.tag} failed: ${e.stderr || e.message}`,
      {
        cause: err,
      },
    );
  } finally {
    if (view) await removeTempDir(view);
  }
  const pushed = await readImage(target, opts.repository, opts.tag, creds ? { creds } : {});
  if (pushed.digest !== image.digest) {
    throw new Error(`pushed ${pushed.ref}: registry has ${pushed.digest}, built ${image.digest}`);
  }
  return pushed;
}

/** `buildImage` into a temp dir, `pushBuiltImage`, remove the temp dir. */
export async function pushImage(target: PushTarget, opts: ImageSpec & PushOptions): Promise<PushedImage> {
  const image = await buildImage(opts);
  try {
    return await pushBuiltImage(target, image, opts);
  } finally {
    await image.remove();
  }
}

/**
 * Reads an image back from the registry: the manifest or index at `reference`, each
 * platform manifest, each config (for platform and diff_ids), and a HEAD of every layer
 * (for its size). Throws when anything referenced is missing or sizes disagree with the
 * descriptors.
 */
export async function readImage(
  target: PushTarget,
  repository: string,
  reference: string,
  opts: { creds?: Credentials | null } = {},
): Promise<PushedImage> {
  const top = await getManifest(target, repository, reference, opts);
  const isIndex = Array.isArray(top.json.manifests);
  const manifests: ImageManifestInfo[] = [];
  const attestations: AttestationInfo[] = [];

  const readOne = async (digest: string, platform: Platform | undefined): Promise<ImageManifestInfo> => {
    const m = digest === top.digest ? top : await getManifest(target, repository, digest, opts);
    const cfgDesc = m.json.config as BlobInfo;
    const cfg = JSON.parse((await getBlob(target, repository, cfgDesc.digest, opts)).toString('utf8')) as {
      os: string;
      architecture: string;
      variant?: string;
      rootfs?: { diff_ids?: string[] };
    };
    const layers: BlobInfo[] = [];
    for (const l of m.json.layers as BlobInfo[]) {
      const size = await headBlob(target, repository, l.digest, opts);
      if (size !== l.size) throw new Error(`layer ${l.digest}: registry size ${size}, descriptor ${l.size}`);
      layers.push({ digest: l.digest, size, mediaType: l.mediaType });
    }
    return {
      platform: platform ?? {
        os: cfg.os,
        architecture: cfg.architecture,
        ...(cfg.variant ? { variant: cfg.variant } : {}),
      },
      digest: m.digest,
      size: m.size,
      mediaType: m.mediaType,
      config: { digest: cfgDesc.digest, size: cfgDesc.size, mediaType: cfgDesc.mediaType },
      layers,
      diffIds: cfg.rootfs?.diff_ids ?? [],
    };
  };

  if (isIndex) {
    for (const entry of top.json.manifests as (BlobInfo & {
      platform?: Platform;
      annotations?: Record<string, string>;
    })[]) {
      const refersTo = entry.annotations?.[ATTESTATION.refDigestAnnotation];
      if (refersTo !== undefined) {
        const m = await readOne(entry.digest, entry.platform);
        attestations.push({
          digest: m.digest,
          size: m.size,
          mediaType: m.mediaType,
          refersTo,
          layers: m.layers,
        });
      } else {
        const m = await readOne(entry.digest, entry.platform);
        if (m.size !== entry.size)
          throw new Error(`manifest ${entry.digest}: size ${m.size}, index says ${entry.size}`);
        manifests.push(m);
      }
    }
  } else {
    manifests.push(await readOne(top.digest, undefined));
  }
  const host = target.host;
  return {
    ref: `${host}/${repository}:${reference}`,
    digestRef: `${host}/${repository}@${top.digest}`,
    host,
    repository,
    tag: reference,
    digest: top.digest,
    size: top.size,
    mediaType: top.mediaType,
    isIndex,
    manifests,
    attestations,
  };
}

/**
 * skopeo's `dir:` transport layout for a built image, in a new temp dir: blobs hard linked
 * (copied across filesystems), the top manifest as `manifest.json`, list instances as
 * `<hex>.manifest.json`. The caller removes it.
 */
async function dirTransportView(image: BuiltImage): Promise<string> {
  const view = await makeTempDir('skopeo-dir');
  try {
    const blobs = join(image.dir, 'blobs', 'sha256');
    const place = async (from: string, to: string): Promise<void> => {
      try {
        await link(from, to);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
        await copyFile(from, to);
      }
    };
    for (const name of await readdir(blobs)) {
      if (!name.startsWith('.')) await place(join(blobs, name), join(view, name));
    }
    await place(join(blobs, image.digest.slice(7)), join(view, 'manifest.json'));
    if (image.isIndex) {
      for (const m of image.manifests) {
        await place(join(blobs, m.digest.slice(7)), join(view, `${m.digest.slice(7)}.manifest.json`));
      }
    }
    await writeFile(join(view, 'version'), 'Directory Transport Version: 1.1\n');
    return view;
  } catch (err) {
    await removeTempDir(view);
    throw err;
  }
}

function descriptor(b: BlobInfo): BlobInfo {
  return { mediaType: b.mediaType, digest: b.digest, size: b.size };
}

function platformJson(p: Platform): Platform {
  return { architecture: p.architecture, os: p.os, ...(p.variant ? { variant: p.variant } : {}) };
}

function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

async function writeJsonBlob(blobs: string, value: unknown, mediaType: string): Promise<BlobInfo> {
  const bytes = Buffer.from(JSON.stringify(value));
  const hex = sha256Hex(bytes);
  await writeFile(join(blobs, hex), bytes);
  return { digest: `sha256:${hex}`, size: bytes.length, mediaType };
}

/** Streams one layer to `blobs/<hex>`, hashing the tar (diff_id) and the blob as it goes. */
async function writeLayer(
  blobs: string,
  spec: LayerSpec,
  kind: 'oci' | 'docker',
): Promise<{ info: BlobInfo; diffId: string }> {
  const mt = IMAGE_MEDIA_TYPES[kind];
  // Docker's schema2 has an uncompressed layer type on paper, but nothing produces it.
  const gzip = (spec.compression ?? (kind === 'docker' ? 'gzip' : 'none')) === 'gzip';
  if (kind === 'docker' && !gzip) throw new Error('buildImage: Docker images need gzip layers');
  const source =
    'files' in spec
      ? Readable.from([filesTar(spec.files, spec.executables)])
      : Readable.from(randomTar(spec));
  const diffHash = createHash('sha256');
  const blobHash = createHash('sha256');
  let size = 0;
  const tapTar = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      diffHash.update(chunk);
      cb(null, chunk);
    },
  });
  const tapBlob = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      blobHash.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  const tmp = join(blobs, `.tmp-${randomUUID()}`);
  const out: Writable = createWriteStream(tmp);
  if (gzip) {
    // Random data does not compress: level 0 (stored blocks) gives a valid gzip at disk speed.
    const level = 'files' in spec ? 6 : 0;
    await pipeline(source, tapTar, createGzip({ level }), tapBlob, out);
  } else {
    await pipeline(source, tapTar, tapBlob, out);
  }
  const digestHex = blobHash.digest('hex');
  const diffId = `sha256:${diffHash.digest('hex')}`;
  await rename(tmp, join(blobs, digestHex));
  return { info: { digest: `sha256:${digestHex}`, size, mediaType: gzip ? mt.layerGzip : mt.layer }, diffId };
}

/**
 * A ustar tar of `files` plus their parent dirs, sorted, with fixed metadata (mode 0644,
 * 0755 for dirs and the paths in `executables`).
 */
export function filesTar(
  files: Record<string, string | Buffer>,
  executables: readonly string[] = [],
): Buffer {
  const exec = new Set(executables.map((p) => p.replace(/^\.?\/+/, '')));
  const dirs = new Set<string>();
  const entries: [string, Buffer][] = [];
  for (const [rawPath, content] of Object.entries(files)) {
    const path = rawPath.replace(/^\.?\/+/, '');
    if (
      path === '' ||
      path.endsWith('/') ||
      path.split('/').some((p) => p === '..' || p === '.' || p === '')
    ) {
      throw new Error(`filesTar: bad path ${JSON.stringify(rawPath)}`);
    }
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(`${parts.slice(0, i).join('/')}/`);
    entries.push([path, typeof content === 'string' ? Buffer.from(content) : content]);
  }
  const chunks: Buffer[] = [];
  for (const d of [...dirs].sort()) chunks.push(tarHeader(d, 0, '5'));
  for (const [path, data] of entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    chunks.push(tarHeader(path, data.length, '0', exec.has(path)), data, Buffer.alloc(padTo512(data.length)));
  }
  chunks.push(Buffer.alloc(1024));
  return Buffer.concat(chunks);
}

async function* randomTar(spec: RandomLayerSpec): AsyncGenerator<Buffer> {
  const n = spec.randomBytes;
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`randomTar: bad size ${n}`);
  yield tarHeader(spec.fileName ?? 'random.bin', n, '0');
  const key =
    spec.seed === undefined
      ? randomBytes(32)
      : createHash('sha256').update(`kube-prewarm-harness-seed:${spec.seed}`).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(CHUNK);
  for (let left = n; left > 0; left -= CHUNK) {
    yield cipher.update(left >= CHUNK ? zeros : zeros.subarray(0, left));
  }
  yield Buffer.alloc(padTo512(n) + 1024);
}

function padTo512(n: number): number {
  return (512 - (n % 512)) % 512;
}

/** One 512-byte ustar header; long paths are split into prefix/name. */
function tarHeader(path: string, size: number, type: '0' | '5', executable = false): Buffer {
  const h = Buffer.alloc(512);
  let name = path;
  let prefix = '';
  if (Buffer.byteLength(name) > 100) {
    const cut = path.lastIndexOf('/', path.length - 2);
    prefix = path.slice(0, cut);
    name = path.slice(cut + 1);
    if (cut < 0 || Buffer.byteLength(name) > 100 || Buffer.byteLength(prefix) > 155) {
      throw new Error(`tar: path too long: ${path}`);
    }
  }
  if (size >= 8 ** 11) throw new Error('tar: files of 8 GiB or more are not supported');
  h.write(name, 0, 100, 'utf8');
  h.write(octal(type === '5' || executable ? 0o755 : 0o644, 7), 100);
  h.write(octal(0, 7), 108);
  h.write(octal(0, 7), 116);
  h.write(octal(size, 11), 124);
  h.write(octal(TAR_MTIME, 11), 136);
  h.write('        ', 148); // checksum field counts as spaces while summing
  h.write(type, 156);
  h.write('ustar\u000000', 257, 'latin1');
  h.write('root', 265);
  h.write('root', 297);
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${octal(sum, 6)} `, 148, 'latin1'); // six digits, NUL, space
  return h;
}

function octal(n: number, width: number): string {
  return `${n.toString(8).padStart(width, '0')}\u0000`;
}
