/**
 * rpc/authz: who may do what. Every decision about a peer's authority is made
 * here; the agent gathers the facts (a job's owner, the process behind a pid)
 * and the tree calls back into the JobAccess made here inside the job's lock,
 * so a job cannot change hands between the check and the act. No I/O.
 *
 * The model is Slurm's "users act on their own jobs":
 *  - admin (root and --operator-uid): everything, except moving the agent, its
 *    infinity process, PID 1 or a kernel thread, which nobody may.
 *  - user (--allow-uid): owns the jobs it creates (job.create, or implicitly
 *    step.create / task.place) and acts only on those. It may move only its own
 *    processes (every uid of the process is its uid), named by their process id
 *    (not a thread id), from outside every job, into task leaves (never the step
 *    daemon's slurm/). It may set limits or a device policy only on a level its request
 *    creates, and only device options that narrow: deny rules and the closed
 *    policy, device paths under /dev only; and only limits that narrow: a cpu
 *    weight no higher than the default. It sees only its own jobs in list,
 *    stats and events.
 *  - reader (--read-only-gid): hello, status, list, stats, events, on every job.
 * An admin may name a job's owner (job.create / task.place `owner`), and that
 * is authoritative over a user's claim: a job a user made itself (it is still
 * that user's, see `made`) that an admin now names an owner for, any uid
 * including that user, is taken back (the user's processes killed, the tree
 * removed and made again for the named owner). So no user can deny a job id
 * to the job Slurm will give it, nor pre-make the job Slurm gives it with its
 * own limits and devices in place of the controller's. A job an admin gave to
 * one user and now names for another stays an error: that is the controller
 * contradicting itself.
 */
import { AgentError } from '../errors.js';
import type { Role } from './peercred.js';
import type { DeviceRequest } from '../devices/request.js';
import type { Limits } from '../steps/model.js';
import { TAKE_BACK, type JobAccess } from '../steps/access.js';

/** What a decision needs of a peer (a Peer is one). */
export interface Actor { uid: number; role: Role }


/** Ops anyone connected may send. */
const OPEN_OPS = new Set(['hello', 'status', 'list', 'events']);
/** Ops on one job that only read: readers on any job, users on their own. */
const READ_JOB_OPS = new Set(['stats']);
/** Ops that act on one job: users on their own, admins on any. */
const ACT_JOB_OPS = new Set(['job.create', 'step.create', 'attach', 'task.place', 'signal', 'freeze', 'thaw', 'destroy']);
/** Fields of a request that carry a DeviceRequest. */
export const DEVICE_FIELDS = ['devices', 'jobDevices', 'stepDevices'] as const;
/** Fields of a request that carry Limits. */
const LIMIT_FIELDS = ['limits', 'jobLimits', 'stepLimits'] as const;
/** cpu.weight of a new cgroup (the kernel's default): the most a user may ask for. */
export const CPU_WEIGHT_DEFAULT = 100;

function eperm(message: string): AgentError {
  return new AgentError('EPERM', message);
}

/**
 * May this peer send this request at all, with these arguments? Checks the
 * op against the role, `owner` (admins only) and the device options. Anything
 * this module does not know (a new op) is for admins only.
 */
export function admitRequest(a: Actor, req: { op: string } & Record<string, unknown>): void {
  if (OPEN_OPS.has(req.op)) return;
  if (a.role === 'admin') return;
  if (a.role === 'reader') {
    if (READ_JOB_OPS.has(req.op)) return;
    throw eperm(`uid ${a.uid} may only use read-only requests; ${req.op} needs an allowed uid`);
  }
  if (!READ_JOB_OPS.has(req.op) && !ACT_JOB_OPS.has(req.op)) throw eperm(`${req.op} needs root or an operator (uid ${a.uid} may act on its own jobs only)`);
  if (req.owner !== undefined && req.owner !== a.uid) throw eperm(`only root or an operator may name a job's owner (uid ${a.uid} asked for owner ${String(req.owner)})`);
  for (const f of DEVICE_FIELDS) if (req[f] !== undefined) checkNarrowing(a, req[f] as DeviceRequest);
  for (const f of LIMIT_FIELDS) if (req[f] !== undefined) checkLimitsNarrow(a, f, req[f] as Limits);
  // slurm/ holds the step daemon: the step's limits, device program, signals and freeze do not reach it.
  if (req.leaf === 'slurm') throw eperm(`the step daemon's leaf (slurm/) is for root or an operator: the step's limits, devices and signals do not reach it (uid ${a.uid} places tasks)`);
}

/**
 * Device options a user may send: they only narrow. An allow rule, a gres
 * allocation or the open policy could open what the agent's default or an
 * admin's policy closes, so they are for admins; so is a device path outside
 * /dev, refused before anything looks at it (the agent runs as root: a stat of
 * the path would tell the user whether a file it cannot see exists).
 */
function checkNarrowing(a: Actor, d: DeviceRequest): void {
  const who = `uid ${a.uid} may only narrow device access`;
  if (d.allow?.length) throw eperm(`${who}: allow rules need root or an operator`);
  if (d.gres?.length) throw eperm(`${who}: gres allocations need root or an operator`);
  if (d.policy === 'open') throw eperm(`${who}: the open policy needs root or an operator`);
  for (const text of d.deny ?? []) {
    const head = text.trim().split(/\s+/)[0] ?? '';
    if (head.startsWith('/') && !underDev(head)) throw eperm(`device rule ${JSON.stringify(text)}: uid ${a.uid} may name device paths under /dev only`);
  }
}

/**
 * Limits a user may send: those that only restrict what a new level gets
 * (cpuset, memory, swap, pids, cpu.max all start unlimited) are its own to
 * set. A cpu weight is shared out among siblings: above the default a user's
 * job would take CPU from the jobs beside it (Slurm's, at the default), so
 * it may only be lowered.
 */
function checkLimitsNarrow(a: Actor, field: string, l: Limits): void {
  if (l.cpuWeight !== undefined && l.cpuWeight > CPU_WEIGHT_DEFAULT) {
    throw eperm(`${field}.cpuWeight ${l.cpuWeight}: uid ${a.uid} may only lower a cpu weight (at most ${CPU_WEIGHT_DEFAULT}, the default); a higher one takes CPU from the jobs beside it and needs root or an operator`);
  }
}

/** "/dev/x..." with no "." or ".." segment (decided on the text alone). */
export function underDev(p: string): boolean {
  const parts = p.split('/');
  return p.startsWith('/dev/') && parts.length > 2 && parts.slice(2).every((s) => s !== '' && s !== '.' && s !== '..');
}

/** May this peer see a job owned by `owner` (null: no such job) in list, stats and events? */
export function maySee(a: Actor, owner: number | null): boolean {
  if (a.role !== 'user') return true;
  return owner === a.uid;
}

/** The JobAccess for one request (see the header). `requestedOwner` is job.create's / task.place's `owner`. */
export function jobAccess(a: Actor, requestedOwner?: number, moveChecks?: { beforeMove: (pid: number) => void; afterMove: (pid: number) => void }): JobAccess {
  const owner = requestedOwner ?? a.uid;
  return {
    owner,
    checks: a.role === 'user' || (a.role === 'admin' && requestedOwner !== undefined),
    claims: a.role === 'user',
    capped: a.role === 'user',
    reclaims: a.role === 'admin' && requestedOwner !== undefined,
    admit(job, current, madeBy) {
      if (a.role === 'user') {
        if (current !== a.uid) throw eperm(`job ${job} belongs to uid ${current}; uid ${a.uid} may act on its own jobs only`);
        return null;
      }
      if (a.role === 'reader' || requestedOwner === undefined) return null;
      // A user's own claim on an id yields to the controller, even one naming that same user: the
      // job is made afresh with what the controller asks, not the user's limits and devices kept.
      if (current !== 0 && madeBy() === current) return TAKE_BACK;
      if (current === requestedOwner) return null;
      if (current === 0 || current === a.uid) return requestedOwner;
      // An admin's earlier word does not yield.
      throw eperm(`job ${job} already belongs to uid ${current}, given by root or an operator; it cannot be given to uid ${requestedOwner} (destroy it first)`);
    },
    // kill(2)'s own rule: a user signals a process whose real or saved uid is its uid (not the step daemon, not root's helpers).
    ...(a.role === 'admin'
      ? {}
      : {
          mayKill(pids: readonly number[], uidsOf: (pid: number) => { real: number; saved: number } | null) {
            for (const pid of pids) {
              const u = uidsOf(pid);
              if (u !== null && u.real !== a.uid && u.saved !== a.uid) throw eperm(`pid ${pid} in the job is not a process of uid ${a.uid} (neither its real nor its saved uid); uid ${a.uid} may kill or signal only its own processes (root or an operator may destroy the job)`);
            }
          },
        }),
    reconfigure(what) {
      if (a.role !== 'admin') throw eperm(`${what} exists: changing its limits or device policy needs root or an operator (uid ${a.uid} may set them only when its request creates it)`);
    },
    ...moveChecks,
  };
}

/** The facts about a process that a move is decided on. */
export interface ProcessFacts {
  pid: number;
  tgid: number;
  name: string;
  uids: { real: number; effective: number; saved: number; fs: number };
  kernelThread: boolean;
  /** The job it is in now; null outside every job; 'scope' in the scope but in no job. */
  job: string | null | 'scope';
  /** Its cgroup below the scope ("job_5/step_0/user/task_0"); null outside the scope. */
  at: string | null;
}

export interface Protected { agent: number; infinity: number }

/**
 * May this peer move this process into job `job`, to `target` (its leaf below
 * the scope, as ProcessFacts.at)? Throws EPERM naming why not.
 */
export function checkProcess(a: Actor, p: ProcessFacts, job: string, target: string, prot: Protected): void {
  const what = `pid ${p.pid}`;
  // Checked first for a non-admin: of a process not its own (which hidepid may hide from it) it learns that alone,
  // not whose it is nor what it is (the agent, a kernel thread and its name, a thread of which process).
  const { real, effective, saved, fs } = p.uids;
  if (a.role !== 'admin' && ![real, effective, saved, fs].every((u) => u === a.uid)) {
    throw eperm(`${what} is not a process of uid ${a.uid}; uid ${a.uid} may move only its own processes (every one of their uids its own)`);
  }
  if (p.tgid === 1) throw eperm(`${what} is PID 1${p.tgid !== p.pid ? ` (a thread of it)` : ''} and cannot be moved`);
  if (p.tgid === prot.agent) throw eperm(`${what} is cgstepd itself${p.tgid !== p.pid ? ` (one of its threads)` : ''} and cannot be moved`);
  if (p.tgid === prot.infinity) throw eperm(`${what} is the scope's infinity process and cannot be moved`);
  if (p.kernelThread) throw eperm(`${what} is a kernel thread (${p.name}) and cannot be moved`);
  // The kernel moves the whole thread group when given any of its thread ids.
  if (p.tgid !== p.pid) throw eperm(`${what} is a thread of process ${p.tgid}; name the process (its thread-group id) to move it`);
  if (a.role === 'admin') return;
  // Inside a job, each step and leaf may carry limits and devices root set there (a step's memory, a task's GPU):
  // a user's move would take the process out of them. Placing it again where it is changes nothing.
  if (p.job !== null && p.at !== target) {
    const where = p.job === 'scope' ? "the agent's scope" : `job ${p.job} (${p.at})`;
    throw eperm(`${what} is in ${where}; uid ${a.uid} may move a process into a job only from outside every job (moves within and between jobs are for root or an operator)`);
  }
}
