import { readFile } from 'node:fs/promises';
/**
 * Small helpers over the cluster's API for the end-to-end tests: create objects, read an
 * ImagePrewarm's status, wait for a workload's pods, read events. Every wait reports the
 * last state it saw when it times out.
 */
import { PatchStrategy } from '@kubernetes/client-node';
import type { ClusterHandle } from '../harness/cluster.js';
import { describePods, prewarmPath, waitForState } from './env.js';

// biome-ignore lint/suspicious/noExplicitAny: API objects as JSON; tests assert on their shape.
export type Json = any;

/** POSTs `obj` to `path`; throws with the apiserver's message unless 2xx (409 allowed with `exists`). */
export async function create(
  c: ClusterHandle,
  path: string,
  obj: unknown,
  o: { exists?: boolean } = {},
): Promise<Json> {
  const r = await c.kube.request('POST', path, obj);
  if (r.status === 409 && o.exists) return r.body;
  if (r.status >= 300) throw new Error(`POST ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function get(c: ClusterHandle, path: string): Promise<Json> {
  const r = await c.kube.request('GET', path);
  if (r.status !== 200) throw new Error(`GET ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function ensureNamespace(c: ClusterHandle, name: string): Promise<void> {
  await create(
    c,
    '/api/v1/namespaces',
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name } },
    { exists: true },
  );
  // Pods are refused until the namespace's default ServiceAccount exists.
  await waitForState(
    `namespace ${name}'s default ServiceAccount`,
    async () => (await c.kube.request('GET', `/api/v1/namespaces/${name}/serviceaccounts/default`)).status,
    (s) => s === 200,
    60_000,
  );
}

/** Condition `type` of an object's status, if any. */
export function condition(
  obj: Json,
  type: string,
): { status: string; reason: string; message: string } | undefined {
  return (obj?.status?.conditions ?? []).find((x: { type: string }) => x.type === type);
}

/** Waits until the ImagePrewarm is Ready=True with every target node warm. */
export async function waitPrewarmReady(
  c: ClusterHandle,
  ns: string,
  name: string,
  timeoutMs = 600_000,
): Promise<Json> {
  return waitForState(
    `ImagePrewarm ${ns}/${name} Ready`,
    async () => (await get(c, prewarmPath(ns, name))).status ?? {},
    (s: Json) =>
      condition({ status: s }, 'Ready')?.status === 'True' &&
      s.targetNodes > 0 &&
      s.warmNodes === s.targetNodes,
    timeoutMs,
  );
}

/** A Deployment of one pod running `image` (busybox sleeping), in `ns`. */
export function sleeperDeployment(name: string, ns: string, image: string, extra: Json = {}): Json {
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name, namespace: ns },
    spec: {
      replicas: 1,
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name } },
        spec: {
          terminationGracePeriodSeconds: 1,
          containers: [
            {
              name: 'app',
              image,
              imagePullPolicy: 'IfNotPresent',
              command: ['/bin/busybox', 'sleep', '3600'],
            },
          ],
          ...extra,
        },
      },
    },
  };
}

/** Waits until every pod with `app=<name>` in `ns` is Running and ready; returns them. */
export async function waitAppRunning(
  c: ClusterHandle,
  ns: string,
  name: string,
  timeoutMs = 300_000,
): Promise<Json[]> {
  try {
    return await waitForState(
      `pods of ${ns}/${name} Running`,
      async () => (await get(c, `/api/v1/namespaces/${ns}/pods?labelSelector=app%3D${name}`)).items as Json[],
      (pods) =>
        pods.length > 0 &&
        pods.every(
          (p: Json) =>
            p.status?.phase === 'Running' &&
            (p.status.containerStatuses ?? []).every((s: Json) => s.ready) &&
            !p.metadata.deletionTimestamp,
        ),
      timeoutMs,
    );
  } catch (err) {
    throw new Error(
      `${(err as Error).message}\n${await describePods(c, ns)}\nevents:\n${await eventLines(c, ns)}`,
    );
  }
}

/** The events of a namespace as `reason: message` lines, oldest first. */
export async function eventLines(c: ClusterHandle, ns: string): Promise<string> {
  const items = (await get(c, `/api/v1/namespaces/${ns}/events`)).items as Json[];
  return items
    .sort((a, b) =>
      String(a.lastTimestamp ?? a.eventTime).localeCompare(String(b.lastTimestamp ?? b.eventTime)),
    )
    .map((e) => `${e.involvedObject?.kind}/${e.involvedObject?.name} ${e.reason}: ${e.message}`)
    .join('\n');
}

/**
 * JSON merge patch of one object (`obj` = apiVersion, kind, metadata.name/namespace and the
 * fields to change; `null` deletes). Throws with the apiserver's message.
 */
export async function mergePatch(c: ClusterHandle, obj: Json): Promise<Json> {
  return c.api.patch(obj, undefined, undefined, undefined, undefined, PatchStrategy.MergePatch);
}

/** Pods of `ns` matching a label selector (`app.kubernetes.io/component=agent`). */
export async function podsOf(c: ClusterHandle, ns: string, selector: string): Promise<Json[]> {
  return (await get(c, `/api/v1/namespaces/${ns}/pods?labelSelector=${encodeURIComponent(selector)}`))
    .items as Json[];
}

/** Waits until GET `path` answers 404; the error shows what was still there. */
export async function waitGone(c: ClusterHandle, path: string, timeoutMs = 300_000): Promise<void> {
  await waitForState(
    `${path} gone`,
    async () => {
      const r = await c.kube.request('GET', path);
      return r.status === 404 ? 'gone' : { status: r.status, body: r.body };
    },
    (s) => s === 'gone',
    timeoutMs,
  );
}

/** The last lines of a container's log (its previous run's with `previous`). */
export async function containerLog(
  c: ClusterHandle,
  ns: string,
  pod: string,
  container: string,
  o: { tailLines?: number; previous?: boolean } = {},
): Promise<string> {
  const q = `container=${container}&tailLines=${o.tailLines ?? 50}${o.previous ? '&previous=true' : ''}`;
  return String((await c.kube.request('GET', `/api/v1/namespaces/${ns}/pods/${pod}/log?${q}`)).body);
}

/**
 * What a node did while pulling, for a failed assertion about registry traffic: the agent's
 * log on that node and containerd's lines about pulls, mirrors and errors.
 */
export async function nodePullDiagnostics(c: ClusterHandle, ns: string, nodeName: string): Promise<string> {
  const out: string[] = [];
  const agents = await podsOf(c, ns, 'app.kubernetes.io/component=agent');
  for (const p of agents.filter((a) => a.spec?.nodeName === nodeName)) {
    out.push(
      `--- agent ${p.metadata.name} ---`,
      await containerLog(c, ns, p.metadata.name, 'agent', { tailLines: 80 }),
    );
  }
  const node = c.nodes.find((n) => n.name === nodeName);
  if (node) {
    const log = await readFile(node.containerd.logPath, 'utf8').catch(
      (err: Error) => `(no log: ${err.message})`,
    );
    const lines = log
      .split('\n')
      .filter((l) => /PullImage|mirror|fallback|error|failed|trying next host/i.test(l));
    out.push(`--- containerd on ${nodeName} (pull/mirror/error lines, last 60) ---`, ...lines.slice(-60));
  }
  return out.join('\n');
}

/** The operator's last log lines mentioning `needle` (for a failed assertion about its decisions). */
export async function operatorLogAbout(c: ClusterHandle, ns: string, needle: string): Promise<string> {
  const out: string[] = [];
  for (const p of await podsOf(c, ns, 'app.kubernetes.io/component=operator')) {
    const log = await containerLog(c, ns, p.metadata.name, 'operator', { tailLines: 2000 }).catch(
      (err: Error) => `(no log: ${err.message})`,
    );
    const lines = log.split('\n').filter((l) => l.includes(needle));
    out.push(`--- operator ${p.metadata.name} (lines naming ${needle}, last 40) ---`, ...lines.slice(-40));
  }
  return out.join('\n');
}
