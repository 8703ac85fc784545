/**
 * steps/undo: what one request changed in the tree, so that a request the
 * kernel refuses part-way leaves the tree as it found it.
 *
 * A request first checks everything it can without the kernel, then acts; each
 * change it makes registers how to take it back (rmdir a directory it made,
 * write back a limit it replaced, put back a device policy it replaced). On
 * failure the changes are taken back newest first; on success the deferred
 * bookkeeping (index, watches) runs. In-memory only, one request at a time
 * per job (the tree's lock).
 */
import type { Logger } from 'pino';

export class Undo {
  private readonly steps: { what: string; run: () => void }[] = [];
  private readonly done: (() => void)[] = [];

  /** How to take back a change just made. */
  add(what: string, run: () => void): void {
    this.steps.push({ what, run });
  }

  /** Bookkeeping to do only if the whole request succeeds. */
  onCommit(fn: () => void): void {
    this.done.push(fn);
  }

  /** Run fn; on success the commit hooks, on failure every undo step (newest first), then rethrow. */
  static run<T>(log: Logger, fn: (u: Undo) => T): T {
    const u = new Undo();
    let result: T;
    try {
      result = fn(u);
    } catch (err) {
      u.rollback(log);
      throw err;
    }
    for (const f of u.done) f();
    return result;
  }

  /** run() for a request that awaits between its changes (it still holds its job's lock throughout). */
  static async runAsync<T>(log: Logger, fn: (u: Undo) => Promise<T>): Promise<T> {
    const u = new Undo();
    let result: T;
    try {
      result = await fn(u);
    } catch (err) {
      u.rollback(log);
      throw err;
    }
    for (const f of u.done) f();
    return result;
  }

  private rollback(log: Logger): void {
    for (const s of this.steps.reverse()) {
      try {
        s.run();
      } catch (err) {
        // The request fails with its own error either way; what could not be
        // taken back is said here so an admin can find it.
        log.error({ err, undo: s.what }, 'could not take back part of a refused request');
      }
    }
    if (this.steps.length) log.info({ undone: this.steps.map((s) => s.what) }, 'refused request taken back');
  }
}
