/**
 * Entry point of the node agent daemon (`kube-prewarm agent`, or
 * `node --import tsx agent/src/daemon/main.ts`). The only place that reads
 * `process.env`; it composes, it does not decide: configuration is validated by
 * config.ts, everything else lives in AgentDaemon.
 */
import { pathToFileURL } from 'node:url';
import pino, { type Logger } from 'pino';
import { isPrewarmError } from '../../../oci/src/errors.js';
import { AgentDaemon } from './agent.js';
import { type AgentConfig, loadConfig } from './config.js';

/** Exit codes of the daemon. */
export const AgentExit = {
  OK: 0,
  FAILURE: 1,
  INVALID_CONFIG: 2,
  /** Killed by a second signal during shutdown. */
  INTERRUPTED: 130,
} as const;

/**
 * Runs the agent with configuration from `env` until SIGTERM or SIGINT, then shuts down
 * within the configured bound. Resolves to the process exit code: 2 for invalid
 * configuration (reported on stderr and in the log), 1 when start-up fails.
 */
export async function runAgent(env: Readonly<Record<string, string | undefined>>): Promise<number> {
  let config: AgentConfig;
  try {
    config = loadConfig(env);
  } catch (err) {
    process.stderr.write(`kube-prewarm agent: ${(err as Error).message}\n`);
    return AgentExit.INVALID_CONFIG;
  }
  const logger: Logger = pino(
    {
      level: config.logLevel,
      base: { component: 'agent', pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['*.password', '*.token', '*.authorization', 'config.redisUrl'], censor: '[hidden]' },
    },
    // Synchronous: the last lines before an exit (or a kill) are the ones that matter.
    pino.destination({ dest: 1, sync: true }),
  );
  const daemon = new AgentDaemon(config, { logger });
  const onFatal = (err: unknown) => {
    logger.fatal({ err }, 'uncaught error; exiting');
    process.exit(AgentExit.FAILURE);
  };
  process.on('uncaughtException', onFatal);
  process.on('unhandledRejection', onFatal);

  let signalled: NodeJS.Signals | undefined;
  const stopped = new Promise<NodeJS.Signals>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      if (signalled) {
        logger.warn({ signal: sig }, 'second signal during shutdown; exiting now');
        process.exit(AgentExit.INTERRUPTED);
      }
      signalled = sig;
      resolve(sig);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });

  try {
    await daemon.start();
  } catch (err) {
    logger.error({ err, code: isPrewarmError(err) ? err.code : undefined }, 'agent failed to start');
    await daemon.close().catch(() => undefined);
    return AgentExit.FAILURE;
  }
  const sig = await stopped;
  logger.info({ signal: sig, timeoutMs: config.shutdownTimeoutMs }, 'shutting down');
  // The bound holds even if a component hangs in close().
  const hard = setTimeout(() => {
    logger.error('shutdown took too long; exiting');
    process.exit(AgentExit.FAILURE);
  }, config.shutdownTimeoutMs + 2_000);
  hard.unref();
  await daemon.close();
  clearTimeout(hard);
  return AgentExit.OK;
}

/**
 * `runAgent` with this process's environment (what the CLI's `agent` command calls).
 * Once the agent has stopped, the process exits within a second even if a library
 * left a handle open (Redis reconnect timers, sockets).
 */
export async function runAgentFromProcess(): Promise<number> {
  const code = await runAgent(process.env);
  setTimeout(() => process.exit(code), 1_000).unref();
  return code;
}

const invokedDirectly =
  process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (invokedDirectly) {
  runAgentFromProcess().then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`kube-prewarm agent: ${String((err as Error)?.stack ?? err)}\n`);
      process.exit(AgentExit.FAILURE);
    },
  );
}
