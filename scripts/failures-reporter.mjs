// A node:test reporter that writes only the failures, each with its error, so the end of a
// long run (what CI shows) says what failed and why. scripts/test.sh prints it last.
import { inspect } from 'node:util';

const MAX_LINES = 40;

function describeError(error) {
  const cause = error?.cause ?? error;
  const text =
    cause instanceof Error
      ? (cause.stack ?? `${cause.name}: ${cause.message}`)
      : inspect(cause, { depth: 4 });
  const lines = String(text).split('\n');
  return lines.length > MAX_LINES
    ? [...lines.slice(0, MAX_LINES), `… ${lines.length - MAX_LINES} more lines`]
    : lines;
}

export default async function* failures(source) {
  for await (const event of source) {
    if (event.type !== 'test:fail') continue;
    const { name, file, details } = event.data;
    const error = details?.error;
    // A test cancelled because its suite failed says nothing of its own; the suite's entry does.
    if (error?.failureType === 'cancelledByParent') {
      yield `✗ ${file ?? '?'} › ${name} (cancelled: its suite failed)\n`;
      continue;
    }
    const kind = error?.failureType ? ` [${error.failureType}]` : '';
    yield `✗ ${file ?? '?'} › ${name}${kind}\n${describeError(error)
      .map((l) => `    ${l}`)
      .join('\n')}\n`;
  }
}
