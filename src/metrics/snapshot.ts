/**
 * metrics/snapshot: the per-job/step/task series as Prometheus text, built by
 * reading the tree in slices of a few milliseconds (the event loop answers
 * requests between slices), and kept for scrapes until it is too old.
 *
 * Names follow Prometheus conventions: counters end in _total and are typed
 * counter, units in the name (_bytes, _seconds), labels jobid/step/task (never
 * job or instance, which belong to Prometheus's target labels).
 */
import path from 'node:path';
import { childDirs, enabledIn, readLimitFigures, readStats } from '../cgroupfs/index.js';
import { parseTaskName, USER_DIR, type StepTree } from '../steps/index.js';

export type Level = 'job' | 'step' | 'task';

interface FamilySpec { name: string; type: 'counter' | 'gauge'; help: string }

/** Every per-level family, in output order; `cgstep_<level>_<name>`. */
const FAMILIES: readonly FamilySpec[] = [
  { name: 'cpu_user_seconds_total', type: 'counter', help: 'CPU user time (cpu.stat user_usec)' },
  { name: 'cpu_system_seconds_total', type: 'counter', help: 'CPU system time (cpu.stat system_usec)' },
  { name: 'cpu_usage_seconds_total', type: 'counter', help: 'CPU time (cpu.stat usage_usec)' },
  { name: 'memory_current_bytes', type: 'gauge', help: 'Memory in use (memory.current)' },
  { name: 'memory_peak_bytes', type: 'gauge', help: 'Highest memory use (memory.peak)' },
  { name: 'oom_kills_total', type: 'counter', help: 'Processes killed by the OOM killer (memory.events oom_kill)' },
  { name: 'pids', type: 'gauge', help: 'Processes and threads (pids.current)' },
  { name: 'io_read_bytes_total', type: 'counter', help: 'Bytes read, all devices (io.stat rbytes)' },
  { name: 'io_write_bytes_total', type: 'counter', help: 'Bytes written, all devices (io.stat wbytes)' },
  { name: 'memory_max_bytes', type: 'gauge', help: 'Memory limit (memory.max; absent when unlimited)' },
  { name: 'memory_high_bytes', type: 'gauge', help: 'Memory throttling threshold (memory.high; absent when unlimited)' },
  { name: 'memory_swap_max_bytes', type: 'gauge', help: 'Swap limit (memory.swap.max; absent when unlimited)' },
  { name: 'cpus_allowed', type: 'gauge', help: 'CPUs allowed (count of cpuset.cpus.effective)' },
  { name: 'pids_max', type: 'gauge', help: 'Process limit (pids.max; absent when unlimited)' },
  { name: 'cpu_max_quota_seconds', type: 'gauge', help: 'CPU time allowed per period (cpu.max quota; absent when unlimited)' },
  { name: 'cpu_max_period_seconds', type: 'gauge', help: 'Period of the CPU quota (cpu.max period)' },
  { name: 'frozen', type: 'gauge', help: '1 while frozen (cgroup.events frozen; a step freezes at user/)' },
];

/** Cgroups read per slice check; the time budget per slice is SLICE_MS. */
const SLICE_MS = 4;

export interface Snapshot {
  /** The text, in chunks (one or more per family), ready to write. */
  chunks: Buffer[];
  bytes: number;
  /** performance.now() when the walk began. */
  takenAt: number;
  cgroups: number;
  /** Wall time of the whole refresh, and its longest slice (the longest the event loop waited on it). */
  refreshMs: number;
  longestSliceMs: number;
}

export interface SnapshotSource {
  tree: StepTree;
  perTask: boolean;
  /** Extra labels on every series (node="..."), already formatted: `node="n1"`. */
  constLabels: string;
  /** The job's owner uid (null: unknown); absent: no owner series. */
  ownerOf?: (job: string) => number | null;
}

function esc(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

class Families {
  private lines = new Map<string, string[]>();
  add(name: string, labels: string, value: number): void {
    let l = this.lines.get(name);
    if (!l) this.lines.set(name, (l = []));
    l.push(`${name}{${labels}} ${value}\n`);
  }
  get(name: string): string[] {
    return this.lines.get(name) ?? [];
  }
}

/** Read one directory's stats and limits into the families for its level. */
function sample(fam: Families, level: Level, dir: string, labels: string, ctl: readonly string[] | undefined, frozenDir?: string): void {
  const st = readStats(dir, ctl);
  const lim = readLimitFigures(dir, ctl);
  const p = `cgstep_${level}_`;
  if (st.cpu) {
    fam.add(`${p}cpu_user_seconds_total`, labels, st.cpu.userUsec / 1e6);
    fam.add(`${p}cpu_system_seconds_total`, labels, st.cpu.systemUsec / 1e6);
    fam.add(`${p}cpu_usage_seconds_total`, labels, st.cpu.usageUsec / 1e6);
  }
  if (st.memory) {
    fam.add(`${p}memory_current_bytes`, labels, st.memory.current);
    if (st.memory.peak !== null) fam.add(`${p}memory_peak_bytes`, labels, st.memory.peak);
  }
  if (st.oomKill !== null) fam.add(`${p}oom_kills_total`, labels, st.oomKill);
  if (st.pids) fam.add(`${p}pids`, labels, st.pids.current);
  if (st.io) {
    fam.add(`${p}io_read_bytes_total`, labels, Object.values(st.io).reduce((a, d) => a + d.rbytes, 0));
    fam.add(`${p}io_write_bytes_total`, labels, Object.values(st.io).reduce((a, d) => a + d.wbytes, 0));
  }
  if (lim.memoryMax !== null) fam.add(`${p}memory_max_bytes`, labels, lim.memoryMax);
  if (lim.memoryHigh !== null) fam.add(`${p}memory_high_bytes`, labels, lim.memoryHigh);
  if (lim.swapMax !== null) fam.add(`${p}memory_swap_max_bytes`, labels, lim.swapMax);
  if (lim.cpus !== null) fam.add(`${p}cpus_allowed`, labels, lim.cpus);
  if (lim.pidsMax !== null) fam.add(`${p}pids_max`, labels, lim.pidsMax);
  if (lim.cpuQuotaUsec !== null) fam.add(`${p}cpu_max_quota_seconds`, labels, lim.cpuQuotaUsec / 1e6);
  if (lim.cpuPeriodUsec !== null) fam.add(`${p}cpu_max_period_seconds`, labels, lim.cpuPeriodUsec / 1e6);
  // Freezing is per step (at user/); a job directory itself is never frozen, so it has no series.
  const frozen = level === 'job' ? null : frozenDir === undefined ? lim.frozen : readLimitFiguresFrozen(frozenDir);
  if (frozen !== null) fam.add(`${p}frozen`, labels, frozen ? 1 : 0);
}

/** A step freezes at user/ (its daemon in slurm/ keeps running): its frozen state is user/'s. */
function readLimitFiguresFrozen(dir: string): boolean | null {
  return readLimitFigures(dir, []).frozen;
}

const yieldToLoop = () => new Promise<void>((r) => setImmediate(r));

/** Walk the tree in slices and return the snapshot. */
export async function takeSnapshot(src: SnapshotSource): Promise<Snapshot> {
  const t0 = performance.now();
  let longest = 0;
  let sliceStart = performance.now();
  /** Yield when this slice has used its budget. */
  const maybeYield = async () => {
    const now = performance.now();
    if (now - sliceStart < SLICE_MS) return;
    longest = Math.max(longest, now - sliceStart);
    await yieldToLoop();
    sliceStart = performance.now();
  };
  const tree = src.tree;
  const fam = new Families();
  const c = src.constLabels ? `,${src.constLabels}` : '';
  let ctl: string[] | undefined;
  try {
    // A directory has at most the controllers the scope enables (the tree passes them all down).
    ctl = enabledIn(tree.paths.scope);
  } catch {
    ctl = undefined;
  }
  // The index is copied first: jobs and steps may come and go between slices.
  const jobs = [...tree.known()].map(([job, steps]) => [job, [...steps]] as const);
  let n = 0;
  for (const [job, steps] of jobs) {
    const jl = `jobid="${esc(job)}"${c}`;
    sample(fam, 'job', tree.paths.job(job), jl, ctl);
    const uid = src.ownerOf?.(job);
    if (uid !== undefined && uid !== null) fam.add('cgstep_job_owner_info', `jobid="${esc(job)}",uid="${uid}"${c}`, 1);
    n++;
    for (const step of steps) {
      const sdir = tree.paths.step(job, step);
      const sl = `jobid="${esc(job)}",step="${esc(step)}"${c}`;
      const udir = path.join(sdir, USER_DIR);
      sample(fam, 'step', sdir, sl, ctl, udir);
      n++;
      if (src.perTask) {
        for (const tn of childDirs(udir)) {
          const task = parseTaskName(tn);
          if (task === null) continue;
          sample(fam, 'task', path.join(udir, tn), `jobid="${esc(job)}",step="${esc(step)}",task="${task}"${c}`, ctl);
          n++;
        }
      }
      await maybeYield();
    }
    await maybeYield();
  }
  const chunks: Buffer[] = [];
  let bytes = 0;
  const push = (b: Buffer) => {
    chunks.push(b);
    bytes += b.length;
  };
  const levels: Level[] = src.perTask ? ['job', 'step', 'task'] : ['job', 'step'];
  for (const level of levels) {
    for (const f of FAMILIES) {
      const name = `cgstep_${level}_${f.name}`;
      push(Buffer.from(`# HELP ${name} ${f.help}, per ${level}\n# TYPE ${name} ${f.type}\n`));
      const lines = fam.get(name);
      // Joined in pieces so that no one join holds the loop for long.
      for (let i = 0; i < lines.length; i += 2000) {
        push(Buffer.from(lines.slice(i, i + 2000).join('')));
        await maybeYield();
      }
    }
  }
  if (src.ownerOf) {
    push(Buffer.from('# HELP cgstep_job_owner_info The uid that owns the job (1 per job)\n# TYPE cgstep_job_owner_info gauge\n'));
    push(Buffer.from(fam.get('cgstep_job_owner_info').join('')));
  }
  longest = Math.max(longest, performance.now() - sliceStart);
  return { chunks, bytes, takenAt: t0, cgroups: n, refreshMs: performance.now() - t0, longestSliceMs: longest };
}
