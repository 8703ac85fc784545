/**
 * cgroupfs/ops: operations on one cgroup v2 directory, built on cgroupfs/files.
 *
 * Controllers (available, enabled, enable top-down), process membership and
 * migration, cgroup.kill, cgroup.freeze, cgroup.events, and
 * bottom-up removal. Knows the kernel's rules, nothing about jobs or steps.
 */
import path from 'node:path';
import { AgentError, KernelError, isErrno } from '../errors.js';
import { childDirs, exists, makeDir, parseFlatKeyed, readOptional, readText, removeDir, writeText } from './files.js';
import { inotify } from './watch.js';

export function controllersOf(dir: string): string[] {
  return splitWords(readText(path.join(dir, 'cgroup.controllers')));
}

export function enabledIn(dir: string): string[] {
  return splitWords(readText(path.join(dir, 'cgroup.subtree_control')));
}

function splitWords(s: string): string[] {
  return s.split(/\s+/).filter(Boolean);
}

export interface EnableResult { enabled: string[]; missing: string[] }

/**
 * Enable `wanted` in dir's cgroup.subtree_control. Controllers the directory does
 * not have (absent from its cgroup.controllers) are reported as missing, not
 * written. Already enabled ones are not rewritten.
 */
export function enableControllers(dir: string, wanted: readonly string[]): EnableResult {
  const have = new Set(controllersOf(dir));
  const on = new Set(enabledIn(dir));
  const missing = wanted.filter((c) => !have.has(c));
  const todo = wanted.filter((c) => have.has(c) && !on.has(c));
  if (todo.length > 0) writeText(path.join(dir, 'cgroup.subtree_control'), todo.map((c) => `+${c}`).join(' '));
  return { enabled: wanted.filter((c) => have.has(c)), missing };
}

/**
 * Enable controllers on every directory from `top` down to and including `dir`
 * (a controller reaches a child only if each ancestor enabled it).
 */
export function enableTopDown(top: string, dir: string, wanted: readonly string[]): EnableResult {
  const rel = path.relative(top, dir);
  if (rel.startsWith('..') || path.isAbsolute(rel)) throw new AgentError('EINVAL', `${dir} is not below ${top}`);
  const chain = [top];
  for (const part of rel ? rel.split(path.sep) : []) chain.push(path.join(chain[chain.length - 1], part));
  let result: EnableResult = { enabled: [], missing: [...wanted] };
  let want = [...wanted];
  for (const d of chain) {
    result = enableControllers(d, want);
    want = result.enabled; // what an ancestor lacks cannot appear below it
  }
  return { enabled: result.enabled, missing: wanted.filter((c) => !result.enabled.includes(c)) };
}

export function procsOf(dir: string): number[] {
  const t = readOptional(path.join(dir, 'cgroup.procs'));
  if (t === null) return [];
  return t.split('\n').filter(Boolean).map(Number);
}

/**
 * The cgroup v2 path of a process as /proc shows it (the "0::" line of
 * /proc/PID/cgroup, relative to its cgroup namespace), or null when the
 * process is gone or in no cgroup2 hierarchy.
 */
export function cgroupOfPid(pid: number | 'self'): string | null {
  let text: string | null;
  try {
    text = readOptional(`/proc/${pid}/cgroup`);
  } catch (err) {
    if (isErrno(err, 'ESRCH')) return null; // exited between the open and the read
    throw err;
  }
  return text === null ? null : parseProcCgroup(text);
}

/** The cgroup v2 path in the text of a /proc/PID/cgroup file (its "0::" line), or null when it has none. */
export function parseProcCgroup(text: string): string | null {
  for (const line of text.split('\n')) if (line.startsWith('0::')) return line.slice(3);
  return null;
}

/** This process's own cgroup2 path (see cgroupOfPid). */
export function ownCgroup(): string | null {
  return cgroupOfPid('self');
}

/** Is pid listed in dir's cgroup.procs? false when the directory does not exist (yet). */
export function procsContain(dir: string, pid: number): boolean {
  return procsOf(dir).includes(pid);
}

/**
 * Move a process (all its threads) into dir. The kernel's cgroup.procs write
 * is the check: it fails (ESRCH, EBUSY, EINVAL, EACCES...) unless every
 * thread moved (proc's checkMoved reads /proc/PID/cgroup back where asked).
 */
export function moveProcess(dir: string, pid: number): void {
  try {
    writeText(path.join(dir, 'cgroup.procs'), String(pid));
  } catch (err) {
    if (err instanceof KernelError && err.errno === 'ESRCH') throw new AgentError('ENOENT', `no process ${pid}`);
    throw err;
  }
}

/**
 * Put a process back in the cgroup it was moved out of, `from` as /proc
 * showed it (taken under the mount: the agent's cgroup namespace root is
 * where the mount shows it). A process gone since needs nothing.
 */
export function moveBack(pid: number, from: string, mountPoint: string): void {
  const dir = path.join(mountPoint, from);
  if (!exists(dir)) throw new AgentError('ENOENT', `cannot move ${pid} back: ${dir} does not exist`);
  try {
    writeText(path.join(dir, 'cgroup.procs'), String(pid));
  } catch (err) {
    if (err instanceof KernelError && err.errno === 'ESRCH') return;
    throw err;
  }
}

export function readEvents(dir: string): Record<string, number> {
  return parseFlatKeyed(readText(path.join(dir, 'cgroup.events')));
}

export function isPopulated(dir: string): boolean {
  return populatedOf(dir) ?? false;
}

/** cgroup.events' populated, or null when the directory does not exist (one read where a stat and a read would do). */
export function populatedOf(dir: string): boolean | null {
  const text = readOptional(path.join(dir, 'cgroup.events'));
  return text === null ? null : parseFlatKeyed(text).populated === 1;
}

/** Every pid in dir and below. */
export function procsRecursive(dir: string): number[] {
  const out = procsOf(dir);
  for (const c of childDirs(dir)) out.push(...procsRecursive(path.join(dir, c)));
  return out;
}

/**
 * Awaited between pieces of a long walk: gives the event loop back now and
 * then (the caller decides how often), so other requests are answered while
 * a big tree is read or removed.
 */
export type Pause = () => Promise<void>;

/** The pids of dir and of each directory below it, one directory at a time (parents first), awaiting `pause` before each. */
export async function* procsByDir(dir: string, pause: Pause): AsyncGenerator<number[]> {
  await pause();
  yield procsOf(dir);
  for (const c of childDirs(dir)) yield* procsByDir(path.join(dir, c), pause);
}

/** procsRecursive, awaiting `pause` before each directory (a step may have thousands of leaves). */
export async function procsBelow(dir: string, pause: Pause): Promise<number[]> {
  const out: number[] = [];
  for await (const pids of procsByDir(dir, pause)) out.push(...pids);
  return out;
}

/** SIGKILL everything below dir: cgroup.kill where the kernel has it, else each pid. */
export function killAll(dir: string): void {
  const killFile = path.join(dir, 'cgroup.kill');
  if (exists(killFile)) {
    writeText(killFile, '1');
    return;
  }
  signalAll(dir, 'SIGKILL');
}

/** Send a signal to every process below dir (one pass; a racing fork may escape it). */
export function signalAll(dir: string, signal: NodeJS.Signals | number): number {
  return signalPids(procsRecursive(dir), signal, dir);
}

/** Send a signal to each of pids (read from `dir`, which errors name); those gone meanwhile are skipped. Returns how many were signalled. */
export function signalPids(pids: readonly number[], signal: NodeJS.Signals | number, dir: string): number {
  let n = 0;
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
      n++;
    } catch (err) {
      if (!isErrno(err, 'ESRCH')) throw new KernelError('kill', `pid ${pid} in ${dir}`, (err as NodeJS.ErrnoException).code ?? 'EIO');
    }
  }
  return n;
}

/**
 * Wait until `check()` is true, re-checking whenever `file` changes (inotify on
 * kernfs) and on a backstop timer that doubles from 5 ms to 200 ms. Rejects with
 * ETIMEDOUT after timeoutMs.
 */
export function waitForFile(file: string, check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  if (check()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    let wd: number | null = null;
    let timer: NodeJS.Timeout | null = null;
    let delay = 5;
    const deadline = Date.now() + timeoutMs;
    const listener = { changed: () => poll() };
    const finish = (err?: Error) => {
      if (wd !== null) inotify().remove(wd, listener);
      wd = null;
      if (timer) clearTimeout(timer);
      if (err) reject(err);
      else resolve();
    };
    const poll = () => {
      let ok: boolean;
      try {
        ok = check();
      } catch (err) {
        finish(err as Error);
        return;
      }
      if (ok) return finish();
      if (Date.now() >= deadline) return finish(new AgentError('ETIMEDOUT', `timed out after ${timeoutMs} ms waiting for ${what}`));
      if (timer) clearTimeout(timer);
      timer = setTimeout(poll, Math.min(delay, Math.max(1, deadline - Date.now())));
      delay = Math.min(delay * 2, 200);
    };
    try {
      wd = inotify().add(file, listener);
    } catch {
      wd = null; // the file went away: the timer and check() decide
    }
    poll();
  });
}

export function waitUnpopulated(dir: string, timeoutMs: number): Promise<void> {
  return waitForFile(path.join(dir, 'cgroup.events'), () => !isPopulated(dir), timeoutMs, `${dir} to become empty`);
}

/**
 * Ask for dir to be frozen (true) or thawed (false): its cgroup.freeze, not
 * waited on (see waitFrozen). Returns what was there before: `asked`, the
 * cgroup.freeze value to write back to undo this, and `frozen`, the state
 * cgroup.events reported (an ancestor's freeze counts too).
 */
export function requestFrozen(dir: string, frozen: boolean): { asked: boolean; frozen: boolean } {
  const asked = readText(path.join(dir, 'cgroup.freeze')).trim() === '1';
  const was = readEvents(dir).frozen === 1;
  writeText(path.join(dir, 'cgroup.freeze'), frozen ? '1' : '0');
  return { asked, frozen: was };
}

/** Wait until cgroup.events says dir is frozen (or thawed); ETIMEDOUT after timeoutMs. */
export function waitFrozen(dir: string, frozen: boolean, timeoutMs: number): Promise<void> {
  const want = frozen ? 1 : 0;
  return waitForFile(path.join(dir, 'cgroup.events'), () => readEvents(dir).frozen === want, timeoutMs, `${dir} to be ${frozen ? 'frozen' : 'thawed'}`);
}

/**
 * Remove dir and everything below it, deepest first. rmdir is tried before
 * readdir: a leaf (most of a step's tree) goes in one syscall, and only a
 * directory the kernel calls busy is listed for children. Populated
 * directories are waited on (up to timeoutMs); ENOENT anywhere is success.
 * `pause` is awaited before each directory (a big tree is thousands of rmdirs).
 */
export async function removeTree(dir: string, timeoutMs: number, pause?: Pause): Promise<void> {
  await pause?.();
  try {
    removeDir(dir);
    return;
  } catch (err) {
    if (!(err instanceof KernelError && err.errno === 'EBUSY')) throw err;
  }
  for (const c of childDirs(dir)) await removeTree(path.join(dir, c), timeoutMs, pause);
  try {
    removeDir(dir);
  } catch (err) {
    if (!(err instanceof KernelError && err.errno === 'EBUSY')) throw err;
    await waitUnpopulated(dir, timeoutMs);
    removeDir(dir);
  }
}
