/**
 * systemd/notify: sd_notify(3) without libsystemd, for Type=notify units.
 *
 * Owns the notification protocol only: one datagram of newline-separated
 * KEY=VALUE assignments (READY=1, STATUS=..., STOPPING=1, WATCHDOG=1) sent to
 * the AF_UNIX socket named by $NOTIFY_SOCKET (an absolute path, or '@name' for
 * the abstract namespace). It never touches cgroups or D-Bus.
 *
 * Why FFI: Node has no datagram Unix sockets (node:dgram is UDP only, node:net
 * is stream only), and spawning systemd-notify per message would report the
 * wrong sender pid (systemd attributes a datagram to the sending process, and
 * NotifyAccess=main drops messages from any pid but the main one) and costs a
 * fork per watchdog ping. So the datagram goes through libc via koffi:
 * socket(AF_UNIX, SOCK_DGRAM|SOCK_CLOEXEC) / sendto(MSG_NOSIGNAL) / close, one
 * socket per message like sd_notify. The receiver (systemd) sets SO_PASSCRED,
 * so the kernel attaches our pid and uid without an explicit SCM_CREDENTIALS.
 */
import { AgentError } from '../errors.js';
import { AF_UNIX, MSG_NOSIGNAL, SOCK_CLOEXEC, SOCK_DGRAM, lastErrno, libc, sockaddrUn } from '../sys/libc.js';

/**
 * Send `state` to $NOTIFY_SOCKET. Returns false when NOTIFY_SOCKET is unset
 * (not started by systemd as Type=notify), true when the datagram was sent.
 * Throws AgentError when the variable is malformed or the send fails.
 */
export function notify(state: string): boolean {
  const target = process.env.NOTIFY_SOCKET;
  if (!target) return false;
  if (!target.startsWith('/') && !target.startsWith('@')) {
    throw new AgentError('EINVAL', `NOTIFY_SOCKET=${target}: only absolute paths and @abstract names are supported`);
  }
  let sa;
  try {
    sa = sockaddrUn(target);
  } catch (err) {
    throw new AgentError('EINVAL', `NOTIFY_SOCKET: ${(err as Error).message}`);
  }
  const c = libc();
  const fd = c.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new AgentError('EIO', `sd_notify: socket(AF_UNIX, SOCK_DGRAM): ${lastErrno()}`);
  try {
    const msg = Buffer.from(state);
    const n = c.sendto(fd, msg, msg.length, MSG_NOSIGNAL, sa.addr, sa.len);
    if (n < 0) {
      const errno = lastErrno();
      throw new AgentError(errno === 'ENOENT' ? 'ENOENT' : 'EIO', `sd_notify to ${target}: sendto: ${errno}`);
    }
    if (n !== msg.length) throw new AgentError('EIO', `sd_notify to ${target}: short send (${n} of ${msg.length} bytes)`);
    return true;
  } finally {
    c.close(fd);
  }
}

/** One line of STATUS= text: newlines would start a new assignment. */
function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ');
}

/** READY=1 (the unit's start job completes), with an optional STATUS= line. */
export function ready(status?: string): boolean {
  return notify(status === undefined ? 'READY=1' : `READY=1\nSTATUS=${oneLine(status)}`);
}

/** STATUS=text, shown by `systemctl status`. */
export function status(text: string): boolean {
  return notify(`STATUS=${oneLine(text)}`);
}

/** STOPPING=1: the agent is shutting down on purpose. */
export function stopping(): boolean {
  return notify('STOPPING=1');
}

/**
 * The watchdog interval in ms when systemd asked for pings (WatchdogSec=):
 * WATCHDOG_USEC set and WATCHDOG_PID unset or our pid. Null otherwise.
 */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv = process.env): number | null {
  const usec = Number(env.WATCHDOG_USEC);
  if (!env.WATCHDOG_USEC || !Number.isSafeInteger(usec) || usec <= 0) return null;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== process.pid) return null;
  return Math.max(1, Math.floor(usec / 2000));
}

/**
 * Send WATCHDOG=1 now and every WATCHDOG_USEC/2 (sd_watchdog_enabled's rule).
 * Returns the function that stops it; a no-op when the watchdog is not asked
 * for. A failed ping never throws out of the timer: it goes to onError.
 * The timer is unref'd: it never keeps the process alive on its own.
 */
export function startWatchdog(onError?: (err: Error) => void): () => void {
  const every = watchdogIntervalMs();
  if (every === null) return () => {};
  const ping = () => {
    try {
      notify('WATCHDOG=1');
    } catch (err) {
      onError?.(err as Error);
    }
  };
  ping();
  const timer = setInterval(ping, every);
  timer.unref();
  return () => clearInterval(timer);
}
