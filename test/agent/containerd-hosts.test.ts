/**
 * hosts.toml generation and the atomic installer/uninstaller (on temp dirs: the real
 * containerd reading these files is exercised in containerd-mirror and cri tests), and the
 * start-up check for containerd's transfer-service caveat, from version strings and
 * config texts as containerd 1.6/1.7/2.0/2.1 ship them.
 */
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import {
  checkContainerd,
  parseContainerdVersion,
  tomlLookup,
} from '../../agent/src/runtime/containerd-check.js';
import { BACKUP_NAME, HostsTomlInstaller } from '../../agent/src/runtime/hosts-installer.js';
import { MANAGED_MARKER, renderHostsToml } from '../../agent/src/runtime/hosts-toml.js';
import { ErrorCodes, PrewarmError } from '../../oci/src/errors.js';
import { Cleanup, makeTempDir } from '../harness/index.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

const invalidConfig = (e: unknown) => e instanceof PrewarmError && e.code === ErrorCodes.INVALID_CONFIG;

describe('renderHostsToml', () => {
  test('mirror first, upstream as server', () => {
    assert.equal(
      renderHostsToml({ registry: 'ghcr.io', mirrors: ['http://127.0.0.1:5055/'] }),
      [
        MANAGED_MARKER,
        '# Written by the kube-prewarm agent; removed (and any previous file restored) on uninstall.',
        '# containerd tries each [host] in order, then `server`.',
        'server = "https://ghcr.io"',
        '',
        '[host."http://127.0.0.1:5055"]',
        '  capabilities = ["pull", "resolve"]',
        '',
      ].join('\n'),
    );
  });

  test('docker.io goes to registry-1.docker.io; ports, several mirrors, skip_verify, pull-only', () => {
    assert.match(
      renderHostsToml({ registry: 'docker.io', mirrors: ['http://10.0.0.5:5055'] }),
      /^server = "https:\/\/registry-1\.docker\.io"$/m,
    );
    const t = renderHostsToml({
      registry: '127.0.0.1:5000',
      server: 'http://127.0.0.1:5000',
      mirrors: ['https://node.local:5443', 'http://127.0.0.1:5055'],
      capabilities: ['pull'],
      skipVerify: true,
    });
    assert.match(t, /^server = "http:\/\/127\.0\.0\.1:5000"$/m);
    assert.ok(t.indexOf('[host."https://node.local:5443"]') < t.indexOf('[host."http://127.0.0.1:5055"]'));
    assert.equal(t.match(/capabilities = \["pull"\]/g)?.length, 2);
    assert.equal(t.match(/skip_verify = true/g)?.length, 2);
  });

  test('_default has no server (containerd falls back to the host being pulled)', () => {
    const t = renderHostsToml({ registry: '_default', mirrors: ['http://127.0.0.1:5055'] });
    assert.doesNotMatch(t, /^server/m);
    assert.match(t, /^\[host\."http:\/\/127\.0\.0\.1:5055"\]$/m);
  });

  test('refuses bad hosts and URLs', () => {
    for (const registry of ['../etc', 'a/b', '', 'UPPER_score!'])
      assert.throws(() => renderHostsToml({ registry, mirrors: ['http://127.0.0.1:1'] }), invalidConfig);
    for (const m of ['ftp://x', 'not a url', 'http://x/?a=1'])
      assert.throws(() => renderHostsToml({ registry: 'ghcr.io', mirrors: [m] }), invalidConfig);
    assert.throws(() => renderHostsToml({ registry: 'ghcr.io', mirrors: [] }), invalidConfig);
  });
});

describe('HostsTomlInstaller', () => {
  test('installs atomically, is idempotent, and removes only its own files', async () => {
    const dir = await makeTempDir('certs', cleanup);
    const inst = new HostsTomlInstaller({ configPath: dir, fsync: true });
    const entries = [
      { registry: 'ghcr.io', mirrors: ['http://127.0.0.1:5055'] },
      { registry: '127.0.0.1:5000', server: 'http://127.0.0.1:5000', mirrors: ['http://127.0.0.1:5055'] },
    ];
    assert.deepEqual(
      [...(await inst.install(entries))],
      [
        ['ghcr.io', 'written'],
        ['127.0.0.1:5000', 'written'],
      ],
    );
    assert.equal(await readFile(join(dir, 'ghcr.io', 'hosts.toml'), 'utf8'), renderHostsToml(entries[0]!));
    assert.deepEqual(
      [...(await inst.install(entries))].map(([, o]) => o),
      ['unchanged', 'unchanged'],
    );
    // A new mirror address rewrites the file.
    assert.deepEqual(
      [...(await inst.install([{ ...entries[0]!, mirrors: ['http://127.0.0.1:6000'] }]))],
      [['ghcr.io', 'written']],
    );
    // No temp files left behind.
    assert.deepEqual(await readdir(join(dir, 'ghcr.io')), ['hosts.toml']);
    assert.deepEqual(await inst.listManaged(), ['127.0.0.1:5000', 'ghcr.io']);

    // Someone else's file in another namespace is never touched by uninstall.
    await mkdir(join(dir, 'quay.io'));
    await writeFile(join(dir, 'quay.io', 'hosts.toml'), 'server = "https://quay.io"\n');
    assert.deepEqual([...(await inst.uninstall(['quay.io']))], [['quay.io', 'not-ours']]);
    assert.deepEqual(
      [...(await inst.uninstall())],
      [
        ['127.0.0.1:5000', 'removed'],
        ['ghcr.io', 'removed'],
      ],
    );
    assert.deepEqual((await readdir(dir)).sort(), ['quay.io']);
    assert.deepEqual([...(await inst.uninstall(['ghcr.io']))], [['ghcr.io', 'absent']]);
  });

  test('a foreign hosts.toml is moved aside and restored on uninstall', async () => {
    const dir = await makeTempDir('certs', cleanup);
    const inst = new HostsTomlInstaller({ configPath: dir, fsync: false });
    const original =
      'server = "https://docker.io"\n\n[host."https://corp-mirror.example"]\n  capabilities = ["pull"]\n';
    await mkdir(join(dir, 'docker.io'));
    await writeFile(join(dir, 'docker.io', 'hosts.toml'), original);
    await writeFile(join(dir, 'docker.io', 'ca.crt'), 'certificate stays');
    const entry = { registry: 'docker.io', mirrors: ['http://127.0.0.1:5055'] };
    assert.deepEqual([...(await inst.install([entry]))], [['docker.io', 'replaced-foreign']]);
    assert.equal(await readFile(join(dir, 'docker.io', BACKUP_NAME), 'utf8'), original);
    // Reinstalling with other content keeps the first backup (it is the operator's file).
    await inst.install([{ ...entry, mirrors: ['http://127.0.0.1:6000'] }]);
    assert.equal(await readFile(join(dir, 'docker.io', BACKUP_NAME), 'utf8'), original);
    assert.deepEqual([...(await inst.uninstall())], [['docker.io', 'restored']]);
    assert.equal(await readFile(join(dir, 'docker.io', 'hosts.toml'), 'utf8'), original);
    assert.deepEqual((await readdir(join(dir, 'docker.io'))).sort(), ['ca.crt', 'hosts.toml']);
  });

  test('refuses namespaces that would escape the config path', async () => {
    const dir = await makeTempDir('certs', cleanup);
    const inst = new HostsTomlInstaller({ configPath: dir });
    await assert.rejects(
      inst.install([{ registry: '../../etc', mirrors: ['http://127.0.0.1:1'] }]),
      invalidConfig,
    );
    assert.throws(() => inst.pathFor('..'), invalidConfig);
    await assert.rejects(inst.uninstall(['../x']), invalidConfig);
  });
});

describe('containerd check (transfer-service caveat)', () => {
  const cd = (runtimeVersion: string) => ({
    runtimeName: 'containerd',
    runtimeVersion,
    runtimeApiVersion: 'v1',
  });
  const v3 = (extra: string) =>
    `version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'\n${extra}`;

  test('versions', () => {
    assert.deepEqual(parseContainerdVersion('1.6.20~ds1'), { major: 1, minor: 6, patch: 20 });
    assert.deepEqual(parseContainerdVersion('v2.1.4'), { major: 2, minor: 1, patch: 4 });
    assert.deepEqual(parseContainerdVersion('2.1.0-rc.1'), { major: 2, minor: 1, patch: 0 });
    assert.equal(parseContainerdVersion('devel'), undefined);
  });

  test('tomlLookup: quote styles, dotted keys, comments', () => {
    const text = [
      '# use_local_image_pull = true',
      "[plugins.'io.containerd.cri.v1.images']",
      '  use_local_image_pull = true # we need hosts.toml',
      '[ plugins . "io.containerd.grpc.v1.cri" ]',
      '  registry.config_path = "/a:/b"',
      '[[plugins.x.list]]',
      '  use_local_image_pull = false',
    ].join('\n');
    assert.equal(
      tomlLookup(text, ['plugins', 'io.containerd.cri.v1.images', 'use_local_image_pull']),
      'true',
    );
    assert.equal(
      tomlLookup(text, ['plugins', 'io.containerd.grpc.v1.cri', 'registry', 'config_path']),
      '"/a:/b"',
    );
    assert.equal(tomlLookup(text, ['use_local_image_pull']), undefined);
  });

  test('containerd 2.1+ without use_local_image_pull: caveat', () => {
    const r = checkContainerd(cd('v2.1.4'), { configText: v3(''), hostsDir: '/etc/containerd/certs.d' });
    assert.equal(r.status, 'caveat');
    assert.equal(r.transferService, true);
    assert.match(r.problems.join('\n'), /use_local_image_pull = true/);
  });

  test('containerd 2.1+ with use_local_image_pull = true: ok', () => {
    const text = v3("[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = true\n");
    const r = checkContainerd(cd('2.2.0'), { configText: text, hostsDir: '/etc/containerd/certs.d/' });
    assert.equal(r.status, 'ok', r.problems.join('; '));
    assert.equal(r.transferService, false);
    assert.equal(r.criConfigPath, '/etc/containerd/certs.d');
  });

  test('containerd 2.1+ with no readable config: unknown, not ok', () => {
    const r = checkContainerd(cd('v2.1.1'));
    assert.equal(r.status, 'unknown');
    assert.equal(r.transferService, undefined);
  });

  test('containerd 2.0 and 1.x pull through CRI; config_path must include our dir', () => {
    assert.equal(checkContainerd(cd('v2.0.5'), { configText: v3('') }).transferService, false);
    const v2cfg = (p: string) =>
      `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "${p}"\n`;
    const ok = checkContainerd(cd('1.7.27'), {
      configText: v2cfg('/etc/containerd/certs.d:/etc/docker/certs.d'),
      hostsDir: '/etc/containerd/certs.d',
    });
    assert.equal(ok.status, 'ok', ok.problems.join('; '));
    const unset = checkContainerd(cd('1.6.20~ds1'), {
      configText: 'version = 2\n',
      hostsDir: '/etc/containerd/certs.d',
    });
    assert.equal(unset.status, 'caveat');
    assert.match(unset.problems[0] ?? '', /config_path is not set/);
    const other = checkContainerd(cd('1.6.20'), {
      configText: v2cfg('/other'),
      hostsDir: '/etc/containerd/certs.d',
    });
    assert.match(other.problems[0] ?? '', /does not include/);
  });

  test('not containerd: unknown', () => {
    const r = checkContainerd({ runtimeName: 'cri-o', runtimeVersion: '1.30.0', runtimeApiVersion: 'v1' });
    assert.equal(r.status, 'unknown');
  });
});
