/**
 * steps/tree: jobs, steps and tasks in the node scope: create, constrain,
 * attach, account, signal, freeze, destroy, list, and recover after a restart.
 *
 * The tree on disk is the only state: every answer is read from it, and a
 * restarted agent rebuilds its watchers and counters by walking it. Operations
 * on one job are serialised (KeyedLock); different jobs run in parallel.
 * Must not talk to systemd or the socket, and reaches the kernel only through
 * cgroupfs and the DevicePort it is given.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import {
  childDirs,
  childDirsAsync,
  controllersOf,
  enableControllers,
  exists,
  isPopulated,
  killAll,
  makeDir,
  moveProcess,
  procsOf,
  procsRecursive,
  readStats,
  removeTree,
  setFrozen,
  signalAll,
  waitUnpopulated,
  writeText,
  type CgroupStats,
} from '../cgroupfs/index.js';
import type { CgroupConf } from '../config/cgroupconf.js';
import { AgentError } from '../errors.js';
import type { DeviceRequest } from '../devices/request.js';
import type { Limits } from './model.js';
import { TreeWatcher } from './events.js';
import { applyLimits, readLimits } from './limits.js';
import { KeyedLock } from './lock.js';
import { type Leaf, SLURM_LEAF, TreePaths, USER_DIR, parseJobName, parseStepName, parseTaskName } from './names.js';
import { resolveSignal } from './signals.js';

export type DeviceLevel = 'job' | 'step' | 'task';

/** How the tree asks for a device policy on a directory (implemented by src/devices). */
export interface DevicePort {
  /** false for a backend that accepts rules without enforcing them (devices/none). */
  readonly enforcing: boolean;
  apply(dir: string, req: DeviceRequest, level: DeviceLevel): { progId: number } | null;
  describe(dir: string): { progIds: number[]; policy?: unknown } | null;
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
}

export interface StepInfo { step: string; path: string; populated: boolean; tasks: string[] }
export interface JobInfo { job: string; path: string; populated: boolean; steps: StepInfo[] }

export class StepTree {
  readonly paths: TreePaths;
  readonly watcher = new TreeWatcher();
  private readonly lock = new KeyedLock();
  /** job -> set of steps; a cache of the directories, rebuilt by recover(). */
  private readonly index = new Map<string, Set<string>>();

  private readonly readStats: (dir: string) => CgroupStats;

  /** Is the memory controller on below the scope (memory.events exists in steps)? */
  private get memory(): boolean {
    return this.opts.scopeControllers?.().includes('memory') ?? false;
  }

  constructor(private readonly opts: TreeOptions) {
    this.paths = new TreePaths(opts.scopeDir);
    this.readStats = opts.accounting ? (d) => opts.accounting!.read(d) : readStats;
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
    for (const s of this.index.values()) n += s.size;
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
      const set = new Set<string>();
      this.index.set(job, set);
      for (const sn of childDirs(this.paths.job(job))) {
        const step = parseStepName(sn);
        if (step === null) continue;
        set.add(step);
        steps++;
      }
    }
    return { jobs: this.index.size, steps };
  }

  /**
   * Watch every adopted job, step and task leaf (after recover), yielding to
   * requests as it goes and listing each user/ off the event loop. No freeze
   * watch: freeze and thaw requests add it. A directory that empties before it
   * is watched gives no *.empty event, as one that emptied while the agent was
   * down.
   */
  async watchAdopted(): Promise<{ tasks: number }> {
    let tasks = 0;
    let n = 0;
    const breathe = async () => {
      if (++n % 64 === 0) await new Promise((r) => setImmediate(r));
    };
    for (const [job, steps] of [...this.index]) {
      this.watcher.watchDir(this.paths.job(job), { job });
      for (const step of [...steps]) {
        this.watcher.watchDir(this.paths.step(job, step), { job, step }, this.memory);
        const user = this.paths.user(job, step);
        for (const tn of await childDirsAsync(user)) {
          const task = parseTaskName(tn);
          if (task === null) continue;
          tasks++;
          this.watcher.watchDir(path.join(user, tn), { job, step, task: String(task) });
        }
        await breathe();
      }
    }
    return { tasks };
  }

  /** Forget everything and read the tree again (after the scope was re-created). */
  async rescan(): Promise<ReturnType<StepTree['recover']> & { tasks: number }> {
    await this.watcher.close();
    this.index.clear();
    const r = this.recover();
    return { ...r, ...(await this.watchAdopted()) };
  }

  /**
   * mkdir a directory that will have children and pass every controller it has
   * down to them. Also done for an existing directory: an agent killed between
   * mkdir and the subtree_control write leaves it half made, and a retry repairs it.
   */
  private makeInner(dir: string): boolean {
    const made = makeDir(dir);
    if (made && this.fastEnable(dir)) return true;
    enableControllers(dir, controllersOf(dir));
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

  private ensureJob(job: string): boolean {
    const made = this.makeInner(this.paths.job(job));
    if (made || !this.index.has(job)) {
      this.index.set(job, this.index.get(job) ?? new Set());
      this.watcher.watchDir(this.paths.job(job), { job }, false, made);
    }
    return made;
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

  private constrain(dir: string, limits: Limits | undefined, devices: DeviceRequest | undefined, level: DeviceLevel) {
    const plan = limits ? applyLimits(dir, limits, this.opts.conf, this.opts.totalRam, this.opts.ignoreMissingControllers) : { writes: [], skipped: [] };
    let progId: number | undefined;
    let ignored = false;
    if (devices) {
      if (!this.opts.devices) throw new AgentError('ENOTSUP', 'device control is not available on this agent (see `cgstep status`)');
      progId = this.opts.devices.apply(dir, devices, level)?.progId;
      ignored = !this.opts.devices.enforcing;
    }
    return {
      written: plan.writes.map((w) => w.file),
      skipped: plan.skipped,
      ...(progId !== undefined ? { deviceProgram: progId } : {}),
      ...(ignored ? { devicesIgnored: 'device rules are not enforced: the devices/none backend is active (see cgstep status)' } : {}),
    };
  }

  createJob(job: string, limits?: Limits, devices?: DeviceRequest) {
    return this.lock.run(job, () => {
      const created = this.ensureJob(job);
      const c = this.constrain(this.paths.job(job), limits, devices, 'job');
      this.opts.log.info({ job, created, ...c }, created ? 'job created' : 'job updated');
      return { job, path: this.paths.job(job), created, ...c };
    });
  }

  createStep(job: string, step: string, limits?: Limits, devices?: DeviceRequest) {
    return this.lock.run(job, () => {
      const jobCreated = this.ensureJob(job);
      const dir = this.paths.step(job, step);
      const created = this.makeInner(dir);
      makeDir(path.join(dir, SLURM_LEAF));
      this.makeInner(this.paths.user(job, step));
      this.index.get(job)!.add(step);
      if (created) this.watcher.watchDir(dir, { job, step }, this.memory, true);
      // Step limits and devices go on user/: the step daemon in slurm/ is not confined by them.
      const c = this.constrain(this.paths.user(job, step), limits, devices, 'step');
      this.opts.log.info({ job, step, created, jobCreated, ...c }, created ? 'step created' : 'step updated');
      return { job, step, path: dir, created, jobCreated, ...c };
    });
  }

  attach(job: string, step: string, pid: number, leaf: Leaf, devices?: DeviceRequest) {
    this.checkPid(pid);
    return this.lock.run(job, () => {
      if (!exists(this.paths.user(job, step))) this.requireStep(job, step); // names what is missing
      const dir = this.paths.leaf(job, step, leaf);
      const made = makeDir(dir);
      if (made && typeof leaf === 'object') this.watcher.watchDir(dir, { job, step, task: String(leaf.task) }, false, true);
      if (made && leaf === 'special') this.watcher.watchDir(dir, { job, step, task: 'special' }, false, true);
      // Confine the leaf before the process enters it: it never runs under a looser policy.
      const c = devices ? this.constrain(dir, undefined, devices, 'task') : {};
      moveProcess(dir, pid, this.opts.mountPoint, this.opts.verifyMoves);
      this.opts.log.info({ job, step, pid, leaf: path.basename(dir) }, 'process attached');
      return { job, step, pid, path: dir, ...c };
    });
  }

  setDevices(job: string, step: string | undefined, task: number | undefined, devices: DeviceRequest) {
    return this.lock.run(job, () => {
      let dir: string;
      let level: DeviceLevel;
      if (step === undefined) {
        if (task !== undefined) throw new AgentError('EINVAL', 'a task needs a step');
        dir = this.requireJob(job);
        level = 'job';
      } else if (task === undefined) {
        dir = path.join(this.requireStep(job, step), USER_DIR);
        level = 'step';
      } else {
        dir = this.paths.leaf(job, step, { task });
        if (!exists(dir)) throw new AgentError('ENOENT', `no task ${task} in job ${job} step ${step}`);
        level = 'task';
      }
      return { path: dir, ...this.constrain(dir, undefined, devices, level) };
    });
  }

  /** A missing pid is reported by the move itself (ESRCH -> ENOENT "no process"). */
  private checkPid(pid: number): void {
    if (this.opts.protectedPids().includes(pid)) throw new AgentError('EPERM', `pid ${pid} is the agent, PID 1 or the infinity process and cannot be moved`);
  }

  /** The directories a step-level operation acts on: the steps' user/ trees. */
  private userDirs(job: string, step?: string): string[] {
    if (step !== undefined) return [path.join(this.requireStep(job, step), USER_DIR)];
    this.requireJob(job);
    return childDirs(this.paths.job(job))
      .filter((n) => parseStepName(n) !== null)
      .map((n) => path.join(this.paths.job(job), n, USER_DIR))
      .filter(exists);
  }

  signal(job: string, step: string | undefined, sig: string | number) {
    const { name, number } = resolveSignal(sig);
    let count = 0;
    for (const dir of this.userDirs(job, step)) {
      if (name === 'SIGKILL') {
        count += procsRecursive(dir).length;
        killAll(dir);
      } else count += signalAll(dir, number);
    }
    this.opts.log.info({ job, step, signal: name, processes: count }, 'signal sent');
    return { job, step, signal: name, processes: count };
  }

  freeze(job: string, step: string | undefined, frozen: boolean) {
    return this.lock.run(job, async () => {
      const dirs = this.userDirs(job, step);
      for (const d of dirs) this.watcher.watchFreeze(path.dirname(d), { job, step: parseStepName(path.basename(path.dirname(d)))! });
      await Promise.all(dirs.map((d) => setFrozen(d, frozen, this.opts.waitTimeoutMs)));
      this.opts.log.info({ job, step }, frozen ? 'frozen' : 'thawed');
      return { job, step, frozen, cgroups: dirs.length };
    });
  }

  stats(job: string, step?: string) {
    const jobDir = this.requireJob(job);
    const steps = step !== undefined ? [step] : childDirs(jobDir).map(parseStepName).filter((s): s is string => s !== null);
    if (step !== undefined) this.requireStep(job, step);
    return {
      job,
      ...(step === undefined ? { total: this.readStats(jobDir), limits: readLimits(jobDir), devices: this.devicesOf(jobDir) } : {}),
      steps: steps.map((s) => this.stepStats(job, s)),
    };
  }

  private stepStats(job: string, step: string) {
    const dir = this.paths.step(job, step);
    const user = this.paths.user(job, step);
    const tasks: Record<string, CgroupStats & { pids: CgroupStats['pids']; procs: number[] }> = {};
    for (const tn of childDirs(user)) {
      const t = parseTaskName(tn);
      if (t === null) continue;
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

  destroy(job: string, step: string | undefined, force: boolean, reapJob: boolean) {
    return this.lock.run(job, async () => {
      const target = step === undefined ? this.paths.job(job) : this.paths.step(job, step);
      if (!exists(target)) {
        // Idempotent: a controller retrying after a crash or a lost reply gets success.
        if (step === undefined) this.index.delete(job);
        else this.index.get(job)?.delete(step);
        // A retried step destroy still reaps its job (the first try may have died before it).
        const jobRemoved = step === undefined || !exists(this.paths.job(job)) || (reapJob && (await this.reapIfStepless(job)));
        return { job, step, killed: 0, jobRemoved, existed: false };
      }
      const pids = isPopulated(target) ? procsRecursive(target) : [];
      if (pids.length > 0) {
        if (!force) {
          throw new AgentError('EBUSY', `${step === undefined ? `job ${job}` : `job ${job} step ${step}`} still has ${pids.length} process(es) (${pids.slice(0, 8).join(' ')}${pids.length > 8 ? ' ...' : ''}); use force to kill them`);
        }
        killAll(target);
        await waitUnpopulated(target, this.opts.waitTimeoutMs);
      }
      this.watcher.unwatchDir(target, job);
      if (step === undefined) await this.removeJob(target);
      else await this.removeStep(target);
      let jobRemoved = step === undefined;
      if (step !== undefined) {
        this.index.get(job)?.delete(step);
        if (reapJob) jobRemoved = await this.reapIfStepless(job);
      }
      if (jobRemoved) this.index.delete(job);
      this.opts.log.info({ job, step, killed: pids.length, jobRemoved }, 'destroyed');
      return { job, step, killed: pids.length, jobRemoved, existed: true };
    });
  }

  /**
   * Remove a step bottom-up knowing its layout (slurm/, user/task_*): one
   * listing (user/) instead of a failed rmdir and a listing per level. Anything
   * unexpected falls back to the generic walk.
   */
  private async removeStep(dir: string): Promise<void> {
    const user = path.join(dir, USER_DIR);
    for (const t of childDirs(user)) await removeTree(path.join(user, t), this.opts.waitTimeoutMs);
    for (const d of [user, path.join(dir, SLURM_LEAF)]) await removeTree(d, this.opts.waitTimeoutMs);
    await removeTree(dir, this.opts.waitTimeoutMs);
  }

  /** Remove the job when no step is left in it (destroy's reapJob); true when it is gone. */
  private async reapIfStepless(job: string): Promise<boolean> {
    const jobDir = this.paths.job(job);
    if (childDirs(jobDir).some((n) => parseStepName(n) !== null)) return false;
    this.watcher.unwatchDir(jobDir, job);
    await this.removeJob(jobDir);
    this.index.delete(job);
    return true;
  }

  private async removeJob(dir: string): Promise<void> {
    for (const s of childDirs(dir)) await this.removeStep(path.join(dir, s));
    await removeTree(dir, this.opts.waitTimeoutMs);
  }

  list(): JobInfo[] {
    const jobs: JobInfo[] = [];
    for (const jn of childDirs(this.opts.scopeDir)) {
      const job = parseJobName(jn);
      if (job === null) continue;
      const jdir = this.paths.job(job);
      const steps: StepInfo[] = [];
      for (const sn of childDirs(jdir)) {
        const step = parseStepName(sn);
        if (step === null) continue;
        const sdir = this.paths.step(job, step);
        const tasks = childDirs(path.join(sdir, USER_DIR)).filter((n) => parseTaskName(n) !== null);
        steps.push({ step, path: sdir, populated: isPopulated(sdir), tasks });
      }
      jobs.push({ job, path: jdir, populated: isPopulated(jdir), steps });
    }
    return jobs.sort((a, b) => Number(a.job) - Number(b.job));
  }

  close(): Promise<void> {
    return this.watcher.close();
  }
}

