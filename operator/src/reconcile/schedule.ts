/**
 * Cron schedules for re-resolving tags where a registry sends no webhooks. Pure over
 * (expression, time zone, last run, now); cron-parser does the calendar arithmetic.
 */
import { CronExpressionParser } from 'cron-parser';

export type ScheduleState =
  | { kind: 'none' }
  | { kind: 'invalid'; message: string }
  | {
      kind: 'valid';
      /** A tick fell in (last, now]: re-resolve now. */
      due: boolean;
      /** The next tick after now. */
      next: number;
    };

/**
 * Evaluates `expression` (5 or 6 fields). `lastRun` is when the schedule last fired (or
 * when the resource was created, so a new resource does not fire at once). An invalid
 * expression or time zone is reported, never thrown: it becomes a condition.
 */
export function evaluateSchedule(
  expression: string | undefined,
  timeZone: string | undefined,
  lastRun: number,
  now: number,
): ScheduleState {
  if (expression === undefined || expression.trim() === '') return { kind: 'none' };
  try {
    const fields = expression.trim().split(/\s+/).length;
    if (fields < 5 || fields > 6) throw new Error(`expected 5 or 6 fields, got ${fields}`);
    const tz = timeZone ?? 'UTC';
    try {
      new Intl.DateTimeFormat('en-US', { timeZone: tz });
    } catch {
      throw new Error(`unknown time zone ${JSON.stringify(tz)}`);
    }
    const afterLast = CronExpressionParser.parse(expression, { currentDate: new Date(lastRun), tz });
    const firstAfterLast = afterLast.next().getTime();
    const fromNow = CronExpressionParser.parse(expression, { currentDate: new Date(now), tz });
    return { kind: 'valid', due: firstAfterLast <= now, next: fromNow.next().getTime() };
  } catch (err) {
    return { kind: 'invalid', message: `schedule ${JSON.stringify(expression)}: ${(err as Error).message}` };
  }
}
