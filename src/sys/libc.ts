/**
 * sys/libc: the libc calls Node does not offer, bound through koffi (the FFI
 * the project ships; ffi-napi does not build on Node 20), in one place:
 * AF_UNIX datagram sockets for sd_notify (socket, bind, sendto, recv, close;
 * Node's net/dgram modules have no datagram Unix sockets), the RPC socket's
 * listen and accept4 (net.Server accepts every queued connection in one turn,
 * in the kernel's order), getsockopt for a stream peer's credentials and groups, flock (Node has no file locks),
 * and fcntl (O_NONBLOCK on the log's pipe or socket). Loaded lazily on
 * first use, so a process that needs none of them never loads libc through
 * FFI. Callers own the meaning; this module owns only the signatures and
 * errno names.
 */
import os from 'node:os';
import koffi from 'koffi';

export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_CLOEXEC = 0o2000000;
export const SOCK_NONBLOCK = 0o4000;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const SOL_SOCKET = 1;
export const SO_PEERCRED = 17;
export const SO_PEERGROUPS = 59;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const O_NONBLOCK = 0o4000;
export const POLLHUP = 0x10;
/** sizeof(struct sockaddr_un): sa_family_t (2 bytes) + sun_path[108]. */
const SUN_PATH_MAX = 108;

interface Libc {
  socket: (domain: number, type: number, protocol: number) => number;
  bind: (fd: number, addr: Buffer, len: number) => number;
  sendto: (fd: number, buf: Buffer, len: number, flags: number, addr: Buffer, addrlen: number) => number;
  recv: (fd: number, buf: Buffer, len: number, flags: number) => number;
  close: (fd: number) => number;
  listen: (fd: number, backlog: number) => number;
  /** accept4 with no peer address asked for (null, null). */
  accept4: (fd: number, addr: null, len: null, flags: number) => number;
  getsockopt: (fd: number, level: number, opt: number, out: Buffer, len: number[]) => number;
  flock: (fd: number, op: number) => number;
  /** fcntl(fd, cmd, int): variadic in C, so koffi takes the argument's type before it. */
  fcntl: (fd: number, cmd: number, ...arg: unknown[]) => number;
  /** poll(struct pollfd *fds, nfds, timeout): fds is a buffer of 8-byte pollfd entries, revents written back. */
  poll: (fds: Buffer, nfds: number, timeout: number) => number;
}

let cached: Libc | undefined;

export function libc(): Libc {
  if (cached) return cached;
  const lib = koffi.load('libc.so.6');
  cached = {
    socket: lib.func('int socket(int domain, int type, int protocol)'),
    bind: lib.func('int bind(int fd, const void *addr, uint32_t addrlen)'),
    sendto: lib.func('intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)'),
    recv: lib.func('intptr_t recv(int fd, _Out_ void *buf, size_t len, int flags)'),
    close: lib.func('int close(int fd)'),
    listen: lib.func('int listen(int fd, int backlog)'),
    accept4: lib.func('int accept4(int fd, void *addr, void *addrlen, int flags)'),
    getsockopt: lib.func('int getsockopt(int fd, int level, int optname, _Out_ void *optval, _Inout_ uint32_t *optlen)'),
    flock: lib.func('int flock(int fd, int op)'),
    fcntl: lib.func('int fcntl(int fd, int cmd, ...)'),
    poll: lib.func('int poll(_Inout_ void *fds, unsigned long nfds, int timeout)'),
  } as Libc;
  return cached;
}

/** The errno of the last libc call made through koffi, as a name (ENOENT...). */
export function lastErrno(): string {
  const n = koffi.errno();
  for (const [name, value] of Object.entries(os.constants.errno)) if (value === n) return name;
  return `errno ${n}`;
}

/**
 * struct sockaddr_un for a NOTIFY_SOCKET-style address: an absolute path, or
 * '@name' for the abstract namespace (sun_path[0] = 0, no trailing NUL, the
 * length counts exactly the name, as systemd does). Throws on an address that
 * does not fit in sun_path.
 */
export function sockaddrUn(address: string): { addr: Buffer; len: number } {
  const abstract = address.startsWith('@');
  const name = Buffer.from(abstract ? address.slice(1) : address);
  // A path needs its NUL inside sun_path; an abstract name needs the leading NUL.
  if (name.length + 1 > SUN_PATH_MAX || name.length === 0) {
    throw new RangeError(`unix socket address ${JSON.stringify(address)} is empty or longer than ${SUN_PATH_MAX - 1} bytes`);
  }
  const addr = Buffer.alloc(2 + SUN_PATH_MAX);
  if (os.endianness() === 'LE') addr.writeUInt16LE(AF_UNIX, 0);
  else addr.writeUInt16BE(AF_UNIX, 0);
  name.copy(addr, abstract ? 3 : 2);
  return { addr, len: 2 + 1 + name.length };
}
