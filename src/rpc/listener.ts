/**
 * rpc/listener: a listening Unix stream socket accepted by the agent's own
 * loop rather than net.Server's, at a rate the agent chooses.
 *
 * Why not net.Server: it accepts every connection the kernel has queued, in
 * one turn and as fast as connections come, and has no way to slow down. A
 * local user's connect-and-close loop then costs the agent a Socket, a peer
 * lookup and a refusal per connection, as fast as the user can connect: the
 * agent saturates and root waits. With a rate, what is not accepted waits in
 * the kernel's listen queue, a connect loop sleeps in connect() once that is
 * full, and the agent spends a bounded share of its time on that socket.
 * Root's own socket is a second listener with no rate (rpc/server).
 *
 * Owns the fd and its poll handle; knows nothing of peers or requests.
 */
import { KernelError } from '../errors.js';
import { loadAddon } from '../sys/addon.js';
import { AF_UNIX, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, lastErrno, libc, sockaddrUn } from '../sys/libc.js';

/** Connections accepted in one turn of the loop; the poll is level-triggered, so the rest come in the next. */
const ACCEPT_PER_TURN = 64;
/** Out of descriptors (EMFILE, ENFILE) or kernel memory: stop accepting this long, or the poll would spin. */
const BACKOFF_MS = 100;
/** With a rate, the shortest pause once it is spent (a pause per connection would cost more than it saves). */
const MIN_PAUSE_MS = 10;

export interface ListenerOptions {
  path: string;
  /** The kernel's queue of connections not yet accepted. */
  backlog: number;
  /** Connections accepted a second at most, in bursts of up to one second's worth; none: as fast as they come. */
  perSecond?: number;
  /** Gets each accepted connection's fd (non-blocking, close-on-exec) and owns it from then on. */
  onAccept: (fd: number) => void;
  /** Hears of an accept that failed (the listener pauses and goes on: nothing is thrown on the loop's poll callback). */
  onError: (err: unknown) => void;
}

export class UnixListener {
  private fd = -1;
  private paused: NodeJS.Timeout | null = null;
  /** Accepts the rate allows now, and when that was counted. */
  private tokens: number;
  private counted = performance.now();

  constructor(private readonly o: ListenerOptions) {
    this.tokens = o.perSecond ?? Infinity;
  }

  /** Bind and listen (the file's mode is the process umask's: the caller sets it). */
  listen(): void {
    const c = libc();
    const fd = c.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new KernelError('socket', this.o.path, lastErrno());
    try {
      const { addr, len } = sockaddrUn(this.o.path);
      if (c.bind(fd, addr, len) !== 0) throw new KernelError('bind', this.o.path, lastErrno());
      if (c.listen(fd, this.o.backlog) !== 0) throw new KernelError('listen', this.o.path, lastErrno());
      loadAddon().pollStart(fd, () => this.drain(), true);
    } catch (err) {
      c.close(fd);
      throw err;
    }
    this.fd = fd;
  }

  /** Accept what is queued: up to ACCEPT_PER_TURN, and what the rate allows. */
  private drain(): void {
    const c = libc();
    const allowed = Math.min(ACCEPT_PER_TURN, this.refill());
    for (let i = 0; i < allowed && this.fd >= 0; i++) {
      const fd = c.accept4(this.fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        const errno = lastErrno();
        // EAGAIN: nothing left. A connection reset while queued (ECONNABORTED) or a signal: go on.
        if (errno === 'EAGAIN' || errno === 'EWOULDBLOCK') return;
        if (errno === 'ECONNABORTED' || errno === 'EINTR') continue;
        // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays queued; accepting resumes after a pause.
        this.o.onError(new KernelError('accept4', this.o.path, errno));
        return this.pause(BACKOFF_MS);
      }
      this.tokens--;
      try {
        this.o.onAccept(fd);
      } catch (err) {
        // onAccept owns the fd and closes it on its own failures; a throw here must not reach the poll callback.
        this.o.onError(err);
      }
    }
    // The rate is spent: let the kernel's queue hold the rest until it allows more.
    if (this.tokens < 1 && this.o.perSecond) this.pause(Math.max(MIN_PAUSE_MS, Math.ceil((1000 * (1 - this.tokens)) / this.o.perSecond)));
  }

  /** The accepts the rate allows now (Infinity without one). */
  private refill(): number {
    const rate = this.o.perSecond;
    if (!rate) return Infinity;
    const now = performance.now();
    this.tokens = Math.min(rate, this.tokens + ((now - this.counted) * rate) / 1000);
    this.counted = now;
    return Math.floor(this.tokens);
  }

  private pause(ms: number): void {
    const addon = loadAddon();
    addon.pollStop(this.fd);
    this.paused = setTimeout(() => {
      this.paused = null;
      if (this.fd >= 0) addon.pollStart(this.fd, () => this.drain(), true);
    }, ms);
  }

  close(): void {
    if (this.fd < 0) return;
    if (this.paused) clearTimeout(this.paused);
    else loadAddon().pollStop(this.fd);
    this.paused = null;
    libc().close(this.fd);
    this.fd = -1;
  }
}
