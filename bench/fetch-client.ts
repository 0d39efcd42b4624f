/**
 * One measured blob fetch, run by bench/fetch.ts as a child process (inside the client
 * network namespace for the shaped profiles):
 *
 *   node --import tsx bench/fetch-client.ts <undici|fetcher|floor> --host <ip:port> --repo <name>
 *        --digest <sha256:…> --size <bytes> --out <dir> [--time-limit <s>]
 *
 * - `undici`: the single-stream baseline: one GET of the whole blob with undici, streamed
 *   to a file through a sha256 hash, fsynced, digest checked.
 * - `fetcher`: the project's fetcher through agent/src/fetch/bench-entry.ts (the parent
 *   checks the stored blob's digest afterwards, outside this process's CPU time).
 * - `floor`: the least any Node process can do to fetch and verify the blob: one raw TCP
 *   socket, a hand-made GET, sha256 of every body byte, nothing parsed beyond the header
 *   end and nothing stored. Not a way to fetch (no HTTP client, no store): it measures
 *   the CPU cost of receive + hash on this machine, the floor under every real client.
 *
 * Prints one JSON line (`ClientResult`). Wall and CPU time cover the fetch only, not Node's
 * start-up or module loading (the parent also records the whole process's rusage).
 */
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Agent, request } from 'undici';

export interface ClientResult {
  method: string;
  /** Set when the method could not run here; nothing else is meaningful then. */
  skipped?: string;
  bytes: number;
  /** False when the time limit stopped the fetch before the end of the blob. */
  complete: boolean;
  /** Whether the bytes hashed to the digest (undefined: not checked by this client). */
  digestOk?: boolean;
  wallS: number;
  userS: number;
  sysS: number;
  error?: string;
}

interface ClientArgs {
  host: string;
  repo: string;
  digest: string;
  size: number;
  out: string;
  timeLimitS: number | undefined;
}

/**
 * The contract of agent/src/fetch/bench-entry.ts (owned by the fetcher's author), taken from
 * the module so that tsc flags drift; loaded at run time with a dynamic import.
 */
type FetchBlobForBench = typeof import('../agent/src/fetch/bench-entry.js').fetchBlobForBench;

const BENCH_ENTRY = fileURLToPath(new URL('../agent/src/fetch/bench-entry.ts', import.meta.url));

async function singleStream(
  args: ClientArgs,
): Promise<Pick<ClientResult, 'bytes' | 'complete' | 'digestOk'>> {
  const dispatcher = new Agent({ connections: 1 });
  const hash = createHash('sha256');
  let bytes = 0;
  const signal = args.timeLimitS ? AbortSignal.timeout(args.timeLimitS * 1000) : undefined;
  try {
    const res = await request(`http://${args.host}/v2/${args.repo}/blobs/${args.digest}`, {
      dispatcher,
      signal,
    });
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new Error(`GET blob: HTTP ${res.statusCode}`);
    }
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        bytes += chunk.length;
        cb(null, chunk);
      },
    });
    // flush: fsync before close, like a store commit (and like skopeo's dir: destination).
    await pipeline(res.body, tap, createWriteStream(join(args.out, 'blob'), { flush: true }));
  } catch (err) {
    if (signal?.aborted) return { bytes, complete: false };
    throw err;
  } finally {
    await dispatcher.close();
  }
  const digestOk = `sha256:${hash.digest('hex')}` === args.digest;
  return { bytes, complete: bytes === args.size, digestOk };
}

/** See `floor` in the header comment. Plain HTTP to `args.host` only. */
function rawSocketHash(args: ClientArgs): Promise<Pick<ClientResult, 'bytes' | 'complete' | 'digestOk'>> {
  const [host, port] = [args.host.slice(0, args.host.lastIndexOf(':')), Number(args.host.split(':').pop())];
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    let head: Buffer | undefined = Buffer.alloc(0);
    const socket = connect({ host, port }, () => {
      socket.write(
        `GET /v2/${args.repo}/blobs/${args.digest} HTTP/1.1\r\nHost: ${args.host}\r\nConnection: close\r\n\r\n`,
      );
    });
    const finish = () => {
      socket.destroy();
      const complete = bytes === args.size;
      resolve({ bytes, complete, digestOk: complete && `sha256:${hash.digest('hex')}` === args.digest });
    };
    socket.on('data', (chunk: Buffer) => {
      let body = chunk;
      if (head !== undefined) {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        if (!head.subarray(0, 12).toString('latin1').startsWith('HTTP/1.1 200')) {
          reject(new Error(`GET blob: ${head.subarray(0, head.indexOf('\r\n')).toString('latin1')}`));
          socket.destroy();
          return;
        }
        body = head.subarray(end + 4);
        head = undefined;
      }
      hash.update(body);
      bytes += body.byteLength;
      if (bytes >= args.size) finish();
    });
    socket.on('error', reject);
    socket.on('close', () => {
      if (bytes < args.size) finish();
    });
  });
}

/** The project's fetcher, or why it cannot be used (yet). */
async function loadFetcher(): Promise<FetchBlobForBench | string> {
  if (!existsSync(BENCH_ENTRY)) return `${BENCH_ENTRY} does not exist yet`;
  const mod = (await import(BENCH_ENTRY)) as { fetchBlobForBench?: unknown };
  if (typeof mod.fetchBlobForBench !== 'function') return `${BENCH_ENTRY} exports no fetchBlobForBench`;
  return mod.fetchBlobForBench as FetchBlobForBench;
}

function measureStart(): { t: bigint; cpu: NodeJS.ResourceUsage } {
  return { t: process.hrtime.bigint(), cpu: process.resourceUsage() };
}

async function main(): Promise<void> {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: {
      host: { type: 'string' },
      repo: { type: 'string' },
      digest: { type: 'string' },
      size: { type: 'string' },
      out: { type: 'string' },
      'time-limit': { type: 'string' },
    },
  });
  const method = positionals[0];
  const need = (k: 'host' | 'repo' | 'digest' | 'size' | 'out') => {
    const v = values[k];
    if (v === undefined) throw new Error(`missing --${k}`);
    return v;
  };
  const args: ClientArgs = {
    host: need('host'),
    repo: need('repo'),
    digest: need('digest'),
    size: Number(need('size')),
    out: need('out'),
    timeLimitS: values['time-limit'] === undefined ? undefined : Number(values['time-limit']),
  };
  await mkdir(args.out, { recursive: true });

  const result: ClientResult = {
    method: method ?? '',
    bytes: 0,
    complete: false,
    wallS: 0,
    userS: 0,
    sysS: 0,
  };
  let start = measureStart();
  try {
    if (method === 'undici') {
      Object.assign(result, await singleStream(args));
    } else if (method === 'floor') {
      Object.assign(result, await rawSocketHash(args));
    } else if (method === 'fetcher') {
      // Loaded before the measured span starts: tsx compiles the module on import.
      const fetchBlob = await loadFetcher();
      if (typeof fetchBlob === 'string') {
        result.skipped = fetchBlob;
      } else {
        start = measureStart();
        const { bytes } = await fetchBlob({
          registryHost: args.host,
          repository: args.repo,
          digest: args.digest,
          size: args.size,
          storeDir: args.out,
          plainHttp: true,
        });
        Object.assign(result, { bytes, complete: bytes === args.size });
      }
    } else {
      throw new Error(`unknown method ${JSON.stringify(method)} (undici | fetcher | floor)`);
    }
  } catch (err) {
    result.error = err instanceof Error ? `${err.message}${errCode(err)}` : String(err);
  }
  const end = measureStart();
  result.wallS = Number(end.t - start.t) / 1e9;
  result.userS = (end.cpu.userCPUTime - start.cpu.userCPUTime) / 1e6;
  result.sysS = (end.cpu.systemCPUTime - start.cpu.systemCPUTime) / 1e6;
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exitCode = result.error ? 1 : 0;
}

function errCode(err: Error): string {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? ` (${code})` : '';
}

await main();
