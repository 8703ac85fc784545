/**
 * steps/events: watches the tree's cgroup.events and memory.events files and
 * turns their changes into AgentEvents the moment the kernel reports them
 * (inotify).
 *
 * Watched: each job's, step's and task's cgroup.events (populated), and each
 * step's memory.events where the memory controller is on (oom_kill is
 * hierarchical, so a task's OOM shows at its step). Reads files and emits;
 * never writes to the tree.
 *
 * frozen/thawed are not inferred from notices: they change only through the
 * agent's own freeze requests, which publish them (frozenChanged) once the
 * kernel reports the state. Inferred from notices they were lost: the notice
 * of a step reaching frozen 1 may be read only after a quick thaw (the kernel
 * sends it late, and holds a second one for 10 ms), and that read says
 * frozen 0 as the last did, so neither frozen nor thawed was published.
 *
 * All through cgroupfs's one inotify fd (a kernel mark and a few numbers per
 * file, off the JS heap's handle lists), not an fs.watch handle per file
 * (about 1.3 KB each, two per live step). Not chokidar: its unwatch() keeps
 * every path ever unwatched in an ignore list that each later add() scans, and
 * chokidar 6 misses kernfs changes altogether.
 */
import { EventEmitter } from 'node:events';
import path from 'node:path';
import { inotify, parseFlatKeyed, readOptional, type WatchListener } from '../cgroupfs/index.js';
import type { Logger } from 'pino';
import { KernelError } from '../errors.js';
import type { AgentEvent, EventKind } from './model.js';
import type { TreePaths } from './names.js';

/** cgroup: populated; memory: oom_kill. */
type Kind = 'cgroup' | 'memory';

/**
 * One watched file, kept small: tens of thousands live at once. Its path is
 * not kept (two per live step cost about 2.5 MB at 10,000 steps) but made
 * from the ids when it is read.
 */
interface Watched {
  wd: number;
  job: string;
  step: string | undefined;
  task: string | undefined;
  kind: Kind;
  /** The file's last known populated and oom_kill values. */
  populated: number;
  oomKill: number;
}

export class TreeWatcher extends EventEmitter {
  private byWd = new Map<number, Watched>();
  /**
   * job -> its watched files (an array: a job has a few, and a Set costs
   * about 300 bytes); unwatching a job or step looks at that job's files
   * only, not the node's.
   */
  private byJob = new Map<string, Watched[]>();
  /**
   * The files read since the notices being handled were read from inotify
   * (null between drains): a job's, step's and task's notices come together
   * when a task empties, and the first one read settles the others (see
   * settleBelow), so their own notices need no second read.
   */
  private readInDrain: Set<Watched> | null = null;
  private readonly listener: WatchListener = {
    changed: (wd) => {
      const w = this.byWd.get(wd);
      if (!w) return;
      this.readInDrain ??= new Set();
      if (!this.readInDrain.has(w)) this.onChange(w);
    },
    drained: () => {
      this.readInDrain = null;
    },
    gone: (wd) => {
      const w = this.byWd.get(wd);
      if (w) this.forget(w);
    },
  };

  /** Watches the kernel or the addon refused (not counting files already gone), and when that was last logged. */
  private failed = { count: 0, loggedAt: 0 };

  constructor(
    private readonly paths: TreePaths,
    private readonly log?: Logger,
  ) {
    super();
    // One 'event' listener per subscribed connection: as many as the socket's
    // connection limits allow, none of them a leak.
    this.setMaxListeners(0);
  }

  /**
   * A file that cannot be watched (ENOSPC: fs.inotify.max_user_watches, which
   * every process of the uid shares; an addon without inotify) never publishes
   * its events: said loudly, at most every 10 s.
   */
  private watchFailed(file: string, err: unknown): void {
    this.failed.count++;
    const now = Date.now();
    if (now - this.failed.loggedAt < 10_000) return;
    this.failed.loggedAt = now;
    this.log?.error({ err, file, failedWatches: this.failed.count }, 'cannot watch a cgroup file: its empty and OOM events will not be published (ENOSPC: raise fs.inotify.max_user_watches)');
  }

  /** The directory a watch is in, from its ids. */
  private dirOf(w: Watched): string {
    const { job, step, task } = w;
    if (step === undefined) return this.paths.job(job);
    if (task === undefined) return this.paths.step(job, step);
    return this.paths.leaf(job, step, task === 'special' ? 'special' : { task: Number(task) });
  }

  /** The file a watch is on, from its ids. */
  private fileOf(w: Watched): string {
    return path.join(this.dirOf(w), w.kind === 'memory' ? 'memory.events' : 'cgroup.events');
  }

  /**
   * Watch a job (step/task undefined), a step, or a task directory. `memory`
   * says whether the memory controller is on there (memory.events exists).
   * `fresh`: the directory was just made and nothing has entered it, so its
   * files need no first read (populated 0, no OOM kill).
   */
  watchDir(dir: string, ids: { job: string; step?: string; task?: string }, memory = false, fresh = false): void {
    this.add(path.join(dir, 'cgroup.events'), ids, 'cgroup', fresh);
    if (memory && ids.step !== undefined && ids.task === undefined) this.add(path.join(dir, 'memory.events'), ids, 'memory', fresh);
  }

  /**
   * A process was just moved into a leaf: the leaf, its step and its job are
   * populated now (watched before the move, so a change since, the process's
   * exit included, is notified and read then).
   */
  moved(ids: { job: string; step: string; task?: string }): void {
    for (const w of this.byJob.get(ids.job) ?? []) {
      if (w.kind === 'cgroup' && (w.step === undefined || (w.step === ids.step && (w.task === undefined || w.task === ids.task)))) w.populated = 1;
    }
  }

  /**
   * Publish a step's frozen or thawed, from the freeze request that changed it
   * once the kernel's cgroup.events says so (see the header: not from notices).
   */
  frozenChanged(ids: { job: string; step: string }, frozen: boolean): void {
    const e: AgentEvent = { event: frozen ? 'frozen' : 'thawed', job: ids.job, step: ids.step, time: new Date().toISOString() };
    this.emit('event', e);
  }

  private add(file: string, ids: { job: string; step?: string; task?: string }, kind: Kind, fresh: boolean): void {
    const mine = this.byJob.get(ids.job);
    if (mine?.some((w) => w.kind === kind && w.step === ids.step && w.task === ids.task)) return;
    let wd: number;
    try {
      wd = inotify().add(file, this.listener);
    } catch (err) {
      if (!(err instanceof KernelError && (err.errno === 'ENOENT' || err.errno === 'ENOTDIR'))) this.watchFailed(file, err);
      return; // ENOENT: removed already
    }
    // Read after the mark is in place: a change after this read is then always notified.
    let last: Record<string, number> = {};
    if (!fresh) {
      const text = readOptional(file);
      if (text === null) {
        inotify().remove(wd, this.listener);
        return;
      }
      last = parseFlatKeyed(text);
    }
    const w: Watched = { wd, job: ids.job, step: ids.step, task: ids.task, kind, populated: last.populated ?? 0, oomKill: last.oom_kill ?? 0 };
    this.byWd.set(wd, w);
    if (mine) mine.push(w);
    else this.byJob.set(w.job, [w]);
  }

  private forget(w: Watched): void {
    if (this.byWd.get(w.wd) !== w) return;
    this.byWd.delete(w.wd);
    const mine = this.byJob.get(w.job);
    if (!mine) return;
    const i = mine.indexOf(w);
    if (i >= 0) mine.splice(i, 1);
    if (mine.length === 0) this.byJob.delete(w.job);
  }

  private drop(w: Watched): void {
    inotify().remove(w.wd, this.listener);
    this.forget(w);
  }

  /**
   * Stop watching everything at or below dir. Each file is read one last time
   * first, so a change the kernel made just before (the kill of a destroy) is
   * still published even if inotify's notice has not been handled yet (the
   * kernel sends it up to 10 ms late). A file last seen unpopulated needs no
   * read: only populated 1 -> 0 makes an event. `empty`: the caller has just
   * read dir's cgroup.events say populated 0 (or waited for it), so nothing
   * is populated at or below it and its cgroup.events files need no read of
   * their own: those last seen populated publish their empty from that.
   */
  unwatchDir(dir: string, job: string, empty = false): void {
    const gone: Watched[] = [];
    for (const _ of this.detach(dir, job, empty, gone));
    for (const w of gone) inotify().remove(w.wd, this.listener);
  }

  /**
   * unwatchDir for a destroy of a whole step or job, which may be thousands
   * of watched files: `pause` is awaited between them, and between letting
   * their kernel watches go (a syscall each). The files are forgotten before
   * the first watch goes, so notices for them meanwhile are ignored.
   */
  async unwatchDirSliced(dir: string, job: string, empty: boolean, pause: () => Promise<void>): Promise<void> {
    const gone: Watched[] = [];
    for (const _ of this.detach(dir, job, empty, gone)) await pause();
    for (const w of gone) {
      inotify().remove(w.wd, this.listener);
      await pause();
    }
  }

  /**
   * unwatchDir's publishing and forgetting, with the files whose kernel
   * watches are to go put in `gone`. Yields between files, where a caller
   * may let other work run: the job's lock keeps watches from being added
   * below dir meanwhile, and a notice handled in between publishes no
   * second event (only populated 1 -> 0 publishes, once). The forgetting
   * is one pass over the job's files, however many go.
   */
  private *detach(dir: string, job: string, empty: boolean, gone: Watched[]): Generator<void> {
    const prefix = dir.endsWith('/') ? dir : dir + '/';
    for (const w of [...(this.byJob.get(job) ?? [])]) {
      if (this.fileOf(w).startsWith(prefix)) gone.push(w);
      yield;
    }
    // Deepest first, so one job's events always come task -> step -> job.
    gone.sort((a, b) => level(b) - level(a));
    for (const w of gone) {
      if (w.kind === 'cgroup' && w.populated === 0) continue;
      if (w.kind === 'cgroup' && empty) this.emptied(w);
      else this.onChange(w);
      yield;
    }
    const going = new Set(gone);
    for (const w of gone) if (this.byWd.get(w.wd) === w) this.byWd.delete(w.wd);
    const rest = (this.byJob.get(job) ?? []).filter((w) => !going.has(w));
    if (rest.length) this.byJob.set(job, rest);
    else this.byJob.delete(job);
  }

  /** How many of the job's task leaves are watched (the agent made them: a user's count for its cap). */
  taskCount(job: string): number {
    let n = 0;
    for (const w of this.byJob.get(job) ?? []) if (w.task !== undefined && w.kind === 'cgroup') n++;
    return n;
  }

  /** The job's watched task leaf directories, by step (a hint: a leaf may exist unwatched). */
  taskLeaves(job: string): Map<string, string[]> {
    const out = new Map<string, string[]>();
    for (const w of this.byJob.get(job) ?? []) {
      if (w.step === undefined || w.task === undefined) continue;
      const dir = this.dirOf(w);
      const mine = out.get(w.step);
      if (mine) mine.push(dir);
      else out.set(w.step, [dir]);
    }
    return out;
  }

  get watchedFiles(): number {
    return this.byWd.size;
  }

  private onChange(w: Watched): void {
    this.readInDrain?.add(w);
    let text: string | null;
    try {
      text = readOptional(this.fileOf(w));
    } catch {
      return; // a directory removed behind the agent reads ENODEV: nothing to publish
    }
    if (text === null) return;
    const now = parseFlatKeyed(text);
    if (w.kind === 'memory') {
      const oomKill = now.oom_kill ?? 0;
      const before = w.oomKill;
      w.oomKill = oomKill;
      if (oomKill > before) this.emitEvent('oom', w, { oomKill });
      return;
    }
    const populated = now.populated ?? w.populated;
    if (w.populated === 1 && populated === 0) {
      // The kernel empties a task before its step and job, but their inotify
      // notices may be handled in any order: read what lies below first.
      if (w.task === undefined) this.settleBelow(w);
      this.emptied(w);
    } else w.populated = populated;
  }

  /** A cgroup.events file last seen populated is known to say populated 0 now: publish its empty. */
  private emptied(w: Watched): void {
    w.populated = 0;
    this.emitEvent(w.task !== undefined ? 'task.empty' : w.step !== undefined ? 'step.empty' : 'job.empty', w);
  }

  /**
   * Read the watched cgroup.events files below w's directory, deepest first,
   * publishing their changes. Only those last seen populated: an empty is
   * published on 1 -> 0 alone, so reading one last seen empty publishes
   * nothing (and its own notice brings any change since). This also spares
   * unwatchDir's files, read deepest first just before, a second read.
   */
  private settleBelow(w: Watched): void {
    const below = (this.byJob.get(w.job) ?? []).filter((o) => o !== w && o.kind === 'cgroup' && o.populated === 1 && level(o) > level(w) && (w.step === undefined || o.step === w.step));
    below.sort((a, b) => level(b) - level(a));
    for (const o of below) this.onChange(o);
  }

  private emitEvent(event: EventKind, w: Watched, extra: Partial<AgentEvent> = {}): void {
    const e: AgentEvent = { event, job: w.job, time: new Date().toISOString(), ...extra };
    if (w.step !== undefined) e.step = w.step;
    if (w.task !== undefined) e.task = w.task;
    this.emit('event', e);
  }

  async close(): Promise<void> {
    for (const w of [...this.byWd.values()]) this.drop(w);
  }
}

/** 0 for a job, 1 for a step, 2 for a task: deeper levels empty first. */
function level(w: Watched): number {
  return w.step === undefined ? 0 : w.task === undefined ? 1 : 2;
}
