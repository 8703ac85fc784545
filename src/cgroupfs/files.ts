/**
 * cgroupfs/files: reading and writing the kernel's cgroup v2 interface files.
 *
 * Owns every syscall on a cgroup directory: mkdir, rmdir, read and write of
 * its files, process moves. Nothing above this layer touches the cgroup
 * filesystem directly. Writes are synchronous: these files are tiny, kernfs
 * answers in microseconds, and the thread pool would only add latency.
 * Every failure is a KernelError naming the operation, the path and the errno.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fromNodeError, isErrno } from '../errors.js';

let scratch = Buffer.allocUnsafe(64 * 1024);

/**
 * open, read, close: one read for the small files of kernfs and procfs,
 * whose seq_file reads return everything that fits, so a short read is the
 * end (readFileSync reads again to see 0, a syscall per file on every step).
 */
function readSmall(file: string): string {
  const fd = fs.openSync(file, 'r');
  try {
    let len = 0;
    for (;;) {
      const n = fs.readSync(fd, scratch, len, scratch.length - len, null);
      len += n;
      if (n === 0 || len < scratch.length) break;
      const bigger = Buffer.allocUnsafe(scratch.length * 2);
      scratch.copy(bigger, 0, 0, len);
      scratch = bigger;
    }
    return scratch.toString('utf8', 0, len);
  } finally {
    fs.closeSync(fd);
  }
}

export function readText(file: string): string {
  try {
    return readSmall(file);
  } catch (err) {
    throw fromNodeError('read', file, err);
  }
}

/**
 * readOptional off the event loop (libuv's thread pool): for checks of the
 * whole tree that run beside requests (the layout check after a restart).
 */
export async function readOptionalAsync(file: string): Promise<string | null> {
  try {
    return await fs.promises.readFile(file, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return null;
    throw fromNodeError('read', file, err);
  }
}

/** Read a file, or null when it does not exist (its controller is not enabled). */
export function readOptional(file: string): string | null {
  try {
    return readSmall(file);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return null;
    throw fromNodeError('read', file, err);
  }
}

/**
 * Write one value to an interface file. Opened write-only, never O_CREAT nor
 * O_TRUNC: a file that is not there (its controller is not enabled) is
 * ENOENT, not the EACCES a create in a kernfs directory gives, a path that
 * is not on cgroupfs never gets a regular file made, and the kernel skips
 * the truncate's setattr on every write.
 */
export function writeText(file: string, value: string): void {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_WRONLY);
  } catch (err) {
    throw fromNodeError('open', file, err);
  }
  try {
    fs.writeSync(fd, value);
  } catch (err) {
    throw fromNodeError(`write "${value.length > 64 ? value.slice(0, 64) + '...' : value}" to`, file, err);
  } finally {
    fs.closeSync(fd);
  }
}

/** mkdir that treats an existing directory as success. Returns true when it made it. */
export function makeDir(dir: string): boolean {
  try {
    fs.mkdirSync(dir);
    return true;
  } catch (err) {
    if (isErrno(err, 'EEXIST')) return false;
    throw fromNodeError('mkdir', dir, err);
  }
}

/** rmdir where ENOENT is success. EBUSY (still populated) is thrown for the caller to wait on. */
export function removeDir(dir: string): void {
  try {
    fs.rmdirSync(dir);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw fromNodeError('rmdir', dir, err);
  }
}

/** Does the path exist? Only ENOENT (or ENOTDIR) means no; any other failure (EACCES...) is an error. */
export function exists(p: string): boolean {
  try {
    // Without an exception for ENOENT: a request checks several paths about to be made.
    return fs.statSync(p, { throwIfNoEntry: false }) !== undefined;
  } catch (err) {
    if (isErrno(err, 'ENOTDIR')) return false;
    throw fromNodeError('stat', p, err);
  }
}

/** Is the path a directory? Only ENOENT means no; any other failure is an error. */
export function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch (err) {
    if (isErrno(err, 'ENOENT', 'ENOTDIR')) return false;
    throw fromNodeError('stat', p, err);
  }
}

/** May this process write the file (access(2) W_OK)? EACCES/EPERM/EROFS mean no; ENOENT is an error. */
export function isWritable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.W_OK);
    return true;
  } catch (err) {
    if (isErrno(err, 'EACCES', 'EPERM', 'EROFS')) return false;
    throw fromNodeError('access', file, err);
  }
}

/** Child cgroup directory names (sub-directories only). */
export function childDirs(dir: string): string[] {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw fromNodeError('readdir', dir, err);
  }
  return entries.filter((e) => e.isDirectory()).map((e) => e.name);
}

/**
 * childDirs off the event loop (libuv's thread pool): for walks of the whole
 * tree that run beside requests (orphan sweeps, task watches after a restart).
 */
export async function childDirsAsync(dir: string): Promise<string[]> {
  let entries: fs.Dirent[];
  try {
    entries = await fs.promises.readdir(dir, { withFileTypes: true });
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw fromNodeError('readdir', dir, err);
  }
  return entries.filter((e) => e.isDirectory()).map((e) => e.name);
}

/** Parse "key value" lines (cgroup.events, memory.events, cpu.stat, memory.stat). */
export function parseFlatKeyed(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const sp = line.indexOf(' ');
    if (sp <= 0) continue;
    const v = Number(line.slice(sp + 1));
    if (Number.isFinite(v)) out[line.slice(0, sp)] = v;
  }
  return out;
}
