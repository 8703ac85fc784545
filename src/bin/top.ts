/**
 * bin/top: the client's live view (`cgstep top`), as systemd-cgtop shows
 * cgroups: one row per job and step with CPU % (of one CPU, from the change in
 * cpu.stat usage between two `list` replies), memory current/max, pids, OOM
 * kills and frozen, sorted. Pure functions plus the refresh loop; the data is
 * the agent's `list` reply (one request per refresh, sliced on the agent's side).
 */
import { formatSize } from '../config/size.js';

export interface TopRow {
  job: string;
  step: string | null;
  tasks: number | null;
  cpuPercent: number | null;
  memoryCurrent: number | null;
  memoryMax: number | null;
  pids: number | null;
  pidsMax: number | null;
  oomKills: number | null;
  frozen: boolean | null;
}

export type SortKey = 'cpu' | 'memory' | 'pids' | 'oom' | 'id';
export const SORT_KEYS: readonly SortKey[] = ['cpu', 'memory', 'pids', 'oom', 'id'];

/** CPU time seen per row, to turn two samples into a rate. */
export type CpuSample = Map<string, number>;

const keyOf = (job: string, step: string | null) => (step === null ? job : `${job}.${step}`);

/** Rows from a `list` reply; CPU % from the previous sample taken `elapsedMs` earlier (null on the first). */
export function topRows(list: { jobs: any[] }, prev: CpuSample | null, elapsedMs: number): { rows: TopRow[]; sample: CpuSample } {
  const sample: CpuSample = new Map();
  const rows: TopRow[] = [];
  const row = (job: string, step: string | null, x: any, tasks: number | null, frozen: boolean | null): TopRow => {
    const k = keyOf(job, step);
    const cpu = x.usage?.cpuUsec ?? null;
    if (cpu !== null) sample.set(k, cpu);
    const before = prev?.get(k);
    const cpuPercent = cpu !== null && before !== undefined && elapsedMs > 0 ? Math.max(0, ((cpu - before) / (elapsedMs * 1000)) * 100) : null;
    return {
      job, step, tasks, cpuPercent,
      memoryCurrent: x.usage?.memoryCurrent ?? null, memoryMax: x.limits?.memoryMax ?? null,
      pids: x.usage?.pids ?? null, pidsMax: x.limits?.pidsMax ?? null,
      oomKills: x.usage?.oomKills ?? null, frozen,
    };
  };
  for (const j of list.jobs) {
    const steps = j.steps ?? [];
    rows.push(row(j.job, null, j, null, steps.length > 0 && steps.every((s: any) => s.frozen === true) ? true : steps.some((s: any) => s.frozen === null) ? null : false));
    for (const s of steps) rows.push(row(j.job, s.step, s, s.tasks?.length ?? 0, s.frozen ?? null));
  }
  return { rows, sample };
}

const num = (v: number | null) => (v === null ? -1 : v);

/** Sorted, busiest first (ids ascending for `id`); a step stays below its job when sorting by id. */
export function sortRows(rows: TopRow[], by: SortKey): TopRow[] {
  const idCmp = (a: TopRow, b: TopRow) => Number(a.job) - Number(b.job) || (a.step === null ? -1 : b.step === null ? 1 : a.step.localeCompare(b.step, 'en', { numeric: true }));
  const val = (r: TopRow) => (by === 'cpu' ? num(r.cpuPercent) : by === 'memory' ? num(r.memoryCurrent) : by === 'pids' ? num(r.pids) : num(r.oomKills));
  return [...rows].sort((a, b) => (by === 'id' ? idCmp(a, b) : val(b) - val(a) || idCmp(a, b)));
}

const dash = (v: number | null, f: (n: number) => string = String) => (v === null ? '-' : f(v));

/** The table, with a header line; columns as systemd-cgtop's, plus OOM kills and frozen. */
export function renderTop(rows: TopRow[], title: string): string {
  const head = ['JOB', 'STEP', 'TASKS', '%CPU', 'MEMORY', 'MEM.MAX', 'PIDS', 'PIDS.MAX', 'OOM', 'FROZEN'];
  const cells = rows.map((r) => [
    r.job, r.step ?? '-', dash(r.tasks), dash(r.cpuPercent, (n) => n.toFixed(1)), dash(r.memoryCurrent, formatSize),
    r.memoryCurrent === null && r.memoryMax === null ? '-' : dash(r.memoryMax, formatSize) === '-' ? 'max' : dash(r.memoryMax, formatSize),
    dash(r.pids), r.pids === null ? '-' : r.pidsMax === null ? 'max' : String(r.pidsMax), dash(r.oomKills), r.frozen === null ? '-' : r.frozen ? 'yes' : 'no',
  ]);
  const width = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) => c.map((v, i) => (i < 2 ? v.padEnd(width[i]) : v.padStart(width[i]))).join('  ');
  return [title, line(head), ...cells.map(line)].join('\n');
}

export interface TopOptions {
  intervalMs: number;
  sort: SortKey;
  json: boolean;
  /** Refreshes to show; 0 = until interrupted. --once is 1 (two samples, one interval apart, for CPU %). */
  iterations: number;
  tty: boolean;
  write: (s: string) => void;
}

/** Sample, wait, sample again; print each refresh (clearing the screen on a terminal). */
export async function runTop(list: () => Promise<{ jobs: any[] }>, o: TopOptions): Promise<void> {
  let prev: CpuSample | null = null;
  let at = performance.now();
  ({ sample: prev } = topRows(await list(), null, 0));
  for (let n = 0; o.iterations === 0 || n < o.iterations; n++) {
    await new Promise((r) => setTimeout(r, o.intervalMs));
    const now = performance.now();
    const { rows, sample } = topRows(await list(), prev, now - at);
    prev = sample;
    at = now;
    const sorted = sortRows(rows, o.sort);
    if (o.json) o.write(JSON.stringify(sorted) + '\n');
    else o.write(`${o.tty && o.iterations !== 1 ? '\x1b[H\x1b[2J' : n > 0 ? '\n' : ''}${renderTop(sorted, `cgstep top: ${rows.filter((r) => r.step === null).length} job(s), ${rows.filter((r) => r.step !== null).length} step(s), every ${o.intervalMs / 1000}s, sorted by ${o.sort}`)}\n`);
  }
}
