/**
 * config/memory: Slurm's memory limit formulas (task/cgroup), as pure functions.
 *
 *   limit(alloc)  = clamp(alloc * AllowedRAMSpace%, MinRAMSpace, MaxRAMPercent% of RAM)  -> memory.max
 *   soft(alloc)   = min(clamp(alloc * 100%, ...), limit)                                  -> memory.high
 *   memsw(alloc)  = clamp(alloc * AllowedSwapSpace% + limit, MinRAMSpace,
 *                         MaxSwapPercent% of RAM + MaxRAMPercent% of RAM)
 *   swap          = memsw - limit                                                         -> memory.swap.max
 * An allocation of 0 means "the whole node" as in Slurm. cgroup v2 keeps swap
 * apart from RAM, so memory.swap.max is the memsw headroom above memory.max.
 */
import type { CgroupConf } from './cgroupconf.js';

export interface MemoryLimits { max: number; high: number; swapMax: number | null }

const MiB = 1024 * 1024;

function pct(v: number, p: number): number {
  return Math.floor((v * p) / 100);
}

export function memoryLimitBytes(alloc: number, conf: CgroupConf, totalRam: number, withAllowed = true): number {
  const base = alloc === 0 ? totalRam : alloc;
  const mem = pct(base, withAllowed ? conf.allowedRAMSpace : 100);
  const minRam = conf.minRAMSpace * MiB;
  const maxRam = pct(totalRam, conf.maxRAMPercent);
  if (mem < minRam) return minRam;
  if (mem > maxRam) return maxRam;
  return mem;
}

export function memswLimitBytes(alloc: number, conf: CgroupConf, totalRam: number): number {
  const base = alloc === 0 ? totalRam : alloc;
  const maxRam = pct(totalRam, conf.maxRAMPercent);
  const maxSwap = pct(totalRam, conf.maxSwapPercent) + maxRam;
  const mem = pct(base, conf.allowedSwapSpace) + memoryLimitBytes(alloc, conf, totalRam);
  const minRam = conf.minRAMSpace * MiB;
  if (mem < minRam) return minRam;
  if (mem > maxSwap) return maxSwap;
  return mem;
}

/** The memory.* values for an allocation, or null when RAM is not constrained. */
export function memoryLimits(alloc: number, conf: CgroupConf, totalRam: number, explicitSwap?: number): MemoryLimits | null {
  if (!conf.constrainRAMSpace) return null;
  const max = memoryLimitBytes(alloc, conf, totalRam, true);
  const high = Math.min(memoryLimitBytes(alloc, conf, totalRam, false), max);
  let swapMax: number | null = null;
  if (explicitSwap !== undefined) swapMax = explicitSwap;
  else if (conf.constrainSwapSpace) swapMax = memswLimitBytes(alloc, conf, totalRam) - max;
  return { max, high, swapMax };
}
