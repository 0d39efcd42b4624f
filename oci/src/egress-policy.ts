/**
 * Where kube-prewarm may send requests. One policy, used by every component that talks to
 * registries: the agent's prewarm fetches, its node-local mirror (upstream misses), and the
 * operator's resolver. The registry client (oci/src/client.ts) applies it at three points:
 *
 * 1. **Registry** (`assertRegistry`): before any request, the registry named by a reference,
 *    a job or a mirror's `?ns=` must be in the allowed list. An entry is a host (`host`,
 *    `host:port`, `[v6]:port`; without a port it matches every port of that host) or
 *    `_default`, which stands for "any public registry": a DNS name, or an IP address that is
 *    not loopback, private, link-local, metadata, multicast or otherwise special. Hosts in
 *    those ranges are reached only when listed explicitly.
 * 2. **Follow** (`assertFollow`): a redirect or a bearer token realm is followed only to
 *    http(s); manifest redirects never leave the registry's host; blob redirects and realms
 *    may go to other hosts, but not to a special address unless it is the registry's own
 *    host; an https registry is never left for plain HTTP unless the target is configured
 *    for it.
 * 3. **Connect** (`connector`): the undici connector resolves DNS names itself and refuses
 *    the connection when an address is special, unless the host name is listed explicitly;
 *    the address that was checked is the address connected to (no second lookup to race).
 *    So a name that points at 127.0.0.1 or 169.254.169.254 is refused like the address.
 *
 * Hosts are compared in the form the WHATWG URL parser gives them (what undici connects
 * to): lower case, IPv4 in dotted-quad form whatever it was written as (`2130706433`,
 * `0177.0.0.1`, `0x7f.1`, `127.1` are all 127.0.0.1), IPv6 compressed (`::ffff:127.0.0.1`
 * is `::ffff:7f00:1` and counts as the IPv4 address it maps), one trailing dot dropped.
 *
 * Refusals are PrewarmErrors `PW_ERR_EGRESS_DENIED`, never retryable, with
 * `detail: { reason, host, permanent: true }`.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import { buildConnector } from 'undici';
import { ErrorCodes, PrewarmError } from './errors.js';
import { registryEndpointHost } from './reference.js';

/** The allow-list entry meaning "any public registry". */
export const PUBLIC_REGISTRIES = '_default';

/** What an address is, for egress purposes. Only `public` is reachable without an explicit entry. */
export type AddressClass =
  | 'public'
  | 'loopback'
  | 'private'
  | 'link-local'
  | 'metadata'
  | 'unspecified'
  | 'multicast'
  | 'reserved';

/** Which rule refused a request (`detail.reason` of PW_ERR_EGRESS_DENIED). */
export type EgressDenial =
  | 'registry-not-allowed'
  | 'address-not-allowed'
  | 'redirect-not-allowed'
  | 'plain-http-not-allowed';

/** What the request being checked is, for `assertFollow`. */
export type FollowKind = 'manifest-redirect' | 'blob-redirect' | 'token-realm';

/** A host in canonical form: `hostname` as the URL parser gives it (IPv6 in brackets), `port` as written. */
export interface HostPort {
  hostname: string;
  port: number | undefined;
}

/** Resolves a host name to every address it has (default: the system resolver, `dns.lookup`). */
export type Resolve = (hostname: string) => Promise<LookupAddress[]>;

export interface EgressPolicyOptions {
  /**
   * Registries that may be contacted: hosts (`registry.example.com`, `10.0.0.5:5000`,
   * `[fd00::5]:5000`; without a port every port of the host matches) and `_default` (any
   * public registry). `'any'`: no restriction at all (the CLI's default, for a user running
   * it with their own reach); never the default of a component.
   */
  allowedRegistries: readonly string[] | 'any';
  /**
   * Registry hosts spoken to over plain HTTP. A loopback registry listed explicitly in
   * `allowedRegistries` is spoken to over HTTP too (TLS on loopback buys nothing).
   * Default none.
   */
  plainHttp?: readonly string[];
  /** With `allowedRegistries: 'any'`: the plain-HTTP decision. Default: loopback hosts. */
  plainHttpFn?: (host: string) => boolean;
  /** DNS resolution for the connect-time check. Default `dns.lookup` with `all: true`. */
  resolve?: Resolve;
}

const HOST_CHARS = /^[A-Za-z0-9._\-:[\]]+$/;

/**
 * Parses `host`, `host:port`, `[v6]`, `[v6]:port` into canonical form; undefined when it is
 * not a host (paths, user info, percent escapes, bare IPv6, ports outside 1-65535).
 */
export function parseHost(input: string): HostPort | undefined {
  if (input.length === 0 || input.length > 300 || !HOST_CHARS.test(input)) return undefined;
  let hostPart = input;
  let port: number | undefined;
  const m = /^(.*):(\d{1,5})$/.exec(input);
  if (m && (m[1]!.startsWith('[') ? m[1]!.endsWith(']') : !m[1]!.includes(':'))) {
    hostPart = m[1]!;
    port = Number(m[2]);
    if (port < 1 || port > 65535) return undefined;
  }
  if (!hostPart.startsWith('[') && hostPart.includes(':')) return undefined;
  let url: URL;
  try {
    url = new URL(`http://${hostPart}/`);
  } catch {
    return undefined;
  }
  let hostname = url.hostname;
  if (hostname.endsWith('.')) hostname = hostname.slice(0, -1);
  if (hostname === '' || hostname.endsWith('.')) return undefined;
  return { hostname, port };
}

/** `hostname[:port]` of a canonical host. */
export function formatHost(h: HostPort): string {
  return h.port === undefined ? h.hostname : `${h.hostname}:${h.port}`;
}

// ---- address classification ----

type V4Range = [base: number, prefix: number, cls: AddressClass];

const ip4 = (s: string): number => s.split('.').reduce((n, p) => n * 256 + Number(p), 0);

/** Well-known cloud metadata and platform endpoints (checked before the ranges they sit in). */
const V4_METADATA = new Set(
  [
    '169.254.169.254', // AWS, GCP, Azure, OpenStack, DigitalOcean… instance metadata
    '169.254.170.2', // AWS ECS task metadata / credentials
    '100.100.100.200', // Alibaba Cloud metadata
    '192.0.0.192', // Oracle Cloud metadata
    '168.63.129.16', // Azure WireServer (platform endpoint inside a public range)
  ].map(ip4),
);

const V4_RANGES: V4Range[] = [
  ['0.0.0.0', 8, 'unspecified'],
  ['10.0.0.0', 8, 'private'],
  ['100.64.0.0', 10, 'private'], // shared address space (CGNAT), used by some cluster networks
  ['127.0.0.0', 8, 'loopback'],
  ['169.254.0.0', 16, 'link-local'],
  ['172.16.0.0', 12, 'private'],
  ['192.0.0.0', 24, 'reserved'],
  ['192.0.2.0', 24, 'reserved'],
  ['192.88.99.0', 24, 'reserved'],
  ['192.168.0.0', 16, 'private'],
  ['198.18.0.0', 15, 'reserved'],
  ['198.51.100.0', 24, 'reserved'],
  ['203.0.113.0', 24, 'reserved'],
  ['224.0.0.0', 4, 'multicast'],
  ['240.0.0.0', 4, 'reserved'], // includes 255.255.255.255
].map(([b, p, c]) => [ip4(b as string), p as number, c as AddressClass]);

function classifyV4(n: number): AddressClass {
  if (V4_METADATA.has(n)) return 'metadata';
  for (const [base, prefix, cls] of V4_RANGES) {
    const size = 2 ** (32 - prefix);
    if (n >= base && n < base + size) return cls;
  }
  return 'public';
}

/** The 8 groups of an IPv6 address (zone id dropped, embedded dotted quad accepted); undefined if malformed. */
function parseV6(s: string): number[] | undefined {
  let addr = s.startsWith('[') && s.endsWith(']') ? s.slice(1, -1) : s;
  const zone = addr.indexOf('%');
  if (zone >= 0) addr = addr.slice(0, zone);
  if (isIP(addr) !== 6) return undefined;
  let tail: number[] = [];
  const lastColon = addr.lastIndexOf(':');
  if (addr.slice(lastColon + 1).includes('.')) {
    const v4 = ip4(addr.slice(lastColon + 1));
    tail = [Math.floor(v4 / 65536), v4 % 65536];
    addr = `${addr.slice(0, lastColon + 1)}0:0`;
  }
  const [head = '', rest] = addr.split('::');
  const parse = (part: string) => (part === '' ? [] : part.split(':').map((g) => Number.parseInt(g, 16)));
  const a = parse(head);
  const b = rest === undefined ? [] : parse(rest);
  const groups = rest === undefined ? a : [...a, ...new Array(8 - a.length - b.length).fill(0), ...b];
  if (groups.length !== 8) return undefined;
  if (tail.length === 2) {
    groups[6] = tail[0]!;
    groups[7] = tail[1]!;
  }
  return groups;
}

function classifyV6(g: number[]): AddressClass {
  const [g0 = 0, g1 = 0, g2 = 0, g3 = 0, g4 = 0, g5 = 0, g6 = 0, g7 = 0] = g;
  const embedded = (hi: number, lo: number) => classifyV4(hi * 65536 + lo);
  const zeroTo = (n: number) => g.slice(0, n).every((x) => x === 0);
  if (zeroTo(8)) return 'unspecified';
  if (zeroTo(7) && g7 === 1) return 'loopback';
  if (zeroTo(5) && g5 === 0xffff) return embedded(g6, g7); // IPv4-mapped
  if (zeroTo(6)) return 'reserved'; // IPv4-compatible (deprecated)
  if (g0 === 0x64 && g1 === 0xff9b && g2 === 0 && g3 === 0 && g4 === 0 && g5 === 0) return embedded(g6, g7); // NAT64
  if (g0 === 0x64 && g1 === 0xff9b && g2 === 1) return 'private'; // local-use NAT64
  if (
    g0 === 0xfd00 &&
    g1 === 0x0ec2 &&
    g2 === 0 &&
    g3 === 0 &&
    g4 === 0 &&
    g5 === 0 &&
    g6 === 0 &&
    g7 === 0x254
  )
    return 'metadata'; // AWS instance metadata over IPv6
  if (g0 === 0x100 && g1 === 0 && g2 === 0 && g3 === 0) return 'reserved'; // discard-only
  if (g0 === 0x2001 && g1 === 0xdb8) return 'reserved'; // documentation
  if (g0 === 0x2001 && g1 === 0) return 'reserved'; // Teredo
  if (g0 === 0x2002) return embedded(g1, g2); // 6to4 carries an IPv4 address
  if ((g0 & 0xfe00) === 0xfc00) return 'private'; // unique local fc00::/7 (fd00::/8 and fc00::/8)
  if ((g0 & 0xffc0) === 0xfe80) return 'link-local';
  if ((g0 & 0xffc0) === 0xfec0) return 'private'; // site-local (deprecated)
  if ((g0 & 0xff00) === 0xff00) return 'multicast';
  if ((g0 & 0xe000) === 0x2000) return 'public'; // global unicast 2000::/3
  return 'reserved';
}

/**
 * Classifies an IP address as DNS returns it or as written (IPv4 dotted quad, IPv6 with or
 * without brackets). Anything that is not an IP address is `reserved` (never reachable).
 */
export function classifyAddress(address: string): AddressClass {
  const v6 = parseV6(address);
  if (v6) return classifyV6(v6);
  if (isIP(address) === 4) return classifyV4(ip4(address));
  return 'reserved';
}

/**
 * Classifies a canonical host name (as `parseHost` returns it): an IP literal by its
 * address, `localhost` and `*.localhost` as loopback (RFC 6761: they never leave the host),
 * anything else `name` (its addresses are checked when connecting).
 */
export function classifyHost(hostname: string): AddressClass | 'name' {
  if (hostname.startsWith('[')) return classifyAddress(hostname);
  if (isIP(hostname) === 4) return classifyAddress(hostname);
  if (hostname === 'localhost' || hostname.endsWith('.localhost')) return 'loopback';
  return 'name';
}

function denied(reason: EgressDenial, host: string, why: string): PrewarmError {
  return new PrewarmError(ErrorCodes.EGRESS_DENIED, `egress to ${host} refused: ${why}`, {
    status: 403,
    retryable: false,
    detail: { reason, host, permanent: true },
  });
}

function systemResolve(hostname: string): Promise<LookupAddress[]> {
  return new Promise((resolve, reject) =>
    dnsLookup(hostname, { all: true }, (err, addresses) => (err ? reject(err) : resolve(addresses))),
  );
}

/** The egress policy; see the module comment. Immutable; share one per process. */
export class EgressPolicy {
  /** The allowed list as configured (for logs); `'any'` when unrestricted. */
  readonly allowedRegistries: readonly string[] | 'any';
  readonly #any: boolean;
  readonly #publicDefault: boolean;
  readonly #explicit: HostPort[];
  /** Host names (any port) that may resolve to, or be, special addresses. */
  readonly #explicitHostnames: Set<string>;
  readonly #plain: HostPort[];
  readonly #plainFn: ((host: string) => boolean) | undefined;
  readonly #resolve: Resolve;

  /** Throws PW_ERR_INVALID_CONFIG naming every entry that is not a host or `_default`. */
  constructor(opts: EgressPolicyOptions) {
    this.allowedRegistries = opts.allowedRegistries;
    this.#any = opts.allowedRegistries === 'any';
    this.#resolve = opts.resolve ?? systemResolve;
    this.#plainFn = opts.plainHttpFn;
    const bad: string[] = [];
    const hosts = (list: readonly string[]) =>
      list.flatMap((e) => {
        const h = parseHost(e);
        if (!h) bad.push(e);
        return h ? [h] : [];
      });
    const entries = this.#any ? [] : (opts.allowedRegistries as readonly string[]);
    this.#publicDefault = entries.includes(PUBLIC_REGISTRIES);
    this.#explicit = hosts(entries.filter((e) => e !== PUBLIC_REGISTRIES));
    this.#plain = hosts(opts.plainHttp ?? []);
    if (bad.length > 0)
      throw new PrewarmError(
        ErrorCodes.INVALID_CONFIG,
        `not a registry host: ${bad.map((b) => JSON.stringify(b)).join(', ')} (want host, host:port, [v6]:port or ${PUBLIC_REGISTRIES})`,
        { detail: { invalid: bad } },
      );
    this.#explicitHostnames = new Set<string>();
    for (const h of this.#explicit) {
      this.#explicitHostnames.add(h.hostname);
      const endpoint = parseHost(registryEndpointHost(h.hostname));
      if (endpoint) this.#explicitHostnames.add(endpoint.hostname);
    }
  }

  /** No restriction on registries or addresses; the follow rules still apply. */
  static permissive(plainHttpFn?: (host: string) => boolean): EgressPolicy {
    return new EgressPolicy({ allowedRegistries: 'any', ...(plainHttpFn ? { plainHttpFn } : {}) });
  }

  /** True when this policy restricts nothing (`allowedRegistries: 'any'`). */
  get unrestricted(): boolean {
    return this.#any;
  }

  #explicitlyListed(h: HostPort): boolean {
    return this.#explicit.some(
      (e) => e.hostname === h.hostname && (e.port === undefined || e.port === h.port),
    );
  }

  /** Why `host` may not be contacted as a registry, or undefined when it may. */
  #registryRefusal(host: string): string | undefined {
    if (this.#any) return undefined;
    const h = parseHost(host);
    if (!h) return 'not a registry host';
    if (this.#explicitlyListed(h)) return undefined;
    const cls = classifyHost(h.hostname);
    if (this.#publicDefault) {
      if (cls === 'name' || cls === 'public') return undefined;
      return `${cls} address; list it explicitly in the allowed registries to reach it`;
    }
    return 'not in the allowed registries';
  }

  /** Whether the registry `host` (a reference's registry, a job's, a mirror's `?ns=`) may be contacted. */
  allowsRegistry(host: string): boolean {
    return this.#registryRefusal(host) === undefined;
  }

  /** Throws PW_ERR_EGRESS_DENIED (`registry-not-allowed`) unless `allowsRegistry(host)`. */
  assertRegistry(host: string): void {
    const why = this.#registryRefusal(host);
    if (why !== undefined) throw denied('registry-not-allowed', host.slice(0, 300), why);
  }

  /**
   * Whether to speak plain HTTP to `host` (an endpoint host with port). Unrestricted: the
   * configured function, else loopback hosts. Otherwise: hosts in `plainHttp`, and loopback
   * hosts listed explicitly in the allowed registries.
   */
  plainHttp(host: string): boolean {
    const h = parseHost(host);
    if (!h) return false;
    if (this.#any) return this.#plainFn ? this.#plainFn(host) : classifyHost(h.hostname) === 'loopback';
    if (this.#plain.some((p) => p.hostname === h.hostname && (p.port === undefined || p.port === h.port)))
      return true;
    return classifyHost(h.hostname) === 'loopback' && this.#explicitlyListed(h);
  }

  /**
   * Checks a URL the client is about to follow on behalf of the registry at `registryUrl`
   * (its base URL): a redirect (`manifest-redirect`, `blob-redirect`) or a bearer token
   * realm (`token-realm`). Throws PW_ERR_EGRESS_DENIED:
   * - `redirect-not-allowed`: not http(s), user info in the URL, a manifest redirect to
   *   another host, or a special address (loopback, private, link-local, metadata…) that is
   *   not the registry's own host;
   * - `plain-http-not-allowed`: from an https registry to plain HTTP on a host not
   *   configured for it.
   * Host names are checked again, by their addresses, when connecting (`connector`).
   */
  assertFollow(registryUrl: URL, target: URL, kind: FollowKind): void {
    const shown = `${target.protocol}//${target.host}`;
    if (target.protocol !== 'http:' && target.protocol !== 'https:')
      throw denied('redirect-not-allowed', shown.slice(0, 300), `${kind} to a non-http(s) URL`);
    if (target.username !== '' || target.password !== '')
      throw denied('redirect-not-allowed', target.host, `${kind} carries user info`);
    const to = parseHost(target.host);
    const from = parseHost(registryUrl.host);
    if (!to || !from) throw denied('redirect-not-allowed', target.host, `${kind} to an invalid host`);
    const sameHost = to.hostname === from.hostname;
    if (kind === 'manifest-redirect' && !sameHost)
      throw denied('redirect-not-allowed', target.host, 'manifest redirects never leave the registry host');
    if (target.protocol === 'http:' && registryUrl.protocol === 'https:' && !this.plainHttp(target.host))
      throw denied('plain-http-not-allowed', target.host, `${kind} from https to plain HTTP`);
    const cls = classifyHost(to.hostname);
    if (!sameHost && cls !== 'name' && cls !== 'public')
      throw denied('redirect-not-allowed', target.host, `${kind} to a ${cls} address`);
  }

  /**
   * Whether a connection to `hostname` may go to `address`: always for explicitly listed
   * host names (and when unrestricted), else only public addresses.
   */
  allowsAddress(hostname: string, address: string): boolean {
    if (this.#any) return true;
    const h = parseHost(isIP(hostname) === 6 ? `[${hostname}]` : hostname);
    if (h && this.#explicitHostnames.has(h.hostname)) return true;
    return classifyAddress(address) === 'public';
  }

  /**
   * An undici `connect` function (for `new Agent({ connect })`) enforcing the address rule
   * on every new connection: IP literals are checked directly; names are resolved here and
   * every address must pass (one special address refuses the name: a rebinding-style
   * answer mixing public and internal addresses gets nothing), then the connection goes to
   * an address that was checked. `opts` are undici's connector options (timeout…).
   */
  connector(opts: buildConnector.BuildOptions = {}): buildConnector.connector {
    if (this.#any) return buildConnector(opts);
    const lookup: LookupFunction = (hostname, options, callback) => {
      const h = parseHost(hostname);
      const explicit = h !== undefined && this.#explicitHostnames.has(h.hostname);
      this.#resolve(hostname).then(
        (all) => {
          const family = options.family === 4 || options.family === 6 ? options.family : 0;
          const usable = all.filter((a) => family === 0 || a.family === family);
          const bad = explicit ? undefined : usable.find((a) => classifyAddress(a.address) !== 'public');
          if (bad) {
            const err = denied(
              'address-not-allowed',
              hostname,
              `resolves to ${bad.address} (${classifyAddress(bad.address)})`,
            );
            callback(err as unknown as NodeJS.ErrnoException, '', 0);
            return;
          }
          if (usable.length === 0) {
            const err = Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' });
            callback(err, '', 0);
            return;
          }
          if (options.all) (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, usable);
          else callback(null, usable[0]!.address, usable[0]!.family);
        },
        (err: NodeJS.ErrnoException) => callback(err, '', 0),
      );
    };
    const inner = buildConnector({ ...opts, lookup } as buildConnector.BuildOptions);
    return (options, callback) => {
      const { hostname } = options;
      if (isIP(hostname) !== 0 && !this.allowsAddress(hostname, hostname)) {
        const err = denied('address-not-allowed', hostname, `${classifyAddress(hostname)} address`);
        queueMicrotask(() => callback(err, null));
        return;
      }
      inner(options, callback);
    };
  }
}
