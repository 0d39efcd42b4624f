/**
 * eStargz format: the harness's layers are real tar.gz files (checked with GNU tar and
 * gzip), and the agent's footer/TOC probe and startup-region verification read them,
 * refuse tampered TOCs and catch corrupted prefetch bytes. No network.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import {
  ESTARGZ,
  type EstargzLayout,
  parseFooter,
  probeEstargz,
  type RangeReader,
} from '../../agent/src/fetch/estargz.js';
import { verifyStartupRegion } from '../../agent/src/fetch/estargz-verify.js';
import type { Digest } from '../../oci/src/digest.js';
import { type BuiltEstargzLayer, estargzFooter, writeEstargzLayer } from '../harness/estargz.js';
import { Cleanup, makeTempDir } from '../harness/index.js';

const execFileP = promisify(execFile);
const cleanup = new Cleanup();
after(() => cleanup.run());

const KiB = 1024;

function readerOf(blob: Buffer): RangeReader {
  return async (start, end) => {
    assert.ok(start >= 0 && end <= blob.length && start < end, `range ${start}-${end} of ${blob.length}`);
    return blob.subarray(start, end);
  };
}

function descriptorOf(l: BuiltEstargzLayer, annotations: Record<string, string> | null = l.annotations) {
  return {
    digest: l.digest as Digest,
    size: l.size,
    mediaType: l.mediaType,
    ...(annotations ? { annotations } : {}),
  };
}

async function layoutOf(l: BuiltEstargzLayer, blob: Buffer): Promise<EstargzLayout> {
  const p = await probeEstargz(descriptorOf(l), readerOf(blob));
  assert.equal(p.kind, 'estargz', JSON.stringify(p));
  return (p as { layout: EstargzLayout }).layout;
}

describe('eStargz layers from the test harness', () => {
  let layer: BuiltEstargzLayer;
  let blob: Buffer;

  it('is a valid tar.gz: prioritized files, landmark, the rest, then the TOC (GNU tar, gzip)', async () => {
    const dir = await makeTempDir('estargz', cleanup);
    layer = await writeEstargzLayer(dir, {
      prioritized: [
        ['bin/app', 'app code\n'.repeat(20_000)],
        ['etc/app.conf', 'x=1\n'],
        ['lib/libbig.so', { randomBytes: 700 * KiB, seed: 1 }],
      ],
      rest: [
        ['data/bulk.bin', { randomBytes: 900 * KiB, seed: 2 }],
        ['data/empty', ''],
      ],
      chunkSize: 256 * KiB,
    });
    blob = await readFile(layer.path);
    assert.equal(`sha256:${createHash('sha256').update(blob).digest('hex')}`, layer.digest);
    const { stdout } = await execFileP('tar', ['-tzf', layer.path]);
    assert.deepEqual(stdout.trim().split('\n'), [
      'bin/',
      'bin/app',
      'etc/',
      'etc/app.conf',
      'lib/',
      'lib/libbig.so',
      '.prefetch.landmark',
      'data/',
      'data/bulk.bin',
      'data/empty',
      'stargz.index.json',
    ]);
    await execFileP('gzip', ['-t', layer.path]);
    const tar = await execFileP('sh', ['-c', `zcat '${layer.path}' | sha256sum`]);
    assert.equal(`sha256:${tar.stdout.split(' ')[0]}`, layer.diffId, 'diff_id is the sha256 of the tar');
    const { stdout: extracted } = await execFileP('sh', [
      '-c',
      `tar -xzOf '${layer.path}' lib/libbig.so | sha256sum`,
    ]);
    const reg = layer.toc.entries.find((e) => e.name === 'lib/libbig.so');
    assert.equal(`sha256:${extracted.split(' ')[0]}`, reg?.digest, 'file digest in the TOC matches tar');
  });

  it('probe finds footer, TOC and prefetch region; the region verifies chunk by chunk', async () => {
    const layout = await layoutOf(layer, blob);
    assert.equal(layout.tocOffset, layer.tocOffset);
    assert.equal(layout.footerSize, 51);
    assert.equal(layout.tocDigest, layer.tocDigest);
    assert.equal(layout.tocVerified, true);
    assert.equal(layout.landmark, 'prefetch');
    assert.equal(layout.prefetchEnd, layer.landmarkOffset);
    assert.ok(layout.prefetchEnd > 700 * KiB && layout.prefetchEnd < layout.tocOffset);
    // bin/app (1 chunk; 180 000 bytes), etc/app.conf, lib/libbig.so in 3 chunks of ≤ 256 KiB.
    assert.deepEqual(
      layout.prefetchChunks.map((c) => [c.name, c.length]),
      [
        ['bin/app', 180_000],
        ['etc/app.conf', 4],
        ['lib/libbig.so', 256 * KiB],
        ['lib/libbig.so', 256 * KiB],
        ['lib/libbig.so', 700 * KiB - 512 * KiB],
      ],
    );
    assert.deepEqual(layout.startupRanges, [
      { start: 0, end: layer.landmarkOffset },
      { start: layer.tocOffset, end: layer.size },
    ]);
    assert.deepEqual(await verifyStartupRegion(layout, readerOf(blob)), { ok: true });
  });

  it('catches a flipped byte in a prefetched file and in the TOC bytes', async () => {
    const layout = await layoutOf(layer, blob);
    const c = layout.prefetchChunks[2]!;
    const bad = Buffer.from(blob);
    // A stored (level 0) member: byte 100 of the member is payload, so deflate and gzip framing stay valid.
    bad[c.memberStart + 100] = (bad[c.memberStart + 100] as number) ^ 0x01;
    const r = await verifyStartupRegion(layout, readerOf(bad));
    assert.equal(r.ok, false);
    assert.match((r as { reason: string }).reason, /lib\/libbig\.so|incorrect data check/);

    const badToc = Buffer.from(blob);
    badToc[layer.tocOffset + 20] = (badToc[layer.tocOffset + 20] as number) ^ 0x01;
    const t = await verifyStartupRegion(layout, readerOf(badToc));
    assert.deepEqual(t, { ok: false, reason: 'TOC bytes on disk differ from the verified TOC' });
  });

  it('handles a TOC whose digest does not match the annotation as a plain layer', async () => {
    const dir = await makeTempDir('estargz', cleanup);
    const tampered = await writeEstargzLayer(dir, {
      prioritized: [['bin/app', 'code\n']],
      rest: [['data/x', 'x']],
      tamper: {
        tocAfterAnnotation: (toc) => {
          const e = toc.entries.find((x) => x.name === 'bin/app');
          if (e) e.chunkDigest = `sha256:${'0'.repeat(64)}`;
        },
      },
    });
    const p = await probeEstargz(descriptorOf(tampered), readerOf(await readFile(tampered.path)));
    assert.equal(p.kind, 'plain');
    assert.equal((p as { reason: string }).reason, 'toc-digest-mismatch');
  });

  it('refuses a consistent but lying TOC at verification (chunk digest wrong)', async () => {
    const dir = await makeTempDir('estargz', cleanup);
    const lying = await writeEstargzLayer(dir, {
      prioritized: [['bin/app', 'code\n']],
      rest: [['data/x', 'x']],
      tamper: {
        toc: (toc) => {
          const e = toc.entries.find((x) => x.name === 'bin/app');
          if (e) e.chunkDigest = `sha256:${'1'.repeat(64)}`;
        },
      },
    });
    const b = await readFile(lying.path);
    const layout = await layoutOf(lying, b);
    const r = await verifyStartupRegion(layout, readerOf(b));
    assert.equal(r.ok, false);
    assert.match((r as { reason: string }).reason, /bin\/app: chunk hashes to/);
  });

  it('without annotation: plain unless probing is asked for, and then never verifiable', async () => {
    const d = descriptorOf(layer, null);
    assert.deepEqual(await probeEstargz(d, readerOf(blob)), { kind: 'plain', reason: 'no-annotation' });
    const p = await probeEstargz(d, readerOf(blob), { probeUnannotated: true });
    assert.equal(p.kind, 'estargz');
    const layout = (p as { layout: EstargzLayout }).layout;
    assert.equal(layout.tocVerified, false);
    assert.equal(layout.prefetchEnd, layer.landmarkOffset, 'the TOC still orders the download');
    const r = await verifyStartupRegion(layout, readerOf(blob));
    assert.deepEqual(r, { ok: false, reason: 'TOC not verified by an annotation' });
  });

  it('a layer without prioritized files has a no-prefetch landmark and a TOC-only startup region', async () => {
    const dir = await makeTempDir('estargz', cleanup);
    const l = await writeEstargzLayer(dir, {
      rest: [
        ['a/b', 'b'],
        ['a/c', { randomBytes: 10 * KiB, seed: 3 }],
      ],
    });
    const b = await readFile(l.path);
    const layout = await layoutOf(l, b);
    assert.equal(layout.landmark, 'no-prefetch');
    assert.equal(layout.prefetchEnd, 0);
    assert.deepEqual(layout.prefetchChunks, []);
    assert.deepEqual(layout.startupRanges, [{ start: l.tocOffset, end: l.size }]);
    assert.deepEqual(await verifyStartupRegion(layout, readerOf(b)), { ok: true });
  });

  it('plain gzip layers and non-gzip media types are plain', async () => {
    const gz = gzipSync(randomBytes(8 * KiB));
    const d = {
      digest: `sha256:${createHash('sha256').update(gz).digest('hex')}` as Digest,
      size: gz.length,
      mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
      annotations: { [ESTARGZ.tocDigestAnnotation]: layer.tocDigest },
    };
    assert.deepEqual(await probeEstargz(d, readerOf(gz)), { kind: 'plain', reason: 'no-footer' });
    assert.deepEqual(
      await probeEstargz({ ...d, mediaType: 'application/vnd.oci.image.layer.v1.tar' }, readerOf(gz)),
      { kind: 'plain', reason: 'not-gzip' },
    );
  });
});

describe('eStargz footer', () => {
  it('parses the 51-byte eStargz footer and the 47-byte legacy stargz footer', () => {
    assert.deepEqual(parseFooter(estargzFooter(0x1234_5678_9a)), {
      tocOffset: 0x1234_5678_9a,
      footerSize: 51,
    });
    // Legacy: the same gzip member with the Extra field holding only "%016xSTARGZ".
    const legacy = Buffer.alloc(47);
    legacy.set([0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff]);
    legacy.writeUInt16LE(22, 10);
    legacy.write(`${(4242).toString(16).padStart(16, '0')}STARGZ`, 12, 'latin1');
    legacy.set([0x01, 0x00, 0x00, 0xff, 0xff], 34);
    assert.deepEqual(parseFooter(Buffer.concat([Buffer.alloc(100, 9), legacy])), {
      tocOffset: 4242,
      footerSize: 47,
    });
  });

  it('rejects look-alikes: wrong magic, wrong subfield id, non-hex offset, non-empty member', () => {
    const good = estargzFooter(100);
    const variants: [string, (b: Buffer) => void][] = [
      ['magic', (b) => (b[0] = 0)],
      ['subfield id', (b) => (b[12] = 0x41)],
      ['hex', (b) => (b[20] = 0x7a)],
      ['magic string', (b) => b.write('STARGY', 32, 'latin1')],
      ['isize', (b) => (b[50] = 1)],
    ];
    for (const [what, edit] of variants) {
      const b = Buffer.from(good);
      edit(b);
      assert.equal(parseFooter(b), undefined, what);
    }
  });

  it('the footer the harness writes decompresses as an empty gzip member (zcat)', async () => {
    const dir = await makeTempDir('footer', cleanup);
    const path = `${dir}/f.gz`;
    await writeFile(path, estargzFooter(123));
    const { stdout } = await execFileP('sh', ['-c', `zcat '${path}' | wc -c`]);
    assert.equal(stdout.trim(), '0');
  });
});
