/**
 * cgroupfs/wait: wait, bounded, for a cgroup directory to exist and hold a pid
 * (a directory another manager, such as systemd, creates for us).
 *
 * Owns only the waiting: reads `cgroup.procs` and watches, never writes. On
 * cgroupfs, inotify is reliable for `cgroup.events` (the kernel's
 * kernfs_notify reaches every mount of the hierarchy, so `populated` changes
 * are seen whoever caused them), but IN_CREATE for a new directory is only
 * reported on the mount (superblock) through which mkdir was done; systemd in
 * another cgroup namespace mkdirs through its own mount, and then our watch on
 * the parent stays silent. So it watches what it can (the parent for the
 * directory, the directory's cgroup.events for the pid's arrival) and backs
 * that with a short exponential back-off (1 ms doubling to 25 ms), all under
 * one deadline.
 */
import fs from 'node:fs';
import path from 'node:path';
import { isDir } from './files.js';
import { procsContain } from './ops.js';

export interface CgroupWaitResult {
  ok: boolean;
  /** The directory exists (even when the pid never showed up). */
  dirSeen: boolean;
  elapsedMs: number;
  /** What noticed the final state: already true, an inotify event, or a back-off re-check. */
  via: 'immediate' | 'watch' | 'poll' | 'timeout';
}

/** Resolve when `dir` exists and `pid` is in its cgroup.procs, or when timeoutMs has passed. */
export function waitForPidInCgroup(dir: string, pid: number, timeoutMs: number): Promise<CgroupWaitResult> {
  const t0 = performance.now();
  const elapsed = () => Math.round((performance.now() - t0) * 1000) / 1000;
  if (procsContain(dir, pid)) return Promise.resolve({ ok: true, dirSeen: true, elapsedMs: elapsed(), via: 'immediate' });
  return new Promise((resolve) => {
    const watchers = new Map<string, fs.FSWatcher>();
    let done = false;
    let delay = 1;
    let pollTimer: NodeJS.Timeout | undefined;
    const finish = (ok: boolean, via: CgroupWaitResult['via']) => {
      if (done) return;
      done = true;
      clearTimeout(pollTimer);
      clearTimeout(deadline);
      for (const w of watchers.values()) w.close();
      resolve({ ok, dirSeen: isDir(dir), elapsedMs: elapsed(), via });
    };
    const watch = (p: string) => {
      if (watchers.has(p)) return;
      try {
        const w = fs.watch(p, { persistent: false }, () => check('watch'));
        w.on('error', () => {
          w.close();
          watchers.delete(p);
        });
        watchers.set(p, w);
      } catch {
        /* not there yet, or not watchable: the back-off covers it */
      }
    };
    const check = (via: 'watch' | 'poll') => {
      if (done) return;
      if (procsContain(dir, pid)) return finish(true, via);
      watch(path.dirname(dir));
      if (isDir(dir)) watch(path.join(dir, 'cgroup.events'));
    };
    const poll = () => {
      check('poll');
      if (done) return;
      delay = Math.min(delay * 2, 25);
      pollTimer = setTimeout(poll, delay);
    };
    const deadline = setTimeout(() => {
      if (procsContain(dir, pid)) finish(true, 'poll');
      else finish(false, 'timeout');
    }, timeoutMs);
    check('poll');
    pollTimer = setTimeout(poll, delay);
  });
}
