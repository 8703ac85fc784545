/**
 * metrics/snapshot: the per-job/step/task series as Prometheus text. The tree
 * is read, and the text rendered into ready-to-write chunks, in slices of about
 * two milliseconds (the event loop answers requests between slices); the result
 * is kept for scrapes until it is too old, so a scrape only writes buffers.
 *
 * Names follow Prometheus conventions: counters end in _total and are typed
 * counter, units in the name (_bytes, _seconds), labels jobid/step/task (never
 * job or instance, which belong to Prometheus's target labels).
 */
import path from 'node:path';
import { childDirs, enabledIn, readLimitFigures, readStats } from '../cgroupfs/index.js';
import { parseTaskName, USER_DIR, type StepTree } from '../steps/index.js';
import { escLabel as esc } from './agent.js';

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

/** The longest a refresh holds the event loop at once (ms) before it yields. */
const SLICE_MS = 2;
/** Size of the text chunks a scrape writes. */
const CHUNK_BYTES = 64 * 1024;

export interface Snapshot {
  /** The finished text, in chunks, ready to write: a scrape renders nothing. */
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


/**
 * The figures of one level, by column: a label string per cgroup and a number
 * per family (NaN: no series). Numbers in arrays, not lines in strings, so a
 * refresh keeps one small string per cgroup alive between the walk and the
 * rendering instead of one per series (fewer and shorter garbage collections).
 */
class Columns {
  readonly labels: string[] = [];
  readonly values: number[][] = FAMILIES.map(() => []);
  row(labels: string): number {
    this.labels.push(labels);
    for (const col of this.values) col.push(NaN);
    return this.labels.length - 1;
  }
}

const FAMILY_INDEX = new Map(FAMILIES.map((f, i) => [f.name, i]));
const col = (name: string) => FAMILY_INDEX.get(name)!;
const C = {
  cpuUser: col('cpu_user_seconds_total'), cpuSystem: col('cpu_system_seconds_total'), cpuUsage: col('cpu_usage_seconds_total'),
  memCurrent: col('memory_current_bytes'), memPeak: col('memory_peak_bytes'), oom: col('oom_kills_total'), pids: col('pids'),
  ioRead: col('io_read_bytes_total'), ioWrite: col('io_write_bytes_total'), memMax: col('memory_max_bytes'), memHigh: col('memory_high_bytes'),
  swapMax: col('memory_swap_max_bytes'), cpus: col('cpus_allowed'), pidsMax: col('pids_max'), quota: col('cpu_max_quota_seconds'),
  period: col('cpu_max_period_seconds'), frozen: col('frozen'),
};

/** Read one directory's stats and limits into its level's columns. */
function sample(cols: Columns, level: Level, dir: string, labels: string, ctl: readonly string[] | undefined, frozenDir?: string): void {
  const st = readStats(dir, ctl);
  const lim = readLimitFigures(dir, ctl);
  const r = cols.row(labels);
  const set = (c: number, v: number | null) => {
    if (v !== null) cols.values[c][r] = v;
  };
  if (st.cpu) {
    set(C.cpuUser, st.cpu.userUsec / 1e6);
    set(C.cpuSystem, st.cpu.systemUsec / 1e6);
    set(C.cpuUsage, st.cpu.usageUsec / 1e6);
  }
  if (st.memory) {
    set(C.memCurrent, st.memory.current);
    set(C.memPeak, st.memory.peak);
  }
  set(C.oom, st.oomKill);
  if (st.pids) set(C.pids, st.pids.current);
  if (st.io) {
    set(C.ioRead, Object.values(st.io).reduce((a, d) => a + d.rbytes, 0));
    set(C.ioWrite, Object.values(st.io).reduce((a, d) => a + d.wbytes, 0));
  }
  set(C.memMax, lim.memoryMax);
  set(C.memHigh, lim.memoryHigh);
  set(C.swapMax, lim.swapMax);
  set(C.cpus, lim.cpus);
  set(C.pidsMax, lim.pidsMax);
  set(C.quota, lim.cpuQuotaUsec === null ? null : lim.cpuQuotaUsec / 1e6);
  set(C.period, lim.cpuPeriodUsec === null ? null : lim.cpuPeriodUsec / 1e6);
  // Freezing is per step (at user/); a job directory itself is never frozen, so it has no series.
  const frozen = level === 'job' ? null : frozenDir === undefined ? lim.frozen : readLimitFiguresFrozen(frozenDir);
  if (frozen !== null) set(C.frozen, frozen ? 1 : 0);
}

/** A step freezes at user/ (its daemon in slurm/ keeps running): its frozen state is user/'s. */
function readLimitFiguresFrozen(dir: string): boolean | null {
  return readLimitFigures(dir, []).frozen;
}

/**
 * Gives the event loop back once SLICE_MS have passed since it last did, and
 * keeps the longest time it held the loop. Checking the clock is cheap next to
 * the file reads and lines between checks.
 */
class Slicer {
  longest = 0;
  private since = performance.now();
  async pause(): Promise<void> {
    const now = performance.now();
    if (now - this.since < SLICE_MS) return;
    this.longest = Math.max(this.longest, now - this.since);
    await new Promise<void>((r) => setImmediate(r));
    this.since = performance.now();
  }
  end(): void {
    this.longest = Math.max(this.longest, performance.now() - this.since);
  }
}

/** Text written straight into fixed-size Buffers: no line or join strings outlive the line being written. */
export class ChunkWriter {
  readonly chunks: Buffer[] = [];
  bytes = 0;
  private buf = Buffer.allocUnsafe(CHUNK_BYTES);
  private at = 0;
  write(s: string): void {
    // At most 3 bytes per UTF-16 unit: a line that might not fit starts a new chunk.
    if (this.at + s.length * 3 > this.buf.length) {
      this.flush();
      if (s.length * 3 > this.buf.length) this.buf = Buffer.allocUnsafe(s.length * 3);
    }
    this.at += this.buf.write(s, this.at);
  }
  flush(): void {
    if (this.at === 0) return;
    this.chunks.push(this.buf.subarray(0, this.at));
    this.bytes += this.at;
    this.buf = Buffer.allocUnsafe(CHUNK_BYTES);
    this.at = 0;
  }
}

/** Walk the tree and render its text, both in slices; returns the finished snapshot. */
export async function takeSnapshot(src: SnapshotSource): Promise<Snapshot> {
  const t0 = performance.now();
  const slicer = new Slicer();
  const tree = src.tree;
  const c = src.constLabels ? `,${src.constLabels}` : '';
  const levels: Level[] = src.perTask ? ['job', 'step', 'task'] : ['job', 'step'];
  const cols = new Map<Level, Columns>(levels.map((l) => [l, new Columns()]));
  const owners: [job: string, uid: number][] = [];
  let ctl: string[] | undefined;
  try {
    // A directory has at most the controllers the scope enables (the tree passes them all down).
    ctl = enabledIn(tree.paths.scope);
  } catch {
    ctl = undefined;
  }
  // The index is read as the walk goes: jobs and steps may come and go between slices (each step list is a copy).
  let n = 0;
  for (const [job, steps] of tree.known()) {
    const jl = `jobid="${esc(job)}"`;
    sample(cols.get('job')!, 'job', tree.paths.job(job), jl + c, ctl);
    const uid = src.ownerOf?.(job);
    if (uid !== undefined && uid !== null) owners.push([job, uid]);
    n++;
    for (const step of steps) {
      const sdir = tree.paths.step(job, step);
      const sl = `${jl},step="${esc(step)}"`;
      const udir = path.join(sdir, USER_DIR);
      sample(cols.get('step')!, 'step', sdir, sl + c, ctl, udir);
      n++;
      if (src.perTask) {
        for (const tn of childDirs(udir)) {
          const task = parseTaskName(tn);
          if (task === null) continue;
          sample(cols.get('task')!, 'task', path.join(udir, tn), `${sl},task="${task}"${c}`, ctl);
          n++;
        }
      }
      await slicer.pause();
    }
    await slicer.pause();
  }
  const out = new ChunkWriter();
  for (const level of levels) await renderLevel(out, level, cols.get(level)!, slicer);
  if (src.ownerOf) {
    out.write('# HELP cgstep_job_owner_info The uid that owns the job (1 per job)\n# TYPE cgstep_job_owner_info gauge\n');
    for (let i = 0; i < owners.length; i++) {
      out.write(`cgstep_job_owner_info{jobid="${esc(owners[i][0])}",uid="${owners[i][1]}"${c}} 1\n`);
      if ((i & 127) === 127) await slicer.pause();
    }
  }
  out.flush();
  slicer.end();
  return { chunks: out.chunks, bytes: out.bytes, takenAt: t0, cgroups: n, refreshMs: performance.now() - t0, longestSliceMs: slicer.longest };
}

/** Every family of one level, in FAMILIES order: a HELP and TYPE header, then one line per cgroup that has the series. */
async function renderLevel(out: ChunkWriter, level: Level, cols: Columns, slicer: Slicer): Promise<void> {
  for (let f = 0; f < FAMILIES.length; f++) {
    const spec = FAMILIES[f];
    const name = `cgstep_${level}_${spec.name}`;
    out.write(`# HELP ${name} ${spec.help}, per ${level}\n# TYPE ${name} ${spec.type}\n`);
    const values = cols.values[f];
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === v) out.write(`${name}{${cols.labels[i]}} ${v}\n`);
      if ((i & 127) === 127) await slicer.pause();
    }
  }
}
