/**
 * rpc/peercred: who is on the other end of a Unix socket (SO_PEERCRED).
 *
 * Node exposes no getsockopt, and ffi-napi does not compile on Node 20, so this
 * calls libc's getsockopt through koffi (about a microsecond a call) on the fd
 * of the accepted socket. The kernel fills the credentials at connect() time,
 * so they cannot be forged by the peer afterwards.
 */
import type net from 'node:net';
import koffi from 'koffi';
import { AgentError } from '../errors.js';

export interface PeerCred { pid: number; uid: number; gid: number }

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;

let getsockopt: ((fd: number, level: number, opt: number, out: PeerCred, len: number[]) => number) | null = null;

function bind() {
  if (getsockopt) return getsockopt;
  const libc = koffi.load('libc.so.6');
  const ucred = koffi.struct('cgstep_ucred', { pid: 'int32', uid: 'uint32', gid: 'uint32' });
  getsockopt = libc.func('int getsockopt(int, int, int, _Out_ cgstep_ucred *, _Inout_ uint32 *)') as unknown as typeof getsockopt;
  void ucred;
  return getsockopt!;
}

export function peerCred(socket: net.Socket): PeerCred {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new AgentError('EIO', 'cannot read the peer credentials: socket has no fd');
  const out = { pid: 0, uid: 0, gid: 0 };
  const len = [12];
  if (bind()(fd, SOL_SOCKET, SO_PEERCRED, out, len) !== 0) {
    throw new AgentError('EIO', `getsockopt(SO_PEERCRED) failed: errno ${koffi.errno()}`);
  }
  return out;
}
