/**
 * scope/lifecycle: create, adopt, repair and check the node scope, in both
 * modes (systemd through the SystemdPort the agent hands in, or mkdir), with
 * its infinity process in system/ and the controllers enabled in it.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import { controllersOf, enableControllers, enableTopDown, enabledIn, exists, isDir, isPopulated, makeDir, moveProcess, procsOf, removeTree } from '../cgroupfs/index.js';
import { AgentError } from '../errors.js';
import { startInfinity } from './infinity.js';
import { isRunning } from '../proc/index.js';

/** The scope's leaf for the infinity process; never a job. */
export const SYSTEM_LEAF = 'system';

export type ScopeMode = 'systemd' | 'mkdir';

/** What the scope needs from systemd; implemented in src/scope/systemd.ts on src/systemd. */
export interface SystemdPort {
  /** Create the delegated scope holding infinityPid; returns its absolute directory. */
  startScope(infinityPid: number): Promise<string>;
  /** The bus address in use, for messages. */
  readonly address: string;
  close(): Promise<void> | void;
}

export interface ScopeOptions {
  root: string;
  mountPoint: string;
  slice: string;
  scopeName: string;
  /** mkdir: never talk to systemd (IgnoreSystemd). */
  ignoreSystemd: boolean;
  ignoreSystemdOnFailure: boolean;
  /** EnableControllers / CgroupAutomount: enable on every ancestor from the mount point. */
  enableControllers: boolean;
  log: Logger;
  /** Connects to systemd; throws SystemdUnavailable-like errors when it cannot. */
  connectSystemd: () => Promise<SystemdPort>;
  /** systemd mode: the scope unit's ActiveState ('gone' when not loaded); null when systemd cannot be asked. */
  unitState?: () => Promise<string | null>;
}

export interface ScopeState {
  path: string;
  mode: ScopeMode;
  infinityPid: number;
  adopted: boolean;
  controllers: { available: string[]; enabled: string[]; missing: string[] };
  fallbackReason?: string;
  /** systemd no longer tracks the scope unit although steps still run in it. */
  unitLost?: string;
}

/** Is this node run by systemd (sd_booted)? */
export function systemdBooted(): boolean {
  return exists('/run/systemd/system');
}

export function scopeDirOf(o: Pick<ScopeOptions, 'root' | 'slice' | 'scopeName'>): string {
  return path.join(o.root, o.slice, o.scopeName);
}

/**
 * Restart path, both modes: the scope exists, so no D-Bus call and no mkdir;
 * check the infinity process and repair what is missing. Null when absent.
 */
export async function adoptScope(o: ScopeOptions, mode: ScopeMode): Promise<ScopeState | null> {
  const scopeDir = scopeDirOf(o);
  if (!exists(scopeDir)) return null;
  const infinityPid = await ensureInfinity(scopeDir, o.mountPoint, o.log);
  o.log.info({ scope: scopeDir, infinityPid }, 'adopted existing scope');
  return finish(scopeDir, mode, infinityPid, true, o);
}

/** mkdir mode: the scope's directories made by hand (IgnoreSystemd). */
export async function createScopeWithMkdir(o: ScopeOptions): Promise<ScopeState> {
  const adopted = await adoptScope(o, 'mkdir');
  if (adopted) return adopted;
  const scopeDir = scopeDirOf(o);
  makeScopeDirs(o.root, scopeDir);
  return finish(scopeDir, 'mkdir', await startInfinity(), false, o);
}

/**
 * systemd mode: a transient delegated scope holding a fresh infinity process
 * (StartTransientUnit + AbandonScope, through the SystemdPort). On failure the
 * infinity process is ended and the error names the bus and the option that
 * allows falling back.
 */
export async function createScopeWithSystemd(o: ScopeOptions): Promise<ScopeState> {
  const adopted = await adoptScope(o, 'systemd');
  if (adopted) return adopted;
  const infinityPid = await startInfinity();
  try {
    const port = await o.connectSystemd();
    try {
      const got = await port.startScope(infinityPid);
      return await finish(got, 'systemd', infinityPid, false, o);
    } finally {
      await port.close();
    }
  } catch (err) {
    killQuietly(infinityPid);
    if (err instanceof AgentError && !o.ignoreSystemdOnFailure) {
      throw new AgentError(err.code, `${err.message}; set IgnoreSystemdOnFailure=yes in cgroup.conf (or --ignore-systemd-on-failure) to fall back to mkdir mode`);
    }
    throw err;
  }
}

function makeScopeDirs(root: string, scopeDir: string): void {
  const rel = path.relative(root, scopeDir).split(path.sep);
  let d = root;
  for (const part of rel) {
    d = path.join(d, part);
    makeDir(d);
  }
}

/** The part both modes share: system/ with the infinity pid, then the scope's controllers. */
async function finish(scopeDir: string, mode: ScopeMode, infinityPid: number, adopted: boolean, o: ScopeOptions): Promise<ScopeState> {
  const system = path.join(scopeDir, SYSTEM_LEAF);
  makeDir(system);
  if (!procsOf(system).includes(infinityPid)) moveProcess(system, infinityPid);
  // Processes left in the scope's own directory (systemd put the infinity pid there)
  // would block subtree_control: the no-internal-process rule.
  for (const pid of procsOf(scopeDir)) moveProcess(system, pid);
  const wanted = controllersOf(o.mountPoint === scopeDir ? scopeDir : path.dirname(scopeDir));
  let res;
  if (mode === 'mkdir' || o.enableControllers) {
    res = enableTopDown(o.mountPoint, scopeDir, controllersOf(o.mountPoint));
  } else {
    res = enableControllers(scopeDir, controllersOf(scopeDir));
  }
  const available = controllersOf(scopeDir);
  const enabled = enabledIn(scopeDir);
  const missing = wanted.filter((c) => !enabled.includes(c));
  if (res.missing.length) o.log.warn({ missing: res.missing }, 'controllers not available to the scope');
  return { path: scopeDir, mode, infinityPid, adopted, controllers: { available, enabled, missing: [...new Set([...missing, ...res.missing])] } };
}

/** Find the live infinity process in system/, or start one and put it there. */
export async function ensureInfinity(scopeDir: string, mountPoint: string, log: Logger): Promise<number> {
  const system = path.join(scopeDir, SYSTEM_LEAF);
  const alive = procsOf(system).filter(isRunning);
  if (alive.length > 0) return alive[0];
  const pid = await startInfinity();
  makeDir(system);
  moveProcess(system, pid);
  log.warn({ scope: scopeDir, infinityPid: pid }, 'infinity process was missing; started a new one in system/');
  return pid;
}

export type Repair = 'ok' | 'infinity-restarted' | 'stopping' | 'recreated';

/**
 * The guard's check, run every second: is the scope there with a live
 * infinity process? If the infinity process died, a new one is put in system/,
 * unless systemd says the unit is being stopped or is gone (the agent must not
 * repopulate a scope systemd is tearing down): then it waits for the scope to
 * empty, clears what systemd left, and makes the scope again with `create`.
 */
export async function repairScope(o: ScopeOptions, state: ScopeState, create: () => Promise<ScopeState>): Promise<{ action: Repair; state: ScopeState }> {
  const dir = state.path;
  if (exists(dir)) {
    const system = path.join(dir, SYSTEM_LEAF);
    const alive = procsOf(system).filter(isRunning);
    if (alive.includes(state.infinityPid)) return { action: 'ok', state };
    if (alive.length > 0) {
      state.infinityPid = alive[0];
      return { action: 'ok', state };
    }
    const unit = state.mode === 'systemd' && o.unitState ? await o.unitState() : null;
    if (unit === 'deactivating') return { action: 'stopping', state }; // systemd is tearing it down: do not repopulate
    const gone = unit === 'inactive' || unit === 'failed' || unit === 'gone';
    if (!gone || isPopulated(dir)) {
      // Steps still run here: keep them confined and the scope populated, whatever systemd thinks.
      if (gone) {
        state.unitLost = `systemd reports the scope unit ${unit} while steps still run in it; it is tracked again once it empties`;
        o.log.warn({ scope: dir, unit }, state.unitLost);
      }
      state.infinityPid = await ensureInfinity(dir, o.mountPoint, o.log);
      return { action: 'infinity-restarted', state };
    }
    o.log.warn({ scope: dir, unit }, 'the scope unit is no longer active and its directory is empty; removing what is left');
    await removeTree(dir, 5000);
  }
  return { action: 'recreated', state: await create() };
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

/** True when the scope directory still exists (used by health checks). */
export function scopeHealthy(scopeDir: string): boolean {
  return isDir(scopeDir);
}
