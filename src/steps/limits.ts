/**
 * steps/limits: turn a request's limits into cgroup interface file writes.
 *
 * Pure planning (planLimits) is kept apart from applying, so the formulas and
 * the "controller missing" decisions can be tested without a kernel. Job
 * limits go on job_<id>/, step limits on step_<n>/user/ so the step daemon in
 * slurm/ is not charged to or confined by its tasks.
 */
import path from 'node:path';
import type { CgroupConf } from '../config/cgroupconf.js';
import { memoryLimits } from '../config/memory.js';
import { AgentError } from '../errors.js';
import type { Limits } from './model.js';
import { readOptional, writeText } from '../cgroupfs/index.js';
import type { Undo } from './undo.js';

export interface FileWrite { controller: string; file: string; value: string }
export interface LimitPlan { writes: FileWrite[]; skipped: string[] }

/**
 * What to write for `limits`, given the controllers the directory has.
 * A limit whose controller is absent is an ENOTSUP error naming it, unless
 * ignoreMissing, in which case it is listed in `skipped`.
 */
export function planLimits(limits: Limits, available: ReadonlySet<string>, conf: CgroupConf, totalRam: number, ignoreMissing: boolean): LimitPlan {
  const wanted: FileWrite[] = [];
  if (conf.constrainCores) {
    if (limits.cpus !== undefined) wanted.push({ controller: 'cpuset', file: 'cpuset.cpus', value: limits.cpus });
    if (limits.mems !== undefined) wanted.push({ controller: 'cpuset', file: 'cpuset.mems', value: limits.mems });
  }
  if (limits.memory !== undefined) {
    const mem = memoryLimits(limits.memory, conf, totalRam, limits.swap);
    if (mem) {
      wanted.push({ controller: 'memory', file: 'memory.high', value: String(mem.high) });
      wanted.push({ controller: 'memory', file: 'memory.max', value: String(mem.max) });
      if (mem.swapMax !== null) wanted.push({ controller: 'memory', file: 'memory.swap.max', value: String(mem.swapMax) });
    }
  } else if (limits.swap !== undefined) {
    wanted.push({ controller: 'memory', file: 'memory.swap.max', value: String(limits.swap) });
  }
  if (limits.oomGroup !== undefined) wanted.push({ controller: 'memory', file: 'memory.oom.group', value: limits.oomGroup ? '1' : '0' });
  if (limits.pids !== undefined) wanted.push({ controller: 'pids', file: 'pids.max', value: String(limits.pids) });
  if (limits.cpuMax !== undefined) wanted.push({ controller: 'cpu', file: 'cpu.max', value: limits.cpuMax });
  if (limits.cpuWeight !== undefined) wanted.push({ controller: 'cpu', file: 'cpu.weight', value: String(limits.cpuWeight) });

  const writes: FileWrite[] = [];
  const skipped: string[] = [];
  for (const w of wanted) {
    if (available.has(w.controller)) writes.push(w);
    else if (ignoreMissing) skipped.push(w.file);
    else
      throw new AgentError(
        'ENOTSUP',
        `${w.file} needs the ${w.controller} controller, which is not available here (cgroup.controllers: ${[...available].join(' ') || 'none'}); start cgstepd with --ignore-missing-controllers to accept the request without it`,
      );
  }
  return { writes, skipped };
}

/**
 * Write a plan's files in order. With `undo`, each file's value before the
 * write is kept so a refused request can put it back (a directory made by the
 * request itself needs none: it is removed).
 */
export function writeLimits(dir: string, plan: LimitPlan, undo: Undo | null): void {
  for (const w of plan.writes) {
    const file = path.join(dir, w.file);
    const old = undo ? readOptional(file) : null;
    writeText(file, w.value);
    // An empty value (cpuset: inherit) is written back as a newline: a write of nothing never reaches the kernel.
    if (old !== null) undo!.add(`${file} back to ${old.trim() || '(empty)'}`, () => writeText(file, old.trim() || '\n'));
  }
}

/** Read back the limits that are set on dir (for list/stats after a restart). */
export function readLimits(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of ['cpuset.cpus', 'cpuset.mems', 'memory.max', 'memory.high', 'memory.swap.max', 'pids.max', 'cpu.max', 'cpu.weight']) {
    const v = readOptional(path.join(dir, f));
    if (v !== null && v.trim() !== '') out[f] = v.trim();
  }
  return out;
}
