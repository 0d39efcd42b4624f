/**
 * Builds a single-layer OCI image whose layer is an uncompressed tar holding one file of
 * incompressible bytes, as an OCI image layout on disk (pushed with
 * `skopeo copy --preserve-digests oci:<dir>:<tag> docker://…`, which keeps the layer as is).
 *
 * The bytes are an AES-128-CTR keystream under a random key: indistinguishable from random
 * for any compressor, and several times faster to produce than `crypto.randomBytes`.
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { mkdir, open, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sha256 } from '../../oci/src/digest.js';

export interface BigImage {
  /** OCI layout directory. */
  layoutDir: string;
  /** Tag inside the layout (index.json ref name). */
  tag: string;
  manifestDigest: string;
  layerDigest: string;
  /** Layer (tar) size in bytes. */
  layerSize: number;
}

const BLOCK = 512;
const WRITE_CHUNK = 8 * 1024 * 1024;

/** A ustar header for one regular file, mode 0644, owned by root. */
function tarHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  const field = (off: number, len: number, value: string) => {
    h.write(value, off, len, 'ascii');
  };
  const octal = (off: number, len: number, n: number) =>
    field(off, len, n.toString(8).padStart(len - 1, '0'));
  field(0, 100, name);
  octal(100, 8, 0o644);
  octal(108, 8, 0);
  octal(116, 8, 0);
  if (size >= 8 ** 11) throw new Error('file too large for a ustar size field');
  octal(124, 12, size);
  octal(136, 12, 0);
  field(156, 1, '0');
  field(257, 6, 'ustar');
  field(263, 2, '00');
  // The checksum is computed with its own field read as spaces.
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  field(148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
  return h;
}

/**
 * Writes the layout under `dir` (created). `payloadBytes` of random data go into the
 * layer's one file; the layer is that plus tar framing (a little over `payloadBytes`).
 */
export async function buildBigImage(dir: string, payloadBytes: number, tag = 'bench'): Promise<BigImage> {
  const blobs = join(dir, 'blobs', 'sha256');
  await mkdir(blobs, { recursive: true });

  const tmpLayer = join(blobs, 'layer.tmp');
  const fh = await open(tmpLayer, 'w');
  const hash = createHash('sha256');
  let layerSize = 0;
  const put = async (buf: Buffer) => {
    hash.update(buf);
    await fh.write(buf);
    layerSize += buf.length;
  };
  try {
    await put(tarHeader('payload.bin', payloadBytes));
    const cipher = createCipheriv('aes-128-ctr', randomBytes(16), randomBytes(16));
    const zeros = Buffer.alloc(WRITE_CHUNK);
    for (let left = payloadBytes; left > 0; left -= WRITE_CHUNK) {
      const n = Math.min(left, WRITE_CHUNK);
      await put(cipher.update(n === WRITE_CHUNK ? zeros : zeros.subarray(0, n)));
    }
    const pad = (BLOCK - (payloadBytes % BLOCK)) % BLOCK;
    // Padding to a whole block, then the two zero blocks that end an archive.
    await put(Buffer.alloc(pad + 2 * BLOCK));
  } finally {
    await fh.close();
  }
  const layerDigest = `sha256:${hash.digest('hex')}`;
  await rename(tmpLayer, join(blobs, layerDigest.slice(7)));

  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: {},
      rootfs: { type: 'layers', diff_ids: [layerDigest] },
      history: [{ created_by: 'kube-prewarm bench/fetch: random payload' }],
    }),
  );
  const configDigest = sha256(config);
  await writeFile(join(blobs, configDigest.slice(7)), config);

  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: {
        mediaType: 'application/vnd.oci.image.config.v1+json',
        digest: configDigest,
        size: config.length,
      },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layerSize }],
    }),
  );
  const manifestDigest = sha256(manifest);
  await writeFile(join(blobs, manifestDigest.slice(7)), manifest);

  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: manifestDigest,
          size: manifest.length,
          annotations: { 'org.opencontainers.image.ref.name': tag },
        },
      ],
    }),
  );
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  return { layoutDir: dir, tag, manifestDigest, layerDigest, layerSize };
}
