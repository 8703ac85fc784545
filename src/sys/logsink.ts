/**
 * sys/logsink: the agent's log lines onto its stdout (journald's stream
 * socket under systemd; a pipe, a file or a terminal when run by hand).
 *
 * A pipe or socket is made non-blocking and each line is written at once on
 * the event loop, one write(2): no thread hop per line (an asynchronous write
 * wakes a thread of libuv's pool and then the loop, two wake-ups a line), and
 * a reader that stalls never stalls the agent. What the reader cannot take
 * yet waits in memory, in order, and is written again every RETRY_MS; past
 * maxPending bytes new lines are dropped and counted, and one line says how
 * many once the reader is back. A regular file or a terminal is written
 * synchronously (the kernel does not make those wait on a reader). At exit
 * flushSync() writes what still waits, for up to FLUSH_MS.
 */
import fs from 'node:fs';
import { F_GETFL, F_SETFL, O_NONBLOCK, lastErrno, libc } from './libc.js';

/** How often lines that wait for the reader are tried again, ms. */
const RETRY_MS = 10;
/** How long an exit waits for a stalled reader to take the last lines, ms. */
const FLUSH_MS = 2000;
const DEFAULT_MAX_PENDING = 8 << 20;

/** Errors after which nothing more can be written: the reader is gone. */
const GONE = new Set(['EPIPE', 'EBADF', 'ECONNRESET', 'ENOTCONN']);

export class LogSink {
  private readonly queue: Buffer[] = [];
  private queued = 0;
  private dropped = 0;
  private timer: NodeJS.Timeout | null = null;
  private gone = false;

  constructor(
    private readonly fd = 1,
    private readonly maxPending = DEFAULT_MAX_PENDING,
  ) {
    const st = fs.fstatSync(fd);
    if (st.isFIFO() || st.isSocket()) setNonBlocking(fd);
  }

  /** Lines dropped since the last note of them (the queue was full). */
  get droppedLines(): number {
    return this.dropped;
  }

  /** Bytes waiting for the reader. */
  get pendingBytes(): number {
    return this.queued;
  }

  write(line: string): boolean {
    if (this.gone) return true;
    if (this.queue.length > 0) {
      this.enqueue(Buffer.from(line));
      return true;
    }
    const n = this.attempt(line);
    if (n < 0) return true;
    const len = Buffer.byteLength(line);
    if (n < len) this.enqueue(Buffer.from(line).subarray(n));
    return true;
  }

  /** Write what waits, blocking for up to FLUSH_MS on a reader that does not read: for exit. */
  flushSync(): void {
    const deadline = Date.now() + FLUSH_MS;
    const nap = new Int32Array(new SharedArrayBuffer(4));
    while (this.queue.length > 0 && !this.gone && Date.now() < deadline) {
      if (!this.drainSome()) Atomics.wait(nap, 0, 0, 2);
    }
  }

  /** One write(2): bytes written, 0 when the reader is full, -1 when the line is lost. */
  private attempt(data: string | Buffer): number {
    try {
      return typeof data === 'string' ? fs.writeSync(this.fd, data) : fs.writeSync(this.fd, data);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (code === 'EAGAIN') return 0;
      if (GONE.has(code)) this.gone = true;
      else this.dropped++;
      return -1;
    }
  }

  private enqueue(b: Buffer): void {
    if (this.queued + b.length > this.maxPending) {
      this.dropped++;
      return;
    }
    this.queue.push(b);
    this.queued += b.length;
    this.schedule();
  }

  private schedule(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.drainSome();
      if (this.queue.length > 0) this.schedule();
    }, RETRY_MS);
    // The loop's life is the agent's business, not its log's.
    this.timer.unref();
  }

  /** Write from the head of the queue until the reader is full; false when nothing could be written. */
  private drainSome(): boolean {
    let wrote = false;
    while (this.queue.length > 0) {
      const head = this.queue[0];
      const n = this.attempt(head);
      if (n === 0) return wrote;
      wrote = true;
      if (n > 0 && n < head.length) {
        this.queue[0] = head.subarray(n);
        this.queued -= n;
        return wrote;
      }
      this.queue.shift();
      this.queued -= head.length;
    }
    if (this.dropped > 0 && !this.gone) this.noteDropped();
    return wrote;
  }

  /** One warn line (pino's shape) saying how many lines the full queue cost. */
  private noteDropped(): void {
    const n = this.dropped;
    this.dropped = 0;
    this.write(`${JSON.stringify({ level: 40, time: new Date().toISOString(), pid: process.pid, dropped: n, msg: "log lines dropped: the log's reader did not take them in time" })}\n`);
  }
}

function setNonBlocking(fd: number): void {
  const c = libc();
  const flags = c.fcntl(fd, F_GETFL);
  if (flags < 0 || c.fcntl(fd, F_SETFL, 'int', flags | O_NONBLOCK) < 0) throw new Error(`fcntl(${fd}, O_NONBLOCK): ${lastErrno()}`);
}
