/**
 * steps/access: what the tree asks of a request's authority, inside the job's
 * lock, so that a job cannot change hands between the check and the act. The
 * tree defines the questions; rpc/authz answers them for a peer. Nothing here
 * knows who the peer is.
 */

/** What the tree asks of a request, inside the job's lock. */
export interface JobAccess {
  /** The owner recorded on a job this request creates. */
  readonly owner: number;
  /** false when admit() would let anything through (an admin naming no owner, a reader): the owner need not be read. */
  readonly checks: boolean;
  /** true when a job this request creates is the requester's own claim (a user's), not given by an admin. */
  readonly claims: boolean;
  /** true when what this request makes counts against the per-user caps on live jobs and steps (a user's; never an admin's). */
  readonly capped: boolean;
  /**
   * true when this request overrules a step a user made for itself (an
   * admin's naming the job's owner): that step is taken back, so the request's
   * step limits and devices are in force rather than the user's.
   */
  readonly reclaims: boolean;
  /**
   * May the peer act on this existing job, owned by `owner`? Throws EPERM when
   * not; returns the owner to record when it is to change, TAKE_BACK when the
   * job is a user's own claim that an admin's request overrules, else null.
   * `madeBy` reads which user made the job itself (null: an admin made it), only
   * when it matters.
   */
  admit(job: string, owner: number, madeBy: () => number | null): number | null | typeof TAKE_BACK;
  /** Throws EPERM when the peer may not change the limits or device policy of an existing level. */
  reconfigure(what: string): void;
  /**
   * Throws EPERM unless the peer may kill or signal every one of these
   * processes (absent for admins). `uidsOf` reads a process's real and saved
   * uids, null once it is gone.
   */
  mayKill?(pids: readonly number[], uidsOf: (pid: number) => { real: number; saved: number } | null): void;
  /** Throws when the process checked for this request at `pid` is no longer the one there (just before its move). */
  beforeMove?(pid: number): void;
  /** The same, just after the move: throws when the write may have moved another process under that pid. */
  afterMove?(pid: number): void;
}

/** admit()'s answer for a job id an admin takes back from the user that made it (see `reclaims` for steps). */
export const TAKE_BACK = 'take-back';
