/**
 * cgroupfs/lock: one agent per cgroup root. Two agents on one root (with
 * different sockets) would create and remove the same directories behind each
 * other's back. Files cannot be made inside a cgroup directory, so the lock
 * is a file in a root-only directory (default /run/cgstepd) named after the
 * root, locked with flock and holding the holder's pid and root, so that a
 * second agent can say who is in the way. The kernel drops the lock when the
 * holder exits, however it exits: a stale file never blocks anyone.
 */
import fs from 'node:fs';
import path from 'node:path';
import { AgentError } from '../errors.js';
import { checkPrivateDir, tryLockFile } from '../sys/privdir.js';

export const DEFAULT_LOCK_DIR = '/run/cgstepd';

export interface RootLock { file: string; release(): void }

/** The lock file's name for a root: systemd-escape style, '/' as '-', anything unusual as \xNN. */
export function lockNameFor(root: string): string {
  const trimmed = path.resolve(root).replace(/^\/+|\/+$/g, '');
  const escaped = [...trimmed].map((ch) => (ch === '/' ? '-' : /[A-Za-z0-9_.:]/.test(ch) ? ch : `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`)).join('');
  return `root-${escaped || '-'}.lock`;
}

/**
 * Take the lock for the scope `scope` under root in dir, or throw EBUSY naming
 * the root and the holder's pid. The name carries the root directory's inode
 * (its cgroup id): the same path in another cgroup namespace is another
 * cgroup, and the same cgroup under two mount paths is one. Agents with
 * different scopes (--node-name) on one root never touch each other's trees.
 */
export function lockCgroupRoot(root: string, scope: string, dir = DEFAULT_LOCK_DIR): RootLock {
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  checkPrivateDir(dir, 'lock directory');
  const real = fs.realpathSync(root);
  const ino = fs.statSync(real).ino;
  const file = path.join(dir, lockNameFor(real).replace(/\.lock$/, `-${ino}-${scope.replace(/[^A-Za-z0-9_.:-]/g, "_")}.lock`));
  const fd = lockCurrentFile(file);
  if (fd === null) {
    const holder = readHolder(file);
    throw new AgentError('EBUSY', `another cgstepd${holder ? ` (pid ${holder})` : ''} already manages the cgroup root ${real} (scope ${scope}, lock ${file}); stop it first, or give this agent another --cgroup-root or --node-name`);
  }
  fs.ftruncateSync(fd);
  fs.writeSync(fd, `${process.pid} ${real}\n`, 0);
  let open = true;
  return {
    file,
    release() {
      if (!open) return;
      open = false;
      // Unlinked while still locked: whoever opened this file before waits on a
      // file that is gone, notices (lockCurrentFile) and opens the new one.
      fs.rmSync(file, { force: true });
      fs.closeSync(fd);
    },
  };
}

/** Lock the file now at this path; a file that a releasing holder unlinked meanwhile is let go and the path tried again. */
function lockCurrentFile(file: string): number | null {
  for (;;) {
    const fd = tryLockFile(file);
    if (fd === null) return null;
    let same = false;
    try {
      same = fs.fstatSync(fd).ino === fs.lstatSync(file).ino;
    } catch {
      /* unlinked: try again */
    }
    if (same) return fd;
    fs.closeSync(fd);
  }
}

function readHolder(file: string): number | null {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').split(' ')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}
