/**
 * rpc/peercred: who is on the other end of a Unix socket, and the role that
 * gives it.
 *
 * Node exposes no getsockopt, so this calls libc's through src/sys/libc
 * (koffi, about a microsecond a call) on the fd of the connected socket:
 * SO_PEERCRED (pid, uid, gid) and SO_PEERGROUPS (supplementary groups). The
 * kernel records both at connect() time, so the peer cannot change them
 * afterwards, and nothing is read from /proc (whose files a reused pid would
 * swap underneath).
 */
import type net from 'node:net';
import os from 'node:os';
import { KernelError } from '../errors.js';
import { POLLHUP, SOL_SOCKET, SO_PEERCRED, SO_PEERGROUPS, lastErrno, libc } from '../sys/libc.js';

export interface Ucred { pid: number; uid: number; gid: number }

/**
 * admin: root or an operator uid (acts on everything); user: an allowed uid
 * (acts on its own jobs); reader: a member of a read-only group (reads only).
 */
export type Role = 'admin' | 'user' | 'reader';

export interface Peer extends Ucred { role: Role }

export interface RolePolicy {
  operatorUids: readonly number[];
  allowUids: readonly number[];
  readOnlyGids: readonly number[];
}

/**
 * The peer's role, or null when it may not use the agent at all. `groups`
 * (its supplementary groups) is asked for only when its uid and gid alone do
 * not decide: one system call fewer for most connections.
 */
export function roleOf(cred: Ucred, groups: () => readonly number[], p: RolePolicy): Role | null {
  if (cred.uid === 0 || p.operatorUids.includes(cred.uid)) return 'admin';
  if (p.allowUids.includes(cred.uid)) return 'user';
  if (p.readOnlyGids.length === 0) return null;
  if (p.readOnlyGids.includes(cred.gid) || groups().some((g) => p.readOnlyGids.includes(g))) return 'reader';
  return null;
}

/** The fd under a net.Socket (Node keeps it on the handle), or null once it has none. */
function handleFd(socket: net.Socket): number | null {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

/** The fd under a connected net.Socket. */
export function socketFd(socket: net.Socket): number {
  const fd = handleFd(socket);
  if (fd === null) throw new KernelError('getsockopt(SO_PEERCRED)', 'socket', 'EBADF', 'the socket has no fd');
  return fd;
}

const le = os.endianness() === 'LE';
const u32 = (b: Buffer, at: number) => (le ? b.readUInt32LE(at) : b.readUInt32BE(at));

/** SO_PEERCRED alone: what a client needs to know about its server. */
export function peerUcred(socket: net.Socket): Ucred {
  return ucredOf(socketFd(socket));
}

/** SO_PEERCRED of a connected socket's fd. */
export function ucredOf(fd: number): Ucred {
  const out = Buffer.alloc(12); // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
  const len = [out.length];
  if (libc().getsockopt(fd, SOL_SOCKET, SO_PEERCRED, out, len) !== 0) {
    throw new KernelError('getsockopt(SO_PEERCRED)', `socket fd ${fd}`, lastErrno());
  }
  return { pid: le ? out.readInt32LE(0) : out.readInt32BE(0), uid: u32(out, 4), gid: u32(out, 8) };
}

/** Supplementary groups (gid_t[]) of a connected socket's peer; on ERANGE the kernel says the size it needs, so the second call fits. */
export function peerGroups(fd: number): number[] {
  const len = [64 * 4];
  for (let attempt = 0; attempt < 3; attempt++) {
    const out = Buffer.alloc(len[0]);
    if (libc().getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, out, len) === 0) {
      const groups: number[] = [];
      for (let at = 0; at + 4 <= len[0]; at += 4) groups.push(u32(out, at));
      return groups;
    }
    const errno = lastErrno();
    if (errno !== 'ERANGE') throw new KernelError('getsockopt(SO_PEERGROUPS)', `socket fd ${fd}`, errno);
  }
  throw new KernelError('getsockopt(SO_PEERGROUPS)', `socket fd ${fd}`, 'ERANGE', 'the group list kept growing');
}

/**
 * Has the peer closed its end altogether (every process that held it), not
 * just shut down its writing? Both end the bytes it sends; only the first
 * ends its reading too, which poll reports as POLLHUP. false when unknown.
 */
export function peerHungUp(socket: net.Socket): boolean {
  const fd = handleFd(socket);
  if (fd === null) return false;
  const pfd = Buffer.alloc(8); // struct pollfd { int fd; short events; short revents; }
  if (le) pfd.writeInt32LE(fd, 0);
  else pfd.writeInt32BE(fd, 0);
  if (libc().poll(pfd, 1, 0) !== 1) return false;
  return ((le ? pfd.readUInt16LE(6) : pfd.readUInt16BE(6)) & POLLHUP) !== 0;
}
