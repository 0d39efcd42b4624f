/**
 * Keys and certificates the webhook tests make with the system `openssl`:
 * - SNS-style signing certificates with chosen validity dates (`openssl ca -selfsign`
 *   accepts -startdate/-enddate; `req -x509` on OpenSSL 3.0 does not), so a certificate can
 *   be valid at the tests' fixed clock (May 2024) or already expired by then;
 * - a TLS server certificate for 127.0.0.1, for a real HTTPS server standing in for the
 *   SNS endpoints the handler may be allowed to call.
 */
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface KeyAndCert {
  keyPem: string;
  certPem: string;
}

/** A self-signed RSA certificate valid from `start` to `end` (`YYYYMMDDHHMMSSZ`). */
export async function signingCert(
  dir: string,
  name: string,
  start: string,
  end: string,
): Promise<KeyAndCert> {
  const d = (f: string): string => join(dir, `${name}-${f}`);
  await writeFile(d('index.txt'), '');
  await writeFile(d('serial'), '1000\n');
  await writeFile(
    d('ca.cnf'),
    [
      '[ ca ]',
      'default_ca = test_ca',
      '[ test_ca ]',
      `database = ${d('index.txt')}`,
      `new_certs_dir = ${dir}`,
      `serial = ${d('serial')}`,
      'default_md = sha256',
      'policy = any_name',
      'email_in_dn = no',
      'unique_subject = no',
      '[ any_name ]',
      'commonName = supplied',
      '',
    ].join('\n'),
  );
  await run('openssl', [
    'req',
    '-new',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    d('key.pem'),
    '-subj',
    '/CN=sns.amazonaws.com',
    '-out',
    d('req.csr'),
  ]);
  await run('openssl', [
    'ca',
    '-batch',
    '-notext',
    '-config',
    d('ca.cnf'),
    '-selfsign',
    '-keyfile',
    d('key.pem'),
    '-in',
    d('req.csr'),
    '-out',
    d('cert.pem'),
    '-startdate',
    start,
    '-enddate',
    end,
  ]);
  return { keyPem: await readFile(d('key.pem'), 'utf8'), certPem: await readFile(d('cert.pem'), 'utf8') };
}

/** A TLS server certificate for IP 127.0.0.1, valid for a day from now. */
export async function localhostTls(dir: string): Promise<KeyAndCert> {
  const key = join(dir, 'tls-key.pem');
  const cert = join(dir, 'tls-cert.pem');
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    key,
    '-out',
    cert,
    '-days',
    '1',
    '-subj',
    '/CN=127.0.0.1',
    '-addext',
    'subjectAltName=IP:127.0.0.1',
  ]);
  return { keyPem: await readFile(key, 'utf8'), certPem: await readFile(cert, 'utf8') };
}
