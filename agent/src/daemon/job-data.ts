import { isDigest } from '../../../oci/src/digest.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import {
  JOB_SCHEMA_VERSION,
  type PrewarmJobData,
  type PrewarmJobProgress,
  type PrewarmOwnerRef,
} from '../../../oci/src/job-contract.js';
import { type Platform, parsePlatform } from '../../../oci/src/platform.js';
import { type ImageReference, parseReference } from '../../../oci/src/reference.js';
import { phaseRank } from './progress-reporter.js';

/** A job's data, validated, with the reference and platform parsed. */
export interface ParsedJob {
  data: PrewarmJobData;
  ref: ImageReference;
  platform: Platform;
}

function bad(message: string): PrewarmError {
  return new PrewarmError(ErrorCodes.INVALID_CONFIG, `invalid prewarm job: ${message}`);
}

/**
 * Validates a job's data against the contract (oci/src/job-contract.ts) for this node.
 * Throws PW_ERR_INVALID_CONFIG (never retryable: the same data fails the same way) for
 * a newer schema version, a job routed to another node, or malformed fields;
 * PW_ERR_INVALID_REFERENCE for a bad repository, tag or digest.
 */
export function parseJobData(raw: unknown, node: string, defaultPlatform: string): ParsedJob {
  if (typeof raw !== 'object' || raw === null) throw bad('data is not an object');
  const d = raw as Partial<PrewarmJobData> & Record<string, unknown>;
  if (typeof d.v !== 'number') throw bad('no schema version');
  if (d.v > JOB_SCHEMA_VERSION)
    throw bad(`schema v${d.v} is newer than this agent's v${JOB_SCHEMA_VERSION}; upgrade the agent`);
  if (d.node !== node) throw bad(`job is for node ${JSON.stringify(d.node)}, this agent serves ${node}`);
  if (typeof d.repository !== 'string') throw bad('repository missing');
  if (!isDigest(d.digest)) throw bad('digest missing or not sha256:<hex>');
  if (d.mode !== 'cache' && d.mode !== 'unpack') throw bad(`mode ${JSON.stringify(d.mode)}`);
  if (d.tag !== undefined && typeof d.tag !== 'string') throw bad('tag is not a string');
  const owners: PrewarmOwnerRef[] = Array.isArray(d.owners)
    ? d.owners.filter(
        (o): o is PrewarmOwnerRef =>
          typeof o === 'object' && o !== null && typeof (o as PrewarmOwnerRef).uid === 'string',
      )
    : [];
  const parsed = parseReference(`${d.repository}${d.tag ? `:${d.tag}` : ''}@${d.digest}`);
  const platformText = typeof d.platform === 'string' && d.platform !== '' ? d.platform : defaultPlatform;
  const platform = parsePlatform(platformText);
  const data: PrewarmJobData = {
    ...(d as PrewarmJobData),
    owners,
    platform: platformText,
  };
  return { data, ref: parsed, platform };
}

/** A job's stored progress, if it is contract-shaped (used as the reporter's floor). */
export function storedProgress(raw: unknown): PrewarmJobProgress | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const p = raw as Partial<PrewarmJobProgress>;
  if (typeof p.phase !== 'string' || phaseRank(p.phase) < 0) return undefined;
  const n = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  return {
    phase: p.phase,
    bytesDone: n(p.bytesDone),
    bytesTotal: n(p.bytesTotal),
    layersDone: n(p.layersDone),
    layersTotal: n(p.layersTotal),
    ...(typeof p.evictions === 'number' ? { evictions: p.evictions } : {}),
  };
}
