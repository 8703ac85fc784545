/**
 * sys/privdir: directories only root may change, the socket files and
 * exclusive file locks in them. The agent keeps its sockets (the RPC ones and
 * a /metrics one) and its per-cgroup-root lock in such directories: if another
 * user could write one (or anything above it), that user could replace the
 * socket or the lock file under a running agent.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { AgentError, KernelError } from '../errors.js';
import { LOCK_EX, LOCK_NB, lastErrno, libc } from './libc.js';
import { addonCall } from './addon.js';

/**
 * The directory must be a real directory (lstat: a symlink is refused), owned
 * by root or the agent's user, and writable by no one else, sticky or not;
 * every directory above it must be root's or the agent's and, if others may
 * write it, sticky (so they cannot rename what is below). `what` names the
 * directory in the error ("socket directory").
 */
export function checkPrivateDir(dir: string, what: string): void {
  const me = process.getuid?.() ?? 0;
  const ours = (uid: number) => uid === 0 || uid === me;
  const st = fs.lstatSync(dir);
  if (st.isSymbolicLink()) throw new AgentError('EPERM', `${what} ${dir} is a symbolic link; give the real directory (e.g. /run/cgstepd)`);
  if (!st.isDirectory()) throw new AgentError('EPERM', `${what} ${dir} is not a directory`);
  if (!ours(st.uid)) throw new AgentError('EPERM', `${what} ${dir} is owned by uid ${st.uid}; it must belong to root or to the agent's user`);
  if ((st.mode & 0o022) !== 0) throw new AgentError('EPERM', `${what} ${dir} is writable by others (mode ${(st.mode & 0o7777).toString(8)}); use a directory only root can write, e.g. /run/cgstepd`);
  const abs = path.resolve(dir);
  for (let up = path.dirname(abs), prev = abs; up !== prev; prev = up, up = path.dirname(up)) {
    const a = fs.lstatSync(up);
    if (!ours(a.uid)) throw new AgentError('EPERM', `${up}, above the ${what} ${dir}, is owned by uid ${a.uid}; every directory above it must belong to root`);
    if (a.isDirectory() && (a.mode & 0o022) !== 0 && (a.mode & 0o1000) === 0) throw new AgentError('EPERM', `${up}, above the ${what} ${dir}, is writable by others and not sticky (mode ${(a.mode & 0o7777).toString(8)})`);
  }
}

/**
 * Make a socket's directory if missing and check that only root can change it
 * (checkPrivateDir): nobody else can then put a file or link where the socket
 * goes, nor swap it between its creation and its chmod. `what` names the
 * directory in the error.
 */
export function prepareSocketDir(socketPath: string, what: string): void {
  const dir = path.dirname(socketPath);
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  checkPrivateDir(dir, what);
}

/**
 * Before listening: a socket file left by a dead agent is removed. A live
 * agent on it (something accepts a connection), or a file that is not a
 * socket, is an error: neither is ever replaced.
 */
export async function removeStaleSocket(p: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new AgentError('EEXIST', `${p} exists and is not a socket; refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect(p);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new AgentError('EBUSY', `another cgstepd is already listening on ${p}`);
  fs.unlinkSync(p);
}

/**
 * After listening: give the socket file its group (if one is named), then its
 * mode (if one is given; else it keeps the mode the umask made), so that it
 * never has a wider mode with the wrong group. Returns its inode, for
 * removeOwnSocket.
 */
export function settleSocket(p: string, group: number | undefined, mode: number | undefined): number {
  if (group !== undefined) fs.chownSync(p, process.getuid?.() ?? 0, group);
  if (mode !== undefined) fs.chmodSync(p, mode);
  return fs.lstatSync(p).ino;
}

/** Remove a socket file only if it is still the one made (same inode): never a link, nor another's file. */
export function removeOwnSocket(p: string, ino: number): void {
  try {
    const st = fs.lstatSync(p);
    if (st.isSocket() && st.ino === ino) fs.unlinkSync(p);
  } catch {
    /* already gone */
  }
}

/** struct posix_acl_xattr_entry tags and the xattr's version (linux/posix_acl_xattr.h). */
const ACL_VERSION = 2;
const ACL_USER_OBJ = 0x01;
const ACL_USER = 0x02;
const ACL_GROUP_OBJ = 0x04;
const ACL_MASK = 0x10;
const ACL_OTHER = 0x20;
const ACL_UNDEFINED_ID = 0xffffffff;

/**
 * Give each uid read and write on path (a socket: connect() needs write) by a
 * POSIX access ACL, and nobody else anything: owner rw, group and others
 * none, the mask rw. Replaces any ACL the file had. Throws a KernelError
 * (ENOTSUP where the filesystem has no ACLs).
 */
export function grantUsers(path: string, uids: readonly number[]): void {
  const entries: [number, number, number][] = [
    [ACL_USER_OBJ, 6, ACL_UNDEFINED_ID],
    // The kernel wants them in order: by tag, then by id.
    ...[...new Set(uids)].sort((a, b) => a - b).map((u): [number, number, number] => [ACL_USER, 6, u]),
    [ACL_GROUP_OBJ, 0, ACL_UNDEFINED_ID],
    [ACL_MASK, 6, ACL_UNDEFINED_ID],
    [ACL_OTHER, 0, ACL_UNDEFINED_ID],
  ];
  const buf = Buffer.alloc(4 + entries.length * 8);
  buf.writeUInt32LE(ACL_VERSION, 0);
  entries.forEach(([tag, perm, id], i) => {
    buf.writeUInt16LE(tag, 4 + i * 8);
    buf.writeUInt16LE(perm, 6 + i * 8);
    buf.writeUInt32LE(id, 8 + i * 8);
  });
  addonCall('setxattr', path, (a) => a.xattrSet(path, 'system.posix_acl_access', buf));
}

/**
 * Open file (created 0644, never through a symlink) and take flock(LOCK_EX)
 * on it without waiting. Returns the open fd (the lock lasts while it is
 * open, and ends with the process however it dies), or null when another
 * open file holds the lock.
 */
export function tryLockFile(file: string): number | null {
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o644);
  if (libc().flock(fd, LOCK_EX | LOCK_NB) === 0) return fd;
  const errno = lastErrno();
  fs.closeSync(fd);
  if (errno === 'EWOULDBLOCK' || errno === 'EAGAIN') return null;
  throw new KernelError('flock', file, errno);
}
