/**
 * steps/tree: jobs, steps and tasks in the node scope: create, constrain,
 * attach, account, signal, freeze, destroy, list, and recover after a restart.
 *
 * The tree on disk is the only state: every answer is read from it, and a
 * restarted agent rebuilds its watchers and counters by walking it. Operations
 * on one job are serialised (KeyedLock); different jobs run in parallel. Each
 * request that changes the tree is all or nothing: it plans every level
 * (limits, device programs, the pid) before the first mkdir, and what it made
 * or replaced is taken back if the kernel still refuses part-way (undo.ts).
 * Must not talk to systemd or the socket, and reaches the kernel only through
 * cgroupfs and the DevicePort it is given.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import {
  childDirs,
  controllersOf,
  enableControllers,
  enabledIn,
  exists,
  getXattr,
  isPopulated,
  populatedOf,
  killAll,
  makeDir,
  moveProcess,
  procsOf,
  procsBelow,
  procsByDir,
  procsRecursive,
  readStats,
  removeDir,
  removeTree,
  removeXattr,
  cgroupOfPid,
  moveBack,
  requestFrozen,
  setXattr,
  signalPids,
  waitFrozen,
  type Pause,
  waitUnpopulated,
  writeText,
  type CgroupStats,
  readLimitFigures,
  readUsage,
  type CgroupLimits,
  type CgroupUsage,
} from '../cgroupfs/index.js';
import type { CgroupConf } from '../config/cgroupconf.js';
import { AgentError, KernelError } from '../errors.js';
import type { DeviceRequest } from '../devices/request.js';
import { TAKE_BACK, type JobAccess } from './access.js';
import type { Limits } from './model.js';
import { LayoutCheck, type LayoutReport } from './adopt.js';
import { TreeWatcher } from './events.js';
import { checkMoved, requireMovable, uidsOf } from '../proc/index.js';
import { planLimits, readLimits, writeLimits, type LimitPlan } from './limits.js';
import { KeyedLock } from './lock.js';
import { DEFAULT_USER_CAPS, OwnerIndex, type UserCaps } from './owners.js';
import { type Leaf, SLURM_LEAF, TreePaths, USER_DIR, parseJobName, parseStepName, parseTaskName } from './names.js';
import { resolveSignal } from './signals.js';
import { Undo } from './undo.js';

export type DeviceLevel = 'job' | 'step' | 'task';

/** The job directory's owner (decimal uid); a job without it belongs to root. */
export const OWNER_XATTR = 'trusted.cgstep.owner';
/**
 * On a job or step a user (not an admin) made for itself: that uid. On a job it is written before the
 * owner, so a crash between leaves a root's job; on a step, just after its mkdir.
 */
export const MADE_BY_XATTR = 'trusted.cgstep.made-by';
/**
 * On a step's user/ an admin froze (a suspend): its owner may not thaw it. On
 * a job an admin froze whole: steps made in it until an admin thaws it start
 * frozen and marked (freezeIfSuspended).
 */
export const FROZEN_BY_ADMIN_XATTR = 'trusted.cgstep.frozen-by-admin';

/** A device request checked and compiled for one level, on no directory yet (opaque to the tree). */
export interface PreparedDevices {
  readonly level: DeviceLevel;
}

/** How the tree asks for a device policy on a directory (implemented by src/devices). */
export interface DevicePort {
  /** false for a backend that accepts rules without enforcing them (devices/none). */
  readonly enforcing: boolean;
  /** Everything about a request that can be checked without the kernel (rules, gres, the program). */
  prepare(req: DeviceRequest, level: DeviceLevel): PreparedDevices;
  /**
   * The job-level policy a new job gets when its request names none: the node's
   * default with `gres` (the allocation its first request names) allowed; null
   * when the default confines nothing.
   */
  jobDefault(gres: readonly string[] | undefined): DeviceRequest | null;
  /** EPERM unless every gres device `p` allocates is allowed by each ancestor (a directory's policy, or one about to be put on it). */
  checkWithin(p: PreparedDevices, ancestors: readonly (string | PreparedDevices)[]): void;
  /**
   * The job-level request that widens the policy on `dir` (a job) to allow the
   * gres `req` allocates too: the node's default with the gres units it allows
   * now and req's. null when it allows them already or confines nothing.
   */
  widen(dir: string, req: DeviceRequest): DeviceRequest | null;
  /**
   * Put the policy on dir. With `restorable` (dir existed before this request)
   * the reply carries how to put the previous policy back (undo) and how to
   * let it go once the request has succeeded (done).
   */
  apply(dir: string, p: PreparedDevices, restorable: boolean): { progId: number; undo?: () => void; done?: () => void } | null;
  describe(dir: string): { progIds: number[]; policy?: unknown } | null;
}

/** A level (job, step user/, task leaf) as a request will leave it, checked before anything is made. */
interface LevelPlan {
  dir: string;
  level: DeviceLevel;
  limits: LimitPlan | null;
  devices: PreparedDevices | null;
  /** Whether dir existed when planned, where the planner looked (planJob). */
  existed?: boolean;
}

/** One process and the leaf it goes into. */
export interface Move {
  pid: number;
  leaf: Leaf;
}

/** task.place: leaves, their processes, and what to make on the way to them (job*, step* only when this request makes that level). */
export interface Placement {
  job: string;
  step: string;
  moves: Move[];
  jobLimits?: Limits;
  jobDevices?: DeviceRequest;
  stepLimits?: Limits;
  stepDevices?: DeviceRequest;
  devices?: DeviceRequest;
}

export interface TreeOptions {
  scopeDir: string;
  mountPoint: string;
  conf: CgroupConf;
  totalRam: number;
  ignoreMissingControllers: boolean;
  /** How long destroy/freeze wait on the kernel. */
  waitTimeoutMs: number;
  log: Logger;
  devices?: DevicePort;
  /** Pids no request may move: the agent, PID 1, the infinity process. */
  protectedPids: () => number[];
  /** How usage is read (the accounting backend); cgroupfs stats by default. */
  accounting?: { read(dir: string): CgroupStats };
  /** Read /proc/PID/cgroup back after each move (the cgroup.procs write's own result is the check otherwise). */
  verifyMoves?: boolean;
  /** The controllers enabled in the scope's subtree_control, if known (a fast path for new dirs). */
  scopeControllers?: () => string[];
  /** What one capped uid (a user's request) may own live; DEFAULT_USER_CAPS when absent. */
  userCaps?: UserCaps;
}

/** The device programs a request attached, by level, for its log line ({} when none). */
function deviceProgramsOf(levels: Record<string, { deviceProgram?: number }>): { devicePrograms?: Record<string, number> } {
  const out: Record<string, number> = {};
  for (const [level, r] of Object.entries(levels)) if (r.deviceProgram !== undefined) out[level] = r.deviceProgram;
  return Object.keys(out).length ? { devicePrograms: out } : {};
}

/** Limits and live figures of a job (its own directory) or a step (its user/, where step limits are written). */
export interface LevelFigures { limits: CgroupLimits; usage: CgroupUsage }
export interface StepInfo extends LevelFigures { step: string; path: string; populated: boolean; tasks: string[]; frozen: boolean | null }

/**
 * How long a request that walks a whole job (list, stats, signal, freeze,
 * destroy) works before letting other work run, ms: a user's job may have
 * 1,024 steps and 4,096 task leaves, seconds of file reads and rmdirs.
 */
const SLICE_MS = 2;

/** Processes whose owners one mayKill call reads (a /proc read each) between pauses. */
const KILL_CHECK_CHUNK = 256;

/** A function to await between pieces of work: it gives the event loop back once SLICE_MS have passed. */
function slicer(): Pause {
  let since = performance.now();
  return async () => {
    if (performance.now() - since < SLICE_MS) return;
    await new Promise((r) => setImmediate(r));
    since = performance.now();
  };
}

/** Numbered steps in order, then the named ones (batch, extern, interactive). */
function compareSteps(a: string, b: string): number {
  const na = /^\d+$/.test(a);
  const nb = /^\d+$/.test(b);
  if (na && nb) return Number(a) - Number(b);
  if (na !== nb) return na ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}
export interface JobInfo extends LevelFigures { job: string; path: string; populated: boolean; steps: StepInfo[] }

export class StepTree {
  readonly paths: TreePaths;
  readonly watcher: TreeWatcher;
  /** The job (or one step of it) whose take-back is being rehearsed: planning treats it as gone (see change). */
  private assumedGone: { job: string; step?: string } | null = null;
  private readonly lock = new KeyedLock();
  private closed = false;
  /** The check of adopted directories after a restart, and what it found. */
  readonly layout: LayoutCheck;
  /**
   * job -> its steps; a cache of the directories, rebuilt by recover(). Arrays:
   * a job has few live steps, and a Set costs about 300 bytes (3 MB at 10,000 jobs).
   */
  private readonly index = new Map<string, string[]>();
  /** The owners of the indexed jobs that are not root's, for the per-user caps. */
  readonly owners: OwnerIndex;
  /** Adopted jobs whose owner countOwners() has not read yet. */
  private readonly ownersPending = new Set<string>();
  /** Adopted jobs whose task leaves watchAdopted has not watched (so counted) yet. */
  private readonly leavesPending = new Set<string>();

  private readonly readStats: (dir: string) => CgroupStats;

  /** Is the memory controller on below the scope (memory.events exists in steps)? */
  private get memory(): boolean {
    return this.opts.scopeControllers?.().includes('memory') ?? false;
  }

  constructor(private readonly opts: TreeOptions) {
    this.paths = new TreePaths(opts.scopeDir);
    this.watcher = new TreeWatcher(this.paths, this.opts.log);
    this.layout = new LayoutCheck({ wanted: () => opts.scopeControllers?.(), locked: (job, fn) => this.lock.run(job, fn), log: opts.log });
    this.readStats = opts.accounting ? (d) => opts.accounting!.read(d) : readStats;
    this.owners = new OwnerIndex(opts.userCaps ?? DEFAULT_USER_CAPS, (job) => this.index.get(job)?.length ?? 0, (job) => this.watcher.taskCount(job));
  }

  get jobCount(): number {
    return this.index.size;
  }

  /** The jobs and steps the agent knows (its index, kept by create/destroy/recover), without reading the tree. */
  *known(): Iterable<[job: string, steps: string[]]> {
    for (const [job, steps] of this.index) yield [job, [...steps]];
  }

  get stepCount(): number {
    let n = 0;
    for (const s of this.index.values()) n += s.length;
    return n;
  }

  /**
   * Rebuild the index of jobs and steps from the tree (agent start and
   * restart). Watching them is left to watchAdopted(), which the agent runs
   * once it answers: at 10,000 steps the watches (a read and an inotify watch
   * per directory) and the listing of every step's user/ would otherwise
   * triple the time to ready.
   */
  recover(): { jobs: number; steps: number } {
    let steps = 0;
    for (const jn of childDirs(this.opts.scopeDir)) {
      const job = parseJobName(jn);
      if (job === null) continue;
      const list: string[] = [];
      this.index.set(job, list);
      this.ownersPending.add(job);
      this.leavesPending.add(job);
      for (const sn of childDirs(this.paths.job(job))) {
        const step = parseStepName(sn);
        if (step === null) continue;
        list.push(step);
        steps++;
      }
    }
    return { jobs: this.index.size, steps };
  }

  /**
   * Watch every adopted job, step and task leaf (after recover) and check
   * that each job, step and user/ is whole (steps/adopt), yielding to
   * requests as it goes and reading off the event loop. No freeze watch:
   * freeze and thaw requests add it. A directory that empties before it is
   * watched gives no *.empty event, as one that emptied while the agent was
   * down.
   */
  async watchAdopted(): Promise<{ tasks: number; layout: LayoutReport }> {
    let tasks = 0;
    this.layout.start();
    for (const [job, steps] of [...this.index]) {
      if (this.closed) break;
      this.watcher.watchDir(this.paths.job(job), { job });
      await this.layout.checkInner(job, this.paths.job(job));
      for (const step of [...steps]) {
        if (this.closed) break;
        const dir = this.paths.step(job, step);
        this.watcher.watchDir(dir, { job, step }, this.memory);
        const user = this.paths.user(job, step);
        for (const tn of await this.layout.checkStep(job, dir)) {
          const task = parseTaskName(tn);
          if (task === null) continue;
          tasks++;
          this.watcher.watchDir(path.join(user, tn), { job, step, task: String(task) });
        }
      }
      this.leavesPending.delete(job);
    }
    this.leavesPending.clear(); // stopped early (closing): nothing will count them
    return { tasks, layout: this.layout.finish() };
  }

  /**
   * Read the adopted jobs' owners for the per-user caps (after recover, once
   * the agent answers: at 10,000 jobs these reads are a few hundred ms), giving
   * the event loop back every SLICE_MS. Until it ends a capped request is
   * refused with EBUSY rather than counted short.
   */
  async countOwners(): Promise<void> {
    const pause = slicer();
    for (const job of [...this.ownersPending]) {
      if (this.closed) return;
      if (!this.ownersPending.delete(job)) continue; // removed meanwhile
      this.owners.set(job, this.ownerOf(job) ?? 0);
      await pause();
    }
  }

  /** Adopted directories the layout check could not repair, in words (for status's degraded). */
  layoutProblems(): string[] {
    return this.layout.problems((job) => this.index.has(job));
  }

  /** Forget everything and read the tree again (after the scope was re-created). */
  async rescan(): Promise<ReturnType<StepTree['recover']> & Awaited<ReturnType<StepTree['watchAdopted']>>> {
    await this.watcher.close();
    this.index.clear();
    this.owners.clear();
    this.ownersPending.clear();
    this.leavesPending.clear();
    const r = this.recover();
    await this.countOwners();
    return { ...r, ...(await this.watchAdopted()) };
  }

  /**
   * mkdir a directory that will have children and pass every controller it has
   * down to them. Also done for an existing directory: an agent killed between
   * mkdir and the subtree_control write leaves it half made, and a retry repairs it.
   */
  private makeInner(u: Undo, dir: string): boolean {
    const made = this.makeDir(u, dir);
    if (made && this.fastEnable(dir)) return true;
    enableControllers(dir, controllersOf(dir));
    return made;
  }

  /** mkdir, taken back (rmdir) if the request fails later. */
  private makeDir(u: Undo, dir: string): boolean {
    const made = makeDir(dir);
    if (made) u.add(`rmdir ${dir}`, () => removeDir(dir));
    return made;
  }

  /**
   * A directory just made under ours has exactly the controllers its parent
   * enabled, which for this tree is the scope's set: write it without reading
   * cgroup.controllers and cgroup.subtree_control back. False (and nothing
   * written) when that set is unknown or the kernel refuses; the caller then
   * takes the reading path, which reports precisely.
   */
  private fastEnable(dir: string): boolean {
    const set = this.opts.scopeControllers?.();
    if (!set) return false;
    if (set.length === 0) return true;
    try {
      writeText(path.join(dir, 'cgroup.subtree_control'), set.map((c) => `+${c}`).join(' '));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * The controllers dir has, or will have once made: every directory this tree
   * makes passes all of its controllers down, so a new one gets what its
   * nearest existing ancestor enabled.
   */
  private controllersFor(dir: string): Set<string> {
    let d = dir;
    while (!exists(d) && d !== this.opts.scopeDir && path.dirname(d) !== d) d = path.dirname(d);
    return new Set(d === dir ? controllersOf(dir) : enabledIn(d));
  }

  /** Check one level's limits and devices; touches nothing. */
  private planLevel(dir: string, level: DeviceLevel, limits: Limits | undefined, devices: DeviceRequest | undefined): LevelPlan {
    const lp = limits ? planLimits(limits, this.controllersFor(dir), this.opts.conf, this.opts.totalRam, this.opts.ignoreMissingControllers) : null;
    let dp: PreparedDevices | null = null;
    if (devices) {
      if (!this.opts.devices) throw new AgentError('ENOTSUP', 'device control is not available on this agent (see `cgstep status`)');
      dp = this.opts.devices.prepare(devices, level);
    }
    return { dir, level, limits: lp, devices: dp };
  }

  /**
   * The job level of a request. A job this request makes gets `limits` and
   * `devices`, or when it names no devices the node's default with
   * `allocation` (the gres its first request names); an existing job keeps
   * what it has unless `update` (true: limits and devices; 'limits': those only).
   */
  private planJob(job: string, limits: Limits | undefined, devices: DeviceRequest | undefined, allocation: readonly string[] | undefined, update: boolean | 'limits'): LevelPlan {
    const dir = this.paths.job(job);
    if (this.jobThere(job)) return { ...this.planLevel(dir, 'job', update ? limits : undefined, update === true ? devices : undefined), existed: true };
    return { ...this.planLevel(dir, 'job', limits, devices ?? this.opts.devices?.jobDefault(allocation) ?? undefined), existed: false };
  }

  /** A step's user/ level: limits and devices (only where the step is new unless `update`). */
  private planStep(job: string, step: string, limits: Limits | undefined, devices: DeviceRequest | undefined, jobPlan: LevelPlan, update: boolean): LevelPlan {
    const dir = this.paths.user(job, step);
    const jobThere = jobPlan.existed ?? exists(jobPlan.dir);
    // No job, no step: one stat fewer for a placement that makes both.
    const p = jobThere && this.stepThere(job, step) && !update ? this.planLevel(dir, 'step', undefined, undefined) : this.planLevel(dir, 'step', limits, devices);
    // A step may narrow its job's allocation (the one about to be put in force, else the job's), never widen it.
    const parent = jobPlan.devices ?? (jobThere ? jobPlan.dir : null);
    if (p.devices && parent) this.opts.devices!.checkWithin(p.devices, [parent]);
    return p;
  }

  /** Put a planned level in force: limits, then the device policy. `fresh`: made by this request. */
  private applyLevel(u: Undo, p: LevelPlan, fresh: boolean) {
    if (p.limits) writeLimits(p.dir, p.limits, fresh ? null : u);
    let progId: number | undefined;
    if (p.devices) {
      const r = this.opts.devices!.apply(p.dir, p.devices, !fresh);
      if (r?.undo) u.add(`device policy of ${p.dir} back`, r.undo);
      if (r?.done) u.onCommit(r.done);
      progId = r?.progId;
    }
    return {
      written: p.limits?.writes.map((w) => w.file) ?? [],
      skipped: p.limits?.skipped ?? [],
      ...(progId !== undefined ? { deviceProgram: progId } : {}),
      ...(p.devices && !this.opts.devices!.enforcing ? { devicesIgnored: 'device rules are not enforced: the devices/none backend is active (see cgstep status)' } : {}),
    };
  }

  /**
   * The job's owner from memory (no xattr read: each event is checked for
   * every subscriber); from its xattr for a job not in the index, or while the
   * owners are still being read after a start.
   */
  knownOwnerOf(job: string): number | null {
    return this.ownersPending.has(job) || !this.index.has(job) ? this.ownerOf(job) : this.owners.get(job);
  }

  /**
   * The job's owner uid (its xattr; root when it has none), or null when there
   * is no such job. Read each time (one getxattr): nothing to keep per job.
   */
  ownerOf(job: string): number | null {
    let v: Buffer | null;
    try {
      v = getXattr(this.paths.job(job), OWNER_XATTR);
    } catch (err) {
      if (err instanceof KernelError && err.errno === 'ENOENT') return null;
      throw err;
    }
    if (v === null) return 0;
    const text = v.toString('utf8');
    // Only root writes the xattr; anything but a uid fails closed (root's).
    if (/^(0|[1-9][0-9]{0,9})$/.test(text)) return Number(text);
    this.opts.log.warn({ job, xattr: OWNER_XATTR, value: text }, "unreadable job owner; the job is treated as root's");
    return 0;
  }

  /** Record the job's owner (root's: no xattr); taken back if the request fails. */
  private recordOwner(u: Undo, job: string, owner: number, was: number | null): void {
    const dir = this.paths.job(job);
    writeOwner(dir, owner);
    if (was !== null) u.add(`owner of job ${job} back`, () => writeOwner(dir, was));
    u.onCommit(() => this.owners.set(job, owner));
  }

  /** The job is gone: out of the index and the owners. */
  private forget(job: string): void {
    this.index.delete(job);
    this.owners.drop(job);
    this.ownersPending.delete(job);
    this.leavesPending.delete(job);
  }

  /**
   * ENOSPC (nothing made) when a capped request would give its uid more live
   * jobs or steps than the caps allow. Synchronous with the request's making and
   * commit, so requests on other jobs cannot slip in between.
   */
  private checkCaps(job: string, step: string | undefined, access: JobAccess | undefined, leaves: readonly Leaf[] = []): void {
    if (!access?.capped) return;
    if (this.ownersPending.size) throw new AgentError('EBUSY', `the agent is still reading its adopted jobs' owners after a start (${this.ownersPending.size} left) to count uid ${access.owner}'s jobs and steps; retry in a second`);
    const steps = this.index.get(job);
    const newLeaves = step === undefined ? 0 : new Set(leaves.map((l) => this.paths.leaf(job, step, l)).filter((d) => !exists(d))).size;
    if (newLeaves && this.leavesPending.size) throw new AgentError('EBUSY', `the agent is still watching its adopted task leaves after a start (${this.leavesPending.size} job(s) left) to count uid ${access.owner}'s; retry in a second`);
    this.owners.check(access.owner, steps ? 0 : 1, step !== undefined && !steps?.includes(step) ? 1 : 0, newLeaves);
  }

  /**
   * Let the request's access decide on an existing job (inside the job's
   * lock, before anything is touched); an admin naming the owner may change it.
   */
  private admit(u: Undo | null, job: string, access: JobAccess | undefined): void {
    if (!access?.checks) return;
    const owner = this.ownerOf(job);
    if (owner === null) return;
    const next = access.admit(job, owner, () => this.madeBy(this.paths.job(job)));
    if (next === TAKE_BACK) throw new TakeBack(job, owner, access.owner);
    if (next !== null && next !== owner && u) {
      this.recordOwner(u, job, next, owner);
      this.opts.log.info({ job, owner: next, was: owner }, 'job owner changed');
    }
  }

  /**
   * A request that reclaims (an admin's naming the owner) on a step a user
   * made for itself: the step is taken back (see takeBack), so the request's
   * step limits and devices are put in force. A step an admin made, as every
   * one this request made before, is used as it is: the same placement twice
   * is harmless.
   */
  private admitStep(job: string, step: string, access: JobAccess | undefined): void {
    if (!access?.reclaims) return;
    const dir = this.paths.step(job, step);
    const by = exists(dir) ? this.madeBy(dir) : null;
    if (by !== null) throw new TakeBack(job, by, access.owner, step);
  }

  /** The uid that made this job or step directory for itself (MADE_BY_XATTR), or null. */
  private madeBy(dir: string): number | null {
    const v = getXattr(dir, MADE_BY_XATTR)?.toString('utf8');
    return v !== undefined && /^[1-9][0-9]{0,9}$/.test(v) ? Number(v) : null;
  }

  /**
   * An admin's request named the owner of a job (or placed into a step) a
   * user made for itself: kill every process in it and remove it (inside the
   * job's lock), so the request makes it afresh as it asks.
   */
  private async takeBack(t: TakeBack): Promise<void> {
    const dir = t.step === undefined ? this.paths.job(t.job) : this.paths.step(t.job, t.step);
    const pids = isPopulated(dir) ? procsRecursive(dir) : [];
    const what = t.step === undefined ? 'job id' : 'step id';
    this.opts.log.warn({ job: t.job, step: t.step, claimedBy: t.from, owner: t.to, killed: pids }, `${what} taken back from the uid that made it for itself: an admin's request names the job's owner`);
    if (pids.length) {
      killAll(dir);
      await waitUnpopulated(dir, this.opts.waitTimeoutMs);
    }
    this.watcher.unwatchDir(dir, t.job);
    if (t.step !== undefined) {
      await this.removeStep(dir, undefined, slicer());
      dropStep(this.index.get(t.job), t.step);
      return;
    }
    await this.removeJob(dir);
    this.forget(t.job);
  }

  /** Make (or repair) the job directory and put its planned level in force; a job made here belongs to access.owner. */
  private makeJob(u: Undo, job: string, p: LevelPlan, access?: JobAccess) {
    const made = this.makeInner(u, p.dir);
    if (made && access?.claims && access.owner !== 0) setXattr(p.dir, MADE_BY_XATTR, Buffer.from(String(access.owner)));
    if (made && access && access.owner !== 0) this.recordOwner(u, job, access.owner, null); // no xattr: root's
    if (made || !this.index.has(job)) {
      u.onCommit(() => {
        // A job directory the index lacked (made by an agent killed before its commit) has its owner on disk.
        if (!made && !this.index.has(job)) this.owners.set(job, this.ownerOf(job) ?? 0);
        this.index.set(job, this.index.get(job) ?? []);
        this.watcher.watchDir(p.dir, { job }, false, made);
      });
    }
    return { created: made, ...this.applyLevel(u, p, made) };
  }

  /** Make (or repair) step_<n>/{slurm,user}/ and put the planned user/ level in force; a step a user makes is marked as its claim. */
  private makeStep(u: Undo, job: string, step: string, p: LevelPlan, access: JobAccess | undefined) {
    const dir = this.paths.step(job, step);
    const created = this.makeInner(u, dir);
    if (created && access?.claims && access.owner !== 0) setXattr(dir, MADE_BY_XATTR, Buffer.from(String(access.owner)));
    this.makeDir(u, path.join(dir, SLURM_LEAF));
    const userMade = this.makeInner(u, p.dir);
    if (userMade) this.freezeIfSuspended(job, p.dir);
    u.onCommit(() => {
      const steps = this.index.get(job);
      if (steps && !steps.includes(step)) steps.push(step);
      if (created) this.watcher.watchDir(dir, { job, step }, this.memory, true);
    });
    return { created, ...this.applyLevel(u, p, userMade) };
  }

  /**
   * Make the leaf if missing, confine it, then move the pid in (it never runs
   * under a looser policy). `made`: the job and step this request made. With
   * `undoable` (more moves of the same request follow) the cgroup the pid
   * leaves is read first, and it is moved back there if the request fails.
   */
  private placeIn(u: Undo, job: string, step: string, leaf: Leaf, p: LevelPlan, pid: number, access?: JobAccess, made = { job: false, step: false }, undoable = false) {
    const leafMade = this.makeDir(u, p.dir);
    const c = p.devices ? this.applyLevel(u, p, leafMade) : {};
    access?.beforeMove?.(pid);
    const from = undoable ? cgroupOfPid(pid) : null;
    // Watched before the move, so that its change and every later one is notified; a level
    // made by this request is known empty until the move (no read).
    const task = leaf === 'slurm' ? undefined : typeof leaf === 'object' ? String(leaf.task) : 'special';
    this.watchMade(u, this.paths.job(job), { job }, false, made.job);
    this.watchMade(u, this.paths.step(job, step), { job, step }, this.memory, made.step);
    if (leafMade && task !== undefined) this.watchMade(u, p.dir, { job, step, task }, false, true);
    moveProcess(p.dir, pid);
    if (this.opts.verifyMoves) checkMoved(pid, p.dir, this.opts.mountPoint);
    access?.afterMove?.(pid);
    if (from !== null) u.add(`move ${pid} back to ${from}`, () => this.moveBackIfHeld(pid, from, access));
    // The leaf, its step and its job hold the pid now; if it has exited since, its notice says so.
    this.watcher.moved({ job, step, task });
    return c;
  }

  /**
   * Take back a move: only while the process checked for this request still
   * holds its pid (a pid reaped since may be another process's now, which
   * must not be moved); a reaped one needs nothing.
   */
  private moveBackIfHeld(pid: number, from: string, access?: JobAccess): void {
    try {
      access?.afterMove?.(pid);
    } catch {
      return;
    }
    moveBack(pid, from, this.opts.mountPoint);
  }

  /** Watch a level (a no-op where it is watched already); one this request made is unwatched again if the request fails. */
  private watchMade(u: Undo, dir: string, ids: { job: string; step?: string; task?: string }, memory: boolean, made: boolean): void {
    this.watcher.watchDir(dir, ids, memory, made);
    if (made) u.add(`unwatch ${dir}`, () => this.watcher.unwatchDir(dir, ids.job));
  }

  private requireJob(job: string): string {
    const dir = this.paths.job(job);
    if (!exists(dir)) throw new AgentError('ENOENT', `no job ${job}`);
    return dir;
  }

  private requireStep(job: string, step: string): string {
    this.requireJob(job);
    const dir = this.paths.step(job, step);
    if (!exists(dir)) throw new AgentError('ENOENT', `no step ${step} in job ${job}`);
    return dir;
  }

  /**
   * Every request that changes the tree runs here: one job at a time, all or
   * nothing. A request that may take a job id back (an admin naming an owner)
   * gives `plan`: its planning alone, which is run first as if the job were
   * already gone, so that a request refused for its own content (gres the
   * node lacks, limits it cannot put in force, a process gone) kills nothing
   * and removes nothing. Only what the kernel refuses while making the job
   * afresh can still fail after the take-back.
   */
  private change<T>(job: string, fn: (u: Undo) => T, plan?: () => void): Promise<T> {
    return this.lock.run(job, () => {
      try {
        return Undo.run(this.opts.log, fn);
      } catch (err) {
        // Thrown by admit() or admitStep() before anything was touched; the job (or step) is gone after it.
        if (!(err instanceof TakeBack)) throw err;
        this.rehearse({ job, step: err.step }, plan);
        return this.takeBack(err).then(() => Undo.run(this.opts.log, fn));
      }
    });
  }

  /**
   * While a take-back is rehearsed: a process the request would place that
   * is inside what is taken back would be killed by it, and the request then
   * fail for want of it. Refused here, before anything is killed.
   */
  private refuseTakenBack(pids: readonly number[]): void {
    const gone = this.assumedGone;
    if (!gone) return;
    const dir = gone.step === undefined ? this.paths.job(gone.job) : this.paths.step(gone.job, gone.step);
    const inside = '/' + path.relative(this.opts.mountPoint, dir);
    for (const pid of pids) {
      const cg = cgroupOfPid(pid);
      if (cg !== null && (cg === inside || cg.startsWith(inside + '/'))) {
        throw new AgentError('EBUSY', `process ${pid} is in ${named(gone.job, gone.step)}, which this request would take back from the uid that made it (its processes are killed first); place a process from outside it`);
      }
    }
  }

  /** Run a request's planning as if the job (or its step) did not exist (no state is read from it, nothing is written). */
  private rehearse(gone: { job: string; step?: string }, plan: (() => void) | undefined): void {
    if (!plan) return;
    this.assumedGone = gone;
    try {
      plan();
    } finally {
      this.assumedGone = null;
    }
  }

  /** Does the job's directory exist (as far as planning goes: not while its take-back is rehearsed)? */
  private jobThere(job: string): boolean {
    const gone = this.assumedGone;
    return !(gone?.job === job && gone.step === undefined) && exists(this.paths.job(job));
  }

  /** Does the step's user/ exist (as far as planning goes: not while its job's or its own take-back is rehearsed)? */
  private stepThere(job: string, step: string): boolean {
    const gone = this.assumedGone;
    return !(gone?.job === job && (gone.step === undefined || gone.step === step)) && exists(this.paths.user(job, step));
  }

  createJob(job: string, limits?: Limits, devices?: DeviceRequest, access?: JobAccess) {
    const plan = () => this.planJob(job, limits, devices, undefined, true);
    return this.change(
      job,
      (u) => {
        this.admit(u, job, access);
        this.checkCaps(job, undefined, access);
        if ((limits || devices) && exists(this.paths.job(job))) access?.reconfigure(`job ${job}`);
        const jp = plan();
        const { created, ...c } = this.makeJob(u, job, jp, access);
        this.opts.log.info({ job, created, ...c }, created ? 'job created' : 'job updated');
        return { job, path: jp.dir, created, ...c };
      },
      plan,
    );
  }

  createStep(job: string, step: string, limits?: Limits, devices?: DeviceRequest, access?: JobAccess) {
    return this.change(job, (u) => {
      this.admit(u, job, access);
      this.checkCaps(job, step, access);
      if ((limits || devices) && exists(this.paths.user(job, step))) access?.reconfigure(`job ${job} step ${step}`);
      // A job made here is allocated the gres this step names.
      const jp = this.planJob(job, undefined, undefined, devices?.gres, false);
      // Step limits and devices go on user/: the step daemon in slurm/ is not confined by them.
      const sp = this.planStep(job, step, limits, devices, jp, true);
      const made = this.makeJob(u, job, jp, access);
      const jobCreated = made.created;
      const { created, ...c } = this.makeStep(u, job, step, sp, access);
      const dir = this.paths.step(job, step);
      this.opts.log.info({ job, step, created, jobCreated, ...c, ...deviceProgramsOf({ job: made }) }, created ? 'step created' : 'step updated');
      return { job, step, path: dir, created, jobCreated, ...c };
    });
  }

  attach(job: string, step: string, pid: number, leaf: Leaf, devices?: DeviceRequest, access?: JobAccess) {
    this.checkPid(pid);
    return this.change(job, (u) => {
      if (!exists(this.paths.user(job, step))) this.requireStep(job, step); // names what is missing
      this.admit(u, job, access);
      this.checkCaps(job, step, access, [leaf]);
      this.reconfigureLeaf(job, step, leaf, devices, access);
      const tp = this.planLevel(this.paths.leaf(job, step, leaf), 'task', undefined, devices);
      // A request through the gate had its process checked there (zombies, kernel threads) and again at the move.
      if (!access?.beforeMove) requireMovable(pid);
      const c = this.placeIn(u, job, step, leaf, tp, pid, access);
      // movedPid: the line's own pid is the agent's (the logger's base).
      this.opts.log.info({ job, step, movedPid: pid, leaf: path.basename(tp.dir), ...deviceProgramsOf({ leaf: c }) }, 'process attached');
      return { job, step, pid, path: tp.dir, ...c };
    });
  }

  /**
   * task.place: make what is missing of job, step and leaves and move each
   * pid into its leaf, all or nothing (a pid already moved is moved back when
   * a later one fails). An existing step is used as it is, so the same
   * placement twice is harmless; but one a user made for itself is taken back
   * when an admin's request names the owner (admitStep), as its job would be.
   * On an existing job, `jobLimits` are put in force and the gres of
   * `jobDevices` widen its allocation (planJobUpdate): a step daemon places
   * itself, sets its job's limits and brings its GPUs in one round trip, and
   * the same values again change nothing; a step's tasks are placed together
   * in one more.
   */
  place(r: Placement, access?: JobAccess) {
    for (const m of r.moves) this.checkPid(m.pid);
    return this.change(
      r.job,
      (u) => this.placeNow(u, r, access),
      () => this.planPlacement(r, access),
    );
  }

  /** task.place's levels, each checked (and, for a job already there, its update); the processes checked movable. */
  private planPlacement(r: Placement, access: JobAccess | undefined) {
    this.refuseTakenBack(r.moves.map((m) => m.pid));
    const jp = this.planJob(r.job, r.jobLimits, r.jobDevices, undefined, 'limits');
    if (jp.existed) this.planJobUpdate(jp, r, access);
    const sp = this.planStep(r.job, r.step, r.stepLimits, r.stepDevices, jp, false);
    const tps = r.moves.map((m) => this.planLevel(this.paths.leaf(r.job, r.step, m.leaf), 'task', undefined, r.devices));
    if (!access?.beforeMove) for (const m of r.moves) requireMovable(m.pid);
    return { jp, sp, tps };
  }

  private placeNow(u: Undo, r: Placement, access: JobAccess | undefined) {
    this.admit(u, r.job, access);
    this.admitStep(r.job, r.step, access);
    this.checkCaps(r.job, r.step, access, r.moves.map((m) => m.leaf));
    for (const m of r.moves) this.reconfigureLeaf(r.job, r.step, m.leaf, r.devices, access);
    const { jp, sp, tps } = this.planPlacement(r, access);
    const job = this.makeJob(u, r.job, jp, access);
    const step = this.makeStep(u, r.job, r.step, sp, access);
    const last = r.moves.length - 1;
    const applied = r.moves.map((m, i) => this.placeIn(u, r.job, r.step, m.leaf, tps[i], m.pid, access, { job: job.created && i === 0, step: step.created && i === 0 }, i < last));
    const placed = applied.map((c, i) => ({ pid: r.moves[i].pid, leaf: tps[i].dir, ...c }));
    const programs = deviceProgramsOf(applied.length === 1 ? { job, step, leaf: applied[0] } : { job, step });
    const moved = placed.length === 1 ? { movedPid: placed[0].pid, leaf: path.basename(placed[0].leaf) } : { movedPids: placed.map((p) => p.pid) };
    this.opts.log.info({ job: r.job, step: r.step, ...moved, jobCreated: job.created, stepCreated: step.created, ...programs }, 'process placed');
    return {
      job: { job: r.job, path: jp.dir, ...job },
      step: { step: r.step, path: this.paths.step(r.job, r.step), ...step },
      placed,
    };
  }

  setDevices(job: string, step: string | undefined, task: number | undefined, devices: DeviceRequest, access?: JobAccess) {
    return this.change(job, (u) => {
      this.admit(u, job, access);
      let p: LevelPlan;
      if (step === undefined) {
        if (task !== undefined) throw new AgentError('EINVAL', 'a task needs a step');
        p = this.planLevel(this.requireJob(job), 'job', undefined, devices);
      } else if (task === undefined) {
        this.requireStep(job, step);
        p = this.planStep(job, step, undefined, devices, this.planLevel(this.paths.job(job), 'job', undefined, undefined), true);
      } else {
        const dir = this.paths.leaf(job, step, { task });
        if (!exists(dir)) throw new AgentError('ENOENT', `no task ${task} in job ${job} step ${step}`);
        p = this.planLevel(dir, 'task', undefined, devices);
      }
      return { path: p.dir, ...this.applyLevel(u, p, false) };
    });
  }

  /**
   * task.place on an existing job: its jobLimits are put in force, and the gres
   * its jobDevices name widen its allocation (both root and operators only;
   * nothing to change is no change).
   */
  private planJobUpdate(jp: LevelPlan, r: Placement, access: JobAccess | undefined): void {
    if (r.jobLimits) access?.reconfigure(`job ${r.job}`);
    const wider = r.jobDevices && this.opts.devices?.widen(jp.dir, r.jobDevices);
    if (!wider) return;
    access?.reconfigure(`job ${r.job}'s device allocation`);
    jp.devices = this.opts.devices!.prepare(wider, 'job');
  }

  /** A task leaf's device policy is replaced only with the access's leave. */
  private reconfigureLeaf(job: string, step: string, leaf: Leaf, devices: DeviceRequest | undefined, access: JobAccess | undefined): void {
    const dir = this.paths.leaf(job, step, leaf);
    if (devices && exists(dir)) access?.reconfigure(`job ${job} step ${step} ${path.basename(dir)}`);
  }

  /** Pids no request may move (a missing or exited pid is found by requireMovable). */
  private checkPid(pid: number): void {
    if (this.opts.protectedPids().includes(pid)) throw new AgentError('EPERM', `pid ${pid} is the agent, PID 1 or the infinity process and cannot be moved`);
  }

  /** The directories a step-level operation acts on: the steps' user/ trees. */
  private async userDirs(job: string, step: string | undefined, pause: Pause): Promise<string[]> {
    if (step !== undefined) return [path.join(this.requireStep(job, step), USER_DIR)];
    this.requireJob(job);
    const out: string[] = [];
    for (const n of childDirs(this.paths.job(job))) {
      if (parseStepName(n) === null) continue;
      const d = path.join(this.paths.job(job), n, USER_DIR);
      if (exists(d)) out.push(d);
      await pause();
    }
    return out;
  }

  /**
   * access.mayKill over every pid in `lists`, before anything is acted on:
   * EPERM names the first process not the peer's. Checked a piece at a time
   * (a /proc read each); `lists` is not read at all for an admin.
   */
  private async checkKill(access: JobAccess | undefined, lists: Iterable<number[]> | AsyncIterable<number[]>, pause: Pause): Promise<void> {
    const mayKill = access?.mayKill;
    if (!mayKill) return;
    for await (const list of lists) {
      for (let i = 0; i < list.length; i += KILL_CHECK_CHUNK) {
        mayKill(list.slice(i, i + KILL_CHECK_CHUNK), uidsOf);
        await pause();
      }
    }
  }

  /** The pids below each of dirs, a directory at a time (see procsByDir). */
  private async *procsOfDirs(dirs: readonly string[], pause: Pause): AsyncGenerator<number[]> {
    for (const d of dirs) yield* procsByDir(d, pause);
  }

  /** Inside the job's lock, and in slices: a whole job may be thousands of directories. */
  signal(job: string, step: string | undefined, sig: string | number, access?: JobAccess) {
    const { name, number } = resolveSignal(sig);
    return this.lock.run(job, async () => {
      this.admit(null, job, access);
      const pause = slicer();
      const dirs = await this.userDirs(job, step, pause);
      await this.checkKill(access, this.procsOfDirs(dirs, pause), pause);
      let count = 0;
      for (const dir of dirs) {
        if (name === 'SIGKILL') {
          count += (await procsBelow(dir, pause)).length;
          killAll(dir);
        } else for await (const pids of procsByDir(dir, pause)) count += signalPids(pids, number, dir);
      }
      this.opts.log.info({ job, step, signal: name, processes: count }, 'signal sent');
      return { job, step, signal: name, processes: count };
    });
  }

  /**
   * Freeze or thaw the steps' user/ trees, all or nothing: a step that does
   * not reach the state within waitTimeoutMs fails the request, and every
   * cgroup.freeze and admin mark it changed is put back as it was. In slices.
   */
  freeze(job: string, step: string | undefined, frozen: boolean, access?: JobAccess) {
    return this.lock.run(job, () =>
      Undo.runAsync(this.opts.log, async (u) => {
        this.admit(null, job, access);
        const pause = slicer();
        const dirs = await this.userDirs(job, step, pause);
        // Freezing stops processes as SIGSTOP does: a user's reaches its own alone, and it does not undo an admin's suspend.
        await this.checkKill(access, this.procsOfDirs(dirs, pause), pause);
        const admin = !access?.capped;
        if (!frozen && !admin) await this.refuseIfSuspended(job, step, dirs, pause);
        // An admin's freeze of the whole job is a suspend: steps made in it later start frozen (makeStep).
        if (admin && step === undefined) this.markAdminFrozen(u, this.paths.job(job), frozen);
        const changed: string[] = [];
        for (const d of dirs) {
          if (admin) this.markAdminFrozen(u, d, frozen);
          const was = requestFrozen(d, frozen);
          u.add(`cgroup.freeze of ${d} back`, () => requestFrozen(d, was.asked));
          if (was.frozen !== frozen) changed.push(d);
          await pause();
        }
        // All were asked before the first wait, so they freeze together: each is waited for in turn.
        for (const d of dirs) {
          await waitFrozen(d, frozen, this.opts.waitTimeoutMs);
          await pause();
        }
        // Each step's frozen/thawed is published once the kernel says so, and only if it changed.
        for (const d of changed) {
          this.watcher.frozenChanged({ job, step: parseStepName(path.basename(path.dirname(d)))! }, frozen);
          await pause();
        }
        this.opts.log.info({ job, step }, frozen ? 'frozen' : 'thawed');
        return { job, step, frozen, cgroups: dirs.length };
      }),
    );
  }

  /** EPERM when one of dirs was frozen by an admin: its owner may not thaw it. */
  private async refuseIfSuspended(job: string, step: string | undefined, dirs: readonly string[], pause: Pause): Promise<void> {
    for (const d of dirs) {
      if (getXattr(d, FROZEN_BY_ADMIN_XATTR) !== null) {
        throw new AgentError('EPERM', `${named(job, step)} was frozen by root or an operator; only they may thaw it`);
      }
      await pause();
    }
  }

  /** Set (frozen) or clear the admin-freeze mark on dir, put back as it was if the request fails. */
  private markAdminFrozen(u: Undo, dir: string, frozen: boolean): void {
    const had = getXattr(dir, FROZEN_BY_ADMIN_XATTR) !== null;
    if (had === frozen) return;
    const mark = (on: boolean) => (on ? setXattr(dir, FROZEN_BY_ADMIN_XATTR, Buffer.from('1')) : removeXattr(dir, FROZEN_BY_ADMIN_XATTR));
    mark(frozen);
    u.add(`admin freeze mark of ${dir} back`, () => mark(had));
  }

  /**
   * A step's user/ just made in a job an admin froze whole (a suspend) is made
   * frozen and marked so: nothing of a suspended job runs until an admin
   * thaws it, processes moved in later included. Empty, it is frozen at once.
   */
  private freezeIfSuspended(job: string, userDir: string): void {
    if (getXattr(this.paths.job(job), FROZEN_BY_ADMIN_XATTR) === null) return;
    setXattr(userDir, FROZEN_BY_ADMIN_XATTR, Buffer.from('1'));
    requestFrozen(userDir, true);
  }

  /** Read in slices (see listJobs): a job may have many steps and tasks. */
  async stats(job: string, step?: string, access?: JobAccess) {
    const jobDir = this.requireJob(job);
    this.admit(null, job, access);
    const steps = step !== undefined ? [step] : childDirs(jobDir).map(parseStepName).filter((s): s is string => s !== null);
    if (step !== undefined) this.requireStep(job, step);
    const head = step === undefined ? { total: this.readStats(jobDir), limits: readLimits(jobDir), devices: this.devicesOf(jobDir) } : {};
    const pause = slicer();
    const out: Awaited<ReturnType<StepTree['stepStats']>>[] = [];
    for (const s of steps) {
      await pause();
      out.push(await this.stepStats(job, s, pause));
    }
    return { job, ...head, steps: out };
  }

  /** One step's figures; `pause` between task leaves too (a step may have thousands, each with its own program). */
  private async stepStats(job: string, step: string, pause: Pause) {
    const dir = this.paths.step(job, step);
    const user = this.paths.user(job, step);
    const tasks: Record<string, CgroupStats & { pids: CgroupStats['pids']; procs: number[] }> = {};
    for (const tn of childDirs(user)) {
      const t = parseTaskName(tn);
      if (t === null) continue;
      await pause();
      const tdir = path.join(user, tn);
      const dev = this.devicesOf(tdir);
      tasks[String(t)] = { ...this.readStats(tdir), procs: procsOf(tdir), ...(dev ? { devices: dev } : {}) };
    }
    return {
      step,
      path: dir,
      populated: isPopulated(dir),
      total: this.readStats(dir),
      user: this.readStats(user),
      limits: readLimits(user),
      devices: this.devicesOf(user),
      tasks,
    };
  }

  /** The device policy on a directory, or null when it has none of its own. */
  private devicesOf(dir: string) {
    const d = this.opts.devices?.describe(dir);
    return d && (d.progIds.length || d.policy) ? d : null;
  }

  destroy(job: string, step: string | undefined, force: boolean, reapJob: boolean, access?: JobAccess) {
    return this.lock.run(job, async () => {
      this.admit(null, job, access);
      const target = step === undefined ? this.paths.job(job) : this.paths.step(job, step);
      const populated = populatedOf(target);
      if (populated === null) {
        // Idempotent: a controller retrying after a crash or a lost reply gets success.
        if (step === undefined) this.forget(job);
        else dropStep(this.index.get(job), step);
        // A retried step destroy still reaps its job (the first try may have died before it).
        const jobRemoved = step === undefined || !exists(this.paths.job(job)) || (reapJob && (await this.reapIfStepless(job)));
        return { job, step, killed: 0, jobRemoved, existed: false };
      }
      const pause = slicer();
      const pids = populated ? await procsBelow(target, pause) : [];
      // Known empty at and below target: read so, or emptied and waited for below.
      let empty = !populated;
      if (pids.length > 0) {
        if (!force) {
          throw new AgentError('EBUSY', `${named(job, step)} still has ${pids.length} process(es) (${pids.slice(0, 8).join(' ')}${pids.length > 8 ? ' ...' : ''}); destroy with force (cgstep destroy --force) to kill them`);
        }
        await this.checkKill(access, [pids], pause);
        killAll(target);
        await waitUnpopulated(target, this.opts.waitTimeoutMs);
        empty = true;
      }
      // The task leaves, asked of the watches before they go.
      const leaves = this.watcher.taskLeaves(job);
      await this.watcher.unwatchDirSliced(target, job, empty, pause);
      if (step === undefined) await this.removeJob(target, leaves, pause);
      else await this.removeStep(target, leaves.get(step) ?? [], pause);
      let jobRemoved = step === undefined;
      if (step !== undefined) {
        dropStep(this.index.get(job), step);
        if (reapJob) jobRemoved = await this.reapIfStepless(job);
      }
      if (jobRemoved) this.forget(job);
      this.opts.log.info({ job, step, killed: pids.length, jobRemoved }, 'destroyed');
      return { job, step, killed: pids.length, jobRemoved, existed: true };
    });
  }

  /**
   * Remove a step bottom-up knowing its layout (slurm/, user/task_*): the
   * task leaves the watcher knows of (`leaves`) with no listing, or else
   * those of one listing of user/, instead of a failed rmdir and a listing per
   * level. A leaf made unwatched is still removed: user/'s rmdir then fails
   * and lists it. Anything unexpected falls back to the generic walk. In
   * slices (`pause` before each rmdir).
   */
  private async removeStep(dir: string, leaves: string[] | undefined, pause: Pause): Promise<void> {
    const user = path.join(dir, USER_DIR);
    for (const t of leaves ?? childDirs(user).map((n) => path.join(user, n))) await removeTree(t, this.opts.waitTimeoutMs, pause);
    for (const d of [user, path.join(dir, SLURM_LEAF)]) await removeTree(d, this.opts.waitTimeoutMs, pause);
    await removeTree(dir, this.opts.waitTimeoutMs, pause);
  }

  /** Remove the job when no step is left in it (destroy's reapJob); true when it is gone. */
  private async reapIfStepless(job: string): Promise<boolean> {
    const jobDir = this.paths.job(job);
    if (childDirs(jobDir).some((n) => parseStepName(n) !== null)) return false;
    this.watcher.unwatchDir(jobDir, job);
    await this.removeJob(jobDir);
    this.forget(job);
    return true;
  }

  /**
   * Remove a job: its steps as the index knows them (no listing of the job),
   * then the job, whose rmdir lists and removes anything else left in it.
   * `leaves`: the watched task leaves by step (see removeStep); without
   * them every step's user/ is listed. In slices, as removeStep.
   */
  private async removeJob(dir: string, leaves?: Map<string, string[]>, pause: Pause = slicer()): Promise<void> {
    const job = parseJobName(path.basename(dir));
    for (const s of job === null ? [] : [...(this.index.get(job) ?? [])]) await this.removeStep(this.paths.step(job!, s), leaves ? (leaves.get(s) ?? []) : undefined, pause);
    await removeTree(dir, this.opts.waitTimeoutMs, pause);
  }

  /**
   * Every job the agent knows, in order, one at a time, giving the event loop
   * back every SLICE_MS of reading (within a job too: it may have 1,024
   * steps): at 20,000 steps a whole list is seconds of file reads, and
   * nobody's request may wait behind it. `want` skips jobs unread.
   */
  async *listJobs(want: (job: string) => boolean = () => true): AsyncGenerator<JobInfo> {
    const pause = slicer();
    for (const job of this.knownJobsSorted()) {
      // A job skipped still cost a look at its owner: 20,000 of them are a long stall too.
      if (want(job)) yield await this.jobInfo(job, pause);
      await pause();
    }
  }

  /**
   * Job ids are canonical decimal integers (names.ts), so a numeric sort of
   * their values gives them back as the same strings: sorted natively, a
   * fraction of the time a compare function takes over 20,000 ids.
   */
  private knownJobsSorted(): string[] {
    return Array.from(Float64Array.from(this.index.keys(), Number).sort(), String);
  }

  /**
   * One job as list shows it (a step removed meanwhile reads as empty: the
   * cgroupfs reads take ENOENT as that), `pause` between its steps.
   */
  private async jobInfo(job: string, pause: Pause): Promise<JobInfo> {
    const steps: StepInfo[] = [];
    // Directories have at most the scope's controllers: files of others are not opened.
    const ctl = this.opts.scopeControllers?.();
    for (const step of [...(this.index.get(job) ?? [])].sort(compareSteps)) {
      const sdir = this.paths.step(job, step);
      const udir = path.join(sdir, USER_DIR);
      const tasks = childDirs(udir).filter((n) => parseTaskName(n) !== null);
      const limits = readLimitFigures(udir, ctl);
      steps.push({ step, path: sdir, populated: isPopulated(sdir), tasks, frozen: limits.frozen, limits, usage: readUsage(udir, ctl) });
      await pause();
    }
    const jdir = this.paths.job(job);
    return { job, path: jdir, populated: isPopulated(jdir), steps, limits: readLimitFigures(jdir, ctl), usage: readUsage(jdir, ctl) };
  }

  /** Stop watching; an adoption still walking the tree stops at its next step. */
  close(): Promise<void> {
    this.closed = true;
    return this.watcher.close();
  }
}

/** admit()'s way out of a request's first run when the job id is to be taken back (see takeBack). */
class TakeBack extends Error {
  constructor(
    readonly job: string,
    readonly from: number,
    readonly to: number,
    /** Set when only this step of the job is taken back. */
    readonly step?: string,
  ) {
    super(`${named(job, step)} is taken back from uid ${from} for uid ${to}`);
  }
}

/** "job J" or "job J step S", as messages name a level. */
function named(job: string, step: string | undefined): string {
  return step === undefined ? `job ${job}` : `job ${job} step ${step}`;
}

/** Take a step out of a job's list in the index. */
function dropStep(steps: string[] | undefined, step: string): void {
  const i = steps ? steps.indexOf(step) : -1;
  if (i >= 0) steps!.splice(i, 1);
}

function writeOwner(jobDir: string, owner: number): void {
  if (owner === 0) removeXattr(jobDir, OWNER_XATTR);
  else setXattr(jobDir, OWNER_XATTR, Buffer.from(String(owner)));
}
