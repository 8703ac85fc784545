/**
 * steps/adopt: after a restart, check that every adopted job, step and user/
 * is what the layout needs, and repair it or say why not.
 *
 * An agent killed in the middle of a create can leave a directory made but
 * not finished: a job or step whose cgroup.subtree_control was never written
 * (its children then lack every controller), a step without slurm/ or user/.
 * A retried create repairs that itself; this check finds the ones nobody
 * retries. It reads off the event loop (libuv's thread pool) and runs after
 * the agent answers, so the time to ready does not grow with the tree; each
 * repair runs under the job's lock, after looking again, so it never races a
 * request on that job. What cannot be repaired (a controller the parent lacks,
 * a process sitting in an inner directory) is kept for `status` to report.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import { childDirsAsync, enableControllers, exists, makeDir, readOptionalAsync } from '../cgroupfs/index.js';
import { SLURM_LEAF, USER_DIR } from './names.js';

export interface LayoutIssue { job: string; dir: string; problem: string; error?: string }

export interface LayoutReport {
  /** When the last check finished (null while it runs). */
  at: string | null;
  /** Inner directories (job, step, user/) whose controllers were checked. */
  levels: number;
  repaired: LayoutIssue[];
  failed: LayoutIssue[];
}

/** Kept in memory at most (a tree in a very bad state still gives a bounded report). */
const MAX_KEPT = 1000;

export interface LayoutCheckOptions {
  /** The controllers every inner level must pass down (the scope's), or undefined to read each directory's own. */
  wanted: () => string[] | undefined;
  /** Run fn under the job's lock. */
  locked: <T>(job: string, fn: () => T) => Promise<T>;
  log: Logger;
}

const words = (s: string) => s.split(/\s+/).filter(Boolean);

export class LayoutCheck {
  report: LayoutReport = { at: null, levels: 0, repaired: [], failed: [] };

  constructor(private readonly o: LayoutCheckOptions) {}

  start(): void {
    this.report = { at: null, levels: 0, repaired: [], failed: [] };
  }

  finish(): LayoutReport {
    this.report.at = new Date().toISOString();
    const { levels, repaired, failed } = this.report;
    if (repaired.length || failed.length) this.o.log.warn({ levels, repaired: repaired.length, failed }, 'layout check after adopting the tree: half-made directories found');
    return this.report;
  }

  /** A job, step or user/ directory: its cgroup.subtree_control passes down every wanted controller. */
  async checkInner(job: string, dir: string): Promise<void> {
    const text = await readOptionalAsync(path.join(dir, 'cgroup.subtree_control'));
    if (text === null) return; // removed since it was listed
    this.report.levels++;
    const wanted = this.o.wanted() ?? words((await readOptionalAsync(path.join(dir, 'cgroup.controllers'))) ?? '');
    const on = words(text);
    const missing = wanted.filter((c) => !on.includes(c));
    if (missing.length === 0) return;
    await this.repair(job, dir, `cgroup.subtree_control lacks ${missing.join(' ')}`, () => {
      if (!exists(dir)) return false;
      const r = enableControllers(dir, wanted);
      if (r.missing.length) throw new Error(`its parent does not pass down ${r.missing.join(' ')}`);
      return true;
    });
  }

  /** A step: slurm/ and user/ exist, the step and its user/ pass controllers down. Returns user/'s children. */
  async checkStep(job: string, stepDir: string): Promise<string[]> {
    const user = path.join(stepDir, USER_DIR);
    const slurm = path.join(stepDir, SLURM_LEAF);
    const [children, tasks] = await Promise.all([childDirsAsync(stepDir), childDirsAsync(user)]);
    await this.checkInner(job, stepDir);
    if (!children.includes(SLURM_LEAF)) await this.repair(job, slurm, 'missing', () => exists(stepDir) && makeDir(slurm));
    if (children.includes(USER_DIR)) await this.checkInner(job, user);
    else {
      this.report.levels++;
      await this.repair(job, user, 'missing', () => {
        if (!exists(stepDir) || !makeDir(user)) return false;
        const wanted = this.o.wanted();
        if (wanted?.length) enableControllers(user, wanted);
        return true;
      });
    }
    return tasks;
  }

  /** fix() under the job's lock: true when it repaired, false when there was nothing left to do; a throw is kept as failed. */
  private async repair(job: string, dir: string, problem: string, fix: () => boolean): Promise<void> {
    await this.o.locked(job, () => {
      try {
        if (fix()) keep(this.report.repaired, { job, dir, problem });
      } catch (err) {
        // Logged whole here; the report keeps the words `status` shows.
        this.o.log.warn({ err, job, dir, problem }, 'a half-made directory found after adopting the tree could not be repaired');
        keep(this.report.failed, { job, dir, problem, error: (err as Error).message });
      }
    });
  }

  /** What could not be repaired, for jobs that still exist, in words for `status`. */
  problems(jobExists: (job: string) => boolean): string[] {
    return this.report.failed.filter((f) => jobExists(f.job)).map((f) => `${f.dir}: ${f.problem}, not repaired: ${f.error}`);
  }
}

function keep(list: LayoutIssue[], issue: LayoutIssue): void {
  if (list.length < MAX_KEPT) list.push(issue);
}
