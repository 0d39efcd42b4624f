import {
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  type V1Lease,
  type V1Node,
  type V1Taint,
} from '@kubernetes/client-node';
import { readSecretData, type SecretData } from '../../../oci/src/kube-secret.js';
import { GROUP, type ImagePrewarm, PLURAL, VERSION } from '../api/types.js';
import type { ManagedSecret, NewManagedSecret } from '../credentials/pull-credentials.js';
import { type ListPage, ListWatchCache, type ListWatchLogger } from './list-watch.js';
import { type NodeView, nodeView } from './node-view.js';
import { apiStatus, type KubePort } from './port.js';

export interface ClientNodePortOptions {
  /** Watch only this namespace's ImagePrewarms. Default: all namespaces. */
  namespace?: string;
}

/** KubePort over @kubernetes/client-node 2.x. */
export class ClientNodePort implements KubePort {
  readonly prewarms: ListWatchCache<ImagePrewarm, ImagePrewarm>;
  readonly nodes: ListWatchCache<V1Node, NodeView>;
  readonly #custom: CustomObjectsApi;
  readonly #core: CoreV1Api;
  readonly #coordination: CoordinationV1Api;

  constructor(kc: KubeConfig, log: ListWatchLogger, opts: ClientNodePortOptions = {}) {
    this.#custom = kc.makeApiClient(CustomObjectsApi);
    this.#core = kc.makeApiClient(CoreV1Api);
    this.#coordination = kc.makeApiClient(CoordinationV1Api);
    const ns = opts.namespace;
    const prewarmPath = ns
      ? `/apis/${GROUP}/${VERSION}/namespaces/${ns}/${PLURAL}`
      : `/apis/${GROUP}/${VERSION}/${PLURAL}`;
    this.prewarms = new ListWatchCache<ImagePrewarm, ImagePrewarm>(kc, log, {
      path: prewarmPath,
      list: async (limit, cont) =>
        (ns
          ? await this.#custom.listNamespacedCustomObject({
              group: GROUP,
              version: VERSION,
              namespace: ns,
              plural: PLURAL,
              limit,
              ...(cont ? { _continue: cont } : {}),
            })
          : await this.#custom.listClusterCustomObject({
              group: GROUP,
              version: VERSION,
              plural: PLURAL,
              limit,
              ...(cont ? { _continue: cont } : {}),
            })) as ListPage<ImagePrewarm>,
      project: (p) => p,
      keyOf: (p) => `${p.metadata?.namespace ?? ''}/${p.metadata?.name ?? ''}`,
    });
    this.nodes = new ListWatchCache<V1Node, NodeView>(kc, log, {
      path: '/api/v1/nodes',
      list: async (limit, cont) =>
        (await this.#core.listNode({ limit, ...(cont ? { _continue: cont } : {}) })) as ListPage<V1Node>,
      project: nodeView,
      keyOf: (n) => `/${n.metadata?.name ?? ''}`,
    });
  }

  async patchPrewarmStatus(
    namespace: string,
    name: string,
    status: Record<string, unknown>,
  ): Promise<string | undefined> {
    const res = (await this.#custom.patchNamespacedCustomObjectStatus(
      { group: GROUP, version: VERSION, namespace, plural: PLURAL, name, body: { status } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    )) as { metadata?: { resourceVersion?: string } } | undefined;
    return res?.metadata?.resourceVersion;
  }

  async setPrewarmFinalizers(
    namespace: string,
    name: string,
    finalizers: string[],
    resourceVersion: string,
  ): Promise<void> {
    // resourceVersion in a merge patch is a precondition: 409 if the object moved on.
    await this.#custom.patchNamespacedCustomObject(
      {
        group: GROUP,
        version: VERSION,
        namespace,
        plural: PLURAL,
        name,
        body: { metadata: { finalizers, resourceVersion } },
      },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
  }

  async setNodeTaints(name: string, taints: V1Taint[], resourceVersion: string): Promise<void> {
    await this.#core.patchNode(
      { name, body: { metadata: { resourceVersion }, spec: { taints } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
  }

  readSecret(namespace: string, name: string): Promise<SecretData | undefined> {
    return readSecretData(() => this.#core.readNamespacedSecret({ namespace, name }));
  }

  async listSecrets(namespace: string, labelSelector: string): Promise<ManagedSecret[]> {
    const out: ManagedSecret[] = [];
    let cont: string | undefined;
    do {
      const page = await this.#core.listNamespacedSecret({
        namespace,
        labelSelector,
        limit: 500,
        ...(cont ? { _continue: cont } : {}),
      });
      for (const s of page.items) {
        const data: Record<string, Buffer> = {};
        for (const [k, v] of Object.entries(s.data ?? {})) data[k] = Buffer.from(v, 'base64');
        out.push({
          name: s.metadata?.name ?? '',
          type: s.type ?? 'Opaque',
          data,
          labels: s.metadata?.labels ?? {},
          annotations: s.metadata?.annotations ?? {},
        });
      }
      cont = page.metadata?._continue || undefined;
    } while (cont);
    return out;
  }

  async createSecret(namespace: string, secret: NewManagedSecret): Promise<void> {
    await this.#core.createNamespacedSecret({
      namespace,
      body: {
        metadata: { name: secret.name, labels: secret.labels, annotations: secret.annotations },
        type: secret.type,
        immutable: true,
        data: Object.fromEntries(Object.entries(secret.data).map(([k, v]) => [k, v.toString('base64')])),
      },
    });
  }

  async deleteSecret(namespace: string, name: string): Promise<void> {
    try {
      await this.#core.deleteNamespacedSecret({ namespace, name });
    } catch (err) {
      if (apiStatus(err) !== 404) throw err;
    }
  }

  async readLease(namespace: string, name: string): Promise<V1Lease | undefined> {
    try {
      return await this.#coordination.readNamespacedLease({ namespace, name });
    } catch (err) {
      if (apiStatus(err) === 404) return undefined;
      throw err;
    }
  }

  createLease(namespace: string, lease: V1Lease): Promise<V1Lease> {
    return this.#coordination.createNamespacedLease({ namespace, body: lease });
  }

  replaceLease(namespace: string, name: string, lease: V1Lease): Promise<V1Lease> {
    return this.#coordination.replaceNamespacedLease({ namespace, name, body: lease });
  }
}
