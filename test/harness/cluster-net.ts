/**
 * The test cluster's network (test/harness/cluster.ts): a bridge in this process's network
 * namespace standing in for the node subnet, and one network namespace per node joined to
 * it by a veth pair. Only addresses inside these namespaces and the bridge are used.
 *
 * ```
 *  this namespace                     node namespaces (kp<k>-node<i>)
 *  kpbr<k> 10.213.<k>.254/24 ──veth──▶  eth0 10.213.<k>.<i>/24, lo, cni0 (pods 10.<88+k>.<i>.0/24)
 *  routes: pods of node i via node i, the Service CIDR 10.<32+k>.0.0/24 via node 1
 *  (k = KP_CLUSTER_ID, default 0)
 * ```
 *
 * A node namespace has every port to itself, so each node's kubelet, agent and mirror
 * listen on the same ports as on a real node, and `127.0.0.1` inside one is that node's.
 * Deleting the namespaces and the bridge removes everything set up here (addresses,
 * routes, the iptables rules kube-proxy writes inside a node namespace).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/**
 * Which test cluster this process runs (`KP_CLUSTER_ID`, 0-9, default 0): each id has its own
 * bridge, addresses, namespaces and cgroups, so that clusters of different ids can run side
 * by side (developers working in parallel); two of the same id cannot.
 */
const ID = (() => {
  const raw = process.env.KP_CLUSTER_ID ?? '0';
  if (!/^[0-9]$/.test(raw)) throw new Error(`KP_CLUSTER_ID must be a digit 0-9, got ${JSON.stringify(raw)}`);
  return Number(raw);
})();

/** Names and addresses of the cluster network. */
export const CLUSTER_NET = {
  id: ID,
  bridge: `kpbr${ID}`,
  /** This process's address on the bridge: the registry proxy listens here. */
  hostIp: `10.213.${ID}.254`,
  nodeSubnet: `10.213.${ID}.0/24`,
  podCidr: `10.${88 + ID}.0.0/16`,
  serviceCidr: `10.${32 + ID}.0.0/24`,
  nodeIp: (i: number): string => `10.213.${ID}.${i}`,
  nodePodCidr: (i: number): string => `10.${88 + ID}.${i}.0/24`,
  netns: (i: number): string => `kp${ID}-node${i}`,
  /** The node's cgroup root, in every hierarchy. */
  cgroupRoot: (i: number): string => `/kp${ID}-node${i}`,
} as const;

async function ip(args: string[]): Promise<void> {
  try {
    await execFileP('ip', args, { timeout: 30_000 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')}: ${e.stderr?.trim() || e.message}`, { cause: err });
  }
}

async function quiet(args: string[]): Promise<void> {
  await execFileP('ip', args, { timeout: 30_000 }).catch(() => undefined);
}

/** Removes what an earlier, killed test run may have left: node namespaces and the bridge. */
export async function removeStaleClusterNet(maxNodes = 8): Promise<void> {
  for (let i = 1; i <= maxNodes; i++) {
    await quiet(['netns', 'delete', CLUSTER_NET.netns(i)]);
    // A namespace a leftover process still holds outlives its name, and its veth with it.
    await quiet(['link', 'delete', `kp${CLUSTER_NET.id}n${i}h`]);
  }
  await quiet(['link', 'delete', CLUSTER_NET.bridge]);
}

/** Creates the bridge (with this process's address on it). */
export async function createBridge(): Promise<void> {
  const { bridge, hostIp } = CLUSTER_NET;
  await ip(['link', 'add', bridge, 'type', 'bridge']);
  await ip(['addr', 'add', `${hostIp}/24`, 'dev', bridge]);
  await ip(['link', 'set', bridge, 'up']);
}

/**
 * Creates node `i`'s network namespace, plugged into the bridge, with forwarding on (its
 * pods' traffic leaves through it) and routes to the pod ranges of the nodes before it,
 * and theirs to its own. Returns the namespace's path for `nsenter --net=`.
 */
export async function createNodeNet(i: number, existing: readonly number[]): Promise<string> {
  const { bridge, netns } = CLUSTER_NET;
  const ns = netns(i);
  const hostSide = `kp${CLUSTER_NET.id}n${i}h`;
  const nodeSide = `kp${CLUSTER_NET.id}n${i}c`;
  await ip(['netns', 'add', ns]);
  await ip(['link', 'add', hostSide, 'type', 'veth', 'peer', 'name', nodeSide]);
  await ip(['link', 'set', hostSide, 'master', bridge]);
  await ip(['link', 'set', hostSide, 'up']);
  await ip(['link', 'set', nodeSide, 'netns', ns]);
  await ip(['-n', ns, 'link', 'set', nodeSide, 'name', 'eth0']);
  await ip(['-n', ns, 'addr', 'add', `${CLUSTER_NET.nodeIp(i)}/24`, 'dev', 'eth0']);
  await ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
  await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
  // Pods reach the bridge (registry) and other nodes through their node: route them.
  await execFileP('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
  // This namespace reaches pods and Services through the nodes.
  await ip(['route', 'replace', CLUSTER_NET.nodePodCidr(i), 'via', CLUSTER_NET.nodeIp(i)]);
  if (i === 1) await ip(['route', 'replace', CLUSTER_NET.serviceCidr, 'via', CLUSTER_NET.nodeIp(1)]);
  // Service IPs need a route before kube-proxy's DNAT rewrites them (no default route here).
  await ip(['-n', ns, 'route', 'replace', CLUSTER_NET.serviceCidr, 'dev', 'eth0']);
  for (const j of existing) {
    await ip(['-n', ns, 'route', 'replace', CLUSTER_NET.nodePodCidr(j), 'via', CLUSTER_NET.nodeIp(j)]);
    await ip(['-n', netns(j), 'route', 'replace', CLUSTER_NET.nodePodCidr(i), 'via', CLUSTER_NET.nodeIp(i)]);
  }
  return `/run/netns/${ns}`;
}

/** Deletes node `i`'s namespace (its veth pair goes with it). */
export async function deleteNodeNet(i: number): Promise<void> {
  await quiet(['netns', 'delete', CLUSTER_NET.netns(i)]);
}

/** Deletes the bridge (routes through it go with it). */
export async function deleteBridge(): Promise<void> {
  await quiet(['link', 'delete', CLUSTER_NET.bridge]);
}
