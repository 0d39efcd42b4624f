import { ErrorCodes, PrewarmError } from './errors.js';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

const NODE_ARCH: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  arm: 'arm',
  ppc64: 'ppc64le',
  s390x: 's390x',
};

/** The platform of this process's host, in OCI terms. */
export function hostPlatform(): Platform {
  const architecture = NODE_ARCH[process.arch] ?? process.arch;
  return {
    os: process.platform === 'win32' ? 'windows' : process.platform,
    architecture,
    ...(architecture === 'arm64' ? { variant: 'v8' } : {}),
  };
}

/** Parses `os/arch[/variant]`, e.g. `linux/arm64/v8`. */
export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  const [os, architecture, variant] = parts;
  if (
    parts.length < 2 ||
    parts.length > 3 ||
    !os ||
    !architecture ||
    parts.some((p) => !/^[a-z0-9._-]+$/.test(p))
  ) {
    throw new PrewarmError(
      ErrorCodes.INVALID_CONFIG,
      `invalid platform ${JSON.stringify(s)}: want os/arch[/variant]`,
    );
  }
  return { os, architecture, ...(variant ? { variant } : {}) };
}

export function formatPlatform(p: Platform): string {
  return p.variant ? `${p.os}/${p.architecture}/${p.variant}` : `${p.os}/${p.architecture}`;
}

function normVariant(p: Platform): string | undefined {
  // arm64 images usually omit the (only) variant v8; treat them as equal.
  if (p.architecture === 'arm64' && (p.variant === undefined || p.variant === 'v8')) return 'v8';
  return p.variant;
}

/** Whether an index entry's platform serves `want`. With `strict`, the variant must match too. */
export function platformMatches(have: Platform, want: Platform, strict: boolean): boolean {
  if (have.os !== want.os || have.architecture !== want.architecture) return false;
  const hv = normVariant(have);
  const wv = normVariant(want);
  if (strict) return hv === wv;
  return wv === undefined || hv === undefined || hv === wv;
}
