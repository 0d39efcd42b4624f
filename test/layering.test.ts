/**
 * Folder rules of the source tree, checked on the import graph (pure: reads files, starts
 * nothing). Every .ts file under agent/src, operator/src and oci/src is parsed with the
 * TypeScript parser; its relative import specifiers (`import ... from`, `import type`,
 * `export ... from`, `import('...')` including type positions) are resolved to files, and:
 *
 *   (a) oci/ imports neither agent/ nor operator/; agent/ and operator/ never import each
 *       other (the agent and the operator are separate programs sharing only oci/);
 *   (b) in agent/src nothing outside cli/ imports cli/ (cli/ holds every command);
 *   (c) operator/src/queue/ and operator/src/kube/ import nothing from
 *       operator/src/reconcile/ (the ports own their types; reconcile depends on them);
 *   (d) no import cycle between files (type-only imports included).
 *
 * A failure lists every offending `file:line` and its import.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SOURCE_DIRS = ['agent/src', 'operator/src', 'oci/src'];

/** One relative import: `file` (repo-relative, `/`-separated) line `line` imports `spec`. */
interface Edge {
  file: string;
  line: number;
  spec: string;
  /** Repo-relative path the specifier resolves to (`.js` → `.ts` when that file exists). */
  target: string;
}

/** Relative import specifiers of a source text, with their 1-based lines. */
function importsOf(fileName: string, text: string): { spec: string; line: number }[] {
  const sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, false, ts.ScriptKind.TS);
  const out: { spec: string; line: number }[] = [];
  const add = (lit: ts.Node | undefined) => {
    if (!lit || !ts.isStringLiteralLike(lit) || !lit.text.startsWith('.')) return;
    out.push({ spec: lit.text, line: sf.getLineAndCharacterOfPosition(lit.getStart(sf)).line + 1 });
  };
  const visit = (node: ts.Node) => {
    if (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) add(node.moduleSpecifier);
    else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference))
      add(node.moduleReference.expression);
    else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword)
      add(node.arguments[0]);
    else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) add(node.argument.literal);
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

function resolve(file: string, spec: string, exists: (p: string) => boolean): string {
  const joined = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec));
  if (joined.endsWith('.js')) {
    const asTs = `${joined.slice(0, -3)}.ts`;
    if (exists(asTs)) return asTs;
  }
  return joined;
}

/** Every relative import of the given sources (`files`: repo-relative path → text). */
function edgesOf(files: ReadonlyMap<string, string>): Edge[] {
  const exists = (p: string) => files.has(p) || existsSync(path.join(ROOT, p));
  const edges: Edge[] = [];
  for (const [file, text] of files) {
    for (const { spec, line } of importsOf(file, text))
      edges.push({ file, line, spec, target: resolve(file, spec, exists) });
  }
  return edges;
}

const under = (p: string, dir: string) => p === dir || p.startsWith(`${dir}/`);
const pkg = (p: string) => p.split('/')[0];
const show = (e: Edge) => `${e.file}:${e.line} imports '${e.spec}' (${e.target})`;

/** Rules (a) to (c): one message per offending import. */
function folderViolations(edges: readonly Edge[]): string[] {
  const out: string[] = [];
  for (const e of edges) {
    const from = pkg(e.file);
    const to = pkg(e.target);
    if (from === 'oci' && (to === 'agent' || to === 'operator'))
      out.push(`(a) oci/ must not import ${to}/: ${show(e)}`);
    if ((from === 'agent' && to === 'operator') || (from === 'operator' && to === 'agent'))
      out.push(`(a) ${from}/ must not import ${to}/: ${show(e)}`);
    if (under(e.file, 'agent/src') && !under(e.file, 'agent/src/cli') && under(e.target, 'agent/src/cli'))
      out.push(`(b) only agent/src/cli/ may import agent/src/cli/: ${show(e)}`);
    for (const port of ['operator/src/queue', 'operator/src/kube']) {
      if (under(e.file, port) && under(e.target, 'operator/src/reconcile'))
        out.push(`(c) ${port}/ must not import operator/src/reconcile/: ${show(e)}`);
    }
  }
  return out;
}

/**
 * Rule (d): every strongly connected component of the file graph with more than one file
 * (or a file importing itself), each reported as one concrete cycle with the lines.
 */
function cycles(edges: readonly Edge[], files: ReadonlySet<string>): string[] {
  const graph = new Map<string, Edge[]>();
  for (const f of [...files].sort()) graph.set(f, []);
  for (const e of edges) if (files.has(e.target)) graph.get(e.file)!.push(e);

  // Tarjan's algorithm (iterative: no recursion depth limit).
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const components: string[][] = [];
  let next = 0;
  for (const start of graph.keys()) {
    if (index.has(start)) continue;
    const work: { v: string; i: number }[] = [{ v: start, i: 0 }];
    index.set(start, next);
    low.set(start, next++);
    stack.push(start);
    onStack.add(start);
    while (work.length > 0) {
      const frame = work[work.length - 1]!;
      const out = graph.get(frame.v)!;
      if (frame.i < out.length) {
        const w = out[frame.i++]!.target;
        if (!index.has(w)) {
          index.set(w, next);
          low.set(w, next++);
          stack.push(w);
          onStack.add(w);
          work.push({ v: w, i: 0 });
        } else if (onStack.has(w)) low.set(frame.v, Math.min(low.get(frame.v)!, index.get(w)!));
        continue;
      }
      work.pop();
      const parent = work[work.length - 1];
      if (parent) low.set(parent.v, Math.min(low.get(parent.v)!, low.get(frame.v)!));
      if (low.get(frame.v) === index.get(frame.v)) {
        const comp: string[] = [];
        let w: string;
        do {
          w = stack.pop()!;
          onStack.delete(w);
          comp.push(w);
        } while (w !== frame.v);
        const selfLoop = comp.length === 1 && out.some((e) => e.target === frame.v);
        if (comp.length > 1 || selfLoop) components.push(comp.sort());
      }
    }
  }

  // One shortest cycle through the component's first file (breadth-first inside it).
  return components.map((comp) => {
    const members = new Set(comp);
    const first = comp[0]!;
    const via = new Map<string, Edge>();
    const queue = [first];
    let closing: Edge | undefined;
    for (let k = 0; k < queue.length && !closing; k++) {
      for (const e of graph.get(queue[k]!)!) {
        if (!members.has(e.target)) continue;
        if (e.target === first) {
          closing = e;
          break;
        }
        if (!via.has(e.target)) {
          via.set(e.target, e);
          queue.push(e.target);
        }
      }
    }
    const path: Edge[] = [closing!];
    for (let at = closing!.file; at !== first; at = via.get(at)!.file) path.unshift(via.get(at)!);
    const files = comp.length > 1 ? ` (${comp.length} files: ${comp.join(', ')})` : '';
    return `(d) import cycle${files}:\n${path.map((e) => `      ${show(e)}`).join('\n')}`;
  });
}

function readSources(): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string) => {
    for (const ent of readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = `${dir}/${ent.name}`;
      if (ent.isDirectory()) walk(rel);
      else if (ent.isFile() && ent.name.endsWith('.ts'))
        files.set(rel, readFileSync(path.join(ROOT, rel), 'utf8'));
    }
  };
  for (const dir of SOURCE_DIRS) walk(dir);
  return files;
}

/** Fails with just the list (a deepEqual diff would print every line twice). */
function assertNone(title: string, problems: readonly string[]): void {
  if (problems.length > 0)
    assert.fail(`${title}: ${problems.length} violation(s)\n  ${problems.join('\n  ')}`);
}

describe('layering', () => {
  const sources = readSources();
  const edges = edgesOf(sources);

  test('reads the source tree', () => {
    for (const dir of SOURCE_DIRS)
      assert.ok(
        [...sources.keys()].some((f) => under(f, dir)),
        `no .ts files under ${dir}`,
      );
    assert.ok(edges.length > 100, `only ${edges.length} relative imports found`);
  });

  test('every relative import resolves to a file', () => {
    const missing = edges.filter((e) => !existsSync(path.join(ROOT, e.target))).map(show);
    assertNone('unresolved imports', missing);
  });

  test('folder rules (a) oci/agent/operator, (b) agent cli/, (c) operator queue/ and kube/', () => {
    assertNone('folder rules', folderViolations(edges));
  });

  test('(d) no import cycle between files', () => {
    assertNone('import cycles', cycles(edges, new Set(sources.keys())));
  });

  // The checker itself, on a made-up tree: each rule fires, with file:line.
  test('the checker finds violations of every rule', () => {
    const fake = new Map<string, string>([
      ['oci/src/a.ts', `import { x } from '../../agent/src/daemon/b.js';\n`],
      ['agent/src/daemon/b.ts', `\n\nexport { y } from '../cli/c.js';\nexport const x = 1;\n`],
      [
        'agent/src/cli/c.ts',
        `import type { Z } from '../../../operator/src/kube/d.js';\nexport const y = 1;\n`,
      ],
      [
        'operator/src/kube/d.ts',
        `export type Z = import('../reconcile/e.js').E;\nexport async function f() {\n  return import(\n    '../queue/g.js'\n  );\n}\n`,
      ],
      ['operator/src/reconcile/e.ts', `import {\n  type G,\n} from '../queue/g.js';\nexport type E = G;\n`],
      [
        'operator/src/queue/g.ts',
        `// import '../reconcile/e.js' (a comment)\nimport './h.js';\nexport type G = 1;\n`,
      ],
      ['operator/src/queue/h.ts', `import '../kube/d.js';\nconst s = "import('../reconcile/e.js')";\n`],
    ]);
    const fakeEdges = edgesOf(fake);
    assert.deepEqual(folderViolations(fakeEdges), [
      `(a) oci/ must not import agent/: oci/src/a.ts:1 imports '../../agent/src/daemon/b.js' (agent/src/daemon/b.ts)`,
      `(b) only agent/src/cli/ may import agent/src/cli/: agent/src/daemon/b.ts:3 imports '../cli/c.js' (agent/src/cli/c.ts)`,
      `(a) agent/ must not import operator/: agent/src/cli/c.ts:1 imports '../../../operator/src/kube/d.js' (operator/src/kube/d.ts)`,
      `(c) operator/src/kube/ must not import operator/src/reconcile/: operator/src/kube/d.ts:1 imports '../reconcile/e.js' (operator/src/reconcile/e.ts)`,
    ]);
    assert.deepEqual(cycles(fakeEdges, new Set(fake.keys())), [
      [
        '(d) import cycle (4 files: operator/src/kube/d.ts, operator/src/queue/g.ts, operator/src/queue/h.ts, operator/src/reconcile/e.ts):',
        `      operator/src/kube/d.ts:4 imports '../queue/g.js' (operator/src/queue/g.ts)`,
        `      operator/src/queue/g.ts:2 imports './h.js' (operator/src/queue/h.ts)`,
        `      operator/src/queue/h.ts:1 imports '../kube/d.js' (operator/src/kube/d.ts)`,
      ].join('\n'),
    ]);
    assert.deepEqual(
      cycles(edgesOf(new Map([['oci/src/s.ts', `import './s.js';\n`]])), new Set(['oci/src/s.ts'])),
      [`(d) import cycle:\n      oci/src/s.ts:1 imports './s.js' (oci/src/s.ts)`],
    );
  });
});
