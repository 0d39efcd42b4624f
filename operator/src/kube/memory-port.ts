/**
 * An in-memory KubePort: the same contract as the real one (resourceVersion
 * preconditions answer 409, missing objects 404, every write notifies watchers), for
 * unit tests and for benchmarks that need thousands of nodes without an apiserver.
 */
import type { V1Lease, V1Node, V1Taint } from '@kubernetes/client-node';
import type { ImagePrewarm } from '../api/types.js';
import type { ManagedSecret, NewManagedSecret } from '../credentials/pull-credentials.js';
import { type NodeView, nodeView } from './node-view.js';
import type { KubePort, WatchedCache } from './port.js';

class ApiStatusError extends Error {
  readonly code: number;
  constructor(code: number, message: string) {
    super(message);
    this.code = code;
  }
}

export class MemoryCache<T> implements WatchedCache<T> {
  readonly #keyOf: (obj: T) => string;
  readonly #objects = new Map<string, T>();
  readonly #handlers: ((obj: T) => void)[] = [];
  #synced = false;

  /** `keyOf` gives `namespace/name` (`/name` for cluster-scoped objects). */
  constructor(keyOf: (obj: T) => string) {
    this.#keyOf = keyOf;
  }

  #key(name: string, namespace?: string): string {
    return `${namespace ?? ''}/${name}`;
  }

  get synced(): boolean {
    return this.#synced;
  }

  list(): readonly T[] {
    return [...this.#objects.values()];
  }

  get(name: string, namespace?: string): T | undefined {
    return this.#objects.get(this.#key(name, namespace));
  }

  onChange(handler: (obj: T) => void): void {
    this.#handlers.push(handler);
  }

  async waitForSync(): Promise<void> {}

  async start(): Promise<void> {
    this.#synced = true;
  }

  async stop(): Promise<void> {}

  /** Stores `obj` (a copy is not made) and notifies watchers. */
  put(obj: T): T {
    this.#objects.set(this.#keyOf(obj), obj);
    for (const h of this.#handlers) h(obj);
    return obj;
  }

  delete(name: string, namespace?: string): void {
    const obj = this.#objects.get(this.#key(name, namespace));
    if (!obj) return;
    this.#objects.delete(this.#key(name, namespace));
    for (const h of this.#handlers) h(obj);
  }
}

export class MemoryKubePort implements KubePort {
  readonly prewarms = new MemoryCache<ImagePrewarm>((p) => `${p.metadata.namespace}/${p.metadata.name}`);
  readonly nodes = new MemoryCache<NodeView>((n) => `/${n.name}`);
  readonly secrets = new Map<string, { type: string; data: Record<string, Buffer> }>();
  readonly leases = new Map<string, V1Lease>();
  #rv = 1;

  nextResourceVersion(): string {
    return String(++this.#rv);
  }

  /** Adds or replaces an ImagePrewarm as a user would (generation bumps on spec change). */
  applyPrewarm(p: ImagePrewarm): ImagePrewarm {
    const old = this.prewarms.get(p.metadata.name, p.metadata.namespace);
    const specChanged = !old || JSON.stringify(old.spec) !== JSON.stringify(p.spec);
    const generation = (old?.metadata.generation ?? 0) + (specChanged ? 1 : 0);
    return this.prewarms.put({
      ...p,
      metadata: {
        ...p.metadata,
        generation,
        resourceVersion: this.nextResourceVersion(),
        creationTimestamp:
          old?.metadata.creationTimestamp ?? p.metadata.creationTimestamp ?? new Date().toISOString(),
      },
      ...(old?.status ? { status: old.status } : {}),
    });
  }

  /** Adds or replaces a Node (stored projected, as the real cache does). */
  applyNode(n: V1Node): NodeView {
    return this.nodes.put(
      nodeView({
        ...n,
        metadata: {
          ...n.metadata,
          resourceVersion: this.nextResourceVersion(),
          creationTimestamp: n.metadata?.creationTimestamp ?? new Date(),
        },
      }),
    );
  }

  deleteNode(name: string): void {
    this.nodes.delete(name);
  }

  /** Deletes as the apiserver does: with finalizers, only marks it for deletion. */
  deletePrewarm(namespace: string, name: string): void {
    const p = this.prewarms.get(name, namespace);
    if (!p) return;
    if ((p.metadata.finalizers ?? []).length === 0) {
      this.prewarms.delete(name, namespace);
      return;
    }
    this.prewarms.put({
      ...p,
      metadata: {
        ...p.metadata,
        deletionTimestamp: new Date().toISOString(),
        resourceVersion: this.nextResourceVersion(),
      },
    });
  }

  async patchPrewarmStatus(
    namespace: string,
    name: string,
    status: Record<string, unknown>,
  ): Promise<string | undefined> {
    const p = this.prewarms.get(name, namespace);
    if (!p) throw new ApiStatusError(404, `imageprewarm ${namespace}/${name} not found`);
    const merged: Record<string, unknown> = { ...(p.status ?? {}) };
    for (const [k, v] of Object.entries(status)) {
      if (v === null) delete merged[k];
      else merged[k] = v;
    }
    const resourceVersion = this.nextResourceVersion();
    this.prewarms.put({
      ...p,
      metadata: { ...p.metadata, resourceVersion },
      status: merged as ImagePrewarm['status'] & object,
    });
    return resourceVersion;
  }

  async setPrewarmFinalizers(
    namespace: string,
    name: string,
    finalizers: string[],
    resourceVersion: string,
  ): Promise<void> {
    const p = this.prewarms.get(name, namespace);
    if (!p) throw new ApiStatusError(404, `imageprewarm ${namespace}/${name} not found`);
    if (p.metadata.resourceVersion !== resourceVersion) throw new ApiStatusError(409, 'conflict');
    if (p.metadata.deletionTimestamp && finalizers.length === 0) {
      this.prewarms.delete(name, namespace);
      return;
    }
    this.prewarms.put({
      ...p,
      metadata: { ...p.metadata, finalizers, resourceVersion: this.nextResourceVersion() },
    });
  }

  async setNodeTaints(name: string, taints: V1Taint[], resourceVersion: string): Promise<void> {
    const n = this.nodes.get(name);
    if (!n) throw new ApiStatusError(404, `node ${name} not found`);
    if (n.resourceVersion !== resourceVersion) throw new ApiStatusError(409, 'conflict');
    const slim = taints.map((t) => ({
      key: t.key,
      effect: t.effect,
      ...(t.value !== undefined ? { value: t.value } : {}),
    }));
    this.nodes.put({
      ...n,
      taints: slim,
      gated: slim.some((t) => t.key === 'kube-prewarm.io/warming' && t.effect === 'NoSchedule'),
      resourceVersion: this.nextResourceVersion(),
    });
  }

  async readSecret(
    namespace: string,
    name: string,
  ): Promise<{ type: string; data: Record<string, Buffer> } | undefined> {
    return this.secrets.get(`${namespace}/${name}`);
  }

  /** Secrets created through `createSecret` (the pull-credential copies), by `namespace/name`. */
  readonly managedSecrets = new Map<string, ManagedSecret>();

  async listSecrets(namespace: string, labelSelector: string): Promise<ManagedSecret[]> {
    const [key, value] = labelSelector.split('=');
    return [...this.managedSecrets.entries()]
      .filter(([k, s]) => k.startsWith(`${namespace}/`) && key !== undefined && s.labels[key] === value)
      .map(([, s]) => copySecret(s));
  }

  async createSecret(namespace: string, secret: NewManagedSecret): Promise<void> {
    const key = `${namespace}/${secret.name}`;
    if (this.managedSecrets.has(key)) throw Object.assign(new Error('exists'), { code: 409 });
    this.managedSecrets.set(key, copySecret(secret));
  }

  async deleteSecret(namespace: string, name: string): Promise<void> {
    this.managedSecrets.delete(`${namespace}/${name}`);
  }

  async readLease(namespace: string, name: string): Promise<V1Lease | undefined> {
    const l = this.leases.get(`${namespace}/${name}`);
    return l ? structuredClone(l) : undefined;
  }

  async createLease(namespace: string, lease: V1Lease): Promise<V1Lease> {
    const key = `${namespace}/${lease.metadata?.name ?? ''}`;
    if (this.leases.has(key)) throw new ApiStatusError(409, 'exists');
    const stored = { ...lease, metadata: { ...lease.metadata, resourceVersion: this.nextResourceVersion() } };
    this.leases.set(key, stored);
    return structuredClone(stored);
  }

  async replaceLease(namespace: string, name: string, lease: V1Lease): Promise<V1Lease> {
    const key = `${namespace}/${name}`;
    const cur = this.leases.get(key);
    if (!cur) throw new ApiStatusError(404, 'not found');
    if (cur.metadata?.resourceVersion !== lease.metadata?.resourceVersion)
      throw new ApiStatusError(409, 'conflict');
    const stored = { ...lease, metadata: { ...lease.metadata, resourceVersion: this.nextResourceVersion() } };
    this.leases.set(key, stored);
    return structuredClone(stored);
  }
}

/** A deep copy whose data stays Buffers (structuredClone would make them Uint8Arrays). */
function copySecret(s: ManagedSecret): ManagedSecret {
  return {
    ...s,
    data: Object.fromEntries(Object.entries(s.data).map(([k, v]) => [k, Buffer.from(v)])),
    labels: { ...s.labels },
    annotations: { ...s.annotations },
  };
}
