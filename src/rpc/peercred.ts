/**
 * rpc/peercred: who is on the other end of a Unix socket (SO_PEERCRED).
 *
 * Node exposes no getsockopt, so this calls libc's through src/sys/libc
 * (koffi, about a microsecond a call) on the fd of the accepted socket. The
 * kernel fills the credentials at connect() time, so they cannot be forged by
 * the peer afterwards.
 */
import type net from 'node:net';
import os from 'node:os';
import { KernelError } from '../errors.js';
import { lastErrno, libc } from '../sys/libc.js';

export interface PeerCred { pid: number; uid: number; gid: number }

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;

/** The fd under a connected net.Socket (Node keeps it on the handle). */
export function socketFd(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new KernelError('getsockopt(SO_PEERCRED)', 'socket', 'EBADF', 'the socket has no fd');
  return fd;
}

export function peerCred(socket: net.Socket): PeerCred {
  const fd = socketFd(socket);
  const out = Buffer.alloc(12); // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
  const len = [out.length];
  if (libc().getsockopt(fd, SOL_SOCKET, SO_PEERCRED, out, len) !== 0) {
    throw new KernelError('getsockopt(SO_PEERCRED)', `socket fd ${fd}`, lastErrno());
  }
  const le = os.endianness() === 'LE';
  const u32 = (at: number) => (le ? out.readUInt32LE(at) : out.readUInt32BE(at));
  return { pid: le ? out.readInt32LE(0) : out.readInt32BE(0), uid: u32(4), gid: u32(8) };
}
