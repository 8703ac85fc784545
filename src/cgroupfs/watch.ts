/**
 * cgroupfs/watch: change notices for cgroup files (cgroup.events,
 * memory.events) from one inotify fd for the whole process (native/inotify.c),
 * polled by one libuv handle (native/poll.c).
 *
 * A watch is a kernel mark and a number here: Node's fs.watch costs a libuv
 * handle and a JS object per file (about 1.3 KB each, two per live step).
 * kernfs reports a change of these files as IN_MODIFY, late by up to 10 ms
 * (the cgroup core rate-limits its notices), so a caller that must see the
 * latest state reads the file itself. A watched file whose directory is
 * removed gets IN_IGNORED: its listeners are told through `gone`.
 */
import { addonCall, loadAddon } from '../sys/addon.js';

const IN_MODIFY = 0x2;
const IN_Q_OVERFLOW = 0x4000;
const IN_IGNORED = 0x8000;
/** struct inotify_event: wd, mask, cookie, len, then len bytes of name (none for a file watch). */
const EVENT_HEADER = 16;
/** How long one turn of the loop tells listeners of notices before it lets other work in, ms. */
const TELL_SLICE_MS = 5;

/**
 * Told of a watched file: it changed (read it), or it is gone (its directory
 * was removed). `drained` follows the last `changed` of one read of the
 * queue: every notice told before it was queued before any of them was told,
 * so a file read since that read's start needs no second read for them.
 */
export interface WatchListener {
  changed(wd: number): void;
  gone?(wd: number): void;
  drained?(): void;
}

export class Inotify {
  private readonly addon = loadAddon();
  private fd: number | null = null;
  private buf = Buffer.allocUnsafe(64 * 1024);
  /** wd -> its listeners (one in nearly every case; an array when a file has several). */
  private readonly listeners = new Map<number, WatchListener | WatchListener[]>();
  /** Notices read but not told yet (see drain), and the turn that tells them. */
  private backlog: { changed: Set<number>; gone: number[] } | null = null;
  private later: NodeJS.Immediate | null = null;

  /** Open the fd now (it is opened on first use otherwise); throws when the addon cannot. */
  open(): number {
    if (this.fd !== null) return this.fd;
    const fd = this.addon.inotifyOpen();
    try {
      // Unreferenced: watches alone never keep the process alive (fs.watch's persistent: false).
      this.addon.pollStart(fd, () => this.drain(), false);
    } catch (err) {
      this.addon.close(fd);
      throw err;
    }
    return (this.fd = fd);
  }

  /** Watch a file; returns its watch descriptor. Throws a KernelError (ENOENT when it does not exist). */
  add(file: string, listener: WatchListener): number {
    const fd = this.open();
    const wd = addonCall('inotify_add_watch', file, (a) => a.inotifyAdd(fd, file, IN_MODIFY));
    const had = this.listeners.get(wd);
    if (had === undefined) this.listeners.set(wd, listener);
    else if (Array.isArray(had)) had.push(listener);
    else this.listeners.set(wd, [had, listener]);
    return wd;
  }

  /** Stop telling this listener about wd; the kernel's watch goes with its last listener. */
  remove(wd: number, listener: WatchListener): void {
    const had = this.listeners.get(wd);
    if (had === undefined) return;
    if (Array.isArray(had)) {
      const i = had.indexOf(listener);
      if (i >= 0) had.splice(i, 1);
      if (had.length > 1) return;
      if (had.length === 1) {
        this.listeners.set(wd, had[0]);
        return;
      }
    } else if (had !== listener) return;
    this.listeners.delete(wd);
    try {
      this.addon.inotifyRemove(this.fd!, wd);
    } catch {
      /* EINVAL: the kernel dropped it already (its directory was removed) */
    }
  }

  get size(): number {
    return this.listeners.size;
  }

  /**
   * Read every pending event and tell the listeners, each changed file once,
   * for up to TELL_SLICE_MS; what is left is told on the loop's next turns
   * (read again first, so later notices join it), so that thousands of
   * notices at once (thousands of tasks ending) never hold the loop, and
   * requests are answered between slices. A file's `gone` is told after its
   * last `changed`.
   */
  drain(): void {
    if (this.fd === null) return;
    // Run by the fd's poll too while a rest waits: one pending turn at most.
    if (this.later) clearImmediate(this.later);
    this.later = null;
    const { changed, gone } = this.read();
    const told = new Set<WatchListener>();
    const until = performance.now() + TELL_SLICE_MS;
    let n = 0;
    try {
      for (const wd of changed) {
        changed.delete(wd);
        for (const l of this.listenersOf(wd)) {
          told.add(l);
          l.changed(wd);
        }
        if (++n % 16 === 0 && changed.size && performance.now() > until) break;
      }
    } finally {
      for (const l of told) l.drained?.();
    }
    if (changed.size) {
      this.backlog = { changed, gone };
      this.later = setImmediate(() => this.drain());
      return;
    }
    this.backlog = null;
    for (const wd of gone) {
      const ls = this.listenersOf(wd);
      this.listeners.delete(wd);
      for (const l of ls) l.gone?.(wd);
    }
  }

  /** The notices not told yet, with every pending event read from the fd. */
  private read(): { changed: Set<number>; gone: number[] } {
    const changed = this.backlog?.changed ?? new Set<number>();
    const gone = this.backlog?.gone ?? [];
    let overflow = false;
    for (;;) {
      const n = this.addon.inotifyRead(this.fd!, this.buf);
      if (n <= 0) break;
      for (let off = 0; off + EVENT_HEADER <= n; off += EVENT_HEADER + this.buf.readUInt32LE(off + 12)) {
        const wd = this.buf.readInt32LE(off);
        const mask = this.buf.readUInt32LE(off + 4);
        if (mask & IN_Q_OVERFLOW) overflow = true;
        if (mask & IN_IGNORED) gone.push(wd);
        else if (mask & IN_MODIFY) changed.add(wd);
      }
      if (n < this.buf.length - 4096) break; // a short read took everything
    }
    // Lost notices: every watched file may have changed.
    if (overflow) for (const wd of this.listeners.keys()) changed.add(wd);
    return { changed, gone };
  }

  private listenersOf(wd: number): WatchListener[] {
    const had = this.listeners.get(wd);
    return had === undefined ? [] : Array.isArray(had) ? [...had] : [had];
  }

  close(): void {
    if (this.fd === null) return;
    this.addon.pollStop(this.fd);
    this.addon.close(this.fd);
    this.fd = null;
    if (this.later) clearImmediate(this.later);
    this.later = null;
    this.backlog = null;
    this.listeners.clear();
  }
}

let shared: Inotify | null = null;

/** The process's one inotify instance (opened on first use). */
export function inotify(): Inotify {
  return (shared ??= new Inotify());
}
