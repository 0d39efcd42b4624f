/**
 * Renders the Helm chart with the real `helm` binary (built by scripts/go-tools.sh) and
 * reads the result back as objects, plus helpers to turn a rendered container's `env`
 * into the environment its process would see.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { REPO_ROOT, testBinDir } from '../harness/kube.js';
import { makeTempDir, removeTempDir } from '../harness/tmp.js';

const execFileP = promisify(execFile);

export const CHART_DIR = join(REPO_ROOT, 'helm', 'kube-prewarm');
export const RELEASE = 'kp';
export const NAMESPACE = 'kube-prewarm';
/** Helm built with `go install` assumes Kubernetes v1.20 unless told; the chart needs ≥ 1.27. */
export const KUBE_VERSION = '1.34.0';

/** A rendered Kubernetes object (loosely typed: tests assert on its shape). */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  // biome-ignore lint/suspicious/noExplicitAny: rendered manifests are arbitrary YAML; tests check their shape.
  [key: string]: any;
}

export function helmBin(): string {
  const path = join(testBinDir(), 'helm');
  if (!existsSync(path))
    throw new Error(
      `helm not found at ${path}: build it with \`bash scripts/go-tools.sh helm\` (cached afterwards)`,
    );
  return path;
}

export interface RenderOptions {
  /** `--api-versions` to pretend the cluster serves (e.g. monitoring.coreos.com/v1/ServiceMonitor). */
  apiVersions?: string[];
  /** Extra helm arguments. */
  args?: string[];
}

export interface HelmResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs helm with `values` written to a temp file as `-f` (none when undefined); never throws
 * on a non-zero exit.
 */
export async function helm(sub: string[], values: unknown, opts: RenderOptions = {}): Promise<HelmResult> {
  const dir = await makeTempDir('helm-values');
  try {
    const file = join(dir, 'values.json');
    // JSON is YAML: no quoting surprises for strings like "0" or "on".
    if (values !== undefined) await writeFile(file, JSON.stringify(values));
    const args = [...sub, ...(values === undefined ? [] : ['-f', file])];
    args.push(...(opts.apiVersions ?? []).flatMap((v) => ['--api-versions', v]));
    args.push(...(opts.args ?? []));
    try {
      const { stdout, stderr } = await execFileP(helmBin(), args, {
        maxBuffer: 64 * 1024 * 1024,
        env: { ...process.env, HELM_CACHE_HOME: join(dir, 'cache'), HELM_CONFIG_HOME: join(dir, 'config') },
      });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return {
        code: typeof e.code === 'number' ? e.code : 1,
        stdout: e.stdout ?? '',
        stderr: e.stderr ?? '',
      };
    }
  } finally {
    await removeTempDir(dir);
  }
}

/** `helm template` → objects. Throws with helm's stderr when rendering fails. */
export async function render(values: unknown = {}, opts: RenderOptions = {}): Promise<K8sObject[]> {
  const r = await helm(
    ['template', RELEASE, CHART_DIR, '--namespace', NAMESPACE, '--kube-version', KUBE_VERSION],
    values,
    opts,
  );
  if (r.code !== 0) throw new Error(`helm template failed (${r.code}): ${r.stderr}`);
  const out: K8sObject[] = [];
  // YAML 1.1, as Helm and Kubernetes read manifests: `defaultMode: 0440` is octal there.
  for (const doc of parseAllDocuments(r.stdout, { version: '1.1' })) {
    if (doc.errors.length > 0)
      throw new Error(`rendered YAML invalid: ${doc.errors.map((e) => e.message).join('; ')}`);
    const obj = doc.toJS() as K8sObject | null;
    if (obj) out.push(obj);
  }
  return out;
}

/** `helm template` expected to fail: resolves with stderr, rejects if it rendered. */
export async function renderError(values: unknown, opts: RenderOptions = {}): Promise<string> {
  const r = await helm(
    ['template', RELEASE, CHART_DIR, '--namespace', NAMESPACE, '--kube-version', KUBE_VERSION],
    values,
    opts,
  );
  if (r.code === 0) throw new Error(`expected helm template to fail for ${JSON.stringify(values)}`);
  return r.stderr;
}

/** The one object of `kind` (and `name` suffix, when given); throws when not exactly one. */
export function one(objs: K8sObject[], kind: string, nameSuffix = ''): K8sObject {
  const found = objs.filter((o) => o.kind === kind && o.metadata.name.endsWith(nameSuffix));
  if (found.length !== 1)
    throw new Error(
      `expected one ${kind} *${nameSuffix}, found ${found.map((o) => o.metadata.name).join(', ') || 'none'}`,
    );
  return found[0]!;
}

export function all(objs: K8sObject[], kind: string): K8sObject[] {
  return objs.filter((o) => o.kind === kind);
}

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    fieldRef?: { fieldPath: string };
    secretKeyRef?: { name: string; key: string };
  };
}

export interface PodFacts {
  /** Values for downward-API fields, e.g. `spec.nodeName`. */
  fields: Record<string, string>;
  /** Secret contents by `name/key`. */
  secrets: Record<string, string>;
}

/**
 * The environment the kubelet would give the container: downward-API fields and Secret
 * keys resolved from `facts`, and `$(VAR)` references to earlier variables expanded
 * (Kubernetes' dependent-variable rule; unknown references stay literal).
 */
export function containerEnv(container: { env?: EnvVar[] }, facts: PodFacts): Record<string, string> {
  const env: Record<string, string> = {};
  for (const v of container.env ?? []) {
    let value: string;
    if (v.value !== undefined) {
      value = v.value.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string) => env[name] ?? m);
    } else if (v.valueFrom?.fieldRef) {
      const f = facts.fields[v.valueFrom.fieldRef.fieldPath];
      if (f === undefined) throw new Error(`no fact for field ${v.valueFrom.fieldRef.fieldPath}`);
      value = f;
    } else if (v.valueFrom?.secretKeyRef) {
      const ref = `${v.valueFrom.secretKeyRef.name}/${v.valueFrom.secretKeyRef.key}`;
      const s = facts.secrets[ref];
      if (s === undefined) throw new Error(`no fact for secret ${ref}`);
      value = s;
    } else {
      throw new Error(`env ${v.name}: unsupported source ${JSON.stringify(v)}`);
    }
    env[v.name] = value;
  }
  return env;
}

/** Names of the container's env vars, in order. */
export function envNames(container: { env?: EnvVar[] }): string[] {
  return (container.env ?? []).map((v) => v.name);
}

interface PolicyRule {
  apiGroups?: string[];
  resources?: string[];
  verbs: string[];
  resourceNames?: string[];
}

/** Whether `rules` grant `verb` on `group/resource` (optionally on one named object). */
export function allows(
  rules: PolicyRule[],
  group: string,
  resource: string,
  verb: string,
  name?: string,
): boolean {
  return rules.some(
    (r) =>
      (r.apiGroups ?? []).some((g) => g === group || g === '*') &&
      (r.resources ?? []).some((x) => x === resource || x === '*') &&
      r.verbs.some((v) => v === verb || v === '*') &&
      (r.resourceNames === undefined ||
        r.resourceNames.length === 0 ||
        (name !== undefined && r.resourceNames.includes(name))),
  );
}
