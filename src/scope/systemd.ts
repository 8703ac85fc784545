/**
 * scope/systemd: the node scope as systemd creates it (systemd mode).
 *
 * Owns the conversation that turns "an infinity pid" into "a delegated,
 * abandoned <node>_slurmstepd.scope whose directory holds that pid": it asks
 * systemd (through src/systemd/manager), waits for the directory and the pid
 * (bounded by SystemdTimeout), and repairs the unit states Slurm's plugin dies
 * on. It must not create `system/`, move pids inside the scope, or enable
 * controllers: src/scope/lifecycle.ts does that for both modes.
 *
 * Recoveries (each logged at warn with what was found and what is done):
 *  - unit failed (a previous scope ended badly; Slurm says "run reset-failed"):
 *    ResetFailedUnit, then start again;
 *  - unit active but its cgroup directory is gone (removed behind systemd's
 *    back, systemd missed the empty notification): StopUnit, ResetFailedUnit,
 *    then start again;
 *  - unit active and its directory present: adopt it (abandon it if it is
 *    still "running", put the new infinity pid in it when it can take one).
 */
import path from 'node:path';
import type { Logger } from 'pino';
import { isDir, waitForPidInCgroup, writeText } from '../cgroupfs/index.js';
import { AgentError } from '../errors.js';
import { DBUS_UNIT_EXISTS, SystemdCallError, connectSystemd, type SystemdManager, type UnitState } from '../systemd/manager.js';
import type { SystemdPort } from './lifecycle.js';

/** Slurm's SystemdTimeout default. */
export const DEFAULT_SYSTEMD_TIMEOUT_MS = 1000;
const MAX_ATTEMPTS = 3;

export interface DelegatedScopeOptions {
  manager: SystemdManager;
  /** Where the cgroup2 hierarchy systemd works in is mounted (systemd's "/" is this directory). */
  mountPoint: string;
  /** The directory that plays the node's cgroup root (for the expected path; normally mountPoint). */
  cgroupRoot: string;
  slice: string;
  scopeName: string;
  infinityPid: number;
  /** SystemdTimeout: how long to wait for the directory and the pid (default 1000 ms). */
  timeoutMs: number;
  log: Logger;
}

function describe(st: UnitState | null): string {
  return st ? `${st.loadState}/${st.activeState}/${st.subState}${st.controlGroup ? ` cgroup ${st.controlGroup}` : ''}` : 'not loaded';
}

/**
 * Create (or repair, or adopt) the delegated scope and return its absolute
 * directory: mountPoint + the unit's ControlGroup.
 */
export async function startDelegatedScope(o: DelegatedScopeOptions): Promise<string> {
  const { manager: m, scopeName, log } = o;
  const timeoutMs = o.timeoutMs > 0 ? o.timeoutMs : DEFAULT_SYSTEMD_TIMEOUT_MS;
  const expected = path.join(o.cgroupRoot, o.slice, scopeName);
  const dirOf = (st: UnitState | null) => (st?.controlGroup ? path.join(o.mountPoint, st.controlGroup) : expected);
  const ctx = { unit: scopeName, bus: m.address };
  let lastState: UnitState | null = null;

  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const st = await m.getUnitState(scopeName);
    lastState = st;
    if (st) {
      const dir = dirOf(st);
      if (st.activeState === 'failed') {
        log.warn({ ...ctx, state: describe(st) }, 'scope unit is failed (Slurm would stop here and ask for reset-failed): resetting it and starting it again');
        await m.resetFailedUnit(scopeName);
        continue;
      }
      if (st.activeState === 'active' || st.activeState === 'reloading' || st.activeState === 'activating') {
        if (st.controlGroup && isDir(dir)) return adopt(o, st, dir, expected);
        log.warn({ ...ctx, state: describe(st), dir }, 'scope unit is active but its cgroup directory is gone (Slurm would stop here): stopping the unit and starting it again');
        await m.stopUnit(scopeName, { timeoutMs: Math.max(timeoutMs, 5000) });
        await m.resetFailedUnit(scopeName);
        continue;
      }
      if (st.activeState === 'deactivating') {
        log.warn({ ...ctx, state: describe(st) }, 'scope unit is still stopping: waiting for it, then starting it again');
        await m.stopUnit(scopeName, { timeoutMs: Math.max(timeoutMs, 5000) });
        await m.resetFailedUnit(scopeName);
        continue;
      }
      // inactive (or maintenance): a pristine name systemd has not collected yet; start it.
    }

    log.info({ ...ctx, slice: o.slice, pid: o.infinityPid, attempt }, 'creating the delegated scope through systemd (StartTransientUnit)');
    try {
      await m.startTransientScope({ name: scopeName, slice: o.slice, pids: [o.infinityPid], delegate: true, tasksMax: 'infinity' });
    } catch (err) {
      if (err instanceof SystemdCallError && err.dbusName === DBUS_UNIT_EXISTS && attempt < MAX_ATTEMPTS) {
        // Loaded but not pristine (e.g. inactive with references, or it appeared meanwhile): look again.
        log.warn({ ...ctx, err }, 'systemd says the scope unit already exists: resetting it and looking again');
        await m.resetFailedUnit(scopeName);
        continue;
      }
      throw err;
    }
    await m.abandonScope(scopeName);
    const now = await m.getUnitState(scopeName);
    lastState = now;
    if (!now) throw new AgentError('EIO', `systemd on ${m.address} lost ${scopeName} right after starting it`);
    if (!now.controlGroup) log.warn({ ...ctx, expected }, 'systemd reports no ControlGroup for the new scope; assuming the expected directory');
    const dir = dirOf(now);
    const w = await waitForPidInCgroup(dir, o.infinityPid, timeoutMs);
    if (!w.ok) {
      throw new AgentError(
        'ETIMEDOUT',
        `scope ${scopeName}: ${w.dirSeen ? `pid ${o.infinityPid} did not appear in ${dir}/cgroup.procs` : `directory ${dir} did not appear`} within ${timeoutMs} ms (SystemdTimeout) after systemd on ${m.address} started it`,
      );
    }
    if (path.resolve(dir) !== path.resolve(expected)) log.warn({ ...ctx, expected, got: dir }, 'systemd placed the scope elsewhere than expected; using its directory');
    log.info({ ...ctx, dir, pid: o.infinityPid, waitedMs: w.elapsedMs, via: w.via }, 'delegated scope ready');
    return dir;
  }
  throw new AgentError('EIO', `could not create ${scopeName} through systemd on ${m.address} after ${MAX_ATTEMPTS} attempts (last state: ${describe(lastState)})`);
}

async function adopt(o: DelegatedScopeOptions, st: UnitState, dir: string, expected: string): Promise<string> {
  const { manager: m, scopeName, log } = o;
  log.warn({ unit: scopeName, state: describe(st), dir }, 'scope unit already exists and is healthy: adopting it');
  if (st.subState === 'running') await m.abandonScope(scopeName);
  // Give the new infinity pid a place in the unit when the scope's root can take
  // one (no controllers enabled below it); otherwise the common start-up code
  // moves it into system/ as it does for every adopted scope.
  try {
    writeText(path.join(dir, 'cgroup.procs'), String(o.infinityPid));
  } catch (err) {
    log.info({ unit: scopeName, pid: o.infinityPid, err }, 'adopted scope root cannot take the infinity pid; leaving it to the scope set-up');
  }
  if (path.resolve(dir) !== path.resolve(expected)) log.warn({ unit: scopeName, expected, got: dir }, 'systemd placed the scope elsewhere than expected; using its directory');
  return dir;
}

export interface SystemdPortOptions {
  /** D-Bus address (default: $DBUS_SYSTEM_BUS_ADDRESS, else the system bus). */
  address?: string;
  mountPoint: string;
  cgroupRoot: string;
  slice: string;
  scopeName: string;
  timeoutMs: number;
  log: Logger;
}

/** The SystemdPort src/scope/lifecycle.ts asks for: connect, and startScope = startDelegatedScope. */
export async function connectSystemdPort(o: SystemdPortOptions): Promise<SystemdPort> {
  const timeoutMs = o.timeoutMs > 0 ? o.timeoutMs : DEFAULT_SYSTEMD_TIMEOUT_MS;
  const manager = await connectSystemd({ address: o.address, timeoutMs });
  return {
    address: manager.address,
    startScope: (infinityPid: number) =>
      startDelegatedScope({ manager, mountPoint: o.mountPoint, cgroupRoot: o.cgroupRoot, slice: o.slice, scopeName: o.scopeName, infinityPid, timeoutMs, log: o.log }),
    close: () => manager.close(),
  };
}
