/**
 * Reading the webhook configuration file (YAML or JSON, mounted from a Secret). The file
 * holds every secret and token, so nothing here ever puts its content into an error:
 * YAML parse errors normally quote the offending line, which may be a secret; these
 * errors name only the line and column.
 */
import { parseDocument } from 'yaml';
import { checkKnownKeys, invalidConfig } from './config.js';
import { WEBHOOK_OPTION_KEYS, type WebhookOptions } from './handler.js';

/**
 * Parses the file's text into WebhookOptions. Throws PW_ERR_INVALID_CONFIG (without any
 * of the file's content) when it is not YAML/JSON, not a mapping, or has a key
 * WebhookOptions does not know. The options themselves are validated by
 * `createWebhookHandler`.
 */
export function parseWebhookOptionsFile(text: string): WebhookOptions {
  // prettyErrors computes linePos; its message (which quotes the line) is never used.
  const doc = parseDocument(text);
  const err = doc.errors[0];
  if (err !== undefined) {
    const at = err.linePos?.[0];
    throw invalidConfig(
      `the configuration file is not valid YAML or JSON${at ? ` (line ${at.line}, column ${at.col})` : ''}: ${err.code}`,
    );
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 });
  } catch {
    throw invalidConfig('the configuration file could not be read as YAML (aliases or tags)');
  }
  checkKnownKeys(value, WEBHOOK_OPTION_KEYS, 'options');
  return value as WebhookOptions;
}
