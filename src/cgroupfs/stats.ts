/**
 * cgroupfs/stats: accounting read from one cgroup directory.
 *
 * A file that is missing because its controller is not enabled reads as null
 * ("not available"), never as an error or a zero.
 */
import path from 'node:path';
import { parseFlatKeyed, readOptional } from './files.js';

export interface CgroupStats {
  cpu: { usageUsec: number; userUsec: number; systemUsec: number; throttledUsec?: number } | null;
  memory: { current: number; peak: number | null; events: Record<string, number>; stat: Record<string, number> } | null;
  oomKill: number | null;
  pids: { current: number; max: string } | null;
  io: Record<string, { rbytes: number; wbytes: number; rios: number; wios: number }> | null;
}

function num(text: string | null): number | null {
  if (text === null) return null;
  const v = Number(text.trim());
  return Number.isFinite(v) ? v : null;
}

export function parseIoStat(text: string): NonNullable<CgroupStats['io']> {
  const out: NonNullable<CgroupStats['io']> = {};
  for (const line of text.split('\n')) {
    const [dev, ...kv] = line.trim().split(/\s+/);
    if (!dev) continue;
    const e = { rbytes: 0, wbytes: 0, rios: 0, wios: 0 };
    for (const pair of kv) {
      const [k, v] = pair.split('=');
      if (k in e) e[k as keyof typeof e] = Number(v);
    }
    out[dev] = e;
  }
  return out;
}

/**
 * Read a directory's accounting. `controllers`, when the caller knows them
 * (its parent's cgroup.subtree_control), skips the files of controllers that
 * are off instead of failing to open each one: a scrape of thousands of
 * directories is mostly such misses otherwise. cpu.stat is always there.
 */
export function readStats(dir: string, controllers?: readonly string[]): CgroupStats {
  const f = (name: string) => readOptional(path.join(dir, name));
  const on = (c: string) => controllers === undefined || controllers.includes(c);
  const cpuText = f('cpu.stat');
  const cpuKv = cpuText === null ? null : parseFlatKeyed(cpuText);
  const memCurrent = on('memory') ? num(f('memory.current')) : null;
  const memEventsText = memCurrent === null ? null : f('memory.events');
  const memEvents = memEventsText === null ? null : parseFlatKeyed(memEventsText);
  const memStatText = memCurrent === null ? null : f('memory.stat');
  const pidsCurrent = on('pids') ? num(f('pids.current')) : null;
  const ioText = on('io') ? f('io.stat') : null;
  return {
    cpu: cpuKv
      ? {
          usageUsec: cpuKv.usage_usec ?? 0,
          userUsec: cpuKv.user_usec ?? 0,
          systemUsec: cpuKv.system_usec ?? 0,
          ...(cpuKv.throttled_usec !== undefined ? { throttledUsec: cpuKv.throttled_usec } : {}),
        }
      : null,
    memory:
      memCurrent === null
        ? null
        : { current: memCurrent, peak: num(f('memory.peak')), events: memEvents ?? {}, stat: memStatText ? parseFlatKeyed(memStatText) : {} },
    oomKill: memEvents ? (memEvents.oom_kill ?? 0) : null,
    pids: pidsCurrent === null ? null : { current: pidsCurrent, max: (f('pids.max') ?? 'max').trim() },
    io: ioText === null ? null : parseIoStat(ioText),
  };
}

/** What a directory is limited to (null: no limit, or its controller is off), and whether it is frozen. */
export interface CgroupLimits {
  memoryMax: number | null;
  memoryHigh: number | null;
  swapMax: number | null;
  /** CPUs in cpuset.cpus.effective. */
  cpus: number | null;
  pidsMax: number | null;
  /** cpu.max "QUOTA PERIOD" in µs; quota null when "max". */
  cpuQuotaUsec: number | null;
  cpuPeriodUsec: number | null;
  /** cgroup.events frozen; null when the file is gone. */
  frozen: boolean | null;
}

/** "0-3,8" -> 5. */
export function countCpuList(list: string): number {
  let n = 0;
  for (const part of list.trim().split(',')) {
    if (!part) continue;
    const [lo, hi] = part.split('-').map(Number);
    n += hi === undefined ? 1 : hi - lo + 1;
  }
  return n;
}

/** A limit file's number; "max" (no limit) and a missing file are null. */
function limit(text: string | null): number | null {
  if (text === null) return null;
  const t = text.trim();
  return t === 'max' ? null : num(t);
}

/**
 * Read a directory's limits (the files of controllers that are off are not
 * opened when `controllers` is given, as in readStats).
 */
export function readLimitFigures(dir: string, controllers?: readonly string[]): CgroupLimits {
  const f = (name: string) => readOptional(path.join(dir, name));
  const on = (c: string) => controllers === undefined || controllers.includes(c);
  const cpuMax = on('cpu') ? f('cpu.max') : null;
  const [quota, period] = cpuMax === null ? [] : cpuMax.trim().split(/\s+/);
  const cpus = on('cpuset') ? f('cpuset.cpus.effective') : null;
  const events = f('cgroup.events');
  return {
    memoryMax: on('memory') ? limit(f('memory.max')) : null,
    memoryHigh: on('memory') ? limit(f('memory.high')) : null,
    swapMax: on('memory') ? limit(f('memory.swap.max')) : null,
    cpus: cpus === null ? null : countCpuList(cpus),
    pidsMax: on('pids') ? limit(f('pids.max')) : null,
    cpuQuotaUsec: quota === undefined || quota === 'max' ? null : num(quota),
    cpuPeriodUsec: period === undefined ? null : num(period),
    frozen: events === null ? null : parseFlatKeyed(events).frozen === 1,
  };
}

/** The few live figures a list or a top view shows, without memory.stat (which is large). */
export interface CgroupUsage { cpuUsec: number | null; memoryCurrent: number | null; pids: number | null; oomKills: number | null }

export function readUsage(dir: string, controllers?: readonly string[]): CgroupUsage {
  const f = (name: string) => readOptional(path.join(dir, name));
  const on = (c: string) => controllers === undefined || controllers.includes(c);
  const cpu = f('cpu.stat');
  const mem = on('memory') ? num(f('memory.current')) : null;
  const events = mem === null ? null : f('memory.events');
  return {
    cpuUsec: cpu === null ? null : (parseFlatKeyed(cpu).usage_usec ?? null),
    memoryCurrent: mem,
    pids: on('pids') ? num(f('pids.current')) : null,
    oomKills: events === null ? null : (parseFlatKeyed(events).oom_kill ?? 0),
  };
}
