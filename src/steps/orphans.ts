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
import path from 'node:path';
import type { Logger } from 'pino';
import { childDirsAsync, isPopulated, procsOf, removeTree } from '../cgroupfs/index.js';
import { nameOf } from '../proc/index.js';
import { SLURM_LEAF, SYSTEM_LEAF, USER_DIR, parseJobName, parseStepName, parseTaskName } from './names.js';

export interface OrphanReport {
  removed: string[];
  /** Orphan directories that still hold processes. */
  populated: { path: string; pids: number[] }[];
  /** Extra infinity processes ended (pids in system/ other than the live one). */
  extraInfinity: number[];
}

/**
 * Directories in the scope that are not part of the layout. Each directory is
 * listed once, off the event loop: at 10,000 steps a synchronous walk would
 * stall every request for about a second.
 */
export async function findOrphanDirs(scopeDir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, known: (name: string) => boolean, below?: (child: string, name: string) => Promise<void>) => {
    for (const n of await childDirsAsync(dir)) {
      const child = path.join(dir, n);
      if (!known(n)) out.push(child);
      else await below?.(child, n);
    }
  };
  await walk(scopeDir, (n) => n === SYSTEM_LEAF || parseJobName(n) !== null, async (jdir, jn) => {
    if (jn === SYSTEM_LEAF) return;
    await walk(jdir, (n) => parseStepName(n) !== null, (sdir) =>
      walk(sdir, (n) => n === SLURM_LEAF || n === USER_DIR, async (leaf, ln) => {
        if (ln === USER_DIR) await walk(leaf, (n) => parseTaskName(n) !== null);
      }),
    );
  });
  return out;
}

export async function collectOrphans(scopeDir: string, infinityPid: number, timeoutMs: number): Promise<OrphanReport> {
  const report: OrphanReport = { removed: [], populated: [], extraInfinity: [] };
  for (const dir of await findOrphanDirs(scopeDir)) {
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
  return nameOf(pid) === 'cgstep-infinity';
}

/**
 * Collects orphans on a timer (and once right after start), keeping the last
 * report for `status`. Never kills anything but extra infinity processes.
 */
export class OrphanSweeper {
  private timer: NodeJS.Timeout | null = null;
  private last: OrphanReport & { at?: string } = { removed: [], populated: [], extraInfinity: [] };

  constructor(
    private readonly scope: () => { path: string; infinityPid: number },
    private readonly timeoutMs: number,
    private readonly log: Logger,
  ) {}

  get lastReport(): Readonly<OrphanReport & { at?: string }> {
    return this.last;
  }

  start(intervalMs: number): void {
    this.timer = setInterval(() => void this.sweep(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  async sweep(): Promise<void> {
    const { path: scopeDir, infinityPid } = this.scope();
    try {
      this.last = { ...(await collectOrphans(scopeDir, infinityPid, this.timeoutMs)), at: new Date().toISOString() };
      const { removed, populated, extraInfinity } = this.last;
      if (removed.length || extraInfinity.length) this.log.warn({ removed, extraInfinity }, 'orphans cleaned up');
      if (populated.length) this.log.warn({ populated }, 'orphan directories with processes (not killed; destroy them or move the processes)');
    } catch (err) {
      this.log.error({ err }, 'orphan collection failed');
    }
  }
}
