/**
 * The shaped link between a "registry" and a "client" network namespace, driven through
 * scripts/netns-up.sh and scripts/netns-down.sh (the single source of truth for the
 * shaping; see their header and bench/README.md).
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Cleanup } from './cleanup.js';

const execFileP = promisify(execFile);
const SCRIPTS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts');

export type ShapedProfileName = 'P1' | 'P2';

export interface ShapedProfile {
  name: ShapedProfileName;
  /** One-line description for reports. */
  description: string;
  /** Nominal link rate (tbf rate) in bytes per second: the denominator of "of link". */
  linkBytesPerS: number;
  /** Round-trip time the NFQUEUE delay adds, in ms. */
  rttMs: number;
  /** Per-connection receive window cap in bytes, if any. */
  windowBytes?: number;
  /** Parallel curl ranges that should fill the link (TESTBED's reference measurement). */
  curlRanges: number;
  /** TESTBED's reference numbers for this profile, MB/s (1 MB = 1e6 B). */
  reference: { singleMBps?: number; rangesMBps: number };
}

export const SHAPED_PROFILES: Record<ShapedProfileName, ShapedProfile> = {
  P1: {
    name: 'P1',
    description: '1 Gbit, 50 ms RTT, 256 KiB window per connection',
    linkBytesPerS: 1e9 / 8,
    rttMs: 50,
    windowBytes: 262144,
    curlRanges: 16,
    reference: { singleMBps: 10, rangesMBps: 95 },
  },
  P2: {
    name: 'P2',
    description: '200 Mbit, 50 ms RTT, no window cap',
    linkBytesPerS: 200e6 / 8,
    rttMs: 50,
    curlRanges: 8,
    reference: { rangesMBps: 23 },
  },
};

export interface LinkOptions {
  /** Registry-side namespace. Default `kp-reg`. */
  regNs?: string;
  /** Client-side namespace. Default `kp-cli`. */
  cliNs?: string;
}

/**
 * Two namespaces joined by a veth pair: `regIp` lives in `regNs`, `cliIp` in `cliNs`, and
 * nothing else is reachable from either. `up(profile)` creates or reshapes them (idempotent);
 * `down()` removes them; `up` registers `down` in the cleanup so a failure never leaves
 * them behind.
 */
export class ShapedLink {
  readonly regNs: string;
  readonly cliNs: string;
  readonly regIp = '10.213.0.1';
  readonly cliIp = '10.213.0.2';
  private unregister: (() => void) | undefined;

  constructor(
    private readonly cleanup: Cleanup,
    opts: LinkOptions = {},
  ) {
    this.regNs = opts.regNs ?? 'kp-reg';
    this.cliNs = opts.cliNs ?? 'kp-cli';
  }

  private env(): NodeJS.ProcessEnv {
    return { ...process.env, KP_NETNS_REG: this.regNs, KP_NETNS_CLI: this.cliNs };
  }

  /** True when namespaces with our names already exist (left over, or someone else's). */
  exists(): boolean {
    return existsSync(`/run/netns/${this.regNs}`) || existsSync(`/run/netns/${this.cliNs}`);
  }

  async up(profile: ShapedProfileName | 'none'): Promise<void> {
    this.unregister ??= this.cleanup.add(`remove namespaces ${this.regNs}, ${this.cliNs}`, () =>
      this.downSync(),
    );
    await execFileP(join(SCRIPTS, 'netns-up.sh'), [profile], { env: this.env() });
  }

  async down(): Promise<void> {
    const u = this.unregister;
    this.unregister = undefined;
    if (u) u();
    else this.downSync();
  }

  private downSync(): void {
    execFileSync(join(SCRIPTS, 'netns-down.sh'), [], {
      env: this.env(),
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  }
}
