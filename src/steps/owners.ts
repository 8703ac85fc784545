/**
 * steps/owners: which uid owns each live job that is not root's, and the caps
 * on what one capped uid (a user, not an admin) may own at once: jobs, and
 * steps in those jobs. Kept in memory beside the tree's index (filled from the
 * jobs' owner xattrs at recover, changed where a job is made, given, taken
 * back or removed), so a request's check costs a map lookup and a sum over that
 * uid's own jobs, never a read of the tree. No I/O.
 */
import { AgentError } from '../errors.js';

/** What one uid that is neither root nor an operator may own live. */
export interface UserCaps {
  jobs: number;
  steps: number;
  /** Task leaves, in all its steps: each a directory, three inotify watches' share, and a device program when it has its own. */
  tasks: number;
}

export const DEFAULT_USER_CAPS: UserCaps = { jobs: 64, steps: 1024, tasks: 4096 };

export class OwnerIndex {
  /** job -> owner, for jobs not root's. */
  private readonly owner = new Map<string, number>();
  /** uid -> its jobs. */
  private readonly jobs = new Map<number, Set<string>>();

  /** `stepsOf(job)`, `tasksOf(job)`: the job's live steps and task leaves as the tree knows them. */
  constructor(
    private readonly caps: UserCaps,
    private readonly stepsOf: (job: string) => number,
    private readonly tasksOf: (job: string) => number,
  ) {}

  /** Record a job's owner (0: root's, not kept). */
  set(job: string, uid: number): void {
    this.drop(job);
    if (uid === 0) return;
    this.owner.set(job, uid);
    let mine = this.jobs.get(uid);
    if (!mine) this.jobs.set(uid, (mine = new Set()));
    mine.add(job);
  }

  /** The job's owner as recorded (0: root's, or not recorded). */
  get(job: string): number {
    return this.owner.get(job) ?? 0;
  }

  /** The job is gone. */
  drop(job: string): void {
    const uid = this.owner.get(job);
    if (uid === undefined) return;
    this.owner.delete(job);
    const mine = this.jobs.get(uid)!;
    mine.delete(job);
    if (mine.size === 0) this.jobs.delete(uid);
  }

  clear(): void {
    this.owner.clear();
    this.jobs.clear();
  }

  /** Live jobs, steps and task leaves owned by uid. */
  count(uid: number): { jobs: number; steps: number; tasks: number } {
    const mine = this.jobs.get(uid);
    let steps = 0;
    let tasks = 0;
    if (mine) {
      for (const j of mine) {
        steps += this.stepsOf(j);
        tasks += this.tasksOf(j);
      }
    }
    return { jobs: mine?.size ?? 0, steps, tasks };
  }

  /**
   * ENOSPC when uid may not own `newJobs` more jobs, `newSteps` more steps
   * and `newTasks` more task leaves (what one request would make); called
   * before anything is made.
   */
  check(uid: number, newJobs: number, newSteps: number, newTasks = 0): void {
    if (newJobs === 0 && newSteps === 0 && newTasks === 0) return;
    const c = this.count(uid);
    if (newJobs && c.jobs + newJobs > this.caps.jobs) {
      throw new AgentError('ENOSPC', `uid ${uid} owns ${c.jobs} live job(s), the most a user may own (--max-user-jobs ${this.caps.jobs}); destroy one first`);
    }
    if (newSteps && c.steps + newSteps > this.caps.steps) {
      throw new AgentError('ENOSPC', `uid ${uid} owns ${c.steps} live step(s), the most a user may own (--max-user-steps ${this.caps.steps}); destroy one first`);
    }
    if (newTasks && c.tasks + newTasks > this.caps.tasks) {
      throw new AgentError('ENOSPC', `uid ${uid} owns ${c.tasks} live task leaves, the most a user may own (--max-user-tasks ${this.caps.tasks}); destroy a step first`);
    }
  }
}
