/**
 * steps/orphans: find what nobody owns in the node scope and clean it up.
 *
 * Orphans are directories that are not part of the documented layout (left by
 * a crashed agent mid-operation, or made by hand) and extra infinity processes
 * in system/ (a crash between starting a new one and noticing the old one).
 * An empty orphan directory is removed; one with processes is reported, never
 * killed: only a controller decides to end processes. Task leaves that are
 * empty are NOT orphans: they hold the task's accounting until the step goes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { childDirs, isPopulated, procsOf, removeTree } from '../cgroupfs/index.js';
import { SLURM_LEAF, SYSTEM_LEAF, USER_DIR, parseJobName, parseStepName, parseTaskName } from './names.js';

export interface OrphanReport {
  removed: string[];
  /** Orphan directories that still hold processes. */
  populated: { path: string; pids: number[] }[];
  /** Extra infinity processes ended (pids in system/ other than the live one). */
  extraInfinity: number[];
}

function unknownChildren(dir: string, known: (name: string) => boolean): string[] {
  return childDirs(dir).filter((n) => !known(n)).map((n) => path.join(dir, n));
}

export function findOrphanDirs(scopeDir: string): string[] {
  const out = unknownChildren(scopeDir, (n) => n === SYSTEM_LEAF || parseJobName(n) !== null);
  for (const jn of childDirs(scopeDir).filter((n) => parseJobName(n) !== null)) {
    const jdir = path.join(scopeDir, jn);
    out.push(...unknownChildren(jdir, (n) => parseStepName(n) !== null));
    for (const sn of childDirs(jdir).filter((n) => parseStepName(n) !== null)) {
      const sdir = path.join(jdir, sn);
      out.push(...unknownChildren(sdir, (n) => n === SLURM_LEAF || n === USER_DIR));
      out.push(...unknownChildren(path.join(sdir, USER_DIR), (n) => parseTaskName(n) !== null));
    }
  }
  return out;
}

export async function collectOrphans(scopeDir: string, infinityPid: number, timeoutMs: number): Promise<OrphanReport> {
  const report: OrphanReport = { removed: [], populated: [], extraInfinity: [] };
  for (const dir of findOrphanDirs(scopeDir)) {
    if (isPopulated(dir)) {
      report.populated.push({ path: dir, pids: procsOf(dir) });
      continue;
    }
    await removeTree(dir, timeoutMs);
    report.removed.push(dir);
  }
  for (const pid of procsOf(path.join(scopeDir, SYSTEM_LEAF))) {
    if (pid === infinityPid) continue;
    if (!isOurInfinity(pid)) continue;
    try {
      process.kill(pid, 'SIGKILL');
      report.extraInfinity.push(pid);
    } catch {
      /* already gone */
    }
  }
  return report;
}

/** Only an infinity helper is ever ended here, recognised by its executable name. */
function isOurInfinity(pid: number): boolean {
  try {
    const comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    return comm === 'cgstep-infinity';
  } catch {
    return false;
  }
}
