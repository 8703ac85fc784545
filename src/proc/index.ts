/**
 * proc: what /proc says about one process, read so that a reused pid cannot
 * stand in for the process that was checked.
 *
 * A pid is a number the kernel hands to a new process once the old one is
 * reaped. ProcessRef opens /proc/PID once and reads everything through that
 * open directory (/proc/self/fd/N/...): the directory stays bound to the
 * process it was opened for, and once that process is gone every read through
 * it fails instead of describing a newer process with the same number. The
 * reads are synchronous, as the agent's kernfs reads are: procfs builds status,
 * stat and cgroup from memory without any lock the process could hold (cmdline
 * and environ wait on its memory map's lock; they are never read). Owns
 * /proc/PID/{status,stat,comm} parsing; the small-file read and the cgroup
 * line are cgroupfs's. Knows nothing of jobs or peers.
 *
 * The by-number helpers below (statOf, isRunning, nameOf, requireMovable,
 * checkMoved) describe whatever process has the pid now: for pids the agent
 * started itself, found in a leaf only root writes to, or checks just before
 * the kernel acts on the same number.
 */
import fs from 'node:fs';
import path from 'node:path';
import { cgroupOfPid, parseProcCgroup, readOptional, readText } from '../cgroupfs/index.js';
import { AgentError, fromNodeError, isErrno } from '../errors.js';

/** PF_KTHREAD in include/linux/sched.h: the task is a kernel thread. */
const PF_KTHREAD = 0x00200000;
/** kthreadd: the parent of every kernel thread. */
const KTHREADD = 2;

export interface ProcessInfo {
  /** The number asked about (a thread id names a thread of `tgid`). */
  pid: number;
  /** Thread-group id: the process the kernel moves when given `pid`. */
  tgid: number;
  ppid: number;
  name: string;
  uids: { real: number; effective: number; saved: number; fs: number };
  kernelThread: boolean;
  /** A zombie (exited, not yet reaped): the kernel moves nothing for it. */
  exited: boolean;
}

export class ProcessRef {
  private cg: string | null | undefined;

  private constructor(
    private readonly fd: number,
    readonly info: ProcessInfo,
  ) {}

  /** Open /proc/PID and read the process behind it; ENOENT "no process N" when there is none. */
  static open(pid: number): ProcessRef {
    let fd: number;
    try {
      fd = fs.openSync(`/proc/${pid}`, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    } catch (err) {
      if (isErrno(err, 'ENOENT', 'ESRCH')) throw new AgentError('ENOENT', `no process ${pid}`);
      throw fromNodeError('open', `/proc/${pid}`, err);
    }
    try {
      const status = readText(`/proc/self/fd/${fd}/status`);
      // Newer kernels say Kthread: in status (comm is escaped there: no line can be forged); older ones only in stat.
      const stat = /^Kthread:/m.test(status) ? null : readText(`/proc/self/fd/${fd}/stat`);
      return new ProcessRef(fd, parseProcess(pid, status, stat));
    } catch (err) {
      fs.closeSync(fd);
      if (isErrno(err, 'ENOENT', 'ESRCH')) throw new AgentError('ENOENT', `no process ${pid}`);
      throw err;
    }
  }

  /**
   * Its cgroup v2 path as /proc shows it ("/a/b"), null when it has none. Read
   * when first asked (only some checks need it), through the same directory;
   * `fresh` reads it again (it may have been moved since).
   */
  cgroup(fresh = false): string | null {
    if (this.cg === undefined || fresh) {
      try {
        this.cg = parseProcCgroup(readText(`/proc/self/fd/${this.fd}/cgroup`));
      } catch (err) {
        if (isErrno(err, 'ENOENT', 'ESRCH')) throw new AgentError('ENOENT', `no process ${this.info.pid}`);
        throw err;
      }
    }
    return this.cg;
  }

  /**
   * Is the process that was read still there (so `pid` still names it) and
   * not exited? One read of its status through the open directory: a pid
   * reused since names another process, whose files this directory never shows.
   */
  running(): boolean {
    let status: string;
    try {
      status = readText(`/proc/self/fd/${this.fd}/status`);
    } catch {
      return false;
    }
    return !exitedState(status);
  }

  /**
   * Does the pid still belong to this process (not reaped yet: a zombie still
   * holds it, so no new process can have it)? One path lookup, no read.
   */
  holdsPid(): boolean {
    try {
      fs.accessSync(`/proc/self/fd/${this.fd}/stat`);
      return true;
    } catch {
      return false;
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** State Z (zombie) or X (dead): the process has exited, and a cgroup.procs write would move nothing. */
function exitedState(status: string): boolean {
  return /^State:\s*[ZX]/m.test(status);
}

/** Parse status (and stat, for kernels whose status has no Kthread: line) of one process (exported for tests). */
export function parseProcess(pid: number, status: string, stat: string | null): ProcessInfo {
  const field = (key: string): string => {
    const m = new RegExp(`^${key}:\\s*(.*)$`, 'm').exec(status);
    if (!m) throw new AgentError('EIO', `/proc/${pid}/status has no ${key} line`);
    return m[1];
  };
  const tgid = Number(field('Tgid'));
  const ppid = Number(field('PPid'));
  const [real, effective, saved, fsUid] = field('Uid').split(/\s+/).map(Number);
  const flags = stat === null ? (field('Kthread') === '1' ? PF_KTHREAD : 0) : parseStat(stat).flags;
  if (![tgid, ppid, real, effective, saved, fsUid, flags].every(Number.isSafeInteger)) throw new AgentError('EIO', `cannot parse /proc/${pid}/status or stat`);
  return {
    pid,
    tgid,
    ppid,
    name: field('Name'),
    uids: { real, effective, saved, fs: fsUid },
    kernelThread: (flags & PF_KTHREAD) !== 0 || tgid === KTHREADD || ppid === KTHREADD,
    exited: exitedState(status),
  };
}

export interface ProcStat {
  /** R, S, D, Z (zombie), X (dead)... */
  state: string;
  /** The task's PF_* flags. */
  flags: number;
}

/** The state letter and flags in the text of /proc/PID/stat. */
export function parseStat(text: string): ProcStat {
  // comm may hold spaces and parentheses: the fields start after the last ')'.
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: f[0], flags: Number(f[6]) };
}

/** /proc/PID/stat of whatever process has `pid` now; null when none has. */
export function statOf(pid: number): ProcStat | null {
  let text: string | null;
  try {
    text = readOptional(`/proc/${pid}/stat`);
  } catch {
    return null;
  }
  return text === null ? null : parseStat(text);
}

/** A process has `pid` and has not exited (a zombie answers kill(0) but is dead for every purpose here). */
export function isRunning(pid: number): boolean {
  const st = statOf(pid);
  return st !== null && st.state !== 'Z' && st.state !== 'X';
}

/** The name the kernel keeps for the process (its comm), null when there is none. */
export function nameOf(pid: number): string | null {
  try {
    return readOptional(`/proc/${pid}/comm`)?.trim() ?? null;
  } catch {
    return null;
  }
}

/**
 * Refuse, before anything is made for it, a pid the kernel would not move:
 * gone or exited (ENOENT), or a kernel thread (EINVAL).
 */
export function requireMovable(pid: number): void {
  const st = statOf(pid);
  if (st === null) throw new AgentError('ENOENT', `no process ${pid}`);
  if (st.state === 'Z' || st.state === 'X') throw new AgentError('ENOENT', `no process ${pid} (it has exited)`);
  if (st.flags & PF_KTHREAD) throw new AgentError('EINVAL', `pid ${pid} is a kernel thread; the kernel does not move those`);
}

/**
 * After a cgroup.procs write, read /proc/PID/cgroup back (`mountPoint` maps
 * dir to the path /proc shows). The write's own result already says whether
 * every thread moved; this is the extra check a flag asks for. A process that
 * exited during the move (the kernel skips an exiting task, which then shows
 * the root) is ENOENT, as one gone before it.
 */
export function checkMoved(pid: number, dir: string, mountPoint: string): void {
  const want = '/' + path.relative(mountPoint, dir);
  const got = cgroupOfPid(pid);
  if (got !== null && (got === want || got.endsWith(want))) return;
  if (got === null || !isRunning(pid)) throw new AgentError('ENOENT', `process ${pid} exited while being moved to ${dir}`);
  throw new AgentError('EIO', `moved ${pid} to ${dir} but /proc/${pid}/cgroup says ${got}`);
}

/** The real and saved uids of whatever process has `pid` now (from its status); null when none has. */
export function uidsOf(pid: number): { real: number; saved: number } | null {
  let status: string | null;
  try {
    status = readOptional(`/proc/${pid}/status`);
  } catch {
    return null;
  }
  const m = status === null ? null : /^Uid:\s*(\d+)\s+\d+\s+(\d+)/m.exec(status);
  return m ? { real: Number(m[1]), saved: Number(m[2]) } : null;
}
