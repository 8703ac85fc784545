/**
 * test/helpers/snapshot: the state of a cgroup subtree as text, to show that
 * a refused request changed nothing: every directory, its processes, its
 * subtree_control, its limit files, its device programs (ids) and the device
 * policy xattr beside them. Read-only.
 */
import fs from 'node:fs';
import path from 'node:path';
import { getXattr } from '../../src/cgroupfs/index.js';
import { closeFd, openDir, progQuery } from '../../src/devices/native.js';

const FILES = ['cgroup.procs', 'cgroup.subtree_control', 'cpuset.cpus', 'memory.max', 'memory.high', 'memory.swap.max', 'pids.max', 'cpu.max', 'cpu.weight'];

function progIds(dir: string): number[] {
  const fd = openDir(dir);
  try {
    return progQuery(fd, dir).ids;
  } finally {
    closeFd(fd);
  }
}

function walk(root: string, dir: string, out: string[]): void {
  const rel = path.relative(root, dir) || '.';
  const parts = [rel];
  for (const f of FILES) {
    try {
      parts.push(`${f}=${fs.readFileSync(path.join(dir, f), 'utf8').trim().replace(/\n/g, ',')}`);
    } catch {
      // not a file of this directory (its controller is off)
    }
  }
  parts.push(`progs=${progIds(dir).join(',')}`);
  parts.push(`policy=${JSON.stringify(getXattr(dir, 'trusted.cgstep.devices')?.toString('utf8') ?? null)}`);
  out.push(parts.join(' '));
  const subs = fs.readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name).sort();
  for (const s of subs) walk(root, path.join(dir, s), out);
}

/** One line per directory below (and including) root, in a stable order. */
export function snapshotTree(root: string): string[] {
  const out: string[] = [];
  walk(root, root, out);
  return out;
}
