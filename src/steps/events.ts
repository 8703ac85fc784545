/**
 * steps/events: watches the tree's cgroup.events and memory.events files and
 * turns their changes into AgentEvents the moment the kernel reports them
 * (inotify).
 *
 * Watched: each job's and step's cgroup.events (populated, frozen), each
 * task's cgroup.events (populated), and each step's memory.events where the
 * memory controller is on (oom_kill is hierarchical, so a task's OOM shows at
 * its step). Reads files and emits; never writes to the tree.
 *
 * One fs.watch (an inotify watch on libuv's shared inotify fd) per file. Not
 * chokidar: its unwatch() keeps every path ever unwatched in an ignore list
 * that each later add() scans, so a node that churns through steps slows down
 * with every destroyed step (measured: most of the agent's CPU after 1,500
 * cycles); chokidar 6 also misses kernfs changes altogether.
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { parseFlatKeyed, readOptional } from '../cgroupfs/index.js';
import type { AgentEvent, EventKind } from '../rpc/protocol.js';

interface Watched {
  job: string;
  step?: string;
  task?: string;
  /** cgroup: populated (and frozen for jobs); freeze: a step's user/ frozen; memory: oom_kill. */
  kind: 'cgroup' | 'freeze' | 'memory';
  last: Record<string, number>;
  handle: fs.FSWatcher;
}

export class TreeWatcher extends EventEmitter {
  private files = new Map<string, Watched>();
  /** job -> its watched files: unwatching a job or step looks at that job's files only, not the node's. */
  private byJob = new Map<string, Set<string>>();

  /**
   * Watch a job (step/task undefined), a step, or a task directory. `memory`
   * says whether the memory controller is on there (memory.events exists).
   * `fresh`: the directory was just made and nothing has entered it, so its
   * files need no first read (populated 0, frozen 0, no OOM kill).
   */
  watchDir(dir: string, ids: { job: string; step?: string; task?: string }, memory = false, fresh = false): void {
    this.add(path.join(dir, 'cgroup.events'), { ...ids, kind: 'cgroup' }, fresh ? { populated: 0, frozen: 0 } : undefined);
    if (memory && ids.step !== undefined && ids.task === undefined) this.add(path.join(dir, 'memory.events'), { ...ids, kind: 'memory' }, fresh ? {} : undefined);
  }

  /**
   * Watch a step's user/ for frozen/thawed (steps are frozen at user/, so the
   * step daemon in slurm/ keeps running). Added by the first freeze, not at
   * creation: most steps are never frozen.
   */
  watchFreeze(stepDir: string, ids: { job: string; step: string }): void {
    this.add(path.join(stepDir, 'user', 'cgroup.events'), { ...ids, kind: 'freeze' });
  }

  private add(file: string, w: Omit<Watched, 'last' | 'handle'>, known?: Record<string, number>): void {
    if (this.files.has(file)) return;
    let last = known;
    if (!last) {
      const text = readOptional(file);
      if (text === null) return;
      last = parseFlatKeyed(text);
    }
    let handle: fs.FSWatcher;
    try {
      handle = fs.watch(file, { persistent: false }, () => this.onChange(file));
    } catch {
      return; // removed between the read and the watch
    }
    handle.on('error', () => this.drop(file));
    this.files.set(file, { ...w, last, handle });
    let set = this.byJob.get(w.job);
    if (!set) this.byJob.set(w.job, (set = new Set()));
    set.add(file);
  }

  private drop(file: string): void {
    const w = this.files.get(file);
    if (!w) return;
    w.handle.close();
    this.files.delete(file);
    const set = this.byJob.get(w.job);
    set?.delete(file);
    if (set?.size === 0) this.byJob.delete(w.job);
  }

  /**
   * Stop watching everything at or below dir. Each file is read one last time
   * first, so a change the kernel made just before (the kill of a destroy) is
   * still published even if inotify's notice has not been handled yet.
   */
  unwatchDir(dir: string, job: string): void {
    const prefix = dir.endsWith('/') ? dir : dir + '/';
    const gone: string[] = [];
    for (const f of this.byJob.get(job) ?? []) if (f.startsWith(prefix)) gone.push(f);
    // Frozen/thawed only change through our own freeze requests: no last read for them.
    for (const f of gone) if (this.files.get(f)!.kind !== 'freeze') this.onChange(f);
    for (const f of gone) this.drop(f);
  }

  get watchedFiles(): number {
    return this.files.size;
  }

  private onChange(file: string): void {
    const w = this.files.get(file);
    if (!w) return;
    const text = readOptional(file);
    if (text === null) return;
    const now = parseFlatKeyed(text);
    const before = w.last;
    w.last = now;
    if (w.kind === 'memory') {
      if ((now.oom_kill ?? 0) > (before.oom_kill ?? 0)) this.emitEvent('oom', w, { oomKill: now.oom_kill });
      return;
    }
    if (w.kind === 'cgroup' && before.populated === 1 && now.populated === 0) {
      this.emitEvent(w.task !== undefined ? 'task.empty' : w.step !== undefined ? 'step.empty' : 'job.empty', w);
    }
    const freezeKind = w.step === undefined ? w.kind === 'cgroup' : w.kind === 'freeze';
    if (freezeKind && w.task === undefined && before.frozen !== now.frozen && now.frozen !== undefined) {
      this.emitEvent(now.frozen === 1 ? 'frozen' : 'thawed', w);
    }
  }

  private emitEvent(event: EventKind, w: Watched, extra: Partial<AgentEvent> = {}): void {
    const e: AgentEvent = { event, job: w.job, time: new Date().toISOString(), ...extra };
    if (w.step !== undefined) e.step = w.step;
    if (w.task !== undefined) e.task = w.task;
    this.emit('event', e);
  }

  async close(): Promise<void> {
    for (const f of [...this.files.keys()]) this.drop(f);
  }
}
