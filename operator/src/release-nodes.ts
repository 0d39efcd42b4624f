/**
 * `kube-prewarm operator release-nodes`: removes the startup taint (`kube-prewarm.io/warming`)
 * from every node, once, and exits. The chart runs it as a `pre-delete` hook Job on
 * `helm uninstall`: only the operator ever removes that taint, so a node that still carries
 * it when the operator goes (a gating ImagePrewarm still warming there, a node that joined
 * while the operator was down) would otherwise stay unschedulable for good.
 *
 * Every taint with the startup key goes, whatever its effect: the operator releases only
 * `NoSchedule`, but once it is uninstalled nothing would release any of them. Other taints
 * are kept as they are. Each removal is a patch guarded by the node's resourceVersion, so a
 * concurrent change (the kubelet, the still-running operator) is never overwritten: on a
 * conflict the node is read again and the removal retried.
 */
import { parseArgs } from 'node:util';
import {
  CoreV1Api,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  type V1Node,
  type V1Taint,
} from '@kubernetes/client-node';
import { pino } from 'pino';
import { STARTUP_TAINT_KEY } from './api/types.js';
import { apiStatus } from './kube/port.js';
import { errFields, type Logger } from './logger.js';

/** The Node calls `releaseNodes` makes (RBAC: nodes get, list, patch). */
export interface NodeTaintApi {
  /** Every Node, all pages. */
  listNodes(): Promise<V1Node[]>;
  /** The Node, or undefined when it does not exist. */
  readNode(name: string): Promise<V1Node | undefined>;
  /** Replaces `spec.taints`, guarded by `resourceVersion` (throws with status 409 when the node changed). */
  setNodeTaints(name: string, taints: V1Taint[], resourceVersion: string): Promise<void>;
}

/** NodeTaintApi over @kubernetes/client-node. */
export class ClientNodeTaintApi implements NodeTaintApi {
  readonly #core: CoreV1Api;

  constructor(kc: KubeConfig) {
    this.#core = kc.makeApiClient(CoreV1Api);
  }

  async listNodes(): Promise<V1Node[]> {
    const out: V1Node[] = [];
    let cont: string | undefined;
    do {
      const page = await this.#core.listNode({ limit: 500, ...(cont ? { _continue: cont } : {}) });
      out.push(...page.items);
      cont = page.metadata?._continue || undefined;
    } while (cont);
    return out;
  }

  async readNode(name: string): Promise<V1Node | undefined> {
    try {
      return await this.#core.readNode({ name });
    } catch (err) {
      if (apiStatus(err) === 404) return undefined;
      throw err;
    }
  }

  async setNodeTaints(name: string, taints: V1Taint[], resourceVersion: string): Promise<void> {
    // resourceVersion in a merge patch is a precondition: 409 when the node moved on.
    await this.#core.patchNode(
      { name, body: { metadata: { resourceVersion }, spec: { taints } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
  }
}

export interface ReleaseNodesOptions {
  log: Logger;
  /** Patch attempts per node when it keeps changing under us (409). Default 5. */
  attempts?: number;
}

export interface ReleaseReport {
  /** Nodes whose startup taint this run removed, sorted. */
  released: string[];
  /** Nodes that had none (or lost it to someone else first). */
  untainted: number;
  /** Nodes whose taint could not be removed, with the error. */
  failed: { node: string; error: string }[];
}

function startupTaints(node: V1Node): V1Taint[] {
  return (node.spec?.taints ?? []).filter((t) => t.key === STARTUP_TAINT_KEY);
}

/**
 * Removes the startup taint from every node that has it. Never throws for one node's
 * failure (the others are still released); the report lists it. Throws only when the
 * nodes cannot be listed.
 */
export async function releaseNodes(api: NodeTaintApi, opts: ReleaseNodesOptions): Promise<ReleaseReport> {
  const attempts = opts.attempts ?? 5;
  const report: ReleaseReport = { released: [], untainted: 0, failed: [] };
  for (const listed of await api.listNodes()) {
    const name = listed.metadata?.name ?? '';
    let node: V1Node | undefined = listed;
    for (let attempt = 1; ; attempt++) {
      if (!node || startupTaints(node).length === 0) {
        report.untainted++;
        break;
      }
      const removed = startupTaints(node);
      const kept = (node.spec?.taints ?? []).filter((t) => t.key !== STARTUP_TAINT_KEY);
      try {
        await api.setNodeTaints(name, kept, node.metadata?.resourceVersion ?? '');
        report.released.push(name);
        opts.log.info(
          { node: name, taints: removed.map((t) => `${t.key}:${t.effect}`) },
          'startup taint removed',
        );
        break;
      } catch (err) {
        const status = apiStatus(err);
        if (status === 404) {
          report.untainted++;
          break;
        }
        if (status !== 409 || attempt >= attempts) {
          report.failed.push({ node: name, error: String(errFields(err).err) });
          opts.log.error({ node: name, attempt, ...errFields(err) }, 'could not remove the startup taint');
          break;
        }
        opts.log.debug({ node: name, attempt }, 'node changed meanwhile; reading it again');
        try {
          node = await api.readNode(name);
        } catch (readErr) {
          report.failed.push({ node: name, error: String(errFields(readErr).err) });
          opts.log.error({ node: name, ...errFields(readErr) }, 'could not read the node again');
          break;
        }
      }
    }
  }
  report.released.sort();
  return report;
}

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

export const RELEASE_NODES_USAGE = `kube-prewarm operator release-nodes [options]
  Removes the startup taint ${STARTUP_TAINT_KEY} from every node, then exits (the chart's
  pre-delete hook on helm uninstall). Credentials: in-cluster service account, or
  $KUBECONFIG / ~/.kube/config.
  --attempts <n>       patch attempts per node on conflicts (default 5)
  --log-level <level>  trace, debug, info (default), warn, error, fatal, silent
`;

export interface ReleaseNodesCommandDeps {
  /** Default: in-cluster service account, or $KUBECONFIG / ~/.kube/config. */
  kubeConfig?: KubeConfig;
  /** Where the JSON log goes. Default stdout. */
  logDestination?: NodeJS.WritableStream;
}

export interface ReleaseNodesArgs {
  attempts: number;
  logLevel: string;
  help: boolean;
}

/** The subcommand's flags; throws with a readable reason (a usage error). */
export function parseReleaseNodesArgs(argv: string[]): ReleaseNodesArgs {
  const { values } = parseArgs({
    args: argv,
    options: {
      attempts: { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const attempts = Number(values.attempts ?? '5');
  if (!Number.isSafeInteger(attempts) || attempts < 1)
    throw new Error(`--attempts must be a positive integer, got ${JSON.stringify(values.attempts)}`);
  const logLevel = values['log-level'] ?? 'info';
  if (!LEVELS.includes(logLevel)) throw new Error(`--log-level must be one of ${LEVELS.join(', ')}`);
  return { attempts, logLevel, help: values.help === true };
}

/** The subcommand; resolves with the exit code: 0 all released, 1 a node could not be released, 2 usage. */
export async function releaseNodesCommand(
  argv: string[],
  deps: ReleaseNodesCommandDeps = {},
): Promise<number> {
  let args: ReleaseNodesArgs;
  try {
    args = parseReleaseNodesArgs(argv);
  } catch (err) {
    process.stderr.write(
      `kube-prewarm operator release-nodes: ${(err as Error).message}\n\n${RELEASE_NODES_USAGE}`,
    );
    return 2;
  }
  if (args.help) {
    process.stdout.write(RELEASE_NODES_USAGE);
    return 0;
  }
  const { attempts, logLevel: level } = args;
  const log = pino(
    { level, base: { component: 'release-nodes' } },
    (deps.logDestination ?? process.stdout) as pino.DestinationStream,
  );
  let kc = deps.kubeConfig;
  if (!kc) {
    kc = new KubeConfig();
    kc.loadFromDefault();
  }
  try {
    const report = await releaseNodes(new ClientNodeTaintApi(kc), { log, attempts });
    log.info(
      { released: report.released, untainted: report.untainted, failed: report.failed.map((f) => f.node) },
      report.failed.length === 0
        ? 'every node is free of the startup taint'
        : 'some nodes keep the startup taint',
    );
    return report.failed.length === 0 ? 0 : 1;
  } catch (err) {
    log.error(errFields(err), 'could not list the nodes');
    return 1;
  }
}
