/**
 * Node objects for tests against the kube harness. Nothing runs a kubelet: a "node" is
 * the Node object with the status a kubelet would post (Ready condition, nodeInfo with
 * os/architecture), written through the status subresource like a kubelet does.
 */
import {
  CoreV1Api,
  type KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  type V1Node,
  type V1Taint,
} from '@kubernetes/client-node';

export interface TestNodeSpec {
  name: string;
  labels?: Record<string, string>;
  taints?: V1Taint[];
  /** Ready condition status. Default true. */
  ready?: boolean;
  /** spec.unschedulable (cordoned). Default false. */
  unschedulable?: boolean;
  /** Default linux. */
  os?: string;
  /** Default amd64. */
  architecture?: string;
}

function nodeInfo(spec: TestNodeSpec): Record<string, string> {
  return {
    architecture: spec.architecture ?? 'amd64',
    operatingSystem: spec.os ?? 'linux',
    bootID: '',
    containerRuntimeVersion: 'containerd://1.6.20',
    kernelVersion: '6.1.0',
    kubeProxyVersion: '',
    kubeletVersion: 'v1.34.2',
    machineID: '',
    osImage: 'Debian GNU/Linux 12',
    systemUUID: '',
  };
}

/** Creates the Node and posts its status. Returns the Node as stored. */
export async function createNode(kc: KubeConfig, spec: TestNodeSpec): Promise<V1Node> {
  const core = kc.makeApiClient(CoreV1Api);
  const labels = {
    'kubernetes.io/hostname': spec.name,
    'kubernetes.io/os': spec.os ?? 'linux',
    'kubernetes.io/arch': spec.architecture ?? 'amd64',
    ...spec.labels,
  };
  await core.createNode({
    body: {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: { name: spec.name, labels },
      spec: { taints: spec.taints ?? [], unschedulable: spec.unschedulable ?? false },
    },
  });
  return setNodeStatus(kc, spec.name, {
    ready: spec.ready ?? true,
    os: spec.os,
    architecture: spec.architecture,
  });
}

/** Posts the status a kubelet would (Ready condition and nodeInfo). */
export async function setNodeStatus(
  kc: KubeConfig,
  name: string,
  s: { ready: boolean; os?: string | undefined; architecture?: string | undefined },
): Promise<V1Node> {
  const core = kc.makeApiClient(CoreV1Api);
  const now = new Date().toISOString();
  return core.patchNodeStatus(
    {
      name,
      body: {
        status: {
          conditions: [
            {
              type: 'Ready',
              status: s.ready ? 'True' : 'False',
              reason: s.ready ? 'KubeletReady' : 'KubeletNotReady',
              message: s.ready ? 'kubelet is posting ready status' : 'simulated',
              lastHeartbeatTime: now,
              lastTransitionTime: now,
            },
          ],
          nodeInfo: nodeInfo({ name, ...s }),
        },
      },
    },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
  );
}

export async function patchNode(
  kc: KubeConfig,
  name: string,
  patch: Record<string, unknown>,
): Promise<V1Node> {
  const core = kc.makeApiClient(CoreV1Api);
  return core.patchNode({ name, body: patch }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
}

export async function readNode(kc: KubeConfig, name: string): Promise<V1Node> {
  return kc.makeApiClient(CoreV1Api).readNode({ name });
}

export async function deleteNode(kc: KubeConfig, name: string): Promise<void> {
  await kc.makeApiClient(CoreV1Api).deleteNode({ name });
}
