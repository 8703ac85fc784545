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
}

export const DEFAULT_USER_CAPS: UserCaps = { jobs: 64, steps: 1024 };

export class OwnerIndex {
  /** job -> owner, for jobs not root's. */
  private readonly owner = new Map<string, number>();
  /** uid -> its jobs. */
  private readonly jobs = new Map<number, Set<string>>();

  /** `stepsOf(job)`: the job's live steps as the tree's index knows them. */
  constructor(
    private readonly caps: UserCaps,
    private readonly stepsOf: (job: string) => number,
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

  /** Live jobs and steps owned by uid. */
  count(uid: number): { jobs: number; steps: number } {
    const mine = this.jobs.get(uid);
    let steps = 0;
    if (mine) for (const j of mine) steps += this.stepsOf(j);
    return { jobs: mine?.size ?? 0, steps };
  }

  /**
   * ENOSPC when uid may not own `newJobs` more jobs and `newSteps` more steps
   * (what one request would make); called before anything is made.
   */
  check(uid: number, newJobs: number, newSteps: number): void {
    if (newJobs === 0 && newSteps === 0) return;
    const c = this.count(uid);
    if (newJobs && c.jobs + newJobs > this.caps.jobs) {
      throw new AgentError('ENOSPC', `uid ${uid} owns ${c.jobs} live job(s), the most a user may own (--max-user-jobs ${this.caps.jobs}); destroy one first`);
    }
    if (newSteps && c.steps + newSteps > this.caps.steps) {
      throw new AgentError('ENOSPC', `uid ${uid} owns ${c.steps} live step(s), the most a user may own (--max-user-steps ${this.caps.steps}); destroy one first`);
    }
  }
}
