/**
 * sys/logsink: the agent's log lines onto its stdout (journald's stream
 * socket under systemd; a pipe, a file or a terminal when run by hand).
 *
 * A pipe or socket is made non-blocking and the lines of one turn of the
 * event loop are written together at its end, one write(2) on the loop: no
 * thread hop per line (an asynchronous write wakes a thread of libuv's pool
 * and then the loop, two wake-ups a line), one wake-up of the reader for all
 * the requests a busy turn answered, and a reader that stalls never stalls
 * the agent. A line waits at most for the rest of its turn, or until
 * flush(): the RPC server flushes before each reply, so a client that has
 * its reply finds its request's line in the log already. What the reader cannot
 * take yet waits in memory, in order, and is written again every RETRY_MS;
 * past maxPending bytes new lines are dropped and counted, and one line says
 * how many once the reader is back. A regular file or a terminal is written
 * the same way, and there a write never waits on a reader. At exit
 * flushSync() writes what still waits, for up to FLUSH_MS.
 */
import fs from 'node:fs';
import { F_GETFL, F_SETFL, O_NONBLOCK, lastErrno, libc } from './libc.js';

/** How often lines that wait for the reader are tried again, ms. */
const RETRY_MS = 10;
/** How long an exit waits for a stalled reader to take the last lines, ms. */
const FLUSH_MS = 2000;
const DEFAULT_MAX_PENDING = 8 << 20;
/** Lines of one turn written at once when they reach this many bytes (a turn that logs a lot; at most a quarter of the queue's bound). */
const TURN_BYTES = 64 * 1024;

/** Errors after which nothing more can be written: the reader is gone. */
const GONE = new Set(['EPIPE', 'EBADF', 'ECONNRESET', 'ENOTCONN']);

export class LogSink {
  private readonly queue: Buffer[] = [];
  private queued = 0;
  private dropped = 0;
  private timer: NodeJS.Timeout | null = null;
  private gone = false;
  /** This turn's lines, written at its end (or at TURN_BYTES). */
  private turn = '';
  private turnDue = false;
  private readonly turnBytes: number;
  private readonly endOfTurn = () => {
    this.turnDue = false;
    this.flushTurn();
  };

  constructor(
    private readonly fd = 1,
    private readonly maxPending = DEFAULT_MAX_PENDING,
  ) {
    // A turn's lines fit in the queue several times over, should the reader stall at their write.
    this.turnBytes = Math.min(TURN_BYTES, maxPending >> 2);
    const st = fs.fstatSync(fd);
    if (st.isFIFO() || st.isSocket()) setNonBlocking(fd);
  }

  /** Lines dropped since the last note of them (the queue was full). */
  get droppedLines(): number {
    return this.dropped;
  }

  /** Bytes not written yet: waiting for the reader, or for the end of this turn. */
  get pendingBytes(): number {
    return this.queued + Buffer.byteLength(this.turn);
  }

  write(line: string): boolean {
    if (this.gone) return true;
    // The reader is behind: after what waits, in order (the turn's lines went into the queue when it began).
    if (this.queue.length > 0) {
      this.enqueue(Buffer.from(line));
      return true;
    }
    this.turn += line;
    if (this.turn.length >= this.turnBytes) this.flushTurn();
    else if (!this.turnDue) {
      this.turnDue = true;
      setImmediate(this.endOfTurn);
    }
    return true;
  }

  /**
   * This turn's lines now, before the end of the turn (pino's logger.flush()
   * calls it). Never blocks: what the reader does not take waits in order.
   */
  flush(cb?: (err?: Error) => void): void {
    if (this.turn !== '') this.flushTurn();
    cb?.();
  }

  /** This turn's lines in one write; what the reader does not take starts the queue. */
  private flushTurn(): void {
    const data = this.turn;
    this.turn = '';
    if (data === '' || this.gone) return;
    if (this.queue.length > 0) {
      this.enqueue(Buffer.from(data));
      return;
    }
    const n = this.attempt(data);
    // n counts bytes: a line with multi-byte characters is longer in bytes than in characters.
    if (n >= 0 && n < Buffer.byteLength(data)) this.enqueue(Buffer.from(data).subarray(n));
  }

  /** Write what waits, blocking for up to FLUSH_MS on a reader that does not read: for exit. */
  flushSync(): void {
    this.flushTurn();
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
      else this.dropped += lines(data);
      return -1;
    }
  }

  private enqueue(b: Buffer): void {
    if (this.queued + b.length > this.maxPending) {
      this.dropped += lines(b);
      this.schedule(); // the note of them, once the reader takes lines again
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

/** Lines in a piece of the log (each ends in a newline; a piece may end in part of one). */
function lines(data: string | Buffer): number {
  const b = typeof data === 'string' ? Buffer.from(data) : data;
  let n = 0;
  for (let i = b.indexOf(10); i >= 0; i = b.indexOf(10, i + 1)) n++;
  return Math.max(n, 1);
}

function setNonBlocking(fd: number): void {
  const c = libc();
  const flags = c.fcntl(fd, F_GETFL);
  if (flags < 0 || c.fcntl(fd, F_SETFL, 'int', flags | O_NONBLOCK) < 0) throw new Error(`fcntl(${fd}, O_NONBLOCK): ${lastErrno()}`);
}
